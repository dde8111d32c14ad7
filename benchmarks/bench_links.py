"""Benchmark: what imperfect links cost an App A epoch (issue #16's target: at most +20 % at p = 0.1).

App A at paper settings (BA graph of 100 nodes, 1000 training samples, B = 100, student 10 -> 10 -> 1, XLA,
float32), one approach (default D-SGD), trained by the real trainer loop (``Trainer.run``: drawing each
epoch's loss plans, the compiled epoch, the test pass, the logging) over perfect links and at ``--loss-prob``
under each receiver policy. Every configuration first runs a few epochs (compilation), then the
configurations take turns for ``--trials`` rounds of ``--epochs`` epochs each, so that other load on a shared
machine affects them alike. Prints the best ms per epoch of each and its overhead against perfect links: the
median over the rounds of its time against the perfect-links time of the same round (robust to the machine's
speed drifting between rounds, which a ratio of the two best times is not), with each round's value.

Run: ``python benchmarks/bench_links.py [--optimizer d-sgd --loss-prob 0.1 --policies zero stale retransmit:1]``.
"""

from __future__ import annotations

import _common  # noqa: F401  first: quiets TensorFlow's logs, puts the repository on the path

# isort: split
import argparse
import os
import time

import numpy as np

from apps.node_regression.experiment import build_task, load_data, make_trainer, parse_args


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--optimizer", default="d-sgd", help="the distributed approach")
    parser.add_argument("--loss-prob", type=float, default=0.1, help="packet-loss probability p")
    parser.add_argument("--policies", nargs="+", default=["zero", "stale", "retransmit:1"], help="--on-loss values")
    parser.add_argument("--epochs", type=int, default=20, help="epochs per timed round")
    parser.add_argument("--trials", type=int, default=7, help="timed rounds, taken in turns")
    bench = parser.parse_args(argv)
    configs = {"perfect links": []}
    configs.update({f"p = {bench.loss_prob:g}, {policy}": ["--loss-prob", str(bench.loss_prob), "--on-loss", policy]
                    for policy in bench.policies})
    trainers = {}
    for name, flags in configs.items():
        args = parse_args(["--optimizer", bench.optimizer, "-q", "--epochs", "100000", *flags])
        data, _ = load_data(args)
        task, graphs = build_task(args, data)
        trainers[name] = make_trainer(args, task, graphs, bench.optimizer)
        trainers[name].run(until_epoch=3)  # compilation, first plans
    print(f"App A, paper settings, {bench.optimizer}, float32, XLA, the trainer's loop; load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    times = {name: [] for name in trainers}  # seconds per epoch, round by round
    for _ in range(bench.trials):
        for name, trainer in trainers.items():
            start = time.perf_counter()
            trainer.run(until_epoch=trainer.epoch + bench.epochs)
            times[name].append((time.perf_counter() - start) / bench.epochs)
    base = np.array(times["perfect links"])
    print(f"{'configuration':<28}{'best ms/epoch':>14}{'overhead':>10}{'  (each round)'}")
    for name, t in times.items():
        t = np.array(t)
        if name == "perfect links":
            print(f"{name:<28}{1e3 * t.min():>14.2f}")
            continue
        ratios = 100 * (t / base - 1)  # against the perfect-links epochs of the same round
        rounds = " ".join(f"{r:+.0f}" for r in ratios)
        print(f"{name:<28}{1e3 * t.min():>14.2f}{np.median(ratios):>+9.0f}%  ({rounds})")
    print("overhead: the median over the rounds of the extra time against the same round's perfect-links epochs "
          "(the machine's speed drifts between rounds); target: at most +20 % at p = 0.1")


if __name__ == "__main__":
    main()
