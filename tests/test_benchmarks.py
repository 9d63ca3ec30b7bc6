"""Building IMC-style benchmark folders from posed scenes and outlier photos."""

import os

import pandas as pd
import pytest

from imgsim.benchmarks import make_imc_benchmark
from imgsim.data import load_table
from imgsim.errors import ConfigError, DataLayoutError


def test_make_imc_benchmark_mixes_posed_scenes_and_outliers(tmp_path, sample_root):
    source = load_table(sample_root)
    spec = {"d1": {"scenes": ["strecha_mvs/fountain_p11", "strecha_mvs/herz_jesu_p25"],
                   "max_per_scene": 5, "outliers": 3},
            "d2": {"scenes": ["strecha_mvs/castle_p30"], "outliers": 2}}
    reserve = ["strecha_mvs/entry_p10"]
    labels = make_imc_benchmark(source, tmp_path, spec, seed=1, reserve=reserve)
    counts = labels.groupby(["dataset", "scene"]).size().to_dict()
    n_castle = int((source["scene"] == "castle_p30").sum())
    assert counts == {("d1", "fountain_p11"): 5, ("d1", "herz_jesu_p25"): 5, ("d1", "outliers"): 3,
                      ("d2", "castle_p30"): n_castle, ("d2", "outliers"): 2}
    by_name = {os.path.basename(p): row for p, row in zip(source["path"], source.itertuples())}
    used = {"fountain_p11", "herz_jesu_p25", "castle_p30", "entry_p10"}
    outlier_scenes = [by_name[i].scene for i in labels[labels["scene"] == "outliers"]["image"]]
    assert not used & set(outlier_scenes)
    assert len(set(outlier_scenes)) == 5  # one photo per scene
    for row in labels[labels["scene"] != "outliers"].itertuples():
        src = by_name[row.image]
        assert (row.scene, row.rotation_matrix, row.translation_vector) == (
            src.scene, src.rotation_matrix, src.translation_vector)
        assert (tmp_path / "train" / row.dataset / row.image).read_bytes() == open(src.path, "rb").read()
    written = pd.read_csv(tmp_path / "train_labels.csv", dtype=str, keep_default_na=False)
    assert list(written["image"]) == list(labels["image"])
    with pytest.raises(DataLayoutError, match="already exists"):
        make_imc_benchmark(source, tmp_path, spec)


@pytest.mark.parametrize("spec, message", [
    ({"d": {"scenes": ["strecha_mvs/nope"]}}, "unknown scenes"),
    ({"d": {"scenes": ["strecha_mvs/castle_p30"], "outlier": 2}}, "unknown keys"),
    ({"d": {"scenes": ["strecha_mvs/castle_p30"], "outliers": 99}}, "99 outliers asked"),
    ({"d": {"scenes": ["opensfm_samples/lund"]}}, "0 posed images"),
])
def test_make_imc_benchmark_bad_specs(tmp_path, sample_root, spec, message):
    with pytest.raises(ConfigError, match=message):
        make_imc_benchmark(load_table(sample_root), tmp_path, spec)
