"""Shared set-up of the benchmark scripts: import path, quiet TensorFlow, fair timing."""

from __future__ import annotations

import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))


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
