"""Actor and critic of the GCNN-LGS link scheduler (docs/design.md, section 9, paper Section IV-C, ref. [8]).

The *actor* is a 3-layer GCNN (1 -> 32 -> 32 -> 1, leaky ReLU (0.2), leaky ReLU, ReLU, no bias) on the
conflict graph with S = normalized Laplacian and input ones. Its output z >= 0 scales the vertex
weights: the schedule is LGS(z * w) (:mod:`apps.link_scheduling.lgs`). Since LGS is not differentiable,
the actor learns through a *critic* ("twin", Zhao et al., ref. [8]): a 5-layer GCNN (2 -> 64 -> 64 -> 64
-> 64 -> 2, leaky ReLU, softmax, with bias) that maps the actor's output to a per-node prediction of
its share of the utility.

Choices where docs/design.md, section 9 leaves room (all as in the paper authors' published code):

- Critic input: x = [1, z~] per node, normalised per sample as (x - mean) / (6 std) + 0.5 with one
  scalar mean and (population) standard deviation over all 2|V| entries of that sample's x. The
  normalisation is part of the critic, so the actor's gradient flows through it too.
- Critic target, per node: channel 0 is w'_i 1{i in LGS(z' * w')} with fresh weights w' ~ U(0, 1)
  and z' = z~ + U(-0.075, 0.075); channel 1 is 1 minus channel 0 (the softmax pair sums to 1).
  z' may dip below 0 (z = 0 plus noise); LGS needs non-negative weights, so z' * w' is clipped at 0:
  those vertices keep the lowest priority, which is what a negative weight means to a greedy solver.
- Critic loss: per sample sqrt(MSE over all |V| x 2 outputs), averaged over the mini-batch, plus
  5e-4 times the squared norm of the kernels Theta0, Theta1 (Keras ``l2(5e-4)`` on the kernels, which
  leaves the biases unregularised).
- "The critic's mean output" that the actor maximises is the node mean of channel 0, the predicted
  utility share. It cannot be the mean over both channels: by the softmax that is 1/2 whatever z is.
  Per sample the actor's loss is -sum_i c_i0 for per-node copies, -mean_i c_i0 for a shared model, so
  that node averages of local gradients equal the centralized gradient (docs/design.md, section 3).

Metric: the utility ratio u(LGS(z * w)) / u(LGS(w)) of a sample, u(S) = sum_{i in S} w_i, averaged
over samples (the authors average per-sample ratios too).

Tensors are node-major (|V|, B, g) as everywhere in ``core``; the NumPy helpers take sample-major
(B, |V|) arrays like the LGS.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from apps.link_scheduling.lgs import local_greedy_mwis
from core.gcnn import GCNN, NO_COUNT, Exchange
from core.ops import Operator
from core.replicas import unflatten

ACTOR = GCNN((1, 32, 32, 1), ("leaky_relu", "leaky_relu", "relu"), bias=False, leaky_slope=0.2)
CRITIC = GCNN((2, 64, 64, 64, 64, 2), ("leaky_relu",) * 4 + ("softmax",), bias=True, leaky_slope=0.2)
SHIFT = "normalized_laplacian"
EXPLORATION_NOISE = 0.03  # z~ = z + U(-0.03, 0.03): the input of the critic and of the actor's objective
TARGET_NOISE = 0.075  # z' = z~ + U(-0.075, 0.075): the scaling under which the critic's target is measured
CRITIC_L2 = 5e-4


def actor_output(theta, shift: Operator, exchange: Exchange = NO_COUNT, samples: int = 1) -> tf.Tensor:
    """The actor's z (|V|,) for flat shared (|theta|,) or per-node (|V|, |theta|) parameters; (|V|, samples)
    for ``samples`` > 1.

    Algorithm 1 (line 8) runs the forward pass once per sample, but with input ones, one graph and one
    theta per mini-batch the B passes of a mini-batch are identical: the simulation computes one and
    ``exchange`` (a :class:`core.comm.CommSimulator` built for B samples) records the B per-sample
    payloads that the network sends. By linearity, the backward pass of the summed output gradient
    is the sum of the B per-sample backward passes, and is counted for B samples in the same way.
    Over imperfect links the B passes differ (each sample's rounds lose other packets): the caller then
    asks for all B (``samples`` = B).
    """
    params = unflatten(theta, ACTOR.param_shapes())
    ones = tf.ones([shift.num_nodes, samples, 1], theta.dtype)
    z, _ = ACTOR.forward(params, ones, shift, exchange=exchange)
    return z[:, 0, 0] if samples == 1 else z[:, :, 0]


class DenseExchange(Exchange):
    """Neighbour aggregation as a dense |V| x |V| product, for the centralized critic.

    The critic runs at a server that holds the whole graph, so nothing is sent between neighbours; at
    |V| = 100 with B = 100 samples of 64 features, one dense product is far faster than the gather and
    segment sum of :func:`core.ops.apply_operator` (which moves nnz x B x 64 floats).
    """

    def propagate(self, op: Operator, x: tf.Tensor, message=None) -> tf.Tensor:
        del message
        dense = tf.scatter_nd(tf.stack([op.rows, op.cols], axis=1), op.values, [op.num_nodes, op.num_nodes])
        return tf.tensordot(dense, x, axes=[[1], [0]])


DENSE = DenseExchange()


def critic_input(z_tilde: tf.Tensor, scale_free: bool = False) -> tf.Tensor:
    """[1, z~] per node, normalised per sample: (x - mean) / (6 std) + 0.5, node-major (|V|, B, 2).

    With ``scale_free``, z~ is first divided by its mean over the nodes of its sample. LGS only compares
    z w, so a rescaled z is the same schedule; the authors' input, mixing z~ with the constant 1, is not
    scale-free, and the actor then chases the critic's response to the overall scale of z (z's mean
    grew from 1 to 10-22 and the test ratio swung by +-0.03 between mini-batches in the authors' loop).
    """
    if scale_free:
        z_tilde = z_tilde / tf.reduce_mean(z_tilde, axis=0, keepdims=True)
    x = tf.stack([tf.ones_like(z_tilde), z_tilde], axis=-1)
    mean = tf.reduce_mean(x, axis=[0, 2], keepdims=True)
    std = tf.sqrt(tf.reduce_mean(tf.square(x - mean), axis=[0, 2], keepdims=True))
    # the exploration noise makes std > 0; the floor only keeps a degenerate input finite
    return (x - mean) / (6.0 * tf.maximum(std, tf.constant(1e-12, x.dtype))) + 0.5


def critic_output(critic_theta, z_tilde: tf.Tensor, shift: Operator, scale_free: bool = False) -> tf.Tensor:
    """Softmax pair per node and sample, (|V|, B, 2), of the shared critic (flat (|theta_c|,))."""
    params = unflatten(critic_theta, CRITIC.param_shapes())
    out, _ = CRITIC.forward(params, critic_input(z_tilde, scale_free), shift, exchange=DENSE)  # centralized
    return out


def critic_loss(out: tf.Tensor, target: tf.Tensor, critic_theta) -> tf.Tensor:
    """Mean over samples of sqrt(MSE) over nodes and both channels, plus 5e-4 ||kernels||^2."""
    per_sample = tf.sqrt(tf.reduce_mean(tf.square(out - target), axis=[0, 2]))
    return tf.reduce_mean(per_sample) + critic_l2(critic_theta)


def critic_l2(critic_theta) -> tf.Tensor:
    """The critic's regularizer 5e-4 ||kernels||^2 (Keras ``l2(5e-4)`` on Theta0, Theta1, not biases)."""
    kernels = [p for layer in CRITIC.unpack(unflatten(critic_theta, CRITIC.param_shapes()))
               for p in (layer.theta0, layer.theta1)]
    return CRITIC_L2 * tf.add_n([tf.reduce_sum(tf.square(k)) for k in kernels])


def actor_loss(out: tf.Tensor, per_node: bool) -> tf.Tensor:
    """Minus the critic's predicted utility share (channel 0), summed over samples: summed over nodes
    for per-node copies, averaged over nodes for a shared model (see the module docstring)."""
    share = out[..., 0]
    return -tf.reduce_sum(share) if per_node else -tf.reduce_sum(tf.reduce_mean(share, axis=0))


# ---------------------------------------------------------------------------- NumPy side (LGS)
def utilities(adjacency: np.ndarray, priorities: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """u(LGS(priorities)) = sum of ``weights`` over the set LGS picks with ``priorities``, per sample.

    adjacency (V, V) bool; priorities, weights (B, V). Returns (utilities (B,), LGS rounds (B,)).
    """
    in_set, rounds = local_greedy_mwis(adjacency, np.maximum(priorities, 0.0), validate=False)
    return np.sum(weights * in_set, axis=-1), rounds


def critic_targets(adjacency: np.ndarray, z_tilde: np.ndarray, weights: np.ndarray,
                   noise: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Targets (B, V, 2) of the critic: [w' 1{i in LGS(z' * w')}, 1 - that] with z' = z~ + noise.

    z_tilde, weights (w') and noise are (B, V). Also returns the LGS rounds (B,) of each sample.
    """
    in_set, rounds = local_greedy_mwis(adjacency, np.maximum((z_tilde + noise) * weights, 0.0), validate=False)
    share = weights * in_set
    return np.stack([share, 1.0 - share], axis=-1), rounds


def utility_ratio(adjacency: np.ndarray, z: np.ndarray, weights: np.ndarray,
                  baseline: np.ndarray | None = None) -> np.ndarray:
    """Per-sample u(LGS(z * w)) / u(LGS(w)) for z, weights (B, V) (``baseline``: the u(LGS(w)) if known)."""
    if baseline is None:
        baseline, _ = utilities(adjacency, weights, weights)
    scaled, _ = utilities(adjacency, z * weights, weights)
    return scaled / baseline
