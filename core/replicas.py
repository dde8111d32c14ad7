"""Per-node parameter copies: replication, flattening, the consensus model and the consensus error.

Distributed training keeps one copy theta^i of every parameter tensor per node, stored as one tensor
with a leading node axis of size |V| (theta^i = theta[i]). All copies start equal (Algorithm 1,
line 1); the node average theta_bar is the network's consensus model (Algorithm 1, line 15).
Optimizers and executors work on the *flat* form: one vector (|theta|,) for a shared model, one
matrix (|V|, |theta|) for per-node copies.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf


def replicate(theta: tf.Tensor, num_nodes: int) -> tf.Tensor:
    """Equal per-node copies of a shared tensor (flat vector or any parameter): a leading |V| axis."""
    return tf.repeat(theta[None], num_nodes, axis=0)


def flatten(params, per_node: bool = False) -> tf.Tensor:
    """Concatenate a parameter list into (|theta|,), or (|V|, |theta|) for per-node copies."""
    if per_node:
        n = params[0].shape[0]
        return tf.concat([tf.reshape(p, [n, -1]) for p in params], axis=-1)
    return tf.concat([tf.reshape(p, [-1]) for p in params], axis=-1)


def unflatten(theta: tf.Tensor, shapes) -> list[tf.Tensor]:
    """Split a flat (|theta|,) or (|V|, |theta|) vector into tensors of the given (per-copy) shapes."""
    lead = list(theta.shape[:-1])
    sizes = [int(np.prod(s)) for s in shapes]
    return [tf.reshape(p, lead + list(s)) for p, s in zip(tf.split(theta, sizes, axis=-1), shapes)]


def consensus_model(theta: tf.Tensor) -> tf.Tensor:
    """theta_bar = mean_i theta^i (Algorithm 1, line 15), for flat per-node copies (|V|, |theta|)."""
    return tf.reduce_mean(theta, axis=0)


def consensus_error(theta: tf.Tensor) -> tf.Tensor:
    """max_i ||theta^i - theta_bar|| / ||theta_bar|| for flat per-node copies (docs/design.md, section 2)."""
    mean = tf.reduce_mean(theta, axis=0, keepdims=True)
    spread = tf.reduce_max(tf.norm(theta - mean, axis=1))
    return spread / tf.maximum(tf.norm(mean), tf.constant(1e-30, theta.dtype))
