"""Benchmark: time of one D-SGD training step as the network grows, |V| = 10^2 .. 10^5.

One mini-batch of B samples on a Barabasi-Albert graph (m = 2) with the App A widths 10 -> 10 -> 1:
forward, local backpropagation, one consensus round on the parameters and the update (the batched
executor, compiled with XLA), with every exchange counted. Prints milliseconds per step and per node;
fully distributed training should cost about the same per node at every size (linear total time),
since every node only talks to its neighbours. Run: ``python benchmarks/bench_scaling.py
[--sizes 100 1000 10000 100000 --batch-size 100]``.
"""

from __future__ import annotations

from _common import best_times  # first: quiets TensorFlow's logs, puts the repository on the path

# isort: split
import argparse

import networkx as nx
import numpy as np
import tensorflow as tf

from core.executors import BatchedExecutor
from core.gcnn import GCNN
from core.graph import Graph
from core.ops import to_operator
from core.optimizers import make_optimizer
from core.replicas import flatten, replicate


def step_time(num_nodes: int, batch_size: int) -> tuple[float, int]:
    graph = Graph.from_networkx(nx.barabasi_albert_graph(num_nodes, 2, seed=0))
    shift = to_operator(graph.shift_operator("normalized_laplacian"))
    mixing = to_operator(graph.metropolis_hastings())
    gcnn = GCNN((10, 10, 1), "sigmoid")
    optimizer = make_optimizer("d-sgd")
    theta = replicate(flatten(gcnn.init_params(0)), num_nodes)
    state = optimizer.init_state(theta)
    rng = np.random.default_rng(0)
    x = tf.constant(rng.uniform(size=(batch_size, num_nodes, 10)), tf.float32)
    y = tf.constant(rng.uniform(size=(batch_size, num_nodes, 1)), tf.float32)
    executor = BatchedExecutor(gcnn)
    rounds = []

    @tf.function(jit_compile=True)
    def step(theta):
        result = executor.train_step(theta, state, x, y, shift, mixing, optimizer, 1e-3)
        rounds.append(result.cost.rounds)
        return result.theta

    (seconds,) = best_times([lambda: step(theta)], repeats=max(1, 2000 // num_nodes), trials=3)
    return seconds, rounds[-1]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 10000, 100000],
                        help="numbers of nodes |V|")
    parser.add_argument("--batch-size", type=int, default=100, help="samples per mini-batch B")
    args = parser.parse_args(argv)
    print(f"D-SGD step, B = {args.batch_size}, widths 10-10-1, BA m = 2, XLA, float32")
    print(f"{'|V|':>8} {'ms/step':>10} {'us/node':>9} {'rounds':>7}")
    for n in args.sizes:
        seconds, rounds = step_time(n, args.batch_size)
        print(f"{n:>8} {seconds * 1e3:>10.2f} {seconds * 1e6 / n:>9.2f} {rounds:>7}", flush=True)


if __name__ == "__main__":
    main()
