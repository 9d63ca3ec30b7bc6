"""The hostile-input battery: bad (and awkward but valid) inputs to every verb, as a table.

Each :class:`Case` builds its inputs in a folder of its own, runs ``imgsim VERB
...`` in-process (``imgsim.cli.main``; a subprocess only where a second
process is the point: locks, SIGKILL), then :func:`verdict` checks the exit
code, that the message names the file or argument, that no traceback was
printed and that nothing that existed before changed (every file hashed
before and after, folders included, so a stub folder left behind counts).

``tests/test_hostile.py`` runs the table under pytest;
``scripts/hostile_battery.py`` runs it against any checkout (``--python`` of
another venv) and prints the before/after table. This module uses only the
command line and public names that every imgsim version has, so that the same
cases run against the code before and after the fixes.
"""

import contextlib
import errno
import fnmatch
import hashlib
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE = os.path.join(REPO, "data", "sample")
DATA_NB = os.path.join(REPO, "notebooks", "01_data.ipynb")
MINI_SCENES = ("castle_p30", "entry_p10", "fountain_p11", "herz_jesu_p25")  # dataset strecha_mvs
TINY = ["--alpha", "0.35", "--image-size", "64", "--epochs", "1", "--steps-per-epoch", "1",
        "--p", "3", "--k", "2", "--pca-copies", "0", "--patience", "1", "--workers", "1"]
EMBED = ["--image-size", "64", "--batch-size", "8"]
ERROR_LINE = re.compile(r"^([\w ]+: error:|[A-Z]\w*(Error|Exception)\b|interrupted)")


def tiny(**changes):
    """:data:`TINY` training arguments with some values replaced (``epochs="3"``)."""
    args = list(TINY)
    for key, value in changes.items():
        flag = "--" + key.replace("_", "-")
        if flag in args:
            args[args.index(flag) + 1] = str(value)
        else:
            args += [flag, str(value)]
    return args


# --------------------------------------------------------------------------- cases


@dataclass
class Case:
    """One hostile input.

    Attributes
    ----------
    id : str
    item : str
        Issue 15 item the case belongs to, or ``"ok"``: handled well before the fixes.
    setup : callable
        ``setup(ctx)`` builds the inputs; returns the argv of ``imgsim`` or a
        callable (a Python-API case: it raises or returns).
    code : int
        Expected exit status (2: bad input; 0: done).
    names : tuple of str
        Must all appear in the message line (formatted with ``ctx.vars``).
    check : callable or None
        ``check(ctx, out, err)`` returns a problem string or None.
    changes : tuple of str
        Glob patterns (relative to the case folder) of files the case may write.
    custom : callable or None
        ``custom(ctx) -> [(id suffix, code, out, err)]``: cases that need other processes.
    needs_run : bool
        Uses the session's tiny trained run.
    """

    id: str
    item: str
    setup: object = None
    code: int = 2
    names: tuple = ()
    check: object = None
    changes: tuple = ()
    custom: object = None
    needs_run: bool = False


CASES = []


def case(id, item, code=2, names=(), check=None, changes=(), needs_run=False):
    """Decorator: add the decorated setup function to :data:`CASES`."""
    def add(setup):
        CASES.append(Case(id, item, setup, code, tuple(names), check, tuple(changes),
                          needs_run=needs_run))
        return setup
    return add


def custom_case(id, item, needs_run=False):
    def add(fn):
        CASES.append(Case(id, item, custom=fn, needs_run=needs_run))
        return fn
    return add


# --------------------------------------------------------------------------- context


class Resources:
    """What several cases share, built once per session: tiny data and a tiny finished run."""

    def __init__(self, root):
        self.root = str(root)
        self._data = self._run = self._run_data = None

    @property
    def data(self):
        """4 scenes × 3 photos, IMC layout (read-only: cases copy it to damage it)."""
        if self._data is None:
            self._data = make_mini(os.path.join(self.root, "data"))
        return self._data

    @property
    def run_data(self):
        """The tiny data plus 2 castle_p30 photos labelled 'castle_p30 ' (a stray space)."""
        if self._run_data is None:
            self._run_data = make_mini(os.path.join(self.root, "run-data"), spaced=2)
        return self._run_data

    def train_args(self, *extra):
        return ["train", "--data", self.run_data, *TINY, *extra]

    @property
    def run(self):
        """A finished run folder trained with ``train_args()`` (copy it before changing it)."""
        if self._run is None:
            from imgsim.cli import main

            runs = os.path.join(self.root, "runs")
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                code = main(self.train_args("--runs-dir", runs, "--run-name", "tiny"))
            assert code == 0, "the session's tiny training run failed"
            self._run = os.path.join(runs, "tiny")
        return self._run


class Ctx:
    """A case's folder (the working directory while it runs) and helpers to fill it."""

    def __init__(self, folder, resources):
        self.dir = str(folder)
        self.res = resources
        self.vars = {"dir": self.dir}
        self.skip_reason = "this machine cannot set the case up"
        self._mounts = []
        os.makedirs(self.dir, exist_ok=True)

    def path(self, *parts):
        return os.path.join(self.dir, *parts)

    def write(self, rel, data):
        path = self.path(rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb" if isinstance(data, bytes) else "w") as f:
            f.write(data)
        return path

    def mini(self, rel="data", labels=None):
        """A damageable copy of the tiny data; ``labels`` (text) replaces train_labels.csv."""
        folder = make_mini(self.path(rel))
        if labels is not None:
            self.write(os.path.join(rel, "train_labels.csv"), labels)
        return folder

    def folders(self, rel="photos", scenes=MINI_SCENES[:3], per_scene=2):
        """A ``<scene>/<image>`` copy of a few photos."""
        for scene, (dataset, image) in _photos(scenes, per_scene):
            dest = self.path(rel, scene, image)
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            shutil.copyfile(os.path.join(SAMPLE, "train", dataset, image), dest)
        return self.path(rel)

    def run_copy(self, rel="runs/r"):
        dest = self.path(rel)
        shutil.copytree(self.res.run, dest)
        return dest

    def small_disk(self, rel, size_kb, read_only=False):
        """A tmpfs of ``size_kb`` at ``rel`` (root only), else None. Unmounted by :meth:`close`."""
        path = self.path(rel)
        os.makedirs(path, exist_ok=True)
        options = f"size={size_kb}k" + (",ro" if read_only else "")
        if os.environ.get("IMGSIM_HOSTILE_NO_MOUNT"):  # to try the non-root paths as root
            self.skip_reason = "IMGSIM_HOSTILE_NO_MOUNT is set"
            return None
        try:
            done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", path],
                                  capture_output=True, timeout=10).returncode == 0
        except (OSError, subprocess.SubprocessError):
            done = False
        if done:
            self._mounts.append(path)
            return path
        self.skip_reason = "cannot mount a tiny tmpfs here (needs root)"
        return None

    def read_only(self, rel):
        """A folder nothing can be written into: a read-only tmpfs, or mode 0555 when not root."""
        path = self.small_disk(rel, 64, read_only=True)
        if path is None:
            path = self.path(rel)
            os.chmod(path, 0o555)
            if os.access(path, os.W_OK):
                return None
        return path

    def full_disk(self, rel, keep=None):
        """A full tmpfs at ``rel`` (``keep``: {name: bytes} written first), else None."""
        path = self.small_disk(rel, 256)
        if path is None:
            return None
        for name, data in (keep or {}).items():
            with open(os.path.join(path, name), "wb") as f:
                f.write(data)
        fd = os.open(os.path.join(path, ".filler"), os.O_WRONLY | os.O_CREAT)
        try:
            while os.write(fd, b"\0" * 4096):
                pass
        except OSError:
            pass
        finally:
            os.close(fd)
        return path

    def close(self):
        for path in reversed(self._mounts):
            subprocess.run(["umount", "-l", path], capture_output=True, timeout=10)
        self._mounts = []
        for root, dirs, _ in os.walk(self.dir):
            for d in dirs:
                with contextlib.suppress(OSError):
                    os.chmod(os.path.join(root, d), 0o755)


def _photos(scenes, per_scene):
    rows = [line.split(",")[:3] for line in open(os.path.join(SAMPLE, "train_labels.csv"))][1:]
    for scene in scenes:
        picked = [(d, i) for d, s, i in rows if s == scene][:per_scene]
        for dataset, image in picked:
            yield scene, (dataset, image)


def make_mini(folder, scenes=MINI_SCENES, per_scene=3, spaced=0):
    """``per_scene`` photos of each scene in the IMC layout; ``spaced`` more photos of the first
    scene whose label carries a trailing space."""
    lines = ["dataset,scene,image,rotation_matrix,translation_vector"]
    photos = list(_photos(scenes, per_scene))
    photos += [(scenes[0] + " ", p) for _, p in list(_photos(scenes[:1], per_scene + spaced))[per_scene:]]
    for scene, (dataset, image) in photos:
        dest = os.path.join(folder, "train", dataset, image)
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        shutil.copyfile(os.path.join(SAMPLE, "train", dataset, image), dest)
        lines.append(f"{dataset},{scene},{image},nan,nan")
    with open(os.path.join(folder, "train_labels.csv"), "w") as f:
        f.write("\n".join(lines) + "\n")
    return folder


def mini_labels(edit=None):
    """The tiny data's train_labels.csv text, each data row passed through ``edit(i, row)``."""
    lines = ["dataset,scene,image,rotation_matrix,translation_vector"]
    for i, (scene, (dataset, image)) in enumerate(_photos(MINI_SCENES, 3)):
        row = [dataset, scene, image, "nan", "nan"]
        row = edit(i, row) if edit else row
        if row is not None:
            lines.append(",".join(row))
    return "\n".join(lines) + "\n"


def first_image(folder):
    rows = [line.strip().split(",") for line in open(os.path.join(folder, "train_labels.csv"))][1:]
    return os.path.join(folder, "train", rows[0][0], rows[0][2])


def first_images(folder):
    """The first image of every scene: damaging them all reaches the training split."""
    rows = [line.strip().split(",") for line in open(os.path.join(folder, "train_labels.csv"))][1:]
    firsts = {}
    for dataset, scene, image, *_ in rows:
        firsts.setdefault(scene, os.path.join(folder, "train", dataset, image))
    return list(firsts.values())


def png_bytes(width, height, mode="RGB"):
    from PIL import Image

    buffer = io.BytesIO()
    Image.new(mode, (width, height), 128 if mode in ("L", "I;16") else (90, 120, 200)).save(buffer, "PNG")
    return buffer.getvalue()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------- running


@dataclass
class Result:
    code: object
    out: str
    err: str
    changed: list = field(default_factory=list)
    seconds: float = 0.0

    def message(self):
        """The line that explains the outcome: the error line, else the last output line."""
        lines = [line for line in self.err.splitlines() if line.strip()]
        errors = [line for line in lines if ERROR_LINE.match(line)]
        if "Traceback (most recent call last)" in self.err:
            return "traceback: " + (lines[-1] if lines else "")
        if errors:
            return errors[-1]
        out = [line for line in self.out.splitlines() if line.strip()]
        return (out[-1] if out else lines[-1] if lines else "").strip()


def snapshot(folder):
    """{relative path: sha256 (files) or '<dir>'} of everything under ``folder``.

    ``.lock`` files (a folder lock's, empty of results) do not count.
    """
    state = {}
    for root, dirs, files in os.walk(folder):
        for d in dirs:
            state[os.path.relpath(os.path.join(root, d), folder)] = "<dir>"
        for name in files:
            if name == ".lock":
                continue
            path = os.path.join(root, name)
            try:
                with open(path, "rb") as f:
                    state[os.path.relpath(path, folder)] = hashlib.sha256(f.read()).hexdigest()
            except OSError:
                state[os.path.relpath(path, folder)] = "<unreadable>"
    return state


class _Timeout(BaseException):
    pass


def _alarm(signum, frame):
    raise _Timeout()


def call(target, timeout):
    """Run ``imgsim.cli.main(argv)`` (or a callable) in-process; (code, stdout, stderr)."""
    from imgsim.cli import main
    from imgsim.errors import ImgsimError

    out, err = io.StringIO(), io.StringIO()
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(int(timeout))
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                if callable(target):
                    target()
                    code = 0
                else:
                    code = main(list(target))
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
            except ImgsimError as exc:  # a Python-API case: the error it should raise
                print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
                code = 2
            except _Timeout:
                code = "timeout"
                print(f"(no result after {timeout} s)", file=sys.stderr)
            except BaseException:  # what the interpreter would print: a traceback
                traceback.print_exc()
                code = 1
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    return code, out.getvalue(), err.getvalue()


def run_case(case, ctx, timeout=180):
    """Set the case up, run it in its folder, and see what changed there; a list of Results."""
    start = time.time()
    cwd = os.getcwd()
    os.chdir(ctx.dir)
    try:
        if case.custom is not None:
            results = []
            for suffix, code, out, err in case.custom(ctx):
                results.append((suffix, Result(code, out, err, seconds=time.time() - start)))
            return results
        target = case.setup(ctx)
        if target is None:
            return [("", Result("skipped", "", ctx.skip_reason))]
        before = snapshot(ctx.dir)
        code, out, err = call(target, timeout)
        after = snapshot(ctx.dir)
    finally:
        os.chdir(cwd)
    changed = sorted(p for p in set(before) | set(after) if before.get(p) != after.get(p)
                     and not any(fnmatch.fnmatch(p, pattern) for pattern in case.changes))
    return [("", Result(code, out, err, changed, time.time() - start))]


def verdict(case, result, ctx=None, expected_code=None, names=None):
    """What is wrong with a case's result (an empty list: the case passes)."""
    if result.code == "skipped":
        return []
    problems = []
    code = case.code if expected_code is None else expected_code
    if result.code != code:
        problems.append(f"exit code {result.code}, expected {code}")
    if "Traceback (most recent call last)" in result.out + result.err:
        problems.append("a traceback was printed")
    message = result.message()
    if code == 2:
        if not ERROR_LINE.match(message):
            problems.append(f"no one-line error message (last line: {message!r})")
        for name in (case.names if names is None else names):
            name = name.format(**(ctx.vars if ctx else {}))
            if name not in message:
                problems.append(f"the message does not name {name!r}: {message!r}")
    if result.changed:
        problems.append(f"files changed or appeared: {result.changed[:5]}")
    if case.check is not None and ctx is not None and not problems:
        problem = case.check(ctx, result.out, result.err)
        if problem:
            problems.append(problem)
    return problems


# =========================================================================== the cases
# --------------------------------------------------------------------------- general


@case("cli-no-verb", "ok", names=("VERB",))
def _(ctx):
    return []


@case("cli-unknown-verb", "ok", names=("invalid choice",))
def _(ctx):
    return ["frobnicate"]


@case("cli-int-not-a-number", "ok", names=("--epochs", "abc"))
def _(ctx):
    return ["train", "--epochs", "abc"]


# --------------------------------------------------------------------------- train: data


def _train(ctx, data, *extra):
    return ["train", "--data", data, *TINY, "--runs-dir", "runs", *extra]


def _folder_cases(verb, command, item="ok"):
    """A data folder that is missing, a file or empty, for ``command(ctx, folder) -> argv``."""
    @case(f"{verb}-data-missing", item, names=("nowhere",))
    def _(ctx):
        return command(ctx, "nowhere")

    @case(f"{verb}-data-is-a-file", item, names=("notes.txt",))
    def _(ctx):
        return command(ctx, ctx.write("notes.txt", "hello"))

    @case(f"{verb}-data-empty-folder", item, names=("empty",))
    def _(ctx):
        os.makedirs(ctx.path("empty"))
        return command(ctx, ctx.path("empty"))


_folder_cases("train", _train, item="10")  # the message was right; a stub run folder stayed


@case("train-csv-empty", "10", names=("train_labels.csv", "empty"))
def _(ctx):
    return _train(ctx, ctx.mini(labels=""))


@case("train-csv-binary", "10", names=("train_labels.csv",))
def _(ctx):
    return _train(ctx, ctx.mini(labels=bytes(range(256)) * 8))


@case("train-csv-latin1", "10", names=("train_labels.csv",))
def _(ctx):
    return _train(ctx, ctx.mini(labels=mini_labels(
        lambda i, r: [r[0], "ch\xe2teau" if i < 3 else r[1]] + r[2:]).encode("latin-1")))


@case("train-csv-is-a-folder", "10", names=("train_labels.csv",))
def _(ctx):
    folder = ctx.mini()
    os.remove(os.path.join(folder, "train_labels.csv"))
    os.makedirs(os.path.join(folder, "train_labels.csv"))
    return _train(ctx, folder)


@case("train-csv-header-only", "10", names=("train_labels.csv", "no rows"))
def _(ctx):
    return _train(ctx, ctx.mini(labels="dataset,scene,image\n"))


@case("train-csv-missing-column", "10", names=("train_labels.csv", "scene"))
def _(ctx):
    return _train(ctx, ctx.mini(labels="dataset,image\nstrecha_mvs,a.jpg\n"))


@case("train-csv-empty-value", "10", names=("train_labels.csv", "row 3", "scene"))
def _(ctx):
    return _train(ctx, ctx.mini(labels=mini_labels(lambda i, r: [r[0], ""] + r[2:] if i == 1 else r)))


@case("train-csv-duplicate-row", "10", names=("train_labels.csv", "more than once"))
def _(ctx):
    text = mini_labels()
    return _train(ctx, ctx.mini(labels=text + text.splitlines()[1] + "\n"))


@case("train-image-missing", "10", names=("castle_p30_0000.jpg", "does not exist"))
def _(ctx):
    return _train(ctx, ctx.mini(labels=mini_labels(
        lambda i, r: r[:2] + ["castle_p30_0000.jpg"] + r[3:] if i == 0 else r)))


def _damage_firsts(ctx, data):
    folder = ctx.mini()
    for path in first_images(folder):
        content = data(path)
        with open(path, "wb") as f:
            f.write(content)
    return folder


@case("train-image-empty", "10", names=("0 bytes",))
def _(ctx):
    return _train(ctx, _damage_firsts(ctx, lambda path: b""))


@case("train-image-not-an-image", "10", names=("not an image",))
def _(ctx):
    return _train(ctx, _damage_firsts(ctx, lambda path: b"<html>not a photo</html>"))


@case("train-image-truncated", "10", names=("truncated",))
def _(ctx):
    return _train(ctx, _damage_firsts(ctx, lambda path: open(path, "rb").read()[:5000]))


@case("train-image-too-small", "10", names=("10x10", "smaller"))
def _(ctx):
    return _train(ctx, _damage_firsts(ctx, lambda path: png_bytes(10, 10)))


@case("train-image-is-a-folder", "10", names=("not a file",))
def _(ctx):
    folder = ctx.mini()
    os.remove(first_image(folder))
    os.makedirs(first_image(folder))
    return _train(ctx, folder)


@case("train-image-outside-root", "10", names=("train_labels.csv", "row 2", ".."))
def _(ctx):
    shutil.copyfile(first_image(ctx.res.data), ctx.path("secret.jpg"))
    return _train(ctx, ctx.mini(labels=mini_labels(
        lambda i, r: r[:2] + ["../../../secret.jpg"] + r[3:] if i == 0 else r)))


@case("train-image-name-whitespace", "5", names=("train_labels.csv", "row 2", "whitespace"))
def _(ctx):
    return _train(ctx, ctx.mini(labels=mini_labels(lambda i, r: r[:2] + [r[2] + " "] + r[3:]
                                                   if i == 0 else r)))


@case("train-scene-one-image", "10", names=("train_labels.csv", "entry_p10", "1"))
def _(ctx):
    return _train(ctx, ctx.mini(labels=mini_labels(lambda i, r: None if i in (4, 5) else r)))


@case("train-two-scenes", "10", names=("2 scene",))
def _(ctx):
    return _train(ctx, ctx.mini(labels=mini_labels(lambda i, r: r if i < 6 else None)))


def _one_castle_scene(ctx, out, err):
    run = ctx.res.run
    keys = [k for part in json.load(open(os.path.join(run, "split.json"))).values() for k in part]
    if sorted(keys) != sorted(f"strecha_mvs/{s}" for s in MINI_SCENES):
        return f"'castle_p30' and 'castle_p30 ' are not one scene: split {keys}"
    if "stripped surrounding whitespace" not in open(os.path.join(run, "log.txt")).read():
        return "the label repair is not in the run's log"
    return None


@case("train-label-trailing-space", "5", code=0, check=_one_castle_scene, needs_run=True)
def _(ctx):
    # The session's run: 3 photos labelled castle_p30, 2 labelled 'castle_p30 ' (one scene)
    ctx.run_copy()
    return ctx.res.train_args("--runs-dir", "runs", "--run-name", "r")


# --------------------------------------------------------------------------- train: settings


def _bad_setting(id, item, flag, value, name=None):
    @case(id, item, names=(name or flag.lstrip("-").replace("-", "_"),))
    def _(ctx):
        return ["train", "--data", ctx.res.data, *tiny(**{flag.lstrip("-").replace("-", "_"): value}),
                "--runs-dir", "runs"]


for _id, _item, _flag, _value, _name in [
    ("train-epochs-0", "ok", "--epochs", 0, None),
    ("train-epochs-negative", "ok", "--epochs", -3, None),
    ("train-p-1", "ok", "--p", 1, "p"),
    ("train-steps-0", "ok", "--steps-per-epoch", 0, None),
    ("train-lr-0", "ok", "--learning-rate", 0, None),
    ("train-lr-negative", "ok", "--learning-rate", -1e-4, None),
    ("train-lr-nan", "10", "--learning-rate", "nan", None),
    ("train-lr-inf", "10", "--learning-rate", "inf", None),
    ("train-margin-negative", "9", "--margin", -1, None),
    ("train-margin-nan", "9", "--margin", "nan", None),
    ("train-image-size-16", "ok", "--image-size", 16, None),
    ("train-image-size-32", "4", "--image-size", 32, None),
    ("train-image-size-48", "4", "--image-size", 48, None),
    ("train-image-size-huge", "4", "--image-size", 100000, None),
    ("train-alpha-unknown", "ok", "--alpha", 0.3, None),
    ("train-embedding-dim-0", "ok", "--embedding-dim", 0, "dim"),
    ("train-trainable-layers-negative", "ok", "--trainable-layers", -1, None),
    ("train-augment-negative", "ok", "--augment-strength", -1, "strength"),
    ("train-augment-nan", "10", "--augment-strength", "nan", "strength"),
    ("train-patience-negative", "10", "--patience", -1, None),
    ("train-pca-copies-negative", "10", "--pca-copies", -2, None),
    ("train-workers-0", "10", "--workers", 0, None),
    ("train-seed-negative", "10", "--seed", -1, None),
    ("train-split-seed-negative", "10", "--split-seed", -5, None),
]:
    _bad_setting(_id, _item, _flag, _value, _name)


@case("train-runs-dir-is-a-file", "10", names=("runs_dir", "runs.txt"))
def _(ctx):
    return ["train", "--data", ctx.res.data, *TINY, "--runs-dir", ctx.write("runs.txt", "x")]


@case("train-runs-dir-under-a-file", "10", names=("runs_dir", "runs.txt"))
def _(ctx):
    ctx.write("runs.txt", "x")
    return ["train", "--data", ctx.res.data, *TINY, "--runs-dir", ctx.path("runs.txt", "sub")]


@case("train-runs-dir-read-only", "10", names=("runs_dir", "ro"))
def _(ctx):
    folder = ctx.read_only("ro")
    return folder and ["train", "--data", ctx.res.data, *TINY, "--runs-dir", folder]


@case("train-run-name-escapes", "10", names=("run_name", "../escaped"))
def _(ctx):
    return _train(ctx, ctx.res.data, "--run-name", "../escaped")


@case("train-run-name-nested", "10", names=("run_name", "a/b"))
def _(ctx):
    return _train(ctx, ctx.res.data, "--run-name", "a/b")


@case("train-finished-run-same-settings", "ok", code=0, needs_run=True)
def _(ctx):
    ctx.run_copy()
    return ctx.res.train_args("--runs-dir", "runs", "--run-name", "r")


@case("train-finished-run-other-settings", "7", names=("runs/r", "margin"), needs_run=True)
def _(ctx):
    ctx.run_copy()
    return ctx.res.train_args("--runs-dir", "runs", "--run-name", "r", "--margin", "0.5")


def _killed_run(ctx):
    """A run folder as SIGKILL after one epoch leaves it: no metrics.json, a backup."""
    run = ctx.run_copy()
    os.remove(os.path.join(run, "metrics.json"))
    os.makedirs(os.path.join(run, "backup"))
    with open(os.path.join(run, "backup", "training_metadata.json"), "w") as f:
        json.dump({"epoch": 0, "batch": -1, "callbacks": {}}, f)
    return run


@case("train-killed-run-other-architecture", "7", names=("runs/r", "alpha"), needs_run=True)
def _(ctx):
    _killed_run(ctx)
    args = ctx.res.train_args("--runs-dir", "runs", "--run-name", "r")
    args[args.index("--alpha") + 1] = "1.0"
    return args


@case("train-killed-run-corrupt-config", "10", names=("config.json",), needs_run=True)
def _(ctx):
    run = _killed_run(ctx)
    with open(os.path.join(run, "config.json"), "w") as f:
        f.write('{"data": "x", "epochs": ')
    return ctx.res.train_args("--runs-dir", "runs", "--run-name", "r")


@case("train-disk-full-at-start", "10", names=("No space left",))
def _(ctx):
    folder = ctx.full_disk("full")
    return folder and ["train", "--data", ctx.res.data, *TINY, "--runs-dir", folder]


def _kept_resumable(ctx, out, err):
    run = ctx.path("disk", "r")
    if os.path.exists(run) and not os.path.exists(os.path.join(run, "history.csv")):
        return "a run folder without any finished epoch was left behind"
    return None


@case("train-disk-full-mid-run", "10", names=("best.keras", "No space left"), check=_kept_resumable,
      changes=("disk/r*",))
def _(ctx):
    # 1 MiB: config, split, log and history fit; the first best.keras (~2 MiB) does not
    folder = ctx.small_disk("disk", 1024)
    return folder and ["train", "--data", ctx.res.data, *TINY, "--runs-dir", folder, "--run-name", "r"]


def _fsync_full(fd):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@case("train-write-fails-enospc", "10", names=("No space left",))
def _(ctx):
    """Disk full without a tiny tmpfs (a user without root has none): every fsync fails with
    ENOSPC, monkeypatched for the call."""

    def target():
        from imgsim.cli import main

        real, os.fsync = os.fsync, _fsync_full
        try:
            code = main(["train", "--data", ctx.res.data, *TINY, "--runs-dir", "runs"])
        finally:
            os.fsync = real
        if code:
            raise SystemExit(code)
    return target


def _lock_then_kill(ctx):
    """Item 7: a second ``imgsim train`` into a folder one is training in; then SIGKILL the
    first and start the folder again with another setting."""
    args = ctx.res.train_args("--runs-dir", "runs", "--run-name", "r")
    args[args.index("--epochs") + 1] = "40"
    env = dict(os.environ, PYTHONPATH=REPO, PYTHONUNBUFFERED="1")
    log = open(ctx.path("first.log"), "w")
    first = subprocess.Popen([sys.executable, "-m", "imgsim", *args], stdout=log,
                             stderr=subprocess.STDOUT, env=env, start_new_session=True,
                             cwd=ctx.dir)
    split = ctx.path("runs", "r", "split.json")
    results = []
    try:
        deadline = time.time() + 240  # until it has read its data and is at work
        while time.time() < deadline and first.poll() is None and not os.path.exists(split):
            time.sleep(0.1)
        if first.poll() is not None:
            return [("", "setup failed", "", open(ctx.path("first.log")).read()[-2000:])]
        ctx.vars["pid"] = str(first.pid)
        code, out, err = call(args, 120)
        results.append(("", code, out, err))
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(first.pid, signal.SIGKILL)
        first.wait()
        log.close()
    config = open(ctx.path("runs", "r", "config.json"), "rb").read()
    code, out, err = call(args + ["--margin", "0.5"], 120)
    if open(ctx.path("runs", "r", "config.json"), "rb").read() != config:
        err += "\n(config.json of the killed run was changed)"
        code = f"{code}, config.json changed"
    results.append(("-then-sigkill-other-margin", code, out, err))
    return results


CASES.append(Case("train-concurrent-same-folder", "7", custom=_lock_then_kill, needs_run=True))
CUSTOM_EXPECT = {
    "train-concurrent-same-folder": (2, ("runs/r", "in use", "{pid}")),
    "train-concurrent-same-folder-then-sigkill-other-margin": (2, ("runs/r", "margin")),
    "sweep-locked": (2, ("in use", "{pid}")),
}


# --------------------------------------------------------------------------- embed


def _embed(ctx, folder, *extra, out="emb.npz"):
    return ["embed", folder, "--out", out, *EMBED, *extra]


_folder_cases("embed", _embed)


@case("embed-model-missing", "ok", names=("none.keras",))
def _(ctx):
    return _embed(ctx, ctx.res.data, "--model", "none.keras")


@case("embed-model-is-a-folder", "ok", names=("model.keras",))
def _(ctx):
    os.makedirs(ctx.path("model.keras"))
    return _embed(ctx, ctx.res.data, "--model", ctx.path("model.keras"))


@case("embed-model-corrupt", "ok", names=("bad.keras",))
def _(ctx):
    return _embed(ctx, ctx.res.data, "--model", ctx.write("bad.keras", b"PK\x03\x04garbage" * 50))


@case("embed-model-is-weights-file", "ok", names=(".h5",))
def _(ctx):
    weights = os.path.join(REPO, "imgsim", "weights",
                           "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5")
    return _embed(ctx, ctx.res.data, "--model", weights)


@case("embed-batch-size-0", "10", names=("batch_size",))
def _(ctx):
    return ["embed", ctx.res.data, "--out", "emb.npz", "--image-size", "64", "--batch-size", "0"]


@case("embed-batch-size-negative", "4", names=("batch_size",))
def _(ctx):
    return ["embed", ctx.res.data, "--out", "emb.npz", "--image-size", "64", "--batch-size", "-1"]


@case("embed-image-size-32", "4", names=("image_size",))
def _(ctx):
    return ["embed", ctx.res.data, "--out", "emb.npz", "--image-size", "32"]


@case("embed-image-size-48", "4", names=("image_size",))
def _(ctx):
    return ["embed", ctx.res.data, "--out", "emb.npz", "--image-size", "48"]


@case("embed-image-size-0", "ok", names=("image_size",))
def _(ctx):
    return ["embed", ctx.res.data, "--out", "emb.npz", "--image-size", "0"]


@case("embed-out-is-a-folder", "10", names=("out", "results"))
def _(ctx):
    os.makedirs(ctx.path("results"))
    return _embed(ctx, ctx.res.data, out=ctx.path("results"))


@case("embed-out-under-a-file", "10", names=("out", "notes.txt"))
def _(ctx):
    ctx.write("notes.txt", "x")
    return _embed(ctx, ctx.res.data, out=ctx.path("notes.txt", "emb.npz"))


@case("embed-out-empty-name", "10", names=("out", "empty"))
def _(ctx):
    return _embed(ctx, ctx.res.data, out="")


@case("embed-out-read-only", "10", names=("ro",))
def _(ctx):
    folder = ctx.read_only("ro")
    return folder and _embed(ctx, ctx.res.data, out=os.path.join(folder, "emb.npz"))


@case("embed-out-disk-full", "10", names=("emb.npz", "No space left"))
def _(ctx):
    folder = ctx.full_disk("full", keep={"emb.npz": b"earlier result"})
    return folder and _embed(ctx, ctx.res.data, out=os.path.join(folder, "emb.npz"))


@case("embed-write-fails-enospc", "10", names=("emb.npz", "No space left"))
def _(ctx):
    ctx.write("emb.npz", b"earlier result")

    def target():
        from imgsim.cli import main

        real, os.fsync = os.fsync, _fsync_full
        try:
            code = main(_embed(ctx, ctx.res.data))
        finally:
            os.fsync = real
        if code:
            raise SystemExit(code)
    return target


def _npz(check):
    def run(ctx, out, err):
        import numpy as np

        path = ctx.path("emb.npz")
        if not os.path.exists(path):
            return "no emb.npz written"
        return check(np.load(path), out, err)
    return run


@case("embed-out-new-folder", "ok", code=0, changes=("new*",),
      check=lambda ctx, out, err: None if os.path.exists(ctx.path("new", "sub", "emb.npz"))
      else "not written")
def _(ctx):
    return _embed(ctx, ctx.res.data, out=ctx.path("new", "sub", "emb.npz"))


@case("embed-heic-in-folder", "9", names=("IMG_0001.heic",))
def _(ctx):
    folder = ctx.folders()
    ctx.write(os.path.join("photos", MINI_SCENES[0], "IMG_0001.heic"), b"\0\0\0\x18ftypheic" + b"\0" * 64)
    return _embed(ctx, folder)


@case("embed-gif-in-folder", "9", names=("anim.gif",))
def _(ctx):
    folder = ctx.folders()
    ctx.write(os.path.join("photos", MINI_SCENES[1], "anim.gif"), b"GIF89a" + b"\0" * 64)
    return _embed(ctx, folder)


@case("embed-heic-skipped-and-counted", "9", code=0, changes=("emb.npz",),
      check=_npz(lambda z, out, err: None if len(z["paths"]) == 6 and "skipped 1" in out
                 else f"{len(z['paths'])} embeddings, output {out[-200:]!r}"))
def _(ctx):
    folder = ctx.folders()
    ctx.write(os.path.join("photos", MINI_SCENES[0], "IMG_0001.heic"), b"\0\0\0\x18ftypheic" + b"\0" * 64)
    return _embed(ctx, folder, "--on-error", "skip")


@case("embed-scene-folder-trailing-space", "5", code=0, changes=("emb.npz",),
      check=_npz(lambda z, out, err: None if sorted(set(z["scenes"])) == sorted(MINI_SCENES[:2])
                 and "stripped" in err else f"scenes {sorted(set(z['scenes']))}, stderr {err[-200:]!r}"))
def _(ctx):
    # photos/castle_p30/ and photos/'castle_p30 '/ (one photo each): one scene
    folder = ctx.folders(scenes=MINI_SCENES[:2])
    scene = os.path.join(folder, MINI_SCENES[0])
    os.makedirs(scene + " ")
    name = sorted(os.listdir(scene))[0]
    shutil.move(os.path.join(scene, name), os.path.join(scene + " ", name))
    return _embed(ctx, folder)


@case("embed-csv-with-byte-order-mark", "ok", code=0, changes=("emb.npz",),
      check=_npz(lambda z, out, err: None if len(z["paths"]) == 12 else "wrong rows"))
def _(ctx):
    return _embed(ctx, ctx.mini(labels=b"\xef\xbb\xbf" + mini_labels().encode()))


@case("embed-image-corrupt", "10", names=("castle_p30_0003.jpg",))
def _(ctx):
    folder = ctx.mini()
    with open(first_image(folder), "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    return _embed(ctx, folder)


@case("embed-dangling-symlink", "ok", names=("link.jpg",))
def _(ctx):
    folder = ctx.folders()
    os.symlink(ctx.path("gone.jpg"), os.path.join(folder, MINI_SCENES[0], "link.jpg"))
    return _embed(ctx, folder)


@case("embed-odd-but-valid-images", "ok", code=0, changes=("emb.npz",),
      check=_npz(lambda z, out, err: None if len(z["paths"]) == 9 else "wrong rows"))
def _(ctx):
    folder = ctx.folders()  # + a 16-bit grey PNG, a palette PNG, a 40x4000 strip
    ctx.write(os.path.join("photos", MINI_SCENES[0], "grey16.png"), png_bytes(80, 60, "I;16"))
    ctx.write(os.path.join("photos", MINI_SCENES[1], "palette.png"), png_bytes(70, 90, "P"))
    ctx.write(os.path.join("photos", MINI_SCENES[2], "strip.png"), png_bytes(40, 4000))
    return _embed(ctx, folder)


# --------------------------------------------------------------------------- evaluate


def _evaluate(run, *extra):
    return ["evaluate", "--run", run, "--max-pairs", "4", "--sift-features", "200",
            "--sift-max-side", "256", "--no-sift-retrieval", "--workers", "1", *extra]


@case("evaluate-run-missing", "10", names=("nowhere",))
def _(ctx):
    return _evaluate("nowhere")


@case("evaluate-run-is-a-file", "10", names=("run.txt",))
def _(ctx):
    return _evaluate(ctx.write("run.txt", "x"))


@case("evaluate-run-empty-folder", "10", names=("empty",))
def _(ctx):
    os.makedirs(ctx.path("empty"))
    return _evaluate(ctx.path("empty"))


@case("evaluate-run-without-split", "10", names=("split.json",), needs_run=True)
def _(ctx):
    run = ctx.run_copy()
    os.remove(os.path.join(run, "split.json"))
    return _evaluate(run)


def _damaged_run_case(id, item, name, content, names):
    """``evaluate`` on a copy of the session's run with file ``name`` replaced by ``content``."""
    @case(id, item, names=names, needs_run=True)
    def _(ctx):
        run = ctx.run_copy()
        data = content(run) if callable(content) else content
        with open(os.path.join(run, name), "wb") as f:
            f.write(data)
        return _evaluate(run)


def _other_split(run):
    split = json.load(open(os.path.join(run, "split.json")))
    return json.dumps(dict(split, test=["strecha_mvs/atlantis"])).encode()


for _id, _item, _name, _content, _names in [
    ("evaluate-run-corrupt-config", "10", "config.json", b"\xff\xfe not json", ("config.json",)),
    ("evaluate-run-corrupt-split", "10", "split.json", b'["castle_p30"]', ("split.json",)),
    ("evaluate-run-split-of-other-data", "10", "split.json", _other_split, ("split.json", "atlantis")),
    ("evaluate-run-corrupt-model", "ok", "best.keras", b"not a model", ("best.keras",)),
]:
    _damaged_run_case(_id, _item, _name, _content, _names)


@case("evaluate-run-unfinished", "9", names=("runs/r", "unfinished"), needs_run=True)
def _(ctx):
    _killed_run(ctx)
    return _evaluate(ctx.path("runs", "r"))


@case("evaluate-run-data-gone", "ok", names=("gone",), needs_run=True)
def _(ctx):
    run = ctx.run_copy()
    config = json.load(open(os.path.join(run, "config.json")))
    config["data"] = ctx.path("gone")
    with open(os.path.join(run, "config.json"), "w") as f:
        json.dump(config, f)
    return _evaluate(run)


def _eval_setting(id, item, flag, value, name):
    @case(id, item, names=(name,), needs_run=True)
    def _(ctx):
        args = _evaluate(ctx.run_copy())
        if flag in args:
            args[args.index(flag) + 1] = str(value)
        else:
            args += [flag, str(value)]
        return args


for _id, _item, _flag, _value, _name in [
    ("evaluate-workers-0", "10", "--workers", 0, "workers"),
    ("evaluate-max-pairs-0", "10", "--max-pairs", 0, "max_pairs"),
    ("evaluate-max-pairs-negative", "10", "--max-pairs", -4, "max_pairs"),
    ("evaluate-sift-features-negative", "ok", "--sift-features", -1, "n_features"),
    ("evaluate-sift-max-side-0", "ok", "--sift-max-side", 0, "max_side"),
]:
    _eval_setting(_id, _item, _flag, _value, _name)


@case("evaluate-baseline-image-size-16", "ok", names=("image_size",))
def _(ctx):
    return ["evaluate", "--data", ctx.res.data, "--image-size", "16", "--max-pairs", "4"]


@case("evaluate-baseline-image-size-32", "4", names=("image_size",))
def _(ctx):
    return ["evaluate", "--data", ctx.res.data, "--image-size", "32", "--max-pairs", "4",
            "--sift-features", "200", "--sift-max-side", "256", "--no-sift-retrieval",
            "--workers", "1", "--cache-dir", ctx.path("cache")]


@case("evaluate-report-dir-is-a-file", "10", names=("report_dir", "report.txt"), needs_run=True)
def _(ctx):
    return _evaluate(ctx.run_copy(), "--report-dir", ctx.write("report.txt", "x"))


@case("evaluate-cache-dir-is-a-file", "10", names=("cache_dir", "cache.txt"), needs_run=True)
def _(ctx):
    return _evaluate(ctx.run_copy(), "--cache-dir", ctx.write("cache.txt", "x"))


@case("evaluate-protocol-unknown", "ok", names=("medium",))
def _(ctx):
    return ["evaluate", "--protocols", "medium"]


@case("evaluate-data-missing", "ok", names=("nowhere",))
def _(ctx):
    return ["evaluate", "--data", "nowhere", "--image-size", "64"]


# --------------------------------------------------------------------------- sweep


def _experiment(ctx, text, name="e.yaml"):
    return ctx.write(name, text.format(nb=DATA_NB))


def _sweep(path, *extra):
    return ["sweep", path, "--out-root", "out", "--workers", "1", *extra]


def _sweep_case(id, item, text, names, raw=None):
    @case(id, item, names=names)
    def _(ctx):
        path = ctx.write("e.yaml", raw) if raw is not None else _experiment(ctx, text)
        return _sweep(path)


for _id, _item, _text, _names, _raw in [
    ("sweep-empty-file", "ok", "", ("e.yaml", "mapping"), None),
    ("sweep-yaml-syntax", "ok", "notebook: {nb}\ngrid:\n  per_scene: [1, 2\n", ("e.yaml", "line"), None),
    ("sweep-top-level-list", "ok", "- 1\n- 2\n", ("e.yaml", "mapping"), None),
    ("sweep-unknown-key", "ok", "notebok: {nb}\ngrid:\n  per_scene: [1]\n", ("e.yaml", "notebok"), None),
    ("sweep-no-notebook-key", "ok", "grid:\n  per_scene: [1]\n", ("e.yaml", "notebook"), None),
    ("sweep-notebook-missing", "ok", "notebook: none.ipynb\ngrid:\n  per_scene: [1]\n",
     ("e.yaml", "none.ipynb"), None),
    ("sweep-unknown-parameter", "ok", "notebook: {nb}\ngrid:\n  perscene: [1]\n", ("e.yaml", "perscene"), None),
    ("sweep-grid-not-a-list", "ok", "notebook: {nb}\ngrid:\n  per_scene: 3\n", ("e.yaml", "per_scene"), None),
    ("sweep-grid-empty", "ok", "notebook: {nb}\ngrid: {{}}\n", ("e.yaml", "grid"), None),
    ("sweep-grid-and-list", "ok", "notebook: {nb}\ngrid:\n  per_scene: [1]\nlist:\n  - {{per_scene: 2}}\n",
     ("e.yaml", "grid"), None),
    ("sweep-list-not-mappings", "ok", "notebook: {nb}\nlist: [1, 2]\n", ("e.yaml", "list"), None),
    ("sweep-env-var-unset", "ok", "notebook: {nb}\nparameters: {{data_root: $IMGSIM_UNSET_X}}\n"
     "grid:\n  per_scene: [1]\n", ("e.yaml", "IMGSIM_UNSET_X"), None),
    ("sweep-latin1-file", "10", None, ("e.yaml", "UTF-8"),
     f"# r\xe9sum\xe9\nnotebook: {DATA_NB}\ngrid:\n  per_scene: [1]\n".encode("latin-1")),
    ("sweep-binary-file", "10", None, ("e.yaml",), bytes(range(256)) * 4),
    ("sweep-name-not-a-string", "10", "name: 123\nnotebook: {nb}\ngrid:\n  per_scene: [1]\n",
     ("e.yaml", "name", "123"), None),
    ("sweep-name-escapes-out-root", "9", "name: ../..\nnotebook: {nb}\ngrid:\n  per_scene: [1]\n",
     ("e.yaml", "name", "../.."), None),
    ("sweep-name-nested", "9", "name: a/b\nnotebook: {nb}\ngrid:\n  per_scene: [1]\n",
     ("e.yaml", "name", "a/b"), None),
    ("sweep-duplicate-list-entry", "9", "notebook: {nb}\nlist:\n  - {{per_scene: 1}}\n  - {{per_scene: 2}}\n"
     "  - {{per_scene: 1}}\n", ("e.yaml", "list", "1 and 3"), None),
    ("sweep-duplicate-grid-value", "9", "notebook: {nb}\ngrid:\n  per_scene: [1, 1]\n",
     ("e.yaml", "grid"), None),
    ("sweep-grid-too-large", "10", "notebook: {nb}\ngrid:\n" + "".join(
        f"  {p}: [{', '.join(str(i) for i in range(20))}]\n" for p in ("per_scene", "thumbnail_size",
                                                                      "max_scenes", "data_root")),
     ("e.yaml", "160000 combinations"), None),
    ("sweep-output-dir-in-grid", "9", "notebook: {nb}\ngrid:\n  output_dir: [a, b]\n",
     ("e.yaml", "output_dir"), None),
    ("sweep-output-dir-in-parameters", "9", "notebook: {nb}\nparameters: {{output_dir: x}}\n"
     "grid:\n  per_scene: [1]\n", ("e.yaml", "output_dir"), None),
]:
    _sweep_case(_id, _item, _text, _names, _raw)


@case("sweep-file-missing", "ok", names=("none.yaml",))
def _(ctx):
    return _sweep("none.yaml")


@case("sweep-file-is-a-folder", "10", names=("exp",))
def _(ctx):
    os.makedirs(ctx.path("exp"))
    return _sweep(ctx.path("exp"))


@case("sweep-notebook-not-json", "10", names=("e.yaml", "nb.ipynb"))
def _(ctx):
    ctx.write("nb.ipynb", "this is not a notebook")
    return _sweep(_experiment(ctx, "notebook: " + ctx.path("nb.ipynb") + "\ngrid:\n  x: [1]\n"))


@case("sweep-notebook-json-not-a-notebook", "10", names=("e.yaml", "nb.ipynb"))
def _(ctx):
    ctx.write("nb.ipynb", '{"hello": [1, 2]}')
    return _sweep(_experiment(ctx, "notebook: " + ctx.path("nb.ipynb") + "\ngrid:\n  x: [1]\n"))


@case("sweep-notebook-is-a-folder", "ok", names=("e.yaml", "nb.ipynb"))
def _(ctx):
    os.makedirs(ctx.path("nb.ipynb"))
    return _sweep(_experiment(ctx, "notebook: " + ctx.path("nb.ipynb") + "\ngrid:\n  x: [1]\n"))


@case("sweep-notebook-without-parameters", "ok", names=("e.yaml", "parameters"))
def _(ctx):
    ctx.write("nb.ipynb", json.dumps({"cells": [{"cell_type": "code", "metadata": {}, "source": "x = 1",
                                                 "outputs": [], "execution_count": None}],
                                      "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
    return _sweep(_experiment(ctx, "notebook: " + ctx.path("nb.ipynb") + "\ngrid:\n  x: [1]\n"))


_OK_EXPERIMENT = "notebook: {nb}\nparameters: {{max_scenes: 1, thumbnail_size: 32}}\ngrid:\n  per_scene: [1, 2]\n"


@case("sweep-workers-0", "8", names=("workers",))
def _(ctx):
    return ["sweep", _experiment(ctx, _OK_EXPERIMENT), "--out-root", "out", "--workers", "0"]


@case("sweep-workers-negative", "8", names=("workers",))
def _(ctx):
    return ["sweep", _experiment(ctx, _OK_EXPERIMENT), "--out-root", "out", "--workers", "-2"]


@case("sweep-scheduler-unreachable", "10", names=("scheduler", "127.0.0.1"))
def _(ctx):
    return _sweep(_experiment(ctx, _OK_EXPERIMENT), "--scheduler", f"tcp://127.0.0.1:{free_port()}")


@case("sweep-scheduler-not-an-address", "10", names=("scheduler", "my laptop"))
def _(ctx):
    return _sweep(_experiment(ctx, _OK_EXPERIMENT), "--scheduler", "my laptop")


@case("sweep-out-root-is-a-file", "10", names=("out_root", "out.txt"))
def _(ctx):
    return ["sweep", _experiment(ctx, _OK_EXPERIMENT), "--out-root", ctx.write("out.txt", "x")]


def _finished_sweep(ctx, statuses):
    """An experiment whose runs have all been run already, with the given statuses."""
    path = _experiment(ctx, _OK_EXPERIMENT)
    from imgsim.sweep import load_experiment, run_id

    exp = load_experiment(path)
    for params, status in zip(exp.runs, statuses):
        folder = ctx.path("out", "e", run_id(exp.notebook, params))
        os.makedirs(folder)
        for name, content in (("parameters.json", params),
                              ("status.json", {"status": status, "wall_seconds": 1.0,
                                               "error": None if status == "ok" else "boom"}),
                              ("metrics.json", {"images": 3})):
            with open(os.path.join(folder, name), "w") as f:
                json.dump(content, f)
    return path


@case("sweep-rerun-with-a-failed-run", "9", code=1, changes=("out/e/summary.*",),
      check=lambda ctx, out, err: None if "failed 1" in out else f"output: {out[-300:]!r}")
def _(ctx):
    return _sweep(_finished_sweep(ctx, ["ok", "failed"]))


@case("sweep-corrupt-status", "10", names=("status.json",))
def _(ctx):
    path = _finished_sweep(ctx, ["ok", "ok"])
    status = [os.path.join(r, "status.json") for r, _, f in os.walk(ctx.path("out")) if "status.json" in f][0]
    with open(status, "w") as f:
        f.write("{")
    return _sweep(path)


def _paths_final(ctx, out, err):
    root = ctx.path("out", "paths")
    text = "".join(open(os.path.join(r, f), errors="replace").read()
                   for r, _, files in os.walk(root) for f in files
                   if f.endswith((".json", ".csv", ".md")))
    if ".tmp-" in text:
        return "a record names a .tmp- folder: " + re.search(r"\S*\.tmp-\S*", text).group(0)
    runs = [d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d))]
    for d in runs:
        metrics = json.load(open(os.path.join(root, d, "metrics.json")))
        if not os.path.isfile(metrics["where"]):
            return f"metrics.json names {metrics['where']}, which does not exist"
    return None if len(runs) == 2 else f"{len(runs)} run folders"


@case("sweep-records-final-paths", "6", code=0, check=_paths_final, changes=("out*",))
def _(ctx):
    # A notebook that records a path inside its output folder, as 02_train records run_dir.
    source = ("from imgsim import sweep\nimport os\nwhere = sweep.output_path(output_dir, 'made.txt')\n"
              "open(where, 'w').write(str(value))\nsweep.write_metrics({'where': where}, output_dir)")
    cells = [{"cell_type": "code", "metadata": {"tags": ["parameters"]}, "outputs": [],
              "execution_count": None, "source": "value = 0\noutput_dir = None"},
             {"cell_type": "code", "metadata": {}, "outputs": [], "execution_count": None,
              "source": source}]
    ctx.write("paths.ipynb", json.dumps({"cells": cells, "metadata": {"kernelspec": {
        "name": "python3", "display_name": "Python 3", "language": "python"}},
        "nbformat": 4, "nbformat_minor": 5}))
    return _sweep(ctx.write("paths.yaml", f"notebook: {ctx.path('paths.ipynb')}\ngrid:\n  value: [1, 2]\n"))


def _sweep_locked(ctx):
    path = _finished_sweep(ctx, ["ok", "ok"])
    code = ("import sys, time\nfrom imgsim.fileio import FolderLock\n"
            "FolderLock(sys.argv[1], 'imgsim sweep').acquire()\nprint('locked', flush=True)\n"
            "time.sleep(120)\n")
    holder = subprocess.Popen([sys.executable, "-c", code, ctx.path("out", "e")], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, cwd=ctx.dir)
    try:
        line = holder.stdout.readline()
        ctx.vars["pid"] = str(holder.pid)
        if "locked" not in line:  # no FolderLock in this imgsim: a second sweep is not kept out
            ctx.vars["pid"] = ""
        code, out, err = call(_sweep(path), 120)
    finally:
        holder.kill()
        holder.wait()
    return [("", code, out, err)]


CASES.append(Case("sweep-locked", "7", custom=_sweep_locked))


# --------------------------------------------------------------------------- demo


@case("demo-epochs-0", "9", names=("epochs",))
def _(ctx):
    return ["demo", "--epochs", "0", "--runs-dir", "runs", "--report-dir", "report"]


@case("demo-epochs-negative", "10", names=("epochs",))
def _(ctx):
    return ["demo", "--epochs", "-1", "--runs-dir", "runs", "--report-dir", "report"]


@case("demo-runs-dir-is-a-file", "10", names=("runs_dir", "runs.txt"))
def _(ctx):
    return ["demo", "--runs-dir", ctx.write("runs.txt", "x"), "--report-dir", "report"]


@case("demo-report-dir-is-a-file", "10", names=("report_dir", "report.txt"))
def _(ctx):
    return ["demo", "--epochs", "1", "--runs-dir", "runs", "--report-dir", ctx.write("report.txt", "x")]


# --------------------------------------------------------------------------- serve


@case("serve-notebook-missing", "ok", names=("none.ipynb",))
def _(ctx):
    return ["serve", "--notebook", "none.ipynb"]


@case("serve-notebook-is-a-folder", "ok", names=("nb",))
def _(ctx):
    os.makedirs(ctx.path("nb"))
    return ["serve", "--notebook", ctx.path("nb")]


# --------------------------------------------------------------------------- reconstruct


def _reconstruct(root, *extra):
    return ["reconstruct", root, "--out", "sub.csv", *extra]


_folder_cases("reconstruct", lambda ctx, folder: _reconstruct(folder))


def _reconstruct_case(id, item, extra, names):
    @case(id, item, names=names)
    def _(ctx):
        return _reconstruct(ctx.res.data, *extra)


for _id, _item, _extra, _names in [
    ("reconstruct-dataset-unknown", "ok", ("--datasets", "atlantis"), ("atlantis",)),
    ("reconstruct-shortlist-negative", "ok", ("--shortlist-k", "-1"), ("shortlist_k",)),
    ("reconstruct-min-inliers-0", "ok", ("--min-inliers", "0"), ("min_inliers",)),
    ("reconstruct-image-size-16", "10", ("--image-size", "16"), ("image_size",)),
    ("reconstruct-image-size-32", "4", ("--image-size", "32", "--sift-features", "300", "--processes", "1"),
     ("image_size",)),
    ("reconstruct-model-missing", "10", ("--model", "none.keras"), ("none.keras",)),
    ("reconstruct-sift-features-negative", "ok", ("--sift-features", "-5"), ("n_features",)),
]:
    _reconstruct_case(_id, _item, _extra, _names)


@case("reconstruct-labels-binary", "ok", names=("train_labels.csv",))
def _(ctx):
    return _reconstruct(ctx.mini(labels=bytes(range(256)) * 8))


# --------------------------------------------------------------------------- score

_GT = "dataset,scene,image,rotation_matrix,translation_vector\nd,s,a.jpg,1;0;0;0;1;0;0;0;1,0;0;0\n"


@case("score-gt-missing", "ok", names=("gt.csv",))
def _(ctx):
    return ["score", "gt.csv", ctx.write("sub.csv", _GT)]


@case("score-submission-missing", "ok", names=("sub.csv",))
def _(ctx):
    return ["score", ctx.write("gt.csv", _GT), "sub.csv"]


@case("score-submission-binary", "ok", names=("sub.csv",))
def _(ctx):
    return ["score", ctx.write("gt.csv", _GT), ctx.write("sub.csv", bytes(range(256)) * 4)]


@case("score-gt-is-a-folder", "ok", names=("gt",))
def _(ctx):
    os.makedirs(ctx.path("gt"))
    return ["score", ctx.path("gt"), ctx.write("sub.csv", _GT)]


@case("score-submission-missing-column", "ok", names=("sub.csv",))
def _(ctx):
    return ["score", ctx.write("gt.csv", _GT), ctx.write("sub.csv", "dataset,image\nd,a.jpg\n")]


# --------------------------------------------------------------------------- the Python API
# The same checks reach notebooks and scripts: the config dataclasses and readers raise them.


def _api(id, item, names, make):
    CASES.append(Case(id, item, setup=lambda ctx: (lambda: make(ctx)), names=tuple(names)))


def _train_config(**kw):
    from imgsim.train import TrainConfig

    return TrainConfig(**kw)


def _changed(config, **attributes):
    for name, value in attributes.items():
        setattr(config, name, value)
    return config


def _embedding_config(**kw):
    from imgsim.model import EmbeddingConfig

    return EmbeddingConfig(**kw)


def _eval_config(**kw):
    from imgsim.evaluate import EvalConfig

    return EvalConfig(**kw)


def _zero_model(bias):
    import keras

    inputs = keras.Input((64, 64, 3))
    x = keras.layers.GlobalAveragePooling2D()(inputs)
    x = keras.layers.Dense(4, kernel_initializer="zeros", bias_initializer=keras.initializers.Constant(bias))(x)
    return keras.Model(inputs, x)


def _embed_with(model, **kw):
    import numpy as np

    from imgsim.model import embed

    embed(model, np.full((5, 64, 64, 3), 100, np.uint8), **kw)


for _id, _item, _names, _make in [
    ("api-train-epochs-a-string", "10", ("epochs", "'5'"), lambda ctx: _train_config(epochs="5")),
    ("api-train-margin-a-string", "10", ("margin",), lambda ctx: _train_config(margin="0.3")),
    ("api-train-embedding-wrong-type", "10", ("embedding",), lambda ctx: _train_config(embedding=7)),
    ("api-train-lr-nan", "10", ("learning_rate",), lambda ctx: _train_config(learning_rate=float("nan"))),
    ("api-train-fractions", "10", ("val_fraction",), lambda ctx: _train_config(val_fraction=0.9)),
    ("api-fit-after-attribute-change", "10", ("epochs", "0"),
     lambda ctx: __import__("imgsim.train", fromlist=["fit"]).fit(_changed(_train_config(
         data=ctx.res.data, runs_dir=ctx.path("runs")), epochs=0))),
    ("api-embedding-size-a-float", "10", ("image_size",), lambda ctx: _embedding_config(image_size=96.5)),
    ("api-embedding-dropout-1", "ok", ("dropout",), lambda ctx: _embedding_config(dropout=1.0)),
    ("api-eval-protocols-a-string", "ok", ("protocols",), lambda ctx: _eval_config(protocols="hard")),
    ("api-eval-sift-retrieval-a-string", "10", ("sift_retrieval",),
     lambda ctx: _eval_config(sift_retrieval="no")),
    ("api-eval-workers-0", "10", ("workers",), lambda ctx: _eval_config(workers=0)),
    ("api-embed-batch-size-0", "10", ("batch_size",), lambda ctx: _embed_with(_zero_model(1.0), batch_size=0)),
    ("api-embed-all-zero-output", "4", ("image 0", "all zeros"), lambda ctx: _embed_with(_zero_model(0.0))),
    ("api-embed-nan-output", "4", ("image 0", "not finite"),
     lambda ctx: _embed_with(_zero_model(float("nan")))),
    ("api-load-table-not-a-path", "ok", ("123",),
     lambda ctx: __import__("imgsim.data", fromlist=["load_table"]).load_table(123)),
    ("api-demo-batch-size-0", "10", ("batch_size",),
     lambda ctx: __import__("imgsim.demo", fromlist=["DemoConfig"]).DemoConfig(batch_size=0)),
    ("api-split-not-lists", "10", ("split", "train"),
     lambda ctx: __import__("imgsim.data", fromlist=["Split"]).Split.from_dict(
         {"train": "a/b", "val": [], "test": []})),
]:
    _api(_id, _item, _names, _make)


@case("api-sweep-workers-0", "8", names=("workers",))
def _(ctx):
    path = _experiment(ctx, _OK_EXPERIMENT)
    from imgsim.sweep import sweep

    return lambda: sweep(path, out_root=ctx.path("out"), workers=0, progress=False)


def _path_data(ctx):
    import pathlib

    a = _train_config(data=pathlib.Path(ctx.res.data))
    b = _train_config(data=ctx.res.data)
    assert a.run_id() == b.run_id() and json.dumps(a.to_dict())


CASES.append(Case("api-train-data-a-path-object", "10", setup=lambda ctx: (lambda: _path_data(ctx)), code=0))

IDS = [c.id for c in CASES]
assert len(IDS) == len(set(IDS)), "duplicate case ids"
