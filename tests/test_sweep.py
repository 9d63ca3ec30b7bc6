"""Sweeps: experiment validation, stable run ids, resumption after SIGKILL, failed runs."""

import itertools
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import REPO
from imgsim.errors import ConfigError
from imgsim.sweep import load_experiment, run_id, sweep

DATA_NB = os.path.join(REPO, "notebooks", "01_data.ipynb")


def write(path, text):
    path.write_text(text)
    return str(path)


def test_grid_expands_to_every_combination(tmp_path):
    path = write(tmp_path / "e.yaml", f"notebook: {DATA_NB}\nparameters: {{max_scenes: 2}}\n"
                                      "grid:\n  per_scene: [1, 2, 3]\n  thumbnail_size: [32, 64]\n")
    exp = load_experiment(path)
    want = [{"max_scenes": 2, "per_scene": a, "thumbnail_size": b}
            for a, b in itertools.product([1, 2, 3], [32, 64])]
    assert exp.runs == want and exp.swept() == ["per_scene", "thumbnail_size"]
    ids = [run_id(exp.notebook, r) for r in exp.runs]
    assert len(set(ids)) == 6
    assert run_id(exp.notebook, dict(reversed(list(want[0].items())))) == ids[0]  # order-free
    lst = write(tmp_path / "l.yaml", f"notebook: {DATA_NB}\nlist:\n  - {{per_scene: 1}}\n  - {{per_scene: 4, max_scenes: 1}}\n")
    assert load_experiment(lst).runs == [{"per_scene": 1}, {"per_scene": 4, "max_scenes": 1}]


@pytest.mark.parametrize("text, message", [
    ("notebook: {nb}\ngrid:\n  perscene: [1, 2]\n",
     "{path}: grid: unknown parameter 'perscene' (notebook {nb} has: data_root, per_scene, "
     "thumbnail_size, max_scenes, output_dir)"),
    ("notebook: notebooks/missing.ipynb\ngrid:\n  per_scene: [1]\n",
     "{path}: notebook: notebooks/missing.ipynb does not exist"),
    ("notebook: {nb}\ngrid: {{}}\n",
     "{path}: grid: empty (give at least one parameter with a list of values)"),
    ("notebook: {nb}\ngrid:\n  per_scene: [1, 2\n",
     "{path}: YAML syntax error at line 4, column 1: expected ',' or ']', but got '<stream end>'"),
    ("notebook: {nb}\nparameters: {{colour: red}}\ngrid:\n  per_scene: [1]\n",
     "{path}: parameters: unknown parameter 'colour' (notebook {nb} has: data_root, per_scene, "
     "thumbnail_size, max_scenes, output_dir)"),
    ("notebook: {nb}\ngrid:\n  per_scene: 3\n", "{path}: grid: per_scene: expected a non-empty list of values"),
    ("notebok: {nb}\ngrid:\n  per_scene: [1]\n",
     "{path}: unknown key 'notebok' (allowed: notebook, parameters, grid, list, name)"),
    ("notebook: {nb}\nparameters: {{data_root: $IMGSIM_NOT_SET_ANYWHERE}}\ngrid:\n  per_scene: [1]\n",
     "{path}: parameters: data_root: environment variable in '$IMGSIM_NOT_SET_ANYWHERE' is not set"),
])
def test_bad_experiment_files_name_the_file_and_key_and_run_nothing(tmp_path, text, message):
    path = write(tmp_path / "bad.yaml", text.format(nb=DATA_NB))
    out = tmp_path / "out"
    with pytest.raises(ConfigError) as err:
        sweep(path, out_root=str(out), progress=False)
    assert str(err.value) == message.format(path=path, nb=DATA_NB)
    assert not out.exists()


def sweep_cmd(experiment, out):
    return [sys.executable, "-m", "imgsim", "sweep", experiment, "--out-root", str(out), "--workers", "1"]


@pytest.mark.slow
def test_sigkill_mid_sweep_then_restart_skips_finished_runs(tmp_path):
    exp = write(tmp_path / "kill.yaml", f"notebook: {DATA_NB}\nparameters: {{max_scenes: 2, thumbnail_size: 32}}\n"
                                        "grid:\n  per_scene: [1, 2, 3, 4]\n")
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=REPO)
    log = open(tmp_path / "first.log", "w")
    proc = subprocess.Popen(sweep_cmd(exp, out), stdout=log, stderr=subprocess.STDOUT, env=env,
                            start_new_session=True)
    root = out / "kill"
    finished = lambda: [d for d in os.listdir(root) if (root / d / "status.json").exists()] if root.exists() else []  # noqa: E731
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None and not finished():
        time.sleep(0.1)
    assert proc.poll() is None, open(tmp_path / "first.log").read()[-2000:]
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = len(finished())
    assert 1 <= done_before < 4

    second = subprocess.run(sweep_cmd(exp, out), capture_output=True, text=True, env=env, timeout=400)
    assert second.returncode == 0, second.stdout[-2000:] + second.stderr[-2000:]
    assert f"4 runs, {done_before} already finished (skipped), {4 - done_before} to run" in second.stdout
    lines = (root / "summary.csv").read_text().strip().splitlines()
    assert len(lines) == 5  # header + every run exactly once
    assert all(",ok," in line for line in lines[1:])
    assert sorted(d for d in os.listdir(root) if ".tmp-" in d) == []
    for d in finished():
        metrics = json.load(open(root / d / "metrics.json"))
        params = json.load(open(root / d / "parameters.json"))
        assert metrics["images"] == 114 and metrics["scenes"] == 12
        assert d == run_id(DATA_NB, params)


@pytest.mark.slow
def test_failed_run_keeps_its_notebook_and_does_not_stop_the_others(tmp_path):
    exp = write(tmp_path / "mixed.yaml", f"notebook: {DATA_NB}\nparameters: {{max_scenes: 1, thumbnail_size: 32}}\n"
                                         f"list:\n  - {{per_scene: 1}}\n  - {{data_root: {tmp_path / 'nowhere'}}}\n")
    result = sweep(exp, out_root=str(tmp_path / "out"), progress=False)
    assert (result["ran"], result["failed"]) == (2, 1)
    status = {r["run_id"]: r["status"] for r in result["rows"]}
    assert sorted(status.values()) == ["failed", "ok"]
    failed = [rid for rid, s in status.items() if s == "failed"][0]
    folder = tmp_path / "out" / "mixed" / failed
    executed = json.load(open(folder / "notebook.ipynb"))
    errors = [o for c in executed["cells"] if c["cell_type"] == "code" for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert errors and errors[0]["ename"] == "DataLayoutError"
    assert "no such directory" in json.load(open(folder / "status.json"))["error"]
    again = sweep(exp, out_root=str(tmp_path / "out"), progress=False)
    assert (again["ran"], again["skipped"]) == (0, 2)  # failed runs rerun only with retry_failed
    assert sweep(exp, out_root=str(tmp_path / "out"), progress=False, retry_failed=True)["ran"] == 1


def test_summary_files_from_finished_runs(tmp_path):
    """Summary rows come from the run folders: parameters, metrics, status; one figure."""
    from imgsim.fileio import atomic_write_json
    from imgsim.sweep import write_summary

    exp = load_experiment(write(tmp_path / "s.yaml", f"notebook: {DATA_NB}\ngrid:\n  per_scene: [1, 2, 3]\n"))
    root = tmp_path / "out"
    for i, params in enumerate(exp.runs[:2]):
        folder = root / run_id(exp.notebook, params)
        atomic_write_json(str(folder / "status.json"), {"status": "ok", "wall_seconds": 1.5 + i})
        atomic_write_json(str(folder / "metrics.json"), {"test": {"map_at_r": 0.5 + i / 10}})
    rows = write_summary(exp, str(root))
    assert [r["status"] for r in rows] == ["ok", "ok", "pending"]
    assert [r.get("test.map_at_r") for r in rows] == [0.5, 0.6, None]
    assert [r["per_scene"] for r in rows] == [1, 2, 3]
    text = (root / "summary.md").read_text()
    columns = [c.strip() for c in text.splitlines()[2].strip("| ").split("|")]
    want = ["run_id", "status", "per_scene", "test.map_at_r", "wall_seconds"]
    assert columns == want
    assert (root / "metrics_vs_parameters.png").stat().st_size > 1000
