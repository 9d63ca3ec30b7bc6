"""Library start-up noise down: TensorFlow's C++ banner and its retracing hints.

TensorFlow 2.21 prints its start-up lines (``oneDNN custom operations are
on``, ``cpu_feature_guard``, ``All log messages before absl::InitializeLog()``)
through C++ absl logging straight to file descriptor 2, whatever
``TF_CPP_MIN_LOG_LEVEL`` says; a notebook shows them as a red stderr block.
:func:`install` (run when :mod:`imgsim` is imported; it imports nothing heavy)
registers an import hook that, only around TensorFlow's first import,
points file descriptor 2 at a pipe and copies every line through except the
known banner lines (:data:`BANNER`). Everything else — a real error, a crash
message — still reaches stderr as it is written. It also drops
``tf.function retracing`` warnings (a performance hint about how a model was
called, not something a reader can act on) from TensorFlow's Python logger.

:func:`tensorflow_logs` does the same around other TensorFlow work that
prints such a line (``model.fit``'s tf.data ``Memory patch applied``).
``IMGSIM_VERBOSITY=1`` (``imgsim -v``) turns all of it off: every line shows.
"""

import contextlib
import importlib.abc
import importlib.util
import logging
import os
import re
import sys
import threading

BANNER = re.compile(
    r"All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|oneDNN custom operations are on"
    r"|cpu_feature_guard\.cc"
    r"|rebuild TensorFlow with the appropriate compiler flags"
    r"|Unable to register cu(DNN|FFT|BLAS) factory"
    r"|TF-TRT Warning: Could not find TensorRT"
    r"|computation placer already registered"
    r"|Memory patch applied: M_TRIM_THRESHOLD"  # tf.data's first generator dataset (model.fit)
    r"|oneDNN supports DT_HALF only on platforms with AVX-512")  # first half-precision op (fit)
RETRACING = "triggered tf.function retracing"


def verbose():
    """True when ``IMGSIM_VERBOSITY`` asks for library logs (``imgsim -v``)."""
    try:
        return int(os.environ.get("IMGSIM_VERBOSITY", "0")) > 0
    except ValueError:
        return False


class filtered_fd:
    """Context manager: what is written to file descriptor ``fd`` passes through unless ``drop`` matches.

    A pipe replaces ``fd`` and a thread copies it to the original descriptor
    as it arrives: lines that ``drop`` matches are left out, the rest (a
    progress bar's ``\r`` updates included) is forwarded at once, so nothing
    but the dropped lines is lost or delayed, even if the process dies inside
    the block. Lines are matched per write (loggers write a line at once).
    """

    def __init__(self, drop, fd=2):
        self.drop, self.fd = drop, fd

    def __enter__(self):
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (AttributeError, OSError, ValueError):
                pass
        self.saved = os.dup(self.fd)
        read, write = os.pipe()
        os.dup2(write, self.fd)
        os.close(write)
        # The thread writes to its own copy of the original descriptor and closes it at EOF.
        self.thread = threading.Thread(target=self._copy, args=(read, os.dup(self.saved)),
                                       daemon=True, name="imgsim-filtered-fd")
        self.thread.start()
        return self

    def _copy(self, read, out):
        try:
            while True:
                chunk = os.read(read, 65536)
                if not chunk:
                    break
                *lines, partial = chunk.split(b"\n")
                kept = [line for line in lines if not self.drop.search(line.decode("utf-8", "replace"))]
                if kept:
                    os.write(out, b"\n".join(kept) + b"\n")
                if partial:  # a line still being written (a progress bar's \r update): show it now
                    os.write(out, partial)
        finally:
            os.close(read)
            os.close(out)

    def __exit__(self, *exc):
        os.dup2(self.saved, self.fd)  # closes the pipe's write end: the thread sees EOF
        os.close(self.saved)
        self.thread.join(timeout=5)
        return False


def tensorflow_logs():
    """Context manager around TensorFlow work: its C++ banner lines dropped (none with ``-v``)."""
    return contextlib.nullcontext() if verbose() else filtered_fd(BANNER)


class _QuietLoader(importlib.abc.Loader):
    """Runs the real loader of ``tensorflow`` inside :class:`filtered_fd`."""

    def __init__(self, loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        module.__loader__ = module.__spec__.loader = self.loader  # introspection sees the real one
        with tensorflow_logs():
            self.loader.exec_module(module)


class _TensorFlowImportHook(importlib.abc.MetaPathFinder):
    """Meta-path finder that only acts on the first ``import tensorflow``, then removes itself."""

    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow":
            return None
        uninstall()
        if verbose():
            return None
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            spec.loader = _QuietLoader(spec.loader)
        return spec


class _DropRetracing(logging.Filter):
    def filter(self, record):
        return verbose() or RETRACING not in record.getMessage()


_HOOK = _TensorFlowImportHook()
_FILTER = _DropRetracing()


def install():
    """Register the TensorFlow import hook and the retracing filter (idempotent, cheap)."""
    if "tensorflow" not in sys.modules and _HOOK not in sys.meta_path:
        sys.meta_path.insert(0, _HOOK)
    logger = logging.getLogger("tensorflow")
    if _FILTER not in logger.filters:
        logger.addFilter(_FILTER)


def uninstall():
    """Remove the import hook (the retracing filter stays)."""
    while _HOOK in sys.meta_path:
        sys.meta_path.remove(_HOOK)
