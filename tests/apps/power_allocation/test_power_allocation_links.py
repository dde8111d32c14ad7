"""App B over imperfect links (docs/design.md, sections 8 and 12; issue #16).

Exchange level, eager, float64: the dense lossy exchange (apps/power_allocation/exchange.py ``DenseExchange``)
equals core's ``lossy_apply`` on the same complete operator and mask, per stacked part, forward and tape
backward, for ``zero`` and ``stale`` (stale buffer read and written); the WMMSE sums are never lost (losing every
packet of the rounds that carry only WMMSE sums changes nothing, bit for bit; losing the GCNN rounds does); the
MPI rows of three thread ranks lose what one process loses; a failed link cuts the GCNNs' S and not the
measured channel. App level (``main`` on a tiny dataset, one unfolded
layer, graph mode): --loss-prob 0 is bit for bit the run without link flags; under loss the realised loss rate
is within 3 standard deviations of p and the centralized approach trains over perfect links; links fail at
rate q; --eval-under-loss loses each test batch's GCNN packets (against a hand computation); a stale run
resumes bit for bit; --backend mpi (P = 1) equals the in-process lossy run; bad or unsupported link flags exit 2
with one line and write nothing.
"""

import json

import numpy as np
import pytest
import tensorflow as tf

from apps.power_allocation.batches import TrainingBatches, mixing_values
from apps.power_allocation.exchange import DenseExchange, complete_operator, complete_sparse_operator
from apps.power_allocation.experiment import build_parser, main
from apps.power_allocation.task import PowerAllocationTask
from apps.power_allocation.uwmmse import UWMMSE, Channel
from core import trainer as trainer_module
from core.comm import CommSimulator, Message, Schedule
from core.links import LinkContext, LinkLayout, LinkSetup, StaleBuffer, lossy_apply
from core.optimizers import LearningRate, make_optimizer
from core.replicas import replicate
from core.runs import read_csv
from core.trainer import GraphOps, RandomGraphs, Trainer, TrainerConfig
from datasets import power_allocation as pa
from tests.apps.power_allocation.test_mpi_exchange import OWNERS, ThreadRanks

F64 = tf.float64
N, B = 6, 5
LAYOUT = LinkLayout({"shift": complete_sparse_operator(N)})  # every directed pair of the complete pattern


def context(lost, policy: str, stale: StaleBuffer | None = None) -> LinkContext:
    return LinkContext(lost, policy, stale, LAYOUT)


# ------------------------------------------------------------------------------------------ exchange level
@pytest.mark.parametrize("policy", ["zero", "stale"])
def test_dense_lossy_exchange_equals_core_lossy_apply_per_stacked_part(policy):
    rng = np.random.default_rng(7)
    parts, g = 3, 2
    schedule = Schedule("dopt", 2, B, param_size=1)
    lost = rng.random((schedule.num_rounds, 2, LAYOUT.num_links)) < 0.3
    op = complete_operator(tf.constant(rng.normal(size=(B, N * N))), N)
    x = tf.constant(rng.normal(size=(parts * N, B, g)))
    w = tf.constant(rng.normal(size=(parts * N, B, g)))  # the output gradient: d(sum w * y)/dy
    # a stale buffer from earlier mini-batches, one (N*N, P*g) slot per direction: part p in columns p*g..p*g+g
    old = {k: tf.constant(rng.normal(size=(N * N, parts * g))) for k in ("fwd/2/gcnn", "bwd/2/gcnn")}
    sim = CommSimulator(schedule, links=context(lost, policy, StaleBuffer(old) if policy == "stale" else None))
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = DenseExchange(sim, tape_backward=True).view(0, "gcnn").propagate(op, x, ("fwd", 2))
        loss = tf.reduce_sum(w * y)
    dx = tape.gradient(loss, x)
    assert not sim.bypassed()
    fwd_mask, bwd_mask = sim.lost_mask(op, ("fwd", 2)), sim.lost_mask(op.transposed(), ("bwd", 2))
    assert fwd_mask.shape == (B, N * N) and 0.2 < np.mean(fwd_mask.numpy()) < 0.35
    assert not np.array_equal(fwd_mask.numpy(), bwd_mask.numpy())  # other rounds, reverse links
    for p in range(parts):  # every part loses the packets of the same (sample, link): one packet carries them all
        rows, cols = slice(p * N, (p + 1) * N), slice(p * g, (p + 1) * g)
        buffers = {k: StaleBuffer({k: v[:, cols]}) for k, v in old.items()}
        want_y = lossy_apply(op, x[rows], fwd_mask, policy, buffers["fwd/2/gcnn"], ("fwd", 2, "gcnn"))
        want_dx = lossy_apply(op.transposed(), w[rows], bwd_mask, policy, buffers["bwd/2/gcnn"], ("bwd", 2, "gcnn"))
        np.testing.assert_allclose(y[rows].numpy(), want_y.numpy(), rtol=1e-13, atol=1e-15)
        np.testing.assert_allclose(dx[rows].numpy(), want_dx.numpy(), rtol=1e-13, atol=1e-15)
        lossless = lossy_apply(op, x[rows], tf.zeros_like(fwd_mask), "zero")
        assert np.abs(y[rows].numpy() - lossless.numpy()).max() > 1e-3  # the loss did change every part
        if policy == "stale":  # the slot now holds the last value received on every entry, part by part
            for k, buffer in buffers.items():
                np.testing.assert_array_equal(sim.links.stale.values[k][:, cols].numpy(), buffer.values[k].numpy())
    if policy == "stale":
        assert sorted(sim.links.stale.values) == ["bwd/2/gcnn", "fwd/2/gcnn"]


def uwmmse_batch(channels, lost=None, policy="zero"):
    """Rates and local gradients (eq. 8c) of per-node copies under D-Adam's schedule, over ``lost`` (None:
    perfect links): UWMMSE with 2 layers, so that rounds 2, 3 and 5 of each sample block carry WMMSE sums only."""
    H, sigma2, pmax = channels
    model = UWMMSE(num_layers=2, hidden=3)
    theta = replicate(model.init_theta(5, F64), N) + tf.constant(
        np.random.default_rng(0).normal(0, 0.3, (N, model.num_params)), F64)
    schedule = Schedule("dopt", model.num_exchanges, B, param_size=model.num_params)
    sim = CommSimulator(schedule, links=None if lost is None else context(lost, policy))
    with tf.GradientTape() as tape:
        tape.watch(theta)
        rates, _ = model.rates(theta, Channel.from_matrices(tf.constant(H)), sigma2, pmax,
                               DenseExchange(sim, tape_backward=True))
        objective = -tf.reduce_sum(rates)
    grad = tape.gradient(objective, theta)
    assert not sim.bypassed()
    return rates.numpy(), grad.numpy(), schedule


@pytest.mark.parametrize("policy", ["zero", "stale"])
def test_the_wmmse_sums_are_measurements_never_lost(channels, policy):
    want_rates, want_grad, schedule = uwmmse_batch(channels)
    gcnn_rounds = {schedule.round_of(Message(kind, b, index)) for b in range(B)
                   for kind, index in (("fwd", 1), ("fwd", 2), ("bwd", 2))}
    sums_only = sorted(set(range(schedule.num_rounds)) - gcnn_rounds)
    # per sample block forward 3, 4 and 6 (and the backwards of the sums riding on them), forward 5 of the first
    # block (no backward yet) and the 4 backward-only rounds before the last
    assert len(sums_only) == 3 * B + 5
    lost = np.zeros((schedule.num_rounds, 2, LAYOUT.num_links), bool)
    lost[sums_only, 0] = True  # every packet of every round that carries WMMSE sums only
    rates, grad, _ = uwmmse_batch(channels, lost, policy)
    np.testing.assert_array_equal(rates, want_rates)
    np.testing.assert_array_equal(grad, want_grad)
    lost = np.zeros_like(lost)
    lost[sorted(gcnn_rounds), 0] = np.random.default_rng(1).random((len(gcnn_rounds), LAYOUT.num_links)) < 0.3
    rates, grad, _ = uwmmse_batch(channels, lost, policy)  # the GCNN messages are lost: a different allocation
    assert np.abs(rates - want_rates).max() > 1e-6 and np.abs(grad - want_grad).max() > 1e-6 * np.abs(want_grad).max()


def test_a_failed_link_cuts_the_gcnn_messages_and_not_the_measured_channel(channels):
    """The task's gradients on a graph whose S lost some links (as the trainer restricts it under link failures)
    and whose ``observed`` H is whole: the GCNNs run on the cut S, the WMMSE sums on the whole H."""
    H, sigma2, pmax = channels
    model = UWMMSE(num_layers=2, hidden=3)
    task = PowerAllocationTask(model, model.init_theta(5, F64), 1, B, sigma2, pmax, H[None], H[None], F64)
    theta = replicate(model.init_theta(5, F64), N)
    up = np.random.default_rng(4).random((N, N)) < 0.6
    up = (up & up.T) | np.eye(N, dtype=bool)
    cut = np.where(up, H, 0.0)
    whole, cut_op = (complete_operator(tf.constant(a.reshape(B, N * N)), N) for a in (H, cut))
    optimizer = make_optimizer("d-adam")
    grad, metrics = task.gradients(theta, None, GraphOps(cut_op, None, observed=whole), optimizer, None)
    with tf.GradientTape() as tape:  # the same pipeline by hand: the channel's GCNN shift replaced by the cut S
        tape.watch(theta)
        channel = Channel.from_matrices(tf.constant(H))._replace(shift=cut_op)
        rates, _ = model.rates(theta, channel, sigma2, pmax, DenseExchange(None))
        objective = -tf.reduce_sum(rates)
    np.testing.assert_allclose(grad.numpy(), tape.gradient(objective, theta).numpy(), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(float(metrics["train_sum_rate"]), float(tf.reduce_mean(tf.reduce_sum(rates, 1))),
                               rtol=1e-12)
    # cutting the measured channel as well (what restricting S = H everywhere would do) is another pipeline
    cut_everywhere, _ = task.gradients(theta, None, GraphOps(cut_op, None), optimizer, None)
    assert np.abs(cut_everywhere.numpy() - grad.numpy()).max() > 1e-6 * np.abs(grad.numpy()).max()


@pytest.mark.parametrize("policy", ["zero", "stale"])
def test_mpi_rows_under_loss_equal_the_in_process_exchanges(channels, policy, size=3):
    """Three thread ranks (tests/apps/power_allocation/test_mpi_exchange.py): rates, local gradients and the lossy
    eq. (17) consensus of their pairs, under the same drops, against one process; under ``stale`` every rank's
    buffer is the process's (each rank keeps the whole network's), to rounding."""
    H, sigma2, pmax = channels
    model = UWMMSE(num_layers=1, hidden=3)
    rng = np.random.default_rng(2)
    theta = replicate(model.init_theta(5, F64), N) + tf.constant(rng.normal(0, 0.3, (N, model.num_params)), F64)
    mixing = complete_operator(tf.constant(mixing_values(H, "mh", 0.0)), N)
    schedule = Schedule("dopt", model.num_exchanges, B, 1, model.num_params)
    lost = rng.random((schedule.num_rounds, 2, LAYOUT.num_links)) < 0.3

    def pipeline(theta, owned=None, transport=None):
        stale = StaleBuffer() if policy == "stale" else None
        sim = CommSimulator(schedule, transport=transport, links=context(lost, policy, stale))
        with tf.GradientTape() as tape:
            tape.watch(theta)
            rates, _ = model.rates(theta, Channel.from_matrices(tf.constant(H), owned), sigma2, pmax,
                                   DenseExchange(sim, tape_backward=True, transport=transport))
            objective = -tf.reduce_sum(rates)
        grad = tape.gradient(objective, theta)
        mixed = sim.propagate(mixing, theta, message=("param", 0))
        buffer = {} if stale is None else {k: v.numpy() for k, v in stale.values.items()}
        return rates.numpy(), grad.numpy(), mixed.numpy(), buffer

    want_rates, want_grad, want_mixed, want_buffer = pipeline(theta)
    if policy == "stale":
        assert {"fwd/1/gcnn", "fwd/2/gcnn", "bwd/2/gcnn"} <= set(want_buffer), sorted(want_buffer)
    lossless = CommSimulator(schedule).propagate(mixing, theta, message=("param", 0)).numpy()
    assert np.abs(want_mixed - lossless).max() > 1e-6  # the consensus lost packets too

    def on_rank(rank, exchange):
        owned = np.flatnonzero(OWNERS[size] == rank)
        return (owned, *pipeline(tf.gather(theta, owned), tf.constant(owned, tf.int32), exchange))

    for owned, rates, grad, mixed, buffer in ThreadRanks(OWNERS[size]).run(on_rank):
        assert sorted(buffer) == sorted(want_buffer)
        for k, v in want_buffer.items():
            np.testing.assert_allclose(buffer[k], v, rtol=1e-12, atol=1e-14, err_msg=k)
        np.testing.assert_allclose(rates, want_rates[:, owned], rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(grad, want_grad[owned], rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(mixed, want_mixed[owned], rtol=1e-12, atol=1e-14)


# ------------------------------------------------------------------------------------------ app level
TRAIN_BATCHES, P, Q = 6, 0.2, 0.3


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "pa.h5"
    pa.generate(pa.PowerAllocationConfig(pairs=6, batch_size=8, layouts=2, batches_per_layout=3,
                                         test_batches=2, area=400.0, seed=1), path)
    return path


def flags(dataset, *extra):
    return ["--data", str(dataset), "--epochs", "2", "--seed", "4", "--layers", "1", "--wmmse-iterations", "5",
            "--no-jit", "--jobs", "1", "-q", *extra]


def rows_of(path):
    return [{k: v for k, v in r.items() if k != "wall_s"} for r in read_csv(path / "metrics.csv")]


@pytest.fixture(scope="module")
def runs(dataset, tmp_path_factory):
    """c-adam and d-adam without link flags, with --loss-prob 0, with --loss-prob P (stale) and with
    --link-failure Q."""
    root = tmp_path_factory.mktemp("runs")
    for name, extra in (("plain", []), ("p0", ["--loss-prob", "0", "--on-loss", "stale"]),
                        ("lossy", ["--loss-prob", str(P), "--on-loss", "stale"]),
                        ("failed", ["--link-failure", str(Q)])):
        assert main(flags(dataset, "--optimizer", "c-adam,d-adam", "--out", str(root / name), *extra)) == 0
    return root


def test_zero_loss_is_bit_for_bit_the_run_without_link_flags(runs):
    for approach in ("c-adam", "d-adam"):
        assert rows_of(runs / "p0" / approach) == rows_of(runs / "plain" / approach)
        assert "packet_loss_rate" not in json.loads((runs / "p0" / approach / "summary.json").read_text())


def test_under_loss_the_realised_rate_is_p_and_only_the_distributed_approach_loses(runs):
    assert rows_of(runs / "lossy" / "c-adam") == rows_of(runs / "plain" / "c-adam")  # a server: perfect links
    summary = json.loads((runs / "lossy" / "d-adam" / "summary.json").read_text())
    sd = np.sqrt(P * (1 - P) / summary["packets"])
    assert summary["packets"] > 10_000 and abs(summary["packet_loss_rate"] - P) < 3 * sd
    assert summary["links"]["on_loss"] == "stale" and summary["links"]["loss_prob"] == P
    lossy, plain = rows_of(runs / "lossy" / "d-adam"), rows_of(runs / "plain" / "d-adam")
    assert [r["mp_rounds"] for r in lossy] == [r["mp_rounds"] for r in plain]  # no retransmissions
    assert lossy[-1]["test_sum_rate"] != plain[-1]["test_sum_rate"]
    assert all(abs(float(r["packet_loss_rate"]) - P) < 0.05 for r in lossy[1:])


def test_under_link_failures_links_are_down_at_rate_q_and_only_the_distributed_approach_trains_on_them(runs):
    assert rows_of(runs / "failed" / "c-adam") == rows_of(runs / "plain" / "c-adam")
    summary = json.loads((runs / "failed" / "d-adam" / "summary.json").read_text())
    links = TRAIN_BATCHES * 2 * 6 * 5 // 2  # mini-batches x undirected pairs of the complete pattern
    assert summary["packet_loss_rate"] == 0 and abs(summary["link_failure_rate"] - Q) < 3 * np.sqrt(Q * (1 - Q) / links)
    failed, plain = rows_of(runs / "failed" / "d-adam"), rows_of(runs / "plain" / "d-adam")
    assert [r["mp_rounds"] for r in failed] == [r["mp_rounds"] for r in plain]
    assert failed[-1]["test_sum_rate"] != plain[-1]["test_sum_rate"]


def _trained_under_loss(dataset, setup: LinkSetup):
    """(trainer, task) of D-Adam trained for 2 epochs over ``setup``'s links, float64, the app's pieces."""
    model = UWMMSE(num_layers=1, hidden=3)
    with pa.PowerAllocationDataset(dataset) as data:
        test_H = np.stack([data.batch("test", k).H for k in range(data.num_batches("test"))])
        task = PowerAllocationTask(model, model.init_theta(11, F64), data.num_batches("train"), 8, data.noise_power_w,
                                   data.pmax_w, test_H, test_H[:1], F64)
        config = TrainerConfig(epochs=2, batch_size=8, seed=5, checkpoint_every=0, jit=False, quiet=True)
        with TrainingBatches(data, F64, "mh", prefetch=2) as batches:
            trainer = Trainer(task, make_optimizer("d-adam"), LearningRate(0.05),
                              RandomGraphs(batches.draw, same_shapes=True), config, links=setup)
            trainer.run()
    return trainer, task


def test_eval_under_loss_loses_the_test_batches_gcnn_packets(dataset):
    """The test sum-rate over lossy links, by hand: test batch k of evaluation e loses the packets of the
    evaluation stream's mini-batch k (NumPy plan) in the GCNNs' forward exchanges, its GCNNs run on S = H on the
    links up, the WMMSE sums on the whole H; the training draws are those of a run evaluated over perfect links."""
    setup = LinkSetup.from_flags(3, loss_prob=0.3, link_failure=0.2, eval_under_loss=True)
    trainer, task = _trained_under_loss(dataset, setup)
    plain, _ = _trained_under_loss(dataset, LinkSetup.from_flags(3, loss_prob=0.3, link_failure=0.2))
    for a, b in zip(plain.rows, trainer.rows):
        assert a["train_sum_rate"] == b["train_sum_rate"]
    evaluation, model = trainer.step, setup.model.for_evaluation(trainer.step)
    assert evaluation == 2 * TRAIN_BATCHES
    test_H = task._eval_data["test"].numpy()
    schedule = Schedule("forward", task.model.num_exchanges, test_H.shape[1])
    total, down = 0.0, 0
    for k, H in enumerate(test_H):
        up = model.link_up(k, LAYOUT.senders, LAYOUT.receivers)
        plan = model.plan(k, LAYOUT.senders, LAYOUT.receivers, schedule.packets_per_round(), "zero", active=up)
        assert plan.lost.any()
        down += int((~up).sum())
        index = LAYOUT.index["shift"][0]
        keep = np.where(index >= 0, up[np.maximum(index, 0)], True).reshape(N, N)
        channel = Channel.from_matrices(tf.constant(H))
        channel = channel._replace(shift=complete_operator(tf.constant((H * keep).reshape(len(H), -1)), N))
        sim = CommSimulator(schedule, links=context(plan.lost, "zero"))
        rates, _ = task.model.rates(trainer.theta, channel, task.sigma2, task.pmax, DenseExchange(sim))
        total += float(tf.reduce_sum(rates))
    assert down > 0
    want = total / test_H.shape[0] / test_H.shape[1]
    np.testing.assert_allclose(trainer.rows[-1]["test_sum_rate"], want, rtol=1e-12)
    assert abs(plain.rows[-1]["test_sum_rate"] - want) > 1e-9


@pytest.mark.parametrize("backend", ["local", "mpi"])
def test_a_stale_run_resumes_bit_for_bit(runs, dataset, tmp_path, monkeypatch, backend):
    """In-process, and under --backend mpi (P = 1: the checkpoint holds the whole network's stale slots)."""
    out = tmp_path / "killed"
    original, calls = trainer_module.Trainer._commit, []

    def interrupted(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # during epoch 2 of 2: the checkpoint holds epoch 1's stale buffer
        return original(self, *args, **kwargs)

    monkeypatch.setattr(trainer_module.Trainer, "_commit", interrupted)
    assert main(flags(dataset, "--optimizer", "d-adam", "--loss-prob", str(P), "--on-loss", "stale",
                      "--checkpoint-every", "0", "--backend", backend, "--out", str(out))) == 130
    monkeypatch.setattr(trainer_module.Trainer, "_commit", original)
    assert len(read_csv(out / "metrics.csv")) == 2
    assert main(["--resume", str(out), "-q"]) == 0
    assert rows_of(out) == rows_of(runs / "lossy" / "d-adam")


@pytest.mark.parametrize("policy", ["retransmit:1", "stale"])
def test_mpi_backend_under_loss_equals_the_in_process_run(dataset, tmp_path, capsys, policy):
    """--backend mpi without mpiexec (P = 1): the consensus through RankRowsExchange.propagate_with and the link
    counts through its reductions; retransmit:1 counts extra rounds; links fail on the global operators; the test
    batches lose their packets through the ranks' evaluation exchange."""
    lossy = ["--optimizer", "d-gt-adam", "--loss-prob", str(P), "--on-loss", policy, "--link-failure", "0.2",
             "--eval-under-loss"]
    assert main(flags(dataset, *lossy, "--backend", "mpi", "--out", str(tmp_path / "mpi"))) == 0
    assert main(flags(dataset, *lossy, "--out", str(tmp_path / "local"))) == 0
    got, want = rows_of(tmp_path / "mpi"), rows_of(tmp_path / "local")
    assert got == want and float(want[-1]["link_failure_rate"]) > 0
    assert (int(want[-1]["extra_rounds"]) > 0) == (policy == "retransmit:1")


@pytest.mark.parametrize("extra, needle", [
    (["--loss-prob", "1.5"], "--loss-prob: must be a probability in [0, 1)"),
    (["--on-loss", "later"], "--on-loss: must be zero, stale or retransmit:R"),
    (["--loss-model", "gilbert", "--gilbert-p-gb", "0.1"], "--loss-model gilbert needs --gilbert-p-bg"),
    (["--gilbert-p-gb", "0.1"], "--gilbert-p-gb needs --loss-model gilbert"),
    (["--loss-model", "gilbert", "--gilbert-p-gb", "0", "--gilbert-p-bg", "0.5", "--gilbert-loss-bad", "0.5"],
     "--gilbert-p-gb must be > 0"),
    (["--optimizer", "d-adam,d-naive", "--loss-prob", "0.1"], "d-naive cannot run over imperfect links"),
])
def test_bad_link_flags_exit_2_with_one_line_and_write_nothing(dataset, tmp_path, capsys, extra, needle):
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_info:  # flag errors exit inside argparse, the others return 2
        raise SystemExit(main(["--data", str(dataset), "--out", str(out), "-q", *extra]))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0] and err[0].startswith("python -m apps.power_allocation: error:"), err
    assert not out.exists()


def test_help_says_what_the_link_model_applies_to():
    text = " ".join(build_parser().format_help().split())
    assert "--loss-prob" in text and "--on-loss" in text
    assert "not to the WMMSE interference and feedback sums: physical measurements of the channel, never lost" in text


def test_generate_waits_for_a_run_writing_the_same_dataset(tmp_path, monkeypatch):
    """The robustness sweep starts its cells side by side with --generate: the one that finds the file claimed
    by another writer waits for it and reads its file instead of failing (or writing it twice)."""
    import argparse
    import threading
    import time

    from apps.power_allocation import experiment
    from datasets.storage import claim_output

    path, write = tmp_path / "shared.h5", pa.generate
    claimed, done = threading.Event(), threading.Event()

    def other_run():
        with claim_output(path):
            claimed.set()
            time.sleep(0.5)
            write(pa.PowerAllocationConfig(pairs=3, batch_size=4, layouts=1, batches_per_layout=1, test_batches=1,
                                           seed=0), path)
        done.set()

    def must_not_generate(*args, **kwargs):
        raise AssertionError("generated the file a second time")

    thread = threading.Thread(target=other_run)
    thread.start()
    claimed.wait(10)
    monkeypatch.setattr(pa, "generate", must_not_generate)
    args = argparse.Namespace(preset="quick", pairs=None, data_seed=0, quiet=True, data=path)
    experiment._generate(args, path, pa.PowerAllocationConfig(pairs=3, batch_size=4, layouts=1, batches_per_layout=1,
                                                              test_batches=1))
    thread.join()
    assert done.is_set() and path.is_file()
