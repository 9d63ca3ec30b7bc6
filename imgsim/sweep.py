"""Hyperparameter sweeps: papermill runs of a notebook, dispatched on Dask.

An experiment file ``experiments/<name>.yaml``::

    notebook: notebooks/02_train.ipynb
    parameters: {epochs: 3, image_size: 128}       # base values (optional)
    grid:                                           # every combination ...
      learning_rate: [1.0e-4, 3.0e-4]
      margin: [0.2, 0.5]
    # list: [{margin: 0.2}, {margin: 0.5, p: 4}]   # ... or an explicit list

Every key must be a parameter of the notebook's ``parameters`` cell; string
values may name environment variables (``data_root: ${IMGSIM_DATA}``). Each
combination runs once into ``reports/sweeps/<name>/<run-id>/`` (the executed
``notebook.ipynb``, ``parameters.json``, the notebook's ``metrics.json`` and
``status.json``), run-id being a stable hash of the notebook and parameters.
A run executes in its own final folder, so every path it records (in its
``metrics.json``, its executed notebook, the run folders it makes) is the
final one; ``status.json``, written last, marks it finished. A sweep killed at
any moment loses only the runs in flight: their folders have no
``status.json`` and run again from scratch next time; finished runs are
skipped. A failed run keeps its executed notebook (with the error) and does
not stop the others; it is run again only with ``retry_failed``, and until
then every sweep of the experiment reports it as failed. ``summary.csv``,
``summary.md`` and ``metrics_vs_parameters.png`` (every metric that varies
against every swept parameter) are rewritten as runs finish. One sweep at a
time works in ``<out_root>/<name>/`` (a :class:`~imgsim.fileio.FolderLock`).

The experiment file is checked whole before anything runs: a
:class:`~imgsim.errors.ConfigError` names the file and the key.
"""

import csv
import hashlib
import io
import itertools
import json
import math
import os
import shutil
import time
from dataclasses import dataclass, field

from imgsim.config import check_range
from imgsim.errors import ConfigError, DataLayoutError
from imgsim.fileio import (
    FolderLock,
    atomic_write_json,
    atomic_write_text,
    check_folder_name,
    check_output_dir,
    read_json,
    read_text,
)

OK, FAILED = "ok", "failed"
MAX_RUNS = 10_000  # runs in one experiment: a grid beyond this is a slip, not a plan
OUTPUT_DIR = "output_dir"  # the parameter through which the sweep gives each run its folder


# --------------------------------------------------------------------------- notebook side


def output_dir(value=None):
    """Where a notebook writes ``metrics.json``: ``value``, else ``$IMGSIM_OUTPUT_DIR``, else ``.``."""
    folder = value or os.environ.get("IMGSIM_OUTPUT_DIR") or "."
    os.makedirs(folder, exist_ok=True)
    return folder


def output_path(folder, *parts):
    """A path under :func:`output_dir` (for a notebook's runs, reports, ...)."""
    return os.path.join(output_dir(folder), *parts)


def write_metrics(metrics, folder=None):
    """Write a notebook's metrics to ``<output_dir(folder)>/metrics.json`` atomically."""
    return atomic_write_json(os.path.join(output_dir(folder), "metrics.json"), metrics)


# --------------------------------------------------------------------------- experiments


@dataclass
class Experiment:
    """A parsed, validated experiment file."""

    name: str
    path: str
    notebook: str
    parameters: dict
    runs: list = field(default_factory=list)

    def swept(self):
        """Parameter names that vary between runs, in first-seen order."""
        keys = dict.fromkeys(k for run in self.runs for k in run)
        return [k for k in keys if len({json.dumps(r.get(k), sort_keys=True) for r in self.runs}) > 1]


def _yaml(path):
    import yaml

    try:
        text = read_text(path)
    except DataLayoutError as exc:  # missing, a folder, not UTF-8
        raise ConfigError(str(exc)) from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{path}: YAML syntax error{where}: {getattr(exc, 'problem', exc)}") from None


def notebook_parameters(notebook):
    """Names of the parameters in a notebook's ``parameters`` cell (papermill's inspection).

    Raises
    ------
    ConfigError
        ``notebook`` is not a Jupyter notebook (not JSON, no cells).
    """
    import papermill

    try:
        content = read_json(notebook)
    except DataLayoutError as exc:
        raise ConfigError(f"{exc}: not a Jupyter notebook") from None
    if not isinstance(content, dict) or not isinstance(content.get("cells"), list):
        raise ConfigError(f"{notebook}: not a Jupyter notebook (no 'cells' list)")
    try:
        return list(papermill.inspect_notebook(notebook))
    except Exception as exc:  # nbformat / papermill reject it: say so, naming the file
        raise ConfigError(f"{notebook}: not a notebook papermill can run "
                          f"({type(exc).__name__}: {str(exc).strip().splitlines()[0][:200]})") from None


def load_experiment(path):
    """Read and validate ``path``; nothing runs.

    Raises
    ------
    ConfigError
        Naming the file and the key: YAML syntax error, missing or unknown
        top-level key, missing notebook, notebook without a parameters cell,
        unknown parameter, empty grid or list, grid values that are not lists,
        a file that is not UTF-8 YAML, a notebook that is not one, a ``name``
        that is not a plain folder name, ``output_dir`` (the sweep sets it), two
        entries that are the same run.
    """
    spec = _yaml(path)
    name = os.path.splitext(os.path.basename(path))[0]
    if not isinstance(spec, dict):
        raise ConfigError(f"{path}: expected a mapping with keys notebook, parameters, grid or list")
    unknown = sorted(map(str, set(spec) - {"notebook", "parameters", "grid", "list", "name"}))
    if unknown:
        raise ConfigError(f"{path}: unknown key '{unknown[0]}' (allowed: notebook, parameters, grid, list, name)")
    if "notebook" not in spec:
        raise ConfigError(f"{path}: missing key 'notebook'")
    notebook = spec["notebook"]
    if not isinstance(notebook, str) or not notebook:
        raise ConfigError(f"{path}: notebook: expected a notebook path, got {notebook!r}")
    if not os.path.isabs(notebook) and not os.path.exists(notebook):
        notebook = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(path))), notebook)
    if not os.path.isfile(notebook):
        problem = "is not a file" if os.path.exists(notebook) else "does not exist"
        raise ConfigError(f"{path}: notebook: {spec['notebook']} {problem}")
    try:
        allowed = notebook_parameters(notebook)
    except ConfigError as exc:
        raise ConfigError(f"{path}: notebook: {exc}") from None
    if not allowed:
        raise ConfigError(f"{path}: notebook: {spec['notebook']} has no cell tagged 'parameters'")
    base = spec.get("parameters") or {}
    if not isinstance(base, dict):
        raise ConfigError(f"{path}: parameters: expected a mapping of parameter: value")
    if ("grid" in spec) == ("list" in spec):
        raise ConfigError(f"{path}: give exactly one of 'grid' or 'list'")
    if "grid" in spec:
        grid = spec["grid"]
        if not isinstance(grid, dict) or not grid:
            raise ConfigError(f"{path}: grid: empty (give at least one parameter with a list of values)")
        for key, values in grid.items():
            if not isinstance(values, list) or not values:
                raise ConfigError(f"{path}: grid: {key}: expected a non-empty list of values")
        combinations = math.prod(len(values) for values in grid.values())
        if combinations > MAX_RUNS:
            raise ConfigError(f"{path}: grid: {combinations} combinations, at most {MAX_RUNS} "
                              "(sweep fewer values, or give a list of the runs)")
        runs = [dict(zip(grid, combo)) for combo in itertools.product(*grid.values())]
        section = "grid"
    else:
        runs = spec["list"]
        if not isinstance(runs, list) or not runs or not all(isinstance(r, dict) for r in runs):
            raise ConfigError(f"{path}: list: expected a non-empty list of parameter mappings")
        if len(runs) > MAX_RUNS:
            raise ConfigError(f"{path}: list: {len(runs)} runs, at most {MAX_RUNS}")
        section = "list"
    for where, values in [("parameters", base)] + [(section, run) for run in runs]:
        for key, value in values.items():
            if key == OUTPUT_DIR:
                raise ConfigError(f"{path}: {where}: {OUTPUT_DIR} is set by the sweep (each run "
                                  f"writes into its own folder under --out-root)")
            if key not in allowed:
                raise ConfigError(f"{path}: {where}: unknown parameter '{key}' "
                                  f"(notebook {spec['notebook']} has: {', '.join(map(str, allowed))})")
            if isinstance(value, str) and "$" in value:
                values[key] = os.path.expandvars(value)
                if "$" in values[key]:
                    raise ConfigError(f"{path}: {where}: {key}: environment variable in "
                                      f"{value!r} is not set")
    name = spec.get("name", name)
    check_folder_name(name, f"{path}: name")
    runs = [dict(base, **run) for run in runs]
    _refuse_duplicates(runs, notebook, path, section)
    return Experiment(name=name, path=path, notebook=notebook, parameters=base, runs=runs)


def _refuse_duplicates(runs, notebook, path, section):
    """Raise :class:`ConfigError` if two entries of ``section`` are the same run."""
    first = {}
    for i, params in enumerate(runs):
        try:
            rid = run_id(notebook, params)
        except TypeError:
            raise ConfigError(f"{path}: {section}: entry {i + 1}: values must be plain YAML "
                              f"(numbers, strings, lists, mappings), got {params!r}") from None
        if rid in first:
            raise ConfigError(f"{path}: {section}: runs {first[rid] + 1} and {i + 1} are the same "
                              f"run ({json.dumps(params, sort_keys=True)}): list each run once")
        first[rid] = i


def run_id(notebook, parameters):
    """Stable 12-hex-digit hash of the notebook file name and the parameters."""
    key = json.dumps({"notebook": os.path.basename(notebook), "parameters": parameters}, sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()[:12]


# --------------------------------------------------------------------------- running


def execute_run(notebook, parameters, folder):
    """Execute one run into ``folder`` (on a Dask worker); returns its status dict.

    The folder is emptied first (what a killed or failed earlier attempt left),
    then the notebook runs with it as working directory and ``output_dir``
    parameter, so every path the run records is final; ``status.json``,
    written last, failed or not, marks the run finished.
    """
    import papermill

    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    atomic_write_json(os.path.join(folder, "parameters.json"), parameters)
    start = time.time()
    status = {"status": OK, "error": None}
    try:
        papermill.execute_notebook(notebook, os.path.join(folder, "notebook.ipynb"),
                                   parameters=dict(parameters, output_dir=os.path.abspath(folder)),
                                   cwd=folder, progress_bar=False, kernel_name="python3")
    except Exception as exc:  # papermill.PapermillExecutionError and kernel failures
        status = {"status": FAILED, "error": f"{type(exc).__name__}: {str(exc).strip()[-2000:]}"}
    status["wall_seconds"] = round(time.time() - start, 2)
    atomic_write_json(os.path.join(folder, "status.json"), status)
    return status


def run_status(folder):
    """``"ok"``, ``"failed"`` or None (never finished) for a run folder."""
    path = os.path.join(folder, "status.json")
    return read_json(path)["status"] if os.path.exists(path) else None


def sweep(path, out_root=os.path.join("reports", "sweeps"), workers=1, scheduler=None,
          retry_failed=False, progress=True):
    """Run every combination of an experiment file that has not finished yet.

    Parameters
    ----------
    path : str
        ``experiments/<name>.yaml``.
    out_root : str
        Runs go to ``out_root/<name>/<run-id>/``.
    workers : int
        Processes of the local Dask cluster (ignored with ``scheduler``); see
        :func:`imgsim.distributed.client`.
    scheduler : str, optional
        Address of an existing Dask scheduler, e.g. ``tcp://host:8786``.
    retry_failed : bool
        Run failed runs again.

    Returns
    -------
    dict with ``ran``, ``skipped`` (finished earlier), ``failed`` (every run of
    the experiment whose last attempt failed, this sweep's or an earlier
    one's), ``failed_earlier`` counts, the summary rows and ``root``.
    """
    from imgsim import distributed

    check_range("workers", workers, 1, integer=True)
    check_output_dir(out_root, "out_root")
    workers = None if scheduler else workers  # an existing cluster brings its own workers
    distributed.check(scheduler, workers)
    if scheduler is not None:
        distributed.check_reachable(scheduler)  # before the output folder is made
    experiment = load_experiment(path)
    root = os.path.join(out_root, experiment.name)
    with FolderLock(root, "imgsim sweep"):
        return _sweep(experiment, root, workers, scheduler, retry_failed, progress)


def _sweep(experiment, root, workers, scheduler, retry_failed, progress):
    """The runs of :func:`sweep`, in its locked output folder."""
    from dask.distributed import as_completed

    from imgsim import distributed

    for name in os.listdir(root):  # folders of runs killed mid-way (earlier imgsim versions)
        if ".tmp-" in name:
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)
    todo, skipped = [], 0
    for params in experiment.runs:
        folder = os.path.join(root, run_id(experiment.notebook, params))
        status = run_status(folder)
        if status == OK or (status == FAILED and not retry_failed):
            skipped += 1
        else:
            todo.append((params, folder))
    print(f"sweep {experiment.name}: {len(experiment.runs)} runs, {skipped} already finished "
          f"(skipped), {len(todo)} to run", flush=True)
    failed = 0  # this sweep's
    if todo:
        with distributed.client(scheduler, workers) as client:
            futures = [client.submit(execute_run, experiment.notebook, params, folder,
                                     key=f"run-{os.path.basename(folder)}", pure=False)
                       for params, folder in todo]
            done = as_completed(futures)
            if progress:
                from tqdm.auto import tqdm
                done = tqdm(done, total=len(futures), desc=f"sweep {experiment.name}", unit="run")
            for future in done:
                failed += future.result()["status"] == FAILED
                write_summary(experiment, root)
    rows = write_summary(experiment, root)
    failed_total = sum(r["status"] == FAILED for r in rows)
    return {"ran": len(todo), "skipped": skipped, "failed": failed_total,
            "failed_earlier": failed_total - failed, "rows": rows, "root": root}


# --------------------------------------------------------------------------- summaries


def _flatten(d, prefix=""):
    out = {}
    for key, value in d.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        elif isinstance(value, (int, float, str, bool)) or value is None:
            out[f"{prefix}{key}"] = value
    return out


def summary_rows(experiment, root):
    """One dict per run of the experiment: run_id, status, wall time, swept parameters, metrics."""
    rows = []
    for params in experiment.runs:
        rid = run_id(experiment.notebook, params)
        folder = os.path.join(root, rid)
        row = {"run_id": rid, "status": run_status(folder) or "pending", "wall_seconds": None}
        row.update({k: params.get(k) for k in experiment.swept()})
        if os.path.exists(os.path.join(folder, "status.json")):
            row["wall_seconds"] = read_json(os.path.join(folder, "status.json"))["wall_seconds"]
        if os.path.exists(os.path.join(folder, "metrics.json")):
            row.update(_flatten(read_json(os.path.join(folder, "metrics.json"))))
        rows.append(row)
    return rows


def write_summary(experiment, root):
    """Rewrite ``summary.csv``, ``summary.md`` and ``metrics_vs_parameters.png``."""
    from imgsim import viz

    rows = summary_rows(experiment, root)
    columns = list(dict.fromkeys(k for r in rows for k in r))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(os.path.join(root, "summary.csv"), buffer.getvalue())
    metric_columns = [c for c in columns if c not in ("run_id", "status", "wall_seconds")
                      and c not in experiment.swept()
                      and all(isinstance(r.get(c), (int, float)) or r.get(c) is None for r in rows)
                      and any(r.get(c) is not None for r in rows)]
    shown = ["run_id", "status"] + experiment.swept() + metric_columns + ["wall_seconds"]
    fmt = lambda v: "" if v is None else (f"{v:.4g}" if isinstance(v, float) else str(v))  # noqa: E731
    lines = ["| " + " | ".join(shown) + " |", "|---" * len(shown) + "|"]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in shown) + " |" for r in rows]
    atomic_write_text(os.path.join(root, "summary.md"),
                      f"# Sweep {experiment.name} ({experiment.path})\n\n" + "\n".join(lines) + "\n")
    varying = [m for m in metric_columns if len({r.get(m) for r in rows if r.get(m) is not None}) > 1]
    if varying and experiment.swept():
        viz.save_figure(viz.metrics_vs_parameters(rows, varying, experiment.swept()),
                        os.path.join(root, "metrics_vs_parameters.png"))
    return rows
