"""The robustness sweep (apps/robustness): its grid, bad input, and a tiny end-to-end sweep of App A."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from apps.robustness.__main__ import main, make_grid, parse_args
from apps.robustness.sweep import Cell, Grid, cell_command, points

TINY = ["--", "--nodes", "16", "--train-samples", "20", "--batch-size", "10", "--test-samples", "5", "--epochs", "3",
        "--checkpoint-every", "0"]


def rows_of(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_paper_grid_is_the_issue_sweep():
    args, flags = parse_args([])
    grid = make_grid(args, flags)
    assert grid.loss_probs == (0.0, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3)
    assert grid.optimizers == ("d-sgd", "d-amsgrad", "d-naive-pb", "d-gt", "d-gt-adam") and grid.reference == "c-sgd"
    cells = grid.cells()
    lossless = [c for c in cells if c.policy is None]
    assert [c.seed for c in lossless] == [0, 1, 2]  # p = 0 is one run per seed, shared by every policy
    assert all(c.optimizers[-1] == "c-sgd" for c in lossless)
    by_policy = {p: [c for c in cells if c.policy == p] for p in grid.policies}
    assert len(by_policy["stale"]) == 6 * 3 and len(by_policy["zero"]) == 6 and len(by_policy["retransmit:1"]) == 6
    approaches = sum(len(c.optimizers) for c in cells)
    assert approaches == 3 * 6 + (18 + 6 + 6) * 5  # 168 runs of App A, plus the 3 references: about 175


def test_quick_grid_and_app_b_defaults():
    grid = make_grid(*parse_args(["--quick"]))
    assert (grid.loss_probs, grid.optimizers, grid.policies, grid.seeds) == (
        (0.0, 0.1, 0.3), ("d-sgd", "d-amsgrad", "d-gt"), ("stale",), 1)
    assert grid.app_flags[:2] == ("--preset", "quick")
    b = make_grid(*parse_args(["--app", "power_allocation", "--", "--data", "x.h5"]))
    assert b.loss_probs == (0.0, 0.05, 0.2) and b.reference == "c-adam" and b.policies == ("stale",)
    assert b.app_flags == ("--epochs", "10", "--data", "x.h5")


def test_cell_commands_carry_the_link_flags_and_resume(tmp_path):
    grid = Grid("node_regression", ("d-sgd", "d-gt"), (0.0, 0.1), ("retransmit:2",), 1, 1, 7, ("--epochs", "3"),
                "c-sgd")
    cell = Cell("retransmit:2", 0.1, 7, ("d-sgd", "d-gt"))
    command = cell_command(grid, cell, tmp_path)
    assert command[command.index("--loss-prob") + 1] == "0.1"
    assert command[command.index("--on-loss") + 1] == "retransmit:2"
    assert command[command.index("--seed") + 1] == "7" and command[command.index("--optimizer") + 1] == "d-sgd,d-gt"
    assert Path(command[command.index("--out") + 1]) == tmp_path / "runs" / "retransmit-2" / "p0.1" / "seed7"
    lossless = cell_command(grid, Cell(None, 0.0, 7, ("d-sgd", "d-gt", "c-sgd")), tmp_path)
    assert "--loss-prob" not in lossless and lossless[lossless.index("--optimizer") + 1] == "d-sgd,d-gt,c-sgd"
    target = cell.path(tmp_path)
    target.mkdir(parents=True)
    (target / "config.json").write_text("{}")
    resumed = cell_command(grid, cell, tmp_path)
    assert resumed[resumed.index("--resume") + 1] == str(target) and "--loss-prob" not in resumed


@pytest.mark.parametrize("argv, message", [
    (["--loss-probs", "0,1.0"], "probability in [0, 1)"),
    (["--loss-probs", "0.1,0.1"], "twice"),
    (["--policies", "stale,retransmit:0"], "retransmit:R"),
    (["--optimizer", "c-sgd"], "centralized"),
    (["--reference", "d-sgd"], "centralized approach"),
    (["--", "--seed", "3"], "set by the sweep itself"),
    (["--", "--loss-prob", "0.2"], "set by the sweep itself; use the sweep's own --loss-probs"),
    (["--", "--loss-model=gilbert"], "set by the sweep itself; the sweep draws independent losses only"),
    (["--", "--backend", "mpi"], "--backend after -- would not apply: the sweep runs each app in a process"),
    (["--", "--no-such-flag"], "unrecognized arguments"),
    (["--", "--epochs", "0"], "--epochs"),
])
def test_bad_input_is_one_line_status_2_and_nothing_written(tmp_path, capsys, argv, message):
    out = tmp_path / "sweep"
    assert status_of(["--out", str(out), *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not out.exists()


def test_resume_of_a_folder_that_is_no_sweep_names_what_is_missing(tmp_path, capsys):
    (tmp_path / "config.json").write_text('{"app": "node_regression", "flags": {}}')  # an App A run, say
    assert status_of(["--resume", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].endswith(f"--resume: {tmp_path} holds no sweep of python -m apps.robustness (no "
                                             "'grid' entry in its config.json)"), err


def test_a_sweep_under_mpiexec_is_refused_on_the_first_rank_only(tmp_path, capsys, monkeypatch):
    out = tmp_path / "sweep"
    for rank, lines in (("0", 1), ("1", 0)):
        monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "2")
        monkeypatch.setenv("OMPI_COMM_WORLD_RANK", rank)
        assert status_of(["--quick", "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == lines and all("does not run under mpiexec" in line for line in err), err
    assert not out.exists()


def status_of(argv) -> int:
    """The exit status of the sweep's main, whether it returns it or argparse exits."""
    try:
        return main(argv)
    except SystemExit as exc:
        return exc.code


def test_tiny_sweep_end_to_end_and_resume_is_a_no_op(tmp_path, capsys, monkeypatch):
    out = tmp_path / "sweep"
    argv = ["--optimizer", "d-sgd", "--loss-probs", "0,0.2", "--policies", "stale,retransmit:1", "--seeds", "1",
            "--jobs", "2",
            "--out", str(out), "-q", *TINY]
    assert main(argv) == 0, capsys.readouterr().err
    rows = rows_of(out / "sweep.csv")
    keyed = {(r["policy"], float(r["loss_prob"]), r["optimizer"]): r for r in rows}
    assert set(keyed) == {(policy, p, name) for policy in ("stale", "retransmit:1") for p, name in (
        (0.0, "d-sgd"), (0.0, "c-sgd"), (0.2, "d-sgd"))}
    lossy = keyed[("stale", 0.2, "d-sgd")]
    assert abs(float(lossy["loss_rate"]) - 0.2) < 0.05  # the realised rate, read from the run's summary
    assert float(keyed[("stale", 0.0, "d-sgd")]["loss_rate"]) == 0.0
    retransmit, stale = keyed[("retransmit:1", 0.2, "d-sgd")], keyed[("stale", 0.2, "d-sgd")]
    assert float(retransmit["extra_rounds"]) > 0 and float(retransmit["mp_rounds"]) > float(stale["mp_rounds"])
    # the lossless cell is shared: the same run for both policies
    assert keyed[("stale", 0.0, "d-sgd")]["final"] == keyed[("retransmit:1", 0.0, "d-sgd")]["final"]
    for stem in ("final_test_mse_vs_loss_prob", "final_test_mse_vs_rounds"):
        assert (out / f"{stem}.png").read_bytes()[:4] == b"\x89PNG" and (out / f"{stem}.pdf").is_file()
    config = json.loads((out / "config.json").read_text())
    assert config["grid"]["policies"] == ["stale", "retransmit:1"] and "git_commit" in config
    one = out / "runs" / "stale" / "p0.2" / "seed0" / "metrics.csv"  # a cell of one approach: the app's own folder
    before = one.read_bytes()
    assert main(["--resume", str(out), "-q", "--jobs", "1"]) == 0  # every cell finished: nothing runs again
    assert one.read_bytes() == before
    capsys.readouterr()
    for extra in (["--loss-probs", "0.5"], ["--", "--epochs", "3"]):  # they would not apply: refused
        with pytest.raises(SystemExit) as exit_info:
            main(["--resume", str(out), "-q", *extra])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "would not apply" in err[0] and (extra[0] in err[0] or "after --" in err[0]), err
    assert one.read_bytes() == before

    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("apps.robustness.__main__._write_results", ctrl_c)  # a Ctrl-C while the results are written
    assert main(["--resume", str(out), "-q"]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "interrupted while writing the results" in err[0] and f"--resume {out}" in err[0], err


def test_diverged_points_are_results_not_failures(tmp_path):
    from apps.robustness.sweep import Row

    rows = [Row("stale", 0.1, s, "d-sgd", math.nan if s == 1 else 0.5 + s, 0.1, s == 1) for s in range(3)]
    rows.append(Row("stale", 0.2, 0, "d-sgd", math.nan, math.nan, True))
    pts = {(q["loss_prob"]): q for q in points(rows)}
    assert pts[0.1]["diverged"] == 1 and pts[0.1]["mean"] == pytest.approx(1.5) and pts[0.1]["seeds"] == 3
    assert pts[0.1]["min"] == 0.5 and pts[0.1]["max"] == 2.5
    assert pts[0.2]["diverged"] == 1 and math.isnan(pts[0.2]["mean"])
