"""Training: P×K batches, Keras callbacks, resumable run folders.

``fit(TrainConfig(...))`` writes ``<runs_dir>/<run-id>/``:

``config.json``    the full configuration (the run-id is a hash of it)
``split.json``     the scenes of each part of the split (seeded)
``history.csv``    one row per finished epoch
``best.keras``     the model with the best validation mAP@R
``metrics.json``   written last: its presence marks a finished run
``log.txt``        what happened, bad files skipped included
``backup/``        Keras ``BackupAndRestore`` state (weights, optimizer, epoch)

Every file is replaced atomically. A run killed at any point (SIGKILL
included) and started again with the same configuration resumes from its last
finished epoch; a finished run started again does nothing and says so. One
process at a time works in a run folder (``.lock``); a folder made with other
settings is refused, naming them; a run that fails before its first epoch
leaves no folder behind (:class:`RunFolder`).
"""

import csv
import hashlib
import io
import json
import os
import shutil
import time
import warnings
from dataclasses import dataclass, field

import numpy as np

from imgsim import data as data_mod
from imgsim import images as images_mod
from imgsim import quiet
from imgsim.augment import AugmentConfig
from imgsim.config import DictConfig, check_choice, check_range
from imgsim.errors import ConfigError, DataLayoutError, DataWarning, OutputError
from imgsim.fileio import (
    FolderLock,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    check_folder_name,
    check_output_dir,
    read_json,
)
from imgsim.losses import DISTANCE_METRICS
from imgsim.model import EmbeddingConfig

MONITORS = {"val_map_at_r": "max", "val_precision_at_1": "max", "val_loss": "min"}
# Fields that do not change a run's result: left out of its id and of the config comparison.
NOT_IN_RUN_ID = ("runs_dir", "run_name", "workers")


@dataclass
class TrainConfig(DictConfig):
    """Everything a training run depends on.

    Attributes
    ----------
    data : str
        Data root (IMC 2025 layout or ``<scene>/<image>`` folders).
    runs_dir : str
        Parent folder of run folders.
    run_name : str or None
        Run folder name; default: the run-id, a hash of every other field.
    embedding, augment : EmbeddingConfig, AugmentConfig
    p, k : int
        Scenes per batch and images per scene (P×K batches).
    epochs : int
    steps_per_epoch : int or None
        Default: training images // (p × k), at least 1.
    learning_rate : float
        Adam learning rate.
    margin : float
        Triplet margin (0.3: embeddings are unit vectors, distances lie in [0, 2];
        tfa's default 1.0 is the loss's own default).
    distance_metric : {"L2", "squared-L2", "angular"}
    monitor : {"val_map_at_r", "val_precision_at_1", "val_loss"}
        Validation figure that picks ``best.keras`` and drives early stopping
        and LR reduction.
    patience : int
        EarlyStopping patience (epochs without a better monitored value).
    lr_patience, lr_factor, min_lr
        ReduceLROnPlateau settings.
    val_fraction, test_fraction : float
        Fractions of scenes held out; ``split_seed`` seeds the split.
    pca_copies : int
        Augmented copies of each training image added to the PCA that
        initialises the head (``embedding.head_init="pca"``).
    seed : int
        Seeds batch sampling, augmentation and weight initialisation.
    on_error : {"raise", "skip"}
        Bad input files: stop with an error, or skip and count them in the log.
    workers : int
        Threads that build batches ahead of the training step.
    """

    data: str = "data/sample"
    runs_dir: str = "runs"
    run_name: str = None
    embedding: EmbeddingConfig = field(default_factory=EmbeddingConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    p: int = 8
    k: int = 4
    epochs: int = 20
    steps_per_epoch: int = None
    learning_rate: float = 1e-4
    margin: float = 0.3
    distance_metric: str = "L2"
    monitor: str = "val_map_at_r"
    patience: int = 5
    lr_patience: int = 2
    lr_factor: float = 0.5
    min_lr: float = 1e-6
    val_fraction: float = 0.15
    test_fraction: float = 0.25
    split_seed: int = 0
    pca_copies: int = 8
    seed: int = 0
    on_error: str = "raise"
    workers: int = 2

    def __post_init__(self):
        if isinstance(self.embedding, dict):
            self.embedding = EmbeddingConfig.from_dict(self.embedding)
        if isinstance(self.augment, dict):
            self.augment = AugmentConfig.from_dict(self.augment)
        for name, kind in (("embedding", EmbeddingConfig), ("augment", AugmentConfig)):
            if not isinstance(getattr(self, name), kind):
                raise ConfigError(f"{name} must be an {kind.__name__} or a dict of its fields, "
                                  f"got {getattr(self, name)!r}")
        super().__post_init__()
        if not self.data:
            raise ConfigError("data must name a data folder, got an empty string")
        if not self.runs_dir:
            raise ConfigError("runs_dir must name a folder, got an empty string")
        if self.run_name is not None:
            check_folder_name(self.run_name, "run_name")
        check_range("p", self.p, 2, integer=True)
        check_range("k", self.k, 2, integer=True)
        check_range("epochs", self.epochs, 1, integer=True)
        if self.steps_per_epoch is not None:
            check_range("steps_per_epoch", self.steps_per_epoch, 1, integer=True)
        check_range("learning_rate", self.learning_rate, 0, low_open=True)
        check_range("margin", self.margin, 0)
        check_choice("distance_metric", self.distance_metric, DISTANCE_METRICS)
        check_choice("monitor", self.monitor, tuple(MONITORS))
        check_range("patience", self.patience, 0, integer=True)
        check_range("lr_patience", self.lr_patience, 0, integer=True)
        check_range("lr_factor", self.lr_factor, 0, 1, low_open=True, high_open=True)
        check_range("min_lr", self.min_lr, 0)
        data_mod.check_fractions(self.val_fraction, self.test_fraction)
        check_range("pca_copies", self.pca_copies, 0, integer=True)
        check_range("seed", self.seed, 0, 2**32 - 1, integer=True)
        check_range("split_seed", self.split_seed, 0, 2**32 - 1, integer=True)
        check_choice("on_error", self.on_error, images_mod.ON_ERROR)
        check_range("workers", self.workers, 1, integer=True)

    def run_id(self):
        """Stable 12-hex-digit hash of everything that changes the result."""
        d = self.to_dict()
        for key in NOT_IN_RUN_ID:
            d.pop(key)
        d["data"] = os.path.abspath(d["data"])
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]

    def run_dir(self):
        return os.path.join(self.runs_dir, self.run_name or self.run_id())


# --------------------------------------------------------------------------- batches


def _keras():
    import keras

    return keras


class PKBatches(_keras().utils.PyDataset):
    """Class-balanced batches: ``p`` classes × ``k`` images each, augmented.

    Parameters
    ----------
    images : uint8 array of shape (n, size, size, 3)
        Decoded once, up front (decoding runs in parallel threads).
    labels : int array of shape (n,)
    p, k : int
        A class with fewer than ``k`` images is sampled with replacement; with
        fewer than ``p`` classes every class is in every batch.
    steps : int
        Batches per epoch.
    augment : keras layer or None
        Called with ``training=True`` on each batch, in the loader threads.
    seed : int
    """

    def __init__(self, images, labels, p, k, steps, augment=None, seed=0, workers=1, **kwargs):
        super().__init__(workers=workers, use_multiprocessing=False, max_queue_size=4, **kwargs)
        self.images, self.labels = images, np.asarray(labels)
        self.classes = np.unique(self.labels)
        self.members = {c: np.flatnonzero(self.labels == c) for c in self.classes}
        self.p, self.k, self.steps = min(p, len(self.classes)), k, steps
        self.augment, self.seed, self.epoch = augment, seed, 0

    def __len__(self):
        return self.steps

    def batch_indices(self, index):
        """Image indices of batch ``index`` of the current epoch (deterministic)."""
        rng = np.random.default_rng([self.seed, self.epoch, index])
        chosen = rng.choice(self.classes, self.p, replace=False)
        picks = [rng.choice(self.members[c], self.k, replace=len(self.members[c]) < self.k)
                 for c in chosen]
        return np.concatenate(picks)

    def __getitem__(self, index):
        idx = self.batch_indices(index)
        x = self.images[idx].astype(np.float32)
        if self.augment is not None:
            x = np.asarray(self.augment(x, training=True), np.float32)
        return x, self.labels[idx].astype(np.int32)

    def on_epoch_end(self):
        self.epoch += 1


# --------------------------------------------------------------------------- callbacks


class RetrievalValidation(_keras().callbacks.Callback):
    """Adds validation figures to the epoch logs: ``val_loss`` (the training
    loss over the whole validation set as one batch), ``val_precision_at_1``,
    ``val_recall_at_1``, ``val_recall_at_5`` and ``val_map_at_r``.

    Must come before the callbacks that monitor them (they share the logs dict).
    """

    def __init__(self, images, labels, loss, batch_size=32):
        super().__init__()
        self.images, self.labels, self.loss, self.batch_size = images, labels, loss, batch_size

    def on_epoch_end(self, epoch, logs=None):
        from imgsim.metrics import retrieval_report
        from imgsim.model import embed

        embeddings = embed(self.model, self.images, self.batch_size)
        logs["val_loss"] = float(self.loss(self.labels.astype(np.float32), embeddings))
        for name, value in retrieval_report(embeddings, self.labels, ks=(1, 5)).items():
            logs["val_" + name] = value


class AtomicModelCheckpoint(_keras().callbacks.ModelCheckpoint):
    """``ModelCheckpoint`` that writes a temporary file and renames it into place."""

    def _save_model(self, epoch, batch, logs):
        final = self.filepath
        folder, name = os.path.split(final)
        self.filepath = os.path.join(folder, f".tmp-{os.getpid()}-{name}")
        try:
            super()._save_model(epoch, batch, logs)
            if os.path.exists(self.filepath):
                os.replace(self.filepath, final)
        except OSError as exc:  # disk full, read-only: the previous best.keras stays
            raise OutputError(f"{final}: cannot write ({exc.strerror or exc})") from None
        finally:
            if os.path.exists(self.filepath):
                os.remove(self.filepath)
            self.filepath = final


# Attributes that make a callback's decisions depend on earlier epochs.
_STATE = {
    "ModelCheckpoint": ("best",),
    "EarlyStopping": ("wait", "best", "best_epoch", "stopped_epoch"),
    "ReduceLROnPlateau": ("wait", "cooldown_counter", "best"),
}


def _state_attrs(callback):
    keras = _keras()
    for base, attrs in _STATE.items():
        if isinstance(callback, getattr(keras.callbacks, base)):
            return attrs
    return ()


class RunBackup(_keras().callbacks.BackupAndRestore):
    """``BackupAndRestore`` that writes atomically and also restores callback state.

    Keras restores weights, optimizer state and the epoch counter; this
    subclass also restores the running state (best value, patience counters) of
    the ``stateful`` callbacks so that early stopping, LR reduction and
    best-checkpoint saving continue exactly. Put it last in the callback list:
    its ``on_train_begin`` must run after theirs (which reset that state).
    """

    def __init__(self, backup_dir, stateful=()):
        super().__init__(backup_dir, save_freq="epoch", delete_checkpoint=False,
                         double_checkpoint=True)
        self.stateful = list(stateful)

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        if not os.path.exists(self._training_metadata_path):
            return
        saved = read_json(self._training_metadata_path).get("callbacks", {})
        for i, callback in enumerate(self.stateful):
            for attr, value in saved.get(str(i), {}).items():
                if value is not None:  # None: not finite when saved; keep Keras' initial value
                    setattr(callback, attr, value)

    def _save_model(self):
        os.makedirs(self.backup_dir, exist_ok=True)
        # The current files always exist once written: the previous pair is a copy.
        for current, previous in ((self._weights_path, self._prev_weights_path),
                                  (self._training_metadata_path, self._prev_training_metadata_path)):
            if os.path.exists(current):
                with open(current, "rb") as f:
                    atomic_write_bytes(previous, f.read())
        tmp = os.path.join(self.backup_dir, f".tmp-{os.getpid()}.weights.h5")
        try:
            self.model.save_weights(tmp, overwrite=True)
            os.replace(tmp, self._weights_path)
        except OSError as exc:  # disk full, read-only: the previous backup stays
            if os.path.exists(tmp):
                os.remove(tmp)
            raise OutputError(f"{self._weights_path}: cannot write ({exc.strerror or exc})") from None
        state = {str(i): {a: _plain_number(getattr(c, a, None)) for a in _state_attrs(c)}
                 for i, c in enumerate(self.stateful)}
        atomic_write_json(self._training_metadata_path, {
            "epoch": self._current_epoch, "batch": self._last_batch_seen, "callbacks": state})


def _plain_number(value):
    """JSON-ready copy of a callback attribute (ints stay ints; NumPy/tensor scalars → float)."""
    return value if value is None or isinstance(value, int) else float(value)


class HistoryCSV(_keras().callbacks.Callback):
    """``history.csv``: one row per finished epoch, rewritten atomically.

    On resume it keeps the rows of the epochs before the restart, so every
    epoch appears exactly once.
    """

    def __init__(self, path):
        super().__init__()
        self.path, self.rows = path, None

    def on_epoch_end(self, epoch, logs=None):
        if self.rows is None:
            self.rows = [r for r in read_history(self.path) if int(r["epoch"]) < epoch]
        row = {"epoch": epoch, "learning_rate": float(self.model.optimizer.learning_rate)}
        row.update({k: float(v) for k, v in (logs or {}).items() if k != "learning_rate"})
        self.rows.append(row)
        columns = list(dict.fromkeys(k for r in self.rows for k in r))
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows)
        atomic_write_text(self.path, buffer.getvalue())


def read_history(path):
    """Rows of a ``history.csv`` as dicts (empty list if there is none)."""
    if not os.path.exists(path):
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


class RunLog:
    """``log.txt`` of a run: appended lines, the whole file replaced atomically each time."""

    def __init__(self, path, echo=True):
        self.path, self.echo = path, echo
        self.lines = open(path).read().splitlines() if os.path.exists(path) else []

    def __call__(self, message):
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        for line in str(message).splitlines() or [""]:
            self.lines.append(f"{stamp} {line}")
            if self.echo:
                print(line, flush=True)
        atomic_write_text(self.path, "\n".join(self.lines) + "\n")


class EpochLog(_keras().callbacks.Callback):
    """One line per epoch in the run log."""

    def __init__(self, log):
        super().__init__()
        self.log = log

    def on_epoch_end(self, epoch, logs=None):
        shown = ", ".join(f"{k}={v:.4g}" for k, v in (logs or {}).items())
        self.log(f"epoch {epoch + 1}: {shown}")


class ProgressBar(_keras().callbacks.Callback):
    """One tqdm bar over every step of the run, instead of Keras' own progress bar.

    Keras' bar redraws with backspaces and ANSI codes, which notebooks show as
    rows of boxes; ``tqdm.auto`` renders as a widget in Jupyter and as one
    updating line in a terminal (``TQDM_DISABLE=1`` hides it). A resumed run
    starts the bar at its first unfinished epoch.
    """

    def __init__(self, epochs, steps):
        super().__init__()
        self.epochs, self.steps, self.bar = epochs, steps, None

    def on_epoch_begin(self, epoch, logs=None):
        from tqdm.auto import tqdm

        if self.bar is None:
            self.bar = tqdm(total=self.epochs * self.steps, initial=epoch * self.steps,
                            desc="training", unit="step")
        self.bar.set_description(f"epoch {epoch + 1}/{self.epochs}")

    def on_train_batch_end(self, batch, logs=None):
        self.bar.update(1)
        if logs and "loss" in logs:
            self.bar.set_postfix(loss=f"{float(logs['loss']):.4f}", refresh=False)

    def on_epoch_end(self, epoch, logs=None):
        shown = {k: f"{float(v):.4f}" for k, v in (logs or {}).items() if k in ("loss", "val_map_at_r")}
        self.bar.set_postfix(shown)

    def on_train_end(self, logs=None):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


# --------------------------------------------------------------------------- fit


def devices():
    """Accelerators the active Keras backend sees, e.g. ``['GPU:0']`` (empty on CPU)."""
    keras = _keras()
    backend = keras.config.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return [d.name.replace("/physical_device:", "") for d in tf.config.list_physical_devices("GPU")]
    if backend == "jax":
        import jax

        return [str(d) for d in jax.devices() if d.platform != "cpu"]
    return []


def prepare_data(config, log):
    """Table, split and decoded train/val arrays of a run (bad files handled per ``on_error``)."""
    bad = images_mod.BadFiles()
    with warnings.catch_warnings(record=True) as notes:  # label repairs go to the run log
        warnings.simplefilter("always", DataWarning)
        table = data_mod.load_table(config.data, on_error=config.on_error, bad=bad)
    for note in notes:
        if issubclass(note.category, DataWarning):
            log(f"note: {note.message}")
        else:
            warnings.warn_explicit(note.message, note.category, note.filename, note.lineno)
    split = data_mod.split_scenes(table, config.val_fraction, config.test_fraction, config.split_seed)
    size = config.embedding.image_size
    parts = {}
    for part in ("train", "val"):
        rows = data_mod.select(table, getattr(split, part))
        images, ok = images_mod.load_images(rows["path"], size, on_error=config.on_error, bad=bad,
                                          workers=max(2, config.workers), progress=False)
        parts[part] = (images, data_mod.label_ids(rows)[ok])
    if len(bad):
        log(f"skipped {len(bad)} bad input(s):\n{bad.summary()}")
    log(f"data: {len(table)} images, {table['scene'].nunique()} scenes; "
        f"train {len(parts['train'][0])} images in {len(split.train)} scenes, "
        f"val {len(parts['val'][0])} images in {len(split.val)} scenes, test scenes {len(split.test)}")
    return split, parts, len(bad)


def remove_stale_temporaries(run_dir):
    """Delete ``.tmp-*`` files a killed run left half-written (the real files are intact)."""
    for folder in (run_dir, os.path.join(run_dir, "backup")):
        if os.path.isdir(folder):
            for name in os.listdir(folder):
                if name.startswith(".tmp-"):
                    os.remove(os.path.join(folder, name))


# --------------------------------------------------------------------------- run folders


def _flatten(d, prefix=""):
    out = {}
    for key, value in d.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def config_differences(saved, config):
    """Settings in which ``config`` differs from a run folder's saved ``TrainConfig``.

    Fields in :data:`NOT_IN_RUN_ID` do not count; ``data`` compares as a
    folder (relative or absolute).

    Returns
    -------
    list of (name, saved value, new value), nested names dotted (``embedding.alpha``).
    """
    a, b = _flatten(saved.to_dict()), _flatten(config.to_dict())
    same_data = a["data"] == b["data"] or os.path.abspath(a["data"]) == os.path.abspath(b["data"])
    return [(k, a.get(k), b.get(k)) for k in dict.fromkeys(list(a) + list(b))
            if k not in NOT_IN_RUN_ID and a.get(k) != b.get(k) and not (k == "data" and same_data)]


def _has_progress(run_dir):
    """Whether a run folder holds anything of value: a finished epoch or a result."""
    return any(os.path.exists(os.path.join(run_dir, *name)) for name in
               (("history.csv",), ("best.keras",), ("metrics.json",),
                ("backup", "training_metadata.json")))


class RunFolder:
    """A run folder while :func:`fit` works in it (``with RunFolder(config, run_dir) as f:``).

    On entry: ``runs_dir`` is checked writable, the folder is locked
    (:class:`~imgsim.fileio.FolderLock`: a second process training into it gets
    a :class:`~imgsim.errors.LockedError` naming this one), and a folder made
    with other settings is refused (:class:`~imgsim.errors.ConfigError` naming
    the settings that differ) rather than resumed, overwritten or reported
    as finished. ``finished`` says whether the run is already done. On an
    error before the first epoch finished, a folder this call created is
    removed again: a failed start leaves no stub.
    """

    def __init__(self, config, run_dir):
        self.config, self.run_dir = config, run_dir
        self.lock = FolderLock(run_dir, "imgsim train")
        self.created = self.finished = False

    def __enter__(self):
        check_output_dir(self.config.runs_dir, "runs_dir")
        if os.path.exists(self.run_dir) and not os.path.isdir(self.run_dir):
            raise ConfigError(f"run folder {self.run_dir}: is a file")
        self.created = not os.path.exists(self.run_dir)
        self._new_parents = []  # folders above run_dir this call creates: removed with a stub
        parent = os.path.dirname(os.path.abspath(self.run_dir))
        while not os.path.exists(parent):
            self._new_parents.append(parent)
            parent = os.path.dirname(parent)
        try:
            self.lock.acquire()
        except BaseException:
            self._remove_stub()
            raise
        try:
            self.finished = self._check_settings()
        except BaseException:
            self.lock.release()
            raise
        return self

    def _remove_stub(self):
        """Remove the run folder (and the parents) this call created, unless it holds progress."""
        if not self.created or _has_progress(self.run_dir):
            return
        shutil.rmtree(self.run_dir, ignore_errors=True)
        for parent in self._new_parents:  # only while empty: another run may have come in
            try:
                os.rmdir(parent)
            except OSError:
                break

    def _check_settings(self):
        path = os.path.join(self.run_dir, "config.json")
        finished = os.path.exists(os.path.join(self.run_dir, "metrics.json"))
        if not os.path.exists(path):
            if finished or _has_progress(self.run_dir):
                raise DataLayoutError(f"{path}: missing from a run folder with results")
            return False
        try:
            saved = TrainConfig.from_dict(read_json(path))
        except ConfigError as exc:
            raise DataLayoutError(f"{path}: not a training configuration ({exc})") from None
        differ = config_differences(saved, self.config)
        if differ:
            shown = "; ".join(f"{k}: {a!r} in the run, {b!r} now" for k, a, b in differ[:6])
            more = f"; and {len(differ) - 6} more" if len(differ) > 6 else ""
            state = "a finished" if finished else "an unfinished"
            raise ConfigError(
                f"{self.run_dir}: {state} run with other settings ({shown}{more}); give "
                f"another run_name (--run-name), or the run's own settings to "
                f"{'reuse' if finished else 'resume'} it")
        return finished

    def __exit__(self, kind, error, trace):
        try:
            if kind is not None:
                self._remove_stub()
        finally:
            self.lock.release()
        return False


def fit(config):
    """Train (or resume, or skip if finished) the run of ``config``.

    The run folder is locked while training, refused if it holds a run made
    with other settings, and removed again if the run fails before its first
    epoch (see :class:`RunFolder`).

    Returns
    -------
    dict
        The run's ``metrics.json`` content plus ``run_dir``.
    """
    config.validate()  # attributes may have been changed since construction
    run_dir = config.run_dir()
    metrics_path = os.path.join(run_dir, "metrics.json")
    with RunFolder(config, run_dir) as folder:
        if folder.finished:
            print(f"run {run_dir} is already finished (metrics.json exists): nothing to do",
                  flush=True)
            return dict(read_json(metrics_path), run_dir=run_dir)
        return _fit(config, run_dir, metrics_path)


def _fit(config, run_dir, metrics_path):
    """The training of :func:`fit`, in a locked run folder."""
    keras = _keras()
    from imgsim.losses import TripletSemiHardLoss
    from imgsim.model import build_embedding_model, init_head_pca

    remove_stale_temporaries(run_dir)
    log = RunLog(os.path.join(run_dir, "log.txt"))
    resuming = os.path.exists(os.path.join(run_dir, "backup", "training_metadata.json"))
    log(f"{'resuming' if resuming else 'starting'} run {run_dir} "
        f"(keras {keras.__version__}, backend {keras.config.backend()}, "
        f"devices: {', '.join(devices()) or 'CPU only'})")
    atomic_write_json(os.path.join(run_dir, "config.json"), config.to_dict())
    start = time.time()

    split, parts, n_bad = prepare_data(config, log)
    atomic_write_json(os.path.join(run_dir, "split.json"), split.to_dict())
    (train_x, train_y), (val_x, val_y) = parts["train"], parts["val"]
    if len(np.unique(train_y)) < 2:
        raise ConfigError(f"{config.data}: the training split has fewer than 2 scenes")

    keras.utils.set_random_seed(config.seed)
    from imgsim.augment import build_augmentation

    augment = build_augmentation(config.augment)
    steps = config.steps_per_epoch or max(1, len(train_x) // (config.p * config.k))
    batches = PKBatches(train_x, train_y, config.p, config.k, steps, augment=augment,
                        seed=config.seed, workers=config.workers)
    model = build_embedding_model(config.embedding)
    if config.embedding.head_init == "pca" and not resuming:
        kept = init_head_pca(model, train_x, augment, config.pca_copies, seed=config.seed,
                             progress=True)
        log(f"head initialised from the PCA of the GAP features of the training images and "
            f"{config.pca_copies} augmented copies ({kept:.1%} of their energy)")
    loss = TripletSemiHardLoss(config.margin, config.distance_metric)
    model.compile(optimizer=keras.optimizers.Adam(config.learning_rate), loss=loss)

    monitor, mode = config.monitor, MONITORS[config.monitor]
    checkpoint = AtomicModelCheckpoint(os.path.join(run_dir, "best.keras"), monitor=monitor,
                                       mode=mode, save_best_only=True)
    stopping = keras.callbacks.EarlyStopping(monitor=monitor, mode=mode, patience=config.patience)
    plateau = keras.callbacks.ReduceLROnPlateau(monitor=monitor, mode=mode, factor=config.lr_factor,
                                                patience=config.lr_patience, min_lr=config.min_lr)
    callbacks = [
        RetrievalValidation(val_x, val_y, loss),
        ProgressBar(config.epochs, steps),
        HistoryCSV(os.path.join(run_dir, "history.csv")),
        EpochLog(log),
        checkpoint, stopping, plateau,
        RunBackup(os.path.join(run_dir, "backup"), stateful=[checkpoint, stopping, plateau]),
    ]
    # ProgressBar draws the progress; EpochLog writes one line per epoch.
    with quiet.tensorflow_logs():
        model.fit(batches, epochs=config.epochs, callbacks=callbacks, verbose=0)

    history = read_history(os.path.join(run_dir, "history.csv"))
    values = [float(r[monitor]) for r in history]
    best = history[int(np.argmax(values) if mode == "max" else np.argmin(values))]
    metrics = {
        "best_epoch": int(best["epoch"]) + 1,
        "epochs_run": len(history),
        "val": {k[4:]: float(v) for k, v in best.items() if k.startswith("val_")},
        "bad_inputs": n_bad,
        "train_seconds_last_session": round(time.time() - start, 1),
        "split": split.to_dict(),
    }
    atomic_write_json(metrics_path, metrics)
    shutil.rmtree(os.path.join(run_dir, "backup"), ignore_errors=True)
    log(f"finished: best val mAP@R {metrics['val']['map_at_r']:.4f} at epoch {metrics['best_epoch']}; "
        f"best model {os.path.join(run_dir, 'best.keras')}")
    return dict(metrics, run_dir=run_dir)
