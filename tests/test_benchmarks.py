"""Building IMC-style benchmark folders from posed scenes and outlier photos."""

import os

import numpy as np
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
    # the official reader: split on ';', reshape to 3 x 3 and 3; outliers are 9 and 3 nans
    for row in written.itertuples():
        R = np.array([float(x) for x in row.rotation_matrix.split(";")]).reshape(3, 3)
        t = np.array([float(x) for x in row.translation_vector.split(";")]).reshape(3)
        assert np.isnan(np.r_[R.ravel(), t]).all() == (row.scene == "outliers")
    assert (written[written["scene"] == "outliers"]["rotation_matrix"]
            == "nan;nan;nan;nan;nan;nan;nan;nan;nan").all()
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


def test_outliers_from_named_sources_several_per_scene(tmp_path, sample_root):
    source = load_table(sample_root)
    spec = {"d1": {"scenes": ["strecha_mvs/fountain_p11"], "max_per_scene": 4,
                   "outliers": [{"from": "raydiffusion_examples", "photos": 5, "per_scene": 2},
                                {"from": ["opensfm_samples/berlin"], "photos": 3, "per_scene": 3}]},
            "d2": {"scenes": ["strecha_mvs/herz_jesu_p25"], "max_per_scene": 3,
                   "outliers": [{"from": "raydiffusion_examples", "photos": 3}]}}
    labels = make_imc_benchmark(source, tmp_path, spec, seed=2)
    sources = pd.read_csv(tmp_path / "benchmark_sources.csv", dtype=str)
    by_image = dict(zip(sources["dataset"] + "/" + sources["image"], sources["source"]))
    outliers = labels[labels["scene"] == "outliers"]
    d1 = [by_image["d1/" + i] for i in outliers[outliers["dataset"] == "d1"]["image"]]
    ray = [s for s in d1 if s.startswith("raydiffusion_examples/")]
    assert len(ray) == 5 and max(ray.count(s) for s in ray) <= 2 and len(set(ray)) == 3
    assert d1.count("opensfm_samples/berlin") == 3
    d2 = [by_image["d2/" + i] for i in outliers[outliers["dataset"] == "d2"]["image"]]
    assert len(d2) == 3 and len(set(d2)) == 3  # per_scene 1 by default
    drawn = list(outliers["image"])
    assert len(drawn) == len(set(drawn))  # no photo drawn twice
    for row in labels[labels["scene"] != "outliers"].itertuples():
        assert by_image[f"{row.dataset}/{row.image}"] == f"strecha_mvs/{row.scene}"


def test_backdrop_and_unposed_scenes(tmp_path, sample_root):
    from PIL import Image

    source = load_table(sample_root)
    spec = {"turntable": {"scenes": ["strecha_mvs/fountain_p11"], "max_per_scene": 3,
                          "backdrop": {"image": "phototourism_samples/" + os.path.basename(
                              source[source["scene"] == "sacre_coeur"]["path"].iloc[0]), "band": 0.25}},
            "unposed": {"scenes": ["opensfm_samples/lund"], "max_per_scene": 4}}
    labels = make_imc_benchmark(source, tmp_path, spec, posed=False)
    images = [np.asarray(Image.open(tmp_path / "train" / "turntable" / i).convert("RGB"), np.int16)
              for i in labels[labels["dataset"] == "turntable"]["image"]]
    edge = round(0.25 * images[0].shape[1])
    # the backdrop band is the same in every photo (JPEG noise aside), the middle is each photo's own
    assert np.abs(images[0][:, :edge] - images[1][:, :edge]).mean() < 3
    assert np.abs(images[0][:, edge:-edge] - images[1][:, edge:-edge]).mean() > 10
    unposed = labels[labels["dataset"] == "unposed"]
    assert (unposed["rotation_matrix"] == "nan;nan;nan;nan;nan;nan;nan;nan;nan").all()
    assert (unposed["translation_vector"] == "nan;nan;nan").all()
    assert len(labels[labels["dataset"] == "unposed"]) == 4


@pytest.mark.parametrize("spec, message", [
    ({"d": {"scenes": ["strecha_mvs/castle_p30"], "outliers": [{"from": "nope", "photos": 1}]}},
     "no spare outlier source nope"),
    ({"d": {"scenes": ["strecha_mvs/castle_p30"], "outliers": [{"from": "opensfm_samples/berlin",
                                                                 "photos": 9, "per_scene": 9}]}},
     "9 outlier photos asked"),
    ({"d": {"scenes": ["strecha_mvs/castle_p30"], "outliers": [{"photos": 2}]}}, "needs 'from'"),
    ({"d": {"scenes": ["strecha_mvs/castle_p30"], "outliers": [{"from": "wxbs", "photos": 0}]}},
     "'photos' must be an integer >= 1"),
    ({"d": {"scenes": ["strecha_mvs/castle_p30"], "outliers": "all"}}, "'outliers' must be"),
    ({"d": {"scenes": ["strecha_mvs/castle_p30"], "backdrop": {"image": "x/y.jpg"}}}, "'backdrop' needs"),
])
def test_make_imc_benchmark_bad_outlier_specs(tmp_path, sample_root, spec, message):
    with pytest.raises(ConfigError, match=message):
        make_imc_benchmark(load_table(sample_root), tmp_path, spec)
    assert not (tmp_path / "train_labels.csv").exists()
