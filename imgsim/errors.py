"""The imgsim error hierarchy.

Every error that bad input can cause is an :class:`ImgsimError` whose message
names the file (or setting) and the problem, for example
``ImageDecodeError: train/x/y.jpg: not an image``. The command line prints it
as one line and exits with status 2.
"""


class ImgsimError(Exception):
    """Base class of every error imgsim raises on purpose."""


class DataLayoutError(ImgsimError):
    """A data folder, labels file or run folder does not have the expected layout."""


class ImageDecodeError(ImgsimError):
    """An image file is missing, empty, truncated or not an image."""


class ConfigError(ImgsimError, ValueError):
    """A configuration value is out of range or inconsistent."""


class WeightsNotFoundError(ImgsimError):
    """Pretrained weights are neither cached nor downloadable."""


class OutputError(ImgsimError):
    """An output file or folder cannot be written (disk full, read-only, a file in the way)."""


class LockedError(ImgsimError):
    """A run folder is in use by another imgsim process (the message names it)."""


class EmbeddingError(ImgsimError):
    """A model produced an all-zero or non-finite embedding (never returned as a result)."""


class DataWarning(UserWarning):
    """Input that imgsim repaired, and says how (e.g. whitespace stripped from labels)."""
