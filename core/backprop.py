"""Fully distributed backpropagation of a GCNN (eqs. 11-14), as local computation plus message passing.

For the loss l = sum_i l_i, node i holds Z_i^L = dl/dX_i^L (eq. 11; 2(y_hat_i - y_i) for the squared
error) and, layer by layer from L down to 1:

    Q_i^l = Z_i^l * sigma_l'(H_i^l)                                                    (12)
    dl/dTheta0^{l,i} = (s_i X_i^{l-1})^T Q_i^l                                          (13a)
    dl/dTheta1^{l,i} = (sum_j S_ij X_j^{l-1})^T Q_i^l   (aggregate reused from the forward pass, 13b)
    dl/db^{l,i}      = sum over samples of Q_i^l
    Z_i^{l-1} = s_i Theta0^{l,i} Q_i^l + sum_{j in N+(i)} S_ji Theta1^{l,j} Q_j^l         (14)

The only message of the backward pass is P_j^l = Theta1^{l,j} Q_j^l (size g_{l-1}), broadcast by node j
for layers l = L..2: L - 1 rounds per sample. Summed over the mini-batch, what node i obtains is
exactly its local gradient sum_j dl_j/dtheta^i of eq. (8c).

All tensors are node-major (|V|, B, g); parameters are per-node copies (leading node axis). With
``per_sample=True`` the gradients are kept per sample, (|V|, B, ...) (what per-sample consensus mixes under
packet loss, docs/design.md, section 12); their sum over B is the default result.
"""

from __future__ import annotations

import tensorflow as tf

from core.gcnn import GCNN, NO_COUNT, Exchange, ForwardCache, LayerParams, _node_major_factor, stacked_weights
from core.ops import Operator


def layer_gradients(gcnn: GCNN, l: int, layer: LayerParams, cache: ForwardCache, z: tf.Tensor,
                    per_sample: bool = False):
    """Q^l (eq. 12) and the local gradients of layer l's parameters (eqs. 13a-b), summed over samples (or per
    sample, with a sample axis after the node axis)."""
    i = l - 1
    q = gcnn.activation(l).vjp(cache.preactivations[i], cache.outputs[i], z)
    # [s X^{l-1}, S X^{l-1}]^T Q^l gives dTheta0 (13a) and dTheta1 (13b) at once; the aggregate is reused
    if per_sample:
        stacked_grad = tf.einsum("vbi,vbo->vbio", cache.stacked[i], q)  # (|V|, B, 2 g_{l-1}, g_l)
    else:
        stacked_grad = tf.linalg.matmul(cache.stacked[i], q, transpose_a=True)  # (|V|, 2 g_{l-1}, g_l)
    grads = tf.split(stacked_grad, 2, axis=-2)
    if layer.bias is not None:
        grads.append(q if per_sample else tf.reduce_sum(q, axis=1))
    return q, grads


def backward_products(layer: LayerParams, q: tf.Tensor, self_factor=None):
    """(s_i Theta0^{l,i} Q_i^l, P_i^l = Theta1^{l,i} Q_i^l): node i's own term of eq. (14) and the
    message it broadcasts in the backward round of layer l, from one product."""
    own, message = tf.split(tf.linalg.matmul(q, stacked_weights(layer), transpose_b=True), 2, axis=-1)
    if self_factor is not None:
        own = own * _node_major_factor(self_factor)
    return own, message


def local_backprop(gcnn: GCNN, params, cache: ForwardCache, z_out: tf.Tensor, shift: Operator,
                   self_factor=None, exchange: Exchange = NO_COUNT, per_sample: bool = False) -> list[tf.Tensor]:
    """Local gradients of every node's parameter copy, summed over the mini-batch.

    Args:
        gcnn, params: the architecture and its per-node parameter copies.
        cache: the :class:`ForwardCache` of the forward pass on the same batch.
        z_out: Z^L = dl/dX^L, node-major (|V|, B, g_L).
        shift: the shift operator S of the forward pass; the backward round applies S^T.
        self_factor: the self factor of the forward pass, if any.
        exchange: performs (and may count) each backward round.
        per_sample: keep a sample axis (module docstring).

    Returns:
        Per-node gradients in the layout of ``params`` (with a sample axis after the node axis if ``per_sample``).
    """
    layers = gcnn.unpack(params)
    grads_by_layer = [None] * gcnn.num_layers
    z = z_out
    transposed = shift.transposed()
    for l in range(gcnn.num_layers, 0, -1):
        layer = layers[l - 1]
        q, grads_by_layer[l - 1] = layer_gradients(gcnn, l, layer, cache, z, per_sample)
        if l > 1:
            own, message = backward_products(layer, q, self_factor)
            z = own + exchange.propagate(transposed, message, message=("bwd", l))  # eq. (14)
    return [g for layer_grads in grads_by_layer for g in layer_grads]
