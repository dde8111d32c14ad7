"""apps.figures on small synthetic run directories (the ``runs`` fixture of conftest.py): every figure, Table I,
and the missing-run report."""

import csv
import json

import pytest

from apps.figures import plots
from apps.figures.__main__ import draw, main


def test_draws_every_figure_and_table(runs, tmp_path):
    out = tmp_path / "figures"
    written, missing = draw(runs, out, widths=(3, 4, 1), batch_size=5, consensus_rounds=2)
    assert missing == []
    names = {p.name for p in written}
    for stem in ("fig2a_node_regression", "fig2b_power_allocation", "fig2c_link_scheduling"):
        assert {f"{stem}.png", f"{stem}.pdf"} <= names
        assert (out / f"{stem}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert (out / f"{stem}.pdf").read_bytes()[:5] == b"%PDF-"
    with open(out / "table1.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 5
    for row in rows:  # measured rounds equal Table I's formula for L = 2, B = 5, K = 2
        assert row["rounds_measured"] == row["rounds_formula_value"]
    assert [int(r["rounds_measured"]) for r in rows] == [10, 25, 17, 13, 11]
    assert [r["rounds_in_runs"] for r in rows] == ["200", "201", "", "201", "201"]
    markdown = (out / "table1.md").read_text()
    assert markdown.count("\n|") == 7 and "LB + L - 1" in markdown


def test_missing_runs_are_named_and_the_rest_is_drawn(runs, tmp_path, capsys):
    import shutil

    shutil.rmtree(runs / "power_allocation")
    shutil.rmtree(runs / "node_regression" / "d-adam")
    out = tmp_path / "figures"
    status = main(["--runs", str(runs), "--out", str(out), "-q"])
    assert status == 1
    err = capsys.readouterr().err
    assert "power_allocation/c-adam" in err and "node_regression/d-adam" in err
    assert "d-gcp-adam" not in err  # an extra curve, drawn when present, never missing
    assert (out / "fig2a_node_regression.png").is_file() and (out / "fig2c_link_scheduling.pdf").is_file()
    assert not (out / "fig2b_power_allocation.png").exists()


def test_nonexistent_runs_folder_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--runs", str(tmp_path / "nope")])
    assert stop.value.code == 2
    assert "does not exist" in capsys.readouterr().err


def test_fig2b_draws_a_run_in_progress_from_its_config(runs, tmp_path, monkeypatch):
    run = runs / "power_allocation" / "d-adam"
    (run / "summary.json").unlink()  # still training: metrics.csv and config.json only
    out = tmp_path / "figures"
    out.mkdir()
    _, missing = plots.fig2b(runs, out)
    assert missing == [str(run)]  # no bandwidth without a config
    (run / "config.json").write_text(json.dumps({"dataset": {"bandwidth_hz": 5e6}}))
    written, missing = plots.fig2b(runs, out)
    assert missing == [] and (out / "fig2b_power_allocation.png").is_file()
    legends = []
    real_save = plots._save

    def save(plt, fig, out, stem):
        legends.append([t.get_text() for t in fig.axes[0].get_legend().texts])
        return real_save(plt, fig, out, stem)

    monkeypatch.setattr(plots, "_save", save)
    plots.fig2b(runs, out)
    assert "UWMMSE, D-Adam (in progress: epoch 4)" in legends[0] and "WMMSE-Tr" in legends[0]
