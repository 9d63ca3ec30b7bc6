"""Shared fixtures: where ../shared is, the embedded sample, small real photos."""

import os
import shutil

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.environ.get("IMGSIM_SHARED") or os.path.join(os.path.dirname(REPO), "shared")
SAMPLE = os.path.join(REPO, "data", "sample")


REFERENCE = os.path.join(REPO, "tests", "reference")


def reference_path(name):
    """A reference-value file kept under tests/reference/ (a verbatim copy of ../shared/reference/)."""
    return os.path.join(REFERENCE, name)


def shared_path(*parts):
    """A path under ../shared (read-only reference data); skip if it is absent."""
    path = os.path.join(SHARED, *parts)
    if not os.path.exists(path):
        pytest.skip(f"{path} not found: set IMGSIM_SHARED to the shared folder")
    return path


@pytest.fixture(scope="session")
def sample_root():
    return SAMPLE


@pytest.fixture(scope="session")
def photo_path():
    """One real photo of the embedded sample."""
    from imgsim.data import load_table

    return load_table(SAMPLE)["path"].iloc[0]


@pytest.fixture
def mini_imc(tmp_path):
    """A copy of a few sample scenes in the IMC layout, safe to damage."""
    from imgsim.data import load_table

    table = load_table(SAMPLE)
    keep = table.groupby("scene").head(3)
    keep = keep[keep["scene"].isin(sorted(keep["scene"].unique())[:4])]
    for rel in keep["image"]:
        os.makedirs(tmp_path / os.path.dirname(rel), exist_ok=True)
        shutil.copyfile(os.path.join(SAMPLE, rel), tmp_path / rel)
    labels = keep[["dataset", "scene", "rotation_matrix", "translation_vector"]].copy()
    labels.insert(2, "image", [os.path.basename(p) for p in keep["image"]])
    labels.to_csv(tmp_path / "train_labels.csv", index=False)
    return tmp_path


@pytest.fixture(scope="session")
def rng():
    return np.random.default_rng(0)
