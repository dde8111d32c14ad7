"""The robustness sweep's checks before anything runs (flags after --, a saved grid, the dataset, --help), the
results a failed resume keeps, and the figure of a sweep whose every point diverged. No app runs here."""

from __future__ import annotations

import csv
import json
import math
import os

import pytest

from apps.robustness.__main__ import (
    IN_PROCESS_ONLY,
    OWN_FLAGS,
    _write_results,
    build_parser,
    check_app_flags,
    main,
    make_grid,
    parse_args,
)
from apps.robustness.sweep import APPS, Grid
from datasets.cli import OneLineErrorParser


def status_of(argv) -> int:
    try:
        return main(argv)
    except SystemExit as exc:
        return exc.code


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_the_toolkit_parsers_refuse_abbreviated_flags(capsys):
    parser = OneLineErrorParser(prog="p")
    parser.add_argument("--epochs")
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args(["--ep", "3"])
    assert exit_info.value.code == 2 and "unrecognized arguments: --ep" in one_error_line(capsys)


@pytest.mark.parametrize("app_flags, message", [
    (["--loss-p", "0.3"], "--loss-prob after -- is set by the sweep itself; use the sweep's own --loss-probs"),
    (["--loss-prob=0.3"], "--loss-prob after -- is set by the sweep itself"),
    (["--loss-m", "gilbert"], "--loss-model after -- is set by the sweep itself"),
    (["--epochs", "1", "--back", "mpi"], "--backend after -- would not apply"),
    (["--parti=metis"], "--partition after -- would not apply"),
])
def test_refused_app_flags_are_refused_abbreviated_or_with_a_value(tmp_path, capsys, app_flags, message):
    out = tmp_path / "sweep"
    assert status_of(["--quick", "--out", str(out), "--", *app_flags]) == 2
    assert message in one_error_line(capsys)
    assert not out.exists()


def test_no_app_flag_is_a_prefix_of_a_refused_one():
    """What refused_flag relies on to read a prefix as an abbreviation of a refused flag."""
    import importlib

    refused = (*OWN_FLAGS, *IN_PROCESS_ONLY)
    for spec in APPS.values():
        parser = importlib.import_module(spec.module + ".experiment").build_parser()
        flags = {o for a in parser._actions for o in a.option_strings}
        assert not [(f, r) for f in flags for r in refused if r != f and r.startswith(f)]


def test_an_abbreviated_sweep_flag_is_refused(tmp_path, capsys):
    assert status_of(["--loss-p", "0,0.1", "--out", str(tmp_path / "s")]) == 2
    assert "unrecognized arguments: --loss-p" in one_error_line(capsys)


def saved_sweep(tmp_path, **grid_changes):
    grid = make_grid(*parse_args(["--quick"]))
    config = {"app": "robustness", "grid": {**grid.as_dict(), **grid_changes}, "threads_per_run": 1}
    (tmp_path / "config.json").write_text(json.dumps(config))
    return tmp_path


@pytest.mark.parametrize("changes, message", [
    ({"app": "foo"}, "\"app\": invalid choice: 'foo'"),
    ({"loss_probs": [0.1, 2]}, "\"loss_probs\": must be a probability in [0, 1), got '2' (in '0.1,2')"),
    ({"policies": ["bogus"]}, "\"policies\": must be zero, stale or retransmit:R"),
    ({"optimizers": "d-sgd"}, "\"optimizers\" must be a list of names, got \"d-sgd\""),
    ({"optimizers": ["d-sgd", "c-sgd"]}, "\"optimizers\": c-sgd is centralized"),
    ({"seeds": True}, "\"seeds\" must be an integer, got true"),
    ({"seeds": 0}, "\"seeds\": must be a positive integer"),
    ({"reference": "c-foo"}, "\"reference\": must be a centralized approach"),
    ({"app_flags": "--epochs 3"}, "\"app_flags\" must be a list of strings"),
])
def test_a_bad_saved_grid_is_refused_on_resume_and_nothing_written(tmp_path, capsys, changes, message):
    folder = saved_sweep(tmp_path, **changes)
    assert status_of(["--resume", str(folder), "-q"]) == 2
    line = one_error_line(capsys)
    assert f"error: {folder / 'config.json'}: " in line and message in line, line
    assert sorted(p.name for p in folder.iterdir()) == ["config.json"]


def test_a_sweep_resumed_while_it_runs_is_told_to_wait(tmp_path, capsys):
    from core.runs import RunLock

    folder = saved_sweep(tmp_path)
    lock = RunLock(folder)  # as the running sweep holds it
    try:
        assert status_of(["--resume", str(folder), "-q"]) == 2
    finally:
        lock.release()
    assert one_error_line(capsys).endswith(f"is in use by another run (pid {os.getpid()}); wait for it to end")


def test_app_b_without_its_dataset_is_refused_before_anything_is_written(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no data/ here
    out = tmp_path / "sweep"
    assert status_of(["--app", "power_allocation", "--quick", "--out", str(out), "--", "--epochs", "1"]) == 2
    assert one_error_line(capsys).endswith("error: --data: data/power_allocation_quick.h5 does not exist; add "
                                           "--generate after -- to have the runs write it first")
    assert not out.exists()
    generating = make_grid(*parse_args(["--app", "power_allocation", "--quick", "--", "--epochs", "1", "--generate"]))
    assert check_app_flags(generating, out, resumed=False) == 1  # the runs write it: accepted


@pytest.mark.parametrize("argv, message", [
    (["--reference", "c-foo"], "argument --reference: must be a centralized approach (c-sgd or c-adam) or none, "
                               "got 'c-foo'"),
    (["--optimizer", "all"], "argument --optimizer: 'all' holds the centralized approaches"),
    (["--loss-probs", "1"], "argument --loss-probs: must be a probability in [0, 1), got '1' (see --help)"),
    (["--loss-probs", "0,1"], "got '1' (in '0,1')"),
])
def test_bad_grid_flags_are_named(tmp_path, capsys, argv, message):
    assert status_of([*argv, "--out", str(tmp_path / "s")]) == 2
    assert message in one_error_line(capsys)


def test_help_names_what_the_user_sees_and_the_exit_statuses():
    text = build_parser().format_help()
    assert "--resume DIR" in text and "apps.robustness." not in text
    assert "1 a run failed" in " ".join(text.split())


def write_summary(path, final):
    path.mkdir(parents=True, exist_ok=True)
    (path / "summary.json").write_text(json.dumps({"final_test_mse": final, "best_test_mse": final}))


def test_a_failed_resume_keeps_the_earlier_rows_of_its_failed_cells(tmp_path):
    grid = Grid("node_regression", ("d-sgd",), (0.0, 0.1), ("stale",), 1, 1, 0, (), "")
    lossless, lossy = grid.cells()
    write_summary(lossless.path(tmp_path), 0.5)
    previous = [{"policy": "stale", "loss_prob": p, "seed": 0, "optimizer": "d-sgd", "label": "D-SGD", "final": f,
                 "best": f, "diverged": 0, "loss_rate": p, "extra_rounds": 0, "mp_rounds": 10} for p, f in
                ((0.0, 0.4), (0.1, 0.7))]
    with open(tmp_path / "sweep.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, list(previous[0]))
        writer.writeheader()
        writer.writerows(previous)
    _write_results(grid, tmp_path, quiet=True, failed={lossy: 1})  # the lossy cell's summary is gone: it failed
    with open(tmp_path / "sweep.csv", newline="") as f:
        rows = {float(r["loss_prob"]): float(r["final"]) for r in csv.DictReader(f)}
    assert rows == {0.0: 0.5, 0.1: 0.7}  # the good cell's new result, the failed cell's earlier one
    with open(tmp_path / "points.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == 2
    _write_results(grid, tmp_path, quiet=True)  # no failure: only what the runs hold
    with open(tmp_path / "sweep.csv", newline="") as f:
        assert [float(r["loss_prob"]) for r in csv.DictReader(f)] == [0.0]


def test_a_figure_whose_every_point_diverged_explains_its_marks(tmp_path, monkeypatch):
    import apps.robustness.plots as plots

    figures = []
    monkeypatch.setattr(plots, "save_figure", lambda plt, fig, out, stem: figures.append(fig) or [])
    pts = [{"policy": "stale", "loss_prob": p, "optimizer": "d-sgd", "label": "D-SGD", "seeds": 1, "diverged": 1,
            "mean": math.nan, "min": math.nan, "max": math.nan, "loss_rate": p, "mp_rounds": 10.0} for p in (0.1, 0.3)]
    plots.plot_sweep(pts, tmp_path, ("stale",), ("d-sgd",), "", "final test MSE", True, "final_test_mse", "t")
    fig, = figures
    ax = fig.axes[0]
    assert plots.DIVERGED in [t.get_text() for legend in fig.legends for t in legend.get_texts()]
    assert list(ax.get_yticks()) == [] and ax.get_yscale() == "linear"
    assert any("every run diverged" in t.get_text() for t in ax.texts)

