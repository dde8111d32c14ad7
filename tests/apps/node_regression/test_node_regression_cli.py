"""`python -m apps.node_regression`: tiny runs write every output with sane values, bad input exits 2
with one line and writes nothing, runs are reproducible and resumable, `--optimizer all` and `--data`."""

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from apps.common.cli import PAPER_OPTIMIZERS as APPROACHES
from apps.node_regression.experiment import main
from core import trainer as trainer_module
from core.runs import read_csv
from datasets import node_regression as nr

ROOT = Path(__file__).resolve().parents[3]
B = 6
TINY = ["--nodes", "12", "--train-samples", "24", "--test-samples", "4", "--input-dim", "6", "--hidden", "4",
        "--teacher-hidden", "5", "--batch-size", str(B), "--epochs", "3", "--lr", "0.01", "--no-jit", "-q"]


def without_wall(rows):
    return [{k: v for k, v in r.items() if k != "wall_s"} for r in rows]


@pytest.fixture(scope="module")
def amsgrad_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "amsgrad"
    assert main([*TINY, "--optimizer", "d-amsgrad", "--seed", "7", "--out", str(out)]) == 0
    return out


def test_tiny_run_writes_every_output(amsgrad_run):
    out = amsgrad_run
    assert {p.name for p in out.iterdir()} == {".lock", "config.json", "metrics.csv", "summary.json", "checkpoint",
                                               "learning_curve.png"}
    assert (out / "checkpoint" / "latest.npz").is_file()
    assert (out / "learning_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    config = json.loads((out / "config.json").read_text())
    assert config["optimizer"] == "d-amsgrad" and config["seed"] == 7
    assert config["flags"]["batch_size"] == B and config["flags"]["optimizer"] == ["d-amsgrad"]
    assert config["mode"] == {"mixing": "mh", "mixing_beta": None, "d_adam_variant": "paper"}
    assert config["dataset"]["checksum"].startswith("sha256:") and config["dataset"]["config"]["nodes"] == 12
    assert {"python", "numpy", "tensorflow-cpu"} <= set(config["library_versions"]) or "tensorflow" in config[
        "library_versions"]
    rows = read_csv(out / "metrics.csv")
    assert list(rows[0])[:8] == ["epoch", "step", "mp_rounds", "floats_sent_per_node", "lr", "train_mse", "test_mse",
                                 "consensus_error"]
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2, 3]
    rounds = 2 * B + 1  # LB + L - 1 (Table I, eq. 17 row)
    for r in rows:
        assert int(r["mp_rounds"]) == int(r["step"]) * rounds and int(r["step"]) == int(r["epoch"]) * 4
        assert 0 < float(r["test_mse"]) < 1 and 0 < float(r["train_mse"]) < 1
        assert math.isfinite(float(r["wall_s"]))
    assert float(rows[0]["consensus_error"]) < 1e-6 < float(rows[-1]["consensus_error"]) < 1  # float32 rounding
    summary = json.loads((out / "summary.json").read_text())
    assert summary["final_test_mse"] == float(rows[-1]["test_mse"])
    assert summary["best_test_mse"] == min(float(r["test_mse"]) for r in rows)
    assert float(rows[summary["best_epoch"]]["test_mse"]) == summary["best_test_mse"]
    assert summary["mp_rounds_per_batch"] == rounds and summary["epochs"] == 3


def test_same_seed_gives_identical_metrics(amsgrad_run, tmp_path):
    again = tmp_path / "again"
    assert main([*TINY, "--optimizer", "d-amsgrad", "--seed", "7", "--out", str(again)]) == 0
    assert without_wall(read_csv(again / "metrics.csv")) == without_wall(read_csv(amsgrad_run / "metrics.csv"))
    other = tmp_path / "other"
    assert main([*TINY, "--optimizer", "d-amsgrad", "--seed", "8", "--out", str(other)]) == 0
    assert read_csv(other / "metrics.csv")[-1]["test_mse"] != read_csv(amsgrad_run / "metrics.csv")[-1]["test_mse"]


def test_resume_after_interruption_gives_the_uninterrupted_metrics(amsgrad_run, tmp_path, monkeypatch, capsys):
    out = tmp_path / "killed"
    original, calls = trainer_module.Trainer._commit, []

    def interrupted(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # during epoch 3 of 3
        return original(self, *args, **kwargs)

    monkeypatch.setattr(trainer_module.Trainer, "_commit", interrupted)
    assert main([*TINY, "--optimizer", "d-amsgrad", "--seed", "7", "--out", str(out), "--checkpoint-every", "0"]) == 130
    assert "--resume" in capsys.readouterr().err
    assert not (out / "summary.json").exists() and len(read_csv(out / "metrics.csv")) == 3
    monkeypatch.setattr(trainer_module.Trainer, "_commit", original)
    assert main(["--resume", str(out), "-q"]) == 0
    assert without_wall(read_csv(out / "metrics.csv")) == without_wall(read_csv(amsgrad_run / "metrics.csv"))
    assert json.loads((out / "summary.json").read_text())["epochs"] == 3
    config = json.loads((out / "config.json").read_text())  # the start's record, and the resumed part's backend
    assert [r["backend"] for r in config["resumed"]] == [config["backend"]] == [{"backend": "local", "ranks": 1}]
    assert set(config["resumed"][0]) == {"started", "command_line", "git_commit", "threads", "backend"}


def test_resume_with_a_damaged_checkpoint_is_one_line_and_status_2(amsgrad_run, tmp_path, capsys):
    out = tmp_path / "damaged"
    shutil.copytree(amsgrad_run, out, ignore=shutil.ignore_patterns(".lock"))
    checkpoint = out / "checkpoint" / "latest.npz"
    checkpoint.write_bytes(checkpoint.read_bytes()[:100])
    (out / "summary.json").unlink()  # as if interrupted: --resume reads the checkpoint
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    capsys.readouterr()
    assert main(["--resume", str(out), "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"python -m apps.node_regression: error: checkpoint {checkpoint} is "
                                               "not a readable checkpoint"), err
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != ".lock"} == before


def test_all_approaches(tmp_path):
    out = tmp_path / "all"
    assert main([*TINY, "--epochs", "2", "--optimizer", "all", "--jobs", "2", "--out", str(out)]) == 0  # in 2 workers
    assert {p.name for p in out.iterdir()} == {*APPROACHES, ".lock", "config.json", "summary.json",
                                               "test_mse_vs_rounds.png"}
    summary = json.loads((out / "summary.json").read_text())
    # rounds per mini-batch, Table I with L = 2, B = 6, K = 1: LB, B(2L-1)+BK, LB+L-1+K, LB+L-1
    expected = {"c-sgd": 12, "c-adam": 12, "d-naive": 24, "d-naive-pb": 14, "d-sgd": 13, "d-adam": 13,
                "d-amsgrad": 13}
    assert {a: s["mp_rounds_per_batch"] for a, s in summary.items()} == expected
    for approach in APPROACHES:
        rows = read_csv(out / approach / "metrics.csv")
        assert len(rows) == 3 and 0 < float(rows[-1]["test_mse"]) < 1
        assert int(rows[-1]["mp_rounds"]) == 8 * expected[approach]
    naive, pb = (read_csv(out / a / "metrics.csv") for a in ("d-naive", "d-naive-pb"))
    np.testing.assert_allclose([float(r["test_mse"]) for r in naive], [float(r["test_mse"]) for r in pb], rtol=1e-12)
    assert json.loads((out / "config.json").read_text())["optimizer"] == ",".join(APPROACHES)
    # --resume of the parent continues only what is unfinished (here: d-sgd lost its summary)
    before = read_csv(out / "d-sgd" / "metrics.csv")
    (out / "d-sgd" / "summary.json").unlink()
    assert main(["--resume", str(out), "-q"]) == 0
    assert json.loads((out / "d-sgd" / "summary.json").read_text())["mp_rounds_per_batch"] == 13
    assert read_csv(out / "d-sgd" / "metrics.csv") == before
    assert set(json.loads((out / "summary.json").read_text())) == set(APPROACHES)


def test_data_file_gives_the_in_memory_results(tmp_path):
    config = nr.NodeRegressionConfig(nodes=12, train_samples=24, test_samples=4, input_dim=6, teacher_hidden=(5,),
                                     seed=3)
    path = nr.generate(config, tmp_path / "data.h5")
    flags = [*TINY, "--optimizer", "c-adam", "--epochs", "2"]
    assert main([*flags, "--seed", "3", "--data-seed", "3", "--out", str(tmp_path / "memory")]) == 0
    assert main([*flags, "--seed", "3", "--data", str(path), "--nodes", "99", "--out", str(tmp_path / "file")]) == 0
    rows = [without_wall(read_csv(tmp_path / d / "metrics.csv")) for d in ("memory", "file")]
    assert rows[0] == rows[1]
    recorded = json.loads((tmp_path / "file" / "config.json").read_text())["dataset"]
    assert recorded["path"] == str(path) and recorded["checksum"] == nr.load(path)[1]


def test_laplacian_mixing_is_recorded(tmp_path):
    out = tmp_path / "lap"
    assert main([*TINY, "--epochs", "1", "--optimizer", "d-sgd", "--mixing", "laplacian", "--mixing-beta", "0.01",
                 "--d-adam-variant", "authors", "--out", str(out)]) == 0
    mode = json.loads((out / "config.json").read_text())["mode"]
    assert mode == {"mixing": "laplacian", "mixing_beta": 0.01, "d_adam_variant": "authors"}


def test_a_disconnected_graph_is_said_and_recorded(tmp_path, capsys):
    """An Erdos-Renyi graph this sparse falls apart: the run still trains (consensus within each component,
    docs/design.md, section 2), says so on stderr and records the components in config.json."""
    sparse = ["--graph", "er", "--graph-p", "0.05", "--epochs", "1"]
    out = tmp_path / "er"
    assert main([*[f for f in TINY if f != "-q"], *sparse, "--optimizer", "d-sgd", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    graph = json.loads((out / "config.json").read_text())["dataset"]["graph"]
    assert graph["nodes"] == 12 and graph["components"] > 1 and graph["largest_component"] < 12
    assert f"the graph is not connected: {graph['components']} components, the largest with " \
           f"{graph['largest_component']} of the 12 nodes" in err
    assert main([*TINY, *sparse, "--optimizer", "d-sgd", "--out", str(tmp_path / "quiet")]) == 0  # -q: no note
    assert main([*TINY[:-1], *sparse, "--optimizer", "c-sgd", "--out", str(tmp_path / "central")]) == 0
    assert main([*TINY[:-1], "--epochs", "1", "--optimizer", "d-sgd", "--out", str(tmp_path / "ba")]) == 0
    assert "not connected" not in capsys.readouterr().err  # quiet, centralized, or a connected BA graph


def test_consensus_rounds_without_a_gradient_consensus_approach_is_said(tmp_path, capsys):
    loud = [f for f in TINY if f != "-q"] + ["--epochs", "1", "--consensus-rounds", "3"]
    assert main([*loud, "--optimizer", "d-sgd,d-gt", "--out", str(tmp_path / "a")]) == 0
    assert ("note: --consensus-rounds 3 changes nothing here: only D-naive, D-naive-PB, D-GC-Adam and D-GCP-Adam "
            "run K rounds of gradient consensus; D-SGD and D-GT do not") in capsys.readouterr().err
    assert main([*loud, "--optimizer", "d-sgd,d-naive", "--out", str(tmp_path / "b")]) == 0
    assert "--consensus-rounds" not in capsys.readouterr().err  # D-naive runs the K rounds


def test_flags_without_effect_are_said_and_not_recorded(tmp_path, capsys):
    loud = [f for f in TINY if f != "-q"] + ["--epochs", "1", "--optimizer", "d-sgd"]
    out = tmp_path / "run"
    assert main([*loud, "--mixing-beta", "0.01", "--on-loss", "stale", "--graph-p", "0.2", "--out", str(out)]) == 0
    notes = [line for line in capsys.readouterr().err.splitlines() if "note:" in line]
    assert notes == ["python -m apps.node_regression: note: --mixing-beta has no effect without --mixing laplacian",
                     "python -m apps.node_regression: note: --on-loss has no effect without lost packets "
                     "(--loss-prob > 0 or --loss-model gilbert)",
                     "python -m apps.node_regression: note: --graph-p has no effect without --graph er"]
    flags = json.loads((out / "config.json").read_text())["flags"]
    assert "given_flags" not in flags and "resumed_config" not in flags and flags["mixing_beta"] == 0.01
    assert main([*loud, "--mixing", "laplacian", "--mixing-beta", "0.01", "--loss-prob", "0.1", "--on-loss", "stale",
                 "--out", str(tmp_path / "used")]) == 0
    assert "note:" not in capsys.readouterr().err  # each flag now has its effect
    assert main([f for f in loud if f != "d-sgd"] + ["c-adam", "--loss-prob", "0.1", "--eval-under-loss", "--init",
                                                     "glorot", "--init-scale", "2", "--d-adam-variant", "authors",
                                                     "--out", str(tmp_path / "c")]) == 0
    notes = [line.split("note: ")[1] for line in capsys.readouterr().err.splitlines() if "note:" in line]
    assert notes == ["--d-adam-variant has no effect without d-adam among the approaches",
                     "--init-scale has no effect with --init glorot",
                     "--loss-prob, --eval-under-loss have no effect: C-Adam trains at a server over perfect links"]
    flags = json.loads((tmp_path / "c" / "config.json").read_text())["flags"]
    assert flags["out"] == str((tmp_path / "c").absolute())  # paths recorded absolute (--resume from anywhere)
    path = nr.generate(nr.NodeRegressionConfig(nodes=12, train_samples=24, test_samples=4, input_dim=6,
                                               teacher_hidden=(5,)), tmp_path / "data.h5")
    common = ["--hidden", "4", "--batch-size", str(B), "--epochs", "1", "--no-jit", "--optimizer", "d-sgd"]
    assert main([*common, "--data", str(path), "--nodes", "99", "--graph-p", "0.3", "--out", str(tmp_path / "f")]) == 0
    notes = [line.split("note: ")[1] for line in capsys.readouterr().err.splitlines() if "note:" in line]
    assert notes == ["--nodes has no effect with --data (the file's own settings are used)",
                     "--graph-p has no effect with --data (the file's own settings are used)"]


@pytest.mark.parametrize("flags, message", [
    (["--optimizer", "d-sgdd"], "--optimizer"),
    (["--batch-size", "25"], "--batch-size 25 is larger than the training set (24 samples)"),
    (["--lr", "0"], "--lr"),
    (["--lr", "-0.1"], "--lr"),
    (["--consensus-rounds", "0"], "--consensus-rounds"),
    (["--epochs", "0"], "--epochs"),
    (["--hidden", "4,0"], "--hidden"),
    (["--lr-decay-rate", "2"], "--lr-decay-rate"),
    (["--features", "mix", "--input-dim", "3"], "--input-dim"),
    (["--data", "missing.h5"], "--data"),
])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(tmp_path, capsys, flags, message):
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_info:
        status = main([*TINY, *flags, "--out", str(out)])
        raise SystemExit(status)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and "error" in err[0]
    assert list(tmp_path.iterdir()) == []


def test_output_folder_errors(tmp_path, capsys):
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "file").write_text("x")
    assert main([*TINY, "--out", str(busy / "file" / "run")]) == 2
    assert main([*TINY, "--out", str(busy)]) == 2
    assert main(["--resume", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and "is a file" in err[0] and "not empty" in err[1] and "does not exist" in err[2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["busy"] and [p.name for p in busy.iterdir()] == ["file"]


def test_help_and_bad_flag_as_a_process(tmp_path):
    run = [sys.executable, "-m", "apps.node_regression"]
    helped = subprocess.run([*run, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert helped.returncode == 0
    for flag in ("--nodes", "--graph-seed", "--features", "--teacher-hidden", "--hidden", "--noise-variance",
                 "--train-samples", "--optimizer", "--lr-schedule", "--consensus-rounds", "--mixing-beta",
                 "--dtype", "--preset", "--resume", "--data", "--checkpoint-every"):
        assert flag in helped.stdout
    bad = subprocess.run([*run, "--optimizer", "adam", "--out", str(tmp_path / "x")], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()


def test_threads_flag_sets_tensorflow_threads_and_is_recorded(tmp_path):
    """--threads reaches TensorFlow (read when it is imported: a process of its own) and config.json records it."""
    out = tmp_path / "run"
    repo = Path(__file__).resolve().parents[3]
    done = subprocess.run([sys.executable, "-m", "apps.node_regression", "--optimizer", "d-sgd", "--nodes", "12",
                           "--train-samples", "8", "--test-samples", "2", "--batch-size", "4", "--epochs", "1",
                           "--threads", "1", "--out", str(out), "-q"], cwd=repo, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""  # -q: not even TensorFlow's start-up notices (core.tf_notices)
    config = json.loads((out / "config.json").read_text())
    assert config["threads"] == 1 and config["flags"]["threads"] == 1
