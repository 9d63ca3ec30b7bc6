"""Fine-tuning that stays near the start: L2-SP, a lower backbone learning rate, gradual unfreezing.

* :class:`L2SP` (Li et al. 2018, "Explicit inductive bias for transfer
  learning"): ``strength · Σ (w - w0)²`` over the trainable backbone weights,
  ``w0`` their ImageNet values, attached to each variable as its Keras
  regularizer (the new head keeps plain L2 weight decay, Li et al.'s β).
* :class:`LayerwiseAdam`: Adam whose learning rate is multiplied, per group
  of variables, by a factor held in an optimizer variable — group 0 (head
  and pooling) by 1, the backbone's blocks by ``backbone_lr_factor``.
* :class:`UnfreezeSchedule`: sets those factors at the start of every epoch
  so that backbone blocks join one at a time from the top (ULMFiT-style
  gradual unfreezing); a block not unfrozen yet has factor 0. The factors are
  a function of the epoch only, so a resumed run sets them as an
  uninterrupted one would.
"""

import numpy as np


def _keras():
    import keras

    return keras


class L2SP(_keras().regularizers.Regularizer):
    """``strength · Σ (w - start)²``: weight decay toward the starting point instead of 0.

    Parameters
    ----------
    strength : float
    start : array
        The weights' starting values (same shape as the variable).
    """

    def __init__(self, strength, start):
        self.strength = float(strength)
        self.start = np.asarray(start, np.float32)

    def __call__(self, x):
        from keras import ops

        return self.strength * ops.sum(ops.square(x - self.start))

    def get_config(self):
        return {"strength": self.strength, "start": self.start.tolist()}


def apply_l2sp(backbones, strength):
    """Attach :class:`L2SP` to every trainable backbone variable (start: its current value).

    Returns the number of variables regularised.
    """
    count = 0
    if strength <= 0:
        return count
    for backbone in backbones:
        for variable in backbone.trainable_weights:
            variable.regularizer = L2SP(strength, np.asarray(variable))
            count += 1
    return count


def _block(name):
    """Block of a MobileNetV2 layer name: ``block_16_expand`` → ``block_16``, ``Conv_1`` → ``Conv_1``."""
    parts = name.split("_")
    return "_".join(parts[:2]) if parts[0] == "block" else name


def backbone_groups(backbones):
    """Learning-rate groups of the trainable backbone variables, from the top block down.

    Returns
    -------
    groups : dict
        Variable path → group 1, 2, ... (1 = the block nearest the output; the
        same block of two ensemble backbones shares a group). Every other
        trainable variable is group 0.
    n_groups : int
        Number of groups including group 0.
    """
    blocks = []
    for backbone in backbones:
        for layer in reversed(backbone.layers):
            if layer.trainable_weights and _block(layer.name) not in blocks:
                blocks.append(_block(layer.name))
    groups = {}
    for backbone in backbones:
        for layer in backbone.layers:
            for variable in layer.trainable_weights:
                groups[variable.path] = blocks.index(_block(layer.name)) + 1
    return groups, len(blocks) + 1


class LayerwiseAdam(_keras().optimizers.Adam):
    """Adam with one learning-rate multiplier per group of variables.

    Parameters
    ----------
    groups : dict
        Variable path → group index (≥ 1); variables not listed are group 0,
        whose multiplier stays 1.
    n_groups : int
    **kwargs
        Passed to ``keras.optimizers.Adam`` (``learning_rate``, ...).

    Attributes
    ----------
    multipliers : keras.Variable of shape (n_groups,)
        Set between epochs (:class:`UnfreezeSchedule`); saved with the
        optimizer's state.
    """

    def __init__(self, groups=None, n_groups=1, **kwargs):
        super().__init__(**kwargs)
        self.groups, self.n_groups = dict(groups or {}), max(1, int(n_groups))

    def build(self, variables):
        super().build(variables)
        self.multipliers = self.add_variable((self.n_groups,), initializer="ones",
                                             name="lr_multipliers")
        self._group_by_index = [self.groups.get(v.path, 0) for v in variables]

    def update_step(self, gradient, variable, learning_rate):
        # The backend may pass its own variable type: look the Keras variable up by index.
        group = self._group_by_index[self._get_variable_index(variable)]
        if group:
            from keras import ops

            learning_rate = ops.cast(learning_rate, "float32") * self.multipliers[group]
        super().update_step(gradient, variable, learning_rate)

    def set_multipliers(self, values):
        self.multipliers.assign(np.asarray(values, np.float32))


def multipliers(epoch, n_groups, backbone_lr_factor=1.0, unfreeze_every=0):
    """Learning-rate multiplier of each group at ``epoch`` (0-based).

    Group 0 always 1. With ``unfreeze_every = N > 0``, backbone group ``g``
    (1 = top block) trains from epoch ``g · N`` on, at ``backbone_lr_factor``;
    with 0 every group trains from the start.

    Returns
    -------
    numpy.ndarray of shape (n_groups,)
    """
    out = np.full(n_groups, float(backbone_lr_factor))
    out[0] = 1.0
    if unfreeze_every:
        unfrozen = epoch // unfreeze_every
        out[1:][np.arange(1, n_groups) > unfrozen] = 0.0
    return out


class UnfreezeSchedule(_keras().callbacks.Callback):
    """Sets a :class:`LayerwiseAdam`'s multipliers from :func:`multipliers` at each epoch's start."""

    def __init__(self, optimizer, backbone_lr_factor=1.0, unfreeze_every=0, log=None):
        super().__init__()
        self.optimizer, self.factor, self.every, self.log = (optimizer, backbone_lr_factor,
                                                             unfreeze_every, log)
        self.last = None

    def on_epoch_begin(self, epoch, logs=None):
        values = multipliers(epoch, self.optimizer.n_groups, self.factor, self.every)
        if not self.optimizer.built:
            self.optimizer.build(self.model.trainable_variables)
        self.optimizer.set_multipliers(values)
        trained = int(np.sum(values[1:] > 0))
        if self.log is not None and trained != self.last and self.every:
            self.log(f"epoch {epoch + 1}: {trained} of {self.optimizer.n_groups - 1} backbone "
                     f"blocks training")
        self.last = trained
