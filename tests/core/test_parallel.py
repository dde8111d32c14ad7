"""core.parallel: jobs run in worker processes, report progress, return results in order, pass on errors."""

import os

import pytest

from core.parallel import default_workers, run_jobs


def square_in_worker(x, progress=None):
    """A job: reports two epochs and returns its input squared with the process and thread settings."""
    if progress is not None:
        progress(1, f"x={x}")
        progress(2)
    return x * x, os.getpid(), os.environ.get("TF_NUM_INTRAOP_THREADS")


def fail_in_worker(x, progress=None):
    raise ValueError(f"bad job {x}")


def tqdm_lock_in_worker(x, progress=None):
    """A job: draws a (disabled) bar, as a trainer does, and returns the kind of tqdm's write lock."""
    from tqdm import tqdm

    tqdm(total=1, disable=True).close()
    return type(tqdm.get_lock()).__module__, type(tqdm.get_lock()).__name__


def test_jobs_run_in_workers_and_come_back_in_order():
    results = run_jobs(square_in_worker, {"c": (3,), "a": (1,), "b": (2,)}, workers=2, total=6, quiet=True)
    assert list(results) == ["c", "a", "b"]
    assert [r[0] for r in results.values()] == [9, 1, 4]
    pids = {r[1] for r in results.values()}
    assert os.getpid() not in pids and 1 <= len(pids) <= 2
    threads = max(1, (os.cpu_count() or 1) // 2)
    assert {r[2] for r in results.values()} == {str(threads)}


def test_workers_bars_take_no_named_semaphore():
    """tqdm's default lock is a multiprocessing one, a named semaphore: a worker ended by os._exit (its grace
    ran out) would leave it to the parent's resource tracker, which warns of a leak on every interrupted
    ``--jobs`` run. Workers use a thread lock."""
    results = run_jobs(tqdm_lock_in_worker, {"a": (0,), "b": (1,)}, workers=2, total=2, quiet=True)
    assert set(results.values()) == {("_thread", "RLock")}


def test_a_resumed_group_s_bar_starts_at_the_epochs_already_done(capsys):
    run_jobs(square_in_worker, {"a": (1,), "b": (2,)}, workers=2, total=8, initial={"a": 1, "b": 2}, desc="t")
    frames = capsys.readouterr().err.replace("\r", "\n").splitlines()
    counts = [line.split("|")[2].split()[0] for line in frames if line.startswith("t:") and line.count("|") >= 2]
    assert counts[0] == "3/8"  # not 0/8: a's epoch 1 and b's 2 were done before the resume
    assert counts[-1] == "4/8"  # both jobs then report epochs 1 and 2: only a's epoch 2 is new


def test_one_worker_runs_here_without_a_progress_report():
    results = run_jobs(square_in_worker, {"a": (4,), "b": (5,)}, workers=1, total=4, quiet=True)
    assert {k: (v[0], v[1]) for k, v in results.items()} == {"a": (16, os.getpid()), "b": (25, os.getpid())}


def test_a_worker_error_is_raised_in_the_parent():
    with pytest.raises(ValueError, match="bad job [78]"):
        run_jobs(fail_in_worker, {"x": (7,), "y": (8,)}, workers=2, total=2, quiet=True)


def test_default_workers_is_at_most_the_cores_and_the_jobs():
    assert default_workers(1) == 1
    assert 1 <= default_workers(100) == min(100, os.cpu_count() or 1)


def slow_job_until_stopped(x, progress=None):
    """Reports epochs until told to stop (by the KeyboardInterrupt its progress report raises)."""
    import time

    for epoch in range(1, 600):
        time.sleep(0.05)
        progress(epoch)
    return "finished"


def test_a_failed_job_stops_the_running_ones_at_their_next_epoch():
    import time

    start = time.perf_counter()
    with pytest.raises(ValueError, match="bad job 1"):
        run_jobs(_dispatch, {"slow": ("slow",), "bad": ("bad",)}, workers=2, total=2, quiet=True)
    assert time.perf_counter() - start < 20  # the slow job would take 30 s on its own


def _dispatch(kind, progress=None):
    if kind == "bad":
        import time

        time.sleep(1.0)  # let the slow job start
        return fail_in_worker(1)
    return slow_job_until_stopped(0, progress)


# ---------------------------------------------------------------------------- workers never outlive the parent
def stoppable_job(folder, kind, progress=None):
    """A job for the process tests (no TensorFlow, so workers start fast). It records ``<kind>.<pid>.pid``
    in ``folder``, then by ``kind``: "quick" returns; "loop" reports epochs until a KeyboardInterrupt,
    which it records as ``<kind>.<pid>.interrupted`` (where the trainer checkpoints); "deaf" ignores
    KeyboardInterrupt for good; "dies" SIGKILLs its own worker once a "loop" job runs."""
    import signal
    import time
    from pathlib import Path

    folder = Path(folder)
    (folder / f"{kind}.{os.getpid()}.pid").write_text("")
    if kind == "quick":
        return kind
    if kind == "dies":
        _wait_for(lambda: list(folder.glob("loop.*.pid")), 10)
        os.kill(os.getpid(), signal.SIGKILL)
    try:
        for epoch in range(1, 10**6):
            try:
                time.sleep(0.05)
            except KeyboardInterrupt:
                if kind == "deaf":
                    continue
                raise
            progress(epoch)
    except KeyboardInterrupt:
        (folder / f"{kind}.{os.getpid()}.interrupted").write_text("")
        raise


def _wait_for(condition, seconds):
    import time

    deadline = time.monotonic() + seconds
    while not (found := condition()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return found


def _alive(pid):
    """Whether ``pid`` is a live process (a zombie, dead but not yet reaped by its new parent, is not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (FileNotFoundError, ProcessLookupError):
        return False


def _children(pid):
    """The pids whose parent is ``pid``."""
    found = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/stat") as f:
                if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry))
        except (FileNotFoundError, ProcessLookupError):  # ended meanwhile
            pass
    return found


linux_only = pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="reads /proc")


@linux_only
def test_workers_end_soon_after_their_parent_is_killed(tmp_path):
    """kill -9 of the parent: a working worker stops its job as on Ctrl-C (its trainer would checkpoint), an
    idle one ends at once, one deaf to KeyboardInterrupt ends when TERMINATE_GRACE_S (1.5 s here) is up."""
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    script = (
        "import sys; sys.path[:0] = [sys.argv[1], sys.argv[2]]\n"
        "import core.parallel as parallel, test_parallel as t\n"
        "parallel.TERMINATE_GRACE_S = 1.5\n"
        "jobs = {kind: (sys.argv[3], kind) for kind in ('quick', 'loop', 'deaf')}\n"
        "parallel.run_jobs(t.stoppable_job, jobs, 3, total=3, quiet=True)\n")
    root = Path(__file__).resolve().parents[2]
    parent = subprocess.Popen([sys.executable, "-c", script, str(root), str(Path(__file__).parent), str(tmp_path)],
                              stderr=subprocess.DEVNULL)
    try:
        assert _wait_for(lambda: len(list(tmp_path.glob("*.pid"))) == 3, 30), "the jobs did not start"
        processes = _wait_for(lambda: c if len(c := _children(parent.pid)) >= 4 else [], 10)
        assert len(processes) >= 4  # three workers and multiprocessing's resource tracker
    finally:
        parent.send_signal(signal.SIGKILL)
        parent.wait()
    killed = time.monotonic()
    gone = _wait_for(lambda: not any(_alive(p) for p in processes), 10)
    assert gone, f"still running 10 s after the parent was killed: {[p for p in processes if _alive(p)]}"
    assert time.monotonic() - killed < 10
    assert len(list(tmp_path.glob("loop.*.interrupted"))) == 1  # stopped through KeyboardInterrupt


@linux_only
def test_end_with_parent_requests_the_death_signal_and_ends_a_process_already_orphaned():
    """The race where the parent dies before the request: a process whose parent pid is not the recorded
    one ends at once, with SIGTERM's status, and runs nothing more."""
    import subprocess
    import sys
    from pathlib import Path

    code = "import sys; from core.parallel import end_with_parent; print(end_with_parent(int(sys.argv[1])))"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    kept = subprocess.run([sys.executable, "-c", code, str(os.getpid())], capture_output=True, text=True, env=env)
    assert (kept.returncode, kept.stdout) == (0, "True\n")  # the parent is this process: requested, goes on
    orphan = subprocess.run([sys.executable, "-c", code, str(os.getpid() + 10**6)], capture_output=True, text=True,
                            env=env)
    assert (orphan.returncode, orphan.stdout) == (143, "")


def test_a_worker_killed_mid_job_fails_the_pool_and_the_others_stop_through_their_checkpoint(tmp_path):
    """One worker dies (SIGKILL, as the out-of-memory killer would): run_jobs raises BrokenProcessPool soon,
    rather than waiting forever, and the other job stops as on Ctrl-C (through its checkpoint) first."""
    import time
    from concurrent.futures.process import BrokenProcessPool

    start = time.monotonic()
    with pytest.raises(BrokenProcessPool):
        run_jobs(stoppable_job, {"loop": (str(tmp_path), "loop"), "dies": (str(tmp_path), "dies")}, workers=2,
                 total=2, quiet=True)
    assert time.monotonic() - start < 15
    assert len(list(tmp_path.glob("loop.*.interrupted"))) == 1


def test_an_mpi_rank_runs_its_jobs_here():
    """Workers of an MPI rank would break Open MPI's shared-memory transport: the jobs run in the rank itself."""
    pytest.importorskip("mpi4py")
    import subprocess
    import sys

    script = """
import os
from mpi4py import MPI  # starts MPI: this process is a (single) rank
from core.parallel import run_jobs

def pid(progress=None):
    return os.getpid()

print(set(run_jobs(pid, {"a": (), "b": ()}, 2, total=2, quiet=True).values()) == {os.getpid()})
"""
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=repo)
    assert out.stdout.strip().splitlines()[-1:] == ["True"], out.stderr


def _worker_threads(progress=None):
    return os.environ.get("TF_NUM_INTRAOP_THREADS")


def test_workers_get_the_thread_count_asked_for():
    assert set(run_jobs(_worker_threads, {"a": (), "b": ()}, 2, total=2, quiet=True, threads=3).values()) == {"3"}
    default = str(max(1, (os.cpu_count() or 1) // 2))
    assert set(run_jobs(_worker_threads, {"a": (), "b": ()}, 2, total=2, quiet=True).values()) == {default}


def test_a_signal_inside_a_held_block_interrupts_once_the_block_is_done(monkeypatch):
    """A worker's Ctrl-C arriving while it puts a progress report on the queue (where a KeyboardInterrupt can
    lose the wake-up of the queue's feeder thread, and the worker then never exits) is raised after the put."""
    import signal

    from core import parallel

    monkeypatch.setattr(parallel, "_BUSY", True)
    monkeypatch.setattr(parallel, "_INTERRUPTED", False)
    done = []
    with pytest.raises(KeyboardInterrupt):
        with parallel._signals_held():
            parallel._on_interrupt(signal.SIGINT, None)  # as the handler would run here: nothing raised yet
            done.append("the block ran to its end")
    assert done == ["the block ran to its end"] and parallel._INTERRUPTED and parallel._DEFERRED is None
    with parallel._signals_held():  # without a signal: nothing happens
        pass


def test_an_interrupted_shutdown_hurries_the_workers_and_still_waits_for_the_pool(monkeypatch):
    import multiprocessing as mp
    import signal

    from core import parallel

    class Pool:  # a shutdown that two Ctrl-Cs cut short before it completes
        calls = 0

        def shutdown(self, wait, cancel_futures=False):
            Pool.calls += 1
            if Pool.calls <= 2:
                raise KeyboardInterrupt

    class Child:
        pid = 4242

    sent = []
    monkeypatch.setattr(mp, "active_children", lambda: [Child()])
    monkeypatch.setattr(parallel.os, "kill", lambda pid, signum: sent.append((pid, signum)))
    with pytest.raises(KeyboardInterrupt):
        parallel.shutdown_pool(Pool(), cancel_futures=True)
    assert Pool.calls == 3 and sent == [(4242, signal.SIGTERM), (4242, signal.SIGKILL)]
    parallel.shutdown_pool(Pool())  # not interrupted: returns quietly
