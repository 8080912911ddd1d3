"""Where grid tasks run: this process, a local process pool, or a dask.distributed cluster.

Every executor runs the same task function on the same plain-data task, so the same grid gives
the same metrics whichever executor runs it. Each task pins its own thread pools (torch and
BLAS through threadpoolctl) to ``threads``, so ``workers x threads`` never exceeds the cores:
two torch jobs spinning on the same cores run 2-6x slower (benchmarks/README.md).
"""

from __future__ import annotations

import concurrent.futures as cf
import os
from contextlib import contextmanager
from typing import Any, Callable, Iterable, Iterator

from ..contracts.errors import MiarsError


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@contextmanager
def pinned_threads(threads: int | None) -> Iterator[None]:
    """Limit torch's and every BLAS/OpenMP pool to ``threads`` for the duration (None: leave as is)."""
    if threads is None:
        yield
        return
    import sys

    from threadpoolctl import threadpool_limits

    torch = sys.modules.get("torch")
    if torch is None:  # not imported yet: it reads these when it loads (importing it costs seconds)
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[var] = str(int(threads))
        before = None
    else:
        before = torch.get_num_threads()
        torch.set_num_threads(int(threads))
    try:
        with threadpool_limits(limits=int(threads)):
            yield
    finally:
        torch = sys.modules.get("torch")
        if torch is not None and before is not None:
            torch.set_num_threads(before)


class SerialExecutor:
    """Runs each task in this process when it is submitted (``--workers 1``, ``miars-attack``)."""

    name = "serial"
    in_process = True  # tasks may use this process's plugins and store objects

    def __init__(self) -> None:
        self.workers = 1

    def submit(self, fn: Callable, *args: Any) -> cf.Future:
        future: cf.Future = cf.Future()
        try:
            future.set_result(fn(*args))
        except BaseException as exc:  # noqa: BLE001 - delivered through the future, like a pool's
            future.set_exception(exc)
        return future

    def wait_any(self, futures: Iterable) -> tuple[set, set]:
        futures = set(futures)
        return futures, set()

    def close(self) -> None:
        pass

    def describe(self) -> dict:
        return {"executor": self.name, "workers": 1}


class WorkerDied(Exception):
    """The process running a task ended without returning (killed by the kernel, a signal, a crash)."""


def _worker_main(conn) -> None:
    """A pool worker: run each ``(fn, args)`` received, send back ``(ok, value)``; stop on None or a closed pipe."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the grid, which ends its workers
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message is None:
            return
        fn, args = message
        try:
            reply = (True, fn(*args))
        except BaseException as exc:  # noqa: BLE001 - delivered through the future
            reply = (False, exc)
        try:
            conn.send(reply)
        except Exception as exc:  # noqa: BLE001 - e.g. a result that cannot be pickled
            conn.send((False, RuntimeError(f"the task's result could not be sent back ({type(exc).__name__}: {exc})")))


class _Worker:
    def __init__(self, ctx) -> None:
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_worker_main, args=(child,), daemon=True)
        self.process.start()
        child.close()


class PoolExecutor(SerialExecutor):
    """A local pool of ``workers`` processes (spawned, so no forked torch state).

    Each worker runs one task at a time over its own pipe, so when a worker dies (the kernel's
    out-of-memory killer, ``kill -9``, a crash in native code) exactly its task fails, with
    :class:`WorkerDied`; a new worker takes the next task and the other tasks go on.
    (``concurrent.futures.ProcessPoolExecutor`` breaks as a whole when one worker dies.)
    """

    name = "local"
    in_process = False

    def __init__(self, workers: int):
        import multiprocessing as mp
        from collections import deque

        self.workers = workers
        self._ctx = mp.get_context("spawn")
        self._queue: deque = deque()  # (future, fn, args) not sent yet
        self._idle: list[_Worker] = []
        self._busy: dict[_Worker, cf.Future] = {}

    def submit(self, fn: Callable, *args: Any) -> cf.Future:
        future: cf.Future = cf.Future()
        self._queue.append((future, fn, args))
        self._dispatch()
        return future

    def _dispatch(self) -> None:
        while self._queue and (self._idle or len(self._busy) < self.workers):
            worker = self._idle.pop() if self._idle else _Worker(self._ctx)
            future, fn, args = self._queue.popleft()
            try:
                worker.conn.send((fn, args))
            except (OSError, EOFError):  # died while idle: retire it, the task goes to another worker
                self._retire(worker)
                self._queue.appendleft((future, fn, args))
                continue
            except Exception as exc:  # noqa: BLE001 - arguments that cannot be pickled
                future.set_exception(exc)
                self._idle.append(worker)
                continue
            self._busy[worker] = future

    def _retire(self, worker: _Worker, kill: bool = False) -> None:
        if kill and worker.process.is_alive():
            worker.process.kill()
        worker.process.join(timeout=10)
        worker.conn.close()

    def wait_any(self, futures: Iterable) -> tuple[set, set]:
        from multiprocessing.connection import wait

        futures = set(futures)
        while True:
            done = {f for f in futures if f.done()}
            if done or not self._busy:
                return done, futures - done
            busy = list(self._busy)
            wait([w.conn for w in busy] + [w.process.sentinel for w in busy])
            for worker in busy:
                reply = None
                try:
                    if worker.conn.poll():
                        reply = worker.conn.recv()
                except (EOFError, OSError):
                    reply = None
                if reply is not None:
                    future = self._busy.pop(worker)
                    ok, value = reply
                    if ok:
                        future.set_result(value)
                    else:
                        future.set_exception(value)
                    self._idle.append(worker)
                elif not worker.process.is_alive():
                    future = self._busy.pop(worker)
                    self._retire(worker)
                    future.set_exception(WorkerDied(_death(worker.process.exitcode)))
            self._dispatch()

    def close(self) -> None:
        for future, _, _ in self._queue:
            future.cancel()
        self._queue.clear()
        for worker in self._idle:
            try:
                worker.conn.send(None)
            except (OSError, EOFError):
                pass
        for worker in list(self._busy):  # closed while tasks run (an error, Ctrl-C, SIGTERM): stop them
            self._retire(worker, kill=True)
        for worker in self._idle:
            self._retire(worker)
        self._idle, self._busy = [], {}

    def describe(self) -> dict:
        return {"executor": self.name, "workers": self.workers}


def _death(exitcode: int | None) -> str:
    import signal

    if exitcode is not None and exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        how = f"was killed by {name}"
        if -exitcode == signal.SIGKILL:
            how += " (the kernel's out-of-memory killer, or kill -9)"
    else:
        how = f"exited with status {exitcode} without returning a result"
    return (f"the worker process running this task {how}; the other tasks went on; run the grid again to retry it "
            "(with fewer --workers if memory is short)")


class DaskExecutor(SerialExecutor):
    """Tasks on a dask.distributed cluster: an existing scheduler, or a LocalCluster started here.

    Workers must read and write the same ``--cache`` folder (a shared file system for a
    cluster of several machines): stage outputs travel through it, not through the scheduler.
    """

    name = "dask"
    in_process = False

    def __init__(self, scheduler: str | None = None, local_workers: int | None = None):
        import logging
        import tempfile

        _distributed()
        from distributed import Client, LocalCluster

        self._cluster = None
        self._scratch: str | None = None
        self._config = None
        self._client = None
        if scheduler:
            try:
                self._client = Client(scheduler, timeout="10s")
            except OSError as exc:
                raise MiarsError(f"--scheduler {scheduler!r}: cannot connect ({exc}); start a dask scheduler there "
                                 "or use --dask-local N") from None
            self.workers = max(1, len(self._client.scheduler_info().get("workers", {})))
            self.address = scheduler
        else:
            # The workers' scratch space lives in a folder of our own, removed by close() (success,
            # failure or signal); dask's warnings (a task cancelled by a shutdown) stay quiet, errors show;
            # its HTTP routes listen on loopback at a free port (8787 may be taken by another cluster).
            import dask

            self._scratch = tempfile.mkdtemp(prefix="miars-dask-")
            # Scheduler, nannies and workers all take their scratch space from this setting.
            self._config = dask.config.set({"temporary-directory": self._scratch})
            try:
                self._cluster = LocalCluster(n_workers=int(local_workers or 1), threads_per_worker=1, processes=True,
                                             host="127.0.0.1", dashboard_address="127.0.0.1:0", local_directory=self._scratch,
                                             silence_logs=logging.ERROR)
                self._client = Client(self._cluster)
            except BaseException:
                self.close()
                raise
            self.workers = int(local_workers or 1)
            self.address = "local"

    def submit(self, fn: Callable, *args: Any):
        return self._client.submit(fn, *args, pure=False)

    def wait_any(self, futures: Iterable) -> tuple[set, set]:
        from distributed import wait

        done, pending = wait(list(futures), return_when="FIRST_COMPLETED")
        return set(done), set(pending)

    def close(self) -> None:
        """Stop the client and a cluster started here, and remove its scratch folder (idempotent)."""
        import shutil

        client, cluster, scratch, config = self._client, self._cluster, self._scratch, self._config
        self._client = self._cluster = self._scratch = self._config = None
        try:
            if client is not None:
                client.close()
            if cluster is not None:
                cluster.close()
        finally:
            if config is not None:
                config.__exit__(None, None, None)
            if scratch is not None:
                shutil.rmtree(scratch, ignore_errors=True)

    def describe(self) -> dict:
        return {"executor": self.name, "workers": self.workers, "scheduler": self.address}


def _distributed() -> None:
    try:
        import distributed  # noqa: F401
    except ImportError:
        raise MiarsError("--scheduler/--dask-local need dask.distributed; install it with "
                         "pip install 'miars[dask]' (or pip install distributed)") from None


def check_address(address: str) -> None:
    """Refuse a scheduler address dask cannot use, in one line (dask's own parser and comm backends decide)."""
    _distributed()
    from distributed.comm import addressing, registry

    schemes = []
    for scheme in sorted(registry.backends):
        try:
            if scheme != "inproc":  # in-process only: no scheduler of another process lives there
                registry.get_backend(scheme).get_address_host_port("127.0.0.1:1")
                schemes.append(scheme)
        except Exception:  # noqa: BLE001 - a backend that cannot serve a host:port address here
            pass
    example = "; pass e.g. tcp://HOST:8786 or HOST:8786 (schemes: " + ", ".join(schemes) + ")"
    if not address.strip():
        raise MiarsError("--scheduler is empty; pass the address of a running dask scheduler, e.g. tcp://HOST:8786, "
                         "or drop --scheduler (--dask-local N starts a cluster here)")
    scheme = addressing.parse_address(address)[0] if "://" in address else "tcp"
    if scheme not in schemes:
        raise MiarsError(f"--scheduler {address!r}: scheme {scheme!r} is not a scheme dask can connect to from here{example}")
    try:
        host, port = addressing.get_address_host_port(address)
    except (ValueError, TypeError, NotImplementedError) as exc:
        raise MiarsError(f"--scheduler {address!r} is not a valid address ({' '.join(str(exc).split())}){example}") from None
    if not host or not 1 <= int(port) <= 65535:
        raise MiarsError(f"--scheduler {address!r} needs a host and a port from 1 to 65535{example}")


def check_executor_args(workers: int | None = None, threads: int = 1, scheduler: str | None = None,
                        dask_local: int | None = None) -> None:
    """Every executor flag checked by type and range before any work (no process started)."""
    cap = max(64, 4 * available_cores())
    for flag, value, low in (("--threads", threads, 1), ("--workers", workers, 1), ("--dask-local", dask_local, 1)):
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= cap:
            raise MiarsError(f"{flag} must be an integer from {low} to {cap} (4 per core, at least 64), got {value!r}")
    if scheduler is not None and dask_local is not None:
        raise MiarsError("pass either --scheduler ADDRESS or --dask-local N, not both")
    if workers is not None and (scheduler is not None or dask_local is not None):
        which = "--scheduler" if scheduler is not None else "--dask-local"
        raise MiarsError(f"--workers sets the local process pool, which {which} replaces (dask's workers run the tasks); "
                         "drop --workers or drop " + which)
    if scheduler is not None:
        check_address(scheduler)
    if dask_local is not None:
        _distributed()


def make_executor(workers: int | None = None, threads: int = 1, scheduler: str | None = None,
                  dask_local: int | None = None) -> SerialExecutor:
    """The executor the grid's flags ask for (``--workers``, ``--scheduler``, ``--dask-local``)."""
    check_executor_args(workers, threads, scheduler, dask_local)
    if scheduler is not None or dask_local is not None:
        return DaskExecutor(scheduler, dask_local)  # each task pins its own threads
    cores = available_cores()
    if workers is None:
        workers = max(1, cores // threads)
    return SerialExecutor() if workers == 1 else PoolExecutor(workers)
