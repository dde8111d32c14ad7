"""Executors: one mini-batch of (distributed) GCNN training, with every exchange counted.

Both executors run the same program (Algorithm 1, lines 5-12): forward passes (eq. 10), local
backpropagation (eqs. 11-14), the consensus rounds an optimizer needs (eq. 15 or 17) and the local
update, with every neighbour exchange going through a :class:`core.comm.CommSimulator`.

- :class:`BatchedExecutor` runs all B samples of a mini-batch at once (one gather + segment sum per
  layer and direction). It is the fast path, traceable by ``tf.function`` / XLA.
- :class:`ProtocolExecutor` runs the schedule literally, round by round, sample by sample, bundling
  each round's payloads into one exchange. It is slow and is the ground truth for the counts: a
  payload that the schedule sends before its inputs exist fails.

A test proves that both give the same parameters and the same counts, also under packet loss: both take
an optional :class:`core.links.LinkContext` (``links=``), which their simulator applies to every exchange
(docs/design.md, section 12).

Conventions: parameters are per-node flat vectors theta (|V|, |theta|) for distributed optimizers and
one shared flat vector (|theta|,) for centralized ones (see :mod:`core.replicas` for flattening).
Batches are sample-major as in the public API: x (B, |V|, g_0), y (B, |V|, g_L). The distributed
loss of a sample is l = sum_i l_i (so node averages of local gradients equal the centralized gradient
of the node-mean loss, docs/design.md, section 3); the reported loss is the node- and sample-mean of l_i.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import tensorflow as tf

from core import replicas
from core.backprop import backward_products, layer_gradients, local_backprop
from core.comm import CommCost, CommSimulator, Schedule, ScheduleError
from core.gcnn import GCNN, NO_COUNT, ForwardCache
from core.graph import SparseOperator
from core.links import LinkContext
from core.ops import CSRKernels, Operator
from core.optimizers import Optimizer


def squared_error(y_hat: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
    """Per-node loss l_i = ||y_i - y_hat_i||^2 (eq. 6c), summed over output features."""
    return tf.reduce_sum(tf.square(y - y_hat), axis=-1)


def unflatten(gcnn: GCNN, theta: tf.Tensor) -> list[tf.Tensor]:
    """The GCNN's parameter list from a flat (|theta|,) or (|V|, |theta|) vector."""
    return replicas.unflatten(theta, gcnn.param_shapes())


def flatten(params) -> tf.Tensor:
    """Flat form of a GCNN parameter list (per-node when Theta0 has a node axis)."""
    return replicas.flatten(params, per_node=params[0].shape.rank == 3)


def flatten_per_sample(grads) -> tf.Tensor:
    """Per-node, per-sample gradients (|V|, B, ...) of a parameter list as (|V|, B, |theta|)."""
    lead = tf.shape(grads[0])[:2]
    return tf.concat([tf.reshape(g, tf.concat([lead, [-1]], 0)) for g in grads], axis=-1)


def check_batch(gcnn: GCNN, x, y, num_nodes: int | None, loss: Callable = squared_error,
                nodes_from: str = "the graph's operator") -> None:
    """A ValueError naming what does not fit, for a sample-major batch x (B, |V|, g_0), y (B, |V|, g_L) with
    ``num_nodes`` nodes (a rank's owned nodes on an MPI operator view; None: not checked). Checks the static
    shapes, so it costs nothing inside a compiled function; a custom ``loss`` may take labels of another width."""
    for name, t in (("x", x), ("y", y)):
        if getattr(t, "shape", None) is None or len(t.shape) != 3:
            raise ValueError(f"{name} must be sample-major (B, |V|, features), got shape "
                             f"{tuple(getattr(t, 'shape', ())) or type(t).__name__}")
    g_in, g_out = gcnn.widths[0], gcnn.widths[-1]
    (bx, vx, fx), (by, vy, fy) = tuple(x.shape), tuple(y.shape)
    if None not in (vx, num_nodes) and vx != num_nodes:
        raise ValueError(f"x has {vx} nodes (axis 1 of (B, |V|, g_0)), {nodes_from} {num_nodes}")
    if fx is not None and fx != g_in:
        raise ValueError(f"x has {fx} features per node, the GCNN's input width g_0 is {g_in}")
    if (None not in (bx, by) and bx != by) or (None not in (vx, vy) and vx != vy):
        raise ValueError(f"y {tuple(y.shape)} does not match x {tuple(x.shape)} in (B, |V|)")
    if loss is squared_error and fy is not None and fy != g_out:
        raise ValueError(f"y has {fy} outputs per node, the GCNN's output width g_L is {g_out}")


def check_parameters(gcnn: GCNN, theta, optimizer: Optimizer, shift, mixing, x=None) -> None:
    """A ValueError naming what does not fit: theta (|theta|,) for a centralized optimizer, (|V|, |theta|) per-node
    copies for a distributed one, which also needs the mixing operator W (static shapes, as :func:`check_batch`);
    theta, the operators' values and the batch ``x`` in one dtype."""
    for name, op in (("shift", shift), ("mixing", mixing)):
        if isinstance(op, SparseOperator):
            raise ValueError(f"the {name} operator is a NumPy SparseOperator: convert it with core.ops.to_operator")
    tensors = {"theta": theta, "x": x, "shift": getattr(shift, "values", None),
               "mixing": getattr(mixing, "values", None)}
    dtypes = {name: tf.as_dtype(t.dtype).name for name, t in tensors.items() if getattr(t, "dtype", None) is not None}
    if len(set(dtypes.values())) > 1:
        raise ValueError("parameters, batch and operators must share one dtype (core.ops.to_operator(op, dtype)), "
                         "got " + ", ".join(f"{name} {dtype}" for name, dtype in dtypes.items()))
    size, shape = gcnn.num_params, tuple(getattr(theta, "shape", ()))
    if optimizer.centralized:
        if len(shape) != 1 or shape[0] not in (None, size):
            raise ValueError(f"{optimizer.name} needs one shared parameter vector of shape ({size},), got {shape}")
        return
    if len(shape) != 2 or shape[1] not in (None, size) or shape[0] not in (None, shift.num_nodes):
        raise ValueError(f"{optimizer.name} needs a parameter copy per node, shape ({shift.num_nodes}, {size}) "
                         f"(core.replicas.replicate), got {shape}")
    if optimizer.consensus != "none" and mixing is None:
        raise ValueError(f"{optimizer.name} mixes over the graph: pass the mixing operator W (to_operator of "
                         "Graph.metropolis_hastings())")


def node_major(x, y, self_factor=None):
    """Sample-major batch (B, |V|, g) to the node-major layout of ``core`` (|V|, B, g)."""
    if self_factor is not None and self_factor.shape.rank == 2:
        self_factor = tf.transpose(self_factor)
    return tf.transpose(x, [1, 0, 2]), tf.transpose(y, [1, 0, 2]), self_factor


def consensus_update(optimizer: Optimizer, theta, state, grad, mixing: Operator | None, lr, exchange):
    """Algorithm 1, line 12: the consensus rounds ``optimizer`` needs, then its local update.

    ``grad`` holds the local gradients summed over the mini-batch ((|V|, |theta|), or (|theta|,) for a
    centralized optimizer, which mixes nothing). Gradient consensus runs K rounds x <- W x (eq. 15) on the
    optimizer's :meth:`~core.optimizers.Optimizer.consensus_payload` (g, or [theta, g] for D-GCP-Adam);
    parameter consensus mixes the optimizer's payload once (eq. 17: theta, [theta, u~] for D-AMSGrad,
    [theta, y] for D-GT and D-GT-Adam, all known when the mini-batch starts, so that the schedule can
    piece them over the forward rounds). Every round goes through
    ``exchange`` (a :class:`core.comm.CommSimulator` counts it). Shared by :class:`BatchedExecutor` and
    :mod:`core.trainer` (whose apps may compute ``grad`` in their own way).

    Under packet loss, per-sample consensus (``naive``: :attr:`core.comm.CommSimulator.mixes_per_sample`) gets
    per-sample gradients (|V|, B, |theta|): each sample's gradient is mixed in its own K rounds (their masks
    differ), and the step uses the sums over the samples.
    """
    mixed = None
    if optimizer.consensus == "gradient":
        mixed = optimizer.consensus_payload(theta, grad, state)
        for k in range(1, optimizer.consensus_rounds + 1):
            mixed = exchange.propagate(mixing, mixed, message=("grad", k))  # eq. (15)
        if grad.shape.rank == 3 and mixed.shape.rank == 3:  # per sample (naive under loss): sum_b W_b^K g(b)
            grad, mixed = tf.reduce_sum(grad, axis=1), tf.reduce_sum(mixed, axis=1)
    elif optimizer.consensus == "parameter":
        mixed = exchange.propagate(mixing, optimizer.payload(theta, state), message=("param", 0))
    return optimizer.step(theta, grad, mixed, state, lr)


@dataclass
class StepResult:
    theta: tf.Tensor
    state: tuple
    loss: tf.Tensor
    cost: CommCost


class _Executor:
    """What both executors share: the model, the loss and the gradient of the loss at the output."""

    def __init__(self, gcnn: GCNN, loss: Callable = squared_error):
        self.gcnn = gcnn
        self.loss = loss

    def schedule_for(self, optimizer: Optimizer, batch_size: int) -> Schedule:
        return Schedule(optimizer.schedule, self.gcnn.num_layers, batch_size, optimizer.consensus_rounds,
                        optimizer.payload_size(self.gcnn.num_params))

    def output_gradient(self, y_hat: tf.Tensor, y: tf.Tensor):
        """Z^L = d(sum_i l_i)/dX^L (eq. 11) and the node-mean loss, node-major (|V|, B, g_L)."""
        with tf.GradientTape() as tape:
            tape.watch(y_hat)
            per_node = self.loss(y_hat, y)
            total = tf.reduce_sum(per_node)
        return tape.gradient(total, y_hat), tf.reduce_mean(per_node)

    def centralized_gradient(self, theta, x, y, shift, self_factor, sim):
        """Gradient of sum_b mean_i l_i(b) for shared parameters; counts the forward rounds only.

        On an operator view of one MPI rank (``shift.global_num_nodes``), the gradient of this rank's
        nodes' share sum_b sum_{i owned} l_i(b) / |V|: the sum over ranks (an Allreduce) is the gradient.
        """
        x, y, self_factor = node_major(x, y, self_factor)
        with tf.GradientTape() as tape:
            tape.watch(theta)
            y_hat, _ = self.gcnn.forward(unflatten(self.gcnn, theta), x, shift, self_factor, exchange=sim)
            per_node = self.loss(y_hat, y)
            total_nodes = getattr(shift, "global_num_nodes", None)
            if total_nodes is None:
                objective = tf.reduce_sum(tf.reduce_mean(per_node, axis=0))
            else:  # this rank's part of the objective (an operator view): the ranks' parts sum to it
                objective = tf.reduce_sum(per_node) / tf.cast(total_nodes, per_node.dtype)
        return tape.gradient(objective, theta), tf.reduce_mean(per_node)


class BatchedExecutor(_Executor):
    """All B samples of a mini-batch at once; records the same payloads as the protocol executor."""

    def local_gradients(self, theta, x, y, shift: Operator, self_factor=None, sim=None):
        """Per-node local gradients (|V|, |theta|) summed over the batch (eq. 8c), and the loss; per sample,
        (|V|, B, |theta|), when the simulator mixes per sample (naive consensus under packet loss)."""
        x, y, self_factor = node_major(x, y, self_factor)
        params = unflatten(self.gcnn, theta)
        sim = sim or CommSimulator(Schedule("piggyback", self.gcnn.num_layers, x.shape[1]))
        per_sample = bool(getattr(sim, "mixes_per_sample", False))
        y_hat, cache = self.gcnn.forward(params, x, shift, self_factor, exchange=sim)
        z_out, loss = self.output_gradient(y_hat, y)
        grads = local_backprop(self.gcnn, params, cache, z_out, shift, self_factor, exchange=sim,
                               per_sample=per_sample)
        return (flatten_per_sample(grads) if per_sample else flatten(grads)), loss

    def train_step(self, theta, state, x, y, shift: Operator, mixing: Operator | None,
                   optimizer: Optimizer, lr, self_factor=None, links: LinkContext | None = None,
                   kernels: CSRKernels | None = None) -> StepResult:
        """One mini-batch: gradients, consensus per the optimizer's schedule, local update (under the link
        model of ``links``, if given; exchanges over the operators of ``kernels`` as CSR products)."""
        check_parameters(self.gcnn, theta, optimizer, shift, mixing, x)
        check_batch(self.gcnn, x, y, shift.num_nodes, self.loss)
        sim = CommSimulator(self.schedule_for(optimizer, x.shape[0]), links=links, kernels=kernels)
        if optimizer.centralized:
            grad, loss = self.centralized_gradient(theta, x, y, shift, self_factor, sim)
        else:
            grad, loss = self.local_gradients(theta, x, y, shift, self_factor, sim)
        theta, state = consensus_update(optimizer, theta, state, grad, mixing, lr, sim)
        return StepResult(theta, state, loss, sim.cost())


class ProtocolExecutor(_Executor):
    """Runs a mini-batch exactly as the network would: round by round, sample by sample (eager only)."""

    def train_step(self, theta, state, x, y, shift: Operator, mixing: Operator | None,
                   optimizer: Optimizer, lr, self_factor=None, links: LinkContext | None = None) -> StepResult:
        check_parameters(self.gcnn, theta, optimizer, shift, mixing, x)
        check_batch(self.gcnn, x, y, shift.num_nodes, self.loss)
        schedule = self.schedule_for(optimizer, x.shape[0])
        sim = CommSimulator(schedule, links=links)
        if optimizer.centralized:
            # The server computes the gradient; the network only runs the forward passes. Run them
            # literally so their rounds are counted, then take the centralized gradient (of the forward
            # passes as they ran: under loss, on the same masks and the stale values they started from).
            replay = NO_COUNT if links is None else CommSimulator(schedule, links=links.with_stale())
            self._run(schedule, sim, unflatten(self.gcnn, tf.repeat(theta[None], shift.num_nodes, 0)), x, y,
                      shift, self_factor, None, None, backward=False)
            grad, loss = self.centralized_gradient(theta, x, y, shift, self_factor, replay)
            mixed = None
        else:
            payload = optimizer.payload(theta, state) if optimizer.consensus == "parameter" else None
            grad, mixed, loss = self._run(schedule, sim, unflatten(self.gcnn, theta), x, y, shift, self_factor,
                                          mixing, payload, backward=True,
                                          gradient_payload=lambda g: optimizer.consensus_payload(theta, g, state))
        theta, state = optimizer.step(theta, grad, mixed, state, lr)
        return StepResult(theta, state, loss, sim.cost())

    def _run(self, schedule: Schedule, sim: CommSimulator, params, x, y, shift, self_factor, mixing,
             payload, backward: bool, gradient_payload=None):
        """``gradient_payload`` maps the batch-summed local gradient to what batch-level gradient consensus
        mixes (identity by default); per-sample consensus (``naive``) mixes each sample's gradient."""
        gradient_payload = gradient_payload or (lambda g: g)
        gcnn, L, B = self.gcnn, self.gcnn.num_layers, schedule.B
        layers = gcnn.unpack(params)
        num_nodes = shift.num_nodes

        def sample_op(op: Operator, b: int) -> Operator:
            return op._replace(values=op.values[b:b + 1]) if op.per_sample else op

        def sample_factor(b: int):
            if self_factor is None or self_factor.shape.rank == 1:
                return self_factor
            return tf.transpose(self_factor[b:b + 1])  # node-major (|V|, 1)

        caches = [ForwardCache([], [], []) for _ in range(B)]
        feats = [[tf.transpose(x[b:b + 1], [1, 0, 2])] for b in range(B)]  # X^0(b), X^1(b), ... node-major
        q = [dict() for _ in range(B)]  # Q^l(b) once known
        own_terms = [dict() for _ in range(B)]  # s_i Theta0^l Q^l(b), the local term of eq. (14)
        sample_grads = [[None] * L for _ in range(B)]  # per-layer local gradients of each sample
        losses = []
        consensus = {}  # (sample or None) -> current consensus iterate
        mixed_payload = None
        if payload is not None:
            degree_column = tf.zeros([num_nodes, 1], payload.dtype)  # d_i rides in piece 0 (counted only)
            full_payload = tf.concat([degree_column, payload], axis=-1)
            mixed_payload = [None] * full_payload.shape[-1]

        def gradient_of(b):
            if any(g is None for g in sample_grads[b]):
                raise ScheduleError(f"gradient of sample {b} used before its backward pass finished")
            return flatten([g for layer in sample_grads[b] for g in layer])

        def require(value, what):
            if value is None:
                raise ScheduleError(f"{what} is sent before it has been computed")
            return value

        for t, messages in enumerate(schedule.timeline()):
            items = []
            for m in messages:
                b = m.sample
                if m.kind == "fwd":
                    x_in = feats[b][m.index - 1] if len(feats[b]) >= m.index else None
                    items.append((m, sample_op(shift, b), require(x_in, f"X^{m.index - 1} of sample {b}")))
                elif m.kind == "bwd":
                    qb = require(q[b].get(m.index), f"Q^{m.index} of sample {b}")
                    own_terms[b][m.index], message = backward_products(layers[m.index - 1], qb, sample_factor(b))
                    items.append((m, sample_op(shift, b).transposed(), message))
                elif m.kind == "grad":
                    key = b
                    if m.index == 1:
                        consensus[key] = gradient_of(b) if b is not None else gradient_payload(tf.add_n(
                            [gradient_of(s) for s in range(B)]))
                    items.append((m, mixing, consensus[key]))
                elif m.kind == "param":
                    _, start, stop = schedule.param_pieces()[m.index]
                    items.append((m, mixing, full_payload[:, start:stop]))
            received = sim.exchange_round(t, items)
            for (m, _, _), r in zip(items, received):
                b = m.sample
                if m.kind == "fwd":
                    feats[b].append(gcnn.layer_update(m.index, layers[m.index - 1], feats[b][-1], r,
                                                      sample_factor(b), caches[b]))
                    if m.index == L:
                        z, loss = self.output_gradient(caches[b].outputs[-1],
                                                       tf.transpose(y[b:b + 1], [1, 0, 2]))
                        losses.append(loss)
                        if backward:
                            q[b][L], sample_grads[b][L - 1] = layer_gradients(gcnn, L, layers[L - 1], caches[b], z)
                elif m.kind == "bwd":
                    l = m.index
                    z = own_terms[b][l] + r  # eq. (14)
                    q[b][l - 1], sample_grads[b][l - 2] = layer_gradients(gcnn, l - 1, layers[l - 2], caches[b], z)
                elif m.kind == "grad":
                    consensus[b] = r
                elif m.kind == "param":
                    _, start, stop = schedule.param_pieces()[m.index]
                    for k in range(start, stop):
                        mixed_payload[k] = r[:, k - start]
        loss = tf.reduce_mean(tf.stack(losses))
        if not backward:
            return None, None, loss
        grad = tf.add_n([gradient_of(b) for b in range(B)])
        if schedule.name == "naive":
            mixed = tf.add_n([consensus[b] for b in range(B)])
        elif schedule.name in ("batch", "piggyback"):
            mixed = consensus[None]
        else:
            mixed = tf.stack(mixed_payload[1:], axis=-1)  # drop the degree column
        return grad, mixed, loss
