"""imgsim: a Jupyter-first research toolkit for image similarity.

Modules, one concern each: ``data`` (tables, splits), ``images`` (decoding,
EXIF geometry), ``pairs`` (pair sets), ``augment``
(Keras preprocessing layers), ``model`` (the MobileNetV2 embedding), ``losses``
(semi-hard triplet loss), ``train`` (P×K batches, callbacks, resumable runs),
``metrics`` (retrieval figures), ``index`` (nearest neighbours), ``sift``,
``fusion``, ``evaluate``, ``viz``, ``widgets``, ``sweep``, ``reconstruct`` (the
IMC task) with ``graph`` (the match graph), ``benchmarks`` (IMC benchmark
folders), ``imc`` (the score) and ``imc_report``, ``cli``.

Importing :mod:`imgsim` is cheap: Keras and TensorFlow load only when a module
that needs them is imported (quietly: see :mod:`imgsim.quiet`).
"""

from imgsim import quiet as _quiet

from imgsim.errors import (
    ConfigError,
    DataLayoutError,
    DataWarning,
    EmbeddingError,
    ImageDecodeError,
    ImgsimError,
    LockedError,
    OutputError,
    WeightsNotFoundError,
)

__version__ = "0.1.0"

_quiet.install()

__all__ = [
    "ConfigError",
    "DataLayoutError",
    "DataWarning",
    "EmbeddingError",
    "ImageDecodeError",
    "ImgsimError",
    "LockedError",
    "OutputError",
    "WeightsNotFoundError",
    "__version__",
]
