"""Semi-hard triplet loss, written with ``keras.ops`` only.

:class:`TripletSemiHardLoss` reproduces tensorflow-addons' ``TripletSemiHardLoss``
(tfa 0.23, the FaceNet semi-hard mining of Schroff et al. 2015) operation for
operation, so values and gradients agree with tfa under every Keras backend.
tensorflow-addons reached end of life in 2024 and does not import with Keras 3.

The one deliberate difference: where a batch holds no positive pair (every
label distinct), tfa divides zero by zero and returns NaN; this loss returns 0
with a zero gradient, so one unlucky batch cannot poison the weights.
"""

import keras
from keras import ops

DISTANCE_METRICS = ("L2", "squared-L2", "angular")


def pairwise_distances(embeddings, metric="L2"):
    """Pairwise distance matrix of a batch of embeddings, as tfa computes it.

    Parameters
    ----------
    embeddings : tensor of shape (batch, dim)
    metric : {"L2", "squared-L2", "angular"}
        Euclidean distance, squared Euclidean distance, or ``1 - cosine``
        similarity of the L2-normalised rows.

    Returns
    -------
    tensor of shape (batch, batch)
        For ``"L2"`` and ``"squared-L2"`` the diagonal is exactly 0 and the
        square root is guarded at zero distance (its gradient there is 0).
    """
    if metric == "angular":
        unit = embeddings * ops.rsqrt(
            ops.maximum(ops.sum(ops.square(embeddings), axis=1, keepdims=True), 1e-12)
        )
        return ops.maximum(1.0 - ops.matmul(unit, ops.transpose(unit)), 0.0)
    if metric not in ("L2", "squared-L2"):
        raise ValueError(f"distance_metric must be one of {DISTANCE_METRICS}, got {metric!r}")
    squared_norms = ops.sum(ops.square(embeddings), axis=1, keepdims=True)
    d2 = squared_norms + ops.transpose(squared_norms) - 2.0 * ops.matmul(
        embeddings, ops.transpose(embeddings)
    )
    d2 = ops.maximum(d2, 0.0)
    zero = ops.cast(ops.less_equal(d2, 0.0), d2.dtype)
    if metric == "squared-L2":
        distances = d2
    else:
        distances = ops.sqrt(d2 + zero * 1e-16)
    distances = distances * (1.0 - zero)
    n = ops.shape(embeddings)[0]
    return distances * (1.0 - ops.eye(n, dtype=distances.dtype))


def _masked_minimum(data, mask, axis):
    """Minimum of ``data`` over ``axis`` where ``mask`` is 1 (tfa's formula)."""
    axis_maximums = ops.max(data, axis=axis, keepdims=True)
    return ops.min((data - axis_maximums) * mask, axis=axis, keepdims=True) + axis_maximums


def _masked_maximum(data, mask, axis):
    """Maximum of ``data`` over ``axis`` where ``mask`` is 1 (tfa's formula)."""
    axis_minimums = ops.min(data, axis=axis, keepdims=True)
    return ops.max((data - axis_minimums) * mask, axis=axis, keepdims=True) + axis_minimums


def triplet_semihard_loss(labels, embeddings, margin=1.0, distance_metric="L2"):
    """Semi-hard triplet loss of one batch.

    For every anchor ``a`` and positive ``p`` (same label, ``a != p``) the
    negative is the closest ``n`` with ``d(a, n) > d(a, p)`` (semi-hard); where
    none exists, the farthest negative of ``a``. The loss is the mean over all
    (a, p) pairs of ``max(margin + d(a, p) - d(a, n), 0)``.

    Parameters
    ----------
    labels : tensor of shape (batch,) or (batch, 1)
        Integer-valued class labels (any numeric dtype).
    embeddings : tensor of shape (batch, dim)
    margin : float
    distance_metric : {"L2", "squared-L2", "angular"}

    Returns
    -------
    scalar tensor
        0 where the batch has no positive pair.
    """
    out_dtype = embeddings.dtype
    embeddings = ops.cast(embeddings, "float32")
    labels = ops.reshape(labels, (-1, 1))
    dist = pairwise_distances(embeddings, distance_metric)
    adjacency = ops.equal(labels, ops.transpose(labels))
    adjacency_not = ops.cast(ops.logical_not(adjacency), "float32")

    # mask[a, p, n]: n is a negative of a that lies farther from a than p does.
    dist_an = ops.expand_dims(dist, 1)  # (a, 1, n)
    dist_ap = ops.expand_dims(dist, 2)  # (a, p, 1)
    mask = ops.cast(ops.greater(dist_an, dist_ap), "float32") * ops.expand_dims(adjacency_not, 1)
    has_semihard = ops.greater(ops.sum(mask, axis=2), 0.0)  # (a, p)

    negatives_outside = ops.squeeze(_masked_minimum(dist_an, mask, axis=2), axis=2)
    negatives_inside = _masked_maximum(dist, adjacency_not, axis=1)  # (a, 1)
    semihard_negatives = ops.where(has_semihard, negatives_outside, negatives_inside)

    loss_matrix = margin + dist - semihard_negatives
    n = ops.shape(embeddings)[0]
    mask_positives = ops.cast(adjacency, "float32") - ops.eye(n, dtype="float32")
    hinge = loss_matrix * mask_positives
    # where(x >= 0) rather than maximum(): the same subgradient as tf.maximum
    # at exactly 0 under every backend.
    hinge = ops.where(ops.greater_equal(hinge, 0.0), hinge, ops.zeros_like(hinge))
    num_positives = ops.sum(mask_positives)
    loss = ops.sum(hinge) / ops.maximum(num_positives, 1.0)
    return ops.cast(loss, out_dtype)


@keras.saving.register_keras_serializable(package="imgsim")
class TripletSemiHardLoss(keras.losses.Loss):
    """Semi-hard triplet loss (FaceNet), matching tfa's ``TripletSemiHardLoss``.

    Call as ``loss(labels, embeddings)``: ``labels`` of shape (batch,) hold
    class ids, ``embeddings`` of shape (batch, dim) come from the model. The
    batch should hold several images of each class (a P×K batch).

    Parameters
    ----------
    margin : float, default 1.0
    distance_metric : {"L2", "squared-L2", "angular"}, default "L2"
    name : str
    """

    def __init__(self, margin=1.0, distance_metric="L2", name="triplet_semihard_loss", **kwargs):
        if distance_metric not in DISTANCE_METRICS:
            raise ValueError(
                f"distance_metric must be one of {DISTANCE_METRICS}, got {distance_metric!r}"
            )
        super().__init__(name=name, **kwargs)
        self.margin = float(margin)
        self.distance_metric = distance_metric

    def call(self, y_true, y_pred):
        return triplet_semihard_loss(y_true, y_pred, self.margin, self.distance_metric)

    def get_config(self):
        config = super().get_config()
        config.update(margin=self.margin, distance_metric=self.distance_metric)
        return config
