"""Benchmark: one distributed forward + local-backprop mini-batch vs a centralized forward + GradientTape.

For |V| = 100, 1 000, 10 000 (Barabasi-Albert, m = 2), B = 100 samples and the App A widths
(10 -> 10 -> 1, sigmoid), it times in one process:

- distributed: the batched executor's local gradients of every node's own parameter copy
  (eqs. 10-14, every exchange counted by the communication simulator);
- centralized: the same GCNN with one shared parameter set, forward + tf.GradientTape backward.

Both are compiled with XLA (``jit_compile=True``; message passing is gather + unsorted_segment_sum).
Prints the time per mini-batch, the ratio distributed / centralized (target <= 1.5) and the growth with
|V| (target: about linear). Run: ``python benchmarks/bench_core.py [--sizes 100 1000 10000]``.
"""

from __future__ import annotations

from _common import best_times  # first: quiets TensorFlow's logs, puts the repository on the path

# isort: split
import argparse

import networkx as nx
import numpy as np
import tensorflow as tf

from core.comm import CommSimulator
from core.executors import BatchedExecutor, squared_error, unflatten
from core.gcnn import GCNN
from core.graph import Graph
from core.ops import to_operator
from core.optimizers import make_optimizer
from core.replicas import flatten, replicate


def bench(num_nodes: int, batch: int, widths=(10, 10, 1)):
    graph = Graph.from_networkx(nx.barabasi_albert_graph(num_nodes, 2, seed=0))
    shift = to_operator(graph.shift_operator("normalized_laplacian"))
    gcnn = GCNN(widths, "sigmoid")
    rng = np.random.default_rng(0)
    x = tf.constant(rng.uniform(size=(batch, num_nodes, widths[0])), tf.float32)
    y = tf.constant(rng.uniform(size=(batch, num_nodes, widths[-1])), tf.float32)
    shared = flatten(gcnn.init_params(0))
    copies = replicate(shared, num_nodes)
    executor = BatchedExecutor(gcnn)
    schedule = executor.schedule_for(make_optimizer("d-sgd"), batch)

    @tf.function(jit_compile=True)
    def distributed(theta, x, y):
        return executor.local_gradients(theta, x, y, shift, sim=CommSimulator(schedule))

    @tf.function(jit_compile=True)
    def centralized(theta, x, y):
        with tf.GradientTape() as tape:
            tape.watch(theta)
            y_hat, _ = gcnn.forward(unflatten(gcnn, theta), x, shift, sample_major=True)
            loss = tf.reduce_sum(tf.reduce_mean(squared_error(y_hat, y), axis=1))
        return tape.gradient(loss, theta), loss

    return best_times([lambda: distributed(copies, x, y), lambda: centralized(shared, x, y)],
                      repeats=max(2, 5000 // num_nodes))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 10000], help="numbers of nodes |V|")
    parser.add_argument("--batch-size", type=int, default=100, help="samples per mini-batch B")
    args = parser.parse_args(argv)
    print(f"forward + backward of one mini-batch, B = {args.batch_size}, widths 10-10-1, XLA, float32")
    print(f"{'|V|':>7} {'distributed ms':>15} {'centralized ms':>15} {'ratio':>7} {'dist. us/node':>14}")
    for n in args.sizes:
        d, c = bench(n, args.batch_size)
        print(f"{n:>7} {d * 1e3:>15.3f} {c * 1e3:>15.3f} {d / c:>7.2f} {d * 1e6 / n:>14.2f}", flush=True)


if __name__ == "__main__":
    main()
