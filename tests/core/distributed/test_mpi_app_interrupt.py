"""Apps B and C under ``mpiexec``: SIGTERM to one rank stops every rank at an agreed epoch with status 130, and
the run resumes with another number of processes (in-process) to the numbers of an uninterrupted run.

One launch per app: ``mpiexec -n 2 python -m apps.<app> --backend mpi`` on a small problem in float64, with far
more epochs than run before the signal, gets SIGTERM on rank 1 (the rank that writes nothing) once its first
periodic checkpoint is written; meanwhile this process trains the same flags in-process, uninterrupted. The job
must end within 30 s with status 130, rank 0 printing its ``--resume`` line once, and the run directory must
keep a checkpoint of the stop epoch with metrics.csv's rows up to it (equal to the uninterrupted run's first
rows) and no summary.json. ``--resume`` in this process (the saved flags: ``--backend mpi`` without mpiexec
runs with P = 1) must then end with the uninterrupted run's metrics.csv and summary.json (rtol 1e-10, atol
1e-12, counts exactly).

Rank 0's metrics.csv writes take 0.5 s more in the job (slow_root/sitecustomize.py, as on a slow disk): a rank
that ended the job as soon as it stopped, without waiting for rank 0's last writes, would cut them off here
every time (:func:`apps.common.backend.run_on_world` waits for them).
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("mpi4py", reason="the MPI backend needs mpi4py (requirements.txt)")

from apps.link_scheduling import experiment as link_scheduling  # noqa: E402
from apps.power_allocation import experiment as power_allocation  # noqa: E402
from core.distributed.launch import find_mpiexec, mpi_environment  # noqa: E402
from core.runs import RunDir  # noqa: E402
from tests.core.distributed.comparing import ATOL, RTOL, compare_rows, metrics_rows  # noqa: E402
from tests.core.distributed.launching import REPO, kill_group, launch, sigterm_one_rank  # noqa: E402

STOP_BOUND_S = 30
CHECKPOINT_EVERY = 4
SLOW_ROOT_WRITES_S = 0.5
SUMMARY_DIFFERS = {"wall_s"}
"""summary.json entries that may differ between the resumed and the uninterrupted run (wall-clock)."""


@dataclass(frozen=True)
class App:
    experiment: object  # the app's experiment module (main, PROG)
    flags: tuple[str, ...]  # everything but --data, --backend and --out
    epochs: int  # far more than run before the signal: ~0.1 s (B) and ~0.04 s (C) each under MPI here

    @property
    def module(self) -> str:
        return self.experiment.__name__.rsplit(".", 1)[0]


APPS = {
    # 7 pairs (ranks of 4 and 3), 2 training batches of 4 samples per epoch, one unfolded layer
    "power_allocation": App(power_allocation, (
        "--optimizer", "d-adam", "--consensus-rounds", "2", "--layers", "1", "--hidden", "3",
        "--wmmse-iterations", "20", "--seed", "4", "--no-jit"), epochs=200),
    # 12 vertices, a training graph drawn per mini-batch of 3 weight samples; the critic on rank 0
    "link_scheduling": App(link_scheduling, ("--optimizer", "d-adam", "--batch-size", "3", "--seed", "2"), epochs=300),
}


def make_data(app: str, path: Path) -> Path:
    if app == "power_allocation":
        from datasets import power_allocation as pa

        pa.generate(pa.PowerAllocationConfig(pairs=7, batch_size=4, layouts=1, batches_per_layout=2, test_batches=1,
                                             area=400.0, seed=1), path)
    else:
        from datasets.conflict_graphs import ConflictGraphsConfig, generate

        generate(ConflictGraphsConfig(vertices=12, min_degree=1.0, max_degree=5.0, train_graphs=3, test_graphs=2,
                                      test_samples=4, seed=3), path)
    return path


def compare_summaries(got: dict, want: dict) -> None:
    assert set(got) == set(want), set(got) ^ set(want)
    for k, v in want.items():
        if k in SUMMARY_DIFFERS:
            continue
        if isinstance(v, float):
            np.testing.assert_allclose(got[k], v, rtol=RTOL, atol=ATOL, err_msg=k)
        else:
            assert got[k] == v, (k, got[k], v)


@pytest.fixture
def tf_threads_restored():
    """A resume sets TF_NUM_INTRAOP_THREADS to the run's recorded count (apps.common.main.reuse_threads): not for
    the tests after this one."""
    saved = {k: os.environ.get(k) for k in ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS")}
    yield
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.mark.parametrize("name", list(APPS))
def test_sigterm_to_one_rank_stops_all_and_the_run_resumes_in_process(name, tmp_path, tf_threads_restored):
    try:
        find_mpiexec()
    except FileNotFoundError as err:
        pytest.skip(str(err))
    app = APPS[name]
    data = make_data(name, tmp_path / "data.h5")
    flags = ["--data", str(data), *app.flags, "--epochs" if name == "power_allocation" else "--mini-batches",
             str(app.epochs), "--checkpoint-every", str(CHECKPOINT_EVERY), "--dtype", "float64", "-q"]
    run, fresh = tmp_path / "run", tmp_path / "fresh"
    path = [str(Path(__file__).with_name("slow_root")), str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = mpi_environment({**os.environ, "FDTRAIN_TEST_SLOW_ROOT_WRITES": str(SLOW_ROOT_WRITES_S),
                           "PYTHONPATH": os.pathsep.join(path)})
    proc, log = launch("-m", 2, tmp_path, app.module, *flags, "--backend", "mpi", "--out", str(run), env=env)
    with ThreadPoolExecutor(1) as pool:
        # the signal once the first checkpoint is written; this process trains the uninterrupted run meanwhile
        stopping = pool.submit(sigterm_one_rank, proc, log, (run / "metrics.csv").is_file, app.module, 2,
                               stop_timeout_s=STOP_BOUND_S)
        try:
            assert app.experiment.main([*flags, "--out", str(fresh)]) == 0
            stop_s = stopping.result()
        finally:
            kill_group(proc)
    text = log.read_text(errors="replace")
    assert proc.returncode == 130, f"status {proc.returncode}:\n{text}"
    assert stop_s < STOP_BOUND_S, text
    assert text.count(f"{app.experiment.PROG}: interrupted; continue with --resume {run}") == 1, text
    assert "Traceback" not in text, text
    assert json.loads((run / "config.json").read_text())["backend"]["ranks"] == 2

    # the stop epoch: checkpointed, its rows kept (those of the uninterrupted run), no summary yet
    rows, want = metrics_rows(run / "metrics.csv"), metrics_rows(fresh / "metrics.csv")
    stopped_at = rows[-1]["epoch"]
    assert [r["epoch"] for r in rows] == list(range(stopped_at + 1))
    assert CHECKPOINT_EVERY <= stopped_at < app.epochs, stopped_at
    assert RunDir(run, create=False).load_checkpoint()[1]["epoch"] == stopped_at
    assert not (run / "summary.json").exists()
    compare_rows(f"{name}: interrupted under MPI", rows, want[:len(rows)])

    # resumed in-process (P = 1 instead of 2) to the end: the uninterrupted run's numbers
    assert app.experiment.main(["--resume", str(run), "-q"]) == 0
    compare_rows(f"{name}: resumed in-process", metrics_rows(run / "metrics.csv"), want)
    compare_summaries(json.loads((run / "summary.json").read_text()), json.loads((fresh / "summary.json").read_text()))
