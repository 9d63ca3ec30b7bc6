"""The MobileNetV2 embedding network, ``embed``, ``distance`` and ``similarity_percent``.

Architecture (the seed's): RGB uint8-range input → MobileNetV2 preprocessing
(``x / 127.5 - 1``) → MobileNetV2 backbone (ImageNet weights, no top) → global
average pooling → dropout → Dense 256 ReLU → Dense 128 → L2 normalisation, with
L2 weight decay on both dense layers and only the last ``trainable_layers``
backbone layers trainable. BatchNormalization layers are always frozen and run
in inference mode, as Keras recommends for fine-tuning.

ImageNet weights load the Keras way (``weights="imagenet"``), from the Keras
cache ``$KERAS_HOME/models`` (default ``~/.keras/models``). imgsim ships both
weight files (alpha 1.0 and 0.35, 224 rows) and copies the one needed into that
cache on first use, so a fresh clone runs offline.

Inference runs on one of :data:`ENGINES`: ``"keras"`` (``predict_on_batch``) or
``"openvino"`` (the same weights exported once to OpenVINO IR and run in f32;
1.8–2× the Keras forward pass on CPU, embeddings equal within 1e-6). See
:func:`compile_for_inference`.
"""

import hashlib
import json
import os
import shutil
import tempfile
import threading
import warnings
import weakref
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from imgsim.config import DictConfig, check_choice, check_range
from imgsim.errors import ConfigError, DataLayoutError, EmbeddingError, WeightsNotFoundError

BUNDLED_WEIGHTS = os.path.join(os.path.dirname(__file__), "weights")
ALPHAS = (0.35, 0.5, 0.75, 1.0, 1.3, 1.4)
ENGINES = ("keras", "openvino")
# Input sides the MobileNetV2 backbone takes. Below 64 px its last feature map is 1x1 or 2x2
# and ImageNet GAP features collapse: measured on 538 photos (data/sample and the 424 shared
# photos), at 32 and 48 px 14-95 % of alpha-1.0 feature vectors are exactly zero and the
# others 10x shorter than at 64 px, where none is zero (shortest norm 13, as at 80 and 96 px).
MIN_IMAGE_SIZE = 64
MAX_IMAGE_SIZE = 1024


POOLINGS = ("gap", "gem", "attention")
HEADS = ("mlp", "linear", "none")
HEAD_INITS = ("pca", "random", "identity", "whitening")
MERGES = ("concat", "mean")


@dataclass
class EmbeddingConfig(DictConfig):
    """Hyperparameters of the embedding network.

    Attributes
    ----------
    alpha : float
        MobileNetV2 width multiplier (1.0 is the seed's model; 0.35 is 6× cheaper).
    image_size : int
        Square input side in pixels, ``MIN_IMAGE_SIZE`` (64) to
        ``MAX_IMAGE_SIZE`` (1024); the 224-row ImageNet weights work at any of
        them (convolution weights do not depend on input size).
    hidden_dim, embedding_dim : int
        Widths of the two dense layers (256 → 128).
    dropout : float
        Dropout rate after pooling (heads "mlp" and "linear").
    weight_decay : float
        L2 regularisation factor on the dense kernels.
    trainable_layers : int
        How many of the backbone's last layers are trainable (0 freezes it).
    weights : str or None
        ``"imagenet"`` (the Keras cache), a path to a weights file, or None
        (random initialisation, for tests).
    head_init : {"pca", "random", "identity"}
        How training initialises the dense head: ``"pca"`` sets it so that the
        untrained model outputs the PCA projection of the ImageNet pooled
        features (see :func:`init_head_pca`); ``"random"`` keeps Keras'
        Glorot initialisation; ``"identity"`` (head "linear" with
        ``embedding_dim`` equal to the feature width) starts at the
        ImageNet features themselves; ``"whitening"`` (head "linear", same
        width) starts at the learned whitening of the training images'
        features (:func:`set_head_whitening`, Radenović et al. 2018).
    pooling : {"gap", "gem", "attention"}
        Global average pooling (the seed's), generalised-mean pooling
        (:class:`GeMPooling2D`, Radenović et al. 2018, trainable exponent) or
        attention pooling (:class:`AttentionPooling2D`, starts as GAP).
    gem_p : float
        Initial GeM exponent (1 is GAP, large values approach max pooling).
    ensemble_alpha : float or None
        A second MobileNetV2 backbone of this width (e.g. 0.35 beside 1.0);
        each backbone's pooled features are L2-normalised, then merged.
    ensemble : {"concat", "mean"}
        How the two backbones' features are merged.
    head : {"mlp", "linear", "none"}
        ``"mlp"``: the seed's dropout → Dense ``hidden_dim`` ReLU → Dense
        ``embedding_dim``; ``"linear"``: dropout → Dense ``embedding_dim``;
        ``"none"``: the pooled features themselves (only the backbone and
        pooling train). Every head ends with L2 normalisation.
    whitening_shrinkage : float
        ``head_init="whitening"``: weight of the identity in the shrunk
        within-scene covariance, in [0, 1] (1: no whitening).
    """

    alpha: float = 1.0
    image_size: int = 224
    hidden_dim: int = 256
    embedding_dim: int = 128
    dropout: float = 0.3
    weight_decay: float = 1e-4
    trainable_layers: int = 30
    weights: str = "imagenet"
    head_init: str = "pca"
    pooling: str = "gap"
    gem_p: float = 3.0
    ensemble_alpha: float = None
    ensemble: str = "concat"
    head: str = "mlp"
    whitening_shrinkage: float = 0.5

    def __post_init__(self):
        super().__post_init__()
        check_choice("head_init", self.head_init, HEAD_INITS)
        check_choice("pooling", self.pooling, POOLINGS)
        check_choice("head", self.head, HEADS)
        check_choice("ensemble", self.ensemble, MERGES)
        check_choice("alpha", self.alpha, ALPHAS)
        if self.ensemble_alpha is not None and (self.ensemble_alpha not in ALPHAS
                                                or self.ensemble_alpha == self.alpha):
            raise ConfigError(f"ensemble_alpha must be one of {ALPHAS} other than alpha={self.alpha}, "
                              f"got {self.ensemble_alpha}")
        check_image_size(self.image_size)
        check_range("dropout", self.dropout, 0, 1, high_open=True)
        check_range("weight_decay", self.weight_decay, 0)
        check_range("trainable_layers", self.trainable_layers, 0, integer=True)
        check_range("hidden_dim", self.hidden_dim, 1, integer=True)
        check_range("embedding_dim", self.embedding_dim, 1, integer=True)
        check_range("gem_p", self.gem_p, 1)
        check_range("whitening_shrinkage", self.whitening_shrinkage, 0, 1)
        if self.head_init in ("identity", "whitening") and self.head != "linear":
            raise ConfigError(f"head_init={self.head_init!r} needs head='linear'")

    def alphas(self):
        """Width of each backbone: ``[alpha]``, or ``[alpha, ensemble_alpha]``."""
        return [self.alpha] + ([self.ensemble_alpha] if self.ensemble_alpha is not None else [])


def check_image_size(value, name="image_size"):
    """Raise :class:`ConfigError` unless ``value`` is an input side the backbone can take."""
    return check_range(name, value, MIN_IMAGE_SIZE, MAX_IMAGE_SIZE, integer=True)


# --------------------------------------------------------------------------- weights


def imagenet_weights_name(alpha):
    """File name Keras caches MobileNetV2 no-top ImageNet weights under (224 rows)."""
    return f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{float(alpha)}_224_no_top.h5"


def keras_cache_dir():
    """``$KERAS_HOME/models``, resolved as Keras resolves it."""
    from keras.src.backend.config import keras_home

    return os.path.join(keras_home(), "models")


def ensure_imagenet_weights(alpha, cache_dir=None, bundled_dir=None):
    """Make sure the Keras cache holds the ImageNet weights for ``alpha``.

    Copies the bundled file into ``cache_dir`` (default ``$KERAS_HOME/models``)
    when the cache lacks it, atomically. Returns the cached path, or None when
    neither copy exists (Keras will then try to download it).
    """
    name = imagenet_weights_name(alpha)
    cache_dir = cache_dir or keras_cache_dir()
    bundled_dir = bundled_dir or BUNDLED_WEIGHTS
    target = os.path.join(cache_dir, name)
    if os.path.isfile(target) and os.path.getsize(target) > 0:
        return target
    source = os.path.join(bundled_dir, name)
    if not os.path.isfile(source):
        return None
    os.makedirs(cache_dir, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=cache_dir, prefix=".tmp-", suffix=".h5")
    os.close(fd)
    shutil.copyfile(source, tmp)
    os.replace(tmp, target)
    return target


def build_backbone(config, alpha=None):
    """MobileNetV2 without top, on (None, None, 3) inputs, ImageNet weights loaded.

    Built on unknown rows so that Keras picks the 224-row weight file whatever
    ``config.image_size`` is. ``alpha`` defaults to ``config.alpha``.
    """
    import keras

    alpha = config.alpha if alpha is None else alpha
    weights = config.weights
    if weights == "imagenet":
        ensure_imagenet_weights(alpha)
    elif weights is not None and not os.path.isfile(weights):
        raise WeightsNotFoundError(f"{weights}: weights file does not exist")
    try:
        with warnings.catch_warnings():  # "Weights for input shape (224, 224) will be loaded"
            warnings.filterwarnings("ignore", message=".*input_shape.*undefined.*")
            return keras.applications.MobileNetV2(
                input_shape=(None, None, 3), alpha=alpha, include_top=False, weights=weights)
    except Exception as exc:  # Keras raises a bare Exception("URL fetch failure ...")
        if weights != "imagenet":
            raise WeightsNotFoundError(f"{weights}: cannot load MobileNetV2 weights ({exc})") from None
        name = imagenet_weights_name(alpha)
        raise WeightsNotFoundError(
            f"ImageNet weights for MobileNetV2 alpha={alpha:g} are not in the Keras cache "
            f"and could not be downloaded: put {name} into {keras_cache_dir()}/ "
            f"(set KERAS_HOME to use another cache folder)") from None


def _freeze(backbone, trainable_layers):
    """Only the last ``trainable_layers`` layers train; BatchNormalization never does."""
    import keras

    n = len(backbone.layers)
    for i, layer in enumerate(backbone.layers):
        is_bn = isinstance(layer, keras.layers.BatchNormalization)
        layer.trainable = (i >= n - trainable_layers) and not is_bn


POOL_LAYER_NAMES = {"gap": "gap", "gem": "gem", "attention": "attention_pool"}


def _pool_layer(config, name):
    import keras

    from imgsim.pooling import AttentionPooling2D, GeMPooling2D

    if config.pooling == "gem":
        return GeMPooling2D(config.gem_p, name=name)
    if config.pooling == "attention":
        return AttentionPooling2D(name=name)
    return keras.layers.GlobalAveragePooling2D(name=name)


def _head(config, layer, maps, features_only=False):
    """Pooling → (per-backbone L2 and merge) → head → L2, from backbone feature maps.

    ``layer(name, make)`` returns the layer called ``name``, building it with
    ``make()`` the first time: :func:`build_embedding_model` creates the
    layers, :func:`split_at_cut` calls the same layer objects again.
    ``features_only`` stops at the head's input (the pooled features).
    """
    import keras

    base = POOL_LAYER_NAMES[config.pooling]
    names = [base] + [f"{base}_{i + 1}" for i in range(1, len(maps))]
    x = [layer(n, lambda n=n: _pool_layer(config, n))(m) for n, m in zip(names, maps)]
    if len(x) > 1:
        x = [layer(f"l2_backbone_{i + 1}", lambda i=i: keras.layers.UnitNormalization(
            name=f"l2_backbone_{i + 1}"))(f) for i, f in enumerate(x)]
        merge = keras.layers.Concatenate if config.ensemble == "concat" else keras.layers.Average
        x = layer("features", lambda: merge(name="features"))(x)
    else:
        x = x[0]
    if features_only:
        return x
    regularizer = keras.regularizers.L2(config.weight_decay) if config.weight_decay else None
    if config.head != "none":
        x = layer("dropout", lambda: keras.layers.Dropout(config.dropout, name="dropout"))(x)
    if config.head == "mlp":
        x = layer("hidden", lambda: keras.layers.Dense(
            config.hidden_dim, activation="relu", kernel_regularizer=regularizer, name="hidden"))(x)
    if config.head != "none":
        x = layer("projection", lambda: keras.layers.Dense(
            config.embedding_dim, kernel_regularizer=regularizer, name="projection"))(x)
    return layer("l2_normalize", lambda: keras.layers.UnitNormalization(name="l2_normalize"))(x)


def _backbone_features(config):
    """Input → preprocessing → backbone(s) (inference mode); returns (inputs, maps, backbones)."""
    import keras

    inputs = keras.Input((config.image_size, config.image_size, 3), name="image")
    x = keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, name="mobilenet_v2_preprocess")(inputs)
    backbones = [build_backbone(config, alpha) for alpha in config.alphas()]
    return inputs, [b(x, training=False) for b in backbones], backbones


def build_embedding_model(config=None):
    """The trainable embedding network of ``config`` (an :class:`EmbeddingConfig`).

    Returns
    -------
    keras.Model
        Maps (batch, image_size, image_size, 3) float images with values in
        [0, 255] to (batch, embedding_dim) unit-norm embeddings (the pooled
        feature width for ``head="none"``).
    """
    import keras

    config = config or EmbeddingConfig()
    inputs, maps, backbones = _backbone_features(config)
    for backbone in backbones:
        _freeze(backbone, config.trainable_layers)
    made = {}

    def layer(name, make):
        if name not in made:
            made[name] = make()
        return made[name]

    return keras.Model(inputs, _head(config, layer, maps), name="imgsim_embedding")


def build_imagenet_baseline(config=None):
    """ImageNet MobileNetV2 GAP features, L2-normalised: the no-fine-tuning baseline.

    Only ``alpha`` and ``image_size`` of ``config`` matter.
    """
    import keras

    config = config or EmbeddingConfig()
    plain = EmbeddingConfig(alpha=config.alpha, image_size=config.image_size,
                            weights=config.weights, head="none")
    inputs, maps, _ = _backbone_features(plain)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(maps[0])
    outputs = keras.layers.UnitNormalization(name="l2_normalize")(x)
    return keras.Model(inputs, outputs, name="imagenet_gap")


# --------------------------------------------------------------------------- parts of the model


def backbones_of(model):
    """The MobileNetV2 backbone(s) nested in an embedding model, in order."""
    import keras

    return [layer for layer in model.layers if isinstance(layer, keras.Model)]


def features_layer(model):
    """The layer whose output the head starts from (merged or pooled backbone features)."""
    names = {layer.name for layer in model.layers}
    for name in ("features", *POOL_LAYER_NAMES.values()):
        if name in names:
            return model.get_layer(name)
    raise ConfigError(f"model {model.name!r} has no pooled-features layer")


def cut_layer(backbone, trainable_layers):
    """Name of the layer whose output separates a backbone's frozen part from the rest.

    The latest layer before the first of the last ``trainable_layers`` layers
    whose output is the only tensor the later layers need (a block boundary;
    the backbone's last layer when nothing is trainable). Caching that output
    (:mod:`imgsim.features`) makes the frozen part run once per image.
    """
    layers = backbone.layers
    first_trainable = len(layers) - min(trainable_layers, len(layers) - 1)
    index = {id(layer): i for i, layer in enumerate(layers)}
    producers = []
    for layer in layers:
        tensors = layer.input if isinstance(layer.input, (list, tuple)) else [layer.input]
        producers.append([index[id(t._keras_history.operation)] for t in tensors
                          if id(t._keras_history.operation) in index
                          and t._keras_history.operation is not layer])
    for cut in range(first_trainable - 1, 0, -1):
        if all(p >= cut for later in producers[cut + 1:] for p in later):
            return layers[cut].name
    return layers[0].name


_CUTS = {}  # (alpha, trainable_layers) -> cut layer name


def cut_layer_name(config, alpha=None):
    """:func:`cut_layer` of a backbone of ``config`` (built once without weights, then remembered)."""
    import keras

    key = (config.alpha if alpha is None else alpha, config.trainable_layers)
    if key not in _CUTS:
        backbone = keras.applications.MobileNetV2(input_shape=(None, None, 3), alpha=key[0],
                                                  include_top=False, weights=None)
        _CUTS[key] = cut_layer(backbone, key[1])
    return _CUTS[key]


def split_at_cut(model, config, features_only=False):
    """The embedding model from its backbones' cut tensors (see :func:`cut_layer`).

    Returns
    -------
    keras.Model
        Inputs: one (batch, h, w, c) feature map per backbone, the output of
        its cut layer; output: the embedding (``features_only``: the pooled
        features the head starts from). It shares every layer (and so every
        weight) with ``model``: training it trains ``model``.
    """
    import keras

    inputs, maps = [], []
    for i, backbone in enumerate(backbones_of(model)):
        name = cut_layer(backbone, config.trainable_layers)
        cut = backbone.get_layer(name).output
        inputs.append(keras.Input(tuple(cut.shape[1:]), name=f"cut_features_{i + 1}"))
        if name == backbone.layers[-1].name:  # nothing trainable: the head alone
            maps.append(inputs[-1])
        else:
            rest = keras.Model(cut, backbone.output, name=f"{backbone.name}_after_cut")
            maps.append(rest(inputs[-1], training=False))
    outputs = _head(config, lambda name, make: model.get_layer(name), maps, features_only)
    return keras.Model(inputs, outputs, name="imgsim_embedding_tail")


def frozen_stems(config):
    """Per backbone: image → preprocessing → frozen part up to the cut (a new, separate model).

    Returns
    -------
    list of keras.Model
        Each maps (batch, image_size, image_size, 3) float images in [0, 255]
        to its backbone's cut feature map.
    """
    import keras

    stems = []
    for alpha in config.alphas():
        inputs = keras.Input((config.image_size, config.image_size, 3), name="image")
        x = keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, name="mobilenet_v2_preprocess")(inputs)
        backbone = build_backbone(config, alpha)
        cut = backbone.get_layer(cut_layer(backbone, config.trainable_layers)).output
        stem = keras.Model(backbone.input, cut)
        stems.append(keras.Model(inputs, stem(x, training=False), name=f"stem_{alpha:g}"))
    return stems


def gap_features(model, images, batch_size=32):
    """Pooled backbone features (before dropout and the head) of an embedding model."""
    import keras

    features = keras.Model(model.input, features_layer(model).output)
    return embed(features, images, batch_size)


def init_head_pca(model, images, augment=None, copies=0, seed=0, progress=False):
    """Start the head at the PCA projection of the backbone's pooled features.

    See :func:`set_head_pca`; this computes the features of ``images`` (and,
    with ``copies > 0``, of ``copies`` augmented versions of every image, so
    that a small training set spans more of the feature space) and calls it.

    Parameters
    ----------
    model : keras.Model from :func:`build_embedding_model`
    images : array of shape (n, size, size, 3), values in [0, 255]
    augment : keras layer, optional
    copies : int
    seed : int
    progress : bool
        Show a tqdm bar over the ``(1 + copies) * n`` images it embeds.

    Returns
    -------
    float: fraction of the features' energy the ``m`` directions keep.
    """
    _check_pca_head(model)
    return set_head_pca(model, pooled_features(model, images, augment, copies, progress), seed)


def pooled_features(model, images, augment=None, copies=0, progress=False):
    """Pooled features of ``images`` and of ``copies`` augmented versions of them.

    Parameters
    ----------
    progress : bool
        Show a tqdm bar over the ``(1 + copies) * n`` images it embeds.

    Returns
    -------
    numpy.ndarray of shape ((copies + 1) * n, feature_dim): the images first,
    then each round of copies in the same order.
    """
    import keras
    from tqdm.auto import tqdm

    features = keras.Model(model.input, features_layer(model).output)
    passes = [None] + [augment] * (copies if augment is not None else 0)
    feats = []
    with tqdm(total=len(passes) * len(images), desc="head init features", unit="img",
              disable=not progress) as bar:
        for layer in passes:  # batches of 32, as embed() runs them
            for i in range(0, len(images), 32):
                batch = images[i:i + 32]
                if layer is not None:
                    batch = np.asarray(layer(batch.astype(np.float32), training=True))
                feats.append(embed(features, batch))
                bar.update(len(batch))
    return np.concatenate(feats)


def _check_pca_head(model):
    """Raise ConfigError unless the model's head can start at a PCA projection."""
    names = {layer.name for layer in model.layers}
    if "projection" not in names:
        raise ConfigError("head_init='pca' needs a dense head (head 'mlp' or 'linear')")
    if "hidden" in names:
        hidden, m = model.get_layer("hidden"), model.get_layer("projection").units
        if hidden.units != 2 * m:
            raise ConfigError(f"head_init='pca' needs hidden_dim == 2 * embedding_dim, got "
                              f"{hidden.units} and {m}")


def set_head_pca(model, features, seed=0):
    """Set the head so that the untrained model outputs the PCA projection of ``features``.

    For head "mlp" with hidden width ``2 m`` and embedding width ``m``, the
    hidden layer computes ``[relu(z), relu(-z)]`` for ``z = P x`` and the
    projection computes ``relu(z) - relu(-z) = z``; head "linear" computes
    ``z = P x`` directly. ``x`` is the pooled feature vector and ``P`` holds
    the top ``m`` right singular vectors of ``features`` (uncentred, so that,
    like the ImageNet baseline, the model compares feature directions),
    completed with random orthonormal directions when they span fewer than
    ``m``. The untrained model then ranks images as the projected ImageNet
    features do, and the triplet loss fine-tunes from there.

    Parameters
    ----------
    model : keras.Model from :func:`build_embedding_model`
    features : array of shape (n, feature_dim)
        Pooled features (the input of the head) of the training images.
    seed : int

    Returns
    -------
    float: fraction of the features' energy the ``m`` directions keep.
    """
    _check_pca_head(model)
    projection = model.get_layer("projection")
    m = projection.units
    x = np.asarray(features, np.float64)
    _, singular, vt = np.linalg.svd(x, full_matrices=False)
    rank = int(np.sum(singular > singular[0] * 1e-6)) if len(singular) else 0
    basis = vt[:min(rank, m)]
    if len(basis) < m:  # complete with random directions orthogonal to the PCA ones
        extra = np.random.default_rng(seed).standard_normal((m - len(basis), x.shape[1]))
        extra -= extra @ basis.T @ basis
        basis = np.vstack([basis, np.linalg.qr(extra.T)[0].T])
    kept = float(np.sum(singular[:m] ** 2) / max(np.sum(singular ** 2), 1e-12))
    if "hidden" in {layer.name for layer in model.layers}:
        model.get_layer("hidden").set_weights([
            np.concatenate([basis.T, -basis.T], axis=1).astype(np.float32),
            np.zeros(2 * m, np.float32)])
        projection.set_weights([np.concatenate([np.eye(m), -np.eye(m)]).astype(np.float32),
                                np.zeros(m, np.float32)])
    else:
        projection.set_weights([basis.T.astype(np.float32), np.zeros(m, np.float32)])
    return kept


def set_head_whitening(model, features, labels, shrinkage=0.5, pairs_per_scene=2000, seed=0):
    """Head "linear" as the learned whitening of ``features`` (Radenović et al. 2018).

    ``z = P (x - μ)`` with ``μ`` the mean feature and ``P = C^(-1/2)`` for the
    within-scene covariance ``C`` of the differences of same-scene pairs
    (up to ``pairs_per_scene`` per scene, seeded), shrunk toward the identity:
    ``C ← (1 - s) C + s (tr C / d) I``. Directions in which photos of one
    scene vary are damped, the others kept; the shrinkage keeps it stable
    with few training photos. Then L2 normalisation, as always.

    Parameters
    ----------
    model : keras.Model with head "linear" and ``embedding_dim`` = feature width
    features : array of shape (n, d)
        Pooled features of the training images (augmented copies welcome).
    labels : array of shape (n,)
        Scene of each row.
    shrinkage : float in [0, 1]
    pairs_per_scene : int
    seed : int

    Returns
    -------
    float: the condition number of the shrunk covariance.
    """
    x = np.asarray(features, np.float64)
    labels = np.asarray(labels)
    projection = model.get_layer("projection")
    if projection.units != x.shape[1]:
        raise ConfigError(f"head_init='whitening' needs embedding_dim == the feature width "
                          f"{x.shape[1]}, got {projection.units}")
    rng = np.random.default_rng(seed)
    diffs = []
    for label in np.unique(labels):
        rows = np.flatnonzero(labels == label)
        i, j = np.triu_indices(len(rows), k=1)
        keep = rng.permutation(len(i))[:pairs_per_scene]
        diffs.append(x[rows[i[keep]]] - x[rows[j[keep]]])
    d = np.concatenate(diffs) if diffs else np.zeros((0, x.shape[1]))
    if not len(d):
        raise ConfigError("head_init='whitening' needs scenes with at least 2 training images")
    c = d.T @ d / len(d)
    c = (1 - shrinkage) * c + shrinkage * np.trace(c) / len(c) * np.eye(len(c))
    values, vectors = np.linalg.eigh(c)
    values = np.maximum(values, values.max() * 1e-12)
    p = (vectors / np.sqrt(values)) @ vectors.T
    mean = x.mean(axis=0)
    projection.set_weights([p.T.astype(np.float32), (-mean @ p.T).astype(np.float32)])
    return float(values.max() / values.min())


def set_head_identity(model):
    """Head "linear" with as many outputs as inputs: start at the identity (ImageNet features)."""
    projection = model.get_layer("projection")
    kernel = projection.get_weights()[0]
    if kernel.shape[0] != kernel.shape[1]:
        raise ConfigError(f"head_init='identity' needs embedding_dim == the feature width "
                          f"{kernel.shape[0]}, got {kernel.shape[1]}")
    projection.set_weights([np.eye(kernel.shape[0], dtype=np.float32),
                            np.zeros(kernel.shape[0], np.float32)])


def save_model(model, path):
    """Save as ``.keras``, atomically (temporary file in the same folder, then rename)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".keras")
    os.close(fd)
    try:
        model.save(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def load_model(path):
    """Load a model saved by imgsim (``.keras``), without its training configuration."""
    import keras

    import imgsim.losses  # noqa: F401  (registers the loss for saved compile configs)
    import imgsim.pooling  # noqa: F401  (registers the pooling layers)

    if not os.path.isfile(path):
        problem = "is a directory, expected a .keras file" if os.path.isdir(path) else \
            "model file does not exist"
        raise WeightsNotFoundError(f"{path}: {problem}")
    try:
        return keras.saving.load_model(path, compile=False)
    except Exception as exc:
        raise WeightsNotFoundError(f"{path}: not a loadable .keras model ({type(exc).__name__})") from None


# --------------------------------------------------------------------------- inference


def input_size(model):
    """Square input side of a model built by this module (or of an :class:`InferenceModel`)."""
    if isinstance(model, InferenceModel):
        return model.input_size
    shape = tuple(getattr(model, "input_shape", None) or ())
    if len(shape) != 4 or shape[1] is None or shape[1] != shape[2] or shape[3] != 3:
        raise ConfigError(f"model {getattr(model, 'name', model)!r} takes inputs of shape {shape}, "
                          "expected (batch, size, size, 3)")
    return int(shape[1])


def _as_uint8(batch):
    """An (n, size, size, 3) batch as C-contiguous uint8, the dtype :func:`embed` feeds."""
    return np.ascontiguousarray(batch, dtype=np.uint8)


class InferenceModel:
    """A compiled forward pass: what :func:`embed` needs from a model.

    Build one with :func:`compile_for_inference`; ``embed`` accepts it in place
    of a ``keras.Model``. Calling it on a batch is thread-safe (calls are
    serialised).

    Attributes
    ----------
    engine : str
        One of :data:`ENGINES`.
    input_size : int
        Square input side in pixels.
    output_dim : int
        Width of the embeddings.
    """

    engine = None

    def __init__(self, input_size, output_dim):
        self.input_size = int(input_size)
        self.output_dim = int(output_dim)
        self._lock = threading.Lock()

    def __call__(self, batch):
        """Embed a batch.

        Parameters
        ----------
        batch : array of shape (n, input_size, input_size, 3), uint8
            Images already resized; other dtypes are cast to uint8 first, as
            :func:`embed` does for arrays.

        Returns
        -------
        numpy.ndarray of shape (n, output_dim), float32
        """
        batch = _as_uint8(batch)
        expected = (self.input_size, self.input_size, 3)
        if batch.ndim != 4 or batch.shape[1:] != expected:
            raise ConfigError(f"batch must have shape (n, {expected[0]}, {expected[1]}, 3), "
                              f"got {batch.shape}")
        with self._lock:
            return np.asarray(self._forward(batch), np.float32)

    def __repr__(self):
        return (f"{type(self).__name__}(engine={self.engine!r}, input_size={self.input_size}, "
                f"output_dim={self.output_dim})")


class KerasInference(InferenceModel):
    """``model.predict_on_batch`` on float32 inputs (the reference engine)."""

    engine = "keras"

    def __init__(self, model):
        super().__init__(input_size(model), model.output_shape[-1])
        self.model = model

    def _forward(self, batch):
        return self.model.predict_on_batch(batch.astype(np.float32))


class OpenVINOInference(InferenceModel):
    """An OpenVINO IR of the model, compiled for the CPU in f32 with a uint8 input.

    The uint8 → f32 conversion runs inside OpenVINO (exact for integers; 10 %
    faster than converting in numpy); ``INFERENCE_PRECISION_HINT=f32`` keeps
    OpenVINO from switching to bf16 on CPUs that have it, so embeddings match
    Keras' within 1e-6 rather than 1e-2.

    Parameters
    ----------
    xml_path : str
        ``model.xml`` written by ``keras.Model.export(..., format="openvino")``.
    input_size, output_dim : int
    digest : str
        The cache key it was exported under (for reference).
    """

    engine = "openvino"

    def __init__(self, xml_path, input_size, output_dim, digest=None):
        import openvino as ov

        super().__init__(input_size, output_dim)
        self.xml_path, self.digest = xml_path, digest
        core = ov.Core()
        graph = core.read_model(xml_path)
        ppp = ov.preprocess.PrePostProcessor(graph)
        ppp.input().tensor().set_element_type(ov.Type.u8)
        ppp.input().preprocess().convert_element_type(ov.Type.f32)
        # One stream using every core: synchronous batches of 32 run 2x faster than with
        # the THROUGHPUT hint on 2 cores (measured), and embed feeds one batch at a time.
        self._compiled = core.compile_model(ppp.build(), "CPU", {
            "INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"})
        self._request = self._compiled.create_infer_request()

    def _forward(self, batch):
        return self._request.infer([batch])[0]


def default_engine_cache_dir(engine="openvino"):
    """``$XDG_CACHE_HOME/imgsim/<engine>``, by default ``~/.cache/imgsim/<engine>``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "imgsim", engine)


_ARCHITECTURE_DIGESTS = weakref.WeakKeyDictionary()  # model -> SHA-256 of model.to_json()


def model_digest(model, extra=""):
    """SHA-256 (hex) of a Keras model's architecture (JSON) and weight values.

    Two models with the same layers and the same weights get the same digest;
    training a step, loading other weights or cutting the model at another
    layer changes it. ``extra`` (e.g. library versions) joins the key. About
    10 ms for MobileNetV2 1.0 (9 MB of weights): the architecture's part is
    computed once per model object.
    """
    try:
        architecture = _ARCHITECTURE_DIGESTS[model]
    except (KeyError, TypeError):
        architecture = hashlib.sha256(model.to_json().encode("utf-8")).hexdigest()
        try:
            _ARCHITECTURE_DIGESTS[model] = architecture
        except TypeError:  # not weakly referenceable: recompute next time
            pass
    h = hashlib.sha256(f"{architecture};{extra};".encode("utf-8"))
    for weight, value in zip(model.weights, model.get_weights()):
        value = np.ascontiguousarray(value)
        h.update(f"{weight.path}:{value.dtype}:{value.shape};".encode("utf-8"))
        h.update(value.data)
    return h.hexdigest()


def _import_openvino():
    try:
        import openvino
    except ImportError:
        raise ConfigError("engine='openvino' needs the openvino package: "
                          "pip install 'imgsim[openvino]' (or pip install openvino)") from None
    return openvino


def _export_openvino(model, folder):
    """``model.xml`` + ``model.bin`` in ``folder``, written once and atomically.

    The IR is exported into a temporary sibling folder that is then renamed, so
    a concurrent or killed export never leaves a half-written model behind;
    when two processes race, the first rename wins and the other's copy is
    dropped.
    """
    xml = os.path.join(folder, "model.xml")
    if os.path.isfile(xml) and os.path.isfile(os.path.join(folder, "model.bin")):
        return xml
    parent = os.path.dirname(os.path.abspath(folder))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=parent, prefix=".tmp-")
    try:
        model.export(os.path.join(tmp, "model.xml"), format="openvino", verbose=False)
        try:
            os.rename(tmp, folder)
        except OSError:  # another process finished first (the folder exists, not empty)
            if not os.path.isfile(xml):
                raise
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
    return xml


_COMPILED = OrderedDict()  # digest -> OpenVINOInference, the last few compiled in this process
_COMPILED_KEEP = 4
_COMPILED_LOCK = threading.Lock()


def compile_for_inference(model, engine="openvino", cache_dir=None):
    """A faster forward pass of ``model`` with the same weights, for :func:`embed`.

    Parameters
    ----------
    model : keras.Model or InferenceModel
        From :func:`build_embedding_model`, :func:`build_imagenet_baseline` or
        :func:`load_model`; an :class:`InferenceModel` of the same engine is
        returned as is.
    engine : {"keras", "openvino"}
        ``"keras"`` wraps ``predict_on_batch`` (no copy, follows later weight
        changes). ``"openvino"`` exports the model once to OpenVINO IR under
        ``cache_dir/<digest>/`` — the digest covers the architecture, the weight
        values and the Keras and OpenVINO versions, so a retrained model gets a
        new export — and compiles it for the CPU in f32: about 1.8–2× the Keras
        forward pass on a 2-core x86 CPU, embeddings within 1e-6 of Keras'. The
        compiled model snapshots the weights: compile again after training.
        The last few compiled models are reused within a process.
    cache_dir : str or None
        Where exported IR folders go; default :func:`default_engine_cache_dir`
        (``~/.cache/imgsim/openvino``).

    Returns
    -------
    InferenceModel
        ``input_size``, ``output_dim`` and ``__call__(uint8 batch) -> float32 embeddings``.

    Raises
    ------
    ConfigError
        Unknown ``engine``, or ``engine="openvino"`` without the openvino package.
    """
    if engine not in ENGINES:
        raise ConfigError(f"engine must be one of {ENGINES}, got {engine!r}")
    if isinstance(model, InferenceModel):
        if model.engine != engine:
            raise ConfigError(f"model is already compiled for engine={model.engine!r}, "
                              f"not {engine!r}: compile the keras.Model instead")
        return model
    if engine == "keras":
        return KerasInference(model)
    ov = _import_openvino()
    import keras

    digest = model_digest(model, extra=f"keras {keras.__version__}; openvino {ov.get_version()}")
    with _COMPILED_LOCK:
        if digest in _COMPILED:
            _COMPILED.move_to_end(digest)
            return _COMPILED[digest]
    cache_dir = cache_dir or default_engine_cache_dir("openvino")
    xml = _export_openvino(model, os.path.join(cache_dir, digest[:32]))
    compiled = OpenVINOInference(xml, input_size(model), model.output_shape[-1], digest)
    with _COMPILED_LOCK:
        _COMPILED[digest] = compiled
        while len(_COMPILED) > _COMPILED_KEEP:
            _COMPILED.popitem(last=False)
    return compiled


def embed(model, images, batch_size=32, progress=False, engine="keras"):
    """Embed photos or arrays with ``model``.

    Parameters
    ----------
    model : keras.Model or InferenceModel
        From :func:`build_embedding_model`, :func:`build_imagenet_baseline` or
        :func:`load_model`, or already compiled by :func:`compile_for_inference`
        (then ``engine`` is ignored).
    images : sequence of paths, or array of shape (n, h, w, 3)
        Paths are decoded with :func:`imgsim.images.load_image` (EXIF applied)
        and resized to the model's input size; arrays are cast to uint8 and,
        if of another size, resized.
    batch_size : int
    progress : bool
        Show a tqdm bar over batches.
    engine : {"keras", "openvino"}
        Forward pass to use for a ``keras.Model``; see :func:`compile_for_inference`
        (``"openvino"`` exports to ``~/.cache/imgsim/openvino`` on first use).

    Returns
    -------
    numpy.ndarray of shape (n, embedding_dim), float32

    Raises
    ------
    EmbeddingError
        An embedding is all zeros or not finite (an input too small for the
        backbone, a diverged model): never returned as a result.
    """
    from concurrent.futures import ThreadPoolExecutor

    from imgsim.images import load_image, load_images, resize

    check_range("batch_size", batch_size, 1, integer=True)
    forward = compile_for_inference(model, model.engine if isinstance(model, InferenceModel)
                                    else engine)
    size = forward.input_size
    n = len(images)
    out = np.full((n, forward.output_dim), np.nan, np.float32)  # a row never filled is caught

    def load(start):
        chunk = images[start:start + batch_size]
        if all(isinstance(item, (str, os.PathLike)) for item in chunk):
            return load_images(chunk, size)[0]  # decoded in parallel threads
        return np.stack([load_image(item, size) if isinstance(item, (str, os.PathLike))
                         else resize(np.asarray(item, np.uint8), size) for item in chunk])

    starts = list(range(0, n, batch_size))
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(starts), desc="embedding", unit="batch")
    # The next batch decodes in a background thread while the model runs on this one.
    try:
        with ThreadPoolExecutor(1) as prefetch:
            pending = prefetch.submit(load, starts[0]) if starts else None
            for i, start in enumerate(starts):
                batch = pending.result()
                if i + 1 < len(starts):
                    pending = prefetch.submit(load, starts[i + 1])
                out[start:start + len(batch)] = forward(batch)
                if bar is not None:
                    bar.update()
    finally:  # an error message then starts on a line of its own
        if bar is not None:
            bar.close()
    check_embeddings(out, images)
    return out


def check_embeddings(embeddings, images=None):
    """Raise :class:`EmbeddingError` if a row of ``embeddings`` is all zeros or not finite.

    An all-zero embedding is at distance 0 from every other one, a NaN at an
    undefined distance: either would silently corrupt every figure computed
    from it. Every path that embeds (plain, sharded, training's validation)
    passes here.

    Parameters
    ----------
    embeddings : array of shape (n, dim)
    images : sequence of length n, optional
        What was embedded; paths name the images in the message.
    """
    embeddings = np.asarray(embeddings)
    if embeddings.size == 0:
        return
    finite = np.isfinite(embeddings).all(axis=1)
    zero = finite & ~np.any(embeddings != 0, axis=1)
    bad = np.flatnonzero(~finite | zero)
    if not len(bad):
        return
    first = bad[0]
    item = images[first] if images is not None and isinstance(images[first], (str, os.PathLike)) \
        else f"image {first}"
    what = "not finite" if not finite[first] else "all zeros"
    raise EmbeddingError(
        f"{item}: embedding is {what} ({len(bad)} of {len(embeddings)} images: "
        f"{int((~finite).sum())} not finite, {int(zero.sum())} all zeros); a diverged model or "
        f"an input the model cannot take")


def distance(a, b):
    """Euclidean distance between embeddings, row by row.

    Parameters
    ----------
    a, b : array of shape (dim,) or (n, dim)

    Returns
    -------
    float, or numpy.ndarray of shape (n,)
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} and {b.shape}")
    d = np.sqrt(np.sum((a - b) ** 2, axis=-1))
    return float(d) if d.ndim == 0 else d


def similarity_percent(distance, scale=5.0):
    """The seed's similarity score: ``exp(-distance / scale) * 100``.

    Parameters
    ----------
    distance : float or array, ≥ 0
    scale : float, default 5.0

    Returns
    -------
    float or numpy.ndarray, in (0, 100]
    """
    if scale <= 0:
        raise ValueError(f"scale must be positive, got {scale}")
    result = np.exp(-np.asarray(distance, np.float64) / scale) * 100.0
    return float(result) if result.ndim == 0 else result


def embed_folder(folder, model_path=None, out="embeddings.npz", batch_size=32, image_size=224,
                 on_error="raise", scheduler=None, workers=None, cache_dir=None):
    """Embed every image of a data folder (either layout) into an ``.npz`` file.

    Every argument is checked before any work (an unwritable ``out`` is found
    before embedding, not after).

    Parameters
    ----------
    folder : str
        Data root, read with :func:`imgsim.data.load_table` (scenes with one
        image allowed).
    model_path : str or None
        A ``.keras`` model; None uses ImageNet GAP features at ``image_size``.
    out : str
        Written atomically with arrays ``embeddings`` (n, dim) float32 and
        ``paths``, ``datasets``, ``scenes`` (n,) strings.
    batch_size : int
    image_size : int
        Input side of the ImageNet default (a model has its own).
    on_error : {"raise", "skip"}
        Bad image files: stop, or leave them out and say how many.
    scheduler, workers : optional
        Embed on Dask, in content-keyed shards (:func:`embed_sharded`).
    cache_dir : str, optional
        The shards' folder (resumable); default
        :func:`default_embedding_cache_dir`. Given without Dask, the shards
        run in this process (and resume just the same).

    Returns
    -------
    str, the output path.
    """
    import io

    from imgsim.data import load_table
    from imgsim.fileio import atomic_write_bytes, check_output_file
    from imgsim.images import BadFiles, load_images

    from imgsim import distributed

    check_range("batch_size", batch_size, 1, integer=True)
    check_output_file(out, "out")
    if distributed.enabled(scheduler, workers) and not hasattr(scheduler, "submit"):
        distributed.check(scheduler, workers)
    sharded = distributed.enabled(scheduler, workers) or cache_dir is not None
    config = None if model_path else EmbeddingConfig(image_size=image_size)
    bad = BadFiles()
    table = load_table(folder, on_error=on_error, min_images_per_scene=1, bad=bad)
    if on_error == "skip":  # a first, small decode, so that bad images drop out with their rows
        _, ok = load_images(table["path"], 32, on_error="skip", bad=bad)
        table = table[ok].reset_index(drop=True)
        if table.empty:
            raise DataLayoutError(f"{folder}: no usable images ({len(bad)} bad)")
    if len(bad):
        print(f"skipped {len(bad)} bad input(s):\n{bad.summary()}")
    if sharded:
        embeddings = embed_sharded(list(table["path"]), model_path, image_size, cache_dir, batch_size,
                                   progress=True, scheduler=scheduler, workers=workers)
    else:
        model = load_model(model_path) if model_path else build_imagenet_baseline(config)
        embeddings = embed(model, list(table["path"]), batch_size, progress=True)
    buffer = io.BytesIO()
    np.savez(buffer, embeddings=embeddings, paths=table["path"].to_numpy(str),
             datasets=table["dataset"].to_numpy(str), scenes=table["scene"].to_numpy(str))
    atomic_write_bytes(out, buffer.getvalue())
    print(f"wrote {len(embeddings)} embeddings of dimension {embeddings.shape[1]} to {out}")
    return out


# --------------------------------------------------------------------------- embedding in shards (Dask)

EMBED_SHARD = 256  # images per task; a multiple of the batch size keeps every batch as embed() forms it
SHARD_VERSION = 1  # part of every shard key: bump it when embeddings of the same inputs change
_SHARD_MODELS = OrderedDict()  # (model_path, image_size, engine) -> compiled model, per process
_SHARD_MODELS_LOCK = threading.Lock()


def default_embedding_cache_dir():
    """``$XDG_CACHE_HOME/imgsim/embeddings``, by default ``~/.cache/imgsim/embeddings``."""
    return default_engine_cache_dir("embeddings")


def _shard_model(model_path, image_size, engine):
    """The model of a shard task, built or loaded once per process (the last two kept)."""
    key = (model_path, image_size, engine)
    with _SHARD_MODELS_LOCK:
        if key in _SHARD_MODELS:
            _SHARD_MODELS.move_to_end(key)
            return _SHARD_MODELS[key]
        model = load_model(model_path) if model_path else build_imagenet_baseline(
            EmbeddingConfig(image_size=image_size))
        _SHARD_MODELS[key] = compiled = compile_for_inference(model, engine)
        while len(_SHARD_MODELS) > 2:
            _SHARD_MODELS.popitem(last=False)
        return compiled


def _shard_file(folder, paths, model_path, image_size, engine):
    """``folder/<key>.npy``: the key covers the model file's (or the baseline's) identity and every image's content."""
    from imgsim.images import file_digest

    model_key = file_digest(model_path) if model_path else f"imagenet-gap-mobilenet_v2-1.0-{image_size}"
    key = json.dumps([SHARD_VERSION, model_key, image_size, engine, [file_digest(p) for p in paths]])
    return os.path.join(folder, hashlib.sha256(key.encode()).hexdigest()[:32] + ".npy")


def _embed_shard_task(paths, model_path, image_size, batch_size, engine, folder):
    """Embeddings of one shard, read from ``folder`` or computed and stored there atomically.

    Returns ``(embeddings of shape (len(paths), dim), computed now)``.
    """
    import io

    from imgsim.fileio import atomic_write_bytes

    file = _shard_file(folder, paths, model_path, image_size, engine)
    try:
        cached = np.load(file, allow_pickle=False)
        if cached.ndim == 2 and len(cached) == len(paths) and np.isfinite(cached).all():
            return cached.astype(np.float32, copy=False), False
    except (OSError, ValueError, EOFError):
        pass  # missing or damaged: compute it
    out = embed(_shard_model(model_path, image_size, engine), list(paths), batch_size)
    buffer = io.BytesIO()
    np.save(buffer, out)
    atomic_write_bytes(file, buffer.getvalue())
    return out, True


def embed_sharded(paths, model_path=None, image_size=224, cache_dir=None, batch_size=32,
                  engine="keras", shard_size=EMBED_SHARD, progress=False, scheduler=None,
                  workers=None):
    """Embed image files in content-keyed shards, on Dask or in this process.

    The paths are cut into shards of ``shard_size`` in order; each shard is
    one task that embeds with :func:`embed` and stores its rows in
    ``cache_dir/<key>.npy``, the key covering the model (the ``.keras`` file's
    content, or the ImageNet baseline and ``image_size``), ``engine`` and
    every image's content (hashed where the task runs). A killed run resumes
    with the missing shards; a rerun on another cluster, with the same paths
    in the same order, reuses them all. Embeddings equal :func:`embed`'s on
    the same model (batches are formed the same way when ``shard_size`` is a
    multiple of ``batch_size``).

    Parameters
    ----------
    paths : sequence of str or path
        Image files, visible to every worker at the same path.
    model_path : str, optional
        A ``.keras`` model file (visible to every worker); None: ImageNet
        MobileNetV2 GAP features at ``image_size``.
    image_size : int
        Input side of the ImageNet baseline.
    cache_dir : str, optional
        Where shards go; default :func:`default_embedding_cache_dir`. On a
        cluster it must be on storage every worker sees at the same path
        (:func:`imgsim.distributed.check_shared` refuses it otherwise).
    batch_size : int
    engine : {"keras", "openvino"}
    shard_size : int
        Images per task.
    progress : bool
        A tqdm bar over shards.
    scheduler : str or dask.distributed.Client, optional
        An existing Dask cluster (``tcp://HOST:PORT``).
    workers : int, optional
        A local Dask cluster of this many processes. With neither, shards run
        one after the other in this process.

    Returns
    -------
    numpy.ndarray of shape (len(paths), dim), float32
    """
    from imgsim import distributed

    if not isinstance(shard_size, int) or isinstance(shard_size, bool) or shard_size < 1:
        raise ConfigError(f"shard_size must be an integer >= 1, got {shard_size!r}")
    if engine not in ENGINES:
        raise ConfigError(f"engine must be one of {ENGINES}, got {engine!r}")
    if model_path is not None and not os.path.isfile(model_path):
        raise WeightsNotFoundError(f"{model_path}: model file does not exist")
    folder = os.path.abspath(cache_dir or default_embedding_cache_dir())
    os.makedirs(folder, exist_ok=True)
    paths = [os.path.abspath(p) for p in paths]  # workers may run elsewhere
    model_path = os.path.abspath(model_path) if model_path else None
    tasks = [(paths[i:i + shard_size], model_path, image_size, batch_size, engine, folder)
             for i in range(0, len(paths), shard_size)]
    if not tasks:
        return np.zeros((0, 0), np.float32)
    if distributed.enabled(scheduler, workers):
        with distributed.client(scheduler, workers) as dask_client:
            distributed.check_shared(dask_client, folder)
            results = distributed.run_tasks(dask_client, _embed_shard_task, tasks, progress,
                                            desc="embedding", unit="shard")
    else:
        if progress:
            from tqdm.auto import tqdm
            tasks = tqdm(tasks, desc="embedding", unit="shard")
        results = [_embed_shard_task(*task) for task in tasks]
    return np.concatenate([embeddings for embeddings, _ in results])
