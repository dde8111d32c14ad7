"""The paper authors' training loop of Fig. 2c (``--mode authors``), batched.

In the authors' published code (``twin-nphard/mwis_gcn_train_twin.py``) a "mini-batch" is B samples,
each with its own conflict graph and fresh weights. For every sample they compute, at the parameters
of the *start* of the mini-batch, the actor's gradient (through the critic) and the critic's gradient,
and store both; at the end of the mini-batch they apply the B stored actor gradients as B sequential
Adam steps in a random order, then the B critic gradients likewise (Keras Adam, bias-corrected,
epsilon 1e-7). Their distributed actor has a parameter copy per node and, per sample, one round of
gradient consensus with the Metropolis-Hastings weights of that sample's graph (``num_cons = 1``,
then times |V|, which our per-node objective -sum_i c_i0 already carries); there is no parameter
mixing (:class:`ConsensusAdam`).

Since every gradient of a mini-batch is taken at the same parameters, the B samples are one batched
computation here: the B graphs form one block-diagonal graph of B|V| nodes (node b|V| + i runs copy i
on sample b), so one forward and one backward pass give all B per-sample gradients of the actor; the
critic runs with a parameter copy per sample (:class:`PerSampleGraphs`), so its B gradients come out
of one backward pass too. Only the B optimizer steps are sequential (:class:`Replay`, one
``tf.while_loop``). A trainer step is therefore one mini-batch (``step`` counts mini-batches).

Counting: the actor's B forward passes and, for distributed optimizers, B backward passes go through
the trainer's simulator; the consensus payloads are recorded as the per-sample gradient consensus
(D-naive schedule) lays them out: exactly the B x K rounds the authors' loop performs. Optimizers that
mix parameters (eq. 17) or gradients once per batch (D-naive-PB) would mix once per replayed step or
across B different graphs, which no schedule of Table I describes: the app refuses them in this mode
(:func:`apps.link_scheduling.experiment.check_authors_mode_optimizers`).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from apps.link_scheduling import model
from apps.link_scheduling.task import LinkSchedulingTask
from core.comm import CommSimulator, Message
from core.gcnn import Exchange
from core.graph import Graph
from core.optimizers import CentralizedAdam, Optimizer
from core.replicas import unflatten
from core.trainer import GraphOps


class ConsensusAdam(Optimizer):
    """The authors' distributed actor optimizer of Fig. 2c: K rounds of gradient consensus
    x = W^K g_i (eq. 15), then a bias-corrected Adam step per node on x (Keras epsilon 1e-7)."""

    name = "d-adam"
    consensus = "gradient"
    schedule = "naive"  # consensus per sample: B(2L - 1) + BK rounds per mini-batch

    def __init__(self, consensus_rounds: int = 1, beta1=0.9, beta2=0.999, eps=1e-7):
        super().__init__(consensus_rounds)
        self.adam = CentralizedAdam(beta1, beta2, eps)

    def payload_size(self, num_params):
        return num_params

    def init_state(self, theta):
        return self.adam.init_state(theta)

    def step(self, theta, grad, mixed, state, lr):
        return self.adam.step(theta, mixed, None, state, lr)


class ReplayBatch(tuple):
    """What :meth:`AuthorsTask.gradients` hands to :class:`Replay`: (grads (B, ...), mixing (B, V, V)
    dense consensus weights of each sample's graph, order (B,) the sequence in which to apply them)."""


class Replay(Optimizer):
    """Applies B stored per-sample gradients as B sequential steps of ``inner`` (the authors' replay).

    Step k uses gradient ``grads[order[k]]`` (for gradient consensus: already mixed, W^K g of that
    sample's graph) and, for parameter mixing (eq. 17), W of that sample's graph times the payload.
    Schedule, payload and centralization are those of ``inner``.
    """

    consensus = "replay"  # core.executors.consensus_update mixes nothing; step() does it per sample

    def __init__(self, inner: Optimizer):
        super().__init__(inner.consensus_rounds)
        self.inner = inner
        self._compiled = None
        self.name = inner.name
        self.schedule = inner.schedule

    @property
    def centralized(self) -> bool:
        return self.inner.centralized

    def payload_size(self, num_params: int) -> int:
        return self.inner.payload_size(num_params)

    def init_state(self, theta):
        return self.inner.init_state(theta)

    def mix(self, theta, grad, state, mixing):
        """What ``inner.step`` receives as ``mixed`` for one sample (mixing: dense (V, V) W). Gradient
        consensus needs no parameters, so the stored gradients arrive already mixed (W^K g)."""
        if self.inner.consensus == "gradient":
            return grad
        if self.inner.consensus == "parameter":
            return tf.linalg.matmul(mixing, self.inner.payload(theta, state))
        return None

    def step(self, theta, grad, mixed, state, lr):
        del mixed
        grads, mixing, order = grad
        if self._compiled is None:  # XLA fuses each step's element-wise ops (5x faster than one op each)
            self._compiled = tf.function(self._replay, jit_compile=True, autograph=False)
        return self._compiled(theta, tuple(state), grads, mixing, order, lr)

    def _replay(self, theta, state, grads, mixing, order, lr):
        def body(k, theta, state):
            b = order[k]
            g = tf.gather(grads, b)
            w = None if mixing is None else tf.gather(mixing, b)
            theta, state = self.inner.step(theta, g, self.mix(theta, g, state, w), tuple(state), lr)
            return k + 1, theta, tuple(state)

        n = tf.shape(order)[0]
        _, theta, state = tf.while_loop(lambda k, *_: k < n, body, (tf.constant(0), theta, tuple(state)))
        return theta, tuple(state)


class PerSampleGraphs(Exchange):
    """Aggregation S_b X_b of sample b on its own graph, for a GCNN run with a parameter copy per sample.

    Features are laid out (B, |V|, g), i.e. the GCNN's "node" axis is the sample axis, so the GCNN's
    per-node parameters (B, ...) are per-sample parameters and their gradients are the per-sample
    gradients. ``dense``: (B, |V|, |V|) shift operators. Centralized (the critic): counts nothing.
    """

    def __init__(self, dense: tf.Tensor):
        self.dense = dense

    def propagate(self, op, x, message=None):
        del op, message
        return tf.linalg.matmul(self.dense, x)


class CountedPerSampleGraphs(Exchange):
    """The actor's neighbour exchange on B graphs at once: sample b aggregates over its own graph,
    node-major x (|V|, B, g), ``dense`` (B, |V|, |V|). Each round's B per-sample payloads are recorded
    in ``sim`` (a :class:`core.comm.CommSimulator`, or None) as its batched exchanges are; with
    ``sim.count_tape_backward`` the GradientTape backward pass records its B backward payloads too."""

    def __init__(self, dense: tf.Tensor, sim: CommSimulator | None):
        self.dense, self.sim = dense, sim

    def _record(self, kind: str, index: int, size: int) -> None:
        if self.sim is not None:
            for b in range(self.sim.schedule.B):
                self.sim.record(Message(kind, b, index), size)

    def propagate(self, op, x, message=None):
        del op
        kind, index = message
        self._record(kind, index, int(x.shape[-1]))
        if self.sim is None or not self.sim.count_tape_backward:
            return tf.einsum("bij,jbg->ibg", self.dense, x)

        @tf.custom_gradient
        def exchange(x):
            def backward(dy):
                self._record("bwd", index, int(dy.shape[-1]))
                return tf.einsum("bji,jbg->ibg", self.dense, dy)  # S^T dy, the eq. (14) messages

            return tf.einsum("bij,jbg->ibg", self.dense, x), backward

        return exchange(x)


def actor_forward(theta, dense_shift: tf.Tensor, sim: CommSimulator | None = None):
    """The actor on B graphs at once (sample b on graph b, ``dense_shift`` (B, |V|, |V|)).

    Returns (z, backward): z (|V|, B), and ``backward(dz)`` that maps dJ/dz (|V|, B) to the per-sample
    gradients: (B, |theta|) for a shared theta (|theta|,), (B, |V|, |theta|) for per-node copies
    (|V|, |theta|), entry [b, i] being node i's local gradient from sample b. One backward pass gives
    dJ/dH^l per node and sample; the gradient of layer l's kernels from sample b is then the outer
    product [X^{l-1}, S X^{l-1}]^T dJ/dH^l of that sample (eq. 13), which needs no further exchange.
    """
    b, n = int(dense_shift.shape[0]), int(dense_shift.shape[1])
    per_node = theta.shape.rank == 2
    with tf.GradientTape() as tape:
        tape.watch(theta)  # records the pass; the gradient is taken with respect to the H^l
        params = unflatten(theta, model.ACTOR.param_shapes())
        out, cache = model.ACTOR.forward(params, tf.ones([n, b, 1], theta.dtype), None,
                                         exchange=CountedPerSampleGraphs(dense_shift, sim))
        z = out[:, :, 0]

    def backward(dz, mixing=None, rounds: int = 0):
        """Per-sample gradients, for per-node copies optionally mixed: W_b^rounds g_b (eq. 15)."""
        dh = tape.gradient(z, cache.preactivations, output_gradients=dz)
        return _outer_products(list(cache.stacked), dh, mixing, rounds, per_node)

    return z, backward


@tf.function(jit_compile=True, autograph=False)
def _outer_products(stacked, dh, mixing, rounds: int, per_node: bool):
    """[X^{l-1}, S X^{l-1}]^T dJ/dH^l per sample (and node), flattened as the actor's parameters
    (XLA: the outer products, their slicing into Theta0/Theta1 and the consensus fuse)."""
    n, b = int(stacked[0].shape[0]), int(stacked[0].shape[1])
    pieces = []
    for x, q, (g_in, _) in zip(stacked, dh, model.ACTOR.param_shapes()[::2]):
        grad = tf.einsum("vbi,vbo->bvio" if per_node else "vbi,vbo->bio", x, q)
        lead = [b, n] if per_node else [b]
        pieces += [tf.reshape(grad[..., :g_in, :], lead + [-1]), tf.reshape(grad[..., g_in:, :], lead + [-1])]
    grads = tf.concat(pieces, axis=-1)
    for _ in range(max(rounds, 0)):
        grads = tf.linalg.matmul(mixing, grads)
    return grads


class AuthorsTask(LinkSchedulingTask):
    """:class:`LinkSchedulingTask` for the authors' loop: a mini-batch is B samples on B graphs, its
    gradients are taken at the start of the mini-batch and replayed as B sequential updates of the
    actor (the trainer's optimizer must be a :class:`Replay`) and of the critic."""

    def _dense(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Dense S and W of training graph ``index`` (cached)."""
        if not hasattr(self, "_dense_cache"):
            self._dense_cache = {}
        if index not in self._dense_cache:
            graph = Graph.from_dense(self.train_adjacency[index])
            dtype = self.dtype.as_numpy_dtype
            self._dense_cache[index] = tuple(
                op.to_dense().astype(dtype)
                for op in (graph.shift_operator(model.SHIFT), graph.mixing_matrix(self.mixing, self.mixing_beta)))
        return self._dense_cache[index]

    def draw_graph(self, rng: np.random.Generator) -> GraphOps:
        """B training graphs drawn uniformly, one per sample (Algorithm 1, line 3, per sample). Unlike
        Algorithm 1 mode, ``shift`` and ``mixing`` are dense stacks (B, |V|, |V|) of S and W."""
        pairs = [self._dense(int(rng.integers(len(self.train_adjacency)))) for _ in range(self.batch_size)]
        return GraphOps(tf.constant(np.stack([p[0] for p in pairs])), tf.constant(np.stack([p[1] for p in pairs])))

    def __init__(self, *args, unit_output: bool = True, critic_warmup: int = 1, scale_free_critic: bool = True,
                 **kwargs):
        super().__init__(*args, unit_output=unit_output, critic_warmup=critic_warmup,
                         scale_free_critic=scale_free_critic, **kwargs)

    def _order(self, counter, stream: int):
        """A random permutation of the B samples (stateless in (seed, step), like every draw)."""
        return tf.argsort(self._uniform([self.batch_size], counter, stream, 0.0, 1.0))

    @tf.autograph.experimental.do_not_convert
    def gradients(self, theta, indices, graph: GraphOps, optimizer: Optimizer, exchange):
        if not isinstance(optimizer, Replay):
            raise TypeError("the authors' loop needs a Replay optimizer")
        per_node = not optimizer.centralized
        n, b, counter = self.num_nodes, self.batch_size, self.counter
        counted = isinstance(exchange, CommSimulator)
        if per_node and counted:
            exchange.count_tape_backward = True  # the actor's backward messages (eq. 14) are counted
        # 1. the actor on the B graphs at once, at the parameters of the start of the mini-batch
        z, actor_backward = actor_forward(theta, graph.shift, exchange if counted else None)
        z_tilde = z + self._uniform([n, b], counter, 0, -model.EXPLORATION_NOISE, model.EXPLORATION_NOISE)
        draws = [tf.transpose(z), tf.transpose(z_tilde), self._uniform([b, n], counter, 1, 0.0, 1.0),
                 self._uniform([b, n], counter, 2, 0.0, 1.0),
                 self._uniform([b, n], counter, 3, -model.TARGET_NOISE, model.TARGET_NOISE)]
        target, ratio, rounds = tf.numpy_function(self._stacked_lgs_terms, [graph.shift, *draws],
                                                  [self.dtype] * 3, stateful=False)
        target = tf.reshape(target, [b, n, 2])  # sample-major, as the per-sample critic runs
        # 2. the critic with a copy per sample: its per-sample gradients and dJ/dz~
        copies = tf.tile(self.critic_theta[None], [b, 1])
        with tf.GradientTape(persistent=True) as critic_tape:
            critic_tape.watch([z_tilde, copies])
            x = tf.transpose(model.critic_input(z_tilde, self.scale_free_critic), [1, 0, 2])  # (B, V, 2)
            out, _ = model.CRITIC.forward(unflatten(copies, model.CRITIC.param_shapes()), x, None,
                                          exchange=PerSampleGraphs(graph.shift))
            per_sample = tf.sqrt(tf.reduce_mean(tf.square(out - target), axis=[1, 2]))
            actor_loss = model.actor_loss(tf.transpose(out, [1, 0, 2]), per_node)
            fit = tf.reduce_sum(per_sample)
        dz = critic_tape.gradient(actor_loss, z_tilde)
        with tf.GradientTape() as reg_tape:
            reg_tape.watch(self.critic_theta)
            reg = model.critic_l2(self.critic_theta)  # in every per-sample loss, as in the authors' code
        critic_grads = critic_tape.gradient(fit, copies) + reg_tape.gradient(reg, self.critic_theta)[None]
        # 3. the per-sample actor gradients; gradient consensus needs no parameters, so it runs batched
        inner = optimizer.inner
        if inner.consensus == "gradient":  # W_b^K g_b, per sample (eq. 15)
            actor_grads, mixing = actor_backward(dz, graph.mixing, inner.consensus_rounds), None
        else:
            actor_grads = actor_backward(dz)
            mixing = graph.mixing if inner.consensus == "parameter" else None
        if counted:
            self._record_consensus(exchange, inner, int(theta.shape[-1]))
        if self.critic_warmup:  # the actor waits while the critic learns (see the module docstring)
            actor_grads = actor_grads * tf.cast(counter >= self.critic_warmup, self.dtype)
        # 4. the critic's B sequential Adam steps (its replay), in their own random order
        lr = tf.constant(self.critic_lr, self.dtype)
        critic = Replay(self.critic_optimizer)
        new_theta, new_state = critic.step(self.critic_theta, (critic_grads, None, self._order(counter, 11)), None,
                                           tuple(self.critic_state), lr)
        self.critic_theta.assign(new_theta)
        for variable, value in zip(self.critic_state, new_state):
            variable.assign(value)
        self.counter.assign_add(1)
        metrics = {"train_ratio": tf.reshape(ratio, []),
                   "critic_loss": tf.reduce_mean(per_sample) + reg, "lgs_rounds_per_batch": tf.reshape(rounds, [])}
        return ReplayBatch((actor_grads, mixing, self._order(counter, 10))), metrics

    def _record_consensus(self, exchange: CommSimulator, inner: Optimizer, num_params: int) -> None:
        """Record the consensus payloads of a mini-batch as the inner optimizer's schedule lays them out
        (the replay computes them with dense per-sample W; see the module docstring)."""
        schedule = exchange.schedule
        if inner.consensus == "gradient":
            samples = range(schedule.B) if schedule.name == "naive" else [None]
            for k in range(1, inner.consensus_rounds + 1):
                for s in samples:
                    exchange.record(Message("grad", s, k), num_params)
        elif inner.consensus == "parameter":
            for p, start, stop in schedule.param_pieces():
                exchange.record(Message("param", None, p), stop - start)

    def _stacked_lgs_terms(self, shift, z, z_tilde, weights, critic_weights, noise):
        """NumPy: as :meth:`LinkSchedulingTask._lgs_terms`, sample b on the graph of shift[b]."""
        adjacency = shift != 0
        adjacency[:, np.arange(self.num_nodes), np.arange(self.num_nodes)] = False
        ratio = model.utility_ratio(adjacency, z, weights).mean()
        target, rounds = model.critic_targets(adjacency, z_tilde, critic_weights, noise)
        dtype = self.dtype.as_numpy_dtype
        return target.astype(dtype), np.asarray(ratio, dtype), np.asarray(rounds.mean(), dtype)
