"""Independent training runs side by side in worker processes, under one progress bar.

The GCNNs of the paper are small: one compiled training step of App A keeps about 1.4 of this
machine's 2 cores busy, and most of that is per-operation work that does not split across threads.
Independent runs (the seven approaches of Fig. 2a, say) therefore finish sooner in ``workers``
processes with ``cores // workers`` TensorFlow threads each than one after the other with all the
threads: on 2 cores, two single-threaded App A runs side by side take 0.55x the time of the two in
sequence. The thread count can change the last bits of a result (reductions split across threads add
in another order), so a run is bit-for-bit reproducible for the same number of workers.

:func:`run_jobs` runs ``target(*args, progress=...)`` for each named job. ``progress`` is ``None`` when
the jobs run in this process (the target then shows its own progress bar), and otherwise a callable
``progress(done, postfix)`` that the target calls after each epoch with its number of completed
epochs; the parent process draws one bar over all jobs. Workers are started with ``spawn`` (never
``fork``: TensorFlow's thread pools do not survive a fork), so ``target`` must be a module-level
function and its arguments picklable.

Ctrl-C reaches every process of the terminal's process group: each running job stops as its target
handles KeyboardInterrupt (the trainer checkpoints its last completed epoch), jobs not started are
dropped, and :func:`run_jobs` raises KeyboardInterrupt once the workers have finished.

SIGTERM to a worker (a batch scheduler stopping the process group, the pool terminating its workers
after one died) stops its running job the same way, then ends the worker; a worker that dies (killed,
out of memory) makes :func:`run_jobs` raise BrokenProcessPool once the others have so stopped. Workers
never outlive the parent, however it ends (even by SIGKILL): each asks the kernel for SIGTERM when its
parent dies (Linux's ``PR_SET_PDEATHSIG``, see :func:`end_with_parent`), and a watchdog thread that
checks the parent pid every second covers the other systems and the parent dying before the request.
A job that has not stopped ``TERMINATE_GRACE_S`` seconds after the SIGTERM is cut short with its worker.
"""

from __future__ import annotations

import ctypes
import multiprocessing as mp
import os
import queue as queue_module
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from functools import lru_cache, partial

from tqdm import tqdm

from core.tf_notices import silence_startup_notices

TERMINATE_GRACE_S = 10.0
"""Seconds a worker told to stop (SIGTERM, or its parent died) has to checkpoint its job before it ends anyway."""
_WATCH_INTERVAL_S = 1.0  # how often a worker checks that its parent still lives
_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
_TERMINATED = 128 + signal.SIGTERM  # a worker's exit status when it ends on SIGTERM (as the default action says)

_PROGRESS = None  # the worker's end of the parent's progress queue
_STOP = None  # set once Ctrl-C was pressed: jobs that have not started yet are skipped
_BUSY = False  # whether the worker is running a job (Ctrl-C interrupts only jobs, not idle workers)
_INTERRUPTED = False  # a KeyboardInterrupt was raised into the running job (its target may be checkpointing)
_HELD = False  # the worker is in a _signals_held block: a signal's KeyboardInterrupt waits until it is out
_DEFERRED: int | None = None  # the signal that arrived meanwhile
_TERMINATING_SINCE = None  # time.monotonic() of the first SIGTERM: the worker ends once its job has stopped


class _Interrupted:
    """What a worker returns for a job stopped by Ctrl-C."""


def default_workers(num_jobs: int) -> int:
    """One worker per core, no more than there are jobs."""
    return max(1, min(num_jobs, os.cpu_count() or 1))


def run_jobs(target: Callable, jobs: Mapping[str, tuple], workers: int, *, total: int, desc: str = "",
             quiet: bool = False, unit: str = "epoch", threads: int | None = None,
             initial: Mapping[str, int] | None = None) -> dict:
    """Run ``target(*args, progress=...)`` for every ``name: args`` of ``jobs``; return results by name.

    Args:
        target: a module-level function (it is pickled by reference for the workers).
        jobs: the arguments of each job, by job name (results come back in this order).
        workers: processes to use; 1 (or a single job, or an MPI rank: :func:`_mpi_initialized`) runs
            everything here, in order.
        total: epochs of all jobs together (the length of the shared progress bar).
        desc: label of the progress bar.
        quiet: no progress bar.
        unit: what the bar counts (what the targets' progress reports count: epochs, or mini-batches).
        threads: TensorFlow threads of each worker (default: the cores shared by the workers).
        initial: per job the epochs already done (a resumed run), where the shared bar starts.
    """
    if workers <= 1 or len(jobs) <= 1 or _mpi_initialized():
        return {name: target(*args, progress=None) for name, args in jobs.items()}
    context = mp.get_context("spawn")
    progress_queue, stop = context.Queue(), context.Event()
    threads = int(threads) if threads else max(1, (os.cpu_count() or 1) // workers)
    done = {name: int((initial or {}).get(name, 0)) for name in jobs}
    bar = tqdm(total=total, initial=sum(done.values()), desc=desc, unit=unit, disable=quiet, dynamic_ncols=True)
    results = {}
    # The kernel's parent-death signal fires when the *thread* that started a worker ends. That is this
    # thread (submit starts them; the manager thread only replaces workers under max_tasks_per_child, not
    # used here), which stays in this function until shutdown below has joined every worker.
    pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_start_worker,
                               initargs=(progress_queue, stop, threads, os.getpid(), TERMINATE_GRACE_S))
    started = set()  # the pids of the workers that have started
    try:
        futures = {pool.submit(_run_job, target, name, args): name for name, args in jobs.items()}
        pending = set(futures)
        while pending:
            finished, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
            _drain(progress_queue, bar, done, started)
            for future in finished:
                results[futures[future]] = future.result()  # a worker's exception is raised here
            # The pool misses a worker's death when it started waiting before that worker was added (submit
            # wakes its manager thread before it starts the worker; CPython 3.11): it would wait forever.
            if pending and started - {p.pid for p in mp.active_children()}:
                raise BrokenProcessPool("a worker process ended abruptly (killed, or out of memory?) while its job "
                                        "was running")
    except BaseException:
        stop.set()  # queued jobs are skipped; running ones checkpoint at their next epoch (or on their Ctrl-C)
        shutdown_pool(pool, cancel_futures=True)
        raise
    finally:
        shutdown_pool(pool)
        _drain(progress_queue, bar, done, started)
        bar.close()
    if any(isinstance(r, _Interrupted) for r in results.values()):
        raise KeyboardInterrupt
    return {name: results[name] for name in jobs}


def shutdown_pool(pool: ProcessPoolExecutor, cancel_futures: bool = False) -> None:
    """``pool.shutdown(wait=True)`` that a Ctrl-C or SIGTERM cannot cut short: the pool's manager thread would
    outlive it and race the interpreter's exit (seen once: "OSError: handle is closed" in that thread). Each
    interrupt meanwhile hurries the workers instead, the first with SIGTERM (they checkpoint within
    ``TERMINATE_GRACE_S``), later ones with SIGKILL; once the pool is down, KeyboardInterrupt is raised if any came."""
    interrupts = 0
    while True:
        try:
            pool.shutdown(wait=True, cancel_futures=cancel_futures)
            break
        except KeyboardInterrupt:
            interrupts += 1
            signum = signal.SIGTERM if interrupts == 1 else signal.SIGKILL
            for child in mp.active_children():
                try:
                    os.kill(child.pid, signum)
                except OSError:  # ended meanwhile
                    pass
    if interrupts:
        raise KeyboardInterrupt


def _mpi_initialized() -> bool:
    """Whether this process is an MPI rank (mpi4py imported and MPI started). Its jobs then run here, in order:
    forked or spawned workers of a rank break Open MPI's shared-memory transport (the rank's next collective
    crashes). The apps refuse ``--jobs`` > 1 under MPI; this covers a caller such as a test's in-process
    reference run inside a rank."""
    import sys

    mpi = sys.modules.get("mpi4py.MPI")
    return bool(mpi is not None and mpi.Is_initialized() and not mpi.Is_finalized())


def end_with_parent(parent_pid: int, signum: int = signal.SIGTERM) -> bool:
    """Have the kernel send ``signum`` to this process when its parent ends; end now if it already has.

    Linux only (``prctl(PR_SET_PDEATHSIG)``); elsewhere nothing is requested and False is returned. The
    signal comes when the parent *thread* that started this process ends, so that thread must outlive
    the process. ``parent_pid`` is the pid the parent had when it started this process: if the parent
    died before the request was made, this process has been handed to another one already, and it ends
    at once (``os._exit``, status 128 + ``signum``). Safe as a ``subprocess`` ``preexec_fn``.
    """
    prctl = _prctl()
    requested = prctl is not None and prctl(_PR_SET_PDEATHSIG, ctypes.c_ulong(int(signum)), 0, 0, 0) == 0
    if os.getppid() != parent_pid:  # checked after the request, so no death can slip in between
        os._exit(128 + int(signum))
    return requested


def parent_death_preexec(signum: int = signal.SIGTERM) -> Callable[[], None]:
    """A ``preexec_fn`` for :class:`subprocess.Popen` whose child gets ``signum`` when this process ends
    (:func:`end_with_parent`, called between fork and exec; the signal survives the exec)."""
    _prctl()  # looked up here, so that the forked child only has to call it
    return partial(end_with_parent, os.getpid(), signum)


@lru_cache(maxsize=1)
def _prctl():
    """libc's prctl, or None off Linux (looked up once: a preexec_fn should not have to load anything)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


def _drain(progress_queue, bar: tqdm, done: dict, started: set) -> None:
    """Move the workers' progress reports onto the bar, and their start reports into ``started``."""
    while True:
        try:
            name, epochs, postfix = progress_queue.get_nowait()
        except queue_module.Empty:
            return
        if name is None:  # (None, pid, "") from a worker that has just started
            started.add(epochs)
            continue
        if postfix:  # before the update, which redraws the bar: else it shows the previous report's metric
            bar.set_postfix_str(f"{name}: {postfix}", refresh=False)
        bar.update(max(0, epochs - done[name]))
        done[name] = max(done[name], epochs)


def _start_worker(progress_queue, stop, threads: int, parent_pid: int, grace_s: float) -> None:
    global _PROGRESS, _STOP
    _PROGRESS, _STOP = progress_queue, stop
    signal.signal(signal.SIGINT, _on_interrupt)
    signal.signal(signal.SIGTERM, _on_terminate)  # before the death signal is requested, so it is handled
    # tqdm's first bar (a job's own, even disabled) would create a multiprocessing lock, a named semaphore the
    # parent's resource tracker then reports as leaked when a worker ends by os._exit (_exit_now); its bars only
    # ever run in this process, so a thread lock does
    tqdm.set_lock(threading.RLock())
    end_with_parent(parent_pid, signal.SIGTERM)
    threading.Thread(target=_watch, args=(parent_pid, threading.get_ident(), grace_s), daemon=True,
                     name="parent-watchdog").start()
    # read by TensorFlow when a job first imports it (importing it here would slow down every worker)
    os.environ["TF_NUM_INTRAOP_THREADS"] = os.environ["TF_NUM_INTEROP_THREADS"] = str(threads)
    silence_startup_notices()
    _put_progress((None, os.getpid(), ""))


@contextmanager
def _signals_held():
    """Run a block out of reach of the signal handlers' KeyboardInterrupt, which is raised once it has ended.
    Raised inside the multiprocessing queue's put (in its ``Condition.notify``) it can lose the wake-up of the
    queue's feeder thread, which then never writes again, and the worker, which joins that thread when it
    exits, never ends: a hang on Ctrl-C of a ``--jobs`` run (seen once here, with SIGINT to the
    whole process group); inside the stop event's ``is_set`` it can leave the shared semaphore taken."""
    global _HELD, _DEFERRED
    _HELD = True
    try:
        yield
    finally:
        _HELD = False
    if _DEFERRED is not None:
        signum, _DEFERRED = _DEFERRED, None
        (_on_interrupt if signum == signal.SIGINT else _on_terminate)(signum, None)


def _put_progress(item) -> None:
    with _signals_held():
        _PROGRESS.put(item)


def _stop_requested() -> bool:
    with _signals_held():
        return _STOP.is_set()


def _watch(parent_pid: int, main_thread: int, grace_s: float) -> None:
    """Worker thread: SIGTERM the main thread when the parent is gone (for when no death signal came), and
    end the worker once a SIGTERM is ``grace_s`` old (a job stuck in a long call or deaf to KeyboardInterrupt)."""
    orphaned_since = None
    while True:
        time.sleep(_WATCH_INTERVAL_S)
        if orphaned_since is None and os.getppid() != parent_pid:
            orphaned_since = time.monotonic()
            if hasattr(signal, "pthread_kill"):  # to the main thread, so a blocking call there is interrupted
                signal.pthread_kill(main_thread, signal.SIGTERM)
            else:
                import _thread

                _thread.interrupt_main(signal.SIGTERM)
        since = [t for t in (orphaned_since, _TERMINATING_SINCE) if t is not None]
        if since and time.monotonic() - min(since) >= grace_s:
            _exit_now()


def _exit_now() -> None:
    """End the worker at once: neither the pool's queues (whose reader may be dead) nor their feeder
    threads are waited for."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError, RuntimeError, AttributeError):  # closed, or a write this signal interrupted
            pass
    os._exit(_TERMINATED)


def _on_interrupt(signum, frame):
    global _INTERRUPTED, _DEFERRED
    if _HELD:
        _DEFERRED = signum
        return
    if _BUSY:
        _INTERRUPTED = True
        raise KeyboardInterrupt


def _on_terminate(signum, frame):
    """SIGTERM: stop the running job as on Ctrl-C (once: a second one would cut its checkpoint short), then
    end; an idle worker ends at once."""
    global _TERMINATING_SINCE, _INTERRUPTED, _DEFERRED
    if _TERMINATING_SINCE is None:
        _TERMINATING_SINCE = time.monotonic()
    if _HELD:  # (the grace period runs from now all the same)
        _DEFERRED = signum
        return
    if not _BUSY:
        _exit_now()
    if not _INTERRUPTED:
        _INTERRUPTED = True
        raise KeyboardInterrupt


def _run_job(target: Callable, name: str, args: tuple):
    global _BUSY, _INTERRUPTED
    if _stop_requested():
        return _Interrupted()
    _INTERRUPTED = False
    _BUSY = True

    def progress(epochs, postfix=""):
        global _INTERRUPTED
        _put_progress((name, int(epochs), postfix))
        if _stop_requested():  # another job failed: stop here as on Ctrl-C (the trainer checkpoints)
            _INTERRUPTED = True
            raise KeyboardInterrupt

    try:
        return target(*args, progress=progress)
    except KeyboardInterrupt:
        if _TERMINATING_SINCE is None:  # (on SIGTERM the parent is gone or stops everything itself)
            with _signals_held():
                _STOP.set()  # the parent may not have seen the Ctrl-C yet
        return _Interrupted()
    finally:
        _BUSY = False
        if _TERMINATING_SINCE is not None:  # the job has stopped (checkpointed); SIGTERM ends the worker
            _exit_now()
