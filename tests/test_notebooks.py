"""Committed notebooks: no outputs, one papermill ``parameters`` cell, thin (calls into imgsim)."""

import glob
import json
import os

import pytest

from conftest import REPO

NOTEBOOKS = sorted(glob.glob(os.path.join(REPO, "notebooks", "*.ipynb")))


def test_the_three_notebooks_exist():
    names = [os.path.basename(n) for n in NOTEBOOKS]
    assert {"01_data.ipynb", "02_train.ipynb", "03_evaluate.ipynb", "04_pair_inspector.ipynb"} <= set(names)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_committed_without_outputs(path):
    nb = json.load(open(path))
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            assert cell.get("outputs") == [] and cell.get("execution_count") is None, path


@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_one_parameters_cell_with_output_dir(path):
    import papermill

    nb = json.load(open(path))
    tagged = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1
    assert "output_dir" in papermill.inspect_notebook(path)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_notebook_code_is_thin(path):
    """No function or class definitions and no loops with bodies of logic: calls into imgsim."""
    nb = json.load(open(path))
    code = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")
    assert "def " not in code and "class " not in code and "lambda" not in code
    assert "imgsim" in code
