"""Benchmark: time of one D-SGD training step as the network grows, against its memory-traffic floor.

One mini-batch of B samples on a Barabasi-Albert graph (m = 2, normalized Laplacian shift S,
Metropolis-Hastings mixing W) with the App A widths 10 -> 10 -> 1 (sigmoid): forward, local
backpropagation, one consensus round on the parameters and the update (the batched executor), with every
exchange counted: compiled with XLA as one program (kernel ``xla``, exchanges as gather + segment sum) and
with the exchanges as CSR products outside XLA (``csr``, what the trainer runs for fixed graphs from
``core.ops.CSR_MIN_NODES`` nodes; ``--kernel``). Fully distributed training should cost about the same per node at
every size (linear total time), since every node only talks to its neighbours. Per size it prints:

- ms per step, us per node, message-passing rounds and the peak resident memory of the process so far;
- the floor ``max(bytes / bandwidth, flops / rate)`` and step / floor (issue #15 target: <= 3 at 10^5);
- a per-phase breakdown (below).

**Traffic floor.** ``bytes`` is the minimal memory traffic of one step: every (|V|, B, g) tensor is written
once by the phase that makes it and read once by each phase that uses it, a neighbour exchange reads one
gathered row per operator entry, and the per-node parameter copies are read by the phases that use them.
With n = |V|, g = g_{l-1} and h = g_l for layer l = 1..L, E_S and E_W the entries of S and W (diagonal
included), p = |theta| and 4 bytes per float32, bytes = 4 x the sum of these floats:

    forward exchange     sum_l       (E_S + n) B g                       gathered rows, S X written
    per-node products    sum_l       2 n B g + 2 n g h + n B h           X and S X, [Theta0; Theta1], X^l
    gradient products    3 n B g_L                                      loss gradient Z^L = f(y_hat, y)
                         + sum_l     2 n B h + 2 n B g + 2 n g h         Z^l, X^l, X^{l-1} and S X^{l-1}, dTheta
                         + sum_{l>1} 2 n g h + 2 n B g                   Theta read, own term and message written
    backward exchange    sum_{l>1}   (E_S + 2 n) B g                     gathered messages, own term, Z^{l-1}
    consensus            (E_W + n) p                                     gathered parameter copies, mixed
    update               3 n p                                           mixed and gradient read, theta written

and flops = sum_l 2 E_S B g (forward exchange) + sum_l 4 n B g h (products) + 2 n B g_L + sum_l 4 n B g h
+ sum_{l>1} 4 n B g h (gradient products) + sum_{l>1} (2 E_S + n) B g (backward exchange) + 2 E_W p
(consensus) + 2 n p (update). For 10-10-1, B = 100 and E_S = E_W ~ 5 n (BA, m = 2): about 35 000 floats
(140 KB) and 1.26e5 flops per node.
``bandwidth`` is measured in the same run as a NumPy copy of a large array (``--copy-mb``, 256 MB:
read + write bytes over the best time; one thread), ``rate`` as the XLA-compiled per-node product of the
step's first layer, (|V|, B, 2 g_0) x (|V|, 2 g_0, g_1), on this size. Elementwise work (activations)
is not in the flops; transposes between sample-major and node-major layouts, flattening and copies of
tensors beyond one write and one read are not in the bytes: they are what a step can save.

**Per-phase breakdown.** Each phase's ops are compiled with XLA and timed alone on the shapes and values
of the step (inputs computed once from the same batch with the same ``core`` functions): forward exchange
(``apply_operator(S, X^{l-1})``, l = 1..L), per-node products (``GCNN.layer_update``: the stacked product
and the activation, its cache kept), backward exchange (``apply_operator(S^T, P^l)`` plus the own term,
l = L..2), gradient products (the loss gradient Z^L, ``layer_gradients`` and ``backward_products``, the
flattening of the gradients), consensus (``apply_operator(W, theta)``) and the update (D-SGD's step). The
remainder, step minus the sum of the phases, is the layout transposes of the batch, the parameter
unflattening, and what fusion across phase boundaries saves; it can be negative, also because each phase
called alone pays its own call dispatch (about 0.1 ms, what dominates at |V| = 100). Timing ops in
isolation was chosen over ``tf.profiler``: the profile of an XLA step shows fusions that mix phases.

Run: ``python benchmarks/bench_scaling.py [--sizes 100 1000 10000 100000] [--million] [--threads T]``;
``--sizes`` takes ``N`` or ``N:B`` (a size with its own batch size); ``--million`` adds |V| = 10^6 with
B = 10. ``--threads`` sets TensorFlow's intra- and inter-op threads (before TensorFlow is imported).
"""

from __future__ import annotations

import _common  # first: quiets TensorFlow's logs, puts the repository on the path

# isort: split
import argparse
import time

import numpy as np

WIDTHS = (10, 10, 1)
TARGET_SIZE, TARGET_FLOOR_RATIO, TARGET_FLAT = 100_000, 3.0, 1.5
PHASES = ("forward exchange", "per-node products", "backward exchange", "gradient products", "consensus", "update")
FLOAT_BYTES = 4  # float32


def step_traffic(n: int, batch: int, nnz_s: int, nnz_w: int, widths=WIDTHS) -> dict[str, tuple[float, float]]:
    """Per phase: (floats moved, flops) of the minimal traffic of one D-SGD step (module docstring)."""
    layers = list(zip(widths[:-1], widths[1:]))
    p = sum(2 * g * h for g, h in layers)
    b = batch
    out = dict.fromkeys(PHASES, (0.0, 0.0))

    def add(phase, floats, flops):
        out[phase] = (out[phase][0] + floats, out[phase][1] + flops)

    add("gradient products", 3 * n * b * widths[-1], 2 * n * b * widths[-1])  # Z^L = 2 (y_hat - y)
    for l, (g, h) in enumerate(layers, start=1):
        add("forward exchange", (nnz_s + n) * b * g, 2 * nnz_s * b * g)
        add("per-node products", 2 * n * b * g + 2 * n * g * h + n * b * h, 4 * n * b * g * h)
        add("gradient products", 2 * n * b * h + 2 * n * b * g + 2 * n * g * h, 4 * n * b * g * h)
        if l > 1:
            add("gradient products", 2 * n * g * h + 2 * n * b * g, 4 * n * b * g * h)
            add("backward exchange", (nnz_s + 2 * n) * b * g, (2 * nnz_s + n) * b * g)
    add("consensus", (nnz_w + n) * p, 2 * nnz_w * p)
    add("update", 3 * n * p, 2 * n * p)
    return out


def copy_bandwidth(megabytes: int, trials: int = 5) -> float:
    """Bytes per second of a NumPy copy of a ``megabytes`` array (read + write), best of ``trials``."""
    src = np.ones(megabytes * 2**20 // 4, np.float32)
    dst = np.empty_like(src)
    np.copyto(dst, src)  # first touch of the destination pages
    best = float("inf")
    for _ in range(trials):
        start = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - start)
    return 2 * src.nbytes / best


class Problem:
    """One size: the graph operators, the batch, theta and the D-SGD optimizer, in float32."""

    def __init__(self, num_nodes: int, batch: int):
        import tensorflow as tf

        from core.gcnn import GCNN
        from core.ops import to_operator
        from core.optimizers import make_optimizer
        from core.replicas import flatten, replicate

        graph = _common.ba_graph(num_nodes)
        s, w = graph.shift_operator("normalized_laplacian"), graph.metropolis_hastings()
        self.n, self.batch, self.nnz_s, self.nnz_w = num_nodes, batch, s.nnz, w.nnz
        self.shift, self.mixing = to_operator(s), to_operator(w)
        self.gcnn = GCNN(WIDTHS, "sigmoid")
        self.optimizer = make_optimizer("d-sgd")
        self.theta = replicate(flatten(self.gcnn.init_params(0)), num_nodes)
        self.state = tuple(self.optimizer.init_state(self.theta))
        rng = np.random.default_rng(0)
        self.x = tf.constant(rng.uniform(size=(batch, num_nodes, WIDTHS[0])), tf.float32)
        self.y = tf.constant(rng.uniform(size=(batch, num_nodes, WIDTHS[-1])), tf.float32)
        self.lr = tf.constant(1e-3, tf.float32)


def step_time(pb: Problem, kernel: str = "xla") -> tuple[float, int]:
    """Best seconds of the training step, and its message-passing rounds: ``xla``, the whole step compiled
    with XLA (exchanges as gather + segment sum); ``csr``, the exchanges as CSR products (core.ops.csr_apply)
    in a plain tf.function, as the trainer runs fixed graphs of at least core.ops.CSR_MIN_NODES nodes."""
    import tensorflow as tf

    from core.executors import BatchedExecutor
    from core.ops import CSRKernels, csr_layout

    executor = BatchedExecutor(pb.gcnn)
    rounds = []
    layouts = [(pb.shift, csr_layout(pb.shift)), (pb.mixing, csr_layout(pb.mixing))] if kernel == "csr" else []

    @tf.function(jit_compile=kernel == "xla")
    def step(theta):
        result = executor.train_step(theta, pb.state, pb.x, pb.y, pb.shift, pb.mixing, pb.optimizer, pb.lr,
                                     kernels=CSRKernels(layouts) if layouts else None)
        rounds.append(result.cost.rounds)
        return result.theta

    (seconds,) = _common.best_times([lambda: step(pb.theta)], repeats=max(1, 2000 // pb.n), trials=3)
    return seconds, rounds[-1]


def matmul_rate(pb: Problem) -> float:
    """Flops per second of the per-node product of the first layer, (|V|, B, 2 g_0) x (|V|, 2 g_0, g_1), XLA."""
    import tensorflow as tf

    g, h = WIDTHS[0], WIDTHS[1]
    rng = np.random.default_rng(1)
    a = tf.constant(rng.uniform(size=(pb.n, pb.batch, 2 * g)), tf.float32)
    b = tf.constant(rng.uniform(size=(pb.n, 2 * g, h)), tf.float32)
    product = tf.function(lambda a, b: tf.linalg.matmul(a, b), jit_compile=True)
    (seconds,) = _common.best_times([lambda: product(a, b)], repeats=max(1, 2000 // pb.n), trials=3)
    return 2 * pb.n * pb.batch * 2 * g * h / seconds


def phase_times(pb: Problem) -> dict[str, float]:
    """Best seconds of each phase of the step compiled and run alone (module docstring)."""
    import tensorflow as tf

    from core.backprop import backward_products, layer_gradients
    from core.executors import BatchedExecutor, flatten, node_major, unflatten
    from core.gcnn import ForwardCache
    from core.ops import apply_operator

    gcnn, optimizer, executor = pb.gcnn, pb.optimizer, BatchedExecutor(pb.gcnn)
    num_layers = gcnn.num_layers
    params = unflatten(gcnn, pb.theta)
    layers = gcnn.unpack(params)
    x, y, _ = node_major(pb.x, pb.y)
    # the step's intermediate values, once, eagerly, with the same functions as the step
    y_hat, cache = gcnn.forward(params, x, pb.shift)
    inputs = [x] + cache.outputs[:-1]  # X^{l-1}
    aggregates = [tf.split(s, 2, axis=-1)[1] for s in cache.stacked]  # S X^{l-1}
    z = {num_layers: executor.output_gradient(y_hat, y)[0]}
    messages, owns = {}, {}
    for l in range(num_layers, 1, -1):
        q, _ = layer_gradients(gcnn, l, layers[l - 1], cache, z[l])
        owns[l], messages[l] = backward_products(layers[l - 1], q)
        z[l - 1] = owns[l] + apply_operator(pb.shift.transposed(), messages[l])
    grad, _ = executor.local_gradients(pb.theta, pb.x, pb.y, pb.shift)
    mixed = apply_operator(pb.mixing, optimizer.payload(pb.theta, pb.state))
    transposed = pb.shift.transposed()

    def forward_exchange(xs):
        return [apply_operator(pb.shift, v) for v in xs]

    def products(params, xs, aggs):
        fresh = ForwardCache([], [], [])
        for l, (layer, v, agg) in enumerate(zip(gcnn.unpack(params), xs, aggs), start=1):
            gcnn.layer_update(l, layer, v, agg, None, fresh)
        return fresh

    def backward_exchange(msgs, own):
        return [o + apply_operator(transposed, m) for m, o in zip(msgs, own)]

    def gradient_products(params, stacked, pre, outs, zs, y_hat):
        local = ForwardCache(stacked, pre, outs)
        layers = gcnn.unpack(params)
        grads, extra = [None] * num_layers, []
        zs = [executor.output_gradient(y_hat, y)[0]] + zs[1:]  # Z^L from the loss, then the received Z^l
        for k, l in enumerate(range(num_layers, 0, -1)):
            q, grads[l - 1] = layer_gradients(gcnn, l, layers[l - 1], local, zs[k])
            if l > 1:
                extra.append(backward_products(layers[l - 1], q))
        return flatten([g for gs in grads for g in gs]), extra

    def consensus(theta):
        return apply_operator(pb.mixing, optimizer.payload(theta, pb.state))

    def update(theta, grad, mixed):
        return optimizer.step(theta, grad, mixed, pb.state, pb.lr)[0]

    jit = {name: tf.function(fn, jit_compile=True) for name, fn in zip(PHASES, (
        forward_exchange, products, backward_exchange, gradient_products, consensus, update))}
    back = list(range(num_layers, 1, -1))
    calls = {
        "forward exchange": lambda: jit["forward exchange"](inputs),
        "per-node products": lambda: jit["per-node products"](params, inputs, aggregates),
        "backward exchange": lambda: jit["backward exchange"]([messages[l] for l in back], [owns[l] for l in back]),
        "gradient products": lambda: jit["gradient products"](params, cache.stacked, cache.preactivations,
                                                              cache.outputs, [z[l] for l in range(num_layers, 0, -1)],
                                                              y_hat),
        "consensus": lambda: jit["consensus"](pb.theta),
        "update": lambda: jit["update"](pb.theta, grad, mixed),
    }
    seconds = _common.best_times([calls[p] for p in PHASES], repeats=max(1, 2000 // pb.n), trials=3)
    return dict(zip(PHASES, seconds))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=_common.size_arg, nargs="+",
                        default=[(100, None), (1000, None), (10000, None), (100000, None)],
                        help="numbers of nodes |V|, each N or N:B (its own batch size)")
    parser.add_argument("--million", action="store_true", help="also |V| = 10^6 with B = 10")
    parser.add_argument("--batch-size", type=_common.positive_int, default=100, help="samples per mini-batch B")
    parser.add_argument("--threads", type=_common.positive_int, default=None,
                        help="TensorFlow intra- and inter-op threads (default: TensorFlow's, one per core)")
    parser.add_argument("--copy-mb", type=_common.positive_int, default=256,
                        help="size of the array whose NumPy copy measures the memory bandwidth")
    parser.add_argument("--no-phases", action="store_true", help="skip the per-phase breakdown")
    parser.add_argument("--kernel", choices=("both", "auto", "xla", "csr"), default="both",
                        help="how the step's exchanges run: xla (one XLA program, gather + segment sum), csr (CSR "
                             "products, no XLA), auto (the trainer's choice: csr from core.ops.CSR_MIN_NODES "
                             "nodes), both (a row each; the targets judge auto's)")
    args = parser.parse_args(argv)
    if args.threads:
        _common.set_threads(args.threads)  # before TensorFlow is imported (Problem imports it)
    from core.ops import CSR_MIN_NODES  # imports TensorFlow: after the thread settings

    sizes = [(n, b or args.batch_size) for n, b in args.sizes] + ([(10**6, 10)] if args.million else [])
    bandwidth = copy_bandwidth(args.copy_mb)
    cores = _common.cpu_cores()
    threads = f"{args.threads} thread{'s' * (args.threads > 1)}" if args.threads else \
        f"TensorFlow's default threads ({cores} cores)"
    print(f"D-SGD step, widths {'-'.join(map(str, WIDTHS))}, BA m = 2, normalized Laplacian, MH mixing, float32, "
          f"{threads}; memory bandwidth (NumPy copy of {args.copy_mb} MB, read + write) {bandwidth / 1e9:.1f} GB/s")
    head = (f"{'|V|':>8} {'B':>4} {'kernel':>6} {'ms/step':>10} {'us/node':>8} {'rounds':>6} {'MB moved':>9} "
            f"{'MFLOP':>8} {'GFLOP/s':>8} {'floor ms':>9} {'bound':>6} {'step/floor':>10} {'peak RSS MB':>11}")
    print(head)
    rows, breakdowns = [], []
    for n, b in sizes:
        pb = Problem(n, b)
        auto = "csr" if n >= CSR_MIN_NODES else "xla"
        kernels = ("xla", "csr") if args.kernel == "both" else (auto if args.kernel == "auto" else args.kernel,)
        rate = matmul_rate(pb)
        traffic = step_traffic(n, b, pb.nnz_s, pb.nnz_w)
        moved = FLOAT_BYTES * sum(f for f, _ in traffic.values())
        flops = sum(f for _, f in traffic.values())
        floor = max(moved / bandwidth, flops / rate)
        bound = "memory" if moved / bandwidth >= flops / rate else "flops"
        xla_seconds = None
        for kernel in kernels:
            seconds, rounds = step_time(pb, kernel)
            if kernel == auto or len(kernels) == 1:
                rows.append((n, b, seconds, floor))
            if kernel == "xla":
                xla_seconds = seconds
            print(f"{n:>8} {b:>4} {kernel:>6} {1e3 * seconds:>10.2f} {1e6 * seconds / n:>8.2f} {rounds:>6} "
                  f"{moved / 1e6:>9.1f} {flops / 1e6:>8.1f} {rate / 1e9:>8.2f} {1e3 * floor:>9.2f} {bound:>6} "
                  f"{seconds / floor:>10.2f} {_common.peak_rss_mb():>11.0f}", flush=True)
        if not args.no_phases and xla_seconds is not None:
            breakdowns.append((n, b, xla_seconds, phase_times(pb), traffic, bandwidth, rate))
        del pb
    for n, b, seconds, phases, traffic, bw, rate in breakdowns:
        print(f"\nper phase at |V| = {n}, B = {b}, the XLA step (each phase's ops compiled with XLA and timed alone):")
        print(f"  {'phase':<20} {'ms':>9} {'% step':>7} {'floor ms':>9} {'x floor':>8}")
        for name in PHASES:
            floats, flops = traffic[name]
            floor = max(FLOAT_BYTES * floats / bw, flops / rate)
            print(f"  {name:<20} {1e3 * phases[name]:>9.2f} {100 * phases[name] / seconds:>7.1f} {1e3 * floor:>9.2f} "
                  f"{phases[name] / floor:>8.1f}")
        rest = seconds - sum(phases.values())
        print(f"  {'rest of the step':<20} {1e3 * rest:>9.2f} {100 * rest / seconds:>7.1f}   (transposes, unflatten, "
              f"fusion across phases)")
    summary(rows)
    return 0


def summary(rows) -> None:
    """The targets of issue #15 that this run can judge."""
    per_node = {(n, b): s / n for n, b, s, _ in rows}
    lines = []
    at_floor = [(s, f) for n, b, s, f in rows if n == TARGET_SIZE]
    if at_floor:
        s, f = at_floor[0]
        ok = s / f <= TARGET_FLOOR_RATIO
        lines.append(f"step / floor at |V| = {TARGET_SIZE}: {s / f:.2f}  {'PASS' if ok else 'FAIL'} "
                     f"(target <= {TARGET_FLOOR_RATIO:g})")
    big = [(n, b) for n, b in per_node if n >= 1000]
    small = min(big) if big else None
    large = max((k for k in big if k[1] == small[1]), default=None) if small else None
    if small and large and large != small:
        ratio = per_node[large] / per_node[small]
        judged = small[0] == 1000 and large[0] == TARGET_SIZE
        verdict = f"{'PASS' if ratio <= TARGET_FLAT else 'FAIL'} (target <= {TARGET_FLAT:g})" if judged else \
            f"(the target <= {TARGET_FLAT:g} is for 10^5 vs 10^3)"
        lines.append(f"per-node cost at |V| = {large[0]} / at {small[0]}: {1e6 * per_node[large]:.1f} / "
                     f"{1e6 * per_node[small]:.1f} us = {ratio:.2f}  {verdict}")
    if lines:
        print("\nTargets (issue #15):" + "".join(f"\n  {line}" for line in lines))


if __name__ == "__main__":
    raise SystemExit(main())
