"""Benchmark: App A (node regression, paper settings) epoch and mini-batch times per approach.

In one process, with the trainer's own compiled programs (XLA) on the paper's problem (BA graph of 100
nodes, 1000 training samples, B = 100, student 10 -> 10 -> 1):

- one epoch (10 mini-batches + the test pass) per approach, against the paper authors' TensorFlow code
  on this machine (0.10 s per epoch for C-SGD, 0.47-0.52 s for D-SGD / D-Adam / D-AMSGrad), target
  <= 0.02 s for a distributed epoch;
- one D-SGD mini-batch step against one C-SGD step (target ratio <= 1.5);
- the compile time of each approach's epoch, and the estimated time of the full seven-approach,
  1000-epoch paper run (compile + 1000 epochs each; target <= 3 minutes).

Timings alternate between the workloads and keep the best of several trials, so that other load on a
shared machine affects them alike. Run: ``python benchmarks/bench_node_regression.py [--dtype float32]``.
"""

from __future__ import annotations

from _common import best_times  # first: quiets TensorFlow's logs, puts the repository on the path

# isort: split
import argparse
import os
import time

import tensorflow as tf

from apps.node_regression.experiment import APPROACHES, LABELS, build_task, load_data, make_trainer, parse_args

AUTHORS_EPOCH_S = {"c-sgd": 0.10, "d-sgd": 0.47, "d-adam": 0.50, "d-amsgrad": 0.52}  # measured on this machine


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32", help="float type")
    parser.add_argument("--approaches", nargs="+", default=list(APPROACHES), choices=APPROACHES)
    parser.add_argument("--trials", type=int, default=5, help="timing trials (the best is kept)")
    bench = parser.parse_args(argv)
    args = parse_args(["--dtype", bench.dtype, "-q"])
    data, _ = load_data(args)
    task, graphs = build_task(args, data)
    ops = graphs.ops
    print(f"App A, paper settings, {bench.dtype}, XLA; load average {os.getloadavg()[0]:.1f} on "
          f"{os.cpu_count()} cores")

    trainers, compile_s, epochs = {}, {}, {}
    for approach in bench.approaches:
        trainer = make_trainer(args, task, graphs, approach)
        batches = tf.constant(trainer.batches.draw(trainer.rng))
        step0 = tf.constant(0, tf.int64)
        start = time.perf_counter()
        float(trainer.epoch_fn(trainer.theta, trainer.state, step0, batches, ops)[3]["test_mse"])
        compile_s[approach] = time.perf_counter() - start
        trainers[approach] = trainer
        epochs[approach] = (lambda t=trainer, b=batches, s=step0: t.epoch_fn(t.theta, t.state, s, b, ops)[3])
    times = dict(zip(epochs, best_times(list(epochs.values()), repeats=20, trials=bench.trials)))

    print(f"{'approach':<12}{'epoch ms':>10}{'authors ms':>12}{'speed-up':>10}{'compile s':>11}{'rounds/batch':>14}")
    for approach, t in times.items():
        authors = AUTHORS_EPOCH_S.get(approach)
        ref = f"{authors * 1e3:>12.0f}{authors / t:>10.1f}" if authors else f"{'':>12}{'':>10}"
        print(f"{LABELS[approach]:<12}{t * 1e3:>10.2f}{ref}{compile_s[approach]:>11.1f}"
              f"{trainers[approach].cost.rounds:>14}")
    distributed = [t for a, t in times.items() if a.startswith("d-")]
    if distributed:
        print(f"slowest distributed epoch: {max(distributed) * 1e3:.2f} ms (target <= 20 ms)")
    total = sum(compile_s.values()) + 1000 * sum(times.values())
    print(f"estimated {len(times)}-approach paper run: {total:.0f} s "
          f"(compile {sum(compile_s.values()):.0f} s + 1000 epochs each; target <= 180 s for seven)")

    if {"c-sgd", "d-sgd"} <= set(trainers):
        steps = {}
        for approach in ("c-sgd", "d-sgd"):
            t = trainers[approach]
            indices, step = tf.constant(t.batches.draw(t.rng)[0]), tf.constant(0, tf.int64)
            steps[approach] = (lambda t=t, i=indices, s=step: t.step_fn(t.theta, t.state, s, i, ops)[0])
        c, d = best_times(list(steps.values()), repeats=50, trials=bench.trials)
        print(f"one mini-batch step: C-SGD {c * 1e3:.3f} ms, D-SGD {d * 1e3:.3f} ms, ratio {d / c:.2f} "
              "(target <= 1.5)")


if __name__ == "__main__":
    main()
