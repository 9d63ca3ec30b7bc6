"""Pooling layers that can replace global average pooling: GeM and attention (``keras.ops`` only)."""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="imgsim")
class GeMPooling2D(keras.layers.Layer):
    """Generalised-mean pooling (Radenović et al. 2018) with a trainable exponent.

    ``(mean over positions of max(x, eps)^p)^(1/p)`` per channel: ``p = 1`` is
    average pooling, ``p → ∞`` max pooling. Maps (batch, h, w, c) to (batch, c).
    Computed as ``m · mean((x / m)^p)^(1/p)`` with ``m`` the channel's maximum,
    so that no power overflows however large ``p`` grows.

    Parameters
    ----------
    p : float
        Initial exponent (≥ 1).
    eps : float
        Activations are clipped below at ``eps`` (the power needs x > 0).
    """

    def __init__(self, p=3.0, eps=1e-6, **kwargs):
        super().__init__(**kwargs)
        self.initial_p, self.eps = float(p), float(eps)

    def build(self, input_shape):
        self.p = self.add_weight(shape=(), name="p", initializer=keras.initializers.Constant(
            self.initial_p), constraint=keras.constraints.NonNeg())

    def call(self, x):
        p = ops.maximum(self.p, 1.0)
        x = ops.maximum(x, self.eps)
        # Scaled by the channel's maximum (which cancels exactly) so that x^p cannot overflow.
        top = ops.stop_gradient(ops.max(x, axis=(1, 2), keepdims=True))
        pooled = ops.mean(ops.power(x / top, p), axis=(1, 2))
        return ops.power(pooled, 1.0 / p) * ops.squeeze(top, axis=(1, 2))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[-1])

    def get_config(self):
        return dict(super().get_config(), p=self.initial_p, eps=self.eps)


@keras.saving.register_keras_serializable(package="imgsim")
class AttentionPooling2D(keras.layers.Layer):
    """Attention pooling: a weighted mean of the positions, weights learnt (DELF-style).

    Score ``s = softplus(w2 · relu(W1 x + b1) + b2)`` per position, pooled
    ``sum(s x) / sum(s)``. ``w2`` starts at zero, so every position weighs the
    same and the layer starts as global average pooling. Maps (batch, h, w, c)
    to (batch, c).

    Parameters
    ----------
    units : int
        Width of the scoring layer.
    """

    def __init__(self, units=128, **kwargs):
        super().__init__(**kwargs)
        self.units = int(units)

    def build(self, input_shape):
        self.score_hidden = keras.layers.Dense(self.units, activation="relu", name="score_hidden")
        self.score = keras.layers.Dense(1, activation="softplus", kernel_initializer="zeros",
                                        name="score")
        self.score_hidden.build(input_shape)
        self.score.build(tuple(input_shape[:-1]) + (self.units,))

    def call(self, x):
        weights = self.score(self.score_hidden(x))  # (batch, h, w, 1)
        return ops.sum(weights * x, axis=(1, 2)) / ops.maximum(ops.sum(weights, axis=(1, 2)), 1e-12)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[-1])

    def get_config(self):
        return dict(super().get_config(), units=self.units)
