"""The command line: verbs listed, ``embed`` on a folder, errors without tracebacks."""

import os

import numpy as np
import pytest

from imgsim.cli import main


def test_help_lists_the_verbs(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for verb in ("train", "embed", "evaluate", "sweep", "demo"):
        assert verb in out


def test_embed_folder_with_imagenet_default_matches_keras_directly(tmp_path, mini_imc, capsys):
    import keras

    from imgsim.data import load_image, load_table

    out = tmp_path / "emb.npz"
    assert main(["embed", str(mini_imc), "--out", str(out), "--image-size", "96"]) == 0
    assert "wrote" in capsys.readouterr().out
    saved = np.load(out)
    table = load_table(mini_imc)
    assert list(saved["paths"]) == list(table["path"]) and list(saved["scenes"]) == list(table["scene"])
    assert saved["embeddings"].shape == (len(table), 1280)
    # Independent computation with Keras' own application and preprocessing function.
    net = keras.applications.MobileNetV2(input_shape=(96, 96, 3), include_top=False,
                                         weights=os.path.expanduser(os.path.join(
                                             os.environ.get("KERAS_HOME", "~/.keras"), "models",
                                             "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5")),
                                         pooling="avg")
    x = keras.applications.mobilenet_v2.preprocess_input(
        load_image(table["path"][0], 96).astype(np.float32)[None])
    want = np.asarray(net(x))[0]
    np.testing.assert_allclose(saved["embeddings"][0], want / np.linalg.norm(want), atol=1e-5)


def test_embed_with_a_saved_model(tmp_path, mini_imc):
    from imgsim.model import EmbeddingConfig, build_embedding_model, save_model

    model_path = str(tmp_path / "m.keras")
    save_model(build_embedding_model(EmbeddingConfig(alpha=0.35, image_size=64)), model_path)
    out = tmp_path / "emb.npz"
    assert main(["embed", str(mini_imc), "--model", model_path, "--out", str(out)]) == 0
    e = np.load(out)["embeddings"]
    assert e.shape[1] == 128
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)


def test_errors_are_one_line_messages(tmp_path, capsys):
    assert main(["embed", str(tmp_path / "absent"), "--out", str(tmp_path / "x.npz")]) == 2
    assert capsys.readouterr().err.strip() == f"DataLayoutError: {tmp_path / 'absent'}: no such directory"
    assert main(["embed", str(tmp_path), "--model", str(tmp_path / "none.keras")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"DataLayoutError: {tmp_path}: no train_labels.csv and no <scene>/<image> folders with images"


def test_score_verb_prints_the_score_and_names_a_bad_row(tmp_path, capsys):
    rng = np.random.default_rng(3)
    rows = ["dataset,scene,image,rotation_matrix,translation_vector"]
    for i in range(5):
        q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
        q *= np.sign(np.linalg.det(q))
        rows.append(f"d,s,im{i}.jpg,{';'.join(map(str, q.ravel()))},{';'.join(map(str, rng.normal(size=3)))}")
    gt = tmp_path / "gt.csv"
    gt.write_text("\n".join(rows) + "\n")
    assert main(["score", str(gt), str(gt)]) == 0
    assert "IMC score: 100.00" in capsys.readouterr().out
    dataset, scene, image, rotation, translation = rows[3].split(",")
    eight = ";".join(rotation.split(";")[:8])  # line 4 of the file: R with 8 values
    bad = rows[:3] + [",".join([dataset, scene, image, eight, translation])] + rows[4:]
    (tmp_path / "bad.csv").write_text("\n".join(bad) + "\n")
    assert main(["score", str(gt), str(tmp_path / "bad.csv")]) == 2
    err = capsys.readouterr().err
    assert "bad.csv row 4" in err and "rotation_matrix" in err and "8" in err


def test_score_verb_refuses_a_binary_file(tmp_path, capsys):
    gt = tmp_path / "gt.csv"
    gt.write_text("dataset,scene,image,rotation_matrix,translation_vector\nd,s,a.jpg,nan,nan\n")
    (tmp_path / "sub.csv").write_bytes(bytes(range(256)) * 4)
    assert main(["score", str(gt), str(tmp_path / "sub.csv")]) == 2
    err = capsys.readouterr().err
    assert "sub.csv: cannot read as CSV" in err and "Traceback" not in err


def test_crossval_and_train_options_reach_the_configs_and_all_have_help(capsys):
    from imgsim import crossval
    from imgsim.cli import _CROSSVAL_ONLY, _NOT_TRAINING, _train_config, build_parser

    parser = build_parser(["crossval"])
    sub = next(a for a in parser._actions if a.dest == "command").choices["crossval"]
    for action in sub._actions:
        if action.dest != "help":
            assert action.help, action.dest
    args = parser.parse_args(["crossval", "--miner", "hard", "--l2sp", "0.01", "--xbm-size", "64",
                              "--pooling", "gem", "--ensemble-alpha", "0.35", "--folds", "3",
                              "--group-by-dataset", "--cv-val-fraction", "0.3", "--head", "none"])
    config = crossval.flat_config(**{k: v for k, v in vars(args).items()
                                     if k not in _NOT_TRAINING and k not in _CROSSVAL_ONLY})
    t, e = config.train, config.train.embedding
    assert (t.miner, t.l2sp, t.xbm_size, t.mode, e.pooling, e.ensemble_alpha, e.trainable_layers,
            e.head) == ("hard", 0.01, 64, "fast", "gem", 0.35, 0, "none")
    assert (config.folds, config.group_by_dataset, config.val_fraction) == (3, True, 0.3)
    train = build_parser(["train"]).parse_args(["train", "--soft", "--miner", "all",
                                                "--unfreeze-every", "2", "--mode", "fast"])
    t = _train_config(train)
    assert (t.soft, t.miner, t.unfreeze_every, t.mode, t.embedding.hidden_dim) == (True, "all", 2, "fast", 256)
    assert main(["crossval", "--from-sweep", "reports/sweeps/x"]) == 2
    assert "ConfigError: --from-sweep needs --report-dir" in capsys.readouterr().err
