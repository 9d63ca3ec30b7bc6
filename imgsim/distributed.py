"""Dask for the heavy stages: the one place that turns ``workers`` / ``scheduler`` into a client.

``imgsim sweep``, ``imgsim embed``, the match and SfM stages of ``imgsim reconstruct``
and :func:`imgsim.sift.score_pairs` take either

* ``scheduler="tcp://HOST:PORT"`` — an existing Dask cluster (``dask
  scheduler`` + ``dask worker`` on each machine, or any Dask deployment), or
* ``workers=N`` — a :class:`~dask.distributed.LocalCluster` of ``N`` worker
  processes with one task thread each, started here and closed afterwards.

:func:`client` yields the :class:`~dask.distributed.Client`. Opened again
while open (a reconstruct run holding one around its stages), it hands back
the same client, so a cluster starts once per run. Work runs as tasks whose
outputs are files in a content-keyed cache (SIFT features, pair chunks,
embedding shards): a killed run resumes with the missing ones and another
cluster reuses them. Every worker must therefore see the cache folder — and
the images — **at the same path on shared storage**; :func:`check_shared`
refuses a cluster whose workers do not.

Workers die with the process that started them: Dask's own worker processes
exit when their parent's pipe closes (``distributed.process``), and the
process-pool workers of :func:`imgsim.sift.score_pairs` call
:func:`die_with_parent` when they start.
"""

import contextlib
import ctypes
import os
import signal
import sys
import threading
import uuid

from imgsim.errors import ConfigError

CONNECT_TIMEOUT_S = 10
THREADS_ENV = "IMGSIM_TASK_THREADS"  # threads a task may use (set for the workers of a LocalCluster)
_OPEN = {}  # key -> [client, cluster, users]: clients open in this process
_LOCK = threading.Lock()


def enabled(scheduler=None, workers=None):
    """Whether ``scheduler`` or ``workers`` asks for Dask."""
    return scheduler is not None or workers is not None


def check(scheduler=None, workers=None):
    """Validate the pair up front; returns a key naming the cluster.

    Raises
    ------
    ConfigError
        ``workers`` not an integer >= 1, ``scheduler`` not a ``tcp://HOST:PORT``
        style address, or both given.
    """
    if scheduler is not None and workers is not None:
        raise ConfigError(f"give scheduler ({scheduler!r}) or workers ({workers!r}), not both")
    if workers is not None:
        if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
            raise ConfigError(f"workers must be an integer >= 1, got {workers!r}")
        return f"local:{workers}"
    if not isinstance(scheduler, str) or "://" not in scheduler or not scheduler.split("://", 1)[1]:
        raise ConfigError(f"scheduler must be an address like tcp://HOST:PORT, got {scheduler!r}")
    return scheduler


def check_reachable(scheduler, timeout=5):
    """Raise :class:`ConfigError` unless a ``tcp://HOST:PORT`` scheduler accepts a connection.

    For callers that must fail before writing anything (``imgsim sweep``
    creates its output folder before it needs the cluster). Other protocols
    are left to :func:`client`.
    """
    import re
    import socket

    match = re.fullmatch(r"tcp://(\[[^\]]+\]|[^:/]+)(?::(\d+))?/?", str(scheduler))
    if match:
        host, port = match.groups()
        try:
            socket.create_connection((host.strip("[]"), int(port or 8786)), timeout=timeout).close()
        except OSError as exc:
            raise ConfigError(f"scheduler {scheduler}: cannot connect ({exc.strerror or exc})") from None
    return scheduler


def _start(scheduler, workers):
    from dask.distributed import Client, LocalCluster

    if workers is None:
        try:
            return Client(scheduler, timeout=f"{CONNECT_TIMEOUT_S}s"), None
        except (OSError, TimeoutError) as exc:
            raise ConfigError(f"scheduler {scheduler}: cannot connect within {CONNECT_TIMEOUT_S} s "
                              f"({type(exc).__name__})") from None
    threads = str(max(1, (os.cpu_count() or 1) // workers))
    env = {THREADS_ENV: threads, "OMP_NUM_THREADS": threads, "TF_NUM_INTRAOP_THREADS": threads,
           "TF_NUM_INTEROP_THREADS": "1", "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"),
           # processes of our own: OpenMP waits sleep (see cli.set_thread_waits) unless the user chose
           "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
    # no dashboard; the scheduler's health endpoint on a free port (not 8787, which others may hold)
    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                           dashboard_address=None, scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
                           env=env)
    local = Client(cluster)
    local.register_plugin(_exit_at_once_plugin()(), name="imgsim-exit-at-once")
    return local, cluster


def _exit_at_once_plugin():
    """A WorkerPlugin class, defined here so that importing this module does not import Dask."""
    from distributed.diagnostics.plugin import WorkerPlugin

    class ExitAtOnce(WorkerPlugin):
        """End a local worker process with ``os._exit`` once it has closed.

        A worker that imported TensorFlow otherwise spends seconds in the
        interpreter's teardown (TensorFlow's static destructors) and is
        killed by its nanny after 4 s with a warning.
        """

        def setup(self, worker):
            import atexit

            atexit.register(os._exit, 0)

    return ExitAtOnce


@contextlib.contextmanager
def client(scheduler=None, workers=None):
    """A Dask client for ``scheduler`` (an address, or a ``Client`` used as is) or ``workers``.

    Parameters
    ----------
    scheduler : str or dask.distributed.Client, optional
        ``tcp://HOST:PORT`` of a running scheduler.
    workers : int, optional
        Worker processes of a local cluster, one task thread each; each task
        may use ``cpu_count // workers`` threads (``$IMGSIM_TASK_THREADS``).

    Yields
    ------
    dask.distributed.Client
        The same client for nested calls with the same arguments; closed
        (with its local cluster) when the outermost ``with`` ends.
    """
    from dask.distributed import Client

    if isinstance(scheduler, Client):
        yield scheduler
        return
    key = check(scheduler, workers)
    with _LOCK:
        entry = _OPEN.get(key)
        if entry is not None:
            entry[2] += 1
    if entry is None:
        new_client, cluster = _start(scheduler, workers)
        entry = [new_client, cluster, 1]
        with _LOCK:
            _OPEN[key] = entry
    try:
        yield entry[0]
    finally:
        with _LOCK:
            entry[2] -= 1
            last = entry[2] == 0
            if last:
                del _OPEN[key]
        if last:
            entry[0].close()
            if entry[1] is not None:
                entry[1].close()


def n_workers(dask_client):
    """Workers currently connected to the client's scheduler (at least 1)."""
    return max(1, len(dask_client.scheduler_info().get("workers", {})))


def task_threads():
    """Threads one task may use: ``$IMGSIM_TASK_THREADS``, else None (the libraries' defaults)."""
    value = os.environ.get(THREADS_ENV)
    return int(value) if value and value.isdigit() and int(value) > 0 else None


def check_shared(dask_client, folder):
    """Make sure every worker sees ``folder`` — the same folder, not one of the same name.

    Writes a marker file into ``folder`` here and asks each worker whether it
    exists there.

    Raises
    ------
    ConfigError
        Naming the workers that do not see it.
    """
    os.makedirs(folder, exist_ok=True)
    marker = os.path.join(os.path.abspath(folder), f".imgsim-shared-{uuid.uuid4().hex}")
    open(marker, "w").close()
    try:
        seen = dask_client.run(os.path.exists, marker)
    finally:
        os.remove(marker)
    blind = sorted(worker for worker, ok in seen.items() if not ok)
    if blind:
        raise ConfigError(f"{folder}: not visible to Dask worker(s) {', '.join(blind)}: the cache "
                          f"must be on storage every worker mounts at the same path")


def run_tasks(dask_client, function, tasks, progress=False, desc=None, unit="task"):
    """Run ``function(*args)`` for each ``args`` of ``tasks`` on the cluster; results in order.

    A task that raises re-raises here (the first one, once the others are cancelled).
    """
    from dask.distributed import as_completed

    futures = [dask_client.submit(function, *args, pure=False) for args in tasks]
    index = {future.key: i for i, future in enumerate(futures)}
    results = [None] * len(futures)
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(futures), desc=desc, unit=unit)
    try:
        for future in as_completed(futures):
            results[index[future.key]] = future.result()
            if bar is not None:
                bar.update()
    except BaseException:
        dask_client.cancel(futures)
        raise
    finally:
        if bar is not None:
            bar.close()
    return results


# --------------------------------------------------------------------------- orphans

PR_SET_PDEATHSIG = 1


def _watch_parent(parent, interval):
    import time

    while os.getppid() == parent:
        time.sleep(interval)
    os._exit(1)


def die_with_parent(parent=None, interval=0.5):
    """End this process when its parent dies (call it first thing in a worker process).

    On Linux the kernel sends SIGKILL the moment the parent exits
    (``prctl(PR_SET_PDEATHSIG)``; strictly, when the parent *thread* that
    started this process ends — a pool must be started by a thread that
    outlives it, as :func:`imgsim.sift.score_pairs`'s is); elsewhere a daemon thread polls
    :func:`os.getppid` every ``interval`` seconds. If the parent is already
    gone (reparented: ``getppid() != parent``) the process exits at once.

    Parameters
    ----------
    parent : int, optional
        Pid of the expected parent; default the current ``os.getppid()``.
    """
    parent = os.getppid() if parent is None else parent
    armed = False
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            armed = libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0
        except (OSError, AttributeError):
            armed = False
    if os.getppid() != parent:  # the parent died before the signal was armed
        os._exit(1)
    if not armed:
        threading.Thread(target=_watch_parent, args=(parent, interval), daemon=True,
                         name="imgsim-die-with-parent").start()
