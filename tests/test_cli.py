"""The command line: verbs listed, ``embed`` on a folder, errors without tracebacks."""

import argparse
import os
import subprocess
import sys

import numpy as np
import pytest

from imgsim.cli import VERBS, build_parser, main


def test_help_lists_the_verbs(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for verb in VERBS:
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


@pytest.mark.parametrize("argv", [["--help"], ["score", "--help"], ["reconstruct", "--help"]])
def test_help_imports_no_tensorflow(argv):
    """Start-up stays fast: only a verb that runs a model may import TensorFlow or Keras."""
    code = ("import sys\nfrom imgsim.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
            "print('LOADED', sorted(m for m in ('tensorflow', 'keras', 'jax', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "LOADED []"


def _options(parser):
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for verb, p in sub.choices.items():
        for action in p._actions:
            if action.option_strings and action.dest != "help":
                yield verb, p, action


def test_every_option_has_help_and_shows_its_default():
    parser = build_parser()  # every verb's arguments
    seen = 0
    for verb, p, action in _options(parser):
        assert action.help, f"imgsim {verb} {action.option_strings[0]} has no help text"
        text = p.format_help()
        if action.default not in (None, False) and not isinstance(action.default, bool):
            assert f"(default: {action.default})" in " ".join(text.split()), (verb, action.dest)
        seen += 1
    assert seen > 50


def test_only_the_chosen_verb_builds_its_arguments():
    parser = build_parser(["score", "gt.csv", "sub.csv"])
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    built = {verb for verb, p in sub.choices.items() if any(a.dest == "quiet" for a in p._actions)}
    assert built == {"score"}
    args = parser.parse_args(["score", "gt.csv", "sub.csv", "--quiet"])
    assert (args.gt, args.submission, args.quiet) == ("gt.csv", "sub.csv", True)


def test_quiet_turns_progress_bars_and_library_logs_off():
    """Set before the libraries load (tqdm reads its TQDM_* overrides at import), as main() does."""
    code = ("import os\nfrom imgsim.cli import set_verbosity\nset_verbosity(-1)\nfrom tqdm.auto import tqdm\n"
            "print(tqdm(range(3)).disable, os.environ['TF_CPP_MIN_LOG_LEVEL'], os.environ['GLOG_minloglevel'])\n"
            "set_verbosity(1)\nprint(os.environ['TF_CPP_MIN_LOG_LEVEL'], os.environ['GLOG_minloglevel'])")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TQDM_", "TF_CPP", "GLOG"))}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "3", "2", "0", "0"]


def test_readme_command_is_the_recommended_recipe_of_the_committed_training_report():
    """The README's `imgsim train ... # recommended recipe` line trains what reports/training recommends."""
    import json
    import shlex

    from conftest import REPO
    from imgsim.cli import _train_config

    report = json.load(open(os.path.join(REPO, "reports", "training", "metrics.json")))
    want = report["recipes"][report["recommended"]]["config"]["train"]
    line = next(line for line in open(os.path.join(REPO, "README.md"))
                if line.startswith("imgsim train") and line.rstrip().endswith("# recommended recipe"))
    argv = shlex.split(line.split("#")[0])[1:]
    got = _train_config(build_parser(["train"]).parse_args(argv)).to_dict()
    for key in ("data", "runs_dir", "cache_dir", "workers", "split"):
        want.pop(key), got.pop(key)
    assert got == want
