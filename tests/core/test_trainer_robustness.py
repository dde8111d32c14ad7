"""The trainer's failure paths: corrupt or foreign checkpoints give one RunError line, divergence stops a run.

A checkpoint that cannot be read, or does not fit the trainer, must become a :class:`core.runs.RunError`
(a ValueError, printed by the apps as one error line) naming the file and the problem, never a
traceback from zipfile, NumPy or JSON. A NaN or inf in a loss, metric, parameter or optimizer state
must stop the run at the first such epoch with :class:`core.runs.RunDiverged`, with the last finite
epoch checkpointed and the reason in summary.json, and such a run must refuse to resume.

float64, a linear GCNN on a 12-node graph, plain tf.functions (jit=False) to keep it fast.
"""

import io
import json
import math
import pickle
import re
import zipfile

import networkx as nx
import numpy as np
import pytest
import tensorflow as tf

from core.executors import flatten
from core.gcnn import GCNN
from core.graph import Graph
from core.ops import to_operator
from core.optimizers import LearningRate, make_optimizer
from core.runs import RunDir, RunDiverged, RunError, read_csv
from core.supervised import SupervisedGCNN
from core.trainer import FixedGraph, GraphOps, RandomGraphs, Trainer, TrainerConfig

DT = tf.float64
NODES, N_TRAIN, N_TEST, B = 12, 24, 6, 6  # 4 mini-batches per epoch
MODEL = GCNN((3, 4, 1), "identity")  # linear: a huge step size overflows it (a sigmoid output would saturate)
JUMP_STEP = 9  # the second mini-batch of epoch 3 (steps 8-11)
LR = LearningRate(0.01)


@pytest.fixture(scope="module")
def ops():
    graph = Graph.from_networkx(nx.barabasi_albert_graph(NODES, 2, seed=3))
    return GraphOps(to_operator(graph.shift_operator("normalized_laplacian"), DT),
                    to_operator(graph.metropolis_hastings(), DT))


def task_for(ops, theta0=None):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N_TRAIN + N_TEST, NODES, 3))
    y = np.tanh(x.sum(-1, keepdims=True))
    theta0 = flatten(MODEL.init_params(1, "glorot", DT)) if theta0 is None else theta0
    return SupervisedGCNN(MODEL, theta0, x[:N_TRAIN], y[:N_TRAIN], x[N_TRAIN:], y[N_TRAIN:], DT, eval_graph=ops)


def make(ops, name="d-amsgrad", run=None, epochs=4, lr=LR, graphs=None, task=None, **kw):
    config = TrainerConfig(epochs=epochs, batch_size=B, seed=4, checkpoint_every=1, jit=False, quiet=True, **kw)
    return Trainer(task or task_for(ops), make_optimizer(name), lr, graphs or FixedGraph(ops), config, run)


def without_wall(rows):
    return [{k: v for k, v in r.items() if k != "wall_s"} for r in rows]


def one_line_naming(exc: Exception, path) -> str:
    message = str(exc)
    assert "\n" not in message and str(path) in message, message
    return message


# ---------------------------------------------------------------------------- B. corrupt checkpoints
@pytest.fixture(scope="module")
def saved(ops, tmp_path_factory):
    """The bytes, arrays and meta of a real D-AMSGrad checkpoint (theta and 4 state arrays) after 1 epoch."""
    run = RunDir(tmp_path_factory.mktemp("saved"))
    make(ops, run=run, epochs=1).run()
    data = run.checkpoint_path.read_bytes()
    with np.load(run.checkpoint_path) as archive:
        arrays = {k: archive[k] for k in archive.files}
    return data, arrays, json.loads(str(arrays.pop("meta")))


def write_checkpoint(tmp_path, payload: bytes | None = None, arrays=None, meta=None, raw_meta=None) -> RunDir:
    """A run directory whose checkpoint holds ``payload`` as bytes, or an npz of arrays and meta."""
    run = RunDir(tmp_path / "run")
    run.checkpoint_path.parent.mkdir(exist_ok=True)
    if payload is not None:
        run.checkpoint_path.write_bytes(payload)
    else:
        entries = dict(arrays)
        if raw_meta is not None:
            entries["meta"] = raw_meta
        elif meta is not None:
            entries["meta"] = np.array(json.dumps(meta))
        with open(run.checkpoint_path, "wb") as f:
            np.savez(f, **entries)
    return run


def assert_rejected(ops, run: RunDir, match: str):
    """Trainer.restore raises one RunError line naming the checkpoint, and leaves the trainer as it was."""
    trainer = make(ops, run=RunDir(run.path, create=False))
    theta = trainer.theta.numpy()
    with pytest.raises(RunError, match=match) as info:
        trainer.restore()
    assert isinstance(info.value, ValueError)
    one_line_naming(info.value, run.checkpoint_path)
    assert trainer.epoch == 0 and not trainer.rows
    np.testing.assert_array_equal(trainer.theta.numpy(), theta)
    return str(info.value)


def test_a_saved_checkpoint_records_schema_version_1(saved):
    assert saved[2]["schema_version"] == 1 == RunDir.CHECKPOINT_SCHEMA_VERSION


@pytest.mark.parametrize("damage", ["empty", "truncated", "tail cut", "first byte", "text", "npy", "pickle",
                                    "other zip"])
def test_unreadable_files_give_one_run_error_line(ops, saved, tmp_path, damage):
    data = saved[0]
    payload = {
        "empty": b"",
        "truncated": data[: len(data) // 2],
        "tail cut": data[:-10],  # the end-of-archive record is gone
        "first byte": bytes([data[0] ^ 0xFF]) + data[1:],  # no zip magic: NumPy would try to unpickle it
        "text": b"epoch,step\n0,0\n",
    }.get(damage)
    run = RunDir(tmp_path / "run")
    run.checkpoint_path.parent.mkdir()
    if damage == "npy":
        np.save(run.checkpoint_path.with_suffix(".tmp.npy"), np.arange(3.0))
        run.checkpoint_path.with_suffix(".tmp.npy").rename(run.checkpoint_path)
    elif damage == "pickle":
        run.checkpoint_path.write_bytes(pickle.dumps({"theta": [1.0]}))
    elif damage == "other zip":
        with zipfile.ZipFile(run.checkpoint_path, "w") as archive:
            archive.writestr("notes.txt", "not a checkpoint")
    else:
        run.checkpoint_path.write_bytes(payload)
    with pytest.raises(RunError, match="is not a readable checkpoint") as info:
        run.load_checkpoint()
    one_line_naming(info.value, run.checkpoint_path)
    assert_rejected(ops, run, "is not a readable checkpoint")


def test_every_flipped_byte_either_loads_the_same_checkpoint_or_gives_a_run_error(saved, tmp_path):
    """Byte flips across the whole file (archive headers, .npy headers, array data, meta, directory): the CRC of
    each entry catches damage in its data; header damage is a zipfile/NumPy error. Flips of fields nothing reads
    (e.g. a timestamp) load the very same checkpoint."""
    data, arrays, meta = saved
    run = RunDir(tmp_path / "run")
    run.checkpoint_path.parent.mkdir()
    outcomes = {"error": 0, "same": 0}
    for position in range(0, len(data), 4):
        flipped = bytearray(data)
        flipped[position] ^= 0x5A
        run.checkpoint_path.write_bytes(bytes(flipped))
        try:
            got_arrays, got_meta = run.load_checkpoint()
        except RunError as exc:
            one_line_naming(exc, run.checkpoint_path)
            outcomes["error"] += 1
            continue
        assert got_meta == meta, position
        assert got_arrays.keys() == {k[len("array/"):] for k in arrays}
        for k, v in got_arrays.items():
            np.testing.assert_array_equal(v, arrays[f"array/{k}"])
        outcomes["same"] += 1
    assert outcomes["error"] > 0.9 * sum(outcomes.values())  # nearly every byte is data or a checked header


def test_a_flip_in_the_parameter_data_is_caught_by_the_crc(ops, saved, tmp_path):
    data = saved[0]
    info = zipfile.ZipFile(io.BytesIO(data)).getinfo("array/theta.npy")
    start = info.header_offset + 30 + len(info.filename) + len(info.extra)  # the local header, then the entry
    flipped = bytearray(data)
    flipped[start + info.file_size - 1] ^= 0x01  # the last byte of theta's last float
    run = write_checkpoint(tmp_path, bytes(flipped))
    message = assert_rejected(ops, run, "BadZipFile")
    assert "CRC" in message


@pytest.mark.parametrize(("change", "match"), [
    ("no meta", "has no meta entry"),
    ("meta not json", r"JSONDecodeError"),
    ("meta a json list", "meta is a JSON list, not an object"),
    ("meta numbers", "not a JSON string"),
    ("newer schema", "schema_version 2, newer than this version reads"),
    ("bad schema", "schema_version 'one' is not a non-negative integer"),
])
def test_bad_meta_gives_one_run_error_line(ops, saved, tmp_path, change, match):
    _, arrays, meta = saved
    arrays = dict(arrays)
    kwargs = {
        "no meta": {},
        "meta not json": {"raw_meta": np.array("{'epoch': 1")},
        "meta a json list": {"meta": [meta]},
        "meta numbers": {"raw_meta": np.arange(3.0)},
        "newer schema": {"meta": {**meta, "schema_version": 2}},
        "bad schema": {"meta": {**meta, "schema_version": "one"}},
    }[change]
    run = write_checkpoint(tmp_path, arrays=arrays, **kwargs)
    with pytest.raises(RunError, match=match) as info:
        run.load_checkpoint()
    one_line_naming(info.value, run.checkpoint_path)
    assert_rejected(ops, run, match)


@pytest.mark.parametrize(("change", "match"), [
    ("drop rng_state", "lacks the meta field rng_state"),
    ("drop rows and epoch", "lacks the meta fields epoch, rows"),
    ("other optimizer", "is for d-adam in float64, not d-amsgrad in float64"),
    ("other dtype", "is for d-amsgrad in float32, not d-amsgrad in float64"),
    ("negative epoch", "has epoch = -1, not a count"),
    ("rows not rows", "has rows that are not a list of rows"),
    ("rows behind", "is at epoch 1, step 4, but its last row is at epoch 0, step 0"),
    ("bad rng_state", "has an unusable rng_state"),
    ("bad cost", "has an unusable cost"),
    ("no theta", "has no array theta"),
    ("no state", "has no array state_2"),
    ("extra state", "has optimizer state state_4 beyond the 4 arrays of d-amsgrad"),
    ("theta shape", r"has parameters of shape \(12, 7\), this model has \(12, 32\)"),
    ("state shape", r"has optimizer state state_1 of shape \(32,\), this model has \(12, 32\)"),
    ("theta dtype", "has theta in float32, not float64"),
    ("theta text", "has theta in <U1, not float64"),
    ("task state", "has task state the task rejects"),
])
def test_checkpoints_that_do_not_fit_the_trainer_give_one_run_error_line(ops, saved, tmp_path, change, match):
    _, arrays, meta = saved
    arrays, meta = dict(arrays), json.loads(json.dumps(meta))
    if change == "drop rng_state":
        del meta["rng_state"]
    elif change == "drop rows and epoch":
        del meta["rows"], meta["epoch"]
    elif change == "other optimizer":
        meta["optimizer"] = "d-adam"
    elif change == "other dtype":
        meta["dtype"] = "float32"
    elif change == "negative epoch":
        meta["epoch"] = -1
    elif change == "rows not rows":
        meta["rows"] = [[0, 0]]
    elif change == "rows behind":
        meta["rows"] = meta["rows"][:1]
    elif change == "bad rng_state":
        meta["rng_state"] = {"bit_generator": "MT19937", "state": 3}
    elif change == "bad cost":
        meta["cost"] = {"rounds": 1}
    elif change == "no theta":
        del arrays["array/theta"]
    elif change == "no state":
        del arrays["array/state_2"]
    elif change == "extra state":
        arrays["array/state_4"] = arrays["array/state_0"]
    elif change == "theta shape":
        arrays["array/theta"] = arrays["array/theta"][:, :7]
    elif change == "state shape":
        arrays["array/state_1"] = arrays["array/state_1"][0]
    elif change == "theta dtype":
        arrays["array/theta"] = arrays["array/theta"].astype(np.float32)
    elif change == "theta text":
        arrays["array/theta"] = np.full((12, 32), "x")
    run = write_checkpoint(tmp_path, arrays=arrays, meta=meta)
    if change == "task state":
        task = StatefulTask(MODEL, flatten(MODEL.init_params(1, "glorot", DT)), *task_for(ops).data["train"],
                            *task_for(ops).data["test"], DT)
        with pytest.raises(RunError, match=match) as info:
            make(ops, run=RunDir(run.path, create=False), task=task).restore()
        one_line_naming(info.value, run.checkpoint_path)
        return
    run.load_checkpoint()  # a well-formed file: the trainer is what rejects it
    assert_rejected(ops, run, match)


class StatefulTask(SupervisedGCNN):
    """A task with state of its own that the checkpoint lacks."""

    def state_arrays(self):
        return {"extra": np.zeros(3)}

    def load_state_arrays(self, arrays):
        self.extra = np.array(arrays["extra"])


def test_an_old_checkpoint_without_schema_version_still_resumes_exactly(ops, saved, tmp_path):
    _, arrays, meta = saved
    old = {k: v for k, v in meta.items() if k != "schema_version"}
    run = write_checkpoint(tmp_path, arrays=arrays, meta=old)
    assert "schema_version" not in run.load_checkpoint()[1]
    trainer = make(ops, run=RunDir(run.path, create=False), epochs=2)
    assert trainer.restore() and trainer.epoch == 1 and len(trainer.rows) == 2
    resumed = trainer.run(resume=True)
    full = make(ops, epochs=2).run()
    assert without_wall(resumed.rows) == without_wall(full.rows)
    np.testing.assert_array_equal(resumed.theta.numpy(), full.theta.numpy())
    assert run.load_checkpoint()[1]["schema_version"] == 1  # rewritten in the current format


# ---------------------------------------------------------------------------- C. divergence
class JumpLR(LearningRate):
    """alpha until update JUMP_STEP, then an infinite step: the parameters turn non-finite exactly there."""

    def __call__(self, step, dtype=tf.float32):
        jump = tf.cast(step, tf.int64) >= JUMP_STEP
        return tf.where(jump, tf.constant(math.inf, dtype), tf.constant(self.alpha, dtype))

    def value(self, step):
        return math.inf if step >= JUMP_STEP else self.alpha


def graphs_for(mode, ops):
    if mode == "stacked":
        return RandomGraphs(lambda rng: ops, same_shapes=True)
    if mode == "drawn":
        return RandomGraphs(lambda rng: ops)
    return None


@pytest.mark.parametrize("mode", ["epoch", "per step", "stacked", "drawn"])
def test_divergence_stops_at_the_first_non_finite_epoch_and_keeps_the_last_finite_one(ops, tmp_path, mode):
    """All four loops (one compiled epoch; per-step logging; stacked graphs; a call per mini-batch): the
    infinite step in epoch 3 stops the run there, epoch 2 is checkpointed exactly as a run stopped after it."""
    kw = dict(graphs=graphs_for(mode, ops), log_every_step=mode == "per step", steps_per_call=3)
    run = RunDir(tmp_path / "run")
    with pytest.raises(RunDiverged) as info:
        make(ops, run=run, epochs=6, lr=JumpLR(0.01), **kw).run()
    exc = info.value
    assert re.fullmatch(r"diverged at epoch 3 \(.*parameters are not finite.*\); the last finite epoch 2 is "
                        r"checkpointed", str(exc)), str(exc)
    assert (exc.epoch, exc.last_finite_epoch, exc.path) == (3, 2, run.path)
    assert isinstance(exc, RuntimeError) and not isinstance(exc, ValueError)
    # the reference: the same run stopped after epoch 2 (steps 0-7 never see the jump)
    reference = make(ops, epochs=6, lr=JumpLR(0.01), **kw).run(until_epoch=2)
    arrays, meta = run.load_checkpoint()
    assert meta["epoch"] == 2 and meta["step"] == 8
    assert without_wall(meta["rows"]) == without_wall(reference.rows)
    np.testing.assert_array_equal(arrays["theta"], reference.theta.numpy())
    for k, s in enumerate(reference.state):
        np.testing.assert_array_equal(arrays[f"state_{k}"], s.numpy())
    assert all(math.isfinite(v) for row in meta["rows"] for v in row.values())
    assert len(read_csv(run.metrics_path)) == len(reference.rows)
    summary = run.read_summary()
    step = 10 if mode == "per step" else 12  # the logged row that was not finite
    assert summary["diverged"] == {"epoch": 3, "step": step, "reason": exc.reason, "last_finite_epoch": 2}
    assert summary["epochs"] == 2 and summary["final_test_mse"] == reference.rows[-1]["test_mse"]
    assert summary["best_test_mse"] == min(r["test_mse"] for r in reference.rows)
    assert run.diverged == summary["diverged"] and not run.finished


def test_a_huge_learning_rate_diverges_in_epoch_1_and_the_initial_model_is_kept(ops, tmp_path):
    run = RunDir(tmp_path / "run")
    trainer = make(ops, "d-sgd", run=run, lr=LearningRate(1e30))
    with pytest.raises(RunDiverged) as info:
        trainer.run()
    assert str(info.value) == ("diverged at epoch 1 (train_mse is nan, test_mse is nan, consensus_error is nan, "
                               "parameters are not finite); the last finite epoch 0 is checkpointed")
    assert info.value.reason == "train_mse is nan, test_mse is nan, consensus_error is nan, parameters are not finite"
    arrays, meta = run.load_checkpoint()
    initial = np.tile(trainer.task.initial_theta().numpy(), (NODES, 1))
    np.testing.assert_array_equal(arrays["theta"], initial)
    assert meta["epoch"] == 0 and len(meta["rows"]) == 1
    np.testing.assert_array_equal(trainer.theta.numpy(), initial)  # the trainer too is back at epoch 0
    summary = run.read_summary()
    assert summary["diverged"]["reason"].startswith("train_mse is nan")
    assert summary["final_test_mse"] == meta["rows"][0]["test_mse"]


def test_a_diverged_run_refuses_to_resume(ops, tmp_path):
    run = RunDir(tmp_path / "run")
    with pytest.raises(RunDiverged):
        make(ops, run=run, epochs=6, lr=JumpLR(0.01)).run()
    before = run.checkpoint_path.read_bytes(), run.summary_path.read_text()
    trainer = make(ops, run=RunDir(run.path, create=False), epochs=6, lr=LearningRate(0.01))
    with pytest.raises(RunDiverged) as info:
        trainer.run(resume=True)
    message = one_line_naming(info.value, run.path)
    assert re.fullmatch(rf"run {re.escape(str(run.path))} diverged at epoch 3 \(.+\) and cannot be resumed; "
                        r"start a new run with other settings", message), message
    assert info.value.epoch == 3 and trainer.epoch == 0
    assert (run.checkpoint_path.read_bytes(), run.summary_path.read_text()) == before  # nothing was touched
    # the checkpoint itself still loads, e.g. to inspect the last finite parameters
    assert make(ops, run=RunDir(run.path, create=False), epochs=6).restore()


def test_a_non_finite_initial_model_diverges_at_epoch_0_with_nothing_checkpointed(ops, tmp_path):
    theta0 = flatten(MODEL.init_params(1, "glorot", DT)).numpy()
    theta0[3] = np.nan
    run = RunDir(tmp_path / "run")
    with pytest.raises(RunDiverged, match=r"^diverged at epoch 0 \(train_mse is nan, test_mse is nan, "
                                          r"consensus_error is nan, parameters are not finite\); the initial "
                                          r"model is not finite and nothing is checkpointed$") as info:
        make(ops, run=run, task=task_for(ops, theta0)).run()
    assert info.value.last_finite_epoch == -1
    assert not run.has_checkpoint() and run.diverged["epoch"] == 0 and not run.finished


def test_without_a_run_directory_the_trainer_holds_the_last_finite_epoch(ops):
    trainer = make(ops, epochs=6, lr=JumpLR(0.01))
    with pytest.raises(RunDiverged, match="the trainer holds the last finite epoch 2$") as info:
        trainer.run()
    assert info.value.path is None
    reference = make(ops, epochs=6, lr=JumpLR(0.01)).run(until_epoch=2)
    np.testing.assert_array_equal(trainer.theta.numpy(), reference.theta.numpy())
    assert trainer.epoch == 2 and without_wall(trainer.rows) == without_wall(reference.rows)


def test_run_diverged_survives_pickling_with_its_attributes(tmp_path):
    """core.parallel sends a worker's exception to the parent process by pickling it."""
    exc = RunDiverged("diverged at epoch 3 (train_mse is nan); the last finite epoch 2 is checkpointed", 3,
                      "train_mse is nan", tmp_path)
    back = pickle.loads(pickle.dumps(exc))
    assert type(back) is RunDiverged and str(back) == str(exc)
    assert (back.epoch, back.reason, back.path, back.last_finite_epoch) == (3, "train_mse is nan", tmp_path, 2)


def test_a_normal_run_is_finished_and_not_diverged(ops, tmp_path):
    run = RunDir(tmp_path / "run")
    result = make(ops, run=run, epochs=2).run()
    assert run.finished and run.diverged is None and "diverged" not in result.summary
    assert all(math.isfinite(v) for row in result.rows for v in row.values())
    run.summary_path.write_text("{")  # a summary.json that cannot be read is a RunError, not a traceback
    with pytest.raises(RunError, match="cannot be read"):
        run.finished  # noqa: B018
