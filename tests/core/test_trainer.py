"""The trainer (Algorithm 1 loop): exact resume, counts, logs, samplers, compiled vs per-step paths.

float64, tiny problems, fixed seeds. Most trainers run as plain tf.functions (jit=False) to keep the
suite fast; one test checks that the XLA-compiled epoch gives the same numbers.
"""

import math

import numpy as np
import pytest
import tensorflow as tf

from core.gcnn import GCNN
from core.ops import Operator
from core.optimizers import LearningRate, make_optimizer
from core.runs import RunDir, read_csv
from core.supervised import SupervisedGCNN
from core.trainer import CompiledProgram, EpochBatches, FixedGraph, GraphOps, RandomGraphs, Trainer, TrainerConfig
from tests.core.problems import ba_regression

DT = tf.float64
LR = LearningRate(0.05)
NODES, N_TRAIN, N_TEST, B = 12, 24, 6, 6
MODEL = GCNN((3, 5, 1), "sigmoid")


@pytest.fixture(scope="module")
def problem():
    return ba_regression(MODEL, NODES, N_TRAIN, N_TEST, DT)


def make(problem, name="d-sgd", run=None, epochs=6, jit=False, lr=LR, graphs=None, **kw):
    task, ops = problem
    config = TrainerConfig(epochs=epochs, batch_size=B, seed=4, checkpoint_every=kw.pop("checkpoint_every", 2),
                           jit=jit, quiet=True, **kw)
    return Trainer(task, make_optimizer(name), lr, graphs or FixedGraph(ops), config, run)


def without_wall(rows):
    return [{k: v for k, v in r.items() if k != "wall_s"} for r in rows]


@pytest.fixture(scope="module")
def full_run(problem, tmp_path_factory):
    """An uninterrupted D-AMSGrad run (the optimizer with the most state) of 6 epochs."""
    run = RunDir(tmp_path_factory.mktemp("full"))
    return make(problem, "d-amsgrad", run).run(), run


def test_resume_gives_exactly_the_metrics_of_an_uninterrupted_run(problem, tmp_path, full_run):
    (full, full_dir), name = full_run, "d-amsgrad"
    part = RunDir(tmp_path / "part")
    first = make(problem, name, part).run(until_epoch=3)
    assert len(first.rows) == 4 and not first.summary and not part.finished
    resumed = make(problem, name, RunDir(part.path, create=False)).run(resume=True)
    assert without_wall(resumed.rows) == without_wall(full.rows)
    np.testing.assert_array_equal(resumed.theta.numpy(), full.theta.numpy())
    assert without_wall(read_csv(part.metrics_path)) == without_wall(read_csv(full_dir.metrics_path))
    keep = [k for k in full.summary if k != "wall_s"]
    assert {k: resumed.summary[k] for k in keep} == {k: full.summary[k] for k in keep}


def test_interrupt_mid_run_checkpoints_the_last_epoch_and_resumes_exactly(problem, tmp_path, full_run):
    full = full_run[0]
    run = RunDir(tmp_path / "killed")
    trainer = make(problem, "d-amsgrad", run, checkpoint_every=0)
    original, calls = trainer._commit, []

    def flaky(*args, **kwargs):  # Ctrl-C while epoch 4 finishes
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    trainer._commit = flaky
    with pytest.raises(KeyboardInterrupt):
        trainer.run()
    _, meta = run.load_checkpoint()
    assert meta["epoch"] == 3 and len(meta["rows"]) == 4
    resumed = make(problem, "d-amsgrad", RunDir(run.path, create=False)).run(resume=True)
    assert without_wall(resumed.rows) == without_wall(full.rows)


def test_rows_counts_and_summary(problem, tmp_path):
    run = RunDir(tmp_path / "run")
    trainer = make(problem, "d-sgd", run, epochs=3)
    result = trainer.run()
    steps_per_epoch = N_TRAIN // B
    assert trainer.cost.rounds == MODEL.num_layers * B + MODEL.num_layers - 1  # Table I, eq. (17) row
    floats = B * (3 + 5) + B * 5 + MODEL.num_params + 1  # B(g0 + g1) + B g1 + |theta| + d_i
    assert trainer.cost.floats_per_node == floats
    assert [r["epoch"] for r in result.rows] == [0, 1, 2, 3]
    for r in result.rows:
        assert r["step"] == r["epoch"] * steps_per_epoch
        assert r["mp_rounds"] == r["step"] * trainer.cost.rounds
        assert r["floats_sent_per_node"] == r["step"] * floats
        assert r["lr"] == 0.05 and r["wall_s"] >= 0
        assert all(math.isfinite(r[k]) and r[k] >= 0 for k in ("train_mse", "test_mse", "consensus_error"))
    assert result.rows[0]["consensus_error"] < 1e-15 < result.rows[-1]["consensus_error"]
    assert result.rows[-1]["test_mse"] < result.rows[0]["test_mse"]
    header = run.metrics_path.read_text().splitlines()[0].split(",")
    assert header == ["epoch", "step", "mp_rounds", "floats_sent_per_node", "lr", "train_mse", "test_mse",
                      "consensus_error", "wall_s"]
    s = run.read_summary()
    assert s["final_test_mse"] == result.rows[-1]["test_mse"]
    assert s["best_test_mse"] == min(r["test_mse"] for r in result.rows)
    assert result.rows[s["best_epoch"]]["test_mse"] == s["best_test_mse"]
    assert (s["mp_rounds_per_batch"], s["floats_sent_per_node_per_batch"]) == (trainer.cost.rounds, floats)
    assert s["steps"] == 3 * steps_per_epoch
    assert run.has_checkpoint()


def test_centralized_rows_have_zero_consensus_error_and_forward_rounds(problem):
    trainer = make(problem, "c-sgd", epochs=2)
    rows = trainer.run().rows
    assert trainer.cost.rounds == MODEL.num_layers * B
    assert all(r["consensus_error"] == 0.0 for r in rows)


def test_exponential_schedule_is_logged_and_applied(problem):
    lr = LearningRate(0.05, "exponential", decay_rate=0.5, decay_steps=4)
    decayed = make(problem, "d-sgd", epochs=2, lr=lr).run()
    constant = make(problem, "d-sgd", epochs=2).run()
    assert [r["lr"] for r in decayed.rows] == [0.05, lr.value(3), lr.value(7)]
    assert decayed.rows[-1]["test_mse"] != constant.rows[-1]["test_mse"]


def test_per_step_logging_and_graph_per_batch_match_the_compiled_epoch(problem):
    _, ops = problem
    epochwise = make(problem, "d-amsgrad", epochs=2).run()
    stepwise = make(problem, "d-amsgrad", epochs=2, log_every_step=True).run()
    task = problem[0]
    evaluating = SupervisedGCNN(MODEL, task.theta0, *task.data["train"], *task.data["test"], DT, eval_graph=ops)
    drawn = make((evaluating, ops), "d-amsgrad", epochs=2, graphs=RandomGraphs(lambda rng: ops)).run()
    steps = 2 * (N_TRAIN // B)
    assert [r["step"] for r in stepwise.rows] == list(range(steps + 1))
    assert stepwise.rows[-1]["epoch"] == 2
    np.testing.assert_allclose(stepwise.theta.numpy(), epochwise.theta.numpy(), rtol=0, atol=1e-13)
    np.testing.assert_allclose(drawn.theta.numpy(), epochwise.theta.numpy(), rtol=0, atol=1e-13)
    assert drawn.rows[-1]["test_mse"] == pytest.approx(epochwise.rows[-1]["test_mse"], abs=1e-13)
    assert drawn.rows[-1]["mp_rounds"] == epochwise.rows[-1]["mp_rounds"]


def test_stacked_graphs_per_call_match_one_call_per_mini_batch(problem):
    """RandomGraphs(same_shapes=True) runs steps_per_call mini-batches per call (here 3 + 1 per epoch)."""
    task, ops = problem

    def draw(rng):  # a new shift per mini-batch on the same pattern
        return GraphOps(ops.shift._replace(values=ops.shift.values * rng.uniform(0.5, 1.5)), ops.mixing)

    evaluating = SupervisedGCNN(MODEL, task.theta0, *task.data["train"], *task.data["test"], DT, eval_graph=ops)
    runs = [make((evaluating, ops), "d-adam", epochs=2, graphs=RandomGraphs(draw, same_shapes=stacked),
                 steps_per_call=3).run() for stacked in (False, True)]
    np.testing.assert_allclose(runs[1].theta.numpy(), runs[0].theta.numpy(), rtol=0, atol=1e-13)
    for a, b in zip(without_wall(runs[1].rows), without_wall(runs[0].rows), strict=True):
        assert a == pytest.approx(b, abs=1e-13)
    fixed = make((evaluating, ops), "d-adam", epochs=2, graphs=RandomGraphs(lambda rng: ops)).run()
    assert np.abs(fixed.theta.numpy() - runs[0].theta.numpy()).max() > 1e-6  # the drawn graphs mattered


def test_xla_epoch_matches_the_plain_graph(problem):
    plain = make(problem, "d-adam", epochs=2).run()
    xla = make(problem, "d-adam", epochs=2, jit=True).run()
    np.testing.assert_allclose(xla.theta.numpy(), plain.theta.numpy(), rtol=1e-12, atol=1e-14)
    for a, b in zip(xla.rows, plain.rows):
        assert a["test_mse"] == pytest.approx(b["test_mse"], rel=1e-12)


def test_epoch_batches_reshuffle_and_cover_the_training_set():
    sampler, rng = EpochBatches(10, 3), np.random.default_rng(0)
    a, b = sampler.draw(rng), sampler.draw(rng)
    assert a.shape == (3, 3) and a.dtype == np.int32
    assert len(set(a.ravel())) == 9 and not np.array_equal(a, b)
    with pytest.raises(ValueError, match="batch size"):
        EpochBatches(10, 11)


class StatefulTask(SupervisedGCNN):
    """A task with state of its own (as App C's centrally trained critic)."""

    extra = np.zeros(3)

    def state_arrays(self):
        return {"extra": self.extra.copy()}

    def load_state_arrays(self, arrays):
        self.extra = np.array(arrays["extra"])


def test_task_state_is_checkpointed(problem, tmp_path):
    task, ops = problem
    stateful = StatefulTask(MODEL, task.theta0, *task.data["train"], *task.data["test"], DT)
    stateful.extra = np.array([1.0, 2.0, 3.0])
    run = RunDir(tmp_path / "run")
    make((stateful, ops), run=run, epochs=1).run()
    other = StatefulTask(MODEL, task.theta0, *task.data["train"], *task.data["test"], DT)
    trainer = make((other, ops), run=RunDir(run.path, create=False), epochs=1)
    assert trainer.restore()
    np.testing.assert_array_equal(other.extra, [1.0, 2.0, 3.0])


def test_restore_rejects_a_checkpoint_of_another_optimizer(problem, tmp_path):
    run = RunDir(tmp_path / "run")
    make(problem, "d-sgd", run, epochs=1).run()
    with pytest.raises(ValueError, match="checkpoint"):
        make(problem, "d-adam", RunDir(run.path, create=False), epochs=1).restore()


def test_compiled_program_matches_the_function_across_shapes_and_static_arguments():
    traces = []  # Python traces of the function

    def propagate(x, op: Operator, scale):
        traces.append(1)
        return {"y": tf.math.unsorted_segment_sum(tf.gather(x, op.cols) * op.values[:, None], op.rows, op.num_nodes)
                * scale}

    function = tf.function(propagate, reduce_retracing=True, autograph=False)
    program = CompiledProgram(function)
    rng = np.random.default_rng(0)
    for nnz, num_nodes, scale in [(5, 4, 1.0), (7, 4, 1.0), (9, 4, 1.0), (7, 4, 2.0), (6, 3, 1.0), (5, 4, 1.0)]:
        op = Operator(tf.constant(rng.integers(0, num_nodes, nnz), tf.int32),
                      tf.constant(rng.integers(0, num_nodes, nnz), tf.int32),
                      tf.constant(rng.normal(size=nnz), tf.float64), num_nodes)
        x = tf.constant(rng.normal(size=(num_nodes, 2)), tf.float64)
        np.testing.assert_array_equal(program(x, op, scale)["y"].numpy(), function(x, op, scale)["y"].numpy())
    # a third edge count reuses the relaxed trace; new static values (scale, num_nodes) trace anew
    assert len(traces) == function.experimental_get_tracing_count() <= 5
