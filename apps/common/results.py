"""Read a finished (or checkpointed) run back for use in code: :func:`load_run`.

A run directory (docs/design.md, section 5) holds the flags it was started with, its metrics and its
last checkpoint; ``load_run`` turns them into the config, the metrics table as numbers, and the trained
model, ready to use::

    from apps.common.results import load_run

    run = load_run("runs/node_regression/20261201-101500/d-sgd")
    y, _ = run.model.forward(run.params(), x, shift, sample_major=True)   # the consensus model
    y3, _ = run.model.forward(run.params(node=3), x, shift, sample_major=True)   # node 3's own copy

(``x``: (B, |V|, g_0) features; ``shift``: the graph's S as a :class:`core.ops.Operator`; the consensus
model is the mean of the node copies, Algorithm 1 line 15.)

``model`` is the app's architecture rebuilt from the saved flags: the student :class:`core.gcnn.GCNN`
of App A, the :class:`apps.power_allocation.uwmmse.UWMMSE` of App B (whose 8 GCNNs take the flat
parameters, ``run.theta``), and the actor GCNN of App C.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.runs import RunDir, RunError


@dataclass
class LoadedRun:
    """What :func:`load_run` returns.

    Attributes:
        path: the run directory.
        config: its config.json.
        metrics: metrics.csv, one dict of floats per row.
        summary: summary.json, or None for a run not finished.
        theta: the consensus parameters (the mean over nodes for a distributed optimizer), flat (|theta|,).
        theta_per_node: the per-node copies (|V|, |theta|), or None for a centralized optimizer.
        model: the architecture (see the module docstring).
    """

    path: Path
    config: dict
    metrics: list[dict]
    summary: dict | None
    theta: np.ndarray
    theta_per_node: np.ndarray | None
    model: object

    def params(self, node: int | None = None) -> list:
        """The parameter tensors of the consensus model, or of ``node``'s copy, in the shapes of
        ``model.param_shapes()`` (for ``GCNN.forward``)."""
        import tensorflow as tf

        from core.replicas import unflatten

        if node is None:
            flat = self.theta
        elif self.theta_per_node is None:
            raise ValueError(f"{self.path} was trained centrally: it has no per-node copies")
        else:
            flat = self.theta_per_node[node]
        if not hasattr(self.model, "param_shapes"):
            raise ValueError(f"the model of {self.path} takes the flat parameters (use .theta)")
        return unflatten(tf.constant(flat), self.model.param_shapes())


def load_run(path) -> LoadedRun:
    """The config, metrics and trained model of the run directory ``path`` (one approach's folder).

    Raises :class:`core.runs.RunError` (a ValueError) with a one-line message for a folder that is not
    a run directory of one approach, or whose files are unreadable.
    """
    run = RunDir(path, create=False)
    config = run.read_config()
    if config.get("grouped") or not run.has_checkpoint():
        children = sorted(p.name for p in run.path.iterdir() if (p / "config.json").is_file())
        hint = f"; load one of its approaches: {', '.join(children)}" if children else ""
        raise RunError(f"{run.path} holds no trained model (no {run.checkpoint_path.name}){hint}")
    arrays, _ = run.load_checkpoint()
    theta = np.asarray(arrays["theta"])
    per_node = theta if theta.ndim == 2 else None
    metrics = [{k: _number(v) for k, v in row.items()} for row in run.read_metrics()]
    summary = json.loads(run.summary_path.read_text()) if run.summary_path.is_file() else None
    return LoadedRun(run.path, config, metrics, summary, per_node.mean(axis=0) if per_node is not None else theta,
                     per_node, _model(config, run.path))


def _number(text: str):
    try:
        value = float(text)
    except ValueError:
        return text
    return int(value) if value.is_integer() and "." not in text and "e" not in text.lower() else value


def _model(config: dict, path: Path):
    """The architecture of the run's app, rebuilt from its saved flags."""
    flags, app = config.get("flags", {}), config.get("app")
    if app == "node_regression":
        from core.gcnn import GCNN

        dataset = config.get("dataset", {}).get("config", {})
        return GCNN((int(dataset["input_dim"]), *flags["hidden"], 1), flags["activation"], bias=False)
    if app == "power_allocation":
        from apps.power_allocation.uwmmse import UWMMSE

        return UWMMSE(int(flags["layers"]), int(flags["hidden"]))
    if app == "link_scheduling":
        from apps.link_scheduling.model import ACTOR

        return ACTOR
    raise RunError(f"{path}: unknown app {app!r} in config.json")
