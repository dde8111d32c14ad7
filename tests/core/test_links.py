"""Imperfect links (core/links.py): the pinned stream, loss models, receiver policies, consensus, failures."""

import math

import networkx as nx
import numpy as np
import pytest
import tensorflow as tf

from core.graph import Graph
from core.links import (
    CHAIN,
    INIT,
    LOSS,
    MAX_RETRANSMISSIONS,
    GilbertElliott,
    LinkContext,
    LinkModel,
    LossPolicy,
    StaleBuffer,
    draw_plans,
    lossy_apply,
    lossy_mixing_values,
    on_pattern,
    restrict_operator,
    splitmix64,
    stream_hash,
    stream_uniform,
    surviving_graph,
    surviving_mixing,
)
from core.ops import apply_operator, to_operator

F64 = tf.float64
MASK = 2 ** 64 - 1


def graph(n=12, p=0.35, seed=3):
    return Graph.from_networkx(nx.gnp_random_graph(n, p, seed=seed))


def links(g):
    return g.senders.astype(np.int64), g.receivers.astype(np.int64)


def py_splitmix64(x):
    """SplitMix64's output function in Python integers (independent of the NumPy code)."""
    z = (x + 0x9E3779B97F4A7C15) & MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
    return z ^ (z >> 31)


def py_hash(*words):
    h = py_splitmix64(words[0])
    for w in words[1:]:
        h = py_splitmix64(h ^ w)
    return h


# ------------------------------------------------------------------------------------------ the stream
def test_splitmix64_and_the_keyed_stream_are_pinned():
    # the reference SplitMix64 generator seeded with 0 outputs these first three values
    state = np.array([0, 0x9E3779B97F4A7C15, (2 * 0x9E3779B97F4A7C15) & MASK], np.uint64)
    assert [int(v) for v in splitmix64(state)] == [0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4, 0x06C45D188009454F]
    # keyed hashes: literal pins, and the independent Python implementation on random keys
    assert int(stream_hash(0, 0, 0, 0, 0, 0, 0, 0)) == 9169471704609646880
    assert int(stream_hash(12345, LOSS, 7, 3, 0, 0, 5, 9)) == 8356467612495043291
    np.testing.assert_array_equal(stream_uniform(0, LOSS, 0, 0, 0, 0, np.arange(3), np.arange(1, 4)).round(8),
                                  [0.07066076, 0.11809043, 0.65174872])
    rng = np.random.default_rng(0)
    keys = rng.integers(0, 2 ** 31, size=(50, 8))
    got = stream_hash(*keys.T)
    assert [int(v) for v in got] == [py_hash(*map(int, k)) for k in keys]
    u = stream_uniform(*keys.T)
    assert np.all((u >= 0) & (u < 1))
    np.testing.assert_array_equal(u, [(py_hash(*map(int, k)) >> 11) * 2.0 ** -53 for k in keys])


# ------------------------------------------------------------------------------------- no loss: identity
def test_zero_probability_loses_nothing_and_lossy_apply_equals_apply_operator_bit_for_bit():
    g = graph()
    s, r = links(g)
    model = LinkModel(seed=1, loss_prob=0.0)
    assert not model.active
    assert not model.draw(0, 0, s, r).any()
    assert model.link_up(0, s, r).all()
    plan = model.plan(0, s, r, [1, 2, 1], "retransmit:3")
    assert not plan.lost.any() and plan.total_extra_rounds == 0

    rng = np.random.default_rng(0)
    shift = to_operator(g.shift_operator("normalized_laplacian"), F64)
    mixing = to_operator(g.metropolis_hastings(), F64)
    x = tf.constant(rng.normal(size=(g.num_nodes, 4, 3)), F64)
    none1 = np.zeros(shift.rows.shape[0], bool)
    none2 = np.zeros((4, shift.rows.shape[0]), bool)
    for op in (shift, mixing, shift.transposed()):
        want = apply_operator(op, x).numpy()
        for mask in (none1, none2):
            for policy in ("zero", "stale", "retransmit:2"):
                for mixing_round in (False, True):
                    got = lossy_apply(op, x, mask, policy, StaleBuffer(), ("fwd", 1), mixing=mixing_round)
                    np.testing.assert_array_equal(got.numpy(), want)
    # per-sample operator values and inside tf.function
    per_sample = shift._replace(values=tf.constant(rng.normal(size=(4, shift.rows.shape[0])), F64))
    fn = tf.function(lambda x, m: lossy_apply(per_sample, x, m, "zero"))
    np.testing.assert_array_equal(fn(x, none2).numpy(), apply_operator(per_sample, x).numpy())


# ------------------------------------------------------------------------------ reproducibility and rate
def test_drops_are_reproducible_and_independent_of_edge_order_and_of_the_process():
    g = graph(20, 0.3)
    s, r = links(g)
    a = LinkModel(seed=7, loss_prob=0.3).draw(5, 11, s, r)
    b = LinkModel(seed=7, loss_prob=0.3).draw(5, 11, s, r)
    np.testing.assert_array_equal(a, b)
    perm = np.random.default_rng(1).permutation(len(s))
    c = LinkModel(seed=7, loss_prob=0.3).draw(5, 11, s[perm], r[perm])
    np.testing.assert_array_equal(c, a[perm])
    # two "ranks", each drawing the links it receives on, lose the same packets
    half = r < 10
    parts = [LinkModel(seed=7, loss_prob=0.3).draw(5, 11, s[m], r[m]) for m in (half, ~half)]
    np.testing.assert_array_equal(parts[0], a[half])
    np.testing.assert_array_equal(parts[1], a[~half])
    # another seed, mini-batch, round or packet gives other drops
    for other in (LinkModel(8, 0.3).draw(5, 11, s, r), LinkModel(7, 0.3).draw(6, 11, s, r),
                  LinkModel(7, 0.3).draw(5, 12, s, r), LinkModel(7, 0.3).draw(5, 11, s, r, packet=1)):
        assert not np.array_equal(other, a)


def test_erasure_rate_is_within_three_sigma_of_p():
    g = graph(30, 0.3)
    s, r = links(g)
    p = 0.2
    model = LinkModel(seed=2, loss_prob=p)
    lost = np.stack([model.draw(m, t, s, r) for m in range(5) for t in range(40)])
    n = lost.size
    assert model.counters.packets == n and model.counters.lost == lost.sum()
    assert abs(lost.mean() - p) < 3 * math.sqrt(p * (1 - p) / n)
    assert abs(model.counters.loss_rate - p) < 3 * math.sqrt(p * (1 - p) / n)


def test_diagonal_terms_are_never_lost():
    nodes = np.arange(10)
    model = LinkModel(seed=0, loss_prob=0.99)
    assert not model.draw(0, 0, nodes, nodes).any()
    gmodel = LinkModel(seed=0, gilbert=GilbertElliott(0.5, 0.1, 0.9, 0.99))
    assert not gmodel.draw(0, 0, nodes, nodes).any()
    op = to_operator(graph().metropolis_hastings(), F64)
    x = tf.ones([op.num_nodes, 2], F64)
    y = lossy_apply(op, x, np.ones(op.rows.shape[0], bool), "zero")
    np.testing.assert_allclose(y.numpy(), np.repeat(op.diagonal().numpy()[:, None], 2, 1))


# ------------------------------------------------------------------------------------- Gilbert-Elliott
def test_gilbert_chain_matches_its_stationary_loss_rate_and_is_bursty():
    ge = GilbertElliott(p_gb=0.05, p_bg=0.2, loss_good=0.02, loss_bad=0.6)
    g = graph(30, 0.3, seed=5)
    s, r = links(g)
    model = LinkModel(seed=3, gilbert=ge)
    T = 400
    lost = np.stack([model.draw(m, t, s, r) for m in range(2) for t in range(T)])  # (2T, E)
    n_steps, n_links = lost.shape
    m, lam, pi = ge.loss_rate, ge.correlation, ge.stationary_bad
    # variance of the mean of a stationary Markov-modulated sequence, per link, then over independent links
    var = m * (1 - m) + 2 * pi * (1 - pi) * (ge.loss_bad - ge.loss_good) ** 2 * lam / (1 - lam)
    sigma = math.sqrt(var / (n_steps * n_links))
    assert abs(lost.mean() - m) < 3 * sigma
    # bursty: P(loss | previous loss on the same link) is well above the marginal rate, and near its value
    after = lost[1:][lost[:-1]]
    assert ge.loss_after_loss > m + 0.1
    assert after.mean() > m + 0.1
    assert abs(after.mean() - ge.loss_after_loss) < 3 * math.sqrt(ge.loss_after_loss / len(after))
    # independent erasures at the same rate are not bursty
    flat = LinkModel(seed=3, loss_prob=m)
    lost_b = np.stack([flat.draw(0, t, s, r) for t in range(T)])
    assert abs(lost_b[1:][lost_b[:-1]].mean() - m) < 3 * math.sqrt(m / lost_b[:-1].sum())


def test_gilbert_state_is_a_function_of_the_stream_per_link():
    ge = GilbertElliott(0.1, 0.3, 0.05, 0.7)
    g = graph(16, 0.4)
    s, r = links(g)
    one = LinkModel(seed=4, gilbert=ge)
    full = np.stack([one.draw(0, t, s, r) for t in range(30)])
    # per-link order and partition do not matter; the chain state lives in a small array the caller keeps
    perm = np.random.default_rng(0).permutation(len(s))
    two = LinkModel(seed=4, gilbert=ge)
    np.testing.assert_array_equal(np.stack([two.draw(0, t, s[perm], r[perm]) for t in range(30)]), full[:, perm])
    half = s < r
    three = LinkModel(seed=4, gilbert=ge)
    chain_a, chain_b = three.chain, three.chain.copy()
    got = np.zeros_like(full)
    for t in range(30):
        got[t, half] = three.draw(0, t, s[half], r[half], chain=chain_a)
        got[t, ~half] = three.draw(0, t, s[~half], r[~half], chain=chain_b)
    np.testing.assert_array_equal(got, full)
    # the initial state is the INIT draw against pi_bad; a step's transition is its CHAIN draw
    fresh = LinkModel(seed=4, gilbert=ge)
    fresh.draw(0, 0, s[:1], r[:1])
    bad0 = stream_uniform(4, INIT, 0, 0, 0, 0, s[0], r[0]) < ge.stationary_bad
    u = stream_uniform(4, CHAIN, 0, 0, 0, 0, s[0], r[0])
    assert bool(fresh.chain.bad[0]) == bool((not u < ge.p_bg) if bad0 else u < ge.p_gb)
    # drawing the same step again (another packet, another operator) does not advance; earlier steps fail
    state = one.chain.copy()
    one.draw(0, 29, r, s)
    np.testing.assert_array_equal(one.chain.bad, state.bad)
    with pytest.raises(ValueError, match="in order"):
        one.draw(0, 3, s, r)
    # checkpointed arrays restore the chain exactly
    again = LinkModel(seed=4, gilbert=ge)
    again.chain = type(state).from_arrays(state.arrays())
    np.testing.assert_array_equal(again.draw(0, 30, s, r), one.draw(0, 30, s, r))


# --------------------------------------------------------------------------------------------- packets
def test_piggybacked_payloads_of_one_packet_are_lost_together_and_theta_pieces_are_their_own_packets():
    g = graph(14, 0.4)
    shift = to_operator(g.shift_operator("normalized_adjacency"), F64)
    back = shift.transposed()
    model = LinkModel(seed=9, loss_prob=0.4)
    plan = model.plan(3, *links(g), packets_per_round=[2, 2, 1])
    fwd_mask = plan.mask_for(shift, [1])[0]  # sample b+1's forward payload rides with sample b's backward one
    bwd_mask = plan.mask_for(back, [1])[0]
    # the same directed link (sender = col, receiver = row) has the same fate in both operators' orders
    lost_links = {(int(c), int(r)) for r, c, m in zip(shift.rows.numpy(), shift.cols.numpy(), fwd_mask) if m}
    assert lost_links == {(int(c), int(r)) for r, c, m in zip(back.rows.numpy(), back.cols.numpy(), bwd_mask) if m}
    assert lost_links
    # both payloads are zero exactly where the packet is lost: compare with the lossless terms per edge
    rng = np.random.default_rng(0)
    xf = tf.constant(rng.normal(size=(g.num_nodes, 1, 3)), F64)
    xb = tf.constant(rng.normal(size=(g.num_nodes, 1, 3)), F64)
    for op, x, mask in ((shift, xf, fwd_mask), (back, xb, bwd_mask)):
        kept = op._replace(values=tf.where(mask, tf.zeros_like(op.values), op.values))
        np.testing.assert_array_equal(lossy_apply(op, x, mask).numpy(), apply_operator(kept, x).numpy())
    # the theta piece of the same round is its own packet: drawn independently (packet 1)
    np.testing.assert_array_equal(plan.lost[1, 1], LinkModel(seed=9, loss_prob=0.4).draw(3, 1, *links(g), packet=1))
    assert not np.array_equal(plan.lost[1, 1], plan.lost[1, 0])
    assert not plan.lost[2, 1].any()  # round 2 carries no piece


def test_stale_reuses_the_last_value_of_the_same_slot_from_the_same_neighbour():
    # path 0 - 1 - 2: node 1 receives from 0 and from 2
    g = Graph.from_edge_list(np.array([[0, 1], [1, 2]]), 3)
    op = to_operator(g.shift_operator("adjacency"), F64)
    rows, cols = op.rows.numpy(), op.cols.numpy()
    e01 = int(np.flatnonzero((cols == 0) & (rows == 1))[0])  # 0 -> 1
    e21 = int(np.flatnonzero((cols == 2) & (rows == 1))[0])  # 2 -> 1
    nnz = len(rows)
    none = np.zeros(nnz, bool)
    lose01 = none.copy()
    lose01[e01] = True
    lose21 = none.copy()
    lose21[e21] = True
    buf = StaleBuffer()

    def x(v0, v2):
        return tf.constant([[v0], [0.0], [v2]], F64)

    # before anything was received on the slot the stale value is 0
    assert lossy_apply(op, x(5.0, 7.0), lose01, "stale", buf, ("fwd", 1)).numpy()[1, 0] == 7.0
    lossy_apply(op, x(1.0, 2.0), none, "stale", buf, ("fwd", 1))  # fwd 1 receives 1 from node 0
    lossy_apply(op, x(10.0, 20.0), none, "stale", buf, ("fwd", 2))  # another slot receives 10
    y = lossy_apply(op, x(100.0, 200.0), lose01, "stale", buf, ("fwd", 1))
    assert y.numpy()[1, 0] == 1.0 + 200.0  # stale 1 from node 0 (slot fwd/1), fresh 200 from node 2
    y = lossy_apply(op, x(100.0, 200.0), lose01, "stale", buf, ("fwd", 2))
    assert y.numpy()[1, 0] == 10.0 + 200.0
    y = lossy_apply(op, x(300.0, 400.0), lose21, "stale", buf, ("fwd", 1))
    assert y.numpy()[1, 0] == 300.0 + 200.0  # the right neighbour: node 2 last sent 200 on fwd/1 (node 0: 1)
    # zero policy for comparison
    assert lossy_apply(op, x(100.0, 200.0), lose01, "zero").numpy()[1, 0] == 200.0

    # batched: B per-sample packets in time order equal B sequential one-sample exchanges
    rng = np.random.default_rng(1)
    big = graph(10, 0.4)
    bop = to_operator(big.shift_operator("normalized_adjacency"), F64)
    B, nnz = 6, bop.rows.shape[0]
    xs = tf.constant(rng.normal(size=(big.num_nodes, B, 2)), F64)
    masks = rng.random((B, nnz)) < 0.5
    batched_buf, seq_buf = StaleBuffer(), StaleBuffer()
    lossy_apply(bop, xs, np.zeros((B, nnz), bool), "stale", batched_buf, ("bwd", 2))  # a previous mini-batch
    lossy_apply(bop, xs, np.zeros((B, nnz), bool), "stale", seq_buf, ("bwd", 2))
    xs2 = xs * 3.0
    fn = tf.function(lambda x, m: (lossy_apply(bop, x, m, "stale", batched_buf, ("bwd", 2)),
                                   batched_buf.values["bwd/2"]))
    got, last = fn(xs2, masks)
    want = [lossy_apply(bop, xs2[:, b:b + 1], masks[b:b + 1], "stale", seq_buf, ("bwd", 2)) for b in range(B)]
    np.testing.assert_allclose(got.numpy(), tf.concat(want, axis=1).numpy(), rtol=0, atol=1e-15)
    np.testing.assert_array_equal(last.numpy(), seq_buf.values["bwd/2"].numpy())


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("samples", [36, 130])  # int8 and int16 inside
def test_the_last_arrival_before_each_sample_is_found_within_the_lookback_and_beyond_it(jit, samples):
    from core.links import STALE_LOOKBACK, _last_arrivals

    def reference(received):
        prev = np.full(received.shape, -1)
        last = np.full(received.shape[0], -1)
        for k, row in enumerate(received):
            for b in range(row.size):
                prev[k, b] = last[k]
                last[k] = b if row[b] else last[k]
        return prev, last

    rng = np.random.default_rng(2)
    find = tf.function(_last_arrivals, jit_compile=True) if jit else _last_arrivals
    B = samples
    short = rng.random((20, B)) >= 0.3
    short[:, ::STALE_LOOKBACK // 2] = True  # no run reaches the lookback: the select chain alone
    deep = short.copy()
    deep[3, 2:2 + STALE_LOOKBACK + 5] = False  # a longer run: the general search
    deep[5] = False  # never received: the buffer's value throughout
    for received in (short, deep, np.ones((4, 1), bool), np.zeros((4, 1), bool)):
        prev, last = find(tf.constant(received))
        want_prev, want_last = reference(received)
        np.testing.assert_array_equal(prev.numpy(), want_prev)
        np.testing.assert_array_equal(last.numpy(), want_last)


def test_the_largest_retransmission_count_is_drawn_exactly():
    """R = MAX_RETRANSMISSIONS: the batched program's per-packet attempt counts (int8) hold R + 1 without
    wrapping, so the packets lost in all R + 1 attempts stay lost (a wrapped count once delivered them all)."""
    g = graph(12, 0.4)
    s, r = links(g)
    policy = f"retransmit:{MAX_RETRANSMISSIONS}"
    model = LinkModel(seed=4, loss_prob=0.99)
    batch = draw_plans(model, 0, 2, s, r, [1] * 30, policy)
    for k in range(2):
        plan = LinkModel(seed=4, loss_prob=0.99).plan(k, s, r, [1] * 30, policy)
        np.testing.assert_array_equal(batch.lost.numpy()[k], np.moveaxis(plan.lost, -1, 0))
        np.testing.assert_array_equal(batch.extra_rounds[k], plan.extra_rounds)
    still = batch.still_lost.sum() / batch.packets.sum()
    assert 0.30 < still < 0.43  # 0.99 ** 101 = 0.362 of the packets never arrive


def test_retransmit_adds_the_rounds_the_worst_link_needed_and_never_more_than_R():
    g = graph(20, 0.3)
    s, r = links(g)
    p, R = 0.5, 3
    model = LinkModel(seed=11, loss_prob=p)
    plan = model.plan(0, s, r, [1] * 40, "retransmit:3")
    assert plan.extra_rounds.max() <= R and plan.extra_rounds.max() == R  # at p = 0.5 some packet needs R
    ref = LinkModel(seed=11, loss_prob=p)
    for t in range(40):
        attempts = np.stack([ref._draw(0, t, s, r, 0, a, None) for a in range(R + 1)])  # (R + 1, E)
        np.testing.assert_array_equal(plan.first_lost[t, 0], attempts[0])
        delivered_at = np.where(attempts.all(axis=0), R + 1, np.argmin(attempts, axis=0))
        assert plan.extra_rounds[t] == min(int(delivered_at.max()), R)
        np.testing.assert_array_equal(plan.lost[t, 0], attempts.all(axis=0))
    c = model.counters
    assert c.extra_rounds == plan.total_extra_rounds
    assert c.still_lost == plan.lost.sum() and c.lost == plan.first_lost.sum()
    assert c.residual_loss_rate < c.loss_rate
    # the direct call: two packets of a round retransmitted together
    lost = np.stack([model.draw(1, 0, s, r), model.draw(1, 0, s, r, packet=1)])
    extra, still = model.retransmit(1, 0, s, r, lost, R)
    assert 1 <= extra <= R and still.shape == lost.shape and not (still & ~lost).any()
    extra, still = model.retransmit(1, 1, s, r, np.zeros(len(s), bool), R)
    assert extra == 0 and not still.any()
    # Gilbert chains advance on retransmissions (and only on the retransmitting links)
    ge_model = LinkModel(seed=1, gilbert=GilbertElliott(0.3, 0.3, 0.2, 0.9))
    ge_plan = ge_model.plan(0, s, r, [1] * 10, "retransmit:2")
    assert ge_plan.extra_rounds.max() <= 2
    retried = ge_plan.first_lost[-1, 0]
    last = ge_model.chain.last[np.searchsorted(ge_model.chain.codes, (s << 32) | r)]
    assert np.all(last[retried, 2] >= 1) and np.all(last[~retried, 2] == 0)


# ------------------------------------------------------------------------------------------- consensus
def test_consensus_under_loss_keeps_rows_stochastic_with_the_lost_weight_on_the_diagonal():
    g = graph(15, 0.35)
    w = to_operator(g.metropolis_hastings(), F64)
    rows, cols, vals = w.rows.numpy(), w.cols.numpy(), w.values.numpy()
    lost = LinkModel(seed=5, loss_prob=0.4).draw(0, 0, cols, rows)
    assert lost.any()
    new = lossy_mixing_values(w, lost).numpy()
    dense = np.zeros((g.num_nodes,) * 2)
    dense[rows, cols] = new
    np.testing.assert_allclose(dense.sum(axis=1), 1.0, rtol=0, atol=1e-15)
    assert np.abs(dense.sum(axis=0) - 1.0).max() > 1e-3  # columns are no longer stochastic
    assert np.all(new[lost] == 0)
    moved = np.bincount(rows[lost], weights=vals[lost], minlength=g.num_nodes)
    np.testing.assert_allclose(np.diag(dense), w.diagonal().numpy() + moved, rtol=0, atol=1e-15)
    # the same through lossy_apply (per sample too), and the NumPy entry point
    x = tf.constant(np.random.default_rng(0).normal(size=(g.num_nodes, 3, 2)), F64)
    np.testing.assert_allclose(lossy_apply(w, x, lost, "zero", mixing=True).numpy(),
                               np.einsum("ij,jbg->ibg", dense, x.numpy()), rtol=0, atol=1e-14)
    per = np.stack([lost, np.zeros_like(lost), lost])
    y = lossy_apply(w, x, per, "retransmit:1", mixing=True).numpy()
    np.testing.assert_allclose(y[:, 1], apply_operator(w, x).numpy()[:, 1], rtol=0, atol=1e-14)
    np.testing.assert_allclose(y[:, 0], np.einsum("ij,jg->ig", dense, x.numpy()[:, 0]), rtol=0, atol=1e-14)
    np.testing.assert_array_equal(lossy_mixing_values(g.metropolis_hastings(), lost), new)
    # equal copies stay equal under lossy consensus
    ones = tf.ones([g.num_nodes, 4], F64)
    np.testing.assert_allclose(lossy_apply(w, ones, lost, "zero", mixing=True).numpy(), 1.0, rtol=0, atol=1e-15)


# ------------------------------------------------------------------------------------------- failures
def test_link_failures_rebuild_the_mh_weights_of_the_surviving_graph():
    g = graph(25, 0.25, seed=8)
    s, r = links(g)
    q = 0.3
    model = LinkModel(seed=6, link_failure=q)
    up = model.link_up(4, s, r)
    code = dict(zip(zip(s.tolist(), r.tolist()), up.tolist()))
    assert all(code[(a, b)] == code[(b, a)] for a, b in code)  # undirected
    assert not up.all() and up.any()
    survivors = surviving_graph(g, up)
    w_op = g.metropolis_hastings()
    up_w = model.link_up(4, w_op.cols, w_op.rows)
    rebuilt = surviving_mixing(w_op, up_w)
    np.testing.assert_allclose(rebuilt.to_dense(), survivors.metropolis_hastings().to_dense(), rtol=0, atol=1e-15)
    assert not np.allclose(rebuilt.to_dense(), w_op.to_dense())  # degrees changed
    assert rebuilt.nnz == g.num_nodes + len(s)  # fixed pattern: failed links are zeros, no retracing
    # from S's pattern (no diagonal), as TensorFlow tensors
    adj = to_operator(g.shift_operator("adjacency"), F64)
    up_a = model.link_up(4, adj.cols.numpy(), adj.rows.numpy())
    rebuilt_tf = surviving_mixing(adj, up_a)
    dense = np.zeros((g.num_nodes,) * 2)
    dense[rebuilt_tf.rows.numpy(), rebuilt_tf.cols.numpy()] = rebuilt_tf.values.numpy()
    np.testing.assert_allclose(dense, survivors.metropolis_hastings().to_dense(), rtol=0, atol=1e-15)
    # S restricted to the surviving links, and a normalized S rebuilt on them, on the full pattern
    restricted = restrict_operator(g.shift_operator("adjacency"), up_a)
    np.testing.assert_array_equal(restricted.to_dense(), survivors.shift_operator("adjacency").to_dense())
    full = g.shift_operator("normalized_laplacian")
    rebuilt_s = on_pattern(full, survivors.shift_operator("normalized_laplacian"))
    assert rebuilt_s.nnz == full.nnz
    np.testing.assert_array_equal(rebuilt_s.to_dense(), survivors.shift_operator("normalized_laplacian").to_dense())
    # the failure rate over many mini-batches
    model.counters = type(model.counters)()
    for m in range(5, 200):
        model.link_up(m, s, r)
    n = model.counters.links
    assert n == 195 * g.num_edges
    assert abs(model.counters.failure_rate - q) < 3 * math.sqrt(q * (1 - q) / n)
    with pytest.raises(ValueError, match="symmetric"):
        bad = up.copy()
        bad[np.flatnonzero(up)[0]] = False
        surviving_graph(g, bad)


# ------------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("make, flag", [
    (lambda: LinkModel(loss_prob=1.0), "--loss-prob"),
    (lambda: LinkModel(loss_prob=-0.1), "--loss-prob"),
    (lambda: LinkModel(loss_prob=float("nan")), "--loss-prob"),
    (lambda: LinkModel(loss_prob="0.1"), "--loss-prob"),
    (lambda: LinkModel(link_failure=1.5), "--link-failure"),
    (lambda: LossPolicy.parse("drop"), "--on-loss"),
    (lambda: LossPolicy.parse("retransmit"), "--on-loss"),
    (lambda: LossPolicy.parse("retransmit:0"), "--on-loss"),
    (lambda: LossPolicy.parse("retransmit:x"), "--on-loss"),
    (lambda: LossPolicy.parse("retransmit:\uff13"), "--on-loss"),  # a full-width 3: int() reads it, we do not
    (lambda: LossPolicy.parse(f"retransmit:{MAX_RETRANSMISSIONS + 1}"), "--on-loss retransmit:R takes R from 1"),
    (lambda: LossPolicy("retransmit", 0), "--on-loss"),
    (lambda: LossPolicy("drop"), "--on-loss"),
    (lambda: LossPolicy.parse("stale:2"), "--on-loss"),
    (lambda: GilbertElliott(0.0, 0.5), "--gilbert-p-gb"),
    (lambda: GilbertElliott(0.1, 0.0), "--gilbert-p-bg"),
    (lambda: GilbertElliott(1.0, 0.5), "--gilbert-p-gb"),
    (lambda: GilbertElliott(0.1, 0.5, loss_good=-1), "--gilbert-loss-good"),
    (lambda: GilbertElliott(0.1, 0.5, loss_bad=1.0), "--gilbert-loss-bad"),
    (lambda: LinkModel.from_flags(gilbert_p_gb=0.1, gilbert_loss_bad=0.5), "--gilbert-p-bg"),
    (lambda: LinkModel.from_flags(loss_prob=0.1, gilbert_p_gb=0.1, gilbert_p_bg=0.2, gilbert_loss_bad=0.5),
     "--loss-prob"),
])
def test_bad_input_gives_one_line_value_errors_naming_the_flag(make, flag):
    with pytest.raises(ValueError) as err:
        make()
    assert flag in str(err.value) and "\n" not in str(err.value)


def test_policies_and_flags_parse():
    assert LossPolicy.parse("zero") == LossPolicy("zero")
    assert LossPolicy.parse("retransmit:4") == LossPolicy("retransmit", 4)
    assert str(LossPolicy.parse("retransmit:4")) == "retransmit:4" and str(LossPolicy.parse("stale")) == "stale"
    model = LinkModel.from_flags(3, 0.0, 0.1, 0.05, 0.2, 0.0, 0.5)
    assert model.gilbert == GilbertElliott(0.05, 0.2, 0.0, 0.5) and model.link_failure == 0.1 and model.active
    assert LinkModel.from_flags(3).gilbert is None


# ------------------------------------------------------------------------ what the exchanges are fed
def test_the_tensorflow_stream_and_stacked_plans_equal_the_numpy_reference_bit_for_bit():
    from core.links import draw_plans, stream_hash_tf

    rng = np.random.default_rng(3)
    keys = rng.integers(0, 2 ** 40, size=(200, 8))
    np.testing.assert_array_equal(stream_hash_tf(*(tf.constant(k, tf.int64) for k in keys.T)).numpy(),
                                  stream_hash(*keys.T))
    g = graph(14, 0.4)
    s, r = links(g)
    s, r = np.append(s, 2), np.append(r, 2)  # a diagonal "link" is never lost
    counts = [2] * 5 + [1] * 4
    active = rng.random((3, s.size)) < 0.8
    counted = rng.random(s.size) < 0.7
    for model, policy in ((LinkModel(5, 0.3), "zero"), (LinkModel(5, 0.3), "retransmit:2"),
                          (LinkModel(5, 0.0, link_failure=0.2), "retransmit:1"),
                          (LinkModel(5, gilbert=GilbertElliott(0.2, 0.3, 0.1, 0.8)), "retransmit:1")):
        batch = draw_plans(model, 7, 3, s, r, counts, policy, active=active, counted=counted)
        ref = LinkModel(5, model.loss_prob, model.link_failure, model.gilbert)
        for k in range(3):
            plan = ref.plan(7 + k, s, r, counts, policy, active=active[k])
            # a batch is link-major: (num, E, T, P) against a plan's (T, P, E)
            np.testing.assert_array_equal(batch.lost.numpy()[k], np.moveaxis(plan.lost, -1, 0))
            np.testing.assert_array_equal(batch.first_lost.numpy()[k], np.moveaxis(plan.first_lost, -1, 0))
            np.testing.assert_array_equal(batch.extra_rounds[k], plan.extra_rounds)
            np.testing.assert_array_equal(batch.retransmitted[k], plan.retransmitted)
            np.testing.assert_array_equal(plan.extra_rounds, plan.retransmitted.max(axis=1))
            live = active[k] & (s != r) & counted
            assert batch.packets[k] == sum(counts) * live.sum()
            assert batch.lost_packets[k] == plan.first_lost[:, :, counted].sum()
            assert batch.still_lost[k] == plan.lost[:, :, counted].sum()
            assert not plan.lost[:, :, ~active[k]].any() and not plan.lost[:, :, s == r].any()
        assert model.counters.packets == 0  # draw_plans returns its counts and leaves the model's alone
    assert batch.extra_rounds.max() >= 1


def test_layouts_and_contexts_give_each_operator_entry_its_link():
    from core.links import LinkLayout

    g = graph(12, 0.4)
    shift = to_operator(g.shift_operator("normalized_laplacian"), F64)
    mixing = to_operator(g.metropolis_hastings(), F64)
    layout = LinkLayout({"shift": shift, "mixing": mixing})
    assert layout.num_links == g.senders.size and layout.counted.all()
    plan = LinkModel(seed=2, loss_prob=0.4).plan(1, layout.senders, layout.receivers, [2, 1, 2, 2, 1, 2, 2])
    ctx = LinkContext(plan.lost, layout=layout)
    ctx.bind(shift, *layout.index["shift"])
    # given link-major (as the trainer feeds a PlanBatch's mini-batch), the same masks
    major = LinkContext(np.moveaxis(plan.lost, -1, 0), layout=layout, link_major=True)
    major.bind(shift, *layout.index["shift"])
    # evenly spaced rounds (sliced), one round, and rounds in no arithmetic order (gathered)
    for rounds in ([0, 2], [1, 3, 5], [4], [6, 0, 3], [0, 1, 1]):
        for op in (shift, shift.transposed(), mixing):  # the transpose by its base, W from the layout
            for packet in (0, 1):
                want = plan.mask_for(op, rounds, packet)
                np.testing.assert_array_equal(ctx.mask(op, rounds, packet).numpy(), want)
                np.testing.assert_array_equal(major.mask(op, rounds, packet).numpy(), want)
    assert plan.lost.any()
    fwd, rev = layout.index["mixing"]
    on_diag = mixing.rows.numpy() == mixing.cols.numpy()
    assert (fwd[on_diag] == -1).all() and (fwd[~on_diag] >= 0).all()
    np.testing.assert_array_equal(layout.senders[fwd[~on_diag]], mixing.cols.numpy()[~on_diag])
    np.testing.assert_array_equal(layout.senders[rev[~on_diag]], mixing.rows.numpy()[~on_diag])
    traced = tf.function(lambda op: LinkContext(plan.lost, layout=None).index_of(op))
    with pytest.raises(ValueError, match="does not know"):
        traced(shift)
    with pytest.raises(ValueError, match="not among the drawn links"):
        layout.entry_index(np.array([0]), np.array([g.num_nodes + 1]))


def test_a_pieced_payload_loses_each_piece_on_its_own():
    from core.links import lossy_apply_pieces

    g = graph(12, 0.4)
    w = to_operator(g.metropolis_hastings(), F64)
    rng = np.random.default_rng(4)
    x = tf.constant(rng.normal(size=(g.num_nodes, 7)), F64)
    columns = np.array([0, 0, 1, 1, 1, 2, 2])
    none = np.zeros((3, w.rows.shape[0]), bool)
    np.testing.assert_array_equal(lossy_apply_pieces(w, x, none, columns).numpy(), apply_operator(w, x).numpy())
    lost = rng.random((3, w.rows.shape[0])) < 0.4
    for policy in ("zero", "stale"):
        buf = StaleBuffer({"param": tf.constant(rng.normal(size=(w.rows.shape[0], 7)), F64)})
        ref = StaleBuffer(dict(buf.values))
        got = lossy_apply_pieces(w, x, lost, columns, policy, buf, "param").numpy()
        for p in range(3):
            cols = np.flatnonzero(columns == p)
            piece = StaleBuffer({"param": tf.gather(ref.values["param"], cols, axis=1)})
            want = lossy_apply(w, tf.gather(x, cols, axis=1), lost[p], policy, piece, "param", mixing=True)
            np.testing.assert_allclose(got[:, cols], want.numpy(), rtol=0, atol=1e-15)
            if policy == "stale":
                np.testing.assert_array_equal(tf.gather(buf.values["param"], cols, axis=1).numpy(),
                                              piece.values["param"].numpy())


def test_a_padded_pattern_moves_a_lost_weight_to_one_diagonal_entry():
    from core.links import surviving_mixing_tf

    g = graph(8, 0.5)
    w = g.metropolis_hastings()
    padded = type(w)(np.concatenate([w.rows, [0, 0]]), np.concatenate([w.cols, [0, 0]]),
                     np.concatenate([w.values, [0.0, 0.0]]), w.num_nodes)  # App C pads with zeros at (0, 0)
    lost = np.zeros(padded.nnz, bool)
    lost[np.flatnonzero(padded.rows == 0)[-3]] = True  # an off-diagonal entry of row 0
    dense = np.zeros((8, 8))
    np.add.at(dense, (padded.rows, padded.cols), lossy_mixing_values(padded, lost))
    np.testing.assert_allclose(dense.sum(axis=1), 1, rtol=0, atol=1e-15)
    up = LinkModel(seed=1, link_failure=0.4).link_up(0, padded.cols, padded.rows)
    rebuilt = surviving_mixing_tf(to_operator(padded, F64), up)
    dense = np.zeros((8, 8))
    np.add.at(dense, (padded.rows, padded.cols), rebuilt.values.numpy())
    np.testing.assert_allclose(dense, surviving_mixing(w, up[:w.nnz]).to_dense(), rtol=0, atol=1e-15)


def test_link_seeds_and_evaluation_models_are_derived_deterministically():
    from core.links import link_seed

    assert link_seed(0) == link_seed(0) != link_seed(1)
    assert all(0 <= link_seed(s) < 2 ** 63 for s in (0, 1, 2 ** 40))
    model = LinkModel(seed=link_seed(3), loss_prob=0.2, link_failure=0.1)
    a, b = model.for_evaluation(4), model.for_evaluation(4)
    assert a.seed == b.seed != model.for_evaluation(5).seed != model.seed
    assert (a.loss_prob, a.link_failure, a.gilbert) == (0.2, 0.1, None)


def test_mask_transpose_outside_xla_logs_nothing():
    """Outside XLA (MPI, --no-jit) a bool transpose made TensorFlow's oneDNN kernel log an error line per process
    ("oneDNN supports DT_BOOL only on platforms with AVX-512"); transpose_mask avoids it, grappler included."""
    import subprocess
    import sys
    from pathlib import Path

    code = ("import tensorflow as tf\n"
            "from core.links import transpose_mask\n"
            "f = tf.function(lambda m: transpose_mask(m, [1, 0]))\n"
            "print(f(tf.constant([[True, False, True]])).numpy().tolist())\n")
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(root), "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[[True], [False], [True]]"
    assert "oneDNN supports" not in done.stderr, done.stderr
