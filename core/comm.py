"""Communication simulator: message-passing schedules (Section III-C, Fig. 1, Table I) and their counts.

A *round* is one synchronous exchange in which every node broadcasts one message to all its one-hop
neighbours. Several payloads may be bundled into one round's message (piggybacking): bundling adds
their sizes but costs one round. Every neighbour exchange of the distributed code goes through a
:class:`CommSimulator`, which computes the exchange and records each payload in the round that the
:class:`Schedule` assigns to it, so the rounds and floats reported are counted from what was sent.

Payloads (for an L-layer GCNN with widths g_0..g_L and B samples b = 0..B-1):

- ``fwd`` (b, l): X^{l-1}(b), size g_{l-1}, for l = 1..L (eq. 10);
- ``bwd`` (b, l): Theta1^{l} Q^{l}(b), size g_{l-1}, for l = L..2 (eq. 14);
- ``grad`` (b or None, k): the k-th consensus round on local gradients (eq. 15), size |theta|
  (2|theta| for D-GCP-Adam, whose rounds carry [theta^i, g_i]);
- ``param`` (piece p): the p-th piece of [d_i, theta^i (, u~^i)] that the eq. (17) optimizers
  broadcast once per mini-batch, split over the LB forward rounds (d_i is the degree that S and W need);
  for gradient tracking the payload is [d_i, theta^i(t), y^i(t-1)].

Schedules, rounds per mini-batch (Table I):

============  ==========================================================  ====================
name          what                                                        rounds
============  ==========================================================  ====================
forward       forward passes only (centralized training, inference)       LB
naive         per sample: forward, backward, K gradient-consensus rounds  B(2L-1) + BK
batch         forward and backward per sample, K consensus per batch      B(2L-1) + K
piggyback     backward of sample b rides on the forward of b+1, then K    LB + L - 1 + K
dopt          as piggyback; theta (and u~) pieces ride on forward rounds  LB + L - 1
============  ==========================================================  ====================

**Imperfect links** (docs/design.md, section 12). Given a :class:`core.links.LinkContext` (one mini-batch's
lost packets, the receivers' policy and stale buffer), the simulator applies the link model to every exchange
it performs: it looks up the round of each payload with :meth:`Schedule.round_of` (static ints at trace
time) and hands the exchange the lost mask of those rounds on the operator's entries. A packet is one round's
broadcast on one directed link: packet 0 carries everything bundled into the round (the forward payload of
sample b + 1 and the piggybacked backward payload of sample b travel together and are lost together), packet 1
the round's piece of the eq. (17) parameter payload, so each piece has its own effective W. Without a context
(or with an inactive model, for which the trainer builds none) nothing changes: the code path is the lossless one.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from core.gcnn import Exchange
from core.links import LinkContext, StaleBuffer, lossy_apply, lossy_apply_pieces
from core.ops import CSRKernels, Operator, apply_operator

SCHEDULES = ("forward", "naive", "batch", "piggyback", "dopt")


class ScheduleError(RuntimeError):
    """A payload was sent that the schedule has no place for, twice, or out of its round."""


@dataclass(frozen=True)
class Message:
    """One payload: ``kind`` in fwd/bwd/grad/param, the sample it belongs to (or None), its index
    (layer l for fwd/bwd, consensus round k = 1..K for grad, piece number for param) and, for several
    payloads bundled into the same slot (e.g. two GCNNs of a pipeline exchanging in the same round),
    the name of the ``part``."""

    kind: str
    sample: int | None
    index: int
    part: str = ""


class Schedule:
    """When each payload of a mini-batch is sent: the timeline of Section III-C and Fig. 1.

    For a pipeline of several message-passing stages (e.g. unfolded layers each containing GCNNs), L is
    the number of sequential forward exchanges per sample and the backward pass has (at most) L - 1,
    exactly as for a GCNN: exchange 1 carries data only, so its gradient is never sent.

    Args:
        name: one of :data:`SCHEDULES`.
        num_layers: L, the forward exchanges per sample.
        batch_size: B.
        consensus_rounds: K (used by ``naive``, ``batch`` and ``piggyback``).
        param_size: size of the per-node vector that ``dopt`` mixes once per mini-batch
            (|theta|, or 2|theta| for D-AMSGrad); the degree d_i is added to it.
    """

    def __init__(self, name: str, num_layers: int, batch_size: int, consensus_rounds: int = 1,
                 param_size: int = 0):
        if name not in SCHEDULES:
            raise ValueError(f"unknown schedule {name!r}; choose one of {', '.join(SCHEDULES)}")
        if num_layers < 1 or batch_size < 1:
            raise ValueError(f"need L >= 1 and B >= 1, got L={num_layers}, B={batch_size}")
        if consensus_rounds < 1 and name in ("naive", "batch", "piggyback"):
            raise ValueError(f"need K >= 1 consensus rounds, got {consensus_rounds}")
        self.name, self.L, self.B, self.K = name, int(num_layers), int(batch_size), int(consensus_rounds)
        self.param_size = int(param_size)
        # the degree d_i plus the parameter payload, split as evenly as possible over the LB rounds
        self._pieces = np.array_split(np.arange(self.param_size + 1), self.L * self.B) if name == "dopt" else []
        self._piece_slices = [(p, int(ix[0]), int(ix[-1]) + 1) for p, ix in enumerate(self._pieces) if len(ix)]
        self._packets: list[int] | None = None

    @property
    def num_rounds(self) -> int:
        L, B, K = self.L, self.B, self.K
        return {"forward": L * B, "naive": B * (2 * L - 1 + K), "batch": B * (2 * L - 1) + K,
                "piggyback": L * B + L - 1 + K, "dopt": L * B + L - 1}[self.name]

    @property
    def counts_backward(self) -> bool:
        """Whether backward messages are exchanged (not for centralized training)."""
        return self.name != "forward"

    def param_pieces(self) -> list[tuple[int, int, int]]:
        """(piece p, start, stop) slices of [d_i, payload]; piece p rides on forward round p."""
        return list(self._piece_slices)

    def round_of(self, msg: Message) -> int:
        """The round (0-based, within the mini-batch) in which ``msg`` is sent."""
        L, B, K, b, i = self.L, self.B, self.K, msg.sample, msg.index
        per_sample = {"naive": 2 * L - 1 + K, "batch": 2 * L - 1}.get(self.name, L)
        if msg.kind == "fwd" and 1 <= i <= L and b is not None and 0 <= b < B:
            return b * per_sample + i - 1
        if msg.kind == "bwd" and 2 <= i <= L and b is not None and 0 <= b < B and self.counts_backward:
            r = L - i  # 0-based backward round of this sample: layer L first
            if self.name in ("naive", "batch"):
                return b * per_sample + L + r
            return (b + 1) * L + r  # piggybacked on the forward round r+1 of sample b+1 (Fig. 1)
        if msg.kind == "grad" and 1 <= i <= K:
            if self.name == "naive" and b is not None and 0 <= b < B:
                return b * per_sample + 2 * L - 1 + i - 1
            if self.name == "batch" and b is None:
                return B * (2 * L - 1) + i - 1
            if self.name == "piggyback" and b is None:
                return L * B + L - 1 + i - 1
        if msg.kind == "param" and self.name == "dopt" and b is None and 0 <= i < len(self._piece_slices):
            return i
        raise ScheduleError(f"schedule {self.name!r} (L={L}, B={B}, K={K}) has no round for {msg}")

    @staticmethod
    def packet_of(msg: Message) -> int:
        """The packet of a round a payload travels in: 1 for a piece of the eq. (17) parameter payload (its own
        packet), 0 for everything else bundled into the round (docs/design.md, section 12)."""
        return 1 if msg.kind == "param" else 0

    def packets_per_round(self) -> list[int]:
        """How many packets each round carries (1, or 2 for a round that also carries a parameter piece): the
        ``packets_per_round`` of :meth:`core.links.LinkModel.plan`."""
        if self._packets is None:
            self._packets = [1] * self.num_rounds
            for p, _, _ in self._piece_slices:
                self._packets[self.round_of(Message("param", None, p))] = 2
        return list(self._packets)

    def messages(self) -> list[Message]:
        """Every payload of one mini-batch."""
        L, B, K = self.L, self.B, self.K
        msgs = [Message("fwd", b, l) for b in range(B) for l in range(1, L + 1)]
        if self.counts_backward:
            msgs += [Message("bwd", b, l) for b in range(B) for l in range(L, 1, -1)]
        if self.name == "naive":
            msgs += [Message("grad", b, k) for b in range(B) for k in range(1, K + 1)]
        elif self.name in ("batch", "piggyback"):
            msgs += [Message("grad", None, k) for k in range(1, K + 1)]
        elif self.name == "dopt":
            msgs += [Message("param", None, p) for p, _, _ in self.param_pieces()]
        return msgs

    def timeline(self) -> list[list[Message]]:
        """The payloads of each round, in time order (what the protocol executor runs)."""
        rounds = [[] for _ in range(self.num_rounds)]
        for m in self.messages():
            rounds[self.round_of(m)].append(m)
        return rounds


@dataclass(frozen=True)
class CommCost:
    """Counts of one program of message passing (typically one mini-batch).

    ``floats_per_node`` is what a node with at least one neighbour sends (a broadcast of m floats counts
    m once, whatever the degree); isolated nodes send nothing.
    """

    rounds: int
    floats_per_node: int
    largest_message: int
    active_fraction: float = 1.0

    @property
    def floats_mean(self) -> float:
        return self.floats_per_node * self.active_fraction

    @property
    def floats_max(self) -> int:
        return self.floats_per_node if self.active_fraction > 0 else 0


class CommSimulator(Exchange):
    """Performs and counts the neighbour exchanges of one mini-batch under a :class:`Schedule`.

    ``propagate(op, x, message)`` computes ``op @ x`` and records the payload(s): ``message`` is
    ``(kind, index)`` for an exchange that carries every sample of the batch at once (the batched
    executor; one payload per sample is recorded for fwd/bwd, and for grad under ``naive``), or
    ``(kind, index, sample)`` for a single payload. :meth:`exchange_round` sends a bundle of payloads
    as one round (the protocol executor). Recording a payload twice, or one the schedule has no place
    for, raises :class:`ScheduleError`; :meth:`cost` checks that every scheduled payload was sent.

    Pipelines whose gradients come from ``tf.GradientTape`` rather than the explicit backprop pass
    ``count_tape_backward=True``: every forward exchange then has a custom gradient that performs the
    transposed exchange of the backward pass and records it as the ``bwd`` payload of the same index
    (what a network running that backward pass would send). :meth:`view` numbers the exchanges of a
    pipeline stage and bundles parallel stages into the same rounds.

    ``links`` (a :class:`core.links.LinkContext`) applies the link model to every exchange (module docstring):
    a batched fwd/bwd exchange of index l gets the (B, nnz) mask of the B rounds of its payloads, a gradient
    consensus round k its round's (nnz,) mask with mixing semantics (the lost weight on the receiver's own
    term), under ``naive`` per sample (the exchange then needs the per-sample gradients (|V|, B, |theta|):
    :attr:`mixes_per_sample`), the ``param`` payload each piece's packet-1 mask of the round it rides on. The
    tape-backward path uses the masks of the ``bwd`` rounds. A caller that records payloads itself
    (:meth:`record`, e.g. a dense exchange of its own) must apply the loss itself (:meth:`lost_mask`) and say
    so with ``lossy_handled=True``; otherwise :meth:`bypassed` lists the payloads that escaped the link model.
    """

    def __init__(self, schedule: Schedule, degree=None, count_tape_backward: bool = False,
                 transport: Exchange | None = None, links: LinkContext | None = None,
                 kernels: CSRKernels | None = None):
        self.schedule = schedule
        self.count_tape_backward = count_tape_backward
        # what moves the data: in-process operators (None), or e.g. a core.distributed.exchange.MPIExchange
        # on this rank's operator views; the logical counts are the same either way
        self.transport = transport
        self.links = links
        # in-process exchanges over the operators of these kernels run as CSR products (core.ops.csr_apply)
        self.kernels = kernels
        self._active = 1.0 if degree is None else float(np.mean(np.asarray(degree) > 0))
        self._sent: dict[Message, int] = {}
        self._round_size: dict[int, int] = defaultdict(int)
        self._packet_size: dict[tuple[int, int], int] = defaultdict(int)
        self._bypassed: list[Message] = []

    @property
    def lossy(self) -> bool:
        """Whether the exchanges run under a link context."""
        return self.links is not None

    @property
    def mixes_per_sample(self) -> bool:
        """Whether per-sample gradient consensus (``naive``) must mix each sample's gradient in its own rounds:
        under loss the B samples' rounds have different masks, so the batch-summed shortcut (linearity) no
        longer holds and the gradients are exchanged per sample, (|V|, B, |theta|)."""
        return self.links is not None and self.schedule.name == "naive"

    def view(self, offset: int = 0, part: str = "") -> Exchange:
        """An exchange that sends ``fwd`` payload l as ``fwd`` l + ``offset`` tagged ``part``.

        E.g. an unfolded layer u of a pipeline runs its GCNNs on ``sim.view(offset=2 * u, part="a")`` and
        ``sim.view(offset=2 * u, part="b")``: both GCNNs' layer-l messages travel in the same round.
        """
        return _SimulatorView(self, offset, part)

    def record(self, msg: Message, size: int, lossy_handled: bool = False) -> int:
        """Count payload ``msg`` of ``size`` floats in its round; returns the round. Under a link context a
        caller that moves the data itself passes ``lossy_handled=True`` once it applied :meth:`lost_mask`."""
        if self.links is not None and not lossy_handled:
            self._bypassed.append(msg)
        return self._record(msg, size)

    def _record(self, msg: Message, size: int) -> int:
        if msg in self._sent:
            raise ScheduleError(f"payload {msg} was sent twice")
        r = self.schedule.round_of(msg)
        self._sent[msg] = int(size)
        self._round_size[r] += int(size)
        self._packet_size[(r, Schedule.packet_of(msg))] += int(size)
        return r

    def bypassed(self) -> list[Message]:
        """Payloads recorded under a link context without the link model applied (see the class docstring)."""
        return list(self._bypassed)

    def packet_sizes(self) -> np.ndarray:
        """(rounds, 2) int: floats per node in packet 0 and packet 1 of each round, as recorded so far (what a
        retransmission of that packet broadcasts again)."""
        out = np.zeros((self.schedule.num_rounds, 2), np.int64)
        for (r, packet), size in self._packet_size.items():
            out[r, packet] = size
        return out

    def propagate(self, op: Operator, x: tf.Tensor, message=None, part: str = "") -> tf.Tensor:
        if message is None:
            raise ScheduleError("every exchange of a counted program must name its payload")
        kind, index, *sample = message
        self._record_exchange(kind, index, sample, int(x.shape[-1]), part)
        if self.count_tape_backward and kind == "fwd":
            return self._with_counted_backward(op, x, index, part)
        if self.links is not None:
            return self._lossy(op, x, kind, index, sample, part)
        return self._move(op, x)

    def _move(self, op, x: tf.Tensor) -> tf.Tensor:
        """op @ x by the transport (in-process: apply_operator, or the operator's CSR kernel)."""
        if self.transport is not None:
            return self.transport.propagate(op, x)
        return apply_operator(op, x) if not self.kernels else self.kernels.apply(op, x)

    # ------------------------------------------------------------------ under a link context
    def _rounds(self, kind: str, index: int, sample: list) -> list[int]:
        """The rounds of an exchange's payloads: one per sample for a batched fwd/bwd exchange (and for naive
        gradient consensus), else the single payload's."""
        if sample:
            return [self.schedule.round_of(Message(kind, sample[0], index))]
        if kind in ("fwd", "bwd") or (kind == "grad" and self.schedule.name == "naive"):
            return [self.schedule.round_of(Message(kind, b, index)) for b in range(self.schedule.B)]
        return [self.schedule.round_of(Message(kind, None, index))]

    def lost_mask(self, op, message) -> tf.Tensor | None:
        """The lost mask an exchange of ``message`` over ``op`` gets (None without a link context): bool
        (B, nnz) for a batched fwd/bwd payload (sample b's round in row b; likewise ``("grad", k)`` under
        ``naive``), (1, nnz) for a single sample's, (nnz,) for a batch-level gradient round, (n_pieces, nnz)
        for ``("param", 0)`` (piece p's packet in row p, :meth:`Schedule.param_pieces`). Diagonal entries are
        never lost. For callers that run their own exchange (then ``record(..., lossy_handled=True)``)."""
        if self.links is None:
            return None
        kind, index, *sample = message
        if kind == "param":
            rounds = [self.schedule.round_of(Message("param", None, p)) for p, _, _ in self.schedule.param_pieces()]
            return self.links.mask(op, rounds, packet=1)
        mask = self.links.mask(op, self._rounds(kind, index, sample), packet=0)
        if kind == "grad" and not (self.schedule.name == "naive" and not sample):
            return mask[0]
        return mask

    def _lossy(self, op, x: tf.Tensor, kind: str, index: int, sample: list, part: str) -> tf.Tensor:
        """op @ x under the link context (class docstring)."""
        if kind == "param":
            return self._lossy_param(op, x)
        mask = self.lost_mask(op, (kind, index, *sample))
        if kind in ("fwd", "bwd") and sample and not (x.shape.rank == 3 and x.shape[1] == 1):
            mask = mask[0]  # a single payload that is not (|V|, 1, g): one packet per link
        if kind == "grad" and mask.shape.rank == 2 and x.shape.rank != 3:
            raise ScheduleError("under loss the naive schedule mixes each sample's gradient in its own rounds: the "
                                "exchange needs per-sample gradients (|V|, B, |theta|) (see mixes_per_sample)")
        return self._apply(op, x, mask, (kind, index, part), mixing=kind == "grad")

    def _apply(self, op, x, mask, slot, mixing: bool, pieces=None, stale: StaleBuffer | None = None) -> tf.Tensor:
        """The lossy exchange: in-process on ``op``; through the transport (MPI) on the local operator of its
        view, whose entries are the view's (the masks are aligned with them)."""
        policy, stale = self.links.policy, self.links.stale if stale is None else stale

        def local(local_op: Operator, block: tf.Tensor) -> tf.Tensor:
            if pieces is not None:
                return lossy_apply_pieces(local_op, block, mask, pieces, policy, stale, slot)
            return lossy_apply(local_op, block, mask, policy, stale, slot, mixing=mixing)

        if self.transport is None:
            return local(op, x)
        propagate_with = getattr(self.transport, "propagate_with", None)
        if propagate_with is None:
            raise ScheduleError(f"the transport {type(self.transport).__name__} cannot apply a link model (it has no "
                                f"propagate_with)")
        return propagate_with(op, x, local)

    def _lossy_param(self, op, x: tf.Tensor) -> tf.Tensor:
        """The eq. (17) payload: piece p of [d_i, payload] is packet 1 of round p; each piece has its own
        effective weights. The degree column (counted, never used) is carried as zeros, as in the protocol
        executor, so that the stale slot ``param`` holds (nnz, 1 + payload) in both executors."""
        pieces = self.schedule.param_pieces()
        columns = np.concatenate([np.full(stop - start, p, np.int32) for p, start, stop in pieces])
        full = tf.concat([tf.zeros_like(x[:, :1]), x], axis=-1)
        mask = self.lost_mask(op, ("param", 0))
        return self._apply(op, full, mask, "param", mixing=True, pieces=columns)[:, 1:]

    def _lossy_round(self, msg: Message, op, payload: tf.Tensor, round_index: int) -> tf.Tensor:
        """One payload of the protocol executor's round under the link context."""
        packet = Schedule.packet_of(msg)
        mask = self.links.mask(op, [round_index], packet)  # (1, nnz)
        if msg.kind in ("fwd", "bwd"):
            if not (payload.shape.rank == 3 and payload.shape[1] == 1):
                mask = mask[0]
            return self._apply(op, payload, mask, (msg.kind, msg.index, msg.part), mixing=False)
        if msg.kind == "grad":
            return self._apply(op, payload, mask[0], ("grad", msg.index, msg.part), mixing=True)
        # a parameter piece: its columns of the stale slot "param" (nnz, 1 + payload), see _lossy_param
        if self.links.policy.kind != "stale":
            return self._apply(op, payload, mask[0], "param", mixing=True)
        _, start, stop = self.schedule.param_pieces()[msg.index]
        stale = self.links.stale
        old = stale.get("param", [int(op.rows.shape[0]), self.schedule.param_size + 1], payload.dtype)
        piece = StaleBuffer({"param": old[:, start:stop]})
        out = self._apply(op, payload, mask[0], "param", mixing=True, stale=piece)
        stale.put("param", tf.concat([old[:, :start], piece.values["param"], old[:, stop:]], axis=1))
        return out

    def _with_counted_backward(self, op: Operator, x: tf.Tensor, index: int, part: str) -> tf.Tensor:
        """op @ x whose gradient (op^T dy: the backward message of eq. 14's kind) is counted as bwd.

        The gradient is taken with respect to x only: shift weights are data, not trainable.
        """

        if self.links is not None:  # both directions under the link model, the backward in its bwd rounds
            @tf.custom_gradient
            def lossy_exchange(x):
                def backward(dy):
                    self._record_exchange("bwd", index, [], int(dy.shape[-1]), part)
                    return self._lossy(op.transposed(), dy, "bwd", index, [], part)

                return self._lossy(op, x, "fwd", index, [], part), backward

            return lossy_exchange(x)

        @tf.custom_gradient
        def exchange(x):
            def backward(dy):
                self._record_exchange("bwd", index, [], int(dy.shape[-1]), part)
                return self._move(op.transposed(), dy)

            return self._move(op, x), backward

        return exchange(x)

    def _record_exchange(self, kind: str, index: int, sample: list, size: int, part: str) -> None:
        if sample:
            self._record(Message(kind, sample[0], index, part), size)
        elif kind in ("fwd", "bwd") or (kind == "grad" and self.schedule.name == "naive"):
            # Batched: the B per-sample payloads of this exchange. For per-sample gradient consensus
            # (naive), one exchange of the batch-summed gradient stands for the B per-sample rounds:
            # consensus is linear, so sum_b W^K x(b) = W^K sum_b x(b) (the protocol executor runs the
            # per-sample rounds literally and a test checks both agree). Under loss the rounds differ per
            # sample and the exchange carries the per-sample gradients instead (mixes_per_sample).
            for b in range(self.schedule.B):
                self._record(Message(kind, b, index, part), size)
        elif kind == "param":
            for p, start, stop in self.schedule.param_pieces():
                self._record(Message("param", None, p), stop - start)
            if size != self.schedule.param_size:
                raise ScheduleError(f"param payload of size {size}, schedule expects {self.schedule.param_size}")
        else:
            self._record(Message(kind, None, index, part), size)

    def exchange_round(self, round_index: int, items) -> list[tf.Tensor]:
        """Send a bundle of ``(Message, op, payload)`` as the single round ``round_index`` (under a link
        context every payload gets the mask of its packet of this round)."""
        out = []
        for msg, op, payload in items:
            r = self._record(msg, int(payload.shape[-1]))
            if r != round_index:
                raise ScheduleError(f"{msg} belongs to round {r}, sent in round {round_index}")
            out.append(self._move(op, payload) if self.links is None else self._lossy_round(msg, op, payload, r))
        return out

    def cost(self) -> CommCost:
        sent = {Message(m.kind, m.sample, m.index) for m in self._sent}  # any part fills the slot
        missing = set(self.schedule.messages()) - sent
        if missing:
            example = sorted(missing, key=str)[0]
            raise ScheduleError(f"{len(missing)} scheduled payloads were never sent, e.g. {example}")
        return CommCost(
            rounds=len(self._round_size),
            floats_per_node=int(sum(self._sent.values())),
            largest_message=max(self._round_size.values(), default=0),
            active_fraction=self._active,
        )


class _SimulatorView(Exchange):
    """See :meth:`CommSimulator.view`."""

    def __init__(self, sim: CommSimulator, offset: int, part: str):
        self.sim, self.offset, self.part = sim, int(offset), part

    def propagate(self, op: Operator, x: tf.Tensor, message=None) -> tf.Tensor:
        if message is None:
            raise ScheduleError("every exchange of a counted program must name its payload")
        kind, index, *rest = message
        if kind in ("fwd", "bwd"):
            index += self.offset
        return self.sim.propagate(op, x, (kind, index, *rest), part=self.part)
