"""UWMMSE (Chowdhury et al., IEEE TWC 2021; paper Section IV-B; docs/design.md, section 8): WMMSE unfolded into
K layers whose MSE weights are rescaled by GCNN outputs, ŵ = a^k ⊙ w + b^k.

Each unfolded layer k runs one `wmmse.wmmse_step` from v^{k-1} (v^0 = √Pmax) with a^k and b^k from two
2-layer GCNNs (widths 1 → 5 → 1, ReLU then sigmoid, bias): input X = ones (N x 1), shift S = H
(S_ij = H_ij, all N x N entries) and diag(H) as the self factor, X' = act(diag(H) X Θ0 + H X Θ1 + b)
(eq. 10 with a per-sample asymmetric shift). The objective is the sum-rate of p = (v^K)².

Parameters: one flat vector, the 2K GCNNs' parameter lists flattened in the order a1, b1, a2, b2, ...,
shape (|θ|,) shared or (N, |θ|) per-node copies (distributed training: node i runs every GCNN with its
own copy, docs/design.md, section 2).

The 2K GCNNs have the same architecture, input and shift, so they run as *one* core GCNN on P = 2K
stacked copies of the node set (virtual node p*N + i is node i running GCNN p, with node i's copy of
GCNN p's parameters; :meth:`UWMMSE.stacked_params`). Each layer is then one product and one exchange
for all of them, instead of 2K: a smaller XLA program (measured on this machine: compilation 16 -> 7 s,
a distributed training step 9 -> 2.5 ms).

Neighbour exchanges per sample (L = 2K + 2 sequential exchanges, the schedule's "layers"):

=========  ====================================================================  ==============
exchange   what every node broadcasts                                              floats
=========  ====================================================================  ==============
1          X^0 of all 2K GCNNs; (v^0_j)² for the interference sum of layer 1       2K + 1
2          X^1 of all 2K GCNNs                                                      2K · hidden
2k+1       u_j² ŵ_j of layer k, for the feedback sum Σ_j H_ij² u_j² ŵ_j (k = 1..K)  1
2k+2       (v^k_j)², for the interference sum Σ_{j≠i} H_ji² (v^k_j)² heard by          1
           receiver i in layer k+1, or in the rates of the objective (k = K)
=========  ====================================================================  ==============

The GCNNs take constant input, so all 2K of them run in the first two rounds, bundled (part
``"gcnn"``). A receiver could measure its total received power instead of being sent the (v_j)²,
but its transposed exchange in the backward pass (telling each transmitter j how its power affected
receiver i's rate) is a real message; counting the forward exchange too keeps the pipeline in the
Schedule's form (backward exchange l mirrors forward exchange l, exchange 1 has no backward since its
inputs are constants) and costs one float per round. Under the eq. (17) schedule a mini-batch takes
LB + L - 1 rounds (649 for B = 64, K = 4).

Over imperfect links (docs/design.md, sections 8 and 12) packets are lost on the GCNN exchanges (forward 1 and
2, backward 2) and in the consensus rounds; the WMMSE sums are measurements of the channel and are never lost,
their backward included (issue #16's model: the loss applies to the GCNN messages and consensus only).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import tensorflow as tf

from apps.power_allocation.exchange import DenseExchange, complete_operator
from apps.power_allocation.wmmse import ChannelSums, in_dtype, link_rates, wmmse_step
from core.gcnn import GCNN
from core.ops import Operator
from core.replicas import flatten, unflatten


class Channel(NamedTuple):
    """A mini-batch of channels H (B, N, N) (H[b, j, i]: transmitter j to receiver i) and its operators.

    ``shift``: S = H for the GCNNs; ``interference``: M_ij = H_ji² off the diagonal, so that (M p)_i =
    Σ_{j≠i} H_ji² p_j; ``feedback``: M_ij = H_ij², so that (M x)_i = Σ_j H_ij² x_j. All are
    :func:`~apps.power_allocation.exchange.complete_operator` operators with per-sample values.
    ``direct`` is diag(H), sample-major (B, N); on an MPI rank (``owned``: its pairs, sorted) only its
    pairs' (B, n_own), while the operators stay those of the whole network (the rank's exchange,
    :class:`~apps.power_allocation.exchange.RankRowsExchange`, takes their owned rows).
    """

    H: tf.Tensor
    direct: tf.Tensor
    shift: Operator
    interference: Operator
    feedback: Operator

    @classmethod
    def from_matrices(cls, H, owned=None) -> Channel:
        H = tf.convert_to_tensor(H)
        n = int(H.shape[-1])
        flat = [-1, n * n]
        H_sq = tf.square(H)
        direct = tf.linalg.diag_part(H)
        interference = tf.transpose(tf.linalg.set_diag(H_sq, tf.zeros_like(direct)), [0, 2, 1])
        mine = direct if owned is None else tf.gather(direct, owned, axis=-1)
        return cls(H, mine, complete_operator(tf.reshape(H, flat), n),
                   complete_operator(tf.reshape(interference, flat), n), complete_operator(tf.reshape(H_sq, flat), n))

    @classmethod
    def from_shift(cls, shift: Operator, owned=None) -> Channel:
        """The channel whose GCNN shift is ``shift`` (a per-sample complete operator, S = H)."""
        n = shift.num_nodes
        return cls.from_matrices(tf.reshape(shift.values, [-1, n, n]), owned)


class NetworkSums:
    """The neighbour sums of `wmmse.wmmse_step` / `wmmse.link_rates` as exchanges of ``exchange``.

    ``interference_index`` and ``feedback_index`` number the two exchanges in the pipeline (see the
    module docstring); payloads are tagged with the part ``"wmmse"``. They are physical measurements of the
    channel (received power, the feedback of the reciprocal link), not messages: counted in their rounds, but
    never lost over imperfect links (docs/design.md, section 8), in either direction.
    """

    def __init__(self, channel: Channel, exchange: DenseExchange, interference_index: int,
                 feedback_index: int | None = None):
        self.channel, self.direct = channel, channel.direct
        self.exchange = exchange.view(0, "wmmse", measurement=True)
        self.interference_index, self.feedback_index = interference_index, feedback_index

    def interference(self, p):
        return self._exchange(self.channel.interference, p, self.interference_index)

    def feedback(self, x):
        if self.feedback_index is None:
            raise ValueError("these sums have no feedback exchange")
        return self._exchange(self.channel.feedback, x, self.feedback_index)

    def _exchange(self, op: Operator, x, index: int):
        # sample-major (B, N) <-> the node-major (N, B, 1) payload of an exchange
        y = self.exchange.propagate(op, tf.transpose(x)[:, :, None], message=("fwd", index))
        return tf.transpose(y[:, :, 0])


def unfold(H, sigma2, pmax, coefficients, channel: Channel | None = None, exchange=None):
    """Transmit amplitudes v^K after the unfolded layers, one `wmmse_step` per (a^k, b^k) pair.

    Without ``exchange`` the sums are dense (`wmmse.ChannelSums`), exactly as `wmmse.wmmse` computes
    them; with one, they are the exchanges 1, 3, 4, 5, ... of the module docstring on ``channel``.
    a = 1 and b = 0 in every layer is WMMSE truncated to K iterations ("WMMSE-Tr").
    """
    H = tf.convert_to_tensor(H)
    pmax = in_dtype(pmax, H.dtype)  # built in H's dtype, never through float32
    # v^0 = √Pmax (docs/design.md, section 8), for the pairs whose amplitudes are computed here
    v = tf.ones_like(H[..., 0] if channel is None else channel.direct) * tf.sqrt(pmax)
    for k, (a, b) in enumerate(coefficients, start=1):
        if exchange is None:
            sums = ChannelSums(H)
        else:  # interference of v^{k-1}: exchange 1 for k = 1 (bundled with the GCNNs' first), else 2k
            sums = NetworkSums(channel, exchange, interference_index=1 if k == 1 else 2 * k, feedback_index=2 * k + 1)
        v = wmmse_step(H, v, sigma2, pmax, a, b, sums=sums)
    return v


class UWMMSE:
    """The UWMMSE architecture: ``num_layers`` unfolded layers (K), each with GCNNs a and b.

    Args:
        num_layers: K (4 in the paper).
        hidden: hidden width of every GCNN (5 in the paper).
    """

    def __init__(self, num_layers: int = 4, hidden: int = 5):
        if num_layers < 1 or hidden < 1:
            raise ValueError(f"need at least one unfolded layer and one hidden feature, got {num_layers}, {hidden}")
        self.num_layers, self.hidden = int(num_layers), int(hidden)
        self.gcnn = GCNN((1, self.hidden, 1), ("relu", "sigmoid"), bias=True)
        self.parts = tuple(f"{name}{k}" for k in range(1, self.num_layers + 1) for name in "ab")

    @property
    def num_params(self) -> int:
        """|θ|: 2K GCNNs of (1·h)·2 + h + (h·1)·2 + 1 scalars each (208 for K = 4, h = 5)."""
        return len(self.parts) * self.gcnn.num_params

    @property
    def num_exchanges(self) -> int:
        """L, the sequential exchanges per sample (module docstring): 2 for the GCNNs, 2 per layer."""
        return 2 + 2 * self.num_layers

    def init_theta(self, seed: int, dtype=tf.float32) -> tf.Tensor:
        """Shared initial θ: every GCNN Glorot-uniform with biases 0.1 (docs/design.md, section 8), one seed each."""
        seeds = np.random.SeedSequence(int(seed)).generate_state(len(self.parts))
        return tf.concat([flatten(self.gcnn.init_params(int(s), "glorot", dtype, bias_init=0.1)) for s in seeds], 0)

    def stacked_params(self, theta: tf.Tensor, num_nodes: int) -> list[tf.Tensor]:
        """GCNN parameters for the stacked run (module docstring): per block (P, ...) or per virtual node (P*N, ...).

        Shared θ (|θ|,) gives per-block parameters (P, ...): the N virtual nodes of GCNN p share its
        copy (core.gcnn's per-block form: one batched product per GCNN instead of one per virtual node,
        ~7 % of a centralized training step). Per-node copies (N, |θ|) are regrouped part-major, so that
        virtual node p*N + i holds node i's copy of GCNN p. On an MPI rank, ``num_nodes`` is its n_own
        pairs and θ its rows (n_own, |θ|): virtual row p*n_own + k is its k-th pair's copy of GCNN p, the
        layout of its exchanges (apps/power_allocation/exchange.py); checkpoints hold θ per pair, never
        this layout.
        """
        parts, size = len(self.parts), self.gcnn.num_params
        if theta.shape.rank == 1:
            stacked = tf.reshape(theta, [parts, size])
        else:
            per_node = tf.reshape(theta, [num_nodes, parts, size])
            stacked = tf.reshape(tf.transpose(per_node, [1, 0, 2]), [parts * num_nodes, size])
        return unflatten(stacked, self.gcnn.param_shapes())

    def coefficients(self, theta, channel: Channel, exchange) -> list[tuple[tf.Tensor, tf.Tensor]]:
        """(a^k, b^k) per unfolded layer, sample-major (B, N) (on an MPI rank (B, n_own), its pairs);
        exchanges 1 and 2 (all GCNNs bundled)."""
        n, parts, batch = int(channel.direct.shape[-1]), len(self.parts), tf.shape(channel.direct)[0]
        x = tf.ones([parts * n, batch, 1], channel.H.dtype)  # input features: ones (N x 1) for every GCNN
        self_factor = tf.tile(tf.transpose(channel.direct), [parts, 1])  # diag(H), node-major (P*N, B)
        y, _ = self.gcnn.forward(self.stacked_params(theta, n), x, channel.shift, self_factor,
                                 exchange=exchange.view(0, "gcnn"))
        out = tf.transpose(tf.reshape(y, [parts, n, batch]), [0, 2, 1])  # (P, B, N)
        return [(out[2 * k], out[2 * k + 1]) for k in range(self.num_layers)]

    def amplitudes(self, theta, channel: Channel, sigma2, pmax, exchange=None) -> tf.Tensor:
        """Transmit amplitudes v^K (B, N); p = v² are the allocated powers."""
        exchange = DenseExchange(None) if exchange is None else exchange
        coefficients = self.coefficients(theta, channel, exchange)
        return unfold(channel.H, sigma2, pmax, coefficients, channel, exchange)

    def rates(self, theta, channel: Channel, sigma2, pmax, exchange=None) -> tuple[tf.Tensor, tf.Tensor]:
        """(link rates (B, N) in bit/s/Hz, powers (B, N)); the rates' interference is exchange L."""
        exchange = DenseExchange(None) if exchange is None else exchange
        v = self.amplitudes(theta, channel, sigma2, pmax, exchange)
        p = tf.square(v)
        sums = NetworkSums(channel, exchange, interference_index=self.num_exchanges)
        return link_rates(channel.H, p, sigma2, sums), p
