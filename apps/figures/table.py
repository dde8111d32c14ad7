"""Table I of the paper, measured: rounds and message sizes of one mini-batch for each scheme.

Each scheme's mini-batch is executed once by :class:`core.executors.BatchedExecutor` on the App A
setting (Barabasi-Albert graph, |V| = 100, a 2-layer GCNN 10 -> 10 -> 1, B = 100, K = 1 by default),
and the communication simulator's counts are set next to the paper's formulas. Where node-regression
runs are given, the rounds per mini-batch their summaries recorded are added as a further column.
"""

from __future__ import annotations

from dataclasses import dataclass

import networkx as nx
import numpy as np
import tensorflow as tf

from core.comm import CommCost
from core.executors import BatchedExecutor
from core.gcnn import GCNN
from core.graph import Graph
from core.ops import to_operator
from core.optimizers import GradientConsensus, Optimizer, make_optimizer
from core.replicas import flatten, replicate


@dataclass(frozen=True)
class Scheme:
    """A row of Table I and the optimizer whose schedule it is."""

    label: str
    rounds_formula: str
    size_formula: str
    optimizer: str  # an optimizer name, or "d-naive-batch" for the unnamed row 3

    def rounds(self, L: int, B: int, K: int) -> int:
        """The paper's formula evaluated (written out here, independently of core.comm)."""
        return {
            "c-sgd": L * B,
            "d-naive": B * (2 * L - 1) + B * K,
            "d-naive-batch": 2 * B * L - B + K,
            "d-naive-pb": L * B + L - 1 + K,
            "d-sgd": L * B + L - 1,
        }[self.optimizer]


SCHEMES = (
    Scheme("Forward pass (FWD) only", "LB", "g_l", "c-sgd"),
    Scheme("FWD + D-naive (grad. consensus per sample) + reuse", "B(2L-1) + BK", "g_l, |θ|", "d-naive"),
    Scheme("FWD + Grad. consensus per batch + Info. reuse", "2BL - B + K", "g_l, |θ|", "d-naive-batch"),
    Scheme("FWD + Grad. consensus per batch + reuse + piggyback", "LB + L - 1 + K", "g_l + g_{L-l-1}, |θ|",
           "d-naive-pb"),
    Scheme("FWD + Dist. Opt. in (17) + reuse + piggyback", "LB + L - 1", "g_l + g_{L-l-1} + |θ|/LB", "d-sgd"),
)

COLUMNS = ("scheme", "optimizer", "rounds_formula", "rounds_formula_value", "rounds_measured",
           "size_formula", "largest_message_measured", "floats_per_node_measured", "rounds_in_runs")


def _optimizer(name: str, K: int) -> Optimizer:
    return GradientConsensus(K, "batch") if name == "d-naive-batch" else make_optimizer(name, K)


def measure(optimizer: Optimizer, widths=(10, 10, 1), num_nodes: int = 100, batch_size: int = 100,
            seed: int = 3) -> CommCost:
    """Counts of one training mini-batch of ``optimizer`` (run for real through the simulator)."""
    graph = Graph.from_networkx(nx.barabasi_albert_graph(num_nodes, 2, seed=seed))
    gcnn = GCNN(widths, "sigmoid")
    theta = flatten(gcnn.init_params(seed))
    if not optimizer.centralized:
        theta = replicate(theta, num_nodes)
    rng = np.random.default_rng(seed)
    x = tf.constant(rng.uniform(size=(batch_size, num_nodes, widths[0])), tf.float32)
    y = tf.constant(rng.uniform(size=(batch_size, num_nodes, widths[-1])), tf.float32)
    result = BatchedExecutor(gcnn).train_step(
        theta, optimizer.init_state(theta), x, y, to_operator(graph.shift_operator("normalized_laplacian")),
        to_operator(graph.metropolis_hastings()), optimizer, 1e-3)
    return result.cost


def table_one(widths=(10, 10, 1), batch_size: int = 100, consensus_rounds: int = 1,
              rounds_in_runs: dict[str, int] | None = None) -> list[dict]:
    """One row per scheme: formulas, their values and the measured counts (see module docstring)."""
    L = len(widths) - 1
    rows = []
    for scheme in SCHEMES:
        cost = measure(_optimizer(scheme.optimizer, consensus_rounds), widths, batch_size=batch_size)
        rows.append({
            "scheme": scheme.label,
            "optimizer": scheme.optimizer,
            "rounds_formula": scheme.rounds_formula,
            "rounds_formula_value": scheme.rounds(L, batch_size, consensus_rounds),
            "rounds_measured": cost.rounds,
            "size_formula": scheme.size_formula,
            "largest_message_measured": cost.largest_message,
            "floats_per_node_measured": cost.floats_per_node,
            "rounds_in_runs": (rounds_in_runs or {}).get(scheme.optimizer, ""),
        })
    return rows


def to_markdown(rows: list[dict], widths, batch_size: int, consensus_rounds: int) -> str:
    L = len(widths) - 1
    theta = GCNN(widths).num_params
    lines = [
        f"# Table I, measured (L = {L}, B = {batch_size}, K = {consensus_rounds}, g = {tuple(widths)}, "
        f"\\|θ\\| = {theta})",
        "",
        "| Accumulated measures | Total msg. rounds | = | measured | in runs | Message size | "
        "largest measured | floats/node |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        size = r["size_formula"].replace("|", "\\|")  # a bare | would split the Markdown cell
        lines.append(f"| {r['scheme']} | {r['rounds_formula']} | {r['rounds_formula_value']} | "
                     f"{r['rounds_measured']} | {r['rounds_in_runs']} | {size} | "
                     f"{r['largest_message_measured']} | {r['floats_per_node_measured']} |")
    lines += ["", "Measured by executing one mini-batch of each scheme through the communication simulator; "
              "'in runs' is what the node-regression runs recorded per mini-batch. The eq. (17) row includes "
              "the degree d_i and θ pieces piggybacked on forward rounds (D-AMSGrad also sends ũ, which "
              "Table I omits)."]
    return "\n".join(lines) + "\n"
