"""Triplet losses with four miners and a cross-batch memory, written with ``keras.ops`` only.

Miners (how each anchor's triplets are chosen inside a P×K batch):

``"semihard"``
    :class:`TripletSemiHardLoss`, tensorflow-addons' ``TripletSemiHardLoss``
    (tfa 0.23, the FaceNet mining of Schroff et al. 2015) operation for
    operation: for every (anchor, positive) pair the closest negative farther
    than the positive, else the farthest negative.
``"hard"``
    :class:`TripletHardLoss`, tfa's ``TripletHardLoss`` (batch-hard, Hermans
    et al. 2017): per anchor its farthest positive and closest negative;
    ``soft=True`` replaces the hinge by ``log1p(exp(d_ap - d_an))``.
``"all"``
    :class:`TripletBatchAllLoss` (batch-all, Hermans et al. 2017): every valid
    triplet; the hinge losses are averaged over the triplets that are not
    already satisfied (``soft=True``: the soft-margin loss over all triplets).
``"distance_weighted"``
    :class:`DistanceWeightedTripletLoss` (Wu et al. 2017, "Sampling matters"):
    negatives weighted by the inverse of the density of pairwise distances
    between uniform points on the unit sphere, ``q(d) ∝ d^(n-2) (1 - d²/4)^((n-3)/2)``,
    with ``d`` clipped below at 0.5 and negatives beyond 1.4 left out. Instead of
    drawing one negative per (anchor, positive) pair, the loss takes the
    expectation over that sampling distribution (the same expected gradient,
    less variance, and no random state inside the loss, so it jit-compiles
    under every backend).

A :class:`CrossBatchMemory` layer (XBM, Wang et al. 2020) keeps the
embeddings and labels of the last ``size`` training images; with
``cross_batch=True`` a loss mines its positives and negatives among the
batch *and* the memory, anchors being the batch only.

The one deliberate difference from tfa: where a batch holds no positive pair
(every label distinct), tfa's semi-hard loss divides zero by zero and returns
NaN; these losses return 0 with a zero gradient, so one unlucky batch cannot
poison the weights.
"""

import keras
from keras import ops

DISTANCE_METRICS = ("L2", "squared-L2", "angular")
MINERS = ("semihard", "hard", "all", "distance_weighted")
# Wu et al. (2017): distances below this are clipped before weighting; negatives
# farther than NONZERO_LOSS_CUTOFF cannot violate any useful margin and get no weight.
DW_CUTOFF, DW_NONZERO_LOSS_CUTOFF = 0.5, 1.4


def cross_distances(anchors, references, metric="L2"):
    """Distances from every anchor to every reference, as tfa computes them.

    Parameters
    ----------
    anchors : tensor of shape (a, dim)
    references : tensor of shape (r, dim), r >= a
        Its first ``a`` rows are the anchors themselves: entry (i, i) is an
        anchor's distance to itself and is set to exactly 0.
    metric : {"L2", "squared-L2", "angular"}
        Euclidean distance, squared Euclidean distance, or ``1 - cosine``
        similarity of the L2-normalised rows.

    Returns
    -------
    tensor of shape (a, r)
        For ``"L2"`` and ``"squared-L2"`` zero distances are exactly 0 and the
        square root is guarded there (its gradient is 0).
    """
    n_a, n_r = ops.shape(anchors)[0], ops.shape(references)[0]
    self_mask = ops.eye(n_a, n_r, dtype=anchors.dtype)
    if metric == "angular":
        def unit(x):
            return x * ops.rsqrt(ops.maximum(ops.sum(ops.square(x), axis=1, keepdims=True), 1e-12))
        return ops.maximum(1.0 - ops.matmul(unit(anchors), ops.transpose(unit(references))), 0.0)
    if metric not in ("L2", "squared-L2"):
        raise ValueError(f"distance_metric must be one of {DISTANCE_METRICS}, got {metric!r}")
    norms_a = ops.sum(ops.square(anchors), axis=1, keepdims=True)
    norms_r = ops.sum(ops.square(references), axis=1, keepdims=True)
    d2 = norms_a + ops.transpose(norms_r) - 2.0 * ops.matmul(anchors, ops.transpose(references))
    d2 = ops.maximum(d2, 0.0)
    zero = ops.cast(ops.less_equal(d2, 0.0), d2.dtype)
    distances = d2 if metric == "squared-L2" else ops.sqrt(d2 + zero * 1e-16)
    distances = distances * (1.0 - zero)
    return distances * (1.0 - self_mask)


def pairwise_distances(embeddings, metric="L2"):
    """Pairwise distance matrix of a batch, shape (batch, batch); see :func:`cross_distances`."""
    return cross_distances(embeddings, embeddings, metric)


def _masked_minimum(data, mask, axis):
    """Minimum of ``data`` over ``axis`` where ``mask`` is 1 (tfa's formula)."""
    axis_maximums = ops.max(data, axis=axis, keepdims=True)
    return ops.min((data - axis_maximums) * mask, axis=axis, keepdims=True) + axis_maximums


def _masked_maximum(data, mask, axis):
    """Maximum of ``data`` over ``axis`` where ``mask`` is 1 (tfa's formula)."""
    axis_minimums = ops.min(data, axis=axis, keepdims=True)
    return ops.max((data - axis_minimums) * mask, axis=axis, keepdims=True) + axis_minimums


def _hinge(x):
    # where(x >= 0) rather than maximum(): the same subgradient as tf.maximum at exactly 0
    # under every backend.
    return ops.where(ops.greater_equal(x, 0.0), x, ops.zeros_like(x))


def _pairs(labels, ref_labels, valid):
    """(a, r) masks: positives (same label, not itself, valid) and negatives (other label, valid)."""
    labels = ops.reshape(labels, (-1, 1))
    ref_labels = ops.reshape(ref_labels, (1, -1))
    same = ops.cast(ops.equal(labels, ref_labels), "float32") * valid
    positives = same - ops.eye(ops.shape(labels)[0], ops.shape(ref_labels)[1], dtype="float32")
    negatives = (1.0 - ops.cast(ops.equal(labels, ref_labels), "float32")) * valid
    return positives, negatives


def _semihard(dist, positives, negatives, margin, soft, dim):
    # mask[a, p, n]: n is a negative of a that lies farther from a than p does.
    dist_an = ops.expand_dims(dist, 1)  # (a, 1, n)
    dist_ap = ops.expand_dims(dist, 2)  # (a, p, 1)
    mask = ops.cast(ops.greater(dist_an, dist_ap), "float32") * ops.expand_dims(negatives, 1)
    has_semihard = ops.greater(ops.sum(mask, axis=2), 0.0)  # (a, p)
    negatives_outside = ops.squeeze(_masked_minimum(dist_an, mask, axis=2), axis=2)
    negatives_inside = _masked_maximum(dist, negatives, axis=1)  # (a, 1)
    semihard_negatives = ops.where(has_semihard, negatives_outside, negatives_inside)
    hinge = _hinge((margin + dist - semihard_negatives) * positives)
    return ops.sum(hinge) / ops.maximum(ops.sum(positives), 1.0)


def _hard(dist, positives, negatives, margin, soft, dim):
    hard_negatives = _masked_minimum(dist, negatives, axis=1)  # (a, 1): closest negative
    hard_positives = _masked_maximum(dist, positives, axis=1)  # (a, 1): farthest positive
    gap = hard_positives - hard_negatives
    per_anchor = ops.log1p(ops.exp(gap)) if soft else ops.maximum(gap + margin, 0.0)
    return ops.mean(per_anchor)


def _triplet_mask(positives, negatives):
    return ops.expand_dims(positives, 2) * ops.expand_dims(negatives, 1)  # (a, p, n)


def _batch_all(dist, positives, negatives, margin, soft, dim):
    valid = _triplet_mask(positives, negatives)
    gap = ops.expand_dims(dist, 2) - ops.expand_dims(dist, 1)  # d(a, p) - d(a, n)
    if soft:
        return ops.sum(ops.log1p(ops.exp(gap)) * valid) / ops.maximum(ops.sum(valid), 1.0)
    losses = _hinge((gap + margin) * valid)
    active = ops.cast(ops.greater(losses, 0.0), "float32")
    return ops.sum(losses) / ops.maximum(ops.sum(active), 1.0)


def distance_weights(dist, negatives, dim):
    """Wu et al.'s sampling weights of each anchor's negatives, normalised per anchor.

    Parameters
    ----------
    dist : tensor of shape (a, r)
        Euclidean distances between unit vectors (values in [0, 2]).
    negatives : tensor of shape (a, r)
        1 where the reference is a negative of the anchor.
    dim : int
        Embedding dimension ``n`` of the density ``q(d)``.

    Returns
    -------
    tensor of shape (a, r)
        ``1 / q(max(d, 0.5))`` over the negatives closer than 1.4, divided by
        its row sum; rows without such a negative are all 0.
    """
    d = ops.maximum(dist, DW_CUTOFF)
    log_q = (dim - 2.0) * ops.log(d) + (dim - 3.0) / 2.0 * ops.log(
        ops.maximum(1.0 - 0.25 * ops.square(d), 1e-8))
    eligible = negatives * ops.cast(ops.less(dist, DW_NONZERO_LOSS_CUTOFF), "float32")
    log_w = ops.where(ops.greater(eligible, 0.0), -log_q, ops.full_like(log_q, -1e30))
    log_w = log_w - ops.max(log_w, axis=1, keepdims=True)
    w = ops.exp(log_w) * eligible
    return w / ops.maximum(ops.sum(w, axis=1, keepdims=True), 1e-30)


def _distance_weighted(dist, positives, negatives, margin, soft, dim):
    weights = ops.stop_gradient(distance_weights(dist, negatives, dim))  # (a, n)
    gap = ops.expand_dims(dist, 2) - ops.expand_dims(dist, 1)  # (a, p, n)
    per = ops.log1p(ops.exp(gap)) if soft else _hinge(gap + margin)
    expected = ops.sum(per * ops.expand_dims(weights, 1), axis=2)  # (a, p)
    return ops.sum(expected * positives) / ops.maximum(ops.sum(positives), 1.0)


def _check_miner(miner, distance_metric, soft):
    if miner not in MINERS:
        raise ValueError(f"miner must be one of {MINERS}, got {miner!r}")
    if distance_metric not in DISTANCE_METRICS:
        raise ValueError(f"distance_metric must be one of {DISTANCE_METRICS}, got {distance_metric!r}")
    if miner == "distance_weighted" and distance_metric != "L2":
        raise ValueError("miner='distance_weighted' needs distance_metric='L2'")
    if miner == "semihard" and soft:
        raise ValueError("soft=True needs miner 'hard', 'all' or 'distance_weighted' (tfa's "
                         "semi-hard loss has no soft margin)")


_MINE = {"semihard": _semihard, "hard": _hard, "all": _batch_all,
         "distance_weighted": _distance_weighted}


def triplet_loss(labels, embeddings, miner="semihard", margin=1.0, distance_metric="L2",
                 soft=False, ref_labels=None, ref_embeddings=None, ref_valid=None):
    """Triplet loss of one batch under ``miner``.

    Parameters
    ----------
    labels : tensor of shape (batch,) or (batch, 1)
        Integer-valued class labels (any numeric dtype).
    embeddings : tensor of shape (batch, dim)
    miner : {"semihard", "hard", "all", "distance_weighted"}
    margin : float
    distance_metric : {"L2", "squared-L2", "angular"}
        ``"distance_weighted"`` needs ``"L2"`` (its weights assume unit vectors).
    soft : bool
        Soft-margin ``log1p(exp(d_ap - d_an))`` instead of the hinge (hard,
        all, distance_weighted).
    ref_labels, ref_embeddings, ref_valid : tensors of shape (m,), (m, dim), (m,), optional
        Extra references (a cross-batch memory): positives and negatives are
        mined among the batch and these rows where ``ref_valid`` is 1.

    Returns
    -------
    scalar tensor
        0 where no anchor has a positive (semihard, all, distance_weighted).
    """
    _check_miner(miner, distance_metric, soft)
    out_dtype = embeddings.dtype
    embeddings = ops.cast(embeddings, "float32")
    labels = ops.cast(ops.reshape(labels, (-1,)), "float32")
    references, all_labels = embeddings, labels
    valid = ops.ones_like(labels)
    if ref_embeddings is not None:
        references = ops.concatenate([embeddings, ops.cast(ref_embeddings, "float32")], axis=0)
        all_labels = ops.concatenate([labels, ops.cast(ops.reshape(ref_labels, (-1,)), "float32")])
        valid = ops.concatenate([valid, ops.cast(ops.reshape(ref_valid, (-1,)), "float32")])
    dist = cross_distances(embeddings, references, distance_metric)
    positives, negatives = _pairs(labels, all_labels, ops.reshape(valid, (1, -1)))
    dim = embeddings.shape[-1]  # static where known; a tensor after slicing a packed batch
    dim = float(dim) if dim is not None else ops.cast(ops.shape(embeddings)[-1], "float32")
    return ops.cast(_MINE[miner](dist, positives, negatives, margin, soft, dim), out_dtype)


def triplet_semihard_loss(labels, embeddings, margin=1.0, distance_metric="L2"):
    """Semi-hard triplet loss of one batch (tfa's), see :func:`triplet_loss`."""
    return triplet_loss(labels, embeddings, "semihard", margin, distance_metric)


def triplet_hard_loss(labels, embeddings, margin=1.0, distance_metric="L2", soft=False):
    """Batch-hard triplet loss of one batch (tfa's ``TripletHardLoss``), see :func:`triplet_loss`.

    The mean over *all* anchors, as tfa takes it: an anchor without a
    positive contributes ``max(margin - d_an, 0)`` (its hardest positive
    distance counts as 0).
    """
    return triplet_loss(labels, embeddings, "hard", margin, distance_metric, soft)


# --------------------------------------------------------------------------- Keras losses


@keras.saving.register_keras_serializable(package="imgsim")
class TripletLoss(keras.losses.Loss):
    """A triplet loss with a chosen miner, called as ``loss(labels, embeddings)``.

    ``labels`` of shape (batch,) hold class ids; ``embeddings`` of shape
    (batch, dim) come from the model, from a P×K batch. With
    ``cross_batch=True`` the model's output is instead the packed
    (batch + memory, 2 + dim) tensor of a :class:`CrossBatchMemory` layer.

    Parameters
    ----------
    miner : {"semihard", "hard", "all", "distance_weighted"}
    margin : float
    distance_metric : {"L2", "squared-L2", "angular"}
    soft : bool
    cross_batch : bool
    name : str
    """

    def __init__(self, miner="semihard", margin=1.0, distance_metric="L2", soft=False,
                 cross_batch=False, name=None, **kwargs):
        _check_miner(miner, distance_metric, soft)
        super().__init__(name=name or f"triplet_{miner}_loss", **kwargs)
        self.miner, self.margin, self.distance_metric = miner, float(margin), distance_metric
        self.soft, self.cross_batch = bool(soft), bool(cross_batch)

    def call(self, y_true, y_pred):
        if not self.cross_batch:
            return triplet_loss(y_true, y_pred, self.miner, self.margin, self.distance_metric,
                                self.soft)
        batch = ops.shape(ops.reshape(y_true, (-1,)))[0]
        memory = y_pred[batch:]
        return triplet_loss(y_true, y_pred[:batch, 2:], self.miner, self.margin,
                            self.distance_metric, self.soft, ref_labels=memory[:, 0],
                            ref_embeddings=memory[:, 2:], ref_valid=memory[:, 1])

    def get_config(self):
        config = super().get_config()
        config.update(miner=self.miner, margin=self.margin, distance_metric=self.distance_metric,
                      soft=self.soft, cross_batch=self.cross_batch)
        return config


@keras.saving.register_keras_serializable(package="imgsim")
class TripletSemiHardLoss(TripletLoss):
    """Semi-hard triplet loss (FaceNet), matching tfa's ``TripletSemiHardLoss``.

    Parameters
    ----------
    margin : float, default 1.0
    distance_metric : {"L2", "squared-L2", "angular"}, default "L2"
    name : str
    """

    def __init__(self, margin=1.0, distance_metric="L2", name="triplet_semihard_loss", **kwargs):
        kwargs = {k: v for k, v in kwargs.items() if k not in ("miner", "soft")}
        super().__init__("semihard", margin, distance_metric, name=name, **kwargs)


@keras.saving.register_keras_serializable(package="imgsim")
class TripletHardLoss(TripletLoss):
    """Batch-hard triplet loss, matching tfa's ``TripletHardLoss`` (``soft`` included)."""

    def __init__(self, margin=1.0, soft=False, distance_metric="L2", name="triplet_hard_loss",
                 **kwargs):
        kwargs.pop("miner", None)
        super().__init__("hard", margin, distance_metric, soft, name=name, **kwargs)


@keras.saving.register_keras_serializable(package="imgsim")
class TripletBatchAllLoss(TripletLoss):
    """Batch-all triplet loss: hinge averaged over the triplets not yet satisfied."""

    def __init__(self, margin=1.0, soft=False, distance_metric="L2", name="triplet_all_loss",
                 **kwargs):
        kwargs.pop("miner", None)
        super().__init__("all", margin, distance_metric, soft, name=name, **kwargs)


@keras.saving.register_keras_serializable(package="imgsim")
class DistanceWeightedTripletLoss(TripletLoss):
    """Triplet loss over Wu et al.'s distance-weighted negatives (in expectation)."""

    def __init__(self, margin=1.0, soft=False, name="triplet_distance_weighted_loss", **kwargs):
        kwargs = {k: v for k, v in kwargs.items() if k not in ("miner", "distance_metric")}
        super().__init__("distance_weighted", margin, "L2", soft, name=name, **kwargs)


# --------------------------------------------------------------------------- cross-batch memory


@keras.saving.register_keras_serializable(package="imgsim")
class CrossBatchMemory(keras.layers.Layer):
    """A queue of the last ``size`` embeddings and labels seen in training (XBM).

    Called as ``memory([embeddings, labels], training=...)`` with embeddings of
    shape (batch, dim) and labels of shape (batch,). Returns the packed tensor
    of shape (batch + size, 2 + dim): the batch's rows ``[label, 1,
    embedding]`` followed by the memory's rows ``[label, valid, embedding]``
    as they were *before* this batch (``valid`` 0 for slots not filled yet;
    no gradient flows into the memory). In training the batch is then
    enqueued: slot ``(position + i) % size`` gets row ``i``, overwriting the
    oldest entries. A :class:`TripletLoss` with ``cross_batch=True`` unpacks it.

    Parameters
    ----------
    size : int
        Memory slots; at least the batch size.
    """

    def __init__(self, size, **kwargs):
        super().__init__(**kwargs)
        if int(size) < 1:
            raise ValueError(f"size must be positive, got {size}")
        self.size = int(size)

    def build(self, input_shape):
        dim = int(input_shape[0][-1])
        self.memory = self.add_weight(shape=(self.size, dim), initializer="zeros",
                                      trainable=False, name="memory")
        self.memory_labels = self.add_weight(shape=(self.size,), initializer="zeros",
                                             trainable=False, name="memory_labels")
        self.filled = self.add_weight(shape=(self.size,), initializer="zeros", trainable=False,
                                      name="filled")
        self.position = self.add_weight(shape=(), initializer="zeros", trainable=False,
                                        dtype="int32", name="position")

    def call(self, inputs, training=False):
        embeddings, labels = inputs
        embeddings = ops.cast(embeddings, "float32")
        labels = ops.cast(ops.reshape(labels, (-1,)), "float32")
        batch = ops.shape(labels)[0]
        rows = ops.concatenate([ops.stack([labels, ops.ones_like(labels)], axis=1), embeddings], 1)
        stored = ops.concatenate([ops.stack([self.memory_labels, self.filled], axis=1),
                                  self.memory], axis=1)
        packed = ops.concatenate([rows, ops.stop_gradient(stored)], axis=0)
        if training:
            slots = ops.expand_dims((self.position + ops.arange(batch, dtype="int32")) % self.size, 1)
            self.memory.assign(ops.scatter_update(self.memory, slots, ops.stop_gradient(embeddings)))
            self.memory_labels.assign(ops.scatter_update(self.memory_labels, slots, labels))
            self.filled.assign(ops.scatter_update(self.filled, slots, ops.ones_like(labels)))
            self.position.assign((self.position + batch) % self.size)
        return packed

    def compute_output_shape(self, input_shape):
        batch, dim = input_shape[0]
        return (None if batch is None else batch + self.size, dim + 2)

    def get_config(self):
        return dict(super().get_config(), size=self.size)


def make_loss(miner="semihard", margin=0.3, distance_metric="L2", soft=False, cross_batch=False):
    """A :class:`TripletLoss` (the seed's :class:`TripletSemiHardLoss` for the default miner)."""
    if miner == "semihard" and not cross_batch:
        return TripletSemiHardLoss(margin, distance_metric)
    return TripletLoss(miner, margin, distance_metric, soft, cross_batch)
