"""The embedding network: architecture, weights from the Keras cache, embed/distance/similarity."""

import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO
from imgsim.errors import ConfigError, WeightsNotFoundError
from imgsim.model import (
    EmbeddingConfig,
    build_embedding_model,
    build_imagenet_baseline,
    compile_for_inference,
    distance,
    embed,
    ensure_imagenet_weights,
    imagenet_weights_name,
    init_head_pca,
    load_model,
    save_model,
    similarity_percent,
)

SMALL = EmbeddingConfig(alpha=0.35, image_size=64)


@pytest.fixture(scope="module")
def small_model():
    return build_embedding_model(SMALL)


def test_architecture_and_frozen_layers(small_model):
    import keras

    names = [layer.name for layer in small_model.layers]
    assert names[:2] == ["image", "mobilenet_v2_preprocess"]
    assert names[3:] == ["gap", "dropout", "hidden", "projection", "l2_normalize"]
    backbone = small_model.layers[2]
    assert backbone.name.startswith("mobilenetv2_0.35")
    hidden, projection = small_model.get_layer("hidden"), small_model.get_layer("projection")
    assert (hidden.units, projection.units) == (256, 128)
    assert hidden.activation.__name__ == "relu"
    assert small_model.get_layer("dropout").rate == 0.3
    for dense in (hidden, projection):
        assert float(dense.kernel_regularizer.l2) == pytest.approx(SMALL.weight_decay)
    layers = backbone.layers
    trainable = [i for i, layer in enumerate(layers) if layer.trainable]
    assert min(trainable) >= len(layers) - 30  # only the last 30 layers
    assert not any(isinstance(layer, keras.layers.BatchNormalization) and layer.trainable
                   for layer in layers)
    assert any(layer.trainable_weights for layer in layers[-30:])
    assert small_model.output_shape == (None, 128)


def test_embeddings_are_unit_norm_and_batch_independent(small_model, rng):
    x = rng.uniform(0, 255, size=(5, 64, 64, 3)).astype(np.float32)
    e = embed(small_model, x, batch_size=2)
    assert e.shape == (5, 128) and e.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(embed(small_model, x[3:4]), e[3:4], atol=1e-5)


def test_embed_paths_equals_embed_decoded_arrays(small_model, sample_root):
    from imgsim.data import load_image, load_table

    paths = list(load_table(sample_root)["path"][:3])
    arrays = np.stack([load_image(p, 64) for p in paths])
    np.testing.assert_allclose(embed(small_model, paths), embed(small_model, arrays), atol=1e-6)


def test_openvino_engine_matches_keras_on_real_photos(small_model, sample_root, tmp_path, monkeypatch):
    """Same weights through OpenVINO: embeddings within 1e-4 of Keras', exported once, atomically."""
    pytest.importorskip("openvino", reason="openvino is not installed (pip install 'imgsim[openvino]')")
    import imgsim.model as model_module
    from imgsim.data import load_image, load_table

    paths = list(load_table(sample_root)["path"][:5])
    want = embed(small_model, paths, batch_size=2)
    monkeypatch.setattr(model_module, "_COMPILED", type(model_module._COMPILED)())
    compiled = compile_for_inference(small_model, "openvino", cache_dir=str(tmp_path))
    assert (compiled.engine, compiled.input_size, compiled.output_dim) == ("openvino", 64, 128)
    got = embed(compiled, paths, batch_size=2)  # batches of 2 and a last one of 1
    assert got.shape == want.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
    baseline = build_imagenet_baseline(EmbeddingConfig(alpha=0.35, image_size=64))
    arrays = np.stack([load_image(p, 64) for p in paths])  # uint8, called directly
    np.testing.assert_allclose(compile_for_inference(baseline, "openvino", cache_dir=str(tmp_path))(arrays),
                               embed(baseline, paths), atol=1e-4, rtol=0)
    # One folder per model, no temporary leftovers; a second process (empty memo) reuses the export.
    folders = sorted(os.listdir(tmp_path))
    assert len(folders) == 2 and not any(f.startswith(".tmp") for f in folders)
    xml = compiled.xml_path
    assert sorted(os.listdir(os.path.dirname(xml))) == ["model.bin", "model.xml"]
    mtime = os.path.getmtime(xml)
    monkeypatch.setattr(model_module, "_COMPILED", type(model_module._COMPILED)())
    again = compile_for_inference(small_model, "openvino", cache_dir=str(tmp_path))
    assert again is not compiled and again.xml_path == xml and os.path.getmtime(xml) == mtime
    # embed(..., engine="openvino") on the Keras model reuses the compiled one.
    np.testing.assert_allclose(embed(small_model, paths, engine="openvino"), got, atol=1e-6)
    with pytest.raises(ConfigError, match="batch must have shape"):
        compiled(np.zeros((1, 32, 32, 3), np.uint8))


def test_engine_errors(small_model, monkeypatch):
    x = np.zeros((1, 64, 64, 3), np.uint8)
    with pytest.raises(ConfigError, match="engine must be one of \\('keras', 'openvino'\\), got 'tflite'"):
        embed(small_model, x, engine="tflite")
    with pytest.raises(ConfigError, match="engine must be one of"):
        compile_for_inference(small_model, engine="onnx")
    keras_engine = compile_for_inference(small_model, "keras")
    np.testing.assert_allclose(keras_engine(x), embed(small_model, x), atol=1e-6)
    with pytest.raises(ConfigError, match="already compiled for engine='keras'"):
        compile_for_inference(keras_engine, "openvino")
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino -> ImportError
    with pytest.raises(ConfigError, match=r"needs the openvino package: pip install 'imgsim\[openvino\]'"):
        compile_for_inference(small_model, "openvino")


def test_imagenet_weights_are_the_real_ones():
    """The loaded backbone holds the shipped ImageNet values, not a random init."""
    import h5py

    model = build_imagenet_baseline(SMALL)
    conv1 = model.layers[2].get_layer("Conv1").get_weights()[0]
    with h5py.File(os.path.join(REPO, "imgsim", "weights", imagenet_weights_name(0.35))) as f:
        group = f["Conv1"]
        stored = group[group.attrs["weight_names"][0]][()]
    np.testing.assert_array_equal(conv1, stored)


def test_baseline_on_real_photos_ranks_same_scene_first(sample_root):
    """ImageNet GAP features: a photo's nearest neighbour among 3 scenes is from its own scene."""
    from imgsim.data import label_ids, load_table

    table = load_table(sample_root)
    table = table[table["scene"].isin(["castle_p30", "espresso", "sacre_coeur"])]
    table = table.groupby("scene").head(4)
    e = embed(build_imagenet_baseline(EmbeddingConfig(alpha=0.35, image_size=128)), list(table["path"]))
    d = np.linalg.norm(e[:, None] - e[None], axis=-1)
    np.fill_diagonal(d, np.inf)
    labels = label_ids(table)
    assert np.mean(labels[d.argmin(axis=1)] == labels) >= 0.9


def test_weights_copied_into_keras_cache(tmp_path):
    target = ensure_imagenet_weights(0.35, cache_dir=str(tmp_path / "models"))
    assert target == str(tmp_path / "models" / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5")
    assert os.path.getsize(target) == 2028672
    assert ensure_imagenet_weights(0.35, cache_dir=str(tmp_path / "none"), bundled_dir=str(tmp_path)) is None


MISSING_SCRIPT = r"""
import socket
def refuse(*a, **k):
    raise OSError("network disabled in this test")
socket.socket.connect = refuse
socket.getaddrinfo = refuse
import imgsim.model as m
m.BUNDLED_WEIGHTS = "/nonexistent"
try:
    m.build_embedding_model(m.EmbeddingConfig(alpha=0.35))
except m.WeightsNotFoundError as exc:
    print("ERROR:", exc)
"""


@pytest.mark.slow
def test_missing_weights_error_names_file_and_folder(tmp_path):
    env = dict(os.environ, KERAS_HOME=str(tmp_path), PYTHONPATH=REPO)
    out = subprocess.run([sys.executable, "-c", MISSING_SCRIPT], env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == (
        "ERROR: ImageNet weights for MobileNetV2 alpha=0.35 are not in the Keras cache and could "
        "not be downloaded: put mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5 "
        f"into {tmp_path}/models/ (set KERAS_HOME to use another cache folder)")


def test_save_load_round_trip(small_model, tmp_path, rng):
    x = rng.uniform(0, 255, size=(3, 64, 64, 3)).astype(np.float32)
    path = str(tmp_path / "m.keras")
    save_model(small_model, path)
    np.testing.assert_allclose(embed(load_model(path), x), embed(small_model, x), atol=1e-6)
    assert [f for f in os.listdir(tmp_path) if f.startswith(".tmp")] == []
    with pytest.raises(WeightsNotFoundError, match="model file does not exist"):
        load_model(str(tmp_path / "absent.keras"))
    (tmp_path / "junk.keras").write_text("junk")
    with pytest.raises(WeightsNotFoundError, match="not a loadable .keras model"):
        load_model(str(tmp_path / "junk.keras"))


def test_pca_head_reproduces_projected_gap_features(rng):
    """hidden 8 → embedding 4: the untrained model outputs the normalised top-4 (uncentred) PCA projection."""
    import keras

    model = build_embedding_model(EmbeddingConfig(alpha=0.35, image_size=64, hidden_dim=8,
                                                  embedding_dim=4))
    x = rng.uniform(0, 255, size=(20, 64, 64, 3)).astype(np.float32)
    init_head_pca(model, x)
    gap = embed(keras.Model(model.input, model.get_layer("gap").output), x).astype(np.float64)
    _, vectors = np.linalg.eigh(gap.T @ gap)  # independent PCA: second-moment eigenvectors
    z = gap @ vectors[:, ::-1][:, :4]
    want = z / np.linalg.norm(z, axis=1, keepdims=True)
    got = embed(model, x)
    # Component signs are arbitrary; pairwise distances are not.
    pairwise = lambda e: np.linalg.norm(e[:, None] - e[None], axis=-1)  # noqa: E731
    np.testing.assert_allclose(pairwise(got), pairwise(want), atol=2e-3)
    with pytest.raises(ConfigError, match="needs hidden_dim == 2 \\* embedding_dim"):
        init_head_pca(build_embedding_model(EmbeddingConfig(alpha=0.35, image_size=64,
                                                            hidden_dim=10, embedding_dim=4)), x)


def test_distance_and_similarity_percent():
    a, b = np.array([0.0, 3.0]), np.array([4.0, 0.0])
    assert distance(a, b) == pytest.approx(5.0)
    np.testing.assert_allclose(distance(np.stack([a, a]), np.stack([b, a])), [5.0, 0.0])
    assert similarity_percent(0.0) == 100.0
    assert similarity_percent(5.0) == pytest.approx(100 / np.e)
    assert similarity_percent(2.0, scale=5.0) == pytest.approx(67.0320046)
    np.testing.assert_allclose(similarity_percent(np.array([0.0, 10.0])), [100.0, 100 * np.exp(-2)])
    with pytest.raises(ValueError, match="shapes differ"):
        distance(a, np.zeros(3))


def test_config_validation_and_round_trip():
    assert EmbeddingConfig.from_dict(SMALL.to_dict()) == SMALL
    with pytest.raises(ConfigError, match="alpha must be one of"):
        EmbeddingConfig(alpha=0.6)
    with pytest.raises(ConfigError, match=r"image_size must be an integer in \[64, 1024\], got 16"):
        EmbeddingConfig(image_size=16)
    with pytest.raises(ConfigError, match="unknown EmbeddingConfig keys: colour"):
        EmbeddingConfig.from_dict({"colour": 1})


# --------------------------------------------------------------------------- issue 12's options


def test_gem_and_attention_pooling_against_numpy(rng):
    from imgsim.pooling import AttentionPooling2D, GeMPooling2D

    x = rng.uniform(0, 6, size=(2, 3, 4, 5)).astype(np.float32)
    for p in (1.0, 3.0):
        want = np.mean(np.maximum(x, 1e-6) ** p, axis=(1, 2)) ** (1 / p)
        np.testing.assert_allclose(np.asarray(GeMPooling2D(p)(x)), want, rtol=1e-5)
    # Large p approaches max pooling; attention starts as the plain average.
    np.testing.assert_allclose(np.asarray(GeMPooling2D(200.0)(x)), x.max(axis=(1, 2)), rtol=0.02)
    np.testing.assert_allclose(np.asarray(AttentionPooling2D(8)(x)), x.mean(axis=(1, 2)), rtol=1e-5)


def test_ensemble_without_head_is_the_two_normalised_imagenet_features(rng):
    """alpha 1.0 + 0.35, head none: [unit(GAP_1.0), unit(GAP_0.35)] / sqrt(2) (concat) or their
    normalised mean, computed from the two ImageNet baselines."""
    x = rng.uniform(0, 255, size=(3, 64, 64, 3)).astype(np.float32)
    parts = [embed(build_imagenet_baseline(EmbeddingConfig(alpha=a, image_size=64)), x)
             for a in (1.0, 0.35)]
    for merge in ("concat", "mean"):
        config = EmbeddingConfig(alpha=1.0, ensemble_alpha=0.35, ensemble=merge, image_size=64,
                                 head="none", trainable_layers=0)
        got = embed(build_embedding_model(config), x)
        want = np.concatenate(parts, 1) if merge == "concat" else parts[0] + parts[1]
        want /= np.linalg.norm(want, axis=1, keepdims=True)
        np.testing.assert_allclose(got, want, atol=1e-5)
    with pytest.raises(ConfigError, match="ensemble_alpha must be one of"):
        EmbeddingConfig(alpha=0.35, ensemble_alpha=0.35)


@pytest.mark.parametrize("trainable_layers", [0, 30])
def test_split_at_the_cut_composes_to_the_whole_model(trainable_layers, rng):
    """frozen stem (cached in fast mode) → the rest = the embedding model; the rest shares weights."""
    from imgsim.model import backbones_of, cut_layer, frozen_stems, split_at_cut

    config = EmbeddingConfig(alpha=0.35, image_size=64, trainable_layers=trainable_layers,
                             pooling="gem")
    model = build_embedding_model(config)
    x = rng.uniform(0, 255, size=(2, 64, 64, 3)).astype(np.float32)
    rest = split_at_cut(model, config)
    cut = frozen_stems(config)[0].predict_on_batch(x)
    np.testing.assert_allclose(rest.predict_on_batch(cut), model.predict_on_batch(x), atol=1e-5)
    assert {id(v) for v in rest.trainable_weights} == {id(v) for v in model.trainable_weights}
    name = cut_layer(backbones_of(model)[0], trainable_layers)
    assert name == {0: "out_relu", 30: "block_13_project"}[trainable_layers]


def test_cut_layer_never_separates_a_residual_branch():
    """Input → a → b → add(a, b) → c. With c trainable the cut is add's output; with add too,
    cutting after b would lose the residual from a, so the cut moves back to a's output."""
    import keras

    from imgsim.model import cut_layer

    inp = keras.Input((4,), name="inp")
    a = keras.layers.Dense(4, name="a")(inp)
    b = keras.layers.Dense(4, name="b")(a)
    added = keras.layers.Add(name="add")([a, b])
    out = keras.layers.Dense(4, name="c")(added)
    model = keras.Model(inp, out)
    assert cut_layer(model, 0) == "c"
    assert cut_layer(model, 1) == "add"
    assert cut_layer(model, 2) == "a"
    assert cut_layer(model, 3) == "a"


def test_linear_identity_head_starts_at_the_imagenet_features(rng):
    from imgsim.model import set_head_identity

    config = EmbeddingConfig(alpha=0.35, image_size=64, head="linear", head_init="identity",
                             embedding_dim=1280, trainable_layers=0)
    model = build_embedding_model(config)
    set_head_identity(model)
    x = rng.uniform(0, 255, size=(2, 64, 64, 3)).astype(np.float32)
    base = embed(build_imagenet_baseline(EmbeddingConfig(alpha=0.35, image_size=64)), x)
    np.testing.assert_allclose(embed(model, x), base, atol=1e-5)
    with pytest.raises(ConfigError, match="head_init='identity' needs head='linear'"):
        EmbeddingConfig(head_init="identity")


def test_learned_whitening_head_against_numpy(rng):
    """z = C^(-1/2) (x - mean) for the shrunk covariance of same-scene differences (eigh, numpy)."""
    from imgsim.model import set_head_whitening

    config = EmbeddingConfig(alpha=0.35, image_size=64, head="linear", head_init="whitening",
                             embedding_dim=1280, trainable_layers=0)
    model = build_embedding_model(config)
    labels = np.repeat(np.arange(4), 3)
    features = rng.normal(size=(12, 1280)) + 3 * rng.normal(size=(4, 1280))[labels]
    set_head_whitening(model, features, labels, shrinkage=0.3)
    i, j = zip(*[(a, b) for a in range(12) for b in range(a + 1, 12) if labels[a] == labels[b]])
    d = features[list(i)] - features[list(j)]
    c = 0.7 * d.T @ d / len(d) + 0.3 * np.trace(d.T @ d / len(d)) / 1280 * np.eye(1280)
    w, v = np.linalg.eigh(c)
    want = (features - features.mean(0)) @ (v @ np.diag(w ** -0.5) @ v.T)
    kernel, bias = model.get_layer("projection").get_weights()
    np.testing.assert_allclose(features @ kernel + bias, want, rtol=1e-3, atol=1e-3 * np.abs(want).max())
    with pytest.raises(ConfigError, match="head_init='whitening' needs head='linear'"):
        EmbeddingConfig(head_init="whitening")
