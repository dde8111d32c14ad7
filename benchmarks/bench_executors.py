"""Benchmark: protocol executor (round by round, sample by sample) vs batched executor (all at once).

Both run the same D-SGD mini-batch (forward, local backprop, parameter consensus and the update) with
every exchange counted, on a Barabasi-Albert graph (m = 2) with the App A widths 10 -> 10 -> 1. The
protocol executor is the ground truth for the counts and is meant to be slow; the batched one is the
fast path (here compiled with XLA). Prints the time per mini-batch, the ratio, and the measured rounds,
which must be equal. Run: ``python benchmarks/bench_executors.py [--nodes 100 --batch-size 20]``.
"""

from __future__ import annotations

from _common import best_times  # first: quiets TensorFlow's logs, puts the repository on the path

# isort: split
import argparse

import networkx as nx
import numpy as np
import tensorflow as tf

from core.executors import BatchedExecutor, ProtocolExecutor
from core.gcnn import GCNN
from core.graph import Graph
from core.ops import to_operator
from core.optimizers import make_optimizer
from core.replicas import flatten, replicate


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=100, help="number of nodes |V|")
    parser.add_argument("--batch-size", type=int, default=20, help="samples per mini-batch B")
    parser.add_argument("--optimizer", default="d-sgd", help="optimizer (sets the schedule)")
    args = parser.parse_args(argv)

    graph = Graph.from_networkx(nx.barabasi_albert_graph(args.nodes, 2, seed=0))
    shift = to_operator(graph.shift_operator("normalized_laplacian"))
    mixing = to_operator(graph.metropolis_hastings())
    gcnn = GCNN((10, 10, 1), "sigmoid")
    optimizer = make_optimizer(args.optimizer)
    theta = flatten(gcnn.init_params(0))
    if not optimizer.centralized:
        theta = replicate(theta, args.nodes)
    state = optimizer.init_state(theta)
    rng = np.random.default_rng(0)
    x = tf.constant(rng.uniform(size=(args.batch_size, args.nodes, 10)), tf.float32)
    y = tf.constant(rng.uniform(size=(args.batch_size, args.nodes, 1)), tf.float32)
    step_args = (theta, state, x, y, shift, mixing, optimizer, 1e-3)

    protocol = ProtocolExecutor(gcnn)
    batched = BatchedExecutor(gcnn)
    costs = {}

    @tf.function(jit_compile=True)
    def batched_step():
        result = batched.train_step(*step_args)
        costs["batched"] = result.cost  # counted while tracing
        return result.theta

    def protocol_step():
        result = protocol.train_step(*step_args)
        costs["protocol"] = result.cost
        return result.theta

    t_protocol, t_batched = best_times([protocol_step, batched_step], repeats=1, trials=3)
    print(f"{args.optimizer}, |V| = {args.nodes}, B = {args.batch_size}, widths 10-10-1, float32")
    print(f"protocol executor  {t_protocol * 1e3:10.1f} ms per mini-batch  ({costs['protocol'].rounds} rounds)")
    print(f"batched executor   {t_batched * 1e3:10.3f} ms per mini-batch  ({costs['batched'].rounds} rounds)")
    print(f"ratio protocol / batched: {t_protocol / t_batched:.0f}x; counts equal: "
          f"{costs['protocol'] == costs['batched']}")


if __name__ == "__main__":
    main()
