"""P×K batches, augmentation, and resumable training runs (SIGKILL mid-run, then restart)."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import REPO, SAMPLE
from imgsim.augment import AugmentConfig, build_augmentation
from imgsim.errors import ConfigError
from imgsim.train import PKBatches, TrainConfig, read_history


def test_pk_batches_are_class_balanced():
    labels = np.repeat(np.arange(6), [5, 4, 3, 6, 2, 4])
    images = np.arange(len(labels), dtype=np.uint8)[:, None, None, None] * np.ones((1, 4, 4, 3), np.uint8)
    batches = PKBatches(images, labels, p=4, k=3, steps=5, seed=1)
    for i in range(len(batches)):
        x, y = batches[i]
        assert x.shape == (12, 4, 4, 3) and y.shape == (12,)
        classes, counts = np.unique(y, return_counts=True)
        assert len(classes) == 4 and set(counts) == {3}
        # Each image travels with its own label.
        np.testing.assert_array_equal(labels[x[:, 0, 0, 0].astype(int)], y)
        # Classes with >= k images give k distinct images.
        for c in classes:
            idx = x[y == c, 0, 0, 0].astype(int)
            if (labels == c).sum() >= 3:
                assert len(set(idx)) == 3
    np.testing.assert_array_equal(batches.batch_indices(2), PKBatches(images, labels, 4, 3, 5, seed=1).batch_indices(2))
    batches.on_epoch_end()
    assert not np.array_equal(batches.batch_indices(2), PKBatches(images, labels, 4, 3, 5, seed=1).batch_indices(2))


def test_fewer_classes_than_p_uses_every_class():
    labels = np.array([0, 0, 1, 1, 1])
    x, y = PKBatches(np.zeros((5, 2, 2, 3), np.uint8), labels, p=8, k=2, steps=1)[0]
    assert sorted(np.unique(y)) == [0, 1] and len(y) == 4


def test_augmentation_changes_training_batches_only(rng):
    layer = build_augmentation(AugmentConfig(seed=0))
    x = rng.uniform(0, 255, size=(4, 32, 32, 3)).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(layer(x, training=False)), x)
    out = np.asarray(layer(x, training=True))
    assert out.shape == x.shape and not np.allclose(out, x)
    assert out.min() >= 0.0 and out.max() <= 255.0
    names = {type(l).__name__ for l in layer.layers}
    assert names == {"RandomFlip", "RandomRotation", "RandomZoom", "RandomBrightness",
                     "RandomContrast", "RandomSaturation", "RandomHue"}
    assert build_augmentation(AugmentConfig(flip=False, strength=0.0)) is None


def test_flip_only_augmentation_is_a_mirror(rng):
    layer = build_augmentation(AugmentConfig(flip=True, strength=0.0, seed=3))
    x = rng.uniform(0, 255, size=(16, 8, 8, 3)).astype(np.float32)
    out = np.asarray(layer(x, training=True))
    for a, b in zip(x, out):
        assert np.array_equal(a, b) or np.array_equal(a[:, ::-1], b)
    assert any(not np.array_equal(a, b) for a, b in zip(x, out))


def test_config_validation():
    with pytest.raises(ConfigError, match="p must be an integer >= 2, got 1"):
        TrainConfig(p=1)
    with pytest.raises(ConfigError, match="monitor must be one of"):
        TrainConfig(monitor="accuracy")
    with pytest.raises(ConfigError, match="unknown TrainConfig keys: lr"):
        TrainConfig.from_dict({"lr": 1})
    a, b = TrainConfig(), TrainConfig.from_dict(TrainConfig().to_dict())
    assert a == b and a.run_id() == b.run_id()
    assert TrainConfig(margin=0.7).run_id() != a.run_id()
    assert TrainConfig(runs_dir="elsewhere").run_id() == a.run_id()


def train_command(runs_dir, epochs=6):
    return [sys.executable, "-m", "imgsim", "train", "--data", SAMPLE, "--alpha", "0.35",
            "--image-size", "64", "--epochs", str(epochs), "--steps-per-epoch", "3", "--p", "4",
            "--k", "3", "--patience", "50", "--runs-dir", str(runs_dir), "--run-name", "r"]


def run_env():
    return dict(os.environ, PYTHONPATH=REPO, PYTHONUNBUFFERED="1")


@pytest.mark.slow
def test_sigkill_mid_run_then_restart_resumes_and_completes(tmp_path):
    run = tmp_path / "runs" / "r"
    log1 = open(tmp_path / "first.log", "w")
    proc = subprocess.Popen(train_command(tmp_path / "runs"), stdout=log1, stderr=subprocess.STDOUT,
                            env=run_env(), start_new_session=True)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if len(read_history(run / "history.csv")) >= 2:
            break
        time.sleep(0.05)
    assert proc.poll() is None, open(tmp_path / "first.log").read()[-3000:]
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_after = len(read_history(run / "history.csv"))
    assert 2 <= killed_after < 6 and not (run / "metrics.json").exists()

    second = subprocess.run(train_command(tmp_path / "runs"), capture_output=True, text=True,
                            env=run_env(), timeout=300)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "resuming run" in second.stdout
    assert "Epoch 1/6" not in second.stdout  # started from the saved epoch, not from scratch
    history = read_history(run / "history.csv")
    assert [int(r["epoch"]) for r in history] == list(range(6))  # every epoch exactly once
    metrics = __import__("json").load(open(run / "metrics.json"))
    assert metrics["epochs_run"] == 6
    values = [float(r["val_map_at_r"]) for r in history]
    assert metrics["best_epoch"] == int(np.argmax(values)) + 1
    assert not (run / "backup").exists()
    assert not [f for f in os.listdir(run) if f.startswith(".tmp")]
    # best.keras is the best epoch over both sessions: the checkpoint's state survived the kill.
    from imgsim.data import Split, label_ids, load_table, select
    from imgsim.metrics import map_at_r
    from imgsim.model import embed, load_model

    split = Split.from_dict(metrics["split"])
    val = select(load_table(SAMPLE), split.val)
    got = map_at_r(embed(load_model(str(run / "best.keras")), list(val["path"])), label_ids(val))
    assert got == pytest.approx(max(values), abs=1e-6)

    third = subprocess.run(train_command(tmp_path / "runs"), capture_output=True, text=True,
                           env=run_env(), timeout=300)
    assert third.returncode == 0
    assert "is already finished (metrics.json exists): nothing to do" in third.stdout
    assert len(read_history(run / "history.csv")) == 6


@pytest.mark.slow
def test_bad_input_error_from_cli_has_no_traceback(tmp_path, mini_imc):
    from imgsim.data import load_table

    path = load_table(mini_imc)["path"][3]
    open(path, "w").write("<html>not a photo</html>")
    cmd = [sys.executable, "-m", "imgsim", "train", "--data", str(mini_imc), "--alpha", "0.35",
           "--image-size", "64", "--epochs", "1", "--runs-dir", str(tmp_path / "runs")]
    out = subprocess.run(cmd, capture_output=True, text=True, env=run_env(), timeout=300)
    assert out.returncode == 2
    assert f"ImageDecodeError: {path}: not an image" in out.stderr
    assert "Traceback" not in out.stderr + out.stdout
    # With on_error=skip the same run trains and counts the file in its log.
    out = subprocess.run(cmd + ["--on-error", "skip", "--p", "3", "--k", "2", "--steps-per-epoch", "1"],
                         capture_output=True, text=True, env=run_env(), timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    logs = [os.path.join(r, "log.txt") for r, _, files in os.walk(tmp_path / "runs") if "log.txt" in files]
    text = "".join(open(log).read() for log in logs)  # the failed run and the skipping run
    assert "skipped 1 bad input(s):" in text and f"{path}: not an image" in text


@pytest.mark.slow
def test_training_runs_under_the_jax_backend(tmp_path):
    pytest.importorskip("jax")
    cmd = train_command(tmp_path / "runs", epochs=1)
    cmd[cmd.index("--steps-per-epoch") + 1] = "1"
    env = dict(run_env(), KERAS_BACKEND="jax", JAX_PLATFORMS="cpu")
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=400)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "backend jax" in open(tmp_path / "runs" / "r" / "log.txt").read()
    assert (tmp_path / "runs" / "r" / "metrics.json").exists()


def _history_values(path):
    rows = read_history(path)
    return [{k: float(v) for k, v in r.items()} for r in rows]


@pytest.mark.slow
def test_resumed_run_equals_uninterrupted_run(tmp_path):
    """SIGKILL after epoch 1, resume: the same history as a run never interrupted (issue 15).

    Augmentation, dropout and the batch schedule all depend on the epoch: a
    resume that replayed epoch 0's batches, or restarted the dropout masks,
    would give other losses in epoch 2.
    """
    def command(runs):
        cmd = train_command(runs, epochs=2)
        return cmd + ["--workers", "2"]

    # The uninterrupted run goes beside the killed one (2 cores: the start-ups overlap).
    whole_log = open(tmp_path / "whole.log", "w")
    whole = subprocess.Popen(command(tmp_path / "whole"), stdout=whole_log, stderr=subprocess.STDOUT,
                             env=run_env())
    try:
        run = tmp_path / "killed" / "r"
        log = open(tmp_path / "killed.log", "w")
        proc = subprocess.Popen(command(tmp_path / "killed"), stdout=log, stderr=subprocess.STDOUT,
                                env=run_env(), start_new_session=True)
        metadata = run / "backup" / "training_metadata.json"
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None and not metadata.exists():
            time.sleep(0.02)
        assert proc.poll() is None, open(tmp_path / "killed.log").read()[-3000:]
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        assert len(read_history(run / "history.csv")) < 2 and not (run / "metrics.json").exists()
        resumed = subprocess.run(command(tmp_path / "killed"), capture_output=True, text=True,
                                 env=run_env(), timeout=300)
        assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
        assert "resuming run" in resumed.stdout
        assert whole.wait(timeout=300) == 0, open(tmp_path / "whole.log").read()[-3000:]
    finally:
        if whole.poll() is None:
            whole.kill()

    expected = _history_values(tmp_path / "whole" / "r" / "history.csv")
    got = _history_values(run / "history.csv")
    assert [r["epoch"] for r in got] == [0, 1]
    for want, have in zip(expected, got):
        assert want.keys() == have.keys()
        for key in want:
            assert have[key] == pytest.approx(want[key], rel=1e-4, abs=1e-5), (want["epoch"], key)


def test_dataset_aware_batches_take_whole_datasets_first():
    """Per batch at most one dataset is represented by only some of its scenes; the rest whole."""
    scenes_per_dataset = [5, 3, 2, 1, 1, 4]
    labels, groups = [], []
    for d, n in enumerate(scenes_per_dataset):
        for s in range(n):
            labels += [10 * d + s] * 3
            groups += [d] * 3
    labels, groups = np.array(labels), np.array(groups)
    images = np.zeros((len(labels), 2, 2, 3), np.uint8)
    batches = PKBatches(images, labels, p=6, k=2, steps=30, seed=4, groups=groups, sampling="dataset")
    seen_partial = set()
    for i in range(len(batches)):
        _, y = batches[i]
        classes = np.unique(y)
        assert len(classes) == 6 and all((y == c).sum() == 2 for c in classes)
        per_dataset = {d: len({c for c in classes if c // 10 == d}) for d in {c // 10 for c in classes}}
        partial = [d for d, n in per_dataset.items() if n < scenes_per_dataset[d]]
        assert len(partial) <= 1
        seen_partial.update(partial)
    assert len(seen_partial) >= 2  # the random order varies which dataset is cut
    with pytest.raises(ConfigError, match="sampling must be one of"):
        PKBatches(images, labels, 4, 2, 1, sampling="scenes")


def test_infinite_batches_continue_at_the_restored_epoch():
    """Item i of an infinite dataset is batch i % steps of epoch i // steps, after the offset."""
    from imgsim.batches import CachedPKBatches

    labels = np.repeat(np.arange(5), 3)
    features = np.random.default_rng(0).normal(size=(15, 4, 2, 2, 3)).astype(np.float16)
    finite = CachedPKBatches([features], labels, 3, 2, steps=4, seed=7)
    infinite = CachedPKBatches([features], labels, 3, 2, steps=4, seed=7, infinite=True)
    assert infinite.num_batches is None and finite.num_batches == 4
    finite.epoch = 2
    infinite.offset = 1 * 4  # resumed at epoch 1
    for index in range(4):
        x, y = finite[index]
        x2, y2 = infinite[4 + index]  # epoch 2 of the resumed sequence
        np.testing.assert_array_equal(x, x2)
        np.testing.assert_array_equal(y, y2)
        # Every item is an augmented copy (1..3) of an image of its label.
        rows = [np.flatnonzero([np.array_equal(f, xi) for f in features[j, 1:]]) for j, xi in
                zip(finite.batch_indices(index, 2), x)]
        assert all(len(r) == 1 for r in rows)
