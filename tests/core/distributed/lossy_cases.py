"""Training over imperfect links under ``mpiexec -n P`` (run by tests/core/distributed/test_mpi_lossy.py; not
collected by pytest).

Every rank trains a :class:`core.trainer.Trainer` with a :class:`core.links.LinkSetup` on its part of the BA
graph of trainer_cases.py (METIS); each rank draws the links of its view's entries (those it receives on, and,
for the reverse exchanges whose contributions it computes, those it sends on), so the ranks must drop exactly
the packets one process drops. Rank 0 also trains the in-process reference and compares, in float64, the
parameters (gathered in global node order) and every logged metric to rtol 1e-10 / atol 1e-12, the counts
(rounds with the retransmissions, floats) exactly. Then a checkpoint under P ranks (Gilbert chains, the stale
buffer) resumes in-process, and an in-process checkpoint resumes under P ranks, both ending where the
uninterrupted in-process run ends. Each passed case prints ``CASE <name> rank=<r> OK``; the run ends with
``DONE rank=<r>``.

    .venv/bin/mpiexec --oversubscribe -n 3 .venv/bin/python tests/core/distributed/lossy_cases.py --out /tmp/x
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from trainer_cases import (  # noqa: E402  (installs the abort-on-exception hook, sets up TensorFlow and MPI)
    COMM,
    COUNTS,
    RANK,
    ba_with_isolated_node,
    compare,
    gathered,
    make_task,
    ok,
    wait_for_all,
)

from core.backend import LocalBackend, MPIBackend  # noqa: E402
from core.links import LinkSetup  # noqa: E402
from core.optimizers import LearningRate, make_optimizer  # noqa: E402
from core.runs import RunDir  # noqa: E402
from core.trainer import LINK_COLUMNS, Trainer, TrainerConfig  # noqa: E402

SETUPS = {
    "zero": dict(loss_prob=0.3),
    "stale": dict(loss_prob=0.25, on_loss="stale"),
    "retransmit": dict(loss_prob=0.3, on_loss="retransmit:2"),
    "gilbert-stale": dict(loss_model="gilbert", gilbert_p_gb=0.2, gilbert_p_bg=0.3, gilbert_loss_good=0.05,
                          gilbert_loss_bad=0.7, on_loss="stale"),
    "failure": dict(loss_prob=0.1, link_failure=0.25),  # S restricted and W rebuilt per mini-batch on each rank
    "failure-eval": dict(loss_prob=0.2, link_failure=0.1, on_loss="stale", eval_under_loss=True),  # test too
}
CASES = [("d-sgd", "zero"), ("d-naive", "zero"), ("c-sgd", "stale"), ("d-amsgrad", "stale"), ("d-sgd", "retransmit"),
         ("d-gt", "gilbert-stale"), ("d-naive-pb", "retransmit"), ("d-amsgrad", "failure"),
         ("d-sgd", "failure-eval")]


def make_trainer(task, graphs, name: str, setup: str, epochs: int = 2, run=None) -> Trainer:
    config = TrainerConfig(epochs=epochs, batch_size=4, seed=5, checkpoint_every=1, jit=False, quiet=True)
    return Trainer(task, make_optimizer(name, 2), LearningRate(0.05), graphs, config, run,
                   links=LinkSetup.from_flags(7, **SETUPS[setup]))


def problem():
    graph, owner, method = ba_with_isolated_node()
    backend = MPIBackend(owner, [graph.shift_operator("adjacency"), graph.mixing_matrix("mh")], partition=method)
    return graph, backend


def equal_to_in_process(name: str, setup: str) -> None:
    graph, backend = problem()
    task, graphs = make_task(graph, backend)
    trainer = make_trainer(task, graphs, name, setup)
    result = trainer.run()
    theta = gathered(backend, trainer)
    if RANK == 0:
        ref_task, ref_graphs = make_task(graph, LocalBackend(graph.num_nodes))
        ref_trainer = make_trainer(ref_task, ref_graphs, name, setup)
        ref = ref_trainer.run()
        compare(f"lossy/{name}/{setup}", result.rows, theta, ref.rows, ref_trainer.theta.numpy())
        assert ref.rows[-1]["packet_loss_rate"] > 0.05, ref.rows[-1]
        if "link_failure" in SETUPS[setup]:
            assert ref.rows[-1]["link_failure_rate"] > 0.1, ref.rows[-1]
        for k in ("mp_rounds", "floats_sent_per_node", "extra_rounds", "extra_floats_per_node", "packets",
                  *LINK_COLUMNS[:2]):
            assert result.summary[k] == ref.summary[k], (k, result.summary[k], ref.summary[k])
    wait_for_all(COMM)
    ok(f"lossy/{name}/{setup}")


def resume_across_p(out: Path) -> None:
    graph, backend = problem()
    name, setup = "d-gt", "gilbert-stale"
    mpi_dir, local_dir = out / "lossy_mpi_ckpt", out / "lossy_local_ckpt"
    ref = None
    if RANK == 0:
        for d in (mpi_dir, local_dir):
            shutil.rmtree(d, ignore_errors=True)
        ref_task, ref_graphs = make_task(graph, LocalBackend(graph.num_nodes))
        ref_trainer = make_trainer(ref_task, ref_graphs, name, setup, epochs=4)
        ref = (ref_trainer.run(), ref_trainer.theta.numpy())
    wait_for_all(COMM)
    task, graphs = make_task(graph, backend)
    make_trainer(task, graphs, name, setup, epochs=4, run=RunDir(mpi_dir) if RANK == 0 else None).run(until_epoch=2)
    if RANK == 0:
        local_task, local_graphs = make_task(graph, LocalBackend(graph.num_nodes))
        t = make_trainer(local_task, local_graphs, name, setup, epochs=4, run=RunDir(mpi_dir))
        res = t.run(resume=True)
        compare("lossy resume mpi->local", res.rows, t.theta.numpy(), ref[0].rows, ref[1])
        local_task, local_graphs = make_task(graph, LocalBackend(graph.num_nodes))
        make_trainer(local_task, local_graphs, name, setup, epochs=4, run=RunDir(local_dir)).run(until_epoch=1)
    wait_for_all(COMM)
    task, graphs = make_task(graph, backend)
    t = make_trainer(task, graphs, name, setup, epochs=4, run=RunDir(local_dir, create=False) if RANK == 0 else None)
    res = t.run(resume=True)
    theta = gathered(backend, t)
    if RANK == 0:
        assert [r[k] for r in res.rows for k in COUNTS] == [r[k] for r in ref[0].rows for k in COUNTS]
        compare("lossy resume local->mpi", res.rows, theta, ref[0].rows, ref[1])
    wait_for_all(COMM)
    ok("lossy/resume_across_p")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    start = time.time()
    for name, setup in CASES:
        equal_to_in_process(name, setup)
    resume_across_p(args.out)
    print(f"DONE rank={RANK} seconds={time.time() - start:.1f}", flush=True)


if __name__ == "__main__":
    main()
