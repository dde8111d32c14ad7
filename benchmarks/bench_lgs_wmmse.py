"""Time the two algorithmic building blocks at the paper's workload sizes, one process, after warm-up.

LGS (docs/design.md, section 9): B = 100 weight vectors on one 100-vertex Erdos-Renyi graph with mean degree
2, 10 and 25 - the call the link-scheduling training loop makes several times per mini-batch.
WMMSE (docs/design.md, section 8): B = 64 channel matrices with N = 25 pairs, 4 iterations ("WMMSE-Tr") and 100
("WMMSE"), XLA-compiled and as a plain graph. Prints the median time per call over repeated runs
(the warm-up call includes tracing and XLA compilation and is not counted).

Run: python benchmarks/bench_lgs_wmmse.py [--repeats R]
"""

import _common  # noqa: F401  first: quiets TensorFlow's logs, puts the repository on the path

# isort: split
import argparse
import time

import numpy as np

from apps.link_scheduling.lgs import local_greedy_mwis
from apps.power_allocation.wmmse import sum_rate, wmmse


def median_ms(fn, repeats):
    fn()  # warm-up (tf.function trace, BLAS threads, caches)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * float(np.median(times))


def er_graph(rng, num_vertices, mean_degree):
    upper = np.triu(rng.random((num_vertices, num_vertices)) < mean_degree / (num_vertices - 1), 1)
    return upper | upper.T


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=50, help="timed calls per configuration (default 50)")
    args = parser.parse_args()
    rng = np.random.default_rng(0)

    print("LGS, B = 100 samples, |V| = 100, Erdos-Renyi graph (median ms per call)")
    for mean_degree in (2, 10, 25):
        adjacency = er_graph(rng, 100, mean_degree)
        weights = rng.random((100, 100))
        _, rounds = local_greedy_mwis(adjacency, weights)
        checked = median_ms(lambda a=adjacency, w=weights: local_greedy_mwis(a, w), args.repeats)
        unchecked = median_ms(
            lambda a=adjacency, w=weights: local_greedy_mwis(a, w, validate=False), args.repeats
        )
        print(
            f"  mean degree {mean_degree:2d}: {checked:6.2f} ms (validate=False {unchecked:6.2f} ms), "
            f"message-passing rounds mean {rounds.mean():.1f} max {rounds.max()}"
        )

    print("WMMSE, B = 64, N = 25, XLA-compiled (default) and plain graph (median ms per call)")
    # Rayleigh-faded gains with d^-3.5 path-loss-like scaling, sigma^2 = 1, Pmax = 1: a generic
    # interference channel of the size of the paper's 25-pair network.
    tx = rng.random((64, 25, 2))
    rx = tx + rng.uniform(-0.1, 0.1, (64, 25, 2))
    distance = np.maximum(np.linalg.norm(tx[:, :, None] - rx[:, None], axis=-1), 0.03)
    fading = np.abs(rng.normal(size=distance.shape) + 1j * rng.normal(size=distance.shape)) / np.sqrt(2)
    H = np.sqrt(1e-3 * distance**-3.5) * fading  # Rayleigh amplitude, E|r|^2 = 1
    for dtype in (np.float32, np.float64):
        H_typed = H.astype(dtype)
        for iterations in (4, 100):
            xla, graph = (
                median_ms(lambda h=H_typed, k=iterations, j=jit: wmmse(h, 1.0, 1.0, k, jit_compile=j).numpy(),
                          args.repeats)
                for jit in (True, False)
            )
            rate = float(np.mean(sum_rate(H_typed, wmmse(H_typed, 1.0, 1.0, iterations), 1.0)))
            print(
                f"  {np.dtype(dtype).name} {iterations:3d} iterations: XLA {xla:6.2f} ms, graph {graph:6.2f} ms, "
                f"mean sum-rate {rate:.3f} bit/s/Hz"
            )


if __name__ == "__main__":
    main()
