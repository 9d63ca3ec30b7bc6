"""P×K training batches (``keras.utils.PyDataset``): from decoded images or from cached features.

Every batch is a function of ``(seed, epoch, index)`` alone — the classes,
the images, the augmented copy and the augmentation itself — so batches do
not depend on which loader thread ran first. Training uses them as an
*infinite* dataset (``infinite=True``, ``fit(steps_per_epoch=...)``): Keras
then asks for batch 0, 1, 2, ... in one sequence over all epochs (its
loader keeps batches fetched ahead for the next epoch instead of mixing two
epochs' schedules), batch ``i`` is index ``i % steps`` of epoch ``i // steps``,
and a resumed run starts the sequence at its restored epoch
(:class:`SamplerEpoch`): it sees exactly the batches of an uninterrupted run.
"""

import numpy as np

from imgsim.augment import augment_batch, batch_seed
from imgsim.errors import ConfigError

SAMPLINGS = ("pk", "dataset")


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
        Applied to each batch with :func:`imgsim.augment.augment_batch`, in the
        loader threads.
    seed : int
    groups : int array of shape (n,), optional
        A group (dataset) per image. With ``sampling="dataset"`` a batch takes
        its ``p`` classes from as few groups as it can: groups are visited in a
        random order (weighted by their number of classes) and all their
        classes taken, so negatives come from look-alike scenes of one dataset.
    sampling : {"pk", "dataset"}
    with_labels_input : bool
        Also pass the labels as the model's last input (for a
        :class:`~imgsim.losses.CrossBatchMemory`).
    infinite : bool
        An endless dataset (``num_batches`` None) whose item ``i`` is batch
        ``(offset + i) % steps`` of epoch ``(offset + i) // steps``; train with
        ``fit(..., steps_per_epoch=steps)``. Otherwise ``steps`` items of
        the epoch ``self.epoch`` (advanced by ``on_epoch_end``).
    """

    def __init__(self, images, labels, p, k, steps, augment=None, seed=0, workers=1,
                 groups=None, sampling="pk", with_labels_input=False, infinite=False, **kwargs):
        super().__init__(workers=workers, use_multiprocessing=False, max_queue_size=4, **kwargs)
        if sampling not in SAMPLINGS:
            raise ConfigError(f"sampling must be one of {SAMPLINGS}, got {sampling!r}")
        if sampling == "dataset" and groups is None:
            raise ConfigError("sampling='dataset' needs a group (dataset) per image")
        self.images, self.labels = images, np.asarray(labels)
        self.classes = np.unique(self.labels)
        self.members = {c: np.flatnonzero(self.labels == c) for c in self.classes}
        self.p, self.k, self.steps = min(p, len(self.classes)), k, steps
        self.augment, self.seed, self.epoch = augment, seed, 0
        self.sampling, self.with_labels_input = sampling, with_labels_input
        self.infinite, self.offset = infinite, 0
        if groups is not None:
            groups = np.asarray(groups)
            group_of_class = {c: groups[self.members[c][0]] for c in self.classes}
            self.group_classes = {g: np.array([c for c in self.classes if group_of_class[c] == g])
                                  for g in np.unique(groups)}

    def __len__(self):
        return self.steps

    @property
    def num_batches(self):
        return None if self.infinite else self.steps

    def _classes(self, rng):
        if self.sampling == "pk":
            return rng.choice(self.classes, self.p, replace=False)
        names = sorted(self.group_classes)
        weights = np.array([len(self.group_classes[g]) for g in names], float)
        order = rng.choice(len(names), len(names), replace=False, p=weights / weights.sum())
        chosen = []
        for g in order:
            chosen.extend(rng.permutation(self.group_classes[names[g]])[:self.p - len(chosen)])
            if len(chosen) == self.p:
                break
        return np.array(chosen)

    def batch_indices(self, index, epoch=None):
        """Image indices of batch ``index`` of ``epoch`` (default: the current one); deterministic."""
        epoch = self.epoch if epoch is None else epoch
        rng = np.random.default_rng([self.seed, epoch, index])
        picks = [rng.choice(self.members[c], self.k, replace=len(self.members[c]) < self.k)
                 for c in self._classes(rng)]
        return np.concatenate(picks)

    def inputs(self, idx, epoch, index):
        """Model inputs of the images ``idx`` in batch ``index`` of ``epoch`` (augmented images)."""
        x = self.images[idx].astype(np.float32)
        if self.augment is not None:
            x = augment_batch(self.augment, x, batch_seed(self.seed, epoch, index))
        return x

    def __getitem__(self, i):
        epoch, index = divmod(self.offset + i, self.steps) if self.infinite else (self.epoch, i)
        idx = self.batch_indices(index, epoch)
        x, y = self.inputs(idx, epoch, index), self.labels[idx].astype(np.int32)
        if self.with_labels_input:
            x = (*(x if isinstance(x, tuple) else (x,)), y)
        return x, y

    def on_epoch_end(self):
        self.epoch += 1


class CachedPKBatches(PKBatches):
    """P×K batches of cached backbone features (fast mode): one random augmented copy per image.

    Parameters
    ----------
    features : list of arrays of shape (n, copies + 1, h, w, c)
        One per backbone, from :class:`imgsim.features.FeatureCache`; copy 0
        is the un-augmented image.
    labels, p, k, steps, seed, groups, sampling, with_labels_input
        As for :class:`PKBatches`.
    """

    def __init__(self, features, labels, p, k, steps, seed=0, **kwargs):
        super().__init__(None, labels, p, k, steps, augment=None, seed=seed, **kwargs)
        self.features = list(features)
        self.copies = self.features[0].shape[1] - 1

    def inputs(self, idx, epoch, index):
        rng = np.random.default_rng([self.seed, epoch, index, 1])
        copy = rng.integers(1, self.copies + 1, len(idx)) if self.copies else np.zeros(len(idx), int)
        x = tuple(f[idx, copy].astype(np.float32) for f in self.features)
        return x if len(x) > 1 else x[0]


class SamplerEpoch(_keras().callbacks.Callback):
    """Starts an infinite :class:`PKBatches` at the first epoch Keras trains.

    Keras restores its epoch counter on resume (``BackupAndRestore``); at the
    first epoch of a session this sets the batches' ``offset`` to
    ``epoch × steps``, before the loader fetches anything, so the sequence
    continues where the interrupted run stopped instead of at epoch 0.
    """

    def __init__(self, batches):
        super().__init__()
        self.batches, self.started = batches, False

    def on_epoch_begin(self, epoch, logs=None):
        if not self.started:
            self.batches.offset, self.started = epoch * self.batches.steps, True
        self.batches.epoch = epoch
