"""The imgsim error hierarchy.

Every error that bad input can cause is an :class:`ImgsimError` whose message
names the file (or setting) and the problem, for example
``ImageDecodeError: train/x/y.jpg: not an image``.
"""


class ImgsimError(Exception):
    """Base class of every error imgsim raises on purpose."""


class DataLayoutError(ImgsimError):
    """A data folder or labels file does not have the expected layout."""


class ImageDecodeError(ImgsimError):
    """An image file is missing, empty, truncated or not an image."""


class ConfigError(ImgsimError, ValueError):
    """A configuration value is out of range or inconsistent."""


class WeightsNotFoundError(ImgsimError):
    """Pretrained weights are neither cached nor downloadable."""
