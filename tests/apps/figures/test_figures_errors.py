"""apps.figures error paths, in process: bad flags (status 2), bad run files and empty runs folders (status 1),
each one line on stderr and nothing half-written; a missing --out folder is created with its parents."""

import csv
import json

import pytest

from apps.figures.__main__ import main


def run_main(argv, capsys):
    """(exit status, stderr lines) of ``main(argv)``, whether it returns or exits."""
    try:
        status = main(argv)
    except SystemExit as stop:
        status = stop.code
    return status, capsys.readouterr().err.splitlines()


def files_under(folder):
    return sorted(p.relative_to(folder) for p in folder.rglob("*"))


@pytest.mark.parametrize("flags, message", [
    (["--seed", "-1"], "argument --seed: must be an integer >= 0, got -1"),
    (["--seed", "1.5"], "argument --seed: must be an integer, got '1.5'"),
    (["--seed", "x"], "argument --seed: must be an integer, got 'x'"),
    (["--out", "{tmp}/a_file"], "--out: {tmp}/a_file is a file, not a folder"),
    (["--out", "{tmp}/a_file/figures"], "--out: cannot create {tmp}/a_file/figures: {tmp}/a_file is a file"),
    (["--runs", "{tmp}/a_file"], "--runs: {tmp}/a_file is a file, not a folder"),
    (["--quick", "--runs", "{tmp}/a_file/runs"], "--runs: cannot create {tmp}/a_file/runs: {tmp}/a_file is a file"),
    (["--runs", "{tmp}/nope"], "runs folder {tmp}/nope does not exist (run with --quick or --reproduce to create it)"),
])
def test_bad_flags_are_one_line_with_status_2_and_nothing_written(runs, tmp_path, capsys, flags, message):
    (tmp_path / "a_file").write_text("keep me")
    before = files_under(tmp_path)
    flags = [f.format(tmp=tmp_path) for f in flags]
    status, err = run_main(["--runs", str(runs), *flags] if "--runs" not in flags else flags, capsys)
    assert status == 2
    assert err == [f"python -m apps.figures: error: {message.format(tmp=tmp_path)} (see --help)"]
    assert files_under(tmp_path) == before and (tmp_path / "a_file").read_text() == "keep me"


def test_bad_run_files_are_skipped_one_line_each_and_counted_as_missing(runs, tmp_path, capsys):
    nr, pa, ls = runs / "node_regression", runs / "power_allocation", runs / "link_scheduling"
    (nr / "c-sgd" / "summary.json").write_text("{not json")
    (nr / "c-adam" / "summary.json").write_text(json.dumps({"mp_rounds_per_batch": "200"}))
    (nr / "d-sgd" / "metrics.csv").write_text("epoch,step,mp_rounds\n0,0,0\n")
    (nr / "d-adam" / "metrics.csv").write_bytes(b"\xff\xfe\x00\x01")
    (pa / "c-adam" / "summary.json").write_text("[1, 2]")
    (pa / "d-adam" / "summary.json").unlink()  # in progress: the bandwidth must come from config.json
    (pa / "d-adam" / "config.json").write_text(json.dumps({"dataset": {"bandwidth_hz": "5 MHz"}}))
    (pa / "d-gcp-adam" / "summary.json").write_text(json.dumps({"bandwidth_hz": 5e6, "wmmse_test_sum_rate": "x"}))
    metrics = ls / "c-adam" / "metrics.csv"
    metrics.write_text(metrics.read_text().replace("\n1,", "\nabc,", 1))
    metrics = ls / "d-adam" / "metrics.csv"
    metrics.write_text(metrics.read_text().replace("\n19,", "\nnan,", 1))
    out = tmp_path / "figures"

    status, err = run_main(["--runs", str(runs), "--out", str(out), "-q"], capsys)

    assert status == 1
    skipped = [line for line in err if line.startswith("python -m apps.figures: skipped ")]
    problems = [line.removeprefix("python -m apps.figures: skipped ") for line in skipped]
    assert problems == [
        f"{nr}/c-sgd/summary.json: not valid JSON (Expecting property name enclosed in double quotes: line 1 "
        "column 2 (char 1))",
        f'{nr}/c-adam/summary.json: mp_rounds_per_batch must be an integer >= 0, got "200"',
        f"{nr}/d-sgd/metrics.csv: no column test_mse in the header",
        f"{nr}/d-adam/metrics.csv: not a readable CSV file ('utf-8' codec can't decode byte 0xff in position 0: "
        "invalid start byte)",
        f"{pa}/c-adam/summary.json: not a JSON object (a JSON list)",
        f'{pa}/d-gcp-adam/summary.json: wmmse_test_sum_rate must be a finite number, got "x"',
        f'{pa}/d-adam/config.json: dataset.bandwidth_hz is "5 MHz", not a positive number',
        f"{ls}/c-adam/metrics.csv: line 3: epoch is 'abc', not a number",
        f"{ls}/d-adam/metrics.csv: line 21: epoch is 'nan', not a finite number",
    ]
    assert len(err) == len(skipped) + 1  # and the line of missing runs, which names every skipped run
    for run in (nr / "c-sgd", nr / "c-adam", nr / "d-sgd", nr / "d-adam", pa / "c-adam", pa / "d-adam",
                pa / "d-gcp-adam", ls / "c-adam", ls / "d-adam"):
        assert str(run) in err[-1]
    assert "Traceback" not in "".join(err)
    assert {p.name for p in out.iterdir()} == {  # Fig. 2b and 2c have no usable run left: not drawn
        "fig2a_node_regression.png", "fig2a_node_regression.pdf", "table1.csv", "table1.md"}
    with open(out / "table1.csv") as f:  # the skipped c-sgd and d-sgd runs give no "in runs" rounds
        assert [row["rounds_in_runs"] for row in csv.DictReader(f)] == ["", "80", "", "42", ""]


@pytest.mark.parametrize("content", ["empty", "bad runs only"])
def test_nothing_to_draw_says_so_and_writes_nothing(tmp_path, capsys, content):
    runs = tmp_path / "runs"
    runs.mkdir()
    expected = []
    if content == "bad runs only":
        run = runs / "link_scheduling" / "d-adam"
        run.mkdir(parents=True)
        (run / "metrics.csv").write_text("")
        expected = [f"python -m apps.figures: skipped {run}/metrics.csv: empty, not even a header line"]
    out = tmp_path / "figures"

    status, err = run_main(["--runs", str(runs), "--out", str(out)], capsys)

    assert status == 1
    assert err == [*expected, f"python -m apps.figures: nothing to draw: no usable run under {runs} (expected "
                   "<app>/<approach>/metrics.csv or <app>/<timestamp>/<approach>/metrics.csv; create them with --quick "
                   "or --reproduce); no figure or table written"]
    assert not out.exists()  # no empty Table I, no empty figure, not even the folder


def test_missing_out_parents_are_created(runs, tmp_path, capsys):
    out = tmp_path / "not" / "yet" / "there"
    status, err = run_main(["--runs", str(runs), "--out", str(out), "-q"], capsys)
    assert (status, err) == (0, [])
    assert {p.name for p in out.iterdir()} >= {"fig2a_node_regression.png", "fig2b_power_allocation.pdf",
                                               "fig2c_link_scheduling.png", "table1.csv", "table1.md"}


def test_a_run_with_a_corrupt_config_is_skipped_naming_the_file(runs, tmp_path, capsys):
    """The legends and titles read config.json: a run whose config.json is not JSON is skipped, not drawn
    with its labels silently lost."""
    config = runs / "power_allocation" / "d-adam" / "config.json"
    config.write_text(config.read_text()[:20])
    status, err = run_main(["--runs", str(runs), "--out", str(tmp_path / "figures"), "-q"], capsys)
    assert status == 1
    assert err[0].startswith(f"python -m apps.figures: skipped {config}: not valid JSON (")
    assert err[1].startswith("python -m apps.figures: missing runs") and str(config.parent) in err[1]


@pytest.mark.parametrize("flags, saved", [(["--seed", "1"], {"seed": 0, "preset": "quick"}),
                                          ([], {"seed": 0, "preset": "paper"}),
                                          ([], {"seed": 0})])  # (no preset saved: the paper's)
def test_quick_refuses_to_continue_runs_of_another_seed_or_preset(tmp_path, capsys, flags, saved):
    """--quick and --reproduce continue the runs in --runs: one started with another --seed or preset is
    refused (exit status 2) before any app runs, instead of being drawn under this command's settings."""
    target = tmp_path / "runs" / "node_regression"
    target.mkdir(parents=True)
    (target / "config.json").write_text(json.dumps({"app": "node_regression", "flags": saved}))
    before = files_under(tmp_path)
    status, err = run_main(["--quick", "--runs", str(tmp_path / "runs"), *flags, "-q"], capsys)
    name, value = ("seed", 0) if flags else ("preset", saved.get("preset", "paper"))
    wanted = 1 if flags else "quick"
    assert status == 2
    assert err == [f"python -m apps.figures: error: {target} holds a run with {name} {value}, not {wanted}, which "
                   "this command would continue; remove that folder or choose another --runs"]
    assert files_under(tmp_path) == before
