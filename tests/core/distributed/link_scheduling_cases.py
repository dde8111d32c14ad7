"""App C (actor-critic link scheduling) under MPI: cases that trainer_cases.py runs (not collected by pytest).

Every rank builds the same small conflict graphs (a new one drawn per mini-batch, one with an isolated vertex)
and trains :class:`apps.link_scheduling.task.LinkSchedulingTask` on its vertices, the critic at the server on
rank 0; rank 0 also trains the in-process reference and compares, in float64, every logged metric and the
actor's parameters (gathered in global vertex order), the critic's parameters and Adam moments, to rtol 1e-10
/ atol 1e-12, and the logical counts exactly. Cases by P (:data:`CASES`, which test_mpi_trainer.py adds to
its launches):

- P = 2: ``link_scheduling/d-adam`` (the authors' variant, App C's default) and ``link_scheduling/c-adam``
  (a gradient Allreduce), contiguous blocks; ``link_scheduling/app``: ``python -m apps.link_scheduling
  --backend mpi`` against the same flags in-process (C-Adam and D-Adam into one group: metrics.csv,
  summary counts and each optimizer's own messages, config.json's backend); over imperfect links
  (:data:`LINKS`): D-Adam with ``retransmit:2`` and with ``stale`` (each rank's buffer by link), D-SGD with
  ``--eval-under-loss`` (the test ratio over lossy links of the block-diagonal test graph);
- P = 3: ``link_scheduling/d-sgd`` on a METIS partition of the union, ``link_scheduling/resume_across_p/stale``
  (D-SGD over ``stale`` links checkpointed under P ranks and resumed in-process, and the reverse, both ending
  where the uninterrupted in-process run ends: the checkpoint holds the union of the ranks' buffers by link),
  ``link_scheduling/app_validation`` (``--mode authors`` and P > |V| refused on every rank with status 2, rank
  0 alone printing the one line, nothing written), D-SGD over a Gilbert chain and D-AMSGrad under link
  failures (each drawn graph's views restricted and W rebuilt in the program).

Each launch's conflict graphs change per mini-batch, so every mini-batch exchanges along another graph's
edges (:class:`core.distributed.exchange.TensorView`) on the communicator of the union of all of them.
"""

from __future__ import annotations

import io
import json
import shutil
from contextlib import redirect_stderr
from pathlib import Path

import numpy as np

from tests.core.distributed.comparing import ATOL, RTOL, compare_rows, in_process, metrics_rows, wait_for_all

CASES = {2: ["link_scheduling/d-adam", "link_scheduling/c-adam", "link_scheduling/app",
             "link_scheduling/d-adam/retransmit", "link_scheduling/d-adam/stale",
             "link_scheduling/d-sgd/eval"],
         3: ["link_scheduling/d-sgd", "link_scheduling/resume_across_p/stale", "link_scheduling/app_validation",
             "link_scheduling/d-sgd/gilbert", "link_scheduling/d-amsgrad/failure"]}
"""The cases of each launch, by P (trainer_cases.py runs them; test_mpi_trainer.py checks their lines)."""
V, B, MINI_BATCHES = 12, 3, 4
MESSAGES = {"d-adam": 6, "c-adam": 5}  # per rank and mini-batch under 2 ranks (one message per exchange)
LINKS = {"retransmit": dict(loss_prob=0.3, on_loss="retransmit:2"),
         "gilbert": dict(loss_model="gilbert", gilbert_p_gb=0.2, gilbert_p_bg=0.3, gilbert_loss_good=0.05,
                         gilbert_loss_bad=0.7),
         "stale": dict(loss_prob=0.3, on_loss="stale"),
         "failure": dict(loss_prob=0.1, link_failure=0.25, on_loss="stale"),
         "eval": dict(loss_prob=0.2, link_failure=0.1, on_loss="stale", eval_under_loss=True)}
"""Link models of the lossy cases (``link_scheduling/<optimizer>/<links>``): the same packets are dropped under
MPI (the drop stream is keyed by global vertex ids), so the runs are equal to the in-process ones."""


def problem():
    """3 training graphs (the first with an isolated vertex) and 2 test graphs of 12 vertices, 4 weight samples."""
    rng = np.random.default_rng(11)

    def er(p):
        upper = np.triu(rng.random((V, V)) < p, 1)
        return upper | upper.T

    train = np.stack([er(0.3), er(0.2), er(0.45)])
    train[0, 5, :] = train[0, :, 5] = False
    test = np.stack([er(0.25), er(0.4)])
    return train, test, rng.random((2, 4, V))


def make_task(data, backend=None):
    import tensorflow as tf

    from apps.link_scheduling.task import LinkSchedulingTask

    train, test, weights = data
    return LinkSchedulingTask(train, test, weights, batch_size=B, critic_lr=3e-3, seed=4, dtype=tf.float64,
                              backend=backend)


def make_trainer(task, name: str, run=None, epochs: int = MINI_BATCHES, links: str | None = None):
    from apps.link_scheduling.experiment import make_actor_optimizer
    from core.links import LinkSetup
    from core.optimizers import LearningRate
    from core.trainer import RandomGraphs, Trainer, TrainerConfig

    config = TrainerConfig(epochs=epochs, batch_size=B, seed=9, checkpoint_every=1, jit=False, quiet=True,
                           unit="mini-batch")
    setup = None if links is None else LinkSetup.from_flags(5, **LINKS[links])
    return Trainer(task, make_actor_optimizer(name, "algorithm1"), LearningRate(3e-3), RandomGraphs(task.draw_graph),
                   config, run, links=setup)


def mpi_backend(data, size: int, method: str):
    from apps.link_scheduling.task import union_graph
    from core.backend import MPIBackend
    from core.distributed.partition import partition

    union = union_graph(data[0], data[1])
    return MPIBackend(partition(union, size, method), [union], partition=method)


def compare_state(name: str, theta, task, ref_theta, ref_task) -> None:
    np.testing.assert_allclose(theta, ref_theta, rtol=RTOL, atol=ATOL, err_msg=f"{name}: actor parameters")
    got, want = task.state_arrays(), ref_task.state_arrays()
    assert set(got) == set(want)
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=RTOL, atol=ATOL, err_msg=f"{name}: critic {k}")


def gathered(backend, trainer):
    theta = trainer.theta.numpy()
    return theta if trainer.optimizer.centralized else backend.gather_rows(theta)


_REFERENCE: dict = {}


def reference(data, name: str, links: str | None = None):
    """Rank 0: the uninterrupted in-process run of ``name`` (result, actor parameters, task), computed once."""
    if (name, links) not in _REFERENCE:
        task = make_task(data)
        trainer = make_trainer(task, name, links=links)
        _REFERENCE[name, links] = (trainer.run(), trainer.theta.numpy(), task)
    return _REFERENCE[name, links]


def equal_to_in_process(data, rank: int, size: int, comm, name: str, method: str, links: str | None = None) -> str:
    case = f"link_scheduling/{name}" + ("" if links is None else f"/{links}")
    backend = mpi_backend(data, size, method)
    task = make_task(data, backend)
    trainer = make_trainer(task, name, links=links)
    result = trainer.run()
    theta = gathered(backend, trainer)
    if rank == 0:
        ref, ref_theta, ref_task = reference(data, name, links)
        compare_rows(case, result.rows, ref.rows)
        compare_state(case, theta, task, ref_theta, ref_task)
        counts = ("mp_rounds_per_batch", "floats_sent_per_node_per_batch", "largest_message", "mp_rounds")
        if links is not None:  # the same packets lost (and retransmitted) as in-process
            counts += ("packet_loss_rate", "residual_loss_rate", "extra_rounds", "link_failure_rate")
            assert result.summary["packet_loss_rate"] > 0.05, result.summary
            assert (result.summary["link_failure_rate"] > 0) == ("link_failure" in LINKS[links]), result.summary
        for k in counts:
            assert result.summary[k] == ref.summary[k], (k, result.summary[k], ref.summary[k])
        assert result.summary["mpi_ranks"] == size
        # on the wire: 3 forward, 2 backward (the tape's), 1 consensus
        if size == 2 and name in MESSAGES and links is None:
            assert result.summary["mpi_messages_sent_per_batch"] == [MESSAGES[name]] * 2, result.summary
        print(f"COUNTS {case} bytes/batch={result.summary['mpi_bytes_sent_per_batch']} "
              f"messages/batch={result.summary['mpi_messages_sent_per_batch']}", flush=True)
    wait_for_all(comm)
    return case


def resume_across_p(data, out: Path, rank: int, size: int, comm, name: str, method: str,
                    links: str | None = None) -> str:
    """P ranks checkpoint 2 of 4 mini-batches, rank 0 resumes them in-process; in-process checkpoints 1, the
    P ranks resume it. Both end where the uninterrupted in-process run ends (actor, critic and metrics).
    Over ``stale`` links the checkpoint holds the buffer by link: the union of the ranks' (each has the links it
    receives on), taken apart again by the resuming ranks."""
    from core.runs import RunDir

    mpi_dir, local_dir = out / f"ls_mpi_ckpt_p{size}", out / f"ls_local_ckpt_p{size}"
    ref = None
    if rank == 0:
        for d in (mpi_dir, local_dir):
            shutil.rmtree(d, ignore_errors=True)
        result, theta, task = reference(data, name, links)
        ref = (result.rows, theta, task)
    backend = mpi_backend(data, size, method)
    make_trainer(make_task(data, backend), name, RunDir(mpi_dir) if rank == 0 else None,
                 links=links).run(until_epoch=2)
    if rank == 0:
        if links == "stale":  # the buffer by link went into the checkpoint
            with np.load(RunDir(mpi_dir, create=False).checkpoint_path) as saved:
                assert any(k.startswith("array/links/stale_links/") for k in saved.files), saved.files
        task = make_task(data)
        trainer = make_trainer(task, name, RunDir(mpi_dir), links=links)
        compare_rows("resume mpi->local", trainer.run(resume=True).rows, ref[0])
        compare_state("resume mpi->local", trainer.theta.numpy(), task, ref[1], ref[2])
        make_trainer(make_task(data), name, RunDir(local_dir), links=links).run(until_epoch=1)
    wait_for_all(comm)
    task = make_task(data, backend)
    trainer = make_trainer(task, name, RunDir(local_dir, create=False) if rank == 0 else None, links=links)
    rows = trainer.run(resume=True).rows
    theta = gathered(backend, trainer)
    if rank == 0:
        assert rows[1]["epoch"] == 1 and len(rows) == MINI_BATCHES + 1, rows
        compare_rows("resume local->mpi", rows, ref[0])
        compare_state("resume local->mpi", theta, task, ref[1], ref[2])
    wait_for_all(comm)
    return "link_scheduling/resume_across_p" + ("" if links is None else f"/{links}")


# ---------------------------------------------------------------------------- the app
def app_case(out: Path, rank: int, size: int, comm) -> str:
    """``apps.link_scheduling --backend mpi`` (rank 0 writes the run) against the same flags in-process."""
    from apps.link_scheduling import experiment as ex
    from datasets.conflict_graphs import ConflictGraphsConfig, generate

    data = out / "ls_tiny.h5"
    if rank == 0 and not data.exists():
        generate(ConflictGraphsConfig(vertices=V, min_degree=1.0, max_degree=5.0, train_graphs=3, test_graphs=2,
                                      test_samples=4, seed=3), data)
    wait_for_all(comm)
    mpi_dir, local_dir = out / f"ls_app_mpi_p{size}", out / f"ls_app_local_p{size}"
    argv = ["--data", str(data), "--optimizer", "c-adam,d-adam", "--batch-size", str(B), "--mini-batches", "2",
            "--dtype", "float64", "--checkpoint-every", "1", "-q", "--seed", "2", "--jobs", "1"]  # no forks under MPI
    assert ex.main([*argv, "--backend", "mpi", "--out", str(mpi_dir)]) == 0
    if rank == 0:
        assert in_process(ex, [*argv, "--out", str(local_dir)]) == 0
        assert json.loads((mpi_dir / "config.json").read_text())["grouped"] is True
        assert set(json.loads((mpi_dir / "summary.json").read_text())) == {"c-adam", "d-adam"}
        for name in ("c-adam", "d-adam"):
            got, want = _metrics(mpi_dir / name), _metrics(local_dir / name)
            assert len(got) == len(want) == 3, (len(got), len(want))
            compare_rows(f"link_scheduling/app/{name}", got, want)
            s_mpi, s_loc = (json.loads((d / name / "summary.json").read_text()) for d in (mpi_dir, local_dir))
            for k in ("mp_rounds_per_batch", "floats_sent_per_node_per_batch", "mp_rounds", "floats_sent_per_node"):
                assert s_mpi[k] == s_loc[k], (k, s_mpi[k], s_loc[k])
            np.testing.assert_allclose(s_mpi["untrained_test_ratio"], s_loc["untrained_test_ratio"], rtol=RTOL)
            # each optimizer's own exchanges (the backend serves both)
            assert s_mpi["mpi_messages_sent_per_batch"] == [MESSAGES[name]] * size, s_mpi
            backend = json.loads((mpi_dir / name / "config.json").read_text())["backend"]
            assert backend["backend"] == "mpi" and backend["ranks"] == size, backend
            assert backend["partition"] == "contiguous" and isinstance(backend["edge_cut"], int), backend
            assert json.loads((local_dir / name / "config.json").read_text())["backend"]["backend"] == "local"
            assert (mpi_dir / name / "learning_curve.png").is_file()
        print(f"APP link_scheduling P={size} bytes/batch={s_mpi['mpi_bytes_sent_per_batch']} "
              f"edge_cut={backend['edge_cut']}/{backend['num_edges']}", flush=True)
    wait_for_all(comm)
    return "link_scheduling/app"


def app_validation(out: Path, rank: int, size: int, comm) -> str:
    """Refused on every rank with status 2 (rank 0 alone prints the line), nothing written: ``--mode authors``
    under MPI, more ranks than vertices."""
    from apps.link_scheduling import experiment as ex
    from datasets.conflict_graphs import ConflictGraphsConfig, generate

    data = out / "ls_two_vertices.h5"
    if rank == 0 and not data.exists():
        generate(ConflictGraphsConfig(vertices=2, min_degree=0.0, max_degree=1.0, train_graphs=2, test_graphs=1,
                                      test_samples=2, seed=0), data)
    wait_for_all(comm)
    for extra, needle in ((["--mode", "authors"], "--mode authors does not run on --backend mpi"),
                          ([], f"--backend mpi: {size} ranks for conflict graphs of 2 vertices")):
        target = out / f"ls_refused_p{size}"
        err = io.StringIO()
        with redirect_stderr(err):
            status = ex.main(["--data", str(data), "--backend", "mpi", "--batch-size", "2", "-q", *extra,
                              "--out", str(target)])
        assert status == 2, (extra, status)
        text = err.getvalue()
        if rank == 0:
            assert needle in text and text.count("\n") == 1, text
        else:
            assert text == "", text
        assert not target.exists()
    wait_for_all(comm)
    return "link_scheduling/app_validation"


def _metrics(path: Path) -> list[dict]:
    return metrics_rows(path / "metrics.csv")


def run(out: Path, rank: int, size: int, comm, ok) -> None:
    """The cases of :data:`CASES` for this P (contiguous blocks under 2 ranks, METIS under 3); ``ok(name)``
    reports each passed case."""
    data, method = problem(), "contiguous" if size == 2 else "metis"
    for case in CASES.get(size, []):
        what = case.split("/")[1]
        links = case.split("/")[2] if case.count("/") == 2 else None
        if what == "app":
            ok(app_case(out, rank, size, comm))
        elif what == "app_validation":
            ok(app_validation(out, rank, size, comm))
        elif what == "resume_across_p":  # D-SGD on METIS
            ok(resume_across_p(data, out, rank, size, comm, "d-sgd", method, links))
        else:
            ok(equal_to_in_process(data, rank, size, comm, what, method, links))
