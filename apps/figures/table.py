"""Table I of the paper, measured: rounds and message sizes of one mini-batch for each scheme.

Each scheme's mini-batch is executed once by :class:`core.executors.BatchedExecutor` on the App A
setting (Barabasi-Albert graph, |V| = 100, a 2-layer GCNN 10 -> 10 -> 1, B = 100, K = 1 by default; the
figures app takes the setting of the node-regression runs when they all share one), and the
communication simulator's counts are set next to the paper's formulas. Where node-regression runs are
given, the rounds per mini-batch their summaries recorded are added as a further column, "in runs",
with the run's own L, B or K where it differs from the table's. The header states the setting.
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

COLUMNS = ("scheme", "optimizer", "layers", "batch_size", "consensus_rounds", "rounds_formula", "rounds_formula_value",
           "rounds_measured", "size_formula", "largest_message_measured", "floats_per_node_measured", "rounds_in_runs",
           "runs_layers", "runs_batch_size", "runs_consensus_rounds")
"""Table I's CSV columns: ``layers``, ``batch_size`` and ``consensus_rounds`` (L, B, K) are the setting the
formulas are evaluated and the counts measured with; ``runs_*`` the setting of the run behind ``rounds_in_runs``
(empty when the run does not record it)."""

APP_A = {"widths": (10, 10, 1), "batch_size": 100, "consensus_rounds": 1}
"""The setting of App A at paper scale, which Table I is measured with unless runs say otherwise."""


def common_setting(rounds_in_runs: dict | None) -> dict:
    """The (widths, B, K) that every run in ``rounds_in_runs`` (as :func:`apps.figures.plots.rounds_in_runs`
    returns it) was trained with, if they all agree and record it; else the App A paper setting."""
    settings = {(r.get("widths"), r.get("batch_size"), r.get("consensus_rounds"))
                for r in (rounds_in_runs or {}).values() if isinstance(r, dict)}
    if len(settings) == 1:
        widths, batch_size, rounds = settings.pop()
        if widths and batch_size and rounds:
            return {"widths": tuple(widths), "batch_size": batch_size, "consensus_rounds": rounds}
    return dict(APP_A)


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
              rounds_in_runs: dict[str, dict] | None = None) -> list[dict]:
    """One row per scheme: formulas, their values and the measured counts (see module docstring), and the
    rounds per mini-batch that the run of the scheme's optimizer recorded, with that run's setting
    (``rounds_in_runs``: ``{optimizer: {"rounds", "widths", "batch_size", "consensus_rounds"}}``)."""
    L = len(widths) - 1
    rows = []
    for scheme in SCHEMES:
        cost = measure(_optimizer(scheme.optimizer, consensus_rounds), widths, batch_size=batch_size)
        run = (rounds_in_runs or {}).get(scheme.optimizer) or {}
        run_widths = run.get("widths")
        rows.append({
            "scheme": scheme.label,
            "optimizer": scheme.optimizer,
            "layers": L,
            "batch_size": batch_size,
            "consensus_rounds": consensus_rounds,
            "rounds_formula": scheme.rounds_formula,
            "rounds_formula_value": scheme.rounds(L, batch_size, consensus_rounds),
            "rounds_measured": cost.rounds,
            "size_formula": scheme.size_formula,
            "largest_message_measured": cost.largest_message,
            "floats_per_node_measured": cost.floats_per_node,
            "rounds_in_runs": run.get("rounds", ""),
            "runs_layers": len(run_widths) - 1 if run_widths else "",
            "runs_batch_size": run.get("batch_size") or "",
            "runs_consensus_rounds": run.get("consensus_rounds") or "",
        })
    return rows


def _in_runs(row: dict) -> tuple[str, bool]:
    """The "in runs" cell, and whether it states a setting of its own: the recorded rounds, followed by the
    run's L, B or K where they differ from the table's (K only for the schemes whose rounds depend on it),
    or by "(B not recorded)"."""
    if row["rounds_in_runs"] == "":
        return "", False
    if row["runs_batch_size"] == "":
        return f"{row['rounds_in_runs']} (B not recorded)", True
    differ = [f"{name} = {row[f'runs_{key}']}" for name, key in (("L", "layers"), ("B", "batch_size"),
                                                                 ("K", "consensus_rounds"))
              if row[f"runs_{key}"] not in ("", row[key])
              and (key != "consensus_rounds" or "K" in row["rounds_formula"])]
    if differ:
        return f"{row['rounds_in_runs']} ({', '.join(differ)})", True
    return str(row["rounds_in_runs"]), False


def to_markdown(rows: list[dict], widths, batch_size: int, consensus_rounds: int) -> str:
    L = len(widths) - 1
    theta = GCNN(widths).num_params
    cells, own = zip(*(_in_runs(r) for r in rows)) if rows else ((), ())
    own = any(own)  # some run has a setting of its own, stated in its cell
    setting = f"L = {L}, B = {batch_size}, K = {consensus_rounds}"
    lines = [
        f"# Table I, measured with {setting}, g = {tuple(widths)}, \\|θ\\| = {theta}",
        "",
        f"| Accumulated measures | Total msg. rounds | = | measured (B = {batch_size}) | "
        f"in runs{'' if own else f' (B = {batch_size})'} | Message size | largest measured | floats/node |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r, in_runs in zip(rows, cells):
        size = r["size_formula"].replace("|", "\\|")  # a bare | would split the Markdown cell
        lines.append(f"| {r['scheme']} | {r['rounds_formula']} | {r['rounds_formula_value']} | "
                     f"{r['rounds_measured']} | {in_runs} | {size} | "
                     f"{r['largest_message_measured']} | {r['floats_per_node_measured']} |")
    runs_note = ("'in runs' is what the node-regression runs recorded per mini-batch, with their own L, B or K "
                 "in brackets where they differ" if own else
                 "'in runs' is what the node-regression runs recorded per mini-batch, in the same setting")
    lines += ["", f"Measured by executing one mini-batch of each scheme ({setting}) through the communication "
              f"simulator; {runs_note}. The eq. (17) row includes the degree d_i and θ pieces piggybacked on "
              "forward rounds (D-AMSGrad also sends ũ, which Table I omits)."]
    return "\n".join(lines) + "\n"
