"""`python -m apps.power_allocation`: a 2-epoch run on a tiny dataset writes every output with sane values,
an interrupted run resumes to the uninterrupted metrics, bad input exits 2 with one line and writes
nothing, --generate makes the dataset first. Graph mode (--no-jit) and one unfolded layer keep the tests
fast (the 4-layer model itself is tested in test_uwmmse.py)."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from apps.power_allocation import experiment
from apps.power_allocation.experiment import main
from core import trainer as trainer_module
from core.runs import read_csv
from datasets import power_allocation as pa

ROOT = Path(__file__).resolve().parents[3]
N, B, TRAIN_BATCHES, TEST_BATCHES = 6, 8, 6, 2
K = 1  # unfolded layers
L = 2 + 2 * K  # exchanges per sample: 2 GCNN rounds, then feedback and interference per layer
FORWARD = 2 * K * (1 + 5) + 1 + 2 * K  # floats per sample: X^0, X^1 of 2K GCNNs, v^0, the WMMSE sums
BACKWARD = 2 * K * 5 + 2 * K  # the backward of exchanges 2..L
THETA = 2 * K * 26


def without_wall(rows):
    return [{k: v for k, v in r.items() if k != "wall_s"} for r in rows]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "pa.h5"
    pa.generate(pa.PowerAllocationConfig(pairs=N, batch_size=B, layouts=2, batches_per_layout=3,
                                         test_batches=TEST_BATCHES, area=400.0, seed=1), path)
    return path


def flags(dataset, *extra):
    return ["--data", str(dataset), "--epochs", "2", "--seed", "4", "--layers", str(K), "--wmmse-iterations", "20",
            "--no-jit", "-q", *extra]


@pytest.fixture(scope="module")
def both_run(dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "both"
    assert main(flags(dataset, "--out", str(out), "--save-powers")) == 0  # default: c-adam,d-adam
    return out


def test_two_epoch_run_writes_every_output(both_run, dataset):
    out = both_run
    assert {p.name for p in out.iterdir()} == {"c-adam", "d-adam", ".lock", "config.json", "summary.json",
                                               "test_sum_rate_vs_epoch.png"}
    assert (out / "test_sum_rate_vs_epoch.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summaries = json.loads((out / "summary.json").read_text())
    for approach, rounds, floats in (("c-adam", L * B, B * FORWARD),
                                     ("d-adam", L * B + L - 1, B * (FORWARD + BACKWARD) + THETA + 1)):
        run = out / approach
        assert {p.name for p in run.iterdir()} == {".lock", "config.json", "metrics.csv", "summary.json", "checkpoint",
                                                   "learning_curve.png", "test_powers.npz"}
        config = json.loads((run / "config.json").read_text())
        assert config["optimizer"] == approach and config["seed"] == 4 and config["flags"]["epochs"] == 2
        assert config["dataset"]["path"] == str(dataset) and config["dataset"]["checksum"].startswith("sha256:")
        assert config["mode"]["mixing"] == "mh" and "every sample" in config["mode"]["consensus_graph"]
        rows = read_csv(run / "metrics.csv")
        assert list(rows[0]) == ["epoch", "step", "mp_rounds", "floats_sent_per_node", "lr", "train_sum_rate",
                                 "train_sum_rate_mbps", "test_sum_rate", "test_sum_rate_mbps", "consensus_error",
                                 "wall_s"]
        assert [int(r["epoch"]) for r in rows] == [0, 1, 2]
        for r in rows:  # one mini-batch per file batch and epoch
            assert int(r["step"]) == int(r["epoch"]) * TRAIN_BATCHES
            assert int(r["mp_rounds"]) == int(r["step"]) * rounds
            assert int(r["floats_sent_per_node"]) == int(r["step"]) * floats
            mbps = float(r["test_sum_rate"]) * summaries[approach]["bandwidth_hz"] / 1e6
            assert float(r["test_sum_rate_mbps"]) == pytest.approx(mbps, rel=1e-6)
            assert 0 < float(r["test_sum_rate"]) < 100 and 0 < float(r["train_sum_rate"]) < 100
        summary = json.loads((run / "summary.json").read_text())
        assert summary == summaries[approach]
        assert summary["mp_rounds_per_batch"] == rounds and summary["floats_sent_per_node_per_batch"] == floats
        assert summary["final_test_sum_rate"] == float(rows[-1]["test_sum_rate"])
        assert summary["best_test_sum_rate"] == max(float(r["test_sum_rate"]) for r in rows)
        assert summary["initial_test_sum_rate"] == float(rows[0]["test_sum_rate"])
        assert summary["final_test_sum_rate_mbps"] == pytest.approx(summary["final_test_sum_rate"] * 5)  # 5 MHz
        # the baselines, on the same test set: WMMSE (20 iterations) beats WMMSE-Tr (as many as layers)
        assert summary["wmmse_iterations"] == 20 and summary["wmmse_tr_iterations"] == K
        assert summary["wmmse_test_sum_rate"] > summary["wmmse_tr_test_sum_rate"] > 0
        assert summary["wmmse_tr_test_sum_rate_mbps"] == pytest.approx(summary["wmmse_tr_test_sum_rate"] * 5)
        powers = np.load(run / "test_powers.npz")
        assert set(powers.files) == {"uwmmse", "wmmse", "wmmse_tr"}
        assert all(powers[k].shape == (TEST_BATCHES, B, N) for k in powers.files)
        assert np.all(powers["uwmmse"] >= 0) and np.all(powers["uwmmse"] <= 5.0 * (1 + 1e-5))
    central, distributed = (read_csv(out / a / "metrics.csv") for a in ("c-adam", "d-adam"))
    assert float(central[-1]["consensus_error"]) == 0 < float(distributed[-1]["consensus_error"]) < 1
    assert central[0]["test_sum_rate"] == distributed[0]["test_sum_rate"]  # the same initial model


def test_resume_after_interruption_gives_the_uninterrupted_metrics(both_run, dataset, tmp_path, monkeypatch, capsys):
    out = tmp_path / "killed"
    original, calls = trainer_module.Trainer._commit, []

    def interrupted(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # during epoch 2 of 2
        return original(self, *args, **kwargs)

    monkeypatch.setattr(trainer_module.Trainer, "_commit", interrupted)
    assert main(flags(dataset, "--optimizer", "d-adam", "--out", str(out), "--checkpoint-every", "0")) == 130
    assert "--resume" in capsys.readouterr().err
    assert not (out / "summary.json").exists() and len(read_csv(out / "metrics.csv")) == 2
    monkeypatch.setattr(trainer_module.Trainer, "_commit", original)
    assert main(["--resume", str(out), "-q"]) == 0
    assert without_wall(read_csv(out / "metrics.csv")) == without_wall(read_csv(both_run / "d-adam" / "metrics.csv"))
    assert json.loads((out / "summary.json").read_text())["epochs"] == 2


def corrupted(dataset, tmp_path, edit):
    path = tmp_path / "bad.h5"
    shutil.copy(dataset, path)
    with h5py.File(path, "r+") as f:
        edit(f)
    return path


def set_nan(f):
    f["train/H"][3, 0, 1, 2] = np.nan


def set_pmax(f):
    f.attrs["pmax_w"] = -5.0


def other_schema(tmp_path):
    path = tmp_path / "other.h5"
    with h5py.File(path, "w") as f:
        f.attrs["schema"] = "conflict-graphs"
    return path


@pytest.mark.parametrize(("make", "extra", "message"), [
    (lambda d, t: other_schema(t), [], "'conflict-graphs' dataset"),
    (lambda d, t: t / "missing.h5", [], "does not exist; pass --generate"),
    (lambda d, t: corrupted(d, t, set_nan), [], "contains NaN"),
    (lambda d, t: corrupted(d, t, set_pmax), [], "the 'pmax_w' attribute is -5.0, expected a number > 0"),
    (lambda d, t: d, ["--pairs", "25"], "--pairs 25 does not match the dataset's 6 pairs"),
    (lambda d, t: d, ["--batch-size", "64"], "--batch-size 64 does not match"),
    (lambda d, t: d, ["--lr", "-1"], "--lr"),
    (lambda d, t: d, ["--optimizer", "d-adam,sgd"], "--optimizer"),
    (lambda d, t: d, ["--epochs", "0"], "--epochs"),
    (lambda d, t: d, ["--lr-decay-rate", "2"], "--lr-decay-rate must be in (0, 1]"),
])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(dataset, tmp_path, capsys, make, extra, message):
    data = make(dataset, tmp_path)
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_info:  # flag errors exit inside argparse, the others return 2
        raise SystemExit(main(["--data", str(data), "--out", str(out), "-q", *extra]))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and err[0].startswith("python -m apps.power_allocation: error:")
    assert not out.exists()


def test_output_folder_errors(dataset, tmp_path, capsys):
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "file").write_text("x")
    assert main(["--data", str(dataset), "--out", str(busy), "-q"]) == 2
    assert main(["--data", str(dataset), "--out", str(busy / "file" / "run"), "-q"]) == 2
    assert main(["--resume", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and "not empty" in err[0] and "is a file" in err[1] and "does not exist" in err[2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["busy"]


def test_generate_writes_the_dataset_first(tmp_path, monkeypatch):
    monkeypatch.setitem(experiment.GENERATED, "quick", {"layouts": 4, "batches_per_layout": 5, "test_batches": 3})
    path = tmp_path / "new.h5"
    out = tmp_path / "run"
    assert main(["--generate", "--data", str(path), "--preset", "quick", "--pairs", "3", "--epochs", "1",
                 "--optimizer", "c-sgd", "--layers", "1", "--wmmse-iterations", "5", "--no-jit", "-q",
                 "--out", str(out)]) == 0
    with pa.PowerAllocationDataset(path) as data:
        assert data.num_pairs == 3 and data.num_batches("train") == 20 and data.num_batches("test") == 3
        assert data.config["carrier_ghz"] == 0.9 and data.batch_size == 64  # otherwise the paper preset
    rows = read_csv(out / "metrics.csv")
    assert [int(r["step"]) for r in rows] == [0, 20]


def test_generate_takes_the_batch_size_and_refuses_a_file_of_other_settings(tmp_path, monkeypatch, capsys):
    """--generate writes B = --batch-size; a file already there written with other settings (here another
    --data-seed) is refused with one line naming them, before anything is trained or written."""
    monkeypatch.setitem(experiment.GENERATED, "quick", {"layouts": 2, "batches_per_layout": 2, "test_batches": 1})
    path = tmp_path / "b8.h5"
    flags = ["--generate", "--data", str(path), "--preset", "quick", "--pairs", "3", "--batch-size", "8", "--epochs",
             "1", "--optimizer", "c-sgd", "--layers", "1", "--wmmse-iterations", "5", "--no-jit", "-q"]
    assert main([*flags, "--out", str(tmp_path / "run")]) == 0
    with pa.PowerAllocationDataset(path) as data:
        assert data.batch_size == 8 and data.num_pairs == 3
        checksum = data.checksum
    capsys.readouterr()
    assert main([*flags, "--data-seed", "1", "--out", str(tmp_path / "other")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "exists with other settings than the dataset flags (seed: the file has 0, the flags " \
        "give 1)" in err[0]
    assert not (tmp_path / "other").exists()
    with pa.PowerAllocationDataset(path) as data:
        assert data.checksum == checksum


def test_resume_finds_the_dataset_from_another_working_directory(tmp_path, monkeypatch):
    """config.json records the dataset's absolute path (here given relative to the working directory), so
    --resume works from anywhere; a resumed run whose dataset is gone says so without naming a refused flag."""
    monkeypatch.setitem(experiment.GENERATED, "quick", {"layouts": 2, "batches_per_layout": 2, "test_batches": 1})
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    monkeypatch.chdir(tmp_path / "a")
    out = tmp_path / "run"
    assert main(["--generate", "--data", "d.h5", "--preset", "quick", "--pairs", "3", "--batch-size", "4", "--epochs",
                 "2", "--optimizer", "c-sgd", "--layers", "1", "--wmmse-iterations", "5", "--no-jit", "-q",
                 "--checkpoint-every", "1", "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["flags"]["data"] == str(tmp_path / "a" / "d.h5")
    monkeypatch.chdir(tmp_path / "b")
    assert main(["--resume", str(out), "-q"]) == 0
    (tmp_path / "a" / "d.h5").unlink()
    with pytest.raises(ValueError, match=r"--resume: the run's dataset .*d\.h5 does not exist \(config.json names "
                                         r"it\); restore that file or start a new run"):
        experiment.plan(experiment.parse_args(["--resume", str(out)]))


def test_help_and_bad_flag_as_a_process(tmp_path):
    run = subprocess.run([sys.executable, "-m", "apps.power_allocation", "--help"], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0
    for flag in ("--optimizer", "--lr", "--epochs", "--batch-size", "--consensus-rounds", "--mixing", "--seed",
                 "--dtype", "--preset", "--out", "--resume", "--data", "--generate", "--wmmse-iterations", "-q"):
        assert flag in run.stdout
    bad = subprocess.run([sys.executable, "-m", "apps.power_allocation", "--mixing", "ring", "--out",
                          str(tmp_path / "x")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and not (tmp_path / "x").exists()


def test_gradient_consensus_adam_runs_with_d_naive_pb_counts(dataset, tmp_path):
    """--optimizer d-gc-adam: K gradient-consensus rounds of |θ| floats on top of the piggybacked passes."""
    out, rounds_k = tmp_path / "gc", 2
    assert main(flags(dataset, "--optimizer", "d-gc-adam", "--consensus-rounds", str(rounds_k), "--out", str(out))) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["label"] == "D-GC-Adam" and summary["consensus_rounds"] == rounds_k
    assert summary["mp_rounds_per_batch"] == L * B + L - 1 + rounds_k
    assert summary["floats_sent_per_node_per_batch"] == B * (FORWARD + BACKWARD) + rounds_k * THETA
    rows = read_csv(out / "metrics.csv")
    assert 0 < float(rows[-1]["consensus_error"]) < 1 and 0 < float(rows[-1]["test_sum_rate"]) < 100


def test_gradient_and_parameter_consensus_adam_counts_theta_in_every_consensus_round(dataset, tmp_path):
    """--optimizer d-gcp-adam: D-GC-Adam's rounds, each of the K consensus rounds carrying [θ, g] (2|θ| floats)."""
    out, rounds_k = tmp_path / "gcp", 2
    args = flags(dataset, "--optimizer", "d-gcp-adam", "--consensus-rounds", str(rounds_k), "--out", str(out))
    assert main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["label"] == "D-GCP-Adam" and summary["consensus_rounds"] == rounds_k
    assert summary["mp_rounds_per_batch"] == L * B + L - 1 + rounds_k
    assert summary["floats_sent_per_node_per_batch"] == B * (FORWARD + BACKWARD) + rounds_k * 2 * THETA
    rows = read_csv(out / "metrics.csv")
    assert 0 < float(rows[-1]["consensus_error"]) < 1 and 0 < float(rows[-1]["test_sum_rate"]) < 100


def test_a_model_that_cannot_fit_is_refused_up_front(dataset, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["--data", str(dataset), "--layers", "100000000", "--out", str(out), "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--layers 100000000" in err[0] and "of memory" in err[0]
    assert not out.exists()


def test_data_seed_without_generate_is_said(dataset, tmp_path, capsys):
    loud = [f for f in flags(dataset, "--epochs", "1", "--optimizer", "c-adam") if f != "-q"]
    assert main([*loud, "--data-seed", "9", "--out", str(tmp_path / "run")]) == 0
    notes = [line for line in capsys.readouterr().err.splitlines() if "note:" in line]
    assert notes == ["python -m apps.power_allocation: note: --data-seed has no effect without --generate (the "
                     "dataset's own seed is used)"]
