"""Shared set-up of the benchmark scripts: import path, quiet TensorFlow, fair timing."""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from core.tf_notices import silence_startup_notices  # noqa: E402

silence_startup_notices()


def best_times(workloads, repeats: int, trials: int = 5) -> list[float]:
    """Best seconds per call of each workload (zero-argument callables returning tensors).

    Each is called once first (compilation), then the workloads are timed alternately, ``trials``
    times ``repeats`` calls each, so that load from other processes on a shared machine affects all
    of them alike; the minimum over trials is reported.
    """
    import tensorflow as tf

    for fn in workloads:
        fn()
    best = [float("inf")] * len(workloads)
    for _ in range(trials):
        for k, fn in enumerate(workloads):
            start = time.perf_counter()
            for _ in range(repeats):
                out = fn()
            tf.nest.map_structure(lambda t: t.numpy() if hasattr(t, "numpy") else t, out)
            best[k] = min(best[k], (time.perf_counter() - start) / repeats)
    return best


# ---------------------------------------------------------------------------- shared by bench_mpi / bench_scaling
THREAD_VARIABLES = ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "OMP_NUM_THREADS")


def size_arg(text: str) -> tuple[int, int | None]:
    """argparse type of a graph size: ``N`` (|V|) or ``N:B`` (|V| with its own batch size B, e.g. ``1000000:10``)."""
    import argparse

    parts = text.split(":")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        values = []
    if len(values) not in (1, 2) or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected N or N:B with positive integers, got {text!r}")
    return values[0], (values[1] if len(values) == 2 else None)


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    import argparse

    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def cpu_cores() -> int:
    """CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def set_threads(threads: int) -> None:
    """TensorFlow's intra- and inter-op thread counts (and OpenMP's) for this process.

    TensorFlow reads them when its runtime starts, so this must run before ``import tensorflow``; it
    refuses otherwise instead of silently having no effect.
    """
    if "tensorflow" in sys.modules:
        raise RuntimeError("set_threads must be called before TensorFlow is imported")
    for name in THREAD_VARIABLES:
        os.environ[name] = str(int(threads))


def ba_graph(num_nodes: int, m: int = 2, seed: int = 0):
    """The benchmarks' Barabasi-Albert graph BA(|V|, m) as a :class:`core.graph.Graph`."""
    import networkx as nx

    from core.graph import Graph

    return Graph.from_networkx(nx.barabasi_albert_graph(int(num_nodes), m, seed=seed))


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MB (Linux reports ru_maxrss in KB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
