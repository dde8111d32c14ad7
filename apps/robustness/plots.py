"""The robustness sweep's figures: the final metric against the packet-loss rate, and against total rounds.

``<metric>_vs_loss_prob``: one panel per receiver policy; per optimizer the mean over the seeds (line and
markers) and, where several seeds ran, their min-max band; the centralized reference over perfect links as a
dashed horizontal line; a point whose seeds all diverged is drawn as an "x" on the panel's top edge (its
value does not exist), which the legend explains; a panel without any finite value has no value axis (its
ticks would mean nothing) and says so. ``<metric>_vs_rounds`` (when a retransmission policy is swept): the same points
against the message-passing rounds the runs took in total, retransmissions included, so that what
retransmitting costs is seen next to what it buys.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from apps.common.plots import legend_below, new_figure, save_figure

MARKERS = ("o", "s", "^", "v", "D", "*", "P", "X")  # no "x": it marks the diverged points
DIVERGED = "every seed diverged (no value)"
"""The legend's entry for the "x" of a diverged point."""


def _series(points: Sequence[dict], policy: str, optimizer: str, x: str) -> list[dict]:
    return sorted((q for q in points if q["policy"] == policy and q["optimizer"] == optimizer), key=lambda q: q[x])


def _reference(points: Sequence[dict], reference: str) -> float | None:
    values = [q["mean"] for q in points if q["optimizer"] == reference and math.isfinite(q["mean"])]
    return sum(values) / len(values) if values else None


def plot_sweep(points: Sequence[dict], out: Path, policies: Sequence[str], optimizers: Sequence[str], reference: str,
               metric_label: str, log_metric: bool, stem: str, title: str) -> list[Path]:
    """Draw both figures of a sweep into ``out``; returns the files written (nothing without points)."""
    written = []
    if not points:
        return written
    written += _against(points, out, policies, optimizers, reference, metric_label, log_metric, stem + "_vs_loss_prob",
                        title, x="loss_prob", xlabel="packet-loss probability p")
    retransmit = [p for p in policies if p.startswith("retransmit")]
    if retransmit:
        written += _against(points, out, retransmit, optimizers, reference, metric_label, log_metric,
                            stem + "_vs_rounds", title, x="mp_rounds", xlabel="message-passing rounds in total")
    return written


def _against(points, out, policies, optimizers, reference, metric_label, log_metric, stem, title, x, xlabel):
    labels = {q["optimizer"]: q["label"] for q in points}
    plt, fig, axes = new_figure(height=4.2, cols=len(policies), width=max(6.4, 4.2 * len(policies)))
    axes = [axes] if len(policies) == 1 else list(axes)
    ref = _reference(points, reference) if reference else None
    any_lost = False
    for ax, policy in zip(axes, policies):
        finite = ref is not None
        for k, name in enumerate(optimizers):
            series = _series(points, policy, name, x)
            if not series:
                continue
            xs = [q[x] for q in series]
            mean = [q["mean"] for q in series]
            line, = ax.plot(xs, mean, marker=MARKERS[k % len(MARKERS)], markersize=4, linewidth=1.4,
                            label=labels.get(name, name) if ax is axes[0] else None)
            if any(q["seeds"] > 1 for q in series):
                ax.fill_between(xs, [q["min"] for q in series], [q["max"] for q in series], color=line.get_color(),
                                alpha=0.18, linewidth=0)
            finite = finite or any(math.isfinite(q["mean"]) for q in series)
            lost = [q[x] for q in series if not math.isfinite(q["mean"])]
            any_lost = any_lost or bool(lost)
            if lost:
                ax.plot(lost, [1.0] * len(lost), linestyle="none", marker="x", markersize=8, color=line.get_color(),
                        transform=ax.get_xaxis_transform(), clip_on=False)
        if ref is not None:
            ax.axhline(ref, color="0.3", linestyle="--", linewidth=1.2,
                       label=f"{labels.get(reference, reference)} (perfect links)" if ax is axes[0] else None)
        ax.set_title(f"--on-loss {policy}", fontsize=9)
        ax.set_xlabel(xlabel)
        if x == "mp_rounds":
            ax.set_xscale("log")
        if not finite:  # every point diverged: a value axis would show made-up numbers
            ax.set_yticks([])
            ax.text(0.5, 0.5, "no finite value: every run diverged", transform=ax.transAxes, ha="center",
                    va="center", fontsize=9, color="0.3")
        elif log_metric:
            ax.set_yscale("log")
        ax.grid(True, which="both", alpha=0.3)
    if any_lost:  # one entry for all optimizers: the colour says whose point it is
        axes[0].plot([], [], linestyle="none", marker="x", markersize=8, color="0.3", label=DIVERGED)
    axes[0].set_ylabel(metric_label)
    fig.suptitle(title, fontsize=10)
    legend_below(fig, axes[0], columns=4)
    return save_figure(plt, fig, out, stem)
