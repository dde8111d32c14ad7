"""apps.figures on small synthetic run directories (the ``runs`` fixture of conftest.py): every figure, Table I
and its setting, the missing-run report, legends, and which experiments --quick / --reproduce ask for."""

import csv
import json
import shutil

import pytest

from apps.figures import plots
from apps.figures.__main__ import EXPERIMENTS, draw, experiment_command, main, resumed_elsewise
from tests.apps.figures.figure_legends import legends


def read_table(out):
    with open(out / "table1.csv") as f:
        return list(csv.DictReader(f))


def test_draws_every_figure_and_table_in_the_runs_setting(runs, tmp_path):
    out = tmp_path / "figures"
    written, missing = draw(runs, out)
    assert missing == []
    names = {p.name for p in written}
    for stem in ("fig2a_node_regression", "fig2b_power_allocation", "fig2c_link_scheduling"):
        assert {f"{stem}.png", f"{stem}.pdf"} <= names
        assert (out / f"{stem}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert (out / f"{stem}.pdf").read_bytes()[:5] == b"%PDF-"
    rows = read_table(out)
    assert len(rows) == 5
    # measured with the runs' own setting (B = 20, K = 1, L = 2), so every column compares like with like
    assert {(r["layers"], r["batch_size"], r["consensus_rounds"]) for r in rows} == {("2", "20", "1")}
    assert [int(r["rounds_measured"]) for r in rows] == [40, 80, 61, 42, 41]
    for row in rows:
        assert row["rounds_measured"] == row["rounds_formula_value"]
        assert row["rounds_in_runs"] in ("", row["rounds_measured"])
    assert [r["rounds_in_runs"] for r in rows] == ["40", "80", "", "42", "41"]
    markdown = (out / "table1.md").read_text()
    assert markdown.startswith("# Table I, measured with L = 2, B = 20, K = 1, g = (10, 10, 1)")
    assert "| measured (B = 20) | in runs (B = 20) |" in markdown
    assert markdown.count("\n|") == 7 and "LB + L - 1" in markdown


def test_table_header_states_its_b_and_runs_of_another_b_say_theirs(runs, tmp_path):
    out = tmp_path / "figures"
    draw(runs, out, widths=(3, 4, 1), batch_size=5, consensus_rounds=2)
    rows = read_table(out)
    assert [int(r["rounds_measured"]) for r in rows] == [10, 25, 17, 13, 11]  # the formulas at L = 2, B = 5, K = 2
    assert all(r["rounds_measured"] == r["rounds_formula_value"] and r["batch_size"] == "5" for r in rows)
    assert [r["runs_batch_size"] for r in rows] == ["20", "20", "", "20", "20"]
    markdown = (out / "table1.md").read_text()
    assert markdown.startswith("# Table I, measured with L = 2, B = 5, K = 2, g = (3, 4, 1)")
    assert "| measured (B = 5) | in runs |" in markdown  # no common B: each cell states its own
    cells = [line.split(" | ")[4] for line in markdown.splitlines() if line.startswith("| F")]
    assert cells == ["40 (B = 20)", "80 (B = 20, K = 1)", "", "42 (B = 20, K = 1)", "41 (B = 20)"]


def test_runs_without_a_common_setting_give_the_paper_setting(runs, tmp_path):
    (runs / "node_regression" / "c-sgd" / "config.json").unlink()
    out = tmp_path / "figures"
    draw(runs, out)
    markdown = (out / "table1.md").read_text()
    assert markdown.startswith("# Table I, measured with L = 2, B = 100, K = 1, g = (10, 10, 1)")
    assert "| 40 (B not recorded) |" in markdown and "| 41 (B = 20) |" in markdown


def test_missing_runs_are_named_and_the_rest_is_drawn(runs, tmp_path, capsys):
    import shutil

    shutil.rmtree(runs / "power_allocation")
    shutil.rmtree(runs / "node_regression" / "d-adam")
    out = tmp_path / "figures"
    status = main(["--runs", str(runs), "--out", str(out), "-q"])
    assert status == 1
    err = capsys.readouterr().err
    for name in ("c-adam", "d-adam", "d-gcp-adam"):
        assert f"power_allocation/{name}" in err
    assert "node_regression/d-adam (no run under" in err
    assert (out / "fig2a_node_regression.png").is_file() and (out / "fig2c_link_scheduling.pdf").is_file()
    assert not (out / "fig2b_power_allocation.png").exists()


def test_nonexistent_runs_folder_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--runs", str(tmp_path / "nope")])
    assert stop.value.code == 2
    assert "does not exist" in capsys.readouterr().err


def test_legends_name_optimizers_and_variants_and_titles_no_figure_number(runs, tmp_path, monkeypatch):
    seen = legends(monkeypatch)
    draw(runs, tmp_path / "figures")
    assert seen["fig2a_node_regression"] == ["C-SGD", "C-Adam", "D-naive (K = 1)", "D-naive-PB (K = 1)", "D-SGD",
                                             "D-Adam (DADAM)", "D-AMSGrad", "noise floor (0.01)"]
    assert seen["fig2b_power_allocation"] == ["C-Adam", "D-Adam (DADAM)", "D-GCP-Adam (K = 5)", "WMMSE", "WMMSE-Tr"]
    assert seen["fig2c_link_scheduling"] == ["C-Adam", "D-Adam (authors' variant)", "test",
                                             "train, mean of 5 mini-batches", "train, each mini-batch", "LGS"]
    assert seen["fig2b_power_allocation titles"] == [""]  # every curve above WMMSE-Tr: no note


def test_fig2b_says_why_a_curve_ends_below_wmmse_tr(runs, tmp_path, monkeypatch):
    summary = runs / "power_allocation" / "d-adam" / "summary.json"
    summary.write_text(json.dumps({**json.loads(summary.read_text()), "wmmse_tr_test_sum_rate": 18.0}))
    for name in ("c-adam", "d-gcp-adam"):  # the D-Adam run is the newest: its baselines are drawn
        path = runs / "power_allocation" / name / "config.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), "started": "2026-11-30T10:00:00+0000"}))
    seen = legends(monkeypatch)
    plots.fig2b(runs, tmp_path)
    note, = seen["fig2b_power_allocation titles"]
    assert "\nD-Adam (DADAM) ends below WMMSE-Tr after 4 epochs: the nodes' local gradients are very uneven" in note
    assert note.count("ends below") == 3  # 16 + log(5) < 18 for all three


def test_fig2b_says_why_a_distributed_curve_trails_c_adam(runs, tmp_path, monkeypatch):
    metrics = runs / "power_allocation" / "d-adam" / "metrics.csv"
    metrics.write_text("epoch,test_sum_rate\n0,16.0\n1,16.5\n")  # +0.03 over WMMSE-Tr, C-Adam +1.14
    seen = legends(monkeypatch)
    plots.fig2b(runs, tmp_path)
    note, = seen["fig2b_power_allocation titles"]
    assert note.startswith("D-Adam (DADAM) trails C-Adam after 1 epoch: ") and "D-GCP-Adam" not in note.split(":")[0]
    assert " ".join(note.split()).endswith("; D-GCP-Adam, gradient consensus before the Adam step, keeps up with "
                                           "C-Adam.")  # as drawn (the note is wrapped)
    shutil.rmtree(runs / "power_allocation" / "d-gcp-adam")  # not drawn: the note does not claim it
    seen = legends(monkeypatch)
    plots.fig2b(runs, tmp_path)
    note, = seen["fig2b_power_allocation titles"]
    assert note.startswith("D-Adam (DADAM) trails C-Adam after 1 epoch: ") and "D-GCP-Adam" not in note


def test_fig2b_draws_a_run_in_progress_from_its_config(runs, tmp_path, monkeypatch):
    run = runs / "power_allocation" / "d-adam"
    (run / "summary.json").unlink()  # still training: metrics.csv and config.json only
    out = tmp_path / "figures"
    out.mkdir()
    _, missing = plots.fig2b(runs, out)
    assert missing == [str(run)]  # no bandwidth without the dataset's in its config
    (run / "config.json").write_text(json.dumps({"dataset": {"bandwidth_hz": 5e6}}))
    written, missing = plots.fig2b(runs, out)
    assert missing == [] and (out / "fig2b_power_allocation.png").is_file()
    seen = legends(monkeypatch)
    plots.fig2b(runs, out)
    assert "D-Adam (in progress: epoch 4)" in seen["fig2b_power_allocation"]
    assert "WMMSE-Tr" in seen["fig2b_power_allocation"]


def test_moving_average_is_centred_and_shrinks_at_the_ends():
    import numpy as np

    assert plots.moving_average(np.arange(6.0), 3).tolist() == [0.5, 1, 2, 3, 4, 4.5]
    assert plots.moving_average(np.array([1.0, np.nan, 3.0]), 3).tolist() == [1, 2, 3]
    assert [plots.smoothing_window(n) for n in (20, 55, 201, 501)] == [5, 5, 11, 25]


# ---------------------------------------------------------------------------- what --quick / --reproduce run
def commands(tmp_path, preset):
    return {folder: experiment_command(tmp_path, folder, module, optimizers, extra, preset, 0, True)
            for folder, module, optimizers, extra in EXPERIMENTS}


def flag(command, name):
    return command[command.index(name) + 1]


@pytest.mark.parametrize("preset", ["quick", "paper"])
def test_fig2b_runs_c_adam_dadam_and_d_gcp_adam_and_fig2c_the_authors_d_adam(tmp_path, preset):
    command = commands(tmp_path, preset)
    pa, ls = command["power_allocation"], command["link_scheduling"]
    assert flag(pa, "--optimizer") == "c-adam,d-adam,d-gcp-adam" and flag(pa, "--consensus-rounds") == "5"
    assert "--d-adam-variant" not in pa  # D-Adam of Fig. 2b is DADAM, the default
    assert flag(ls, "--optimizer") == "c-adam,d-adam" and flag(ls, "--d-adam-variant") == "authors"
    assert flag(command["node_regression"], "--optimizer") == "all"
    assert all(flag(c, "--preset") == preset and flag(c, "--out") == str(tmp_path / f) for f, c in command.items())


def test_d_adam_defaults_to_dadam_in_every_app():
    import importlib

    for app in ("node_regression", "power_allocation", "link_scheduling"):
        assert importlib.import_module(f"apps.{app}.experiment").build_parser().parse_args([]).d_adam_variant == "paper"


def test_a_run_to_resume_says_if_it_trains_other_approaches(tmp_path):
    run = tmp_path / "power_allocation"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"flags": {"optimizer": ["c-adam", "d-adam"]}}))
    assert flag(commands(tmp_path, "quick")["power_allocation"], "--resume") == str(run)
    note = resumed_elsewise(run, "c-adam,d-adam,d-gcp-adam")
    assert note == (f"python -m apps.figures: note: {run} holds a run of c-adam,d-adam, not c-adam,d-adam,d-gcp-adam; "
                    f"it is continued as it is (remove that folder to run c-adam,d-adam,d-gcp-adam)")
    assert resumed_elsewise(run, "c-adam,d-adam") is None
