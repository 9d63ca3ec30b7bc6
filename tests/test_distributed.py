"""Dask for the heavy stages: same results as the process pool, resume after a kill, no orphans.

The reference for every Dask result is the in-process computation of the same
thing (``model.embed``, ``score_pairs`` on a process pool, ``pair_matches``
per pair); the resume tests count recomputed chunks by the chunk files'
inodes and modification times.
"""

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import psutil
import pytest

from conftest import REPO, SAMPLE
from imgsim import distributed
from imgsim.data import load_table
from imgsim.errors import ConfigError
from imgsim.sift import FeatureCache, SiftConfig, pair_matches, score_pairs

FAST = SiftConfig(max_side=320, n_features=500)
SLOWER = {"max_side": 640, "n_features": 2000}  # a few seconds of matching: time to kill it


@pytest.fixture(scope="module")
def photos():
    table = load_table(SAMPLE)
    return {scene: list(group["path"]) for scene, group in table.groupby("scene")}


@pytest.fixture(scope="module")
def dask_client():
    with distributed.client(workers=2) as client:
        yield client


def _files(folder):
    """{name: (inode, mtime_ns)} of the .npz/.npy files directly in ``folder``."""
    return {f: (os.stat(os.path.join(folder, f)).st_ino, os.stat(os.path.join(folder, f)).st_mtime_ns)
            for f in os.listdir(folder) if f.endswith((".npz", ".npy"))} if os.path.isdir(folder) else {}


def _gone(pids, within):
    """Whether every pid has exited (or is a zombie) within ``within`` seconds."""
    deadline = time.time() + within
    while time.time() < deadline:
        alive = [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
        if not alive:
            return True
        time.sleep(0.05)
    return False


# --------------------------------------------------------------------------- Dask == process pool


def test_dask_embeddings_equal_in_process_embed(dask_client, photos, tmp_path):
    from imgsim.model import EmbeddingConfig, build_imagenet_baseline, embed, embed_sharded

    paths = photos["fountain_p11"][:3] + photos["castle_p30"][:2]
    expected = embed(build_imagenet_baseline(EmbeddingConfig(image_size=96)), paths, batch_size=2)
    got = embed_sharded(paths, image_size=96, cache_dir=tmp_path, batch_size=2, shard_size=2,
                        scheduler=dask_client)
    assert got.shape == expected.shape == (5, 1280)
    assert np.abs(got - expected).max() <= 1e-6
    assert len(_files(tmp_path)) == 3  # shards of 2, 2, 1 images
    # the shards are reused by the in-process path (no Dask): same numbers, no file rewritten
    before = _files(tmp_path)
    assert np.array_equal(embed_sharded(paths, image_size=96, cache_dir=tmp_path, batch_size=2,
                                        shard_size=2), got)
    assert _files(tmp_path) == before


def test_dask_matching_equals_process_pool(dask_client, photos, tmp_path):
    paths = photos["fountain_p11"][:4] + photos["espresso"][:2]
    pairs = [(a, b) for a in paths for b in paths if a != b][:24]
    pool = score_pairs(pairs, FAST, FeatureCache(tmp_path / "pool"), processes=2, keep_matches=True)
    cache = FeatureCache(tmp_path / "dask")
    got = score_pairs(pairs, FAST, cache, scheduler=dask_client, keep_matches=True)
    assert (cache.misses, cache.hits, cache.chunk_misses) == (6, 0, 24)
    for (score, inliers), (want_score, want_inliers) in zip(got, pool):
        assert score == want_score and np.array_equal(inliers, want_inliers)
    for (a, b), (score, inliers) in list(zip(pairs, got))[:3]:  # and both equal the one-pair call
        want = pair_matches(a, b, FAST)
        assert score == want.score() and np.array_equal(inliers, want.matches[want.inliers])
    assert sum(s.n_inliers for s, _ in got[:3]) >= 60  # same-scene pairs: real matches to compare
    # the same pairs on the process pool read every chunk the cluster wrote
    again = score_pairs(pairs, FAST, cache, processes=2)
    assert again == [s for s, _ in pool] and cache.chunk_hits == 24


def test_workers_must_see_the_cache(tmp_path):
    class Blind:  # a client whose second worker sees no such file
        def run(self, function, path):
            return {"tcp://10.0.0.1:1": function(path), "tcp://10.0.0.2:1": False}

    with pytest.raises(ConfigError, match=r"not visible to Dask worker\(s\) tcp://10.0.0.2:1"):
        distributed.check_shared(Blind(), str(tmp_path / "cache"))
    assert os.listdir(tmp_path / "cache") == []  # the marker is removed


# --------------------------------------------------------------------------- resume and orphans


def _start_scoring(tmp_path, executor):
    """A subprocess scoring 56 same-scene pairs into ``tmp_path/cache``; returns (process, pairs)."""
    table = load_table(SAMPLE)
    paths = list(table[table["scene"] == "castle_p30"]["path"])[:8]
    pairs = [(a, b) for a in paths for b in paths if a != b]
    script = tmp_path / "score.py"
    script.write_text(textwrap.dedent(f"""
        from imgsim.sift import FeatureCache, SiftConfig, score_pairs
        if __name__ == "__main__":
            score_pairs({pairs!r}, SiftConfig(**{SLOWER!r}), FeatureCache({str(tmp_path / "cache")!r}),
                        {executor})
    """))
    env = dict(os.environ, PYTHONPATH=REPO)
    proc = subprocess.Popen([sys.executable, str(script)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    return proc, pairs


def _kill_after_first_chunks(proc, folder, chunks=2):
    """SIGKILL ``proc`` once ``chunks`` chunk files exist; returns the pids of its children then."""
    deadline = time.time() + 180
    children = []
    while len(_files(folder)) < chunks and time.time() < deadline:
        assert proc.poll() is None, "the scoring run ended before it could be killed"
        children = [c.pid for c in psutil.Process(proc.pid).children(recursive=True)] or children
        time.sleep(0.01)
    children = [c.pid for c in psutil.Process(proc.pid).children(recursive=True)] or children
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return children


@pytest.mark.slow
def test_killed_dask_run_resumes_without_recomputing_finished_chunks(dask_client, tmp_path):
    proc, pairs = _start_scoring(tmp_path, "workers=2")
    chunk_dir = str(tmp_path / "cache" / "pairs")
    children = _kill_after_first_chunks(proc, chunk_dir)
    assert children and _gone(children, within=5), "Dask workers outlived the killed run"
    done = _files(chunk_dir)
    total = 28  # 56 pairs in chunks of 2 (fewer pairs than MIN_CHUNKS x 64)
    if len(done) == total:
        pytest.skip("the run finished every chunk before it could be killed")
    cache = FeatureCache(tmp_path / "cache")
    resumed = score_pairs(pairs, SiftConfig(**SLOWER), cache, scheduler=dask_client)
    assert (cache.chunk_hits, cache.chunk_misses) == (len(done), total - len(done))
    after = _files(chunk_dir)
    assert len(after) == total and all(after[name] == stamp for name, stamp in done.items())
    for (a, b), score in list(zip(pairs, resumed))[::9]:  # spot checks against the one-pair call
        assert score == pair_matches(a, b, SiftConfig(**SLOWER)).score()


@pytest.mark.slow
def test_sigkilled_process_pool_workers_die_with_their_parent(tmp_path):
    proc, _ = _start_scoring(tmp_path, "processes=2")
    children = _kill_after_first_chunks(proc, str(tmp_path / "cache" / "pairs"), chunks=1)
    assert len(children) >= 2  # the pool's workers (and its resource tracker)
    assert _gone(children, within=5), "process-pool workers outlived the killed run"


def test_embed_shards_resume(tmp_path, photos):
    """A lost shard is the only one embedded again; the others' files stay as they were."""
    from imgsim.model import embed_sharded

    paths = photos["fountain_p11"][:4]
    first = embed_sharded(paths, image_size=64, cache_dir=tmp_path, batch_size=2, shard_size=2)
    shards = _files(tmp_path)
    lost = sorted(shards)[0]
    os.remove(tmp_path / lost)
    again = embed_sharded(paths, image_size=64, cache_dir=tmp_path, batch_size=2, shard_size=2)
    assert np.abs(again - first).max() <= 1e-6
    after = _files(tmp_path)
    assert set(after) == set(shards)
    assert [name for name in after if after[name] != shards[name]] == [lost]


# --------------------------------------------------------------------------- arguments


@pytest.mark.parametrize("scheduler, workers, message", [
    (None, 0, "workers must be an integer >= 1, got 0"),
    (None, True, "workers must be an integer >= 1, got True"),
    ("localhost:8786", None, "scheduler must be an address like tcp://HOST:PORT, got 'localhost:8786'"),
    ("tcp://h:1", 2, "give scheduler ('tcp://h:1') or workers (2), not both"),
])
def test_bad_cluster_arguments(scheduler, workers, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        distributed.check(scheduler, workers)


def test_unreachable_scheduler_is_a_one_line_error(monkeypatch, tmp_path, capsys):
    from imgsim.cli import main

    monkeypatch.setattr(distributed, "CONNECT_TIMEOUT_S", 1)
    port = psutil.Process().pid % 1000 + 9400  # in scale's port range; nothing listens there
    code = main(["embed", SAMPLE, "--out", str(tmp_path / "e.npz"), "--scheduler", f"tcp://127.0.0.1:{port}"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith(f"ConfigError: scheduler tcp://127.0.0.1:{port}: cannot connect")
    assert "Traceback" not in err and not (tmp_path / "e.npz").exists()
    assert main(["embed", SAMPLE, "--workers", "0"]) == 2
    assert "workers must be an integer >= 1, got 0" in capsys.readouterr().err


def test_reconstruct_passes_the_cluster_to_embed_and_match(monkeypatch, tmp_path):
    import imgsim.model
    import imgsim.reconstruct as rec
    import imgsim.sift

    calls = {}
    monkeypatch.setattr(imgsim.model, "embed_sharded", lambda paths, *a, **k: calls.setdefault(
        "embed", (a, k)) and np.eye(len(paths), 8, dtype=np.float32))
    nothing = imgsim.sift.PairScore(n_keypoints_a=0, n_keypoints_b=0, n_matches=0, n_inliers=0, inlier_ratio=0.0)
    monkeypatch.setattr(imgsim.sift, "score_pairs", lambda pairs, *a, **k: calls.setdefault(
        "match", k) and [(nothing, np.zeros((0, 2), np.uint32))] * len(pairs))
    # the pairs' evidence (where reconstruct computes it) needs no features of these fake images
    monkeypatch.setattr(rec, "match_evidence", lambda paths, pairs, matches, *a, **k: (matches, {}),
                        raising=False)
    config = rec.ReconstructConfig(workers=2, image_size=64)
    paths = ["a.jpg", "b.jpg", "c.jpg"]
    assert rec.embed_stage(paths, None, config, str(tmp_path)).shape == (3, 8)
    assert calls["embed"][1]["workers"] == 2 and calls["embed"][0][:3] == (None, 64, str(tmp_path))
    rec.match_stage(paths, [(0, 1), (1, 2)], config, None)
    assert calls["match"]["workers"] == 2 and calls["match"]["scheduler"] is None
    with pytest.raises(ConfigError, match="workers must be an integer >= 1"):
        rec.ReconstructConfig(workers=-1)


def test_check_reachable_before_any_output():
    import socket

    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there now
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ConfigError, match=rf"scheduler tcp://127.0.0.1:{port}: cannot connect"):
        distributed.check_reachable(f"tcp://127.0.0.1:{port}", timeout=1)
    with socket.socket() as server:  # and one that does listen passes
        server.bind(("127.0.0.1", 0))
        server.listen()
        address = f"tcp://127.0.0.1:{server.getsockname()[1]}"
        assert distributed.check_reachable(address, timeout=1) == address
