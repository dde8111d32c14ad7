"""Graph convolutional NN (eqs. 9-10): layers, parameters and the message-passing forward pass.

Layer l maps node features X^{l-1} (g_{l-1} per node) to X^l (g_l per node):

    H_i^l = s_i X_i^{l-1} Theta0^{l,i} + (sum_{j in N+(i)} S_ij X_j^{l-1}) Theta1^{l,i} (+ b^{l,i})   (10)
    X_i^l = sigma_l(H_i^l)

where s_i is an optional per-node self factor (1 by default; UWMMSE uses diag(H)). Node i applies its
*own* copy Theta1^{l,i} to the aggregate of its neighbours' raw features (docs/design.md, section 2 explains
why this, and not eq. (10) as printed, is the form that eqs. (13b)-(14) differentiate).

Parameters are a flat list ``[Theta0^1, Theta1^1, (b^1), Theta0^2, ...]`` (see :meth:`GCNN.unpack`).
*Shared* parameters have their natural shapes ((g_{l-1}, g_l) and (g_l,)); *per-node* copies add a
leading node axis of size |V| (see :mod:`core.replicas`). The forward pass works with either, and with
*per-block* copies: a leading axis of size G < |V| dividing |V|, consecutive blocks of |V|/G nodes sharing
one copy (several GCNNs run as one on stacked copies of the node set, e.g. UWMMSE's, trained centrally:
one batched product per block instead of one per node).

Features are node-major (|V|, B, g) inside ``core`` (see :mod:`core.ops`); ``forward`` also accepts
and returns the sample-major (B, |V|, g) layout of the public API via ``sample_major=True``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import tensorflow as tf

from core.ops import Operator, apply_operator

ACTIVATIONS = ("sigmoid", "relu", "leaky_relu", "tanh", "identity", "softmax")
INITIALIZERS = ("uniform", "glorot")


class Exchange:
    """The neighbour-exchange interface used by the forward and backward passes.

    ``propagate(op, x, message)`` returns ``op @ x`` (node-major); ``message`` names what is sent so
    that a :class:`core.comm.CommSimulator` can count it. This base class only computes: it is what
    centralized code and the GradientTape oracle use.
    """

    def propagate(self, op: Operator, x: tf.Tensor, message=None) -> tf.Tensor:
        del message
        return apply_operator(op, x)


NO_COUNT = Exchange()


@dataclass(frozen=True)
class Activation:
    """An activation function with its vector-Jacobian product (for eq. 12)."""

    name: str
    slope: float = 0.2  # negative slope of leaky ReLU

    def __post_init__(self):
        if self.name not in ACTIVATIONS:
            raise ValueError(f"unknown activation {self.name!r}; choose one of {', '.join(ACTIVATIONS)}")

    def __call__(self, h: tf.Tensor) -> tf.Tensor:
        if self.name == "sigmoid":
            return tf.sigmoid(h)
        if self.name == "relu":
            return tf.nn.relu(h)
        if self.name == "leaky_relu":
            # not tf.nn.leaky_relu: its alpha attribute is a float32, off by ~1e-8 in float64 runs; and
            # the slope is built in h's dtype, since tf.cast(0.2, tf.float64) goes through float32
            return tf.where(h > 0, h, tf.constant(self.slope, h.dtype) * h)
        if self.name == "tanh":
            return tf.tanh(h)
        if self.name == "softmax":
            return tf.nn.softmax(h, axis=-1)
        return h

    def vjp(self, h: tf.Tensor, out: tf.Tensor, z: tf.Tensor) -> tf.Tensor:
        """Q = dl/dH given Z = dl/dX, H and X = sigma(H): Z * sigma'(H) for elementwise sigma (eq. 12)."""
        if self.name == "sigmoid":
            return z * out * (1 - out)
        if self.name == "relu":
            return z * tf.cast(h > 0, h.dtype)
        if self.name == "leaky_relu":
            return tf.where(h > 0, z, tf.constant(self.slope, h.dtype) * z)  # the slope exact, as above
        if self.name == "tanh":
            return z * (1 - out * out)
        if self.name == "softmax":  # not elementwise: J^T z = s * (z - <z, s>)
            return out * (z - tf.reduce_sum(z * out, axis=-1, keepdims=True))
        return z


class LayerParams(NamedTuple):
    theta0: tf.Tensor
    theta1: tf.Tensor
    bias: tf.Tensor | None


class ForwardCache(NamedTuple):
    """What every node keeps from the forward pass for reuse in backpropagation (Section III-C)."""

    stacked: list  # [s_i X_i^{l-1}, sum_j S_ij X_j^{l-1}] per layer, (|V|, B, 2 g_{l-1}) (eqs. 13a-b)
    preactivations: list  # H^l per layer
    outputs: list  # X^l per layer


@dataclass(frozen=True)
class GCNN:
    """An L-layer GCNN architecture: widths g_0..g_L, one activation per layer, optional biases.

    Args:
        widths: feature sizes (g_0, ..., g_L); L = len(widths) - 1 >= 1.
        activations: one name per layer, or one name for all layers (see :data:`ACTIVATIONS`).
        bias: whether layers have a bias, one bool for all or one per layer.
        leaky_slope: negative slope of ``leaky_relu``.
    """

    widths: tuple
    activations: tuple | str = "sigmoid"
    bias: tuple | bool = False
    leaky_slope: float = 0.2
    _acts: tuple = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        bad = ValueError(f"widths must list g_0..g_L (at least two positive integers), got {self.widths!r}")
        try:
            widths = tuple(int(w) for w in self.widths)
        except (TypeError, ValueError):
            raise bad from None
        if len(widths) < 2 or min(widths) < 1 or widths != tuple(self.widths):  # (2.7 is not a width)
            raise bad
        n_layers = len(widths) - 1
        acts = (self.activations,) * n_layers if isinstance(self.activations, str) else tuple(self.activations)
        if isinstance(self.bias, bool | np.bool_):
            bias = (bool(self.bias),) * n_layers
        elif isinstance(self.bias, tuple | list) and all(isinstance(b, bool | np.bool_) for b in self.bias):
            bias = tuple(map(bool, self.bias))
        else:
            raise ValueError(f"bias must be a bool or one bool per layer, got {self.bias!r}")
        if len(acts) != n_layers or len(bias) != n_layers:
            raise ValueError(f"need one activation and one bias flag per layer ({n_layers} layers)")
        object.__setattr__(self, "widths", widths)
        object.__setattr__(self, "activations", acts)
        object.__setattr__(self, "bias", bias)
        object.__setattr__(self, "_acts", tuple(Activation(a, self.leaky_slope) for a in acts))

    @property
    def num_layers(self) -> int:
        return len(self.widths) - 1

    def param_shapes(self) -> list[tuple]:
        shapes = []
        for l in range(self.num_layers):
            g_in, g_out = self.widths[l], self.widths[l + 1]
            shapes += [(g_in, g_out), (g_in, g_out)] + ([(g_out,)] if self.bias[l] else [])
        return shapes

    @property
    def num_params(self) -> int:
        """|theta|, the number of scalars in one copy of the parameters."""
        return int(sum(np.prod(s) for s in self.param_shapes()))

    def init_params(self, seed: int, init: str = "uniform", dtype=tf.float32, scale: float | tuple = 1.0,
                    bias_init: float = 0.0) -> list[tf.Tensor]:
        """One shared copy of the parameters.

        ``uniform``: entries ~ scale * U(0, 1) (the paper's node-regression setting, where ``scale`` may
        be a pair (scale of Theta0, scale of Theta1)); ``glorot``: Glorot-uniform. Biases start at
        ``bias_init``.
        """
        if init not in INITIALIZERS:
            raise ValueError(f"unknown initializer {init!r}; choose one of {', '.join(INITIALIZERS)}")
        s0, s1 = (scale, scale) if np.isscalar(scale) else scale
        rng = np.random.default_rng(seed)
        params = []
        for l in range(self.num_layers):
            g_in, g_out = self.widths[l], self.widths[l + 1]
            for s in (s0, s1):
                if init == "uniform":
                    w = s * rng.uniform(0.0, 1.0, (g_in, g_out))
                else:
                    limit = np.sqrt(6.0 / (g_in + g_out))
                    w = rng.uniform(-limit, limit, (g_in, g_out))
                params.append(tf.constant(w, dtype))
            if self.bias[l]:
                params.append(tf.constant(np.full((g_out,), bias_init), dtype))
        return params

    def unpack(self, params) -> list[LayerParams]:
        """Split the flat parameter list into per-layer (Theta0, Theta1, bias)."""
        if len(params) != len(self.param_shapes()):
            raise ValueError(f"expected {len(self.param_shapes())} parameter tensors, got {len(params)}")
        layers, k = [], 0
        for l in range(self.num_layers):
            b = params[k + 2] if self.bias[l] else None
            layers.append(LayerParams(params[k], params[k + 1], b))
            k += 3 if self.bias[l] else 2
        return layers

    def activation(self, layer: int) -> Activation:
        """Activation of layer ``layer`` (1-based, as in the paper)."""
        return self._acts[layer - 1]

    # ------------------------------------------------------------------ forward pass
    def forward(self, params, x, shift: Operator, self_factor=None, exchange: Exchange = NO_COUNT,
                sample_major: bool = False):
        """Run the L message-passing rounds of eq. (10) on a mini-batch.

        Args:
            params: shared or per-node parameter list.
            x: node features, node-major (|V|, B, g_0) (or (B, |V|, g_0) with ``sample_major``).
            shift: the graph shift operator S as an :class:`core.ops.Operator`.
            self_factor: optional s_i in front of the Theta0 term, (|V|,) or node-major (|V|, B)
                ((B, |V|) with ``sample_major``).
            exchange: performs (and may count) each round's neighbour exchange.

        Returns:
            (X^L, cache): the output (same layout as x) and a :class:`ForwardCache` (node-major).
        """
        if sample_major:
            x = tf.transpose(x, [1, 0, 2])
            if self_factor is not None and self_factor.shape.rank == 2:
                self_factor = tf.transpose(self_factor)
        cache = ForwardCache([], [], [])
        for l, layer in enumerate(self.unpack(params), start=1):
            agg = exchange.propagate(shift, x, message=("fwd", l))  # one round: node j sends X_j^{l-1}
            x = self.layer_update(l, layer, x, agg, self_factor, cache)

        if sample_major:
            x = tf.transpose(x, [1, 0, 2])
        return x, cache

    def layer_update(self, l: int, layer: LayerParams, x, agg, self_factor, cache: ForwardCache):
        """Node-local part of layer l (eq. 10) once the round's aggregate has arrived; returns X^l."""
        x_self = x if self_factor is None else x * _node_major_factor(self_factor)
        stacked = tf.concat([x_self, agg], axis=-1)
        h = node_matmul(stacked, stacked_weights(layer))  # X Theta0 + (S X) Theta1 in one product
        if layer.bias is not None:
            h = _add_bias(h, layer.bias)
        out = self.activation(l)(h)
        cache.stacked.append(stacked)
        cache.preactivations.append(h)
        cache.outputs.append(out)
        return out


def stacked_weights(layer: LayerParams) -> tf.Tensor:
    """[Theta0; Theta1] stacked on the input axis, so eq. (10) is one product per layer."""
    return tf.concat([layer.theta0, layer.theta1], axis=-2)


def node_matmul(x: tf.Tensor, theta: tf.Tensor) -> tf.Tensor:
    """x (|V|, B, g_in) times theta: shared (g_in, g_out), per node (|V|, g_in, g_out), or per block of
    consecutive nodes (G, g_in, g_out) (module docstring)."""
    if theta.shape.rank == 3:
        nodes, blocks = x.shape[0], theta.shape[0]
        if blocks != nodes:  # one product per block of nodes: (G, |V|/G * B, g_in) @ (G, g_in, g_out)
            if nodes is not None and blocks is not None and nodes % blocks:
                raise ValueError(f"{blocks} parameter copies neither match nor evenly divide the {nodes} nodes")
            y = tf.linalg.matmul(tf.reshape(x, [blocks, -1, x.shape[-1]]), theta)
            return tf.reshape(y, [nodes, -1, theta.shape[-1]])
        return tf.linalg.matmul(x, theta)  # batched over the node axis: each node uses its own copy
    return tf.tensordot(x, theta, axes=[[x.shape.rank - 1], [0]])


def _add_bias(h: tf.Tensor, bias: tf.Tensor) -> tf.Tensor:
    """h (|V|, B, g) plus a shared (g,), per-node (|V|, g) or per-block (G, g) bias."""
    if bias.shape.rank == 1:
        return h + bias
    if bias.shape[0] == h.shape[0]:
        return h + bias[:, None, :]
    blocks = bias.shape[0]
    return tf.reshape(tf.reshape(h, [blocks, -1, h.shape[-1]]) + bias[:, None, :], tf.shape(h))


def _node_major_factor(self_factor: tf.Tensor) -> tf.Tensor:
    """Broadcast a self factor of shape (|V|,) or (|V|, B) against (|V|, B, g)."""
    return self_factor[:, None, None] if self_factor.shape.rank == 1 else self_factor[:, :, None]
