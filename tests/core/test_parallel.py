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


def test_jobs_run_in_workers_and_come_back_in_order():
    results = run_jobs(square_in_worker, {"c": (3,), "a": (1,), "b": (2,)}, workers=2, total=6, quiet=True)
    assert list(results) == ["c", "a", "b"]
    assert [r[0] for r in results.values()] == [9, 1, 4]
    pids = {r[1] for r in results.values()}
    assert os.getpid() not in pids and 1 <= len(pids) <= 2
    threads = max(1, (os.cpu_count() or 1) // 2)
    assert {r[2] for r in results.values()} == {str(threads)}


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
