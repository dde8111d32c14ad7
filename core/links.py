"""Imperfect links: packet erasures, Gilbert-Elliott bursts, link failures and what receivers do about them.

Pure core (docs/design.md, section 12): this module knows graphs and operators, not wireless or apps.
It decides *which packets are lost* and computes *what a receiver does with the rest*; the exchange layer
(:mod:`core.comm`, the executors, the MPI exchange) calls it.

**Packets.** A packet is one round's broadcast from a sender j to one receiver i, i.e. one directed link
j -> i in one round. Every payload bundled into that round's message (e.g. the forward payload of one
sample and the piggybacked backward payload of another) travels in the same packet and is lost with it.
A piece of theta that rides on a round (the ``param`` pieces of the ``dopt`` schedule) is its own packet:
its draws use ``packet=1`` instead of ``packet=0``. A node's own (diagonal) term is never a packet and
is never lost.

**Loss models** (:class:`LinkModel`):

- independent erasures: each packet is lost with probability p (``--loss-prob``);
- a Gilbert-Elliott chain per directed link (:class:`GilbertElliott`): a good and a bad state with
  transition probabilities p_gb (good -> bad) and p_bg (bad -> good), both > 0, and a loss probability
  per state; each link starts in the chain's stationary distribution;
- link failures: each undirected link is down for a whole mini-batch with probability q
  (``--link-failure``); S and the Metropolis-Hastings W are then rebuilt on the surviving graph
  (:func:`restrict_operator`, :func:`surviving_mixing`, :func:`surviving_graph`, :func:`on_pattern`).

**The stream.** Every draw is a pure function of integers, never of a generator's state, the rank or the
local order of the edges, so that an MPI run (each rank drawing for the links it receives on, in its own
local order) loses exactly the packets a single process loses. The uniform of a key is

    h = splitmix64(seed); h = splitmix64(h ^ w) for w in (domain, mini_batch, round, attempt, packet,
    sender, receiver); u = (h >> 11) * 2**-53   (in [0, 1), 53 bits)

where ``splitmix64(x) = mix(x + 0x9E3779B97F4A7C15)`` is the output function of Steele, Lea and
Flood's SplitMix64 generator, ``mix(z)``: ``z ^= z >> 30; z *= 0xBF58476D1CE4E5B9; z ^= z >> 27;
z *= 0x94D049BB133111EB; z ^= z >> 31`` in wrapping uint64 arithmetic (NumPy). ``splitmix64(0)`` is
0xE220A8397B1DCDAF, the first output of the reference generator seeded with 0 (a test pins it and keyed
values). Sender and receiver are *global* node ids; mini_batch is the global mini-batch counter of the
run (0-based, across epochs); round is the 0-based round of :class:`core.comm.Schedule` within the
mini-batch; attempt is 0 for the scheduled transmission and a = 1..R for its retransmissions; domains
separate the uses: :data:`LOSS` (is this packet lost), :data:`CHAIN` (a Gilbert transition),
:data:`INIT` (a link's initial Gilbert state), :data:`FAILURE` (is this undirected link down for the
mini-batch; keyed with round = attempt = packet = 0 and (min, max) of its endpoints).

**The Gilbert chain's state** is the one thing that is not stateless: it is carried in a small
:class:`GilbertState` (per directed link: its code, its state, and the (mini_batch, round, attempt) of
its last step) that the caller keeps (by default the :class:`LinkModel` keeps one) and checkpoints
(:meth:`GilbertState.arrays`). The state is nonetheless a deterministic function of the stream: a link
seen for the first time starts bad iff its INIT uniform is below the stationary probability
p_gb / (p_gb + p_bg); each *transmission* on the link -- a distinct (mini_batch, round, attempt) in which
it is drawn, retransmissions included -- first advances the chain once with that step's CHAIN uniform
(good -> bad iff u < p_gb, bad -> good iff u < p_bg), then loses each packet of the step iff its LOSS
uniform is below the state's loss probability. Drawing the same step again (another packet or another
operator of the same round) reuses the state; drawing an earlier step raises ``ValueError``. A link that
transmits nothing in an extra retransmission round does not advance, so a link's chain depends only on
its own transmissions, not on other links' losses: any process that draws a link's steps in order
computes the same chain.

**Receiver policies** (:class:`LossPolicy`, ``--on-loss``): ``zero`` (a lost neighbour term counts as 0),
``stale`` (reuse the last payload of the same slot, i.e. message kind and layer, received from that
neighbour; 0 before the first: :class:`StaleBuffer`), ``retransmit:R`` (lost packets are repeated in
extra global rounds, as many as the worst link of the round needed, at most R; what is still lost after
R counts as 0: :meth:`LinkModel.retransmit`, :meth:`LinkModel.plan`). In a consensus (mixing) round a
lost packet's weight moves to the receiver's own term, W_ii += W_ij (:func:`lossy_mixing_values`): rows
stay stochastic, columns do not. The exchanges compute it as the receiver's own value in place of the lost
message (sum_j W_ij (lost ? x_i : x_j): the same sum, with no weights to move).

:func:`lossy_apply` is the TensorFlow exchange under loss (gather + segment sum with masked edges,
node-major features as :mod:`core.ops`); it traces under ``tf.function``; :func:`lossy_apply_pieces` does the
same for a payload whose column groups are packets of their own (the eq. (17) theta pieces). Drawing is done
before a mini-batch runs, because it depends on the stream only, never on the data: :meth:`LinkModel.plan`
draws a whole mini-batch's losses (with retransmissions) in NumPy (the reference), :func:`draw_plans` several
mini-batches at once with the same bits (independent erasures as one XLA program, :func:`stream_hash_tf`).

**Wiring** (docs/design.md, section 12): :class:`LinkLayout` lists the directed links of a graph's operators
(global ids, both directions) and where each operator entry's packet is among them; :class:`LinkContext`
holds one mini-batch's lost tensor, policy and stale buffer as a :class:`core.comm.CommSimulator` sees them
(:meth:`LinkContext.mask`); :class:`LinkSetup` is what :class:`core.trainer.Trainer` takes (built from the
command-line flags by :meth:`LinkSetup.from_flags`, the link seed :func:`link_seed` of the training seed);
:func:`surviving_mixing_tf` rebuilds W on the surviving links inside a compiled program.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import tensorflow as tf

from core.graph import Graph, SparseOperator
from core.ops import Operator, to_operator

POLICIES = ("zero", "stale", "retransmit")

# stream domains (the second word of every key); EVAL derives the seeds of evaluations under loss
LOSS, CHAIN, INIT, FAILURE, EVAL = 1, 2, 3, 4, 5

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31, _S11 = np.uint64(30), np.uint64(27), np.uint64(31), np.uint64(11)
_CODE_SHIFT = 32  # link code = sender << 32 | receiver (global ids below 2**31)


# ---------------------------------------------------------------------------------------------- the stream
def splitmix64(x) -> np.ndarray:
    """SplitMix64's output function on uint64 (wrapping arithmetic): mix(x + 0x9E3779B97F4A7C15)."""
    z = np.asarray(x, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = z + _GOLDEN
        z = (z ^ (z >> _S30)) * _M1
        z = (z ^ (z >> _S27)) * _M2
    return z ^ (z >> _S31)


def _words(w) -> np.ndarray:
    a = np.asarray(w)
    if not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"stream key words must be integers, got dtype {a.dtype}")
    if a.size and a.min() < 0:
        raise ValueError(f"stream key words must be non-negative, got {a.min()}")
    return a.astype(np.uint64)


def stream_hash(seed, domain, mini_batch, round, attempt, packet, sender, receiver) -> np.ndarray:
    """The uint64 hash of a key (module docstring); array arguments broadcast."""
    h = splitmix64(_words(seed))
    for w in (domain, mini_batch, round, attempt, packet, sender, receiver):
        h = splitmix64(h ^ _words(w))
    return h


def stream_uniform(seed, domain, mini_batch, round, attempt, packet, sender, receiver) -> np.ndarray:
    """The float64 uniform in [0, 1) of a key: the top 53 bits of :func:`stream_hash`."""
    h = stream_hash(seed, domain, mini_batch, round, attempt, packet, sender, receiver)
    return (h >> _S11).astype(np.float64) * 2.0 ** -53


# ------------------------------------------------------------------------------------------- validation
def check_probability(value, flag: str) -> float:
    """``value`` as a float in [0, 1), else a one-line ValueError naming ``flag``."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{flag} must be a probability in [0, 1), got {value!r}")
    v = float(value)
    if not (math.isfinite(v) and 0.0 <= v < 1.0):
        raise ValueError(f"{flag} must be a probability in [0, 1), got {value!r}")
    return v


MAX_RETRANSMISSIONS = 100
"""The largest R of ``retransmit:R``. The erasure program draws all R + 1 attempts of every packet (its time
and memory grow with R, not with the retransmissions a run needs) and counts them in int8; R = 100 already
delivers a packet lost with probability 0.95 per attempt in all but 0.6 % of cases."""


@dataclass(frozen=True)
class LossPolicy:
    """What a receiver does with a lost packet: ``zero``, ``stale`` or ``retransmit`` (at most R rounds,
    1 <= R <= :data:`MAX_RETRANSMISSIONS`)."""

    kind: str = "zero"
    max_retransmissions: int = 0

    def __post_init__(self):
        if self.kind not in POLICIES:
            raise ValueError(f"--on-loss must be zero, stale or retransmit:R, got {self.kind!r}")
        if self.retransmits and not 1 <= self.max_retransmissions <= MAX_RETRANSMISSIONS:
            raise ValueError(f"--on-loss retransmit:R takes R from 1 to {MAX_RETRANSMISSIONS}, got "
                             f"{self.max_retransmissions}")

    @classmethod
    def parse(cls, text) -> LossPolicy:
        """``zero``, ``stale`` or ``retransmit:R`` (integer 1 <= R <= :data:`MAX_RETRANSMISSIONS`); a one-line
        ValueError naming --on-loss."""
        if isinstance(text, LossPolicy):
            return text
        bad = ValueError(f"--on-loss must be zero, stale or retransmit:R with an integer R >= 1, got {text!r}")
        if not isinstance(text, str):
            raise bad
        name, sep, arg = text.strip().partition(":")
        if name in ("zero", "stale") and not sep:
            return cls(name)
        if name == "retransmit" and sep and arg.strip().isascii() and arg.strip().isdigit() and int(arg) >= 1:
            return cls("retransmit", int(arg))  # (R above the maximum: __post_init__ says so)
        raise bad

    @property
    def retransmits(self) -> bool:
        return self.kind == "retransmit"

    def __str__(self) -> str:
        return f"retransmit:{self.max_retransmissions}" if self.retransmits else self.kind


@dataclass(frozen=True)
class GilbertElliott:
    """A two-state (good, bad) Markov chain per directed link with a loss probability per state."""

    p_gb: float
    p_bg: float
    loss_good: float = 0.0
    loss_bad: float = 0.5

    def __post_init__(self):
        for name, flag in (("p_gb", "--gilbert-p-gb"), ("p_bg", "--gilbert-p-bg"),
                           ("loss_good", "--gilbert-loss-good"), ("loss_bad", "--gilbert-loss-bad")):
            object.__setattr__(self, name, check_probability(getattr(self, name), flag))
        for name, flag in (("p_gb", "--gilbert-p-gb"), ("p_bg", "--gilbert-p-bg")):
            if getattr(self, name) == 0.0:
                raise ValueError(f"{flag} must be > 0: with a zero transition probability the Gilbert-Elliott chain "
                                 f"has no stationary bad state")

    @property
    def stationary_bad(self) -> float:
        """pi_bad = p_gb / (p_gb + p_bg)."""
        return self.p_gb / (self.p_gb + self.p_bg)

    @property
    def loss_rate(self) -> float:
        """Long-run loss probability (1 - pi_bad) loss_good + pi_bad loss_bad."""
        pi = self.stationary_bad
        return (1.0 - pi) * self.loss_good + pi * self.loss_bad

    @property
    def loss_after_loss(self) -> float:
        """P(the link's next transmission is lost | this one was), in the stationary regime."""
        pi, lg, lb = self.stationary_bad, self.loss_good, self.loss_bad
        m = self.loss_rate
        if m == 0.0:
            return 0.0
        post_bad = pi * lb / m  # P(bad | lost)
        next_bad = post_bad * (1.0 - self.p_bg) + (1.0 - post_bad) * self.p_gb
        return next_bad * lb + (1.0 - next_bad) * lg

    @property
    def correlation(self) -> float:
        """lambda = 1 - p_gb - p_bg: the state's autocorrelation per step."""
        return 1.0 - self.p_gb - self.p_bg


# ---------------------------------------------------------------------------------------- Gilbert state
def link_codes(senders, receivers) -> np.ndarray:
    """int64 code sender << 32 | receiver of each directed link (global ids)."""
    s, r = np.asarray(senders, np.int64), np.asarray(receivers, np.int64)
    if (s.size and s.min() < 0) or (r.size and r.min() < 0) or (s.size and max(s.max(), r.max()) >= 2 ** 31):
        raise ValueError("node ids must be in [0, 2**31)")
    return (s << _CODE_SHIFT) | r


@dataclass
class GilbertState:
    """Per directed link, sorted by code: the chain state (True = bad) and the step it was last advanced at.

    ``last`` is (n, 3) int64 (mini_batch, round, attempt), -1 for a link never advanced.
    """

    codes: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    bad: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    last: np.ndarray = field(default_factory=lambda: np.zeros((0, 3), np.int64))

    def copy(self) -> GilbertState:
        return GilbertState(self.codes.copy(), self.bad.copy(), self.last.copy())

    def arrays(self) -> dict[str, np.ndarray]:
        """For checkpoints; :meth:`from_arrays` restores it exactly."""
        return {"codes": self.codes.copy(), "bad": self.bad.copy(), "last": self.last.copy()}

    @classmethod
    def from_arrays(cls, arrays) -> GilbertState:
        return cls(np.asarray(arrays["codes"], np.int64), np.asarray(arrays["bad"], bool),
                   np.asarray(arrays["last"], np.int64).reshape(-1, 3))

    def _index(self, codes: np.ndarray, seed: int, chain: GilbertElliott) -> np.ndarray:
        """Positions of ``codes``, adding unseen links in their stationary initial state (INIT draws)."""
        pos = np.searchsorted(self.codes, codes)
        if self.codes.size and np.array_equal(self.codes[pos.clip(0, self.codes.size - 1)], codes):
            return pos  # every link known (the common case)
        new = np.setdiff1d(codes, self.codes)
        if new.size:
            u = stream_uniform(seed, INIT, 0, 0, 0, 0, new >> _CODE_SHIFT, new & (2 ** _CODE_SHIFT - 1))
            codes_all = np.concatenate([self.codes, new])
            order = np.argsort(codes_all, kind="stable")
            self.codes = codes_all[order]
            self.bad = np.concatenate([self.bad, u < chain.stationary_bad])[order]
            self.last = np.concatenate([self.last, np.full((new.size, 3), -1, np.int64)])[order]
        return np.searchsorted(self.codes, codes)


# ----------------------------------------------------------------------------------------- the link model
@dataclass
class LinkCounters:
    """Realised counts: packets drawn (first transmissions), lost at first, retransmitted, still lost after
    retransmission, extra rounds; undirected link-mini-batches drawn and down."""

    packets: int = 0
    lost: int = 0
    retransmitted: int = 0
    still_lost: int = 0
    extra_rounds: int = 0
    links: int = 0
    links_down: int = 0

    @property
    def loss_rate(self) -> float:
        return self.lost / self.packets if self.packets else 0.0

    @property
    def residual_loss_rate(self) -> float:
        """Fraction of packets never delivered (equal to loss_rate without retransmission)."""
        return self.still_lost / self.packets if self.packets else 0.0

    @property
    def failure_rate(self) -> float:
        return self.links_down / self.links if self.links else 0.0


@dataclass(frozen=True)
class LossPlan:
    """The losses of one mini-batch, drawn before it runs (:meth:`LinkModel.plan`).

    Attributes:
        senders, receivers: (E,) the directed links drawn (global ids), in the caller's order.
        lost: (T, P, E) bool: packet p of round t on link e is lost after any retransmission (False for a
            packet that round does not carry).
        first_lost: (T, P, E) bool: lost at the scheduled transmission.
        extra_rounds: (T,) int: retransmission rounds after round t (0 without retransmission).
        retransmitted: (T, P) int: of those, the rounds in which packet p of round t was pending on some link
            (what a retransmission round broadcasts: :meth:`LinkModel.plan`); extra_rounds is its max over p.
    """

    senders: np.ndarray
    receivers: np.ndarray
    lost: np.ndarray
    first_lost: np.ndarray
    extra_rounds: np.ndarray
    retransmitted: np.ndarray | None = None

    @property
    def total_extra_rounds(self) -> int:
        return int(self.extra_rounds.sum())

    def link_index(self, senders, receivers) -> np.ndarray:
        """Position in the plan's links of each (sender, receiver); -1 for a diagonal entry."""
        codes = link_codes(self.senders, self.receivers)
        order = np.argsort(codes, kind="stable")
        query = link_codes(senders, receivers)
        pos = np.searchsorted(codes[order], query).clip(0, max(len(codes) - 1, 0))
        found = codes[order][pos] == query if len(codes) else np.zeros(query.shape, bool)
        off = np.asarray(senders) != np.asarray(receivers)
        if np.any(off & ~found):
            k = np.flatnonzero(off & ~found)[0]
            s, r = int(np.asarray(senders)[k]), int(np.asarray(receivers)[k])
            raise ValueError(f"link {s} -> {r} is not in the plan")
        return np.where(off, order[pos], -1)

    def mask_for(self, op, rounds, packet: int = 0) -> np.ndarray:
        """(len(rounds), nnz) lost mask on ``op``'s entries (receiver = row, sender = col) for ``rounds``."""
        rows, cols = _pattern(op)
        idx = self.link_index(cols, rows)
        rounds = np.asarray(rounds, np.int64).reshape(-1)
        lost = self.lost[rounds, packet][:, np.maximum(idx, 0)]
        return lost & (idx >= 0)[None, :]


class LinkModel:
    """Draws which packets are lost and which links are down, from the counter-based stream only.

    Args:
        seed: the link stream's seed (a non-negative integer; not the trainer's generator).
        loss_prob: p, independent erasures per packet (``--loss-prob``); 0 with a Gilbert chain.
        link_failure: q, each undirected link down for a mini-batch (``--link-failure``).
        gilbert: a :class:`GilbertElliott` chain per directed link, instead of independent erasures.
    """

    def __init__(self, seed: int = 0, loss_prob: float = 0.0, link_failure: float = 0.0,
                 gilbert: GilbertElliott | None = None):
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= int(seed) < 2 ** 63:
            raise ValueError(f"the link seed must be an integer in [0, 2**63), got {seed!r}")
        self.seed = int(seed)
        self.loss_prob = check_probability(loss_prob, "--loss-prob")
        self.link_failure = check_probability(link_failure, "--link-failure")
        if gilbert is not None and self.loss_prob > 0:
            raise ValueError("--loss-prob and the Gilbert-Elliott flags (--gilbert-*) are exclusive: give one model")
        self.gilbert = gilbert
        self.chain = GilbertState()
        self.counters = LinkCounters()

    @classmethod
    def from_flags(cls, seed: int = 0, loss_prob: float = 0.0, link_failure: float = 0.0, gilbert_p_gb=None,
                   gilbert_p_bg=None, gilbert_loss_good: float = 0.0, gilbert_loss_bad=None) -> LinkModel:
        """From the command-line values; the chain is on iff any of p_gb, p_bg, loss_bad is given (all three
        are then required)."""
        given = {"--gilbert-p-gb": gilbert_p_gb, "--gilbert-p-bg": gilbert_p_bg,
                 "--gilbert-loss-bad": gilbert_loss_bad}
        chain = None
        if any(v is not None for v in given.values()):
            missing = [flag for flag, v in given.items() if v is None]
            if missing:
                raise ValueError(f"{missing[0]} is required with the other Gilbert-Elliott flags")
            chain = GilbertElliott(gilbert_p_gb, gilbert_p_bg, gilbert_loss_good, gilbert_loss_bad)
        return cls(seed, loss_prob, link_failure, chain)

    def for_evaluation(self, evaluation: int) -> LinkModel:
        """A fresh model of the same kind for evaluation number ``evaluation`` (e.g. a test pass over lossy
        links): its seed is the top 63 bits of stream_hash(seed, EVAL, evaluation, 0, ...), so evaluations
        draw apart from training (whose Gilbert chains they never advance) and from each other."""
        seed = int(stream_hash(self.seed, EVAL, int(evaluation), 0, 0, 0, 0, 0) >> np.uint64(1))
        return LinkModel(seed, self.loss_prob, self.link_failure, self.gilbert)

    @property
    def lossy(self) -> bool:
        """Whether packets can be lost (independent erasures or a chain)."""
        return self.loss_prob > 0 or (self.gilbert is not None and self.gilbert.loss_rate > 0)

    @property
    def active(self) -> bool:
        """False when nothing can ever be lost or down: callers may skip this module altogether."""
        return self.lossy or self.link_failure > 0

    # ------------------------------------------------------------------ packets
    def draw(self, mini_batch: int, round: int, senders, receivers, *, packet: int = 0, attempt: int = 0,
             chain: GilbertState | None = None) -> np.ndarray:
        """Lost flags (bool, shape of ``senders``) of packet ``packet`` of round ``round`` on each link
        sender -> receiver (global ids, any order; a diagonal entry is never lost). Counted as first
        transmissions when ``attempt == 0``. A Gilbert chain advances (module docstring)."""
        s, r = np.asarray(senders, np.int64), np.asarray(receivers, np.int64)
        lost = self._draw(mini_batch, round, s, r, packet, attempt, chain)
        if attempt == 0:
            self.counters.packets += int(np.count_nonzero(s != r))
            self.counters.lost += int(np.count_nonzero(lost))
            self.counters.still_lost += int(np.count_nonzero(lost))
        return lost

    def _draw(self, mini_batch, round, s, r, packet, attempt, chain) -> np.ndarray:
        if s.shape != r.shape:
            raise ValueError(f"senders and receivers must have the same shape, got {s.shape} and {r.shape}")
        off = s != r
        if not self.lossy:
            return np.zeros(s.shape, bool)
        if self.gilbert is None:
            u = stream_uniform(self.seed, LOSS, mini_batch, round, attempt, packet, s, r)
            return (u < self.loss_prob) & off
        return self._draw_gilbert(mini_batch, round, s, r, packet, attempt, chain) & off

    def _draw_gilbert(self, mini_batch, round, s, r, packet, attempt, chain) -> np.ndarray:
        ge, state = self.gilbert, self.chain if chain is None else chain
        out = np.zeros(s.shape, bool)
        off = s != r
        s, r = s[off], r[off]
        idx = state._index(link_codes(s, r), self.seed, ge)
        last = state.last[idx]
        step = np.array([mini_batch, round, attempt], np.int64)
        eq = np.all(last == step, axis=1)
        later = np.zeros(len(idx), bool)  # last step after this one
        undecided = np.ones(len(idx), bool)
        for k in range(3):
            later |= undecided & (last[:, k] > step[k])
            undecided &= last[:, k] == step[k]
        if np.any(later):
            raise ValueError(f"Gilbert-Elliott steps must be drawn in order: (mini_batch, round, attempt) = "
                             f"{tuple(int(v) for v in step)} is before a link's last step")
        adv = ~eq
        if np.any(adv):
            u = stream_uniform(self.seed, CHAIN, mini_batch, round, attempt, 0, s[adv], r[adv])
            was_bad = state.bad[idx[adv]]
            state.bad[idx[adv]] = np.where(was_bad, ~(u < ge.p_bg), u < ge.p_gb)
            state.last[idx[adv]] = step
        p = np.where(state.bad[idx], ge.loss_bad, ge.loss_good)
        out[off] = stream_uniform(self.seed, LOSS, mini_batch, round, attempt, packet, s, r) < p
        return out

    def retransmit(self, mini_batch: int, round: int, senders, receivers, lost, max_extra: int, *,
                   chain: GilbertState | None = None) -> tuple[int, np.ndarray]:
        """Repeat the lost packets of round ``round`` in extra global rounds a = 1..``max_extra``.

        ``lost`` is (E,) for one packet per link or (P, E), row p = packet p. In extra round a every link
        with a packet still pending transmits its pending packets (attempt a: a Gilbert chain advances);
        the rounds stop when nothing is pending (the network is synchronous: the round count is that of the
        worst link) or after ``max_extra``. Returns (extra rounds, still-lost flags of the shape of ``lost``).
        """
        extra, still, _ = self._retransmit(mini_batch, round, senders, receivers, lost, max_extra, chain)
        return extra, still

    def _retransmit(self, mini_batch, round, senders, receivers, lost, max_extra, chain):
        """:meth:`retransmit`, also returning per packet p the extra rounds in which it was pending somewhere."""
        s, r = np.asarray(senders, np.int64), np.asarray(receivers, np.int64)
        pending = np.array(lost, bool, copy=True)
        one = pending.ndim == 1
        pending = pending.reshape(1, -1) if one else pending
        if pending.shape[1:] != s.shape or s.ndim != 1:
            raise ValueError(f"lost must have shape (E,) or (P, E) with E = {s.size}, got {np.shape(lost)}")
        if isinstance(max_extra, bool) or int(max_extra) != max_extra or max_extra < 0:
            raise ValueError(f"the number of retransmission rounds must be a non-negative integer, got {max_extra!r}")
        pending &= (s != r)[None, :]
        before = int(np.count_nonzero(pending))
        extra = 0
        per_packet = np.zeros(pending.shape[0], np.int64)
        for a in range(1, int(max_extra) + 1):
            if not pending.any():
                break
            tx = pending.any(axis=0)
            per_packet += pending.any(axis=1)
            self.counters.retransmitted += int(np.count_nonzero(pending))
            for p in range(pending.shape[0]):
                again = np.zeros_like(tx)
                again[tx] = self._draw(mini_batch, round, s[tx], r[tx], p, a, chain)
                pending[p] &= again
            extra = a
        self.counters.extra_rounds += extra
        self.counters.still_lost -= before - int(np.count_nonzero(pending))  # delivered by retransmission
        return extra, (pending[0] if one else pending), per_packet

    def plan(self, mini_batch: int, senders, receivers, packets_per_round: Sequence[int], policy="zero", *,
             chain: GilbertState | None = None, active=None) -> LossPlan:
        """Draw a whole mini-batch: packets 0..packets_per_round[t]-1 of every round t in order, then (for
        ``retransmit:R``) their retransmissions. Links are directed, global ids, any order.

        ``active`` (E,) bool, default all: the links that transmit in this mini-batch (e.g. those up under
        link failures, :meth:`link_up`). An inactive link sends nothing: it is neither drawn nor counted, its
        packets are never flagged lost (its weights are 0 anyway) and its Gilbert chain does not advance.
        """
        policy = LossPolicy.parse(policy)
        s, r = np.asarray(senders, np.int64).reshape(-1), np.asarray(receivers, np.int64).reshape(-1)
        counts = np.asarray(packets_per_round, np.int64).reshape(-1)
        if counts.size and counts.min() < 0:
            raise ValueError("packets_per_round must be non-negative")
        T, P, E = counts.size, int(counts.max(initial=0)), s.size
        on = np.ones(E, bool) if active is None else np.asarray(active, bool).reshape(-1)
        if on.shape != (E,):
            raise ValueError(f"active must have shape ({E},), got {np.shape(active)}")
        sel = np.flatnonzero(on)
        s_on, r_on = s[sel], r[sel]
        exists = np.arange(P)[None, :] < counts[:, None]  # (T, P): the packets each round carries
        first = np.zeros((T, P, sel.size), bool)
        if self.gilbert is None and self.lossy and T and P:  # independent erasures: every round at once
            u = stream_uniform(self.seed, LOSS, mini_batch, np.arange(T)[:, None, None], 0,
                               np.arange(P)[None, :, None], s_on, r_on)
            first = (u < self.loss_prob) & (s_on != r_on) & exists[:, :, None]
        if self.gilbert is None or not self.lossy:
            self.counters.packets += int(np.count_nonzero(exists)) * int(np.count_nonzero(s_on != r_on))
            self.counters.lost += int(np.count_nonzero(first))
            self.counters.still_lost += int(np.count_nonzero(first))
        lost = first.copy()
        extra = np.zeros(T, np.int64)
        retransmitted = np.zeros((T, P), np.int64)
        for t in range(T):
            n_t = int(counts[t])
            if self.gilbert is not None and self.lossy:  # the chains advance in (round, attempt) order
                for p in range(n_t):
                    first[t, p] = self.draw(mini_batch, t, s_on, r_on, packet=p, chain=chain)
            if policy.retransmits and first[t, :n_t].any():
                extra[t], lost[t, :n_t], retransmitted[t, :n_t] = self._retransmit(
                    mini_batch, t, s_on, r_on, first[t, :n_t], policy.max_retransmissions, chain)
            else:
                lost[t] = first[t]

        def full(sub):
            out = np.zeros((T, P, E), bool)
            out[:, :, sel] = sub
            return out

        return LossPlan(s, r, full(lost), full(first), extra, retransmitted)

    def draw_plans(self, first_mini_batch: int, num: int, senders, receivers, packets_per_round, policy="zero",
                   **kwargs) -> PlanBatch:
        """The plans of ``num`` consecutive mini-batches, stacked: :func:`draw_plans` for this model."""
        return draw_plans(self, first_mini_batch, num, senders, receivers, packets_per_round, policy, **kwargs)

    # ------------------------------------------------------------------ link failures
    def link_up(self, mini_batch: int, senders, receivers) -> np.ndarray:
        """Whether each link is up for mini-batch ``mini_batch`` (both directions of an undirected link
        agree; diagonal entries are always up). Counted once per undirected link (sender < receiver)."""
        s, r = np.asarray(senders, np.int64), np.asarray(receivers, np.int64)
        if s.shape != r.shape:
            raise ValueError(f"senders and receivers must have the same shape, got {s.shape} and {r.shape}")
        down = np.zeros(s.shape, bool)
        if self.link_failure > 0:
            u = stream_uniform(self.seed, FAILURE, mini_batch, 0, 0, 0, np.minimum(s, r), np.maximum(s, r))
            down = (u < self.link_failure) & (s != r)
        once = s < r
        self.counters.links += int(np.count_nonzero(once))
        self.counters.links_down += int(np.count_nonzero(down & once))
        return ~down


# ------------------------------------------------------------------------------------- surviving graphs
def _pattern(op) -> tuple[np.ndarray, np.ndarray]:
    return np.asarray(op.rows, np.int64), np.asarray(op.cols, np.int64)


def _as_numpy(op) -> SparseOperator:
    if isinstance(op, SparseOperator):
        return op
    return SparseOperator(np.asarray(op.rows), np.asarray(op.cols), np.asarray(op.values), int(op.num_nodes))


def _like(op, result: SparseOperator):
    if isinstance(op, Operator):
        return Operator(tf.constant(result.rows, tf.int32), tf.constant(result.cols, tf.int32),
                        tf.constant(result.values, op.values.dtype), result.num_nodes)
    return result


def _check_up(rows: np.ndarray, cols: np.ndarray, up) -> np.ndarray:
    """The surviving-entry mask as bool (nnz,), checked: entries unique, undirected links up in both directions."""
    up = np.asarray(up, bool)
    if up.shape != rows.shape:
        raise ValueError(f"the surviving-edge mask must have shape ({rows.size},), got {up.shape}")
    codes = link_codes(cols, rows)
    if np.unique(codes).size != codes.size:
        raise ValueError("the operator has duplicate entries")
    off = rows != cols
    alive = link_codes(cols[off & up], rows[off & up])
    if not np.array_equal(np.sort(alive), np.sort(link_codes(rows[off & up], cols[off & up]))):
        raise ValueError("the surviving-edge mask must be symmetric: a link is up or down in both directions")
    return up | ~off


def restrict_operator(op, up):
    """``op`` with the values of its failed off-diagonal entries set to 0 (same pattern: no retracing).

    ``op`` is a :class:`SparseOperator` or :class:`Operator` (values (nnz,) or (B, nnz)); ``up`` (nnz,) is
    True for the entries on surviving links (:meth:`LinkModel.link_up` on ``op.cols, op.rows``).
    """
    sp_op = _as_numpy(op)
    keep = _check_up(*_pattern(sp_op), up)
    return _like(op, sp_op.with_values(np.where(keep, sp_op.values, np.zeros((), sp_op.values.dtype))))


def surviving_mixing(op, up) -> SparseOperator | Operator:
    """Metropolis-Hastings weights (eq. 16) recomputed on the surviving graph, on a fixed pattern.

    The graph is the off-diagonal pattern of ``op`` (any operator of the run's graph, e.g. S or W), the
    surviving edges those with ``up``; degrees are counted on the surviving graph. The result has every
    off-diagonal entry of ``op`` (0 on failed links) and every diagonal entry, sorted by row then column,
    so its pattern does not change from one mini-batch to the next.
    """
    sp_op = _as_numpy(op)
    rows, cols = _pattern(sp_op)
    keep = _check_up(rows, cols, up)
    n = sp_op.num_nodes
    off = rows != cols
    alive = off & keep
    deg = np.bincount(rows[alive], minlength=n)
    w = np.where(alive, 1.0 / (1.0 + np.maximum(deg[rows], deg[cols])), 0.0)
    self_weight = 1.0 - np.bincount(rows[off], weights=w[off], minlength=n)
    nodes = np.arange(n, dtype=np.int64)
    r = np.concatenate([rows[off], nodes])
    c = np.concatenate([cols[off], nodes])
    v = np.concatenate([w[off], self_weight])
    order = np.lexsort((c, r))
    out = SparseOperator(r[order].astype(np.int32), c[order].astype(np.int32), v[order], n)
    return _like(op, out)


def surviving_graph(graph: Graph, up) -> Graph:
    """The :class:`Graph` of the surviving links (``up`` aligned with ``graph.senders``/``receivers``), with
    their weights: rebuild any shift operator on it (``surviving_graph(g, up).shift_operator(kind)``)."""
    up = np.asarray(up, bool)
    _check_up(graph.receivers.astype(np.int64), graph.senders.astype(np.int64), up)
    return Graph(graph.num_nodes, graph.senders[up], graph.receivers[up], graph.weights[up])


def on_pattern(pattern, sub):
    """``sub``'s values placed on ``pattern``'s entries (0 where ``sub`` has no entry): e.g. an S rebuilt on
    the surviving graph, on the full graph's pattern so that shapes stay fixed. Every entry of ``sub`` must
    be in ``pattern``."""
    p_op, s_op = _as_numpy(pattern), _as_numpy(sub)
    p_codes = link_codes(*_pattern(p_op))
    order = np.argsort(p_codes, kind="stable")
    s_codes = link_codes(*_pattern(s_op))
    pos = np.searchsorted(p_codes[order], s_codes).clip(0, max(p_codes.size - 1, 0))
    if s_codes.size and not np.array_equal(p_codes[order][pos], s_codes):
        raise ValueError("the operator has entries outside the pattern")
    values = np.zeros(s_op.values.shape[:-1] + (p_op.nnz,), s_op.values.dtype)
    values[..., order[pos]] = s_op.values
    return _like(pattern, p_op.with_values(values))


# ------------------------------------------------------------------------------------- TensorFlow side
def _edge_mask(op: Operator, lost) -> tf.Tensor:
    """The lost mask as a bool tensor (nnz,) or (B, nnz), with diagonal entries never lost."""
    lost = tf.convert_to_tensor(lost, tf.bool)
    if lost.shape.rank not in (1, 2):
        raise ValueError(f"the lost mask must have shape (nnz,) or (B, nnz), got {lost.shape}")
    return tf.logical_and(lost, tf.not_equal(op.rows, op.cols))


def lossy_mixing_values(op, lost_mask):
    """Mixing weights of one round with lost packets: a lost W_ij is 0 and moves to W_ii (rows keep their sums).

    ``op`` is an :class:`Operator` (TensorFlow; traceable) or a :class:`SparseOperator` (NumPy result); its
    pattern must hold the diagonal entry of every receiver that loses a packet. ``lost_mask`` is (nnz,) or
    (B, nnz) (one round per sample); the values returned have op.values' shape, or (B, nnz).
    """
    if isinstance(op, SparseOperator):
        return lossy_mixing_values(to_operator(op, tf.float64), np.asarray(lost_mask, bool)).numpy()
    lost = _edge_mask(op, lost_mask)
    values = op.values
    if lost.shape.rank == 2 and values.shape.rank == 1:
        values = tf.broadcast_to(values[None, :], tf.shape(lost, out_type=tf.int32))
    kept = tf.where(lost, tf.zeros_like(values), values)
    moved = values - kept  # the lost weights, 0 elsewhere
    per_row = tf.math.unsorted_segment_sum(tf.transpose(moved) if moved.shape.rank == 2 else moved, op.rows,
                                           op.num_nodes)  # (|V|,) or (|V|, B)
    on_diag = tf.equal(op.rows, op.cols)
    if tf.executing_eagerly():  # (a traced caller's pattern is checked by its eager tests)
        has_diag = np.zeros(op.num_nodes, bool)
        has_diag[op.rows.numpy()[on_diag.numpy()]] = True
        needs = np.abs(per_row.numpy()).reshape(op.num_nodes, -1).sum(axis=1) > 0
        if np.any(needs & ~has_diag):
            raise ValueError(f"node {int(np.flatnonzero(needs & ~has_diag)[0])} loses a packet but the mixing "
                             f"operator has no diagonal entry for it")
    add = tf.gather(per_row, op.rows)  # (nnz,) or (nnz, B)
    add = tf.transpose(add) if add.shape.rank == 2 else add
    return tf.where(_own_entry(op), kept + add, kept)


def transpose_mask(mask: tf.Tensor, perm=None) -> tf.Tensor:
    """``tf.transpose`` of a bool mask, as float32 ones and zeros: outside XLA (the MPI backend's stretches
    between exchanges, ``--no-jit``) TensorFlow's oneDNN transpose refuses every non-float dtype and logs an
    error line ("oneDNN supports DT_BOOL only on platforms with AVX-512") before it falls back. A select, not a
    cast: grappler moves a transpose ahead of a cast, onto the bool. Under XLA it fuses away; outside, it
    measured as fast as the bool transpose."""
    return tf.transpose(tf.where(mask, 1.0, 0.0), perm) > 0


def _own_entry(op: Operator) -> tf.Tensor:
    """bool (nnz,): the first diagonal entry of each row, which receives a node's own weight (a padded pattern
    may repeat a diagonal entry with value 0, e.g. App C's operators of a common size)."""
    on_diag = tf.equal(op.rows, op.cols)
    position = tf.range(tf.shape(op.rows)[0], dtype=tf.int32)
    big = tf.fill(tf.shape(position), tf.int32.max)
    first = tf.math.unsorted_segment_min(tf.where(on_diag, position, big), op.rows, op.num_nodes)
    return tf.logical_and(on_diag, tf.equal(position, tf.gather(first, op.rows)))


def slot_key(slot) -> str:
    """A stale-buffer key from ``(kind, index)``, ``(kind, index, part)`` or a string: ``"fwd/1"``."""
    if isinstance(slot, str):
        return slot
    if isinstance(slot, tuple) and len(slot) in (2, 3):
        return "/".join(str(p) for p in slot if p != "")
    raise ValueError(f"a stale-buffer slot is (kind, index) or (kind, index, part), got {slot!r}")


class StaleBuffer:
    """Per slot (message kind and layer), the last payload each receiver got on each edge of the slot's operator.

    Values are tensors (nnz, ...) aligned with the entries of the operator the slot is exchanged over (on an
    MPI rank: its local entries). The buffer is a plain container, mutated by :func:`lossy_apply`: inside a
    ``tf.function`` its values are that trace's tensors, so a caller that keeps it across calls passes
    :attr:`values` (a dict, a ``tf.nest`` structure) in and out and rebuilds ``StaleBuffer(values)``.
    """

    def __init__(self, values: dict | None = None):
        self.values: dict[str, tf.Tensor] = dict(values or {})

    def get(self, slot, shape, dtype) -> tf.Tensor:
        key = slot_key(slot)
        if key not in self.values:
            return tf.zeros(shape, dtype)
        v = self.values[key]
        if v.shape.as_list() != list(shape):
            raise ValueError(f"stale buffer slot {key!r} holds shape {v.shape.as_list()}, the exchange needs "
                             f"{list(shape)}")
        return v

    def put(self, slot, value: tf.Tensor) -> None:
        self.values[slot_key(slot)] = value


class StaleLinks:
    """The stale buffer keyed by directed link instead of by operator entry, between the compiled calls of graphs
    drawn per mini-batch (App C): graph t+1's entry k is in general another link than graph t's, so an
    entry-aligned buffer carried over would hand a receiver some other neighbour's payload. Per slot: the link
    codes seen so far (:func:`link_codes` of the slot operator's (col, row): S for fwd/bwd, W else) and each
    one's last payload; :meth:`aligned` lays them out on a graph's entries (0 for a link not seen yet, as
    before a first arrival), :meth:`update` takes a call's buffer back. NumPy, between calls.

    A slot's payloads live in a table that is written in place and grows only by the links not seen before
    (App C's union of links saturates within a few graphs), so an update costs a write of the graph's rows,
    not a copy of every link's payload (App C's θ slot: 10^4 links x 2177 floats). :meth:`copy` (the trainer's
    epoch snapshots) shares the tables, and the first update of a shared one copies it."""

    def __init__(self, slots: dict | None = None):
        # slot -> [sorted codes, table row of each sorted code, table (rows, ...), shared with a copy]
        self.slots: dict[str, list] = {}
        for slot, (codes, values) in (slots or {}).items():
            order = np.argsort(codes, kind="stable")
            self.slots[slot] = [np.asarray(codes, np.int64)[order], order, np.asarray(values), False]

    def copy(self) -> StaleLinks:
        other = StaleLinks()
        for slot, entry in self.slots.items():
            entry[3] = True  # both hold it now: whichever updates first copies
            other.slots[slot] = entry
        return other

    def _lookup(self, slot: str, codes: np.ndarray):
        """(entry, table row of each code, found) for a stored slot."""
        entry = self.slots[slot]
        known = entry[0]
        pos = np.minimum(np.searchsorted(known, codes), known.size - 1)
        found = known[pos] == codes
        return entry, entry[1][pos], found

    def aligned(self, slot: str, codes: np.ndarray, template) -> np.ndarray:
        """The slot's payloads on entries with link ``codes`` (nnz,), (nnz, ...) typed and trailing-shaped like
        ``template`` (a buffer value of some graph: under MPI a rank's entries of another graph may number
        differently): the stored payload of each entry's link, 0 where none."""
        template = np.asarray(template)
        out = np.zeros((np.size(codes), *template.shape[1:]), template.dtype)
        if slot not in self.slots or not self.slots[slot][0].size:
            return out
        entry, rows, found = self._lookup(slot, codes)
        out[found] = entry[2][rows[found]]
        return out

    def update(self, slot: str, codes: np.ndarray, values) -> None:
        """Store a call's buffer ``values`` (nnz, ...) of entries with link ``codes``: their links' payloads are
        replaced, other links keep theirs. An entry repeated in a padded pattern (a diagonal entry, never lost)
        keeps its last occurrence."""
        values = np.asarray(values)
        last = codes.size - 1 - np.unique(codes[::-1], return_index=True)[1]
        codes, values = codes[last], values[last]
        if slot not in self.slots:
            self.slots[slot] = [codes, np.arange(codes.size), values, False]  # (np.unique sorted them; copies)
            return
        entry, rows, found = self._lookup(slot, codes)
        if entry[3]:  # shared with a snapshot: this holder gets its own copy
            entry = self.slots[slot] = [entry[0], entry[1], entry[2].copy(), False]
        entry[2][rows[found]] = values[found]
        if not found.all():  # links not seen before: appended to the table, the index re-sorted
            new = ~found
            first = entry[2].shape[0]
            entry[2] = np.concatenate([entry[2], values[new]])
            merged = np.concatenate([entry[0], codes[new]])
            table_rows = np.concatenate([entry[1], np.arange(first, first + int(new.sum()))])
            order = np.argsort(merged, kind="stable")
            entry[0], entry[1] = merged[order], table_rows[order]

    def arrays(self) -> dict[str, np.ndarray]:
        """Checkpoint arrays: ``stale_codes/<slot>`` (sorted) and ``stale_links/<slot>`` (their payloads)."""
        out = {}
        for slot, (codes, rows, table, _) in sorted(self.slots.items()):
            out[f"stale_codes/{slot}"], out[f"stale_links/{slot}"] = codes, table[rows]
        return out

    @classmethod
    def merged(cls, parts: Sequence[Mapping[str, np.ndarray]]) -> StaleLinks:
        """One buffer of the :meth:`arrays` of buffers holding disjoint links (MPI ranks, each the links it
        receives on); a link in two parts keeps the first part's payload."""
        slots = {}
        for part in parts:
            for key, codes in part.items():
                if key.startswith("stale_codes/"):
                    slot = key[len("stale_codes/"):]
                    have = slots.setdefault(slot, ([], []))
                    have[0].append(np.asarray(codes, np.int64))
                    have[1].append(np.asarray(part[f"stale_links/{slot}"]))
        out = {}
        for slot, (codes, values) in slots.items():
            codes, values = np.concatenate(codes), np.concatenate(values)
            _, first = np.unique(codes, return_index=True)
            out[slot] = (codes[first], values[first])
        return cls(out)

    def receiving(self, receivers) -> StaleLinks:
        """The buffer of the links into ``receivers`` only (an MPI rank's, resuming a whole run's buffer)."""
        out = {}
        for slot, (codes, rows, table, _) in self.slots.items():
            keep = np.isin(codes & np.int64(2 ** _CODE_SHIFT - 1), np.asarray(receivers, np.int64))
            out[slot] = (codes[keep], table[rows[keep]])
        return StaleLinks(out)

    @classmethod
    def from_arrays(cls, arrays) -> StaleLinks:
        slots = {}
        for key, codes in arrays.items():
            if key.startswith("stale_codes/"):
                slot = key[len("stale_codes/"):]
                slots[slot] = (np.asarray(codes, np.int64), np.asarray(arrays[f"stale_links/{slot}"]))
        return cls(slots)


STALE_LOOKBACK = 12
"""How far back (in samples) :func:`_last_arrivals` looks before it falls back to the general search: a run of
this many lost packets in a row on one entry is rare at the loss rates of interest (p^12 per entry and sample:
in App A's batched exchanges, 392 links x 100 samples, about once in 50 exchanges at p = 0.3 and once in 10^7
at p = 0.1); a longer run is found exactly, only slower."""


def _last_arrivals(received: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """For (nnz, B) bool ``received`` (sample b's packet arrived on entry k): (the last arrival before b, the last
    arrival of all), int32, -1 where none (then the stale buffer's value is used).

    Looks back at most :data:`STALE_LOOKBACK` samples with a chain of selects over shifted copies (elementwise
    work that XLA fuses into one loop: 4x faster than :func:`_exclusive_cummax` under XLA on the CPU), and only
    if some entry lost more packets in a row than that takes the general search (a ``tf.cond``: exact either
    way). Measured alternatives that XLA made slower: doubling the reach level by level and blockwise search
    (each level re-reads the previous one at two offsets, and XLA fuses and recomputes it)."""
    n, steps, depth = tf.shape(received)[0], received.shape[1], STALE_LOOKBACK
    if steps is None:
        return _exclusive_cummax(tf.where(received, tf.range(tf.shape(received)[1], dtype=tf.int32)[None, :], -1))
    # the narrowest integers that hold -2..steps: the chain and the reduction cost per byte (int8: 40 % less
    # than int32 for App A's B = 100)
    small = tf.int8 if steps < 127 else (tf.int16 if steps < 32767 else tf.int32)
    # column depth + j of the padded mask is sample j; the depth columns before it count as arrived, so that the
    # search stops at "before the batch" (-1) when no sample arrived in 0..b-1
    padded = tf.concat([tf.ones([n, depth], tf.bool), received], axis=1)
    b = tf.range(steps + 1, dtype=tf.int32)[None, :]  # column steps: after the last sample (the last arrival)
    b_small = tf.cast(b, small)
    found = tf.fill([n, steps + 1], tf.constant(-2, small))
    for d in range(depth, 0, -1):  # the nearest arrival wins
        found = tf.where(padded[:, depth - d:depth - d + steps + 1], b_small - d, found)

    def general():
        prev, last = _exclusive_cummax(tf.where(received, b[:, :steps], -1))
        return tf.cast(tf.concat([prev, last[:, None]], axis=1), small)

    found = tf.cond(tf.reduce_min(found) < -1, general, lambda: found)  # (a min: XLA's cheapest reduction here)
    found = tf.cast(found, tf.int32)
    return found[:, :steps], found[:, steps]


def _exclusive_cummax(idx: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """For (nnz, B) int32 idx = b where sample b's packet arrived, else -1: (the last arrival before b, the last
    arrival of all), -1 where none.

    Without a B-step loop: the arrivals up to b number c(b) (a running sum); the c-th arrival's position is the
    smallest b with count c among the arrivals (one segment min over (entry, c)), looked up at the count of
    arrivals before b."""
    arrived = idx >= 0
    n, steps = tf.shape(idx)[0], tf.shape(idx)[1]
    if idx.shape[1] is None:
        count = tf.math.cumsum(tf.cast(arrived, tf.int32), axis=1)  # inclusive: arrivals in 0..b
    else:  # as a product with a triangle of ones: XLA's cumsum on CPU is a B-wide window per element
        upper = tf.constant(np.triu(np.ones((idx.shape[1],) * 2, np.float32)))
        count = tf.cast(tf.linalg.matmul(tf.cast(arrived, tf.float32), upper), tf.int32)  # exact below 2**24
    rows = (tf.range(n, dtype=tf.int32) * (steps + 1))[:, None]
    table = tf.reshape(tf.math.unsorted_segment_min(tf.where(arrived, idx, steps), rows + count, n * (steps + 1)),
                       [n, steps + 1])
    flat = tf.reshape(tf.concat([tf.fill([n, 1], -1), table[:, 1:]], axis=1), [-1])  # count 0: none arrived yet
    exclusive = tf.gather(flat, rows + count - tf.cast(arrived, tf.int32))
    return exclusive, tf.gather(flat, rows[:, 0] + count[:, -1])


def _stale_messages(op: Operator, x: tf.Tensor, lost: tf.Tensor, lost_e: tf.Tensor, stale_buffer: StaleBuffer,
                    slot) -> tf.Tensor:
    """The messages each entry uses under ``stale`` (:func:`lossy_apply`), updating the slot's buffer."""
    if lost.shape.rank == 1:  # one packet per link: the buffer's value where it was lost
        messages = tf.gather(x, op.cols)
        old = stale_buffer.get(slot, messages.shape, x.dtype)
        messages = tf.where(lost_e, old, messages)
        stale_buffer.put(slot, messages)
        return messages
    # B packets per link in time order: entry k uses for sample b sender cols_k's payload of sample src (b itself
    # when it arrived, else the last arrival before it; -1: before the batch, the buffer's value), one gather
    # from x's |V| B rows rather than from a history of every entry's messages
    old = stale_buffer.get(slot, [op.rows.shape[0]] + x.shape[2:].as_list(), x.dtype)
    received = tf.logical_not(transpose_mask(lost))  # (nnz, B)
    prev, last = _last_arrivals(received)  # (nnz, B) and (nnz,)
    steps = tf.shape(x)[1]
    src = tf.where(received, tf.range(steps, dtype=tf.int32)[None, :], prev)
    flat = tf.reshape(x, tf.concat([[-1], tf.shape(x)[2:]], 0))  # (|V| B, ...): row j B + b is x[j, b]
    sender = (op.cols * steps)[:, None]
    messages = tf.gather(flat, sender + tf.maximum(src, 0))
    messages = tf.where(tf.reshape(src < 0, tf.shape(lost_e)), old[:, None], messages)
    before = tf.reshape(last < 0, [-1] + [1] * (x.shape.rank - 2))
    stale_buffer.put(slot, tf.where(before, old, tf.gather(flat, sender[:, 0] + tf.maximum(last, 0))))
    return messages


def lossy_apply(op: Operator, x: tf.Tensor, lost_mask, policy="zero", stale_buffer: StaleBuffer | None = None,
                slot=None, *, mixing: bool = False) -> tf.Tensor:
    """``apply_operator(op, x)`` where the packets flagged in ``lost_mask`` did not arrive.

    Args:
        op: the exchange's operator (receiver = row, sender = col).
        x: node-major features (|V|, B, g) or (|V|, g).
        lost_mask: bool (nnz,) on op's entries: x is one packet per link; or (B, nnz) with x (|V|, B, g):
            sample b is a packet of its own (the B rounds of a batched exchange, in time order; the protocol
            executor passes (1, nnz) for one sample). Diagonal entries are never lost.
        policy: a :class:`LossPolicy` or its string. ``zero`` and ``retransmit:R`` (the mask is then what is
            still lost after the retransmissions) count a lost term as 0; ``stale`` uses the slot's last
            received value from that neighbour (0 before the first) and updates ``stale_buffer``.
        stale_buffer, slot: for ``stale``: the buffer and this payload's slot, e.g. ``("fwd", l)``.
        mixing: a consensus round: under ``zero``/``retransmit`` the lost weight moves to the receiver's own
            term (the effective weights of :func:`lossy_mixing_values`, computed as the receiver's own value
            in place of the lost message) instead of the term counting as 0.

    With no packet lost the result equals ``apply_operator(op, x)`` bit for bit.
    """
    policy = LossPolicy.parse(policy)
    lost = _edge_mask(op, lost_mask)
    if lost.shape.rank == 2 and (x.shape.rank != 3 or (x.shape[1] is not None and lost.shape[0] is not None
                                                         and x.shape[1] != lost.shape[0])):
        raise ValueError(f"a (B, nnz) lost mask needs node-major x of shape (|V|, B, g), got {x.shape}")
    if lost.shape.rank == 1:
        lost_e = tf.reshape(lost, [-1] + [1] * (x.shape.rank - 1))
    else:
        lost_e = tf.reshape(transpose_mask(lost), [tf.shape(lost)[1], tf.shape(lost)[0]] + [1] * (x.shape.rank - 2))
    if policy.kind == "stale":
        if stale_buffer is None or slot is None:
            raise ValueError("the stale policy needs a StaleBuffer and the payload's slot")
        messages = _stale_messages(op, x, lost, lost_e, stale_buffer, slot)
    elif mixing:
        # the lost weight on the receiver's own term (lossy_mixing_values) is the receiver's own value in place
        # of the lost message: sum_j W_ij (lost ? x_i : x_j), with no segment sums to move the weights
        messages = tf.where(lost_e, tf.gather(x, op.rows), tf.gather(x, op.cols))
    elif lost.shape.rank == 2 and not op.per_sample:
        # a lost term counts as 0: its weight is 0, sample by sample (cheaper than selecting the messages)
        kept = tf.where(transpose_mask(lost), tf.zeros([], op.values.dtype), op.values[:, None])  # (nnz, B)
        return tf.math.unsorted_segment_sum(tf.gather(x, op.cols) * kept[:, :, None], op.rows, op.num_nodes)
    else:
        messages = tf.gather(x, op.cols)  # (nnz, ...)
        messages = tf.where(lost_e, tf.zeros_like(messages), messages)
    if op.per_sample:
        weights = tf.transpose(op.values)[:, :, None]
    else:
        weights = tf.reshape(op.values, [-1] + [1] * (x.shape.rank - 1))
    return tf.math.unsorted_segment_sum(messages * weights, op.rows, op.num_nodes)


def lossy_apply_pieces(op: Operator, x: tf.Tensor, lost_pieces, piece_of_column, policy="zero",
                       stale_buffer: StaleBuffer | None = None, slot=None, *, mixing: bool = True) -> tf.Tensor:
    """``apply_operator(op, x)`` for a payload x (|V|, D) whose columns travel in different packets.

    Column c of x is part of piece ``piece_of_column[c]``, and piece p is a packet of its own, lost on the
    entries flagged in row p of ``lost_pieces`` (n_pieces, nnz): the eq. (17) payload [d_i, theta^i, ...] pieced
    over the forward rounds (``param`` of the ``dopt`` schedule). In a consensus round (``mixing``) each piece
    has its own effective weights (:func:`lossy_mixing_values` per piece: the receiver's own value in place
    of a lost message, column by column), so every column is mixed by a row-stochastic matrix; ``stale``
    reuses, column by column, the last value received on each entry (the slot holds (nnz, D)); ``zero``
    without ``mixing`` counts a lost term as 0.
    With no packet lost the result equals ``apply_operator(op, x)`` bit for bit.
    """
    policy = LossPolicy.parse(policy)
    if x.shape.rank != 2 or op.per_sample:
        raise ValueError(f"a pieced payload is (|V|, D) on an operator shared by all samples, got x {x.shape} and "
                         f"values {op.values.shape}")
    lost = _edge_mask(op, lost_pieces)  # (n_pieces, nnz)
    columns = tf.constant(np.asarray(piece_of_column, np.int32))
    if columns.shape[0] != x.shape[-1]:
        raise ValueError(f"piece_of_column has {columns.shape[0]} entries for a payload of {x.shape[-1]} columns")
    lost_c = tf.gather(transpose_mask(lost), columns, axis=1)  # (nnz, D): is column c lost on entry k
    messages = tf.gather(x, op.cols)  # (nnz, D)
    if policy.kind == "stale":
        if stale_buffer is None or slot is None:
            raise ValueError("the stale policy needs a StaleBuffer and the payload's slot")
        messages = tf.where(lost_c, stale_buffer.get(slot, messages.shape, x.dtype), messages)
        stale_buffer.put(slot, messages)
    elif mixing:  # each piece's own W, rows stochastic: the receiver's own value in place of a lost message
        messages = tf.where(lost_c, tf.gather(x, op.rows), messages)
    else:
        messages = tf.where(lost_c, tf.zeros_like(messages), messages)
    return tf.math.unsorted_segment_sum(messages * op.values[:, None], op.rows, op.num_nodes)


def surviving_mixing_tf(op: Operator, up, rule: str = "mh", extended_degrees=None) -> Operator:
    """:func:`surviving_mixing` inside a compiled program: ``op`` (a mixing W on a fixed pattern holding every
    node's diagonal entry) with weights recomputed on the surviving links ``up`` (bool (nnz,), symmetric).

    ``rule="mh"``: Metropolis-Hastings weights (eq. 16) with the surviving degrees (an entry with value 0 is
    no link: e.g. a complete pattern with cut pairs); ``"laplacian"``: W = I - beta (D - A) on the surviving
    graph, i.e. a failed entry's weight moves to the receiver's own term (:func:`lossy_mixing_values`).
    Same rows, cols and shapes as ``op``, so nothing retraces; tests check it equals the NumPy version.
    ``extended_degrees``: for an MPI rank's local operator (rows owned, cols [owned; ghosts]), a function from
    the owned nodes' surviving degrees (n_own,) to those of every column, [own; ghosts] (one exchange: each
    ghost's owner counted its links); None in-process (rows and cols are the same nodes).
    """
    if op.per_sample:
        raise ValueError("link failures rebuild a mixing operator shared by all samples, got per-sample values")
    up = tf.convert_to_tensor(up, tf.bool)
    off = tf.not_equal(op.rows, op.cols)
    if rule == "laplacian":
        return op._replace(values=lossy_mixing_values(op, tf.logical_not(up)))
    if rule != "mh":
        raise ValueError(f"unknown mixing rule {rule!r} for link failures; choose mh or laplacian")
    dtype = op.values.dtype
    alive = tf.logical_and(tf.logical_and(up, off), tf.not_equal(op.values, 0))
    degree = tf.math.unsorted_segment_sum(tf.cast(alive, dtype), op.rows, op.num_nodes)
    col_degree = degree if extended_degrees is None else extended_degrees(degree)
    bigger = tf.maximum(tf.gather(degree, op.rows), tf.gather(col_degree, op.cols))
    w = tf.where(alive, 1.0 / (1.0 + bigger), tf.zeros_like(op.values))
    self_weight = 1.0 - tf.math.unsorted_segment_sum(w, op.rows, op.num_nodes)
    own = tf.where(_own_entry(op), tf.gather(self_weight, op.rows), tf.zeros_like(op.values))  # padding: 0
    return op._replace(values=tf.where(off, w, own))


def check_diagonal(op, what: str = "the mixing operator") -> None:
    """Raise a one-line ValueError unless ``op``'s pattern holds the diagonal entry of every node (NumPy check;
    what :func:`surviving_mixing_tf` and :func:`lossy_mixing_values` need to move weight to a node's own term)."""
    rows, cols = global_entries(op)
    nodes = np.asarray(op.owned) if hasattr(op, "ghosts") else np.arange(int(op.num_nodes))
    missing = np.setdiff1d(nodes, rows[rows == cols])
    if missing.size:
        raise ValueError(f"{what} has no diagonal entry for node {int(missing[0])}: a lost weight has nowhere to go")


# ------------------------------------------------------------------------------- the stream in TensorFlow
def _splitmix64_tf(z: tf.Tensor) -> tf.Tensor:
    def shift(v, k):
        return tf.bitwise.bitwise_xor(v, tf.bitwise.right_shift(v, tf.constant(k, tf.uint64)))

    z = z + tf.constant(int(_GOLDEN), tf.uint64)
    z = shift(z, 30) * tf.constant(int(_M1), tf.uint64)
    z = shift(z, 27) * tf.constant(int(_M2), tf.uint64)
    return shift(z, 31)


def stream_hash_tf(seed, domain, mini_batch, round, attempt, packet, sender, receiver) -> tf.Tensor:
    """:func:`stream_hash` in TensorFlow: the same uint64 bits (tensors of non-negative integers, broadcast)."""
    h = _splitmix64_tf(tf.cast(seed, tf.uint64))
    for w in (domain, mini_batch, round, attempt, packet, sender, receiver):
        h = _splitmix64_tf(tf.bitwise.bitwise_xor(h, tf.cast(w, tf.uint64)))
    return h


def _threshold(p: float) -> int:
    """The integer k0 with (k < k0) == (k * 2**-53 < p) for every integer k in [0, 2**53): ceil(p * 2**53)."""
    return int(math.ceil(p * 2.0 ** 53))


def _erasure_program(num_packets: int, attempts: int):
    """The compiled :func:`_leading_losses` for P packets per round and A attempts (one program per pair, each
    relaxing its shapes, so that runs with several schedules do not retrace one function over and over)."""
    key = (int(num_packets), int(attempts))
    if key not in _ERASURE_PROGRAMS:
        spec = tf.TensorSpec
        signature = [spec([None] * 4, tf.uint64), spec([], tf.uint64), spec([None], tf.int64), spec([None], tf.int64),
                     spec([None], tf.int64), spec([None, None], tf.bool)]
        program = tf.function(lambda *args: _leading_losses(*args, *key), input_signature=signature,
                              jit_compile=True, autograph=False)  # XLA compiles per shape
        _ERASURE_PROGRAMS[key] = program.get_concrete_function()  # called directly: no argument binding per call
    return _ERASURE_PROGRAMS[key]


_ERASURE_PROGRAMS: dict = {}


def _leading_losses(prefix, threshold, counts, senders, receivers, active, num_packets: int, attempts: int):
    """Per packet of several mini-batches under independent erasures (:func:`draw_plans`), as XLA: the number
    of its first attempts that are lost, an int8 (n, E, T, P) in 0..A (0 for a packet not carried), link-major
    as :class:`PlanBatch` holds it; for A = 1, the bool lost mask itself.

    ``prefix`` (n, A, T, P) uint64 is the stream hash of (seed, LOSS, mini-batch, round, attempt, packet) for
    attempts 0..A-1 (NumPy, small: in the program XLA would fuse it into the per-link loop and recompute it
    for every link); the program adds the sender and receiver words per link: two SplitMix64 steps per packet
    and attempt instead of eight. Everything a plan holds follows from this one count
    (:func:`_plan_summary`): lost after the retransmissions iff all A attempts are, lost at the first iff
    it is >= 1, pending in min(count, A - 1) extra rounds. It is the program's only output on purpose: XLA
    fuses an elementwise producer into each of its consumers, so reducing the hashes to several outputs here
    would compute every hash once per output (measured: 3x the time of this program)."""
    exists = tf.range(num_packets, dtype=tf.int64)[None, :] < counts[:, None]  # (T, P)
    live = tf.logical_and(active, tf.not_equal(senders, receivers)[None, :])  # (n, E)
    carried = tf.logical_and(exists[None, None], live[:, :, None, None])  # (n, E, T, P): link-major
    s, r = tf.cast(senders, tf.uint64)[:, None, None], tf.cast(receivers, tf.uint64)[:, None, None]

    below = tf.bitwise.left_shift(threshold, tf.constant(11, tf.uint64))  # (h >> 11) < t iff h < t << 11 (t <= 2**53)

    def lost_at(attempt):
        h = _splitmix64_tf(tf.bitwise.bitwise_xor(prefix[:, attempt, None], s))
        return _splitmix64_tf(tf.bitwise.bitwise_xor(h, r)) < below

    still = tf.logical_and(lost_at(0), carried)
    if attempts == 1:
        return still  # the count is the mask itself: a bool output, used as the plan's tensor without a copy
    leading = tf.cast(still, tf.int8)
    for attempt in range(1, attempts):
        still = tf.logical_and(still, lost_at(attempt))
        leading += tf.cast(still, tf.int8)
    return leading


def _plan_summary(leading: tf.Tensor, counted: np.ndarray, attempts: int):
    """From :func:`_leading_losses`' counts: the lost masks after the retransmissions and at the first
    transmission (bool tensors), the extra rounds (n, T) and the pending rounds per packet (n, T, P) (its max
    over the links: a retransmission round is broadcast while any link still waits for the packet), and per
    mini-batch the packets lost at first and never delivered on the ``counted`` links.

    In NumPy on the program's buffer: XLA's CPU reductions of these int8 tensors measured 5-20x slower than
    NumPy's."""
    # (n, E, T, P), a read-only view of the program's buffer (Tensor.numpy() would copy it: 1.58 MB per App A
    # epoch into fresh pages, 0.5 ms on this machine's VM, where a first touch of a page costs 1.5 us)
    counts = np.asarray(leading)
    n, E, T, P = counts.shape
    if attempts == 1:  # the program's bool output is the mask
        lost = first = leading
    else:  # bool masks from NumPy: TensorFlow's eager int8 -> bool cast measured 0.1 s for App B's 39M packets
        lost, first = tf.constant(counts == attempts), lambda c=counts: tf.constant(c > 0)  # when asked for
    flat = (counts if counted.all() else counts[:, counted]).reshape(n, -1)
    # row by row: NumPy's count_nonzero with an axis measured 3x slower than on whole rows
    first_n = np.array([np.count_nonzero(row) for row in flat], np.int64)
    still_n = first_n if attempts == 1 else np.array([np.count_nonzero(row == attempts) for row in flat], np.int64)
    if attempts > 1 and E:
        # max over links of min(count, A - 1) == min(max over links, A - 1); all links, counted or not
        retransmitted = np.minimum(counts.max(axis=1), attempts - 1).astype(np.int64)
    else:
        retransmitted = np.zeros((n, T, P), np.int64)
    extra = retransmitted.max(axis=2) if P else np.zeros((n, T), np.int64)
    return lost, first, extra, retransmitted, first_n, still_n


@dataclass
class PlanBatch:
    """The plans of ``num`` consecutive mini-batches, stacked (:meth:`LinkModel.draw_plans`).

    ``lost`` and ``first_lost`` are bool tensors (num, E, T, P): per mini-batch a :class:`LossPlan`'s (T, P, E)
    arrays, link-major, so that an exchange takes the rounds of its entries' links as whole rows
    (:meth:`LinkContext.mask`); the second is built when first asked for (only tests read it).
    ``extra_rounds`` (num, T) and ``retransmitted`` (num, T, P) int arrays; ``packets``, ``lost_packets`` and
    ``still_lost`` (num,) count the packets carried, lost at the first transmission and never delivered, on the
    links flagged ``counted`` only (under MPI: the links a rank receives on, so that ranks' counts add up).
    """

    lost: tf.Tensor | None
    first: tf.Tensor | Callable[[], tf.Tensor] | None
    extra_rounds: np.ndarray
    retransmitted: np.ndarray
    packets: np.ndarray
    lost_packets: np.ndarray
    still_lost: np.ndarray

    @property
    def first_lost(self) -> tf.Tensor:
        if callable(self.first):
            self.first = self.first()
        return self.first

    def counts_only(self) -> PlanBatch:
        """The same counts without the masks (``lost`` and ``first`` are None): what a caller keeps until it
        commits the mini-batches, once their masks were fed (App B's 50 mini-batches of a call carry 39 MB of
        masks, 10 000 mini-batches an epoch)."""
        return PlanBatch(None, None, self.extra_rounds, self.retransmitted, self.packets, self.lost_packets,
                         self.still_lost)


def draw_plans(model: LinkModel, first_mini_batch: int, num: int, senders, receivers, packets_per_round,
               policy="zero", *, chain: GilbertState | None = None, active=None, counted=None) -> PlanBatch:
    """Plans of mini-batches ``first_mini_batch .. + num - 1``: the same draws as :meth:`LinkModel.plan` for
    each (the tests compare them bit for bit), computed at once.

    Independent erasures run as one compiled TensorFlow program (the stream is :func:`stream_hash_tf`, its
    retransmissions vectorized over attempts: a packet is still lost iff all of its R + 1 attempts are, and
    it is pending in extra round a iff its first a attempts are lost); a Gilbert-Elliott chain (sequential
    state per link) draws with :meth:`LinkModel.plan` mini-batch by mini-batch. ``active`` is (num, E) or
    None (every link transmits), ``counted`` (E,) or None (all). ``model.counters`` is not changed: the counts
    are returned.
    """
    policy = LossPolicy.parse(policy)
    s, r = np.asarray(senders, np.int64).reshape(-1), np.asarray(receivers, np.int64).reshape(-1)
    counts = np.asarray(packets_per_round, np.int64).reshape(-1)
    T, P, E, num = counts.size, int(counts.max(initial=0)), s.size, int(num)
    active = np.ones((num, E), bool) if active is None else np.asarray(active, bool).reshape(num, E)
    counted = np.ones(E, bool) if counted is None else np.asarray(counted, bool).reshape(E)
    R = policy.max_retransmissions if policy.retransmits else 0
    # every round t carries counts[t] packets on each link that transmits: the packets carried (counted links)
    carried = counts.sum() * np.count_nonzero(active & (s != r)[None, :] & counted[None, :], axis=1)
    if not model.lossy:  # link failures only: nothing is lost, only the packets carried are counted
        none = tf.zeros((num, E, T, P), tf.bool)
        zeros = np.zeros(num, np.int64)
        return PlanBatch(none, none, np.zeros((num, T), np.int64), np.zeros((num, T, P), np.int64), carried, zeros,
                         zeros)
    if model.gilbert is None:
        h = splitmix64(_words(model.seed))
        for w in (np.asarray(LOSS), np.arange(first_mini_batch, first_mini_batch + num)[:, None, None, None],
                  np.arange(T)[None, None, :, None], np.arange(R + 1)[None, :, None, None],
                  np.arange(P)[None, None, None, :]):
            h = splitmix64(h ^ _words(w))  # (n, A, T, P): the words before sender and receiver
        prefix = np.broadcast_to(h, (num, R + 1, T, P))
        leading = _erasure_program(P, R + 1)(tf.constant(prefix), tf.constant(_threshold(model.loss_prob), tf.uint64),
                                             tf.constant(counts), tf.constant(s), tf.constant(r), tf.constant(active))
        lost, first, extra, retransmitted, lost_n, still_n = _plan_summary(leading, counted, R + 1)
        return PlanBatch(lost, first, extra, retransmitted, carried, lost_n, still_n)
    saved = LinkCounters(**vars(model.counters))
    plans = [model.plan(first_mini_batch + k, s, r, counts, policy, chain=chain, active=active[k]) for k in range(num)]
    model.counters = saved
    lost = np.stack([p.lost for p in plans]) if plans else np.zeros((0, T, P, E), bool)
    first = np.stack([p.first_lost for p in plans]) if plans else np.zeros((0, T, P, E), bool)
    return PlanBatch(tf.constant(_link_major(lost)), tf.constant(_link_major(first)),
                     np.stack([p.extra_rounds for p in plans]).reshape(num, T),
                     np.stack([p.retransmitted for p in plans]).reshape(num, T, P),
                     carried, (first & counted).sum(axis=(1, 2, 3)),
                     (lost & counted).sum(axis=(1, 2, 3)))


def _link_major(lost: np.ndarray) -> np.ndarray:
    """(..., T, P, E) -> (..., E, T, P), contiguous: the layout of :class:`PlanBatch` and :class:`LinkContext`."""
    return np.ascontiguousarray(np.moveaxis(lost, -1, -3))


# -------------------------------------------------------------------------------------- wiring it up
LINK_SEED_SALT = 0x4C494E4B53  # "LINKS"


def link_seed(training_seed: int) -> int:
    """The link stream's seed of a run with training seed ``training_seed`` (``--seed``):
    ``splitmix64(splitmix64(seed) ^ 0x4C494E4B53) >> 1`` (63 bits). Another training seed draws other drops;
    the trainer's generator (shuffles) is never touched, so ``--loss-prob 0`` changes nothing."""
    if isinstance(training_seed, bool) or not isinstance(training_seed, (int, np.integer)) or training_seed < 0:
        raise ValueError(f"the training seed must be a non-negative integer, got {training_seed!r}")
    return int(splitmix64(splitmix64(np.uint64(training_seed)) ^ np.uint64(LINK_SEED_SALT)) >> np.uint64(1))


LOSS_MODELS = ("independent", "gilbert")
MIXING_RULES = ("mh", "laplacian")


@dataclass(frozen=True)
class LinkSetup:
    """Imperfect links for a :class:`core.trainer.Trainer` (docs/design.md, section 12).

    Attributes:
        model: the :class:`LinkModel` (its seed is the link stream's; :meth:`from_flags` derives it with
            :func:`link_seed`). The trainer keeps its own Gilbert state; the model's is not used.
        policy: the receivers' :class:`LossPolicy` (``--on-loss``).
        eval_under_loss: evaluate the test metrics over the same kind of links (default: lossless links).
        mixing_rule: how W is rebuilt on the surviving graph under link failures: ``mh`` (Metropolis-Hastings
            with the surviving degrees) or ``laplacian`` (I - beta (D - A): the failed weights move to the
            diagonal), as the run's ``--mixing``.
    """

    model: LinkModel
    policy: LossPolicy = LossPolicy()
    eval_under_loss: bool = False
    mixing_rule: str = "mh"

    def __post_init__(self):
        object.__setattr__(self, "policy", LossPolicy.parse(self.policy))
        if self.mixing_rule not in MIXING_RULES:
            raise ValueError(f"unknown mixing rule {self.mixing_rule!r}; choose one of {', '.join(MIXING_RULES)}")

    @property
    def active(self) -> bool:
        return self.model.active

    @classmethod
    def from_flags(cls, training_seed: int, loss_prob: float = 0.0, loss_model: str = "independent",
                   gilbert_p_gb=None, gilbert_p_bg=None, gilbert_loss_good: float = 0.0, gilbert_loss_bad=None,
                   link_failure: float = 0.0, on_loss="zero", eval_under_loss: bool = False,
                   mixing: str = "mh") -> LinkSetup:
        """From the command-line values (``--loss-prob``, ``--loss-model``, ``--gilbert-*``, ``--link-failure``,
        ``--on-loss``, ``--eval-under-loss``, ``--mixing``); every problem is a one-line ValueError naming the flag.
        The link seed is :func:`link_seed` of the training seed."""
        if loss_model not in LOSS_MODELS:
            raise ValueError(f"--loss-model must be one of {', '.join(LOSS_MODELS)}, got {loss_model!r}")
        given = [flag for flag, v in (("--gilbert-p-gb", gilbert_p_gb), ("--gilbert-p-bg", gilbert_p_bg),
                                      ("--gilbert-loss-bad", gilbert_loss_bad)) if v is not None]
        if loss_model == "independent" and (given or gilbert_loss_good):
            raise ValueError(f"{given[0] if given else '--gilbert-loss-good'} needs --loss-model gilbert")
        if loss_model == "gilbert":
            if check_probability(loss_prob, "--loss-prob") > 0:
                raise ValueError("--loss-prob is the independent-erasure model: with --loss-model gilbert give the "
                                 "--gilbert-* flags instead")
            missing = [f for f in ("--gilbert-p-gb", "--gilbert-p-bg", "--gilbert-loss-bad") if f not in given]
            if missing:
                raise ValueError(f"--loss-model gilbert needs {missing[0]}")
        model = LinkModel.from_flags(link_seed(training_seed), loss_prob, link_failure, gilbert_p_gb, gilbert_p_bg,
                                     gilbert_loss_good, gilbert_loss_bad)
        return cls(model, LossPolicy.parse(on_loss), bool(eval_under_loss), mixing)

    def describe(self) -> dict:
        """The settings as JSON-able values (config, summary and checkpoint meta)."""
        m = self.model
        ge = None if m.gilbert is None else {"p_gb": m.gilbert.p_gb, "p_bg": m.gilbert.p_bg,
                                              "loss_good": m.gilbert.loss_good, "loss_bad": m.gilbert.loss_bad}
        return {"loss_model": "gilbert" if ge else "independent", "loss_prob": m.loss_prob, "gilbert": ge,
                "link_failure": m.link_failure, "on_loss": str(self.policy), "eval_under_loss": self.eval_under_loss,
                "mixing_rule": self.mixing_rule, "link_seed": m.seed}


def global_entries(op) -> tuple[np.ndarray, np.ndarray]:
    """(receiver, sender) global node ids of each entry of an operator, in its entry order (int64).

    ``op`` is a :class:`SparseOperator`, an :class:`Operator` with concrete tensors, an MPI rank's
    :class:`core.distributed.views.OperatorView` (rows are owned nodes, columns index [owned; ghosts]) or its
    ``transposed()`` (receiver and sender swapped)."""
    base = getattr(op, "base", None)
    if base is not None and hasattr(base, "ghosts"):  # a TransposedView
        receivers, senders = global_entries(base)
        return senders, receivers
    if hasattr(op, "ghosts"):
        ext = np.concatenate([np.asarray(op.owned, np.int64), np.asarray(op.ghosts, np.int64)])
        return np.asarray(op.owned, np.int64)[np.asarray(op.rows)], ext[np.asarray(op.cols)]
    rows, cols = tf.get_static_value(op.rows), tf.get_static_value(op.cols)
    if rows is None or cols is None:
        raise ValueError("the operator's pattern is not known in Python (a traced argument): bind it to the link "
                         "context with its index arrays (LinkContext.bind)")
    return np.asarray(rows, np.int64), np.asarray(cols, np.int64)


class LinkLayout:
    """The directed links a process draws for a graph, and where each operator entry's packet is among them.

    Links are the off-diagonal entries of the given operators in both directions (a transposed exchange, the
    backward rounds of eq. 14, sends along the reverse link), as global ids sorted by code (sender << 32 |
    receiver): the order of a plan's link axis E. ``index[name]`` is ``(forward, reverse)``, int32 (nnz,) each:
    the link of entry k of the operator (sender = col, receiver = row) and of its transpose, -1 on diagonal
    entries (a node's own term is never a packet). ``counted`` flags the links whose packets this process
    counts: all of them in-process; under MPI those it receives on (receiver owned), so ranks' counts add up.
    """

    def __init__(self, operators: dict, owned=None, *, senders=None, receivers=None):
        entries = {name: global_entries(op) for name, op in operators.items() if op is not None}
        if senders is None:
            parts = [np.zeros(0, np.int64)]
            for rows, cols in entries.values():
                off = rows != cols
                parts += [link_codes(cols[off], rows[off]), link_codes(rows[off], cols[off])]
            codes = np.unique(np.concatenate(parts))
            senders, receivers = codes >> _CODE_SHIFT, codes & (2 ** _CODE_SHIFT - 1)
        self.senders, self.receivers = np.asarray(senders, np.int64), np.asarray(receivers, np.int64)
        self._codes = link_codes(self.senders, self.receivers)
        self._order = np.argsort(self._codes, kind="stable")
        self.counted = np.ones(self.num_links, bool) if owned is None else np.isin(self.receivers, owned)
        self.index = {name: (self.entry_index(rows, cols), self.entry_index(cols, rows))
                      for name, (rows, cols) in entries.items()}

    @property
    def num_links(self) -> int:
        return int(self.senders.size)

    def entry_index(self, receivers, senders) -> np.ndarray:
        """int32 position of each link sender -> receiver among the layout's links; -1 where they are equal."""
        receivers, senders = np.asarray(receivers, np.int64), np.asarray(senders, np.int64)
        off = receivers != senders
        query = link_codes(senders, receivers)
        sorted_codes = self._codes[self._order]
        pos = np.searchsorted(sorted_codes, query).clip(0, max(sorted_codes.size - 1, 0))
        found = sorted_codes[pos] == query if sorted_codes.size else np.zeros(query.shape, bool)
        if np.any(off & ~found):
            k = np.flatnonzero(off & ~found)[0]
            raise ValueError(f"link {int(senders[k])} -> {int(receivers[k])} is not among the drawn links")
        return np.where(off, self._order[pos] if sorted_codes.size else 0, -1).astype(np.int32)


class LinkContext:
    """One mini-batch's losses as the exchanges of a (compiled) program see them: what a
    :class:`core.comm.CommSimulator` applies.

    Args:
        lost: bool (T, P, E): packet p of round t lost on link e after any retransmission (a plan's ``lost``);
            with ``link_major``, (E, T, P) (a mini-batch of a :class:`PlanBatch`).
        policy: the receivers' :class:`LossPolicy`.
        stale: the :class:`StaleBuffer` (required by ``stale``).
        layout: the :class:`LinkLayout` of the links E, to index operators whose pattern is known in Python.
        link_major: ``lost`` is (E, T, P), the layout kept inside (else it is transposed once).

    An exchange finds its operator's index arrays (:meth:`bind`) by identity: an operator whose rows and cols
    are the bound operator's (e.g. with other values: S restricted to surviving links), or swapped (its
    transpose, the backward rounds). An MPI operator view matches by identity, its ``transposed()`` by its base.
    """

    def __init__(self, lost, policy="zero", stale: StaleBuffer | None = None, layout: LinkLayout | None = None, *,
                 link_major: bool = False):
        lost = tf.convert_to_tensor(lost, tf.bool)
        if lost.shape.rank != 3:
            axes = "links, rounds, packets" if link_major else "rounds, packets, links"
            raise ValueError(f"the lost tensor must be ({axes}), got shape {lost.shape}")
        # (E, T, P): each link's rounds are one row, so that an exchange gathers whole rows for its entries
        self.lost = lost if link_major else transpose_mask(lost, [2, 0, 1])
        self.policy = LossPolicy.parse(policy)
        if self.policy.kind == "stale" and stale is None:
            stale = StaleBuffer()
        self.stale = stale
        self.layout = layout
        self._bound: list[tuple[object, tf.Tensor, tf.Tensor | None]] = []
        self._masks: dict[int, tuple[object, tf.Tensor]] = {}

    @classmethod
    def from_plan(cls, plan: LossPlan, operators, policy="zero", stale: StaleBuffer | None = None) -> LinkContext:
        """A context for one :class:`LossPlan` (eager use: tests, hand-written loops), binding ``operators``
        (concrete :class:`Operator` s or views; transposes are found from their base)."""
        layout = LinkLayout({}, senders=plan.senders, receivers=plan.receivers)
        ctx = cls(plan.lost, policy, stale, layout)
        for op in operators:
            if op is not None:
                ctx.bind(op)
        return ctx

    def with_stale(self, stale: StaleBuffer | None = None) -> LinkContext:
        """The same losses, operators and policy with another stale buffer (default: a copy of this one's
        current values, so that a replayed exchange sees what the first one saw and changes nothing here)."""
        other = LinkContext(self.lost, self.policy, None, self.layout, link_major=True)
        other.stale = stale if stale is not None else (None if self.stale is None else StaleBuffer(self.stale.values))
        other._bound = list(self._bound)
        return other

    def bind(self, op, index=None, reverse_index=None) -> None:
        """Register ``op`` with the plan-link index of its entries (and of its transpose's); computed from the
        layout when not given (``op``'s pattern must then be known in Python)."""
        if index is None:
            rows, cols = global_entries(op)
            index, reverse_index = self.layout.entry_index(rows, cols), self.layout.entry_index(cols, rows)
        self._bound.append((op, tf.convert_to_tensor(index, tf.int32),
                            None if reverse_index is None else tf.convert_to_tensor(reverse_index, tf.int32)))

    def index_of(self, op) -> tf.Tensor:
        """int32 (nnz,) plan-link index of ``op``'s entries, -1 on the diagonal (see the class docstring)."""
        for base, index, reverse in self._bound:
            if op is base or (_is(op, "rows", base, "rows") and _is(op, "cols", base, "cols")):
                return index
            if reverse is not None and (getattr(op, "base", None) is base
                                        or (_is(op, "rows", base, "cols") and _is(op, "cols", base, "rows"))):
                return reverse
        if self.layout is not None:
            try:
                rows, cols = global_entries(op)
            except ValueError:
                rows = None
            if rows is not None:
                index = tf.constant(self.layout.entry_index(rows, cols))
                self._bound.append((op, index, None))
                return index
        raise ValueError("an exchange runs over an operator the link context does not know: bind it (LinkContext."
                         "bind) or build it with the pattern of the graph's S or W (docs/design.md, section 12)")

    def mask(self, op, rounds, packet: int = 0) -> tf.Tensor:
        """bool (len(rounds), nnz): packet ``packet`` of each round in ``rounds`` (static ints) lost on each
        entry of ``op``; False on diagonal entries.

        The losses of ``op``'s entries over all rounds are gathered once per operator (whole rows of the
        link-major tensor); each exchange then slices its rounds, strided when they are evenly spaced (a
        batched exchange's B rounds are), so that XLA does no per-element gather per exchange (measured: a
        third of the zero policy's cost in an App A epoch). The result is entry-major underneath: the
        exchanges transpose it back, which XLA folds away."""
        key = id(op)
        if key not in self._masks or self._masks[key][0] is not op:
            index = self.index_of(op)
            if self.lost.shape[0] == 0:
                by_entry = tf.zeros([index.shape[0], *self.lost.shape[1:]], tf.bool)
            else:
                by_entry = tf.logical_and(tf.gather(self.lost, tf.maximum(index, 0)),
                                          tf.greater_equal(index, 0)[:, None, None])  # (nnz, T, P)
            self._masks[key] = (op, by_entry)
        by_entry = self._masks[key][1][:, :, packet]  # (nnz, T)
        rounds = np.asarray(rounds, np.int64).reshape(-1)
        step = int(rounds[1] - rounds[0]) if rounds.size > 1 else 1
        if rounds.size and step > 0 and np.array_equal(rounds, rounds[0] + step * np.arange(rounds.size)):
            picked = by_entry[:, int(rounds[0]):int(rounds[-1]) + 1:step]
        else:
            picked = tf.gather(by_entry, tf.constant(rounds.astype(np.int32)), axis=1)
        return transpose_mask(picked)


def _is(a, name_a: str, b, name_b: str) -> bool:
    x, y = getattr(a, name_a, None), getattr(b, name_b, None)
    return x is not None and x is y
