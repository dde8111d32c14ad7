"""Which run apps.figures draws: the newest of each approach under <runs>/<app>/, in the layout --quick and
--reproduce write (<app>/<approach>/), the apps' default one (<app>/<timestamp>/<approach>/) or a single
approach run given its own --out; newest by config.json's start time, else by the folder's mtime."""

import json
import os

from apps.figures import plots
from apps.figures.__main__ import draw, main


def test_the_newest_run_of_each_approach_is_found_in_every_layout(tmp_path, nr_run):
    app = tmp_path / "node_regression"
    nr_run(app / "c-sgd", "c-sgd", started="2026-12-01T09:00:00+0000")  # --quick's layout
    nr_run(app / "20261201-100000" / "c-sgd", "c-sgd", started="2026-12-01T10:00:00+0000")
    nr_run(app / "20261201-100000" / "d-sgd", "d-sgd", started="2026-12-01T10:00:00+0000")
    nr_run(app / "20261201-080000" / "d-sgd", "d-sgd", started="2026-12-01T08:00:00+0000")
    nr_run(app / "my-d-adam", "d-adam", started="2026-12-01T07:00:00+0000")  # --out my-d-adam
    nr_run(app / "20261201-110000" / "d-adam", "d-adam", started="2026-12-01T06:00:00+0100")  # 05:00 UTC
    (app / "20261201-120000" / "c-adam").mkdir(parents=True)  # started, nothing logged yet: not a candidate
    assert plots.find_runs(app, plots.NODE_REGRESSION) == {
        "c-sgd": app / "20261201-100000" / "c-sgd", "d-sgd": app / "20261201-100000" / "d-sgd",
        "d-adam": app / "my-d-adam"}


def test_without_a_start_time_the_folder_mtime_decides(tmp_path, nr_run):
    app = tmp_path / "node_regression"
    for group, mtime in (("a", 2_000_000_000), ("b", 1_900_000_000)):
        run = app / group / "c-sgd"
        nr_run(run, "c-sgd")
        (run / "config.json").write_text("{not json")  # no usable start time
        os.utime(run, (mtime, mtime))
    assert plots.find_runs(app, ["c-sgd"]) == {"c-sgd": app / "a" / "c-sgd"}
    os.utime(app / "b" / "c-sgd", (2_100_000_000, 2_100_000_000))
    assert plots.find_runs(app, ["c-sgd"]) == {"c-sgd": app / "b" / "c-sgd"}


def test_figures_and_table_read_the_newest_runs(runs, tmp_path, capsys, nr_run):
    newer = runs / "node_regression" / "20261202-090000"
    for name in plots.NODE_REGRESSION:  # a newer group run in the default layout, with its own counts
        nr_run(newer / name, name, rounds=1000 + plots.NODE_REGRESSION.index(name),
                            started="2026-12-02T09:00:00+0000")
    older = runs / "power_allocation" / "20261101-090000" / "d-gcp-adam"
    older.mkdir(parents=True)
    (older / "metrics.csv").write_text("epoch,test_sum_rate\n0,not a number\n")  # older than the one drawn: unread
    (older / "config.json").write_text(json.dumps({"started": "2026-11-01T09:00:00+0000"}))
    assert {name: r["rounds"] for name, r in plots.rounds_in_runs(runs).items()} == {
        name: 1000 + k for k, name in enumerate(plots.NODE_REGRESSION)}
    assert main(["--runs", str(runs), "--out", str(tmp_path / "figures"), "-q"]) == 0
    assert capsys.readouterr().err == ""


def test_only_timestamped_runs_are_enough(runs, tmp_path):
    """``python -m apps.<app>`` without --out writes runs/<app>/<timestamp>/<approach>/: drawn as they are."""
    for app in ("node_regression", "power_allocation", "link_scheduling"):
        folder = runs / app
        stamp = folder / "20261201-101500"
        stamp.mkdir()
        for run in [p for p in folder.iterdir() if p != stamp]:
            run.rename(stamp / run.name)
        (stamp / "config.json").write_text(json.dumps({"app": app, "grouped": True}))
    written, missing = draw(runs, tmp_path / "figures")
    assert missing == [] and len(written) == 8


def test_runs_folders_with_nothing_usable_exit_1(tmp_path, capsys):
    runs = tmp_path / "runs"
    (runs / "power_allocation" / "20261201-101500" / "c-adam").mkdir(parents=True)  # a run killed before its first row
    (runs / "node_regression").mkdir()
    status = main(["--runs", str(runs), "--out", str(tmp_path / "figures")])
    assert status == 1
    assert "nothing to draw" in capsys.readouterr().err
    assert not (tmp_path / "figures").exists()
