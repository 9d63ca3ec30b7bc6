"""Checks on the outputs nbval's own run produced (the notebooks run once in CI).

The committed notebooks hold no outputs, so nbval — strict or lax — has nothing
to compare a cell with (it compares only cells that were run when saved). What
a reader must see is checked here instead, on every cell nbval executes:

* a cell tagged ``figure`` shows at least one PNG of a sensible size (a figure
  that stops rendering fails CI even though its cell is ``NBVAL_IGNORE_OUTPUT``);
* no cell prints library noise: TensorFlow's start-up banner or Python
  warnings, COLMAP/glog lines, Keras' backspace progress bar, ANSI escapes,
  raw markdown tables;
* a cell not marked ``# NBVAL_IGNORE_OUTPUT`` writes nothing to stderr.

Registered from the root ``conftest.py``; the same functions are unit-tested in
``tests/test_notebooks.py``.
"""

import base64
import io
import re

import pytest

FIGURE_TAG = "figure"
MIN_FIGURE_SIDE = 100  # pixels
NOISE = {
    "TensorFlow start-up banner": re.compile(
        r"absl::InitializeLog|oneDNN custom operations|cpu_feature_guard|rebuild TensorFlow"),
    "TensorFlow Python warning": re.compile(r"^WARNING:tensorflow:", re.M),
    "glog/absl line (COLMAP, TensorFlow)": re.compile(r"^[IWEF]\d{4}(\d{4})? [\d:.]+ +\d+ \S+:\d+\]", re.M),
    "backspace progress bar": re.compile("\x08"),
    "ANSI escape": re.compile("\x1b\\["),
    "raw markdown table": re.compile(r"^\|[- :|]*---", re.M),
}


def _texts(output):
    """The plain text an output shows: stream text and text/plain (not rendered markdown/HTML)."""
    if output.get("output_type") == "stream":
        yield output.get("text", "")
    value = (output.get("data") or {}).get("text/plain")
    if value:
        yield "".join(value) if isinstance(value, list) else value


def png_sizes(outputs):
    """(width, height) of every image/png output."""
    from PIL import Image

    sizes = []
    for output in outputs:
        data = (output.get("data") or {}).get("image/png")
        if data:
            raw = base64.b64decode("".join(data) if isinstance(data, list) else data)
            with Image.open(io.BytesIO(raw)) as img:
                sizes.append(img.size)
    return sizes


def _ignored(source):
    return any(line.strip().lstrip("#").strip() == "NBVAL_IGNORE_OUTPUT"
               for line in source.splitlines() if line.strip().startswith("#"))


def cell_problems(source, tags, outputs):
    """What is wrong with one executed cell's outputs (empty list: nothing).

    Parameters
    ----------
    source : str
    tags : list of str
        The cell's metadata tags.
    outputs : list of dict
        nbformat outputs (``output_type``, ``name``, ``text``, ``data``).
    """
    problems = []
    if FIGURE_TAG in tags:
        sizes = png_sizes(outputs)
        if not sizes:
            kinds = sorted({m for o in outputs for m in (o.get("data") or {})} |
                           {o["output_type"] for o in outputs if o.get("output_type") == "stream"})
            problems.append(f"figure cell shows no image/png (outputs: {kinds or 'none'})")
        elif max(min(s) for s in sizes) < MIN_FIGURE_SIDE:
            problems.append(f"figure cell's PNGs are tiny: {sizes}")
    for output in outputs:
        for text in _texts(output):
            for name, pattern in NOISE.items():
                match = pattern.search(text)
                if match:
                    line = text[max(0, match.start() - 40):match.end() + 80].strip()
                    problems.append(f"{name} in the output: {line!r}")
    if not _ignored(source):
        for output in outputs:
            if output.get("output_type") == "stream" and output.get("name") == "stderr":
                problems.append(f"stderr in a checked cell: {output.get('text', '')[:200]!r}")
    return problems


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    result = yield
    if type(item).__name__ == "IPyNbCell":  # nbval's cell item
        cell = item.cell
        problems = cell_problems(cell.source, cell.get("metadata", {}).get("tags", []),
                                 getattr(item, "test_outputs", []))
        if problems:
            pytest.fail("\n".join(problems), pytrace=False)
    return result
