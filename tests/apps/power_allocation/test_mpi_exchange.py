"""App B's exchanges for MPI ranks (apps/power_allocation/exchange.py ``RankRowsExchange``) without mpiexec.

P ranks run as threads of this process; what their ``Neighbor_alltoallv`` would deliver is routed by
:func:`core.distributed.views.route` (the same plans the MPI exchange sends by). On a partition that is not
in blocks (so that the ghost rows must be put back in pair order), in float64: forward and transposed
products against :func:`dense_apply` on the whole network, for per-sample stacked features and for a
consensus payload, their gradients (the reverse exchange is the adjoint), and the whole UWMMSE pipeline
(rates, the distributed gradients of eq. 8c through every exchange, and the logical counts) against the
in-process run. The same code under real ``mpiexec`` is tests/core/distributed/power_allocation_cases.py.
"""

import threading

import numpy as np
import pytest
import tensorflow as tf

from apps.power_allocation.batches import mixing_values
from apps.power_allocation.exchange import DenseExchange, RankRowsExchange, complete_operator, dense_apply
from apps.power_allocation.uwmmse import UWMMSE, Channel
from core.comm import CommSimulator, Schedule
from core.distributed.exchange import ExchangeCounters
from core.distributed.views import OperatorView, route
from core.replicas import replicate

F64 = tf.float64
N, B = 6, 3
OWNERS = {2: np.array([1, 0, 0, 1, 1, 1]), 3: np.array([2, 0, 1, 0, 2, 2])}  # uneven parts, not in blocks


class ThreadRanks:
    """P ranks as threads: every exchange waits for all of them and hands each rank what MPI would."""

    def __init__(self, owner: np.ndarray):
        self.owner, self.size = owner, int(owner.max()) + 1
        self.barrier = threading.Barrier(self.size, timeout=60)
        self.sent, self.received = [None] * self.size, None

    def exchange(self, rank: int, view: OperatorView, buffer: np.ndarray, reverse: bool) -> np.ndarray:
        self.sent[rank] = (view, np.asarray(buffer))
        self.barrier.wait()
        if rank == 0:
            self.received = route([v for v, _ in self.sent], [b for _, b in self.sent], reverse)
        self.barrier.wait()
        out = self.received[rank]
        self.barrier.wait()  # nobody starts the next exchange before every rank has its rows
        return out

    def run(self, fn) -> list:
        """``fn(rank, exchange)`` on every rank, each in a thread with its own :class:`RankRowsExchange`."""
        results, errors = [None] * self.size, []

        def target(rank):
            try:
                results[rank] = fn(rank, RankRowsExchange(ThreadMPI(self, rank)))
            except BaseException as exc:  # noqa: BLE001 - reported below; the others must not wait forever
                errors.append(exc)
                self.barrier.abort()

        threads = [threading.Thread(target=target, args=(r,)) for r in range(self.size)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        return results


class ThreadMPI:
    """What :class:`RankRowsExchange` uses of :class:`core.distributed.exchange.MPIExchange`, for one thread rank."""

    def __init__(self, ranks: ThreadRanks, rank: int):
        self.ranks, self.rank, self.num_nodes = ranks, rank, ranks.owner.size
        self.counters = ExchangeCounters()

    def view(self, op) -> OperatorView:
        return OperatorView.build(op, self.ranks.owner, self.rank, self.ranks.size)

    def communicate(self, view, buffer, reverse=False):
        rows = view.num_sent if reverse else view.num_ghosts
        out = tf.numpy_function(lambda b: self.ranks.exchange(self.rank, view, b, reverse), [buffer], buffer.dtype,
                                stateful=True)
        out.set_shape([rows] + buffer.shape[1:].as_list())
        return out


def own_rows(x, owned, parts: int = 1):
    """The part-major rows (p*n_own + k) of pairs ``owned`` of global part-major features (parts*N, ...)."""
    x = np.asarray(x)
    return x.reshape(parts, N, *x.shape[1:])[:, owned].reshape(parts * len(owned), *x.shape[1:])


@pytest.mark.parametrize("size", [2, 3])
def test_forward_transposed_and_gradients_equal_the_dense_products(size):
    owner, rng = OWNERS[size], np.random.default_rng(size)
    parts, g = 2, 3
    per_sample = complete_operator(tf.constant(rng.normal(size=(B, N * N))), N)
    mixing = complete_operator(tf.constant(rng.normal(size=N * N)), N)
    x = rng.normal(size=(parts * N, B, g))
    w = rng.normal(size=(parts * N, B, g))
    payload, payload_w = rng.normal(size=(N, 7)), rng.normal(size=(N, 7))
    want = {"forward": dense_apply(per_sample, tf.constant(x)).numpy(),
            "transposed": dense_apply(per_sample, tf.constant(x), transpose=True).numpy(),
            "grad_forward": dense_apply(per_sample, tf.constant(w), transpose=True).numpy(),  # d<w, Mx>/dx = M^T w
            "grad_transposed": dense_apply(per_sample, tf.constant(w)).numpy(),
            "mixing": np.reshape(mixing.values.numpy(), (N, N)) @ payload,
            "mixing_transposed": np.reshape(mixing.values.numpy(), (N, N)).T @ payload,
            "grad_mixing": np.reshape(mixing.values.numpy(), (N, N)).T @ payload_w}

    def on_rank(rank, exchange):
        owned = np.flatnonzero(owner == rank)
        np.testing.assert_array_equal(exchange.owned, owned)
        x_own, w_own = tf.constant(own_rows(x, owned, parts)), tf.constant(own_rows(w, owned, parts))
        out = {"forward": exchange.apply(per_sample, x_own), "transposed": exchange.apply(per_sample, x_own, True)}
        for transpose in (False, True):
            with tf.GradientTape() as tape:
                tape.watch(x_own)
                objective = tf.reduce_sum(w_own * exchange.apply(per_sample, x_own, transpose))
            out["grad_transposed" if transpose else "grad_forward"] = tape.gradient(objective, x_own)
        p_own = tf.constant(payload[owned])
        out["mixing"] = exchange.propagate(mixing, p_own)
        out["mixing_transposed"] = exchange.apply(mixing, p_own, transpose=True)
        with tf.GradientTape() as tape:
            tape.watch(p_own)
            objective = tf.reduce_sum(tf.constant(payload_w[owned]) * exchange.propagate(mixing, p_own))
        out["grad_mixing"] = tape.gradient(objective, p_own)
        return owned, {k: v.numpy() for k, v in out.items()}

    for owned, got in ThreadRanks(owner).run(on_rank):
        for key, value in got.items():
            stacked = parts if value.ndim == 3 else 1
            np.testing.assert_allclose(value, own_rows(want[key], owned, stacked), rtol=1e-12, atol=1e-14,
                                       err_msg=key)


@pytest.mark.parametrize("size", [2, 3])
def test_uwmmse_rates_local_gradients_consensus_and_counts_on_ranks_equal_in_process(channels, size):
    H, sigma2, pmax = channels
    model = UWMMSE(num_layers=2, hidden=3)
    rng = np.random.default_rng(0)
    theta = replicate(model.init_theta(5, F64), N) + tf.constant(rng.normal(0, 0.3, (N, model.num_params)), F64)
    mixing = complete_operator(tf.constant(mixing_values(H, "mh", 0.0)), N)
    schedule = Schedule("dopt", model.num_exchanges, B, 1, model.num_params)

    def pipeline(theta, owned=None, transport=None):
        """Rates, local gradients (eq. 8c), W theta (eq. 17's consensus) and the counts of one mini-batch."""
        sim = CommSimulator(schedule, transport=transport)  # consensus rounds: through the transport
        with tf.GradientTape() as tape:
            tape.watch(theta)
            rates, _ = model.rates(theta, Channel.from_matrices(tf.constant(H), owned), sigma2, pmax,
                                   DenseExchange(sim, tape_backward=True, transport=transport))
            objective = -tf.reduce_sum(rates)  # every node's copy gets its local gradient
        grad = tape.gradient(objective, theta)
        mixed = sim.propagate(mixing, theta, message=("param", 0))
        return rates.numpy(), grad.numpy(), mixed.numpy(), sim.cost()

    want_rates, want_grad, want_mixed, want_cost = pipeline(theta)

    def on_rank(rank, exchange):
        owned = np.flatnonzero(OWNERS[size] == rank)
        return (owned, *pipeline(tf.gather(theta, owned), tf.constant(owned, tf.int32), exchange))

    for owned, rates, grad, mixed, cost in ThreadRanks(OWNERS[size]).run(on_rank):
        np.testing.assert_allclose(rates, want_rates[:, owned], rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(grad, want_grad[owned], rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(mixed, want_mixed[owned], rtol=1e-12, atol=1e-14)
        assert cost == want_cost
