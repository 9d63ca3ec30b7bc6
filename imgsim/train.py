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
from imgsim.batches import CachedPKBatches, PKBatches, SamplerEpoch  # noqa: F401  (PKBatches: API)
from imgsim.losses import DISTANCE_METRICS
from imgsim.model import EmbeddingConfig

MONITORS = {"val_map_at_r": "max", "val_precision_at_1": "max", "val_loss": "min"}
# Fields that do not change a run's result: left out of its id and of the config comparison.
NOT_IN_RUN_ID = ("runs_dir", "run_name", "workers", "cache_dir")
MODES = ("full", "fast")


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
    miner : {"semihard", "hard", "all", "distance_weighted"}
        Triplet mining (:mod:`imgsim.losses`); "semihard" is the seed's.
    soft : bool
        Soft-margin triplets (miners "hard", "all", "distance_weighted").
    xbm_size : int
        Cross-batch memory slots (XBM; 0: off): positives and negatives are
        also mined among the last ``xbm_size`` training embeddings.
    sampling : {"pk", "dataset"}
        "pk": ``p`` random scenes per batch; "dataset": the ``p`` scenes come
        from as few datasets as possible (look-alike negatives).
    l2sp : float
        L2-SP strength: ``l2sp · Σ (w - w_ImageNet)²`` over the trainable
        backbone weights (0: off).
    backbone_lr_factor : float
        The backbone's learning rate relative to the head's.
    unfreeze_every : int
        Gradual unfreezing: the trainable backbone blocks join one at a time,
        from the top, every this many epochs (0: all from the start).
    mode : {"full", "fast"}
        "full": images through the whole network, fresh augmentation per
        batch. "fast": the frozen part of the network runs once per image
        and per augmented copy (:mod:`imgsim.features`, cached on disk) and
        only the trainable rest trains — with ``trainable_layers=0``, a head
        on cached backbone features.
    cache_copies : int
        Fast mode: augmented copies cached per training image.
    cache_dir : str or None
        Fast mode: feature cache folder (default ``~/.cache/imgsim/features``).
    split : dict or None
        Explicit ``{"train": [...], "val": [...], "test": [...]}`` scene keys
        (``dataset/scene``), e.g. one fold of :mod:`imgsim.crossval`; None
        splits by ``val_fraction``/``test_fraction``.
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
    miner: str = "semihard"
    soft: bool = False
    xbm_size: int = 0
    sampling: str = "pk"
    l2sp: float = 0.0
    backbone_lr_factor: float = 1.0
    unfreeze_every: int = 0
    mode: str = "full"
    cache_copies: int = 8
    cache_dir: str = None
    split: dict = None

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
        self._check_recipe()

    def _check_recipe(self):
        """The options of issue 12's recipes: miner, memory, sampling, fine-tuning, mode."""
        from imgsim.batches import SAMPLINGS
        from imgsim.losses import MINERS

        for name, allowed in (("miner", MINERS), ("sampling", SAMPLINGS), ("mode", MODES)):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.miner == "semihard" and self.soft:
            raise ConfigError("soft=True needs miner 'hard', 'all' or 'distance_weighted'")
        if self.miner == "distance_weighted" and self.distance_metric != "L2":
            raise ConfigError("miner='distance_weighted' needs distance_metric='L2'")
        if self.xbm_size and self.xbm_size < self.p * self.k:
            raise ConfigError(f"xbm_size must be 0 (off) or at least the batch size p*k = "
                              f"{self.p * self.k}, got {self.xbm_size}")
        for name in ("xbm_size", "unfreeze_every", "cache_copies"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not self.l2sp >= 0:
            raise ConfigError(f"l2sp must be >= 0, got {self.l2sp}")
        if not self.backbone_lr_factor > 0:
            raise ConfigError(f"backbone_lr_factor must be positive, got {self.backbone_lr_factor}")
        e = self.embedding
        if e.head == "none" and e.trainable_layers == 0 and e.pooling == "gap":
            raise ConfigError("nothing to train: head='none', pooling='gap' and trainable_layers=0")
        if self.split is not None:
            missing = [part for part in ("train", "val", "test") if part not in self.split]
            if missing:
                raise ConfigError(f"split needs the keys train, val and test; missing {missing}")


    def run_id(self):
        """Stable 12-hex-digit hash of everything that changes the result."""
        d = self.to_dict()
        for key in NOT_IN_RUN_ID:
            d.pop(key)
        d["data"] = os.path.abspath(d["data"])
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]

    def run_dir(self):
        return os.path.join(self.runs_dir, self.run_name or self.run_id())


def _keras():
    import keras

    return keras


def flat_config(**options):
    """A :class:`TrainConfig` from flat options, as the CLI and the notebooks name them.

    Keys: every ``TrainConfig`` field except ``embedding`` and ``augment``;
    every ``EmbeddingConfig`` field (``hidden_dim`` None: twice
    ``embedding_dim`` for the "mlp" head, as its PCA start needs);
    ``augment_strength`` (``AugmentConfig.strength``). None values take the
    field's default.

    Raises
    ------
    ConfigError
        Naming an unknown key.
    """
    from dataclasses import fields

    from imgsim.augment import AugmentConfig

    options = {k: v for k, v in options.items() if v is not None}
    train_keys = {f.name for f in fields(TrainConfig)} - {"embedding", "augment"}
    embedding_keys = {f.name for f in fields(EmbeddingConfig)}
    unknown = sorted(set(options) - train_keys - embedding_keys - {"augment_strength"})
    if unknown:
        raise ConfigError(f"unknown training option(s): {', '.join(unknown)}")
    embedding = {k: v for k, v in options.items() if k in embedding_keys}
    if "hidden_dim" not in embedding and embedding.get("head", EmbeddingConfig.head) == "mlp":
        embedding["hidden_dim"] = 2 * embedding.get("embedding_dim", EmbeddingConfig.embedding_dim)
    augment = AugmentConfig(strength=options.get("augment_strength", AugmentConfig.strength))
    return TrainConfig(embedding=EmbeddingConfig(**embedding), augment=augment,
                       **{k: v for k, v in options.items() if k in train_keys})


# --------------------------------------------------------------------------- callbacks


class RetrievalValidation(_keras().callbacks.Callback):
    """Adds validation figures to the epoch logs: ``val_loss`` (the training
    loss over the whole validation set as one batch), ``val_precision_at_1``,
    ``val_recall_at_1``, ``val_recall_at_5`` and ``val_map_at_r``.

    Must come before the callbacks that monitor them (they share the logs dict).

    Parameters
    ----------
    images : array or tuple of arrays
        Validation images, or (fast mode) their cached cut features, one array
        per backbone.
    labels : int array of shape (n,)
    loss : keras loss (plain, without a cross-batch memory)
    embedder : keras.Model or None
        The network that embeds ``images``; default the model being trained.
    """

    def __init__(self, images, labels, loss, batch_size=32, embedder=None):
        super().__init__()
        self.images, self.labels, self.loss, self.batch_size = images, labels, loss, batch_size
        self.embedder = embedder

    def on_epoch_end(self, epoch, logs=None):
        from imgsim.metrics import retrieval_report

        model = self.embedder or self.model
        x = self.images
        embeddings = np.concatenate([np.asarray(model.predict_on_batch(
            x[i:i + self.batch_size] if not isinstance(x, tuple)
            else [f[i:i + self.batch_size] for f in x]), np.float32)
            for i in range(0, len(self.labels), self.batch_size)])
        logs["val_loss"] = float(self.loss(self.labels.astype(np.float32), embeddings))
        for name, value in retrieval_report(embeddings, self.labels, ks=(1, 5)).items():
            logs["val_" + name] = value


class AtomicModelCheckpoint(_keras().callbacks.ModelCheckpoint):
    """``ModelCheckpoint`` that writes a temporary file and renames it into place.

    ``saved_model`` (default: the model being trained) is what gets saved:
    the embedding network, when training runs a wrapper of it (cached
    features, a cross-batch memory).
    """

    def __init__(self, filepath, saved_model=None, **kwargs):
        super().__init__(filepath, **kwargs)
        self.saved_model = saved_model

    def set_model(self, model):
        super().set_model(self.saved_model or model)

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
    best-checkpoint saving continue exactly, and the model's random-generator
    states (dropout masks). With the batches a function of the epoch
    (:class:`~imgsim.batches.SamplerEpoch`), a resumed run gives the history
    of an uninterrupted one. Put it last in the callback list:
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
        metadata = read_json(self._training_metadata_path)
        saved = metadata.get("callbacks", {})
        for i, callback in enumerate(self.stateful):
            for attr, value in saved.get(str(i), {}).items():
                if value is not None:  # None: not finite when saved; keep Keras' initial value
                    setattr(callback, attr, value)
        for variable, value in zip(_seed_states(self.model), metadata.get("seed_states", [])):
            variable.assign(np.asarray(value, dtype=variable.dtype))

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
        seeds = [np.asarray(v).tolist() for v in _seed_states(self.model)]
        atomic_write_json(self._training_metadata_path, {
            "epoch": self._current_epoch, "batch": self._last_batch_seen, "callbacks": state,
            "seed_states": seeds})


def _seed_states(model):
    """The model's random-generator state variables (e.g. Dropout's), which ``save_weights`` skips.

    Restoring them on resume makes the dropout masks of the resumed epochs
    those of an uninterrupted run.
    """
    weights = {id(v) for v in model.weights}
    return [v for v in model.variables if id(v) not in weights]


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


def scene_split(config, table):
    """The run's split: ``config.split`` (checked against the table) or a seeded split by scene."""
    if config.split is None:
        return data_mod.split_scenes(table, config.val_fraction, config.test_fraction,
                                     config.split_seed)
    split = data_mod.Split.from_dict(config.split)
    known = set(data_mod.scene_keys(table))
    unknown = sorted(set(split.train + split.val + split.test) - known)
    if unknown:
        raise ConfigError(f"split: scene(s) not in {config.data}: {', '.join(unknown[:5])}")
    return split


def prepare_data(config, log):
    """Table, split and train/val inputs of a run (bad files handled per ``on_error``).

    Returns
    -------
    split : Split
    parts : dict
        ``parts[part] = (x, labels, datasets)`` for part "train" and "val";
        ``x`` holds decoded images (mode "full") or, in mode "fast", the
        cached cut features: a list of (n, copies + 1, h, w, c) arrays for
        "train" and a tuple of (n, h, w, c) arrays (copy 0) for "val".
    n_bad : int
    """
    bad = images_mod.BadFiles()
    with warnings.catch_warnings(record=True) as notes:  # label repairs go to the run log
        warnings.simplefilter("always", DataWarning)
        table = data_mod.load_table(config.data, on_error=config.on_error, bad=bad)
    for note in notes:
        if issubclass(note.category, DataWarning):
            log(f"note: {note.message}")
        else:
            warnings.warn_explicit(note.message, note.category, note.filename, note.lineno)
    split = scene_split(config, table)
    parts = {}
    for part in ("train", "val"):
        rows = data_mod.select(table, getattr(split, part))
        if config.mode == "fast":
            from imgsim.features import FeatureCache

            x, ok = FeatureCache(config.cache_dir).maps(
                rows["path"], config.embedding, config.augment, config.cache_copies,
                config.seed, on_error=config.on_error, bad=bad)
            x = x if part == "train" else tuple(m[:, 0] for m in x)
        else:
            x, ok = images_mod.load_images(rows["path"], config.embedding.image_size,
                                           on_error=config.on_error, bad=bad,
                                           workers=max(2, config.workers), progress=False)
        parts[part] = (x, data_mod.label_ids(rows)[ok], rows["dataset"].to_numpy()[ok])
    if len(bad):
        log(f"skipped {len(bad)} bad input(s):\n{bad.summary()}")
    n = {part: len(parts[part][1]) for part in parts}
    log(f"data: {len(table)} images, {table['scene'].nunique()} scenes; "
        f"train {n['train']} images in {len(split.train)} scenes, "
        f"val {n['val']} images in {len(split.val)} scenes, test scenes {len(split.test)}"
        + (f"; fast mode: cached features, {config.cache_copies} augmented copies per image"
           if config.mode == "fast" else ""))
    return split, parts, len(bad)


def remove_stale_temporaries(run_dir):
    """Delete ``.tmp-*`` files a killed run left half-written (the real files are intact)."""
    for folder in (run_dir, os.path.join(run_dir, "backup")):
        if os.path.isdir(folder):
            for name in os.listdir(folder):
                if name.startswith(".tmp-"):
                    os.remove(os.path.join(folder, name))


BEST_TRAINED = "best_trained.weights.h5"  # fast mode: weights of the trained part, best epoch


def build_networks(config, train_x, train_y, resuming, log):
    """The networks of a run, the head initialised, the training model compiled.

    Returns
    -------
    model : keras.Model
        The whole embedding network (what ``best.keras`` holds).
    net : keras.Model
        What embeds the training inputs: ``model`` itself, or in fast mode
        the part after the frozen cut (:func:`imgsim.model.split_at_cut`).
    trained : keras.Model
        What ``fit`` trains: ``net``, or ``net`` followed by a
        :class:`~imgsim.losses.CrossBatchMemory` (``xbm_size > 0``), compiled
        with the run's loss and a :class:`~imgsim.finetune.LayerwiseAdam`.
    optimizer : LayerwiseAdam
    """
    keras = _keras()
    from imgsim.finetune import LayerwiseAdam, apply_l2sp, backbone_groups
    from imgsim.losses import CrossBatchMemory, make_loss
    from imgsim.model import backbones_of, build_embedding_model, split_at_cut

    model = build_embedding_model(config.embedding)
    net = split_at_cut(model, config.embedding) if config.mode == "fast" else model
    if not resuming:
        init_head(config, model, train_x, train_y, log)
    backbones = backbones_of(model)
    if apply_l2sp(backbones, config.l2sp):
        log(f"L2-SP {config.l2sp:g} toward the ImageNet weights of the trainable backbone layers")
    groups, n_groups = backbone_groups(backbones)
    optimizer = LayerwiseAdam(groups, n_groups, learning_rate=config.learning_rate)
    trained = net
    if config.xbm_size:
        labels = keras.Input((), dtype="int32", name="labels")
        packed = CrossBatchMemory(config.xbm_size, name="cross_batch_memory")([net.output, labels])
        trained = keras.Model([*net.inputs, labels], packed, name="imgsim_train_xbm")
    trained.compile(optimizer=optimizer, loss=make_loss(
        config.miner, config.margin, config.distance_metric, config.soft, bool(config.xbm_size)))
    return model, net, trained, optimizer


def init_head(config, model, train_x, train_y, log):
    """Initialise the head per ``config.embedding.head_init`` (PCA, whitening, identity, random)."""
    from imgsim import model as model_mod

    e = config.embedding
    if e.head_init == "identity":
        model_mod.set_head_identity(model)
        log("head initialised at the identity: training starts from the ImageNet features")
    if e.head_init not in ("pca", "whitening") or e.head == "none":
        return
    pooled, copies = pooled_training_features(config, model, train_x)
    if e.head_init == "whitening":
        labels = np.tile(np.asarray(train_y), copies + 1)
        condition = model_mod.set_head_whitening(model, pooled, labels, e.whitening_shrinkage,
                                                 seed=config.seed)
        log(f"head initialised at the learned whitening of the pooled features of the training "
            f"images and {copies} augmented copies (shrinkage {e.whitening_shrinkage:g}, "
            f"condition number {condition:.3g})")
        return
    kept = model_mod.set_head_pca(model, pooled, config.seed)
    log(f"head initialised from the PCA of the pooled features of the training images and "
        f"{copies} augmented copies ({kept:.1%} of their energy)")


def pooled_training_features(config, model, train_x):
    """Pooled features of the training images and ``pca_copies`` augmented copies.

    Returns
    -------
    (features, copies) : array of shape ((copies + 1) * n, d), rows of copy
        ``c`` of every image after those of copy ``c - 1``; and ``copies``.
    """
    from imgsim import model as model_mod

    if config.mode != "fast":
        from imgsim.augment import build_augmentation

        return model_mod.pooled_features(model, train_x, build_augmentation(config.augment),
                                         config.pca_copies, progress=True), config.pca_copies
    features = model_mod.split_at_cut(model, config.embedding, features_only=True)
    copies = min(config.pca_copies, train_x[0].shape[1] - 1)
    pooled = []
    for c in range(copies + 1):  # copy-major, as in full mode
        x = [f[:, c] for f in train_x]
        pooled.append(np.concatenate([features.predict_on_batch(
            [v[i:i + 64].astype(np.float32) for v in x]) for i in range(0, len(x[0]), 64)]))
    return np.concatenate(pooled), copies


def training_batches(config, train_x, train_y, datasets):
    """P×K batches of the training inputs (images, or cached features in fast mode)."""
    from imgsim.augment import build_augmentation

    steps = config.steps_per_epoch or max(1, len(train_y) // (config.p * config.k))
    common = dict(seed=config.seed, workers=config.workers, groups=datasets, infinite=True,
                  sampling=config.sampling, with_labels_input=bool(config.xbm_size))
    if config.mode == "fast":
        return CachedPKBatches(train_x, train_y, config.p, config.k, steps, **common)
    return PKBatches(train_x, train_y, config.p, config.k, steps,
                     augment=build_augmentation(config.augment), **common)


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
    from imgsim.finetune import UnfreezeSchedule
    from imgsim.losses import make_loss

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
    (train_x, train_y, _), (val_x, val_y, _) = parts["train"], parts["val"]
    if len(np.unique(train_y)) < 2:
        raise ConfigError(f"{config.data}: the training split has fewer than 2 scenes")

    keras.utils.set_random_seed(config.seed)
    model, net, trained, optimizer = build_networks(config, train_x, train_y, resuming, log)
    batches = training_batches(config, train_x, train_y, parts["train"][2])
    val_loss = make_loss(config.miner, config.margin, config.distance_metric, config.soft)

    monitor, mode = config.monitor, MONITORS[config.monitor]
    fast = config.mode == "fast"
    best_path = os.path.join(run_dir, BEST_TRAINED if fast else "best.keras")
    checkpoint = AtomicModelCheckpoint(best_path, saved_model=net, monitor=monitor, mode=mode,
                                       save_best_only=True, save_weights_only=fast)
    stopping = keras.callbacks.EarlyStopping(monitor=monitor, mode=mode, patience=config.patience)
    plateau = keras.callbacks.ReduceLROnPlateau(monitor=monitor, mode=mode, factor=config.lr_factor,
                                                patience=config.lr_patience, min_lr=config.min_lr)
    callbacks = [
        SamplerEpoch(batches),
        UnfreezeSchedule(optimizer, config.backbone_lr_factor, config.unfreeze_every, log),
        RetrievalValidation(val_x, val_y, val_loss, embedder=net),
        ProgressBar(config.epochs, batches.steps),
        HistoryCSV(os.path.join(run_dir, "history.csv")),
        EpochLog(log),
        checkpoint, stopping, plateau,
        RunBackup(os.path.join(run_dir, "backup"), stateful=[checkpoint, stopping, plateau]),
    ]
    # ProgressBar draws the progress; EpochLog writes one line per epoch.
    with quiet.tensorflow_logs():
        trained.fit(batches, epochs=config.epochs, steps_per_epoch=batches.steps, shuffle=False,
                    callbacks=callbacks, verbose=0)
    if fast:  # the whole embedding network, with the best epoch's weights
        from imgsim.model import save_model

        net.load_weights(best_path)
        save_model(model, os.path.join(run_dir, "best.keras"))

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
