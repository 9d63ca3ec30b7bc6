"""Training-time augmentation from Keras preprocessing layers.

The layers act only when called with ``training=True``; evaluation never
augments. Images are float arrays with values in [0, 255].
"""

from dataclasses import dataclass

from imgsim.config import DictConfig, check_range
from imgsim.errors import ConfigError


@dataclass
class AugmentConfig(DictConfig):
    """Strength of each augmentation; 0 turns one off, ``strength`` scales all.

    Attributes
    ----------
    brightness : float
        ``RandomBrightness`` factor: ± this fraction of the value range.
    contrast : float
        ``RandomContrast`` factor.
    hue : float
        ``RandomHue`` factor in [0, 1].
    saturation : float
        ``RandomSaturation``: factor sampled in 0.5 ± this (0.5 is no change).
    flip : bool
        Random horizontal flips.
    zoom : float
        ``RandomZoom`` height factor (± fraction).
    rotation : float
        ``RandomRotation`` factor (± fraction of a full turn; 0.05 ≈ ±18°).
    strength : float
        Multiplies every factor above (a single knob for sweeps).
    seed : int or None
    """

    brightness: float = 0.2
    contrast: float = 0.2
    hue: float = 0.05
    saturation: float = 0.2
    flip: bool = True
    zoom: float = 0.1
    rotation: float = 0.05
    strength: float = 1.0
    seed: int = None

    def __post_init__(self):
        super().__post_init__()
        for name in ("brightness", "contrast", "hue", "saturation", "zoom", "rotation", "strength"):
            check_range(f"augmentation {name}", getattr(self, name), 0)
        if self.seed is not None:
            check_range("augmentation seed", self.seed, 0, 2**32 - 1, integer=True)
        if self.saturation * self.strength > 0.5 or self.hue * self.strength > 1:
            raise ConfigError("augmentation saturation*strength must be <= 0.5 and hue*strength <= 1")



def build_augmentation(config=None):
    """A ``keras.Sequential`` of the random layers that ``config`` turns on.

    Returns None when every augmentation is off.
    """
    import keras

    config = config or AugmentConfig()
    s, seed, rng = config.strength, config.seed, (0, 255)
    layers = []
    if config.flip:
        layers.append(keras.layers.RandomFlip("horizontal", seed=seed))
    if config.rotation * s:
        layers.append(keras.layers.RandomRotation(config.rotation * s, fill_mode="reflect", seed=seed))
    if config.zoom * s:
        layers.append(keras.layers.RandomZoom(config.zoom * s, fill_mode="reflect", seed=seed))
    if config.brightness * s:
        layers.append(keras.layers.RandomBrightness(config.brightness * s, value_range=rng, seed=seed))
    if config.contrast * s:
        layers.append(keras.layers.RandomContrast(config.contrast * s, value_range=rng, seed=seed))
    if config.saturation * s:
        f = config.saturation * s
        layers.append(keras.layers.RandomSaturation((0.5 - f, 0.5 + f), value_range=rng, seed=seed))
    if config.hue * s:
        layers.append(keras.layers.RandomHue(config.hue * s, value_range=rng, seed=seed))
    if not layers:
        return None
    return keras.Sequential(layers, name="augmentation")


def augment_batch(pipeline, images, seed):
    """Augment a batch reproducibly: the same images and ``seed`` always give the same output.

    Each layer of ``pipeline`` (from :func:`build_augmentation`) draws its
    random transformation from a fresh ``keras.random.SeedGenerator`` seeded
    from ``seed`` and its position, instead of the layer's own generator whose
    state depends on every earlier call (and on which loader thread ran first).
    Training batches and cached augmented copies are then a function of their
    seed alone, so a resumed run sees the batches an uninterrupted one would.

    Parameters
    ----------
    pipeline : keras.Sequential or None
        None returns the images unchanged (as float32).
    images : array of shape (n, h, w, 3), values in [0, 255]
    seed : int
        Any non-negative integer.

    Returns
    -------
    numpy.ndarray of shape (n, h, w, 3), float32
    """
    import keras
    import numpy as np

    x = keras.ops.convert_to_tensor(np.asarray(images, np.float32))
    if pipeline is None:
        return np.asarray(x, np.float32)
    for i, layer in enumerate(pipeline.layers):
        generator = keras.random.SeedGenerator(int(seed * 7919 + i) % (2 ** 31 - 1))
        transformation = layer.get_random_transformation(x, training=True, seed=generator)
        x = layer.transform_images(x, transformation, training=True)
    return np.asarray(x, np.float32)


def batch_seed(*parts):
    """A 31-bit seed from integers (e.g. run seed, epoch, batch index), stable across runs."""
    import numpy as np

    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0] >> 1)
