"""Files: atomic writes, checked reads, up-front output checks, folder locks.

Atomic writes go to a temporary file in the same folder, then ``os.replace``:
a reader (or a run restarted after SIGKILL) sees either the old file or the
new one, never half of one. A write that fails (disk full, read-only, a folder
in the way) raises :class:`~imgsim.errors.OutputError` naming the file and
leaves the old file as it was.

:class:`FolderLock` keeps a second imgsim process out of a folder one is
working in; the kernel releases it when its process ends (SIGKILL included),
so it is never stale.
"""

import json
import math
import os
import socket
import tempfile
import time

from imgsim.errors import ConfigError, DataLayoutError, LockedError, OutputError

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; FolderLock does nothing there
    fcntl = None


def _cannot_write(path, exc):
    return OutputError(f"{path}: cannot write ({exc.strerror or exc})")


def atomic_write_bytes(path, data):
    """Write ``data`` (bytes) to ``path`` atomically; returns ``path``.

    Raises
    ------
    OutputError
        The file cannot be written (no space, read-only, a folder in the way);
        an earlier version of ``path`` is left untouched.
    """
    folder = os.path.dirname(os.path.abspath(path))
    tmp = None
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-")
        os.chmod(tmp, 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        raise _cannot_write(path, exc) from None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)
    return path


def atomic_write_text(path, text):
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def _plain(value):
    """JSON-safe copy: numpy scalars → Python numbers, NaN/inf → None."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def atomic_write_json(path, obj):
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    return atomic_write_text(path, json.dumps(_plain(obj), indent=2, sort_keys=False) + "\n")


def read_text(path):
    """A UTF-8 text file's content; :class:`DataLayoutError` naming it if it cannot be read as such."""
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except FileNotFoundError:
        raise DataLayoutError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise DataLayoutError(f"{path}: is a directory, expected a file") from None
    except UnicodeDecodeError as exc:
        raise DataLayoutError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise DataLayoutError(f"{path}: cannot read ({exc.strerror or exc})") from None


def read_json(path):
    """A JSON file's content; :class:`DataLayoutError` naming it if missing, not UTF-8 or not JSON."""
    text = read_text(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataLayoutError(f"{path}: not valid JSON (line {exc.lineno}: {exc.msg})") from None


# --------------------------------------------------------------------------- up-front checks


def check_folder_name(value, name):
    """Raise :class:`ConfigError` unless ``value`` can name one folder inside another.

    A plain name: no path separator, not ``.`` or ``..``, no leading dot
    (imgsim's temporary files), no surrounding whitespace, no control
    characters. So a run or sweep name never writes outside its parent folder.
    """
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{name} must be a non-empty folder name, got {value!r}")
    if ("/" in value or os.sep in value or value.startswith(".") or value != value.strip()
            or any(ord(c) < 32 for c in value)):
        raise ConfigError(f"{name} {value!r}: not a plain folder name (no '/', no leading '.', "
                          "no surrounding spaces)")
    return value


def check_output_dir(path, name):
    """Raise unless ``path`` is, or can be created as, a writable folder (nothing is created).

    Parameters
    ----------
    path : str
    name : str
        The argument, as the message names it (e.g. ``"runs_dir"``).

    Raises
    ------
    ConfigError
        ``path`` or one of its parents is a file.
    OutputError
        The first existing folder on the way is not writable.
    """
    return _check_folder(os.fspath(path), name, os.fspath(path))


def _check_folder(folder, name, shown):
    """:func:`check_output_dir` of ``folder``; messages name ``shown`` (the argument's value)."""
    existing = os.path.abspath(folder)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        where = "is a file" if existing == os.path.abspath(shown) else f"{existing} is a file"
        raise ConfigError(f"{name} {shown}: {where}, expected a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputError(f"{name} {shown}: {existing} is not writable")
    return shown


def check_output_file(path, name):
    """Raise unless ``path`` can be written as a file: not a folder, in a writable folder."""
    path = os.fspath(path)
    if not path:
        raise ConfigError(f"{name}: an empty file name")
    if os.path.isdir(path) or path.endswith(os.sep):
        raise ConfigError(f"{name} {path}: is a directory, expected a file name")
    return _check_folder(os.path.dirname(os.path.abspath(path)), name, path)


# --------------------------------------------------------------------------- locks


class FolderLock:
    """Exclusive use of a folder by one process: ``with FolderLock(folder, "imgsim train"):``.

    An advisory ``flock`` on ``<folder>/.lock``, which also records the holder
    (pid, host, what, since when) for the message a second process gets. The
    kernel drops the lock when its process ends, however it ends; the file
    stays. Within one process a second lock on the same folder is refused too.

    Raises
    ------
    LockedError
        From :meth:`acquire`, naming the folder and the holder.
    """

    NAME = ".lock"

    def __init__(self, folder, what="imgsim"):
        self.folder, self.what = os.fspath(folder), what
        self.path = os.path.join(self.folder, self.NAME)
        self._fd = None

    def acquire(self):
        if fcntl is None:
            return self
        try:
            os.makedirs(self.folder, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise _cannot_write(self.path, exc) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 512, 0).decode("utf-8", "replace").strip() or "another process"
            os.close(fd)
            raise LockedError(f"{self.folder}: in use by {holder}; wait for it to end or stop it "
                              f"(the lock goes with its process)") from None
        holder = (f"pid {os.getpid()} on {socket.gethostname()} ({self.what}, since "
                  f"{time.strftime('%Y-%m-%d %H:%M:%S')})")
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, holder.encode("utf-8"), 0)
        except OSError:  # a full disk: the lock holds without the holder's name
            pass
        self._fd = fd
        return self

    def release(self):
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
