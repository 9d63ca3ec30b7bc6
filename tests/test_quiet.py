"""TensorFlow's start-up banner and retracing hints are dropped; everything else still shows."""

import logging
import os
import subprocess
import sys
import textwrap

from conftest import REPO

BANNER_LINES = [
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    "I0000 00:00:1796122900.114066   13783 port.cc:153] oneDNN custom operations are on. You may see",
    "I0000 00:00:1796122900.146687   13783 cpu_feature_guard.cc:227] This TensorFlow binary is optimized",
    "To enable the following instructions: AVX2 FMA, in other operations, rebuild TensorFlow with the "
    "appropriate compiler flags.",
    "E0000 00:00:1796139764.030603    2340 util.cc:131] oneDNN supports DT_HALF only on platforms with "
    "AVX-512. Falling back to the default Eigen-based implementation if present.",
]
REAL_LINES = ["E0000 00:00:1.0 1 some_op.cc:1] a real error", "Traceback-like line that must stay"]


def run(code, env=None, pythonpath=(), text=True):
    env = dict(os.environ, **(env or {}))
    env["PYTHONPATH"] = os.pathsep.join([*pythonpath, REPO])
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=text, env=env, timeout=120)


def fake_tensorflow(tmp_path):
    """A 'tensorflow' package that writes the banner and two real lines to fd 2 on import."""
    package = tmp_path / "tensorflow"
    package.mkdir()
    lines = [BANNER_LINES[0], REAL_LINES[0], *BANNER_LINES[1:], REAL_LINES[1]]
    (package / "__init__.py").write_text(
        "import os\n" + "".join(f"os.write(2, {(line + chr(10)).encode()!r})\n" for line in lines)
        + "VALUE = 42\n")
    return str(tmp_path)


def test_first_tensorflow_import_drops_only_the_banner(tmp_path):
    code = """
        import os, sys
        import imgsim
        import tensorflow
        import imgsim.quiet as q
        print(tensorflow.VALUE, q._HOOK in sys.meta_path, type(tensorflow.__spec__.loader).__name__)
    """
    path = fake_tensorflow(tmp_path)
    quiet = run(code, env={"IMGSIM_VERBOSITY": "0"}, pythonpath=[path])
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stdout.split() == ["42", "False", "SourceFileLoader"]  # hook gone, real loader kept
    assert quiet.stderr.splitlines() == REAL_LINES
    loud = run(code, env={"IMGSIM_VERBOSITY": "1"}, pythonpath=[path])
    assert loud.stderr.splitlines() == [BANNER_LINES[0], REAL_LINES[0], *BANNER_LINES[1:],
                                        REAL_LINES[1]]


def test_filtered_fd_forwards_partial_lines_and_restores_the_descriptor():
    code = r"""
        import os, re
        from imgsim.quiet import filtered_fd
        with filtered_fd(re.compile("drop me")):
            os.write(2, b"keep 1\ndrop me please\n\rbar 50%")
            os.write(2, b"\rbar 100%\n")
        os.write(2, b"after, drop me stays\n")
    """
    result = run(code, text=False)  # bytes: text mode would turn \r into \n
    assert result.returncode == 0
    assert result.stderr == b"keep 1\n\rbar 50%\rbar 100%\nafter, drop me stays\n"


def test_real_tensorflow_import_is_quiet():
    result = run("import imgsim, tensorflow; print(tensorflow.__version__)",
                 env={"IMGSIM_VERBOSITY": "0", "TF_CPP_MIN_LOG_LEVEL": "0"})
    assert result.returncode == 0, result.stderr[-2000:]
    for marker in ("absl::InitializeLog", "oneDNN custom operations", "cpu_feature_guard"):
        assert marker not in result.stderr


def test_retracing_warnings_dropped_other_tensorflow_warnings_kept(monkeypatch):
    import imgsim  # noqa: F401  (installs the filter)

    monkeypatch.delenv("IMGSIM_VERBOSITY", raising=False)
    seen = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    logger = logging.getLogger("tensorflow")
    logger.addHandler(handler)
    try:
        logger.warning("5 out of the last 7 calls to <function f> triggered tf.function retracing. "
                       "Tracing is expensive")
        logger.warning("a real warning")
        monkeypatch.setenv("IMGSIM_VERBOSITY", "1")
        logger.warning("6 out of the last 9 calls to <function f> triggered tf.function retracing.")
    finally:
        logger.removeHandler(handler)
    assert seen == ["a real warning",
                    "6 out of the last 9 calls to <function f> triggered tf.function retracing."]
