"""`python -m apps.link_scheduling` on a tiny dataset: outputs and their values, resume equality, and bad
input (one error line, exit status 2, nothing written)."""

import json

import h5py
import numpy as np
import pytest

from apps.link_scheduling import experiment
from core.runs import RunDir, read_csv
from core.trainer import Trainer
from datasets.conflict_graphs import ConflictGraphsConfig, generate

B = 8
TINY = ConflictGraphsConfig(vertices=12, min_degree=1.0, max_degree=5.0, train_graphs=4, test_graphs=2,
                            test_samples=6, seed=3)
ACTOR_PARAMS = 2 * (1 * 32 + 32 * 32 + 32 * 1)  # |theta| of the 1-32-32-1 actor without bias


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return generate(TINY, tmp_path_factory.mktemp("data") / "tiny.h5")


def run(args, capsys=None):
    try:
        status = experiment.main([str(a) for a in args])
    except SystemExit as exc:  # argparse's errors exit from inside the parser
        status = exc.code
    return status, (capsys.readouterr().err if capsys else "")


def metrics(path):
    return [{k: float(v) for k, v in row.items()} for row in read_csv(path / "metrics.csv")]


TINY_RUN = ["--batch-size", B, "--mini-batches", 3, "--checkpoint-every", 1, "-q"]


@pytest.fixture(scope="module")
def tiny_runs(data, tmp_path_factory):
    """C-Adam and D-Adam, 3 mini-batches each, into one parent directory (shared by two tests)."""
    out = tmp_path_factory.mktemp("runs") / "run"
    assert run(["--data", data, "--optimizer", "c-adam,d-adam", *TINY_RUN, "--out", out])[0] == 0
    return out


def test_tiny_runs_write_every_output_with_sane_values(tiny_runs):
    out = tiny_runs
    assert (out / "test_ratio_vs_minibatch.png").stat().st_size > 0
    assert set(json.loads((out / "summary.json").read_text())) == {"c-adam", "d-adam"}
    for name, rounds in (("c-adam", 3 * B), ("d-adam", 3 * B + 2)):  # Table I: LB, and LB + L - 1
        run_dir = out / name
        rows = metrics(run_dir)
        assert list(read_csv(run_dir / "metrics.csv")[0]) == [
            "epoch", "step", "mp_rounds", "floats_sent_per_node", "lr", "train_ratio", "critic_loss",
            "lgs_rounds_per_batch", "test_ratio", "consensus_error", "wall_s"]
        assert [r["step"] for r in rows] == [0, 1, 2, 3] and [r["epoch"] for r in rows] == [0, 1, 2, 3]
        assert [r["mp_rounds"] for r in rows] == [0, rounds, 2 * rounds, 3 * rounds]
        for r in rows:
            assert 0.3 < r["train_ratio"] < 1.7 and 0.3 < r["test_ratio"] < 1.7
            assert 0 < r["critic_loss"] < 1.5 and 1 <= r["lgs_rounds_per_batch"] <= 2 * TINY.vertices
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["untrained_test_ratio"] == pytest.approx(rows[0]["test_ratio"])
        assert summary["final_test_ratio"] == rows[-1]["test_ratio"]
        assert summary["best_test_ratio"] == max(r["test_ratio"] for r in rows)
        assert summary["mp_rounds_per_batch"] == rounds and summary["mode"] == "algorithm1"
        config = json.loads((run_dir / "config.json").read_text())
        assert config["dataset"]["checksum"].startswith("sha256:") and config["flags"]["batch_size"] == B
        assert (run_dir / "learning_curve.png").stat().st_size > 0
    distributed = metrics(out / "d-adam")
    assert distributed[-1]["consensus_error"] > 0  # the copies drift apart on different local gradients
    assert distributed[-1]["floats_sent_per_node"] == 3 * (B * (1 + 32 + 32 + 32 + 32) + ACTOR_PARAMS + 1)
    assert all(r["consensus_error"] == 0 for r in metrics(out / "c-adam"))


def test_authors_mode_replays_a_mini_batch_as_one_update_per_sample(data, tmp_path):
    out = tmp_path / "authors"
    status, _ = run(["--data", data, "--mode", "authors", "--optimizer", "d-adam", "--d-adam-variant", "authors",
                     "--batch-size", 4, "--mini-batches", 2, "--out", out, "-q"])
    assert status == 0
    rows = metrics(out)
    assert [r["step"] for r in rows] == [0, 1, 2]  # a trainer step is a mini-batch of B replayed updates
    # per sample: 3 forward, 2 backward and 1 gradient-consensus round (the authors' D-Adam, K = 1)
    assert [r["mp_rounds"] for r in rows] == [0, 4 * 6, 8 * 6]
    assert rows[-1]["lr"] == experiment.AUTHORS["lr"]
    flags = json.loads((out / "config.json").read_text())["flags"]
    assert flags["critic_lr"] == experiment.AUTHORS["critic_lr"] and flags["critic_warmup"] == 1
    assert flags["critic_input"] == "scale-free"
    arrays, _ = RunDir(out, create=False).load_checkpoint()
    assert int(arrays["state_2"]) == 2 * 4  # Adam's step counter: B updates per mini-batch


def test_resumed_run_ends_with_the_metrics_of_an_uninterrupted_one(data, tiny_runs, tmp_path, monkeypatch):
    """Stopped after mini-batch 2 (with its checkpoint), then resumed: the same rows as the D-Adam run of
    `tiny_runs`, which went through in one go (wall-clock time aside)."""
    full_run = Trainer.run
    monkeypatch.setattr(Trainer, "run", lambda self, resume=False, on_epoch=None, on_resumed=None:
                        full_run(self, resume, until_epoch=2))
    assert run(["--data", data, "--optimizer", "d-adam", *TINY_RUN, "--out", tmp_path / "cut"])[0] == 0
    assert len(metrics(tmp_path / "cut")) == 3 and not (tmp_path / "cut" / "summary.json").exists()
    monkeypatch.setattr(Trainer, "run", full_run)
    assert run(["--resume", tmp_path / "cut", "-q"])[0] == 0

    def without_time(rows):
        return [{k: v for k, v in r.items() if k != "wall_s"} for r in rows]

    assert without_time(metrics(tmp_path / "cut")) == without_time(metrics(tiny_runs / "d-adam"))
    whole, cut = (json.loads((d / "summary.json").read_text()) for d in (tiny_runs / "d-adam", tmp_path / "cut"))
    assert whole["final_test_ratio"] == cut["final_test_ratio"]


def corrupt(source, target, edit):
    target.write_bytes(source.read_bytes())
    with h5py.File(target, "r+") as f:
        edit(f)
    return target


def self_loop(f):
    f["train/adjacency"][1, 3, 3] = 1


def negative_weight(f):
    f["test/weights"][0, 0, 0] = -0.5


def wrong_size(f):
    weights = f["test/weights"][...]
    del f["test/weights"]
    f["test/weights"] = np.zeros(weights.shape[:2] + (weights.shape[2] + 1,))


@pytest.mark.parametrize("case, message", [
    ("self_loop", "self-loops"),
    ("negative_weight", "outside [0, 1]"),
    ("wrong_size", "test/weights"),
    ("unreadable", "not a readable HDF5 file"),
    ("missing", "does not exist"),
    ("batch_size", "--batch-size"),
    ("lr", "--lr"),
    ("optimizer", "--optimizer"),
    ("mode", "--mode"),
    ("mixing_in_authors_mode", "does not run in --mode authors"),
])
def test_bad_input_is_one_error_line_with_status_2_and_nothing_written(data, tmp_path, capsys, case, message):
    path, extra = data, []
    if case in ("self_loop", "negative_weight", "wrong_size"):
        path = corrupt(data, tmp_path / "bad.h5", globals()[case])
    elif case == "unreadable":
        path = tmp_path / "bad.h5"
        path.write_bytes(b"not hdf5 at all" * 10)
    elif case == "missing":
        path = tmp_path / "absent.h5"
    else:
        extra = {"batch_size": ["--batch-size", 0], "lr": ["--lr", -1], "optimizer": ["--optimizer", "adam"],
                 "mode": ["--mode", "greedy"],
                 "mixing_in_authors_mode": ["--mode", "authors", "--optimizer", "d-sgd"]}[case]
    before = sorted(p.name for p in tmp_path.iterdir())
    status, err = run(["--data", path, "--out", tmp_path / "out", "-q", *extra], capsys)
    assert status == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{experiment.PROG}: error:") and message in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no run directory, no dataset


def test_generate_writes_the_dataset_once_and_refuses_other_settings(tmp_path, capsys):
    path = tmp_path / "generated.h5"
    flags = ["--data", path, "--generate", "--vertices", 10, "--max-degree", 4, "--train-graphs", 2, "--test-graphs", 1,
             "-q"]

    def plan(*extra):
        return experiment.plan(experiment.parse_args([str(a) for a in (*flags, *extra)]))

    first = plan("--test-samples", 3, "--out", tmp_path / "a")
    assert path.is_file() and first.data.test_weights.shape == (1, 3, 10)
    modified = path.stat().st_mtime_ns
    assert plan("--test-samples", 3, "--out", tmp_path / "b").data.checksum == first.data.checksum
    assert path.stat().st_mtime_ns == modified  # same settings: the file is reused, not rewritten
    status, err = run([*flags, "--test-samples", 4, "--out", tmp_path / "c"], capsys)
    assert status == 2 and "other settings" in err and not (tmp_path / "c").exists()


def test_epochs_are_passes_over_the_training_graphs(tmp_path, capsys):
    from apps.link_scheduling.experiment import build_parser, derive_mini_batches

    args = build_parser().parse_args(["--epochs", "3", "--batch-size", "10"])
    args.mini_batches = None
    derive_mini_batches(args, num_train_graphs=40)
    assert args.mini_batches == 120  # algorithm1: one training graph per mini-batch
    args = build_parser().parse_args(["--epochs", "3", "--batch-size", "10", "--mode", "authors"])
    args.mini_batches = None
    derive_mini_batches(args, num_train_graphs=40)
    assert args.mini_batches == 12  # authors: B graphs per mini-batch
    args = build_parser().parse_args(["--epochs", "3", "--mini-batches", "7"])
    with pytest.raises(ValueError, match="give one of the two"):
        derive_mini_batches(args, num_train_graphs=40)


def test_dataset_flags_without_generate_are_said(data, tmp_path, capsys):
    loud = [f for f in TINY_RUN if f != "-q"]
    status, err = run(["--data", data, "--optimizer", "c-adam", *loud, "--mini-batches", 1, "--vertices", 50,
                       "--consensus-rounds", 2, "--out", tmp_path / "run"], capsys)
    notes = [line.split("note: ")[1] for line in err.splitlines() if "note:" in line]
    assert status == 0 and notes == [
        "--vertices has no effect without --generate (the dataset's own settings are used)",
        "--consensus-rounds 2 changes nothing here: only D-naive, D-naive-PB, D-GC-Adam and D-GCP-Adam run K "
        "rounds of gradient consensus; C-Adam does not"]
