"""Time App C (GCNN-LGS actor-critic link scheduling) at the paper's sizes, in one process.

Conflict graphs of |V| = 100 vertices (Erdos-Renyi, mean degree in [2, 25]), B = 100 weight samples:

- LGS alone: one batched call on 100 weight vectors, per mean degree (the training step makes three
  such calls: the critic's targets, and LGS(z * w) and LGS(w) for the training ratio);
- the test evaluation alone: the actor on 50 test graphs and LGS on their 50 x 100 stored samples;
- seconds per mini-batch of training with :class:`core.trainer.Trainer`, centralized (C-Adam) and
  distributed (D-Adam): Algorithm 1 mode (one graph, 100 samples, one actor and one critic update)
  and the authors' mode (100 samples on 100 graphs, gradients at the start of the mini-batch, then
  100 sequential updates of each, :mod:`apps.link_scheduling.authors`); critic update, LGS and the
  per-mini-batch test evaluation included. The median over mini-batches after the first (which
  traces the step) is reported.

For reference, the paper authors' code needs about 5.3 s (centralized) and 7.3 s (distributed) per
100 training samples on this machine.

Run: python benchmarks/bench_link_scheduling.py [--mini-batches N]
"""

import argparse
import tempfile
import time
from pathlib import Path

import _common  # noqa: F401  (import path, quiet TensorFlow)
import numpy as np

from apps.link_scheduling.lgs import local_greedy_mwis
from datasets.conflict_graphs import ConflictGraphsConfig, erdos_renyi_adjacency, generate


def lgs_ms(repeats: int = 30) -> None:
    rng = np.random.default_rng(0)
    print("LGS, B = 100 weight samples on one |V| = 100 Erdos-Renyi graph (median ms per call)")
    for degree in (2, 10, 25):
        adjacency = erdos_renyi_adjacency(100, degree, rng).astype(bool)
        weights = rng.random((100, 100))
        local_greedy_mwis(adjacency, weights, validate=False)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            local_greedy_mwis(adjacency, weights, validate=False)
            times.append(time.perf_counter() - start)
        print(f"  mean degree {degree:2d}: {1e3 * np.median(times):6.2f} ms")


def training(path: Path, mini_batches: int) -> None:
    import tensorflow as tf

    from apps.link_scheduling.authors import AuthorsTask
    from apps.link_scheduling.experiment import AUTHORS, load_data, make_actor_optimizer
    from apps.link_scheduling.task import LinkSchedulingTask
    from core.optimizers import LearningRate
    from core.trainer import RandomGraphs, Trainer, TrainerConfig

    data = load_data(path)

    def make_task(authors: bool = False) -> LinkSchedulingTask:
        return (AuthorsTask if authors else LinkSchedulingTask)(
            data.train_adjacency, data.test_adjacency, data.test_weights, 100, critic_lr=1e-3, seed=0, num_train=100)

    task = make_task()
    evaluate = tf.function(lambda theta: task.evaluate(theta, None, "test"))
    float(evaluate(task.initial_theta())["test_ratio"])
    times = []
    for _ in range(5):
        start = time.perf_counter()
        float(evaluate(task.initial_theta())["test_ratio"])
        times.append(time.perf_counter() - start)
    print(f"Test evaluation, 50 graphs x 100 samples: {np.median(times):.3f} s")

    print(f"Training, seconds per mini-batch of 100 samples (median of {mini_batches - 1}, test evaluation included)")
    for mode in ("algorithm1", "authors"):
        for name in ("c-adam", "d-adam"):
            authors = mode == "authors"
            task = make_task(authors)
            config = TrainerConfig(epochs=mini_batches, batch_size=100, seed=0, checkpoint_every=0, jit=False,
                                   quiet=True)
            lr = LearningRate(AUTHORS["lr"] if authors else 1e-4)
            optimizer = make_actor_optimizer(name, mode)
            rows = Trainer(task, optimizer, lr, RandomGraphs(task.draw_graph), config).run().rows
            per_batch = np.diff([r["wall_s"] for r in rows])[1:]
            first = rows[1]["wall_s"] - rows[0]["wall_s"]
            print(f"  {mode:<10} {name}: {np.median(per_batch):6.3f} s  (first, with tracing: {first:.2f} s)")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mini-batches", type=int, default=8, help="mini-batches timed per configuration")
    args = parser.parse_args()
    lgs_ms()
    with tempfile.TemporaryDirectory() as folder:
        path = generate(ConflictGraphsConfig(train_graphs=30, test_graphs=50, test_samples=100), Path(folder) / "cg.h5")
        training(path, max(args.mini_batches, 3))


if __name__ == "__main__":
    main()
