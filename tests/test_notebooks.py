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


# --------------------------------------------------------------------------- what nbval's run must show

FIGURE_CALLS = ("viz.", "Image(")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_every_figure_cell_is_tagged_so_ci_checks_it_renders(path):
    nb = json.load(open(path))
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            source = "".join(cell["source"])
            draws = any(call in source for call in FIGURE_CALLS) and "parameters" not in cell["metadata"].get("tags", [])
            assert draws == ("figure" in cell["metadata"].get("tags", [])), (path, source)


def test_figure_tags_cover_01_and_02():
    tagged = {os.path.basename(p): sum("figure" in c["metadata"].get("tags", []) for c in json.load(open(p))["cells"])
              for p in NOTEBOOKS}
    assert tagged["01_data.ipynb"] >= 1 and tagged["02_train.ipynb"] >= 1


def _png_output(size):
    import base64
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", size).save(buffer, "PNG")
    return {"output_type": "display_data", "data": {"image/png": base64.b64encode(buffer.getvalue()).decode(),
                                                     "text/plain": "<Figure>"}}


def test_cell_checks_catch_a_missing_figure_noise_and_stderr():
    from notebook_checks import cell_problems

    figure = ["figure"]
    text_only = [{"output_type": "execute_result", "data": {"text/plain": "<Figure size 630x1920 with 36 Axes>"}}]
    assert cell_problems("viz.image_grid(g)", figure, [_png_output((640, 480))]) == []
    assert "no image/png" in cell_problems("viz.image_grid(g)", figure, text_only)[0]
    assert "tiny" in cell_problems("viz.image_grid(g)", figure, [_png_output((20, 10))])[0]
    noisy = {
        "TensorFlow start-up banner": "I0000 00:00:1796122900.114066 13783 port.cc:153] oneDNN custom operations are on",
        "TensorFlow Python warning": "WARNING:tensorflow:5 out of the last 7 calls triggered tf.function retracing",
        "glog/absl line": "E20260101 12:00:00.123456 4242 incremental_mapper.cc:42] No good initial pair",
        "backspace progress bar": "\x08\x08\x08\r2/2 ━━━━ 4s",
        "ANSI escape": "\x1b[1m1/2\x1b[0m",
        "raw markdown table": "| model | p@1 |\n|---|---|\n| imagenet | 1.000 |",
    }
    assert cell_problems("# NBVAL_IGNORE_OUTPUT\nrun()", [], [{"output_type": "stream", "name": "stdout",
                                                               "text": "epoch 1: loss=0.18\n"}]) == []
    for name, text in noisy.items():
        out = [{"output_type": "stream", "name": "stdout", "text": text}]
        problems = cell_problems("# NBVAL_IGNORE_OUTPUT\nrun()", [], out)
        assert any(p.startswith(name) for p in problems), (name, problems)
    rendered = {"output_type": "display_data", "data": {"text/markdown": "| a |\n|---|\n| 1 |",
                                                         "text/plain": "<IPython.core.display.Markdown object>"}}
    assert cell_problems("display(Markdown(t))", [], [rendered]) == []
    stderr = [{"output_type": "stream", "name": "stderr", "text": "something\n"}]
    assert "stderr in a checked cell" in cell_problems("run()", [], stderr)[0]
    assert cell_problems("# NBVAL_IGNORE_OUTPUT\nrun()", [], stderr) == []


def test_viz_figures_display_as_png_in_the_kernel_formatter():
    """What every Jupyter front end gets from the kernel: IPython's display formatter output."""
    import numpy as np
    from IPython.core.formatters import DisplayFormatter
    from PIL import Image

    from imgsim import viz

    fig = viz.image_grid([("scene/a", [np.zeros((32, 32, 3), np.uint8)] * 3)])
    data, _ = DisplayFormatter().format(fig)
    assert "image/png" in data and data["image/png"][:4] == b"\x89PNG"
    import io

    width, height = Image.open(io.BytesIO(data["image/png"])).size
    assert width > 100 and height > 50


def test_history_figure_ticks_whole_epochs():
    """02_train's curves after a short run: one tick per epoch (1, 2, 3), not 0.95 ... 1.05."""
    from imgsim import viz

    for n in (1, 3):
        fig = viz.history_figure([{"epoch": i, "loss": 1.0 / (i + 1)} for i in range(n)])
        fig.canvas.draw()
        assert list(fig.axes[0].get_xticks()) == list(range(1, n + 1))
    fig = viz.history_figure([{"epoch": i, "loss": 1.0} for i in range(30)])
    fig.canvas.draw()
    assert all(float(t).is_integer() for t in fig.axes[0].get_xticks())
