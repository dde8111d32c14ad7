"""What every app main guarantees about its run directory (issue 12), shown on App A's tiny runs:
resumed flags are validated as typed, nothing is written outside the run, one run per directory at a
time, finished means every output exists, failures and divergence end with one line, and the data a
run was started on is the data it resumes on."""

import errno
import json
import os
import shutil
from pathlib import Path

import pytest

from apps.node_regression.experiment import main
from core.runs import RunLock
from datasets import node_regression as nr

TINY = ["--nodes", "12", "--train-samples", "24", "--test-samples", "4", "--input-dim", "6", "--hidden", "4",
        "--teacher-hidden", "5", "--batch-size", "6", "--epochs", "2", "--lr", "0.01", "--no-jit", "-q", "--jobs", "1"]


def files(root: Path) -> dict[str, bytes]:
    """Every file below ``root`` (relative path -> bytes)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


@pytest.fixture(scope="module")
def group_run(tmp_path_factory):
    """A finished two-approach run; tests work on copies of it."""
    out = tmp_path_factory.mktemp("group") / "run"
    assert main([*TINY, "--optimizer", "c-sgd,d-sgd", "--out", str(out)]) == 0
    return out


@pytest.fixture
def run_copy(group_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(group_run, copy)
    return copy


def edit_flags(run: Path, **flags) -> None:
    config = json.loads((run / "config.json").read_text())
    config["flags"].update(flags)
    (run / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize("flags, message", [
    ({"optimizer": ["/tmp/elsewhere", "../../x"]}, "--optimizer"),
    ({"optimizer": "../../x"}, "--optimizer"),
    ({"epochs": "many"}, "--epochs"),
    ({"epochs": [1, 2]}, "--epochs"),
    ({"no_jit": "yes"}, "--no-jit"),
    ({"lr": {"value": 1}}, "--lr"),
])
def test_resume_validates_saved_flags_as_the_command_line_does(run_copy, capsys, flags, message):
    edit_flags(run_copy, **flags)
    before = files(run_copy.parent)
    assert main(["--resume", str(run_copy), "-q"]) == 2
    line = one_error_line(capsys)
    assert "config.json" in line and message in line
    assert files(run_copy.parent) == before  # nothing written, in the run or beside it
    assert not Path("/tmp/elsewhere").exists()


def test_resume_refuses_a_run_of_another_app(run_copy, capsys):
    config = json.loads((run_copy / "config.json").read_text())
    (run_copy / "config.json").write_text(json.dumps({**config, "app": "link_scheduling"}))
    assert main(["--resume", str(run_copy)]) == 2
    assert "is a run of link_scheduling" in one_error_line(capsys)


def test_resume_of_one_approach_folder_resumes_that_approach_only(run_copy):
    child = run_copy / "c-sgd"
    expected = json.loads((child / "summary.json").read_text())
    parent_summary = (run_copy / "summary.json").read_bytes()
    for name in ("summary.json", "learning_curve.png"):
        (child / name).unlink()
    (child / "checkpoint" / "latest.npz").unlink()  # retrain it from the start
    assert main(["--resume", str(child), "-q"]) == 0
    assert sorted(p.name for p in child.iterdir() if p.is_dir()) == ["checkpoint"]  # no <approach>/ inside it
    summary = json.loads((child / "summary.json").read_text())
    assert summary["final_test_mse"] == expected["final_test_mse"] and summary["optimizer"] == "c-sgd"
    assert (child / "learning_curve.png").is_file() and (run_copy / "summary.json").read_bytes() == parent_summary


def test_a_run_killed_before_its_plot_redraws_it_on_resume(run_copy):
    (run_copy / "d-sgd" / "learning_curve.png").unlink()
    (run_copy / "test_mse_vs_rounds.png").unlink()
    summary = (run_copy / "d-sgd" / "summary.json").read_bytes()
    assert main(["--resume", str(run_copy), "-q"]) == 0
    assert (run_copy / "d-sgd" / "learning_curve.png").is_file() and (run_copy / "test_mse_vs_rounds.png").is_file()
    assert json.loads((run_copy / "d-sgd" / "summary.json").read_bytes())["final_test_mse"] == json.loads(
        summary)["final_test_mse"]


def test_a_run_directory_in_use_is_refused(run_copy, tmp_path, capsys):
    before = files(run_copy)
    with RunLock(run_copy):  # as if another process were running or resuming it
        assert main(["--resume", str(run_copy), "-q"]) == 2
        assert "in use by another run" in one_error_line(capsys)
        empty = tmp_path / "new"
        empty.mkdir()
        with RunLock(empty):
            assert main([*TINY, "--optimizer", "c-sgd", "--out", str(empty)]) == 2
            assert f"pid {os.getpid()}" in one_error_line(capsys)
        with RunLock(run_copy / "d-sgd"):  # one approach claimed by another process
            assert main(["--resume", str(run_copy), "-q", "--jobs", "1"]) != 0
    assert files(run_copy) == before | {".lock": (run_copy / ".lock").read_bytes()}


def test_an_out_that_is_a_file_is_refused_and_left_alone(tmp_path, capsys):
    target = tmp_path / "results.csv"
    target.write_text("mine\n")
    assert main([*TINY, "--epochs", "1", "--optimizer", "c-sgd", "--out", str(target)]) == 2
    assert f"{target} is a file, not a run directory" in one_error_line(capsys)
    assert target.read_text() == "mine\n"


def test_out_creates_missing_parent_folders(tmp_path):
    out = tmp_path / "a" / "b" / "run"
    assert main([*TINY, "--epochs", "1", "--optimizer", "c-sgd", "--out", str(out)]) == 0
    assert (out / "summary.json").is_file()
    config = json.loads((out / "config.json").read_text())  # and the run's provenance is recorded
    assert config["schema_version"] == 1 and config["threads"] >= 1 and config["machine"]["cpu_count"] >= 1
    assert {"command_line", "started", "git_commit"} <= set(config)


def test_read_only_file_system_at_start_is_one_line(tmp_path, capsys, monkeypatch):
    def read_only(self, *args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))

    monkeypatch.setattr(Path, "mkdir", read_only)
    assert main([*TINY, "--optimizer", "c-sgd", "--out", str(tmp_path / "run")]) == 2
    assert "Read-only file system" in one_error_line(capsys)
    assert list(tmp_path.iterdir()) == []


def test_disk_full_mid_run_is_one_line_and_keeps_what_was_saved(tmp_path, capsys, monkeypatch):
    import core.runs

    out = tmp_path / "run"
    real, calls = core.runs.atomic_write_csv, []

    def fills_up(path, *args, **kwargs):  # the first metrics write works, the next ones find the disk full
        calls.append(path)
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        real(path, *args, **kwargs)

    monkeypatch.setattr(core.runs, "atomic_write_csv", fills_up)
    assert main([*TINY, "--epochs", "4", "--checkpoint-every", "1", "--optimizer", "c-sgd", "--out", str(out)]) == 1
    line = one_error_line(capsys)
    assert "No space left on device" in line and f"--resume {out}" in line
    assert (out / "config.json").is_file() and (out / "checkpoint" / "latest.npz").is_file()
    monkeypatch.setattr(core.runs, "atomic_write_csv", real)
    assert main(["--resume", str(out), "-q"]) == 0  # and it continues once there is space again


def test_a_flipped_byte_in_data_is_refused(tmp_path, capsys):
    path = tmp_path / "nr.h5"
    nr.generate(nr.NodeRegressionConfig(nodes=12, input_dim=6, teacher_hidden=(5,), train_samples=24,
                                        test_samples=4), path)
    raw = bytearray(path.read_bytes())
    with nr.NodeRegressionDataset(path) as reader:
        dataset = reader.file["train/x"]  # a byte inside the training features (chunked or contiguous)
        offset = dataset.id.get_offset() if dataset.chunks is None else dataset.id.get_chunk_info(0).byte_offset
    raw[offset + 17] ^= 0x40
    path.write_bytes(bytes(raw))
    assert main([*TINY, "--optimizer", "c-sgd", "--data", str(path), "--out", str(tmp_path / "run")]) == 2
    line = one_error_line(capsys)
    assert "--data" in line and "checksum" in line
    assert not (tmp_path / "run").exists()


def test_resume_refuses_other_data_at_the_same_path(tmp_path, capsys):
    path, out = tmp_path / "nr.h5", tmp_path / "run"
    sizes = dict(nodes=12, input_dim=6, teacher_hidden=(5,), train_samples=24, test_samples=4)
    nr.generate(nr.NodeRegressionConfig(**sizes), path)
    assert main([*TINY, "--epochs", "1", "--optimizer", "c-sgd", "--data", str(path), "--out", str(out)]) == 0
    (out / "summary.json").unlink()
    before = files(out)
    path.unlink()
    nr.generate(nr.NodeRegressionConfig(**{**sizes, "seed": 1}), path)
    assert main(["--resume", str(out), "-q"]) == 2
    assert "not the one this run started on" in one_error_line(capsys)
    assert files(out) == before


def test_mixing_beta_above_one_over_max_degree_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    assert main([*TINY, "--optimizer", "d-naive", "--mixing", "laplacian", "--mixing-beta", "50",
                 "--out", str(out)]) == 2
    assert "1 / max degree" in one_error_line(capsys)
    assert not out.exists()


def test_divergence_stops_with_status_1_and_refuses_resume(tmp_path, capsys):
    out = tmp_path / "run"
    assert main([*TINY, "--epochs", "3", "--optimizer", "c-sgd,d-sgd", "--lr", "1e30", "--out", str(out)]) == 1
    line = one_error_line(capsys)
    assert "diverged: D-SGD at epoch 1 (consensus_error is nan)" in line and "C-SGD" not in line
    summary = json.loads((out / "d-sgd" / "summary.json").read_text())
    assert summary["diverged"]["epoch"] == 1 and summary["diverged"]["last_finite_epoch"] == 0
    rows = (out / "d-sgd" / "metrics.csv").read_text().lower()
    assert "nan" not in rows and "inf" not in rows and len(rows.splitlines()) == 2  # header, epoch 0
    # the sigmoid student of C-SGD saturates but stays finite: it trains on to the end
    assert "diverged" not in json.loads((out / "c-sgd" / "summary.json").read_text())
    saved = files(out)
    assert main(["--resume", str(out), "-q"]) == 1
    assert "diverged" in one_error_line(capsys)
    assert {k: v for k, v in files(out).items() if not k.endswith(".png")} == {
        k: v for k, v in saved.items() if not k.endswith(".png")}


@pytest.mark.parametrize("module, flags, message", [
    ("node_regression", ["--train-samples", "100000000"], "needs about"),
    ("link_scheduling", ["--batch-size", "100000000"], "needs about"),
])
def test_sizes_that_cannot_fit_are_refused_up_front(tmp_path, capsys, module, flags, message):
    import importlib

    app = importlib.import_module(f"apps.{module}.experiment")
    assert app.main([*flags, "--out", str(tmp_path / "run"), "-q"]) == 2
    line = one_error_line(capsys)
    assert message in line and "of memory" in line
    assert list(tmp_path.iterdir()) == []


def test_graph_sizes_are_accepted_where_they_fit():
    from apps.node_regression.experiment import build_parser, memory_needed
    from datasets.resources import check_fits

    def needed(nodes):
        return memory_needed(build_parser().parse_args(["--nodes", str(nodes), "--batch-size", "10", "--train-samples",
                                                        "10", "--test-samples", "2", "--optimizer", "d-sgd"]))

    check_fits(needed(20_000), "20 000 nodes", available=24 * 2**30)  # accepted on a machine of this size
    # App A's graph is a dense |V| x |V| adjacency: a million nodes need ~9 TB, refused with the amount
    with pytest.raises(ValueError, match="needs about 9.0. TB of memory"):
        check_fits(needed(1_000_000), "a million nodes", available=24 * 2**30)


def test_a_run_saved_by_version_0_1_resumes_to_the_same_numbers(tmp_path):
    """Old layout: config "approach" instead of "optimizer", no --data-seed (--seed was the data seed),
    metrics column floats_sent; the resumed run ends with the numbers of an uninterrupted one."""
    from core.runs import RunDir, read_csv

    flags = [*TINY, "--epochs", "3", "--checkpoint-every", "1", "--optimizer", "d-sgd", "--seed", "5",
             "--data-seed", "5"]
    assert main([*flags, "--out", str(tmp_path / "full")]) == 0
    old = tmp_path / "old"
    assert main([*flags, "--epochs", "1", "--out", str(old)]) == 0
    run = RunDir(old, create=False)
    config = json.loads(run.config_path.read_text())
    config["approach"] = config.pop("optimizer")
    del config["flags"]["data_seed"]
    config["flags"]["epochs"] = 3
    config["flags"]["optimizer"] = "d-sgd"
    run.config_path.write_text(json.dumps(config))
    arrays, meta = run.load_checkpoint()
    meta["rows"] = [{("floats_sent" if k == "floats_sent_per_node" else k): v for k, v in r.items()}
                    for r in meta["rows"]]
    run.save_checkpoint(arrays, meta)
    run.summary_path.unlink()
    assert main(["--resume", str(old), "-q"]) == 0

    def numbers(path):
        return [{k: v for k, v in r.items() if k != "wall_s"} for r in read_csv(path / "metrics.csv")]

    assert numbers(old) == numbers(tmp_path / "full")


def test_a_stop_request_whose_interrupt_was_swallowed_stops_at_the_next_epoch(tmp_path, capsys, monkeypatch):
    """A KeyboardInterrupt raised inside a finaliser (__del__) is only printed; the recorded request
    still stops the trainer at its next epoch boundary, checkpointed, and the resume ends as usual."""
    import core.trainer
    from core.runs import read_csv

    flags = [*TINY, "--epochs", "3", "--optimizer", "d-sgd"]
    assert main([*flags, "--out", str(tmp_path / "full")]) == 0
    checks = iter([False, True])  # asked to stop during the first epoch
    monkeypatch.setattr(core.trainer, "stop_requested", lambda: next(checks, True))
    out = tmp_path / "stopped"
    assert main([*flags, "--out", str(out)]) == 130
    assert f"--resume {out}" in one_error_line(capsys)
    assert [r["epoch"] for r in read_csv(out / "metrics.csv")] == ["0", "1"]
    monkeypatch.setattr(core.trainer, "stop_requested", lambda: False)
    assert main(["--resume", str(out), "-q"]) == 0

    def numbers(path):
        return [{k: v for k, v in r.items() if k != "wall_s"} for r in read_csv(path / "metrics.csv")]

    assert numbers(out) == numbers(tmp_path / "full")


def test_load_run_gives_config_metrics_and_a_model_ready_for_forward(group_run):
    import numpy as np
    import tensorflow as tf

    from apps.common.results import load_run
    from core.graph import Graph
    from core.ops import to_operator
    from core.runs import RunError

    with pytest.raises(RunError, match="load one of its approaches: c-sgd, d-sgd"):
        load_run(group_run)
    config = json.loads((group_run / "c-sgd" / "config.json").read_text())
    data = nr.generate_arrays(nr.NodeRegressionConfig.from_dict({**config["dataset"]["config"]}))
    shift = to_operator(Graph.from_dense(data.adjacency).shift_operator(data.config.shift), tf.float32)
    central = load_run(group_run / "c-sgd")
    assert central.theta_per_node is None and central.metrics[-1]["epoch"] == 2
    y, _ = central.model.forward(central.params(), tf.constant(data.x_test, tf.float32), shift, sample_major=True)
    mse = float(np.mean((y.numpy() - data.y_test) ** 2))
    assert mse == pytest.approx(central.summary["final_test_mse"], rel=1e-5)
    distributed = load_run(group_run / "d-sgd")
    assert distributed.theta_per_node.shape == (12, distributed.theta.size)
    np.testing.assert_allclose(distributed.theta, distributed.theta_per_node.mean(axis=0))
    x = tf.constant(data.x_test, tf.float32)
    y3, _ = distributed.model.forward(distributed.params(node=3), x, shift, sample_major=True)
    assert y3.shape == data.y_test.shape
