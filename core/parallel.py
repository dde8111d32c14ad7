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
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue as queue_module
import signal
from collections.abc import Callable, Mapping
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

from tqdm import tqdm

_PROGRESS = None  # the worker's end of the parent's progress queue
_STOP = None  # set once Ctrl-C was pressed: jobs that have not started yet are skipped
_BUSY = False  # whether the worker is running a job (Ctrl-C interrupts only jobs, not idle workers)


class _Interrupted:
    """What a worker returns for a job stopped by Ctrl-C."""


def default_workers(num_jobs: int) -> int:
    """One worker per core, no more than there are jobs."""
    return max(1, min(num_jobs, os.cpu_count() or 1))


def run_jobs(target: Callable, jobs: Mapping[str, tuple], workers: int, *, total: int, desc: str = "",
             quiet: bool = False) -> dict:
    """Run ``target(*args, progress=...)`` for every ``name: args`` of ``jobs``; return results by name.

    Args:
        target: a module-level function (it is pickled by reference for the workers).
        jobs: the arguments of each job, by job name (results come back in this order).
        workers: processes to use; 1 (or a single job) runs everything here, in order.
        total: epochs of all jobs together (the length of the shared progress bar).
        desc: label of the progress bar.
        quiet: no progress bar.
    """
    if workers <= 1 or len(jobs) <= 1:
        return {name: target(*args, progress=None) for name, args in jobs.items()}
    context = mp.get_context("spawn")
    progress_queue, stop = context.Queue(), context.Event()
    threads = max(1, (os.cpu_count() or 1) // workers)
    bar = tqdm(total=total, desc=desc, unit="epoch", disable=quiet, dynamic_ncols=True)
    done = dict.fromkeys(jobs, 0)
    results = {}
    pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_start_worker,
                               initargs=(progress_queue, stop, threads))
    try:
        futures = {pool.submit(_run_job, target, name, args): name for name, args in jobs.items()}
        pending = set(futures)
        while pending:
            finished, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
            _drain(progress_queue, bar, done)
            for future in finished:
                results[futures[future]] = future.result()  # a worker's exception is raised here
    except BaseException:
        stop.set()  # queued jobs are skipped; running ones checkpoint at their next epoch (or on their Ctrl-C)
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    finally:
        pool.shutdown(wait=True)
        _drain(progress_queue, bar, done)
        bar.close()
    if any(isinstance(r, _Interrupted) for r in results.values()):
        raise KeyboardInterrupt
    return {name: results[name] for name in jobs}


def _drain(progress_queue, bar: tqdm, done: dict) -> None:
    """Move the workers' progress reports onto the bar."""
    while True:
        try:
            name, epochs, postfix = progress_queue.get_nowait()
        except queue_module.Empty:
            return
        bar.update(max(0, epochs - done[name]))
        done[name] = max(done[name], epochs)
        if postfix:
            bar.set_postfix_str(f"{name}: {postfix}", refresh=False)


def _start_worker(progress_queue, stop, threads: int) -> None:
    global _PROGRESS, _STOP
    _PROGRESS, _STOP = progress_queue, stop
    signal.signal(signal.SIGINT, _on_interrupt)
    # read by TensorFlow when a job first imports it (importing it here would slow down every worker)
    os.environ["TF_NUM_INTRAOP_THREADS"] = os.environ["TF_NUM_INTEROP_THREADS"] = str(threads)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _on_interrupt(signum, frame):
    if _BUSY:
        raise KeyboardInterrupt


def _run_job(target: Callable, name: str, args: tuple):
    global _BUSY
    if _STOP.is_set():
        return _Interrupted()
    _BUSY = True

    def progress(epochs, postfix=""):
        _PROGRESS.put((name, int(epochs), postfix))
        if _STOP.is_set():  # another job failed: stop here as on Ctrl-C (the trainer checkpoints)
            raise KeyboardInterrupt

    try:
        return target(*args, progress=progress)
    except KeyboardInterrupt:
        _STOP.set()  # the parent may not have seen the Ctrl-C yet
        return _Interrupted()
    finally:
        _BUSY = False
