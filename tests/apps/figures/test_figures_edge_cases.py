"""apps.figures on edge cases QA found: node-regression runs that diverged in their first epoch (nothing a log
axis can show), a config.json naming its approach with a list, an --out that cannot be written (found before
anything runs), and the --help / --seed texts."""

import json
import os

import pytest

from apps.figures import plots
from apps.figures.__main__ import main, parse_args
from tests.apps.figures.conftest import write_run
from tests.apps.figures.figure_legends import legends

PROG = "python -m apps.figures"


def run_main(argv, capsys):
    try:
        status = main(argv)
    except SystemExit as stop:
        status = stop.code
    captured = capsys.readouterr()
    return status, captured.out, captured.err.splitlines()


def diverged_in_first_epoch(runs):
    """What `apps.node_regression --lr 1e4 --optimizer c-sgd,d-sgd` writes: the initial model at 0 rounds only."""
    for name in ("c-sgd", "d-sgd"):
        write_run(runs / "node_regression" / "20261201-100000" / name, ("epoch", "step", "mp_rounds", "test_mse"),
                  [{"epoch": 0, "step": 0, "mp_rounds": 0, "test_mse": 761.06}],
                  {"mp_rounds_per_batch": 40, "diverged": {"epoch": 1, "last_finite_epoch": 0, "step": 10}},
                  {"app": "node_regression", "optimizer": name, "flags": {"batch_size": 20, "consensus_rounds": 1}})


def test_runs_that_diverged_in_their_first_epoch_are_named_and_the_other_figures_still_drawn(runs, tmp_path, capsys,
                                                                                          monkeypatch):
    nr = runs / "node_regression"
    for child in nr.iterdir():  # only the diverged runs for Fig. 2a; Fig. 2b and 2c keep theirs
        os.rename(child, tmp_path / f"old-{child.name}")
    diverged_in_first_epoch(runs)
    seen = legends(monkeypatch)
    out = tmp_path / "figures"
    status, stdout, err = run_main(["--runs", str(runs), "--out", str(out), "-q"], capsys)
    assert status == 1  # the other five node-regression approaches are missing
    assert len(err) == 1 and err[0].startswith(f"{PROG}: missing runs")
    assert {p.name for p in out.iterdir()} == {f"{stem}.{ext}" for ext in ("png", "pdf") for stem in
                                               ("fig2a_node_regression", "fig2b_power_allocation",
                                                "fig2c_link_scheduling")} | {"table1.csv", "table1.md"}
    why = "diverged at epoch 1; not drawn: no point at message-passing rounds > 0"
    assert seen["fig2a_node_regression"][:2] == [f"C-SGD ({why})", f"D-SGD ({why})"]
    assert seen["fig2a_node_regression titles"][0].startswith("No run has a point after 0 message-passing rounds")


def test_a_diverged_run_next_to_a_drawable_one_is_named_and_the_other_drawn(runs, tmp_path, monkeypatch):
    write_run(runs / "node_regression" / "d-adam-diverged", ("epoch", "step", "mp_rounds", "test_mse"),
              [{"epoch": 0, "step": 0, "mp_rounds": 0, "test_mse": 5.0}],
              {"mp_rounds_per_batch": 41, "diverged": {"epoch": 1}},
              {"optimizer": "d-adam", "started": "2027-01-01T00:00:00+0000"})  # newer than the fixture's d-adam
    seen = legends(monkeypatch)
    _, missing = plots.fig2a(runs, tmp_path / "out")
    assert missing == []
    assert "D-Adam (diverged at epoch 1; not drawn: no point at message-passing rounds > 0)" in seen[
        "fig2a_node_regression"]
    assert "C-SGD" in seen["fig2a_node_regression"]


@pytest.mark.parametrize("key, value", [("optimizer", ["d-sgd"]), ("optimizer", {"name": "d-sgd"}),
                                        ("approach", 3)])
def test_a_config_naming_its_approach_with_a_non_string_is_skipped_naming_the_file(runs, tmp_path, capsys, nr_run,
                                                                                   key, value):
    run = runs / "node_regression" / "my-run"
    nr_run(run, "d-sgd")
    config = run / "config.json"
    document = json.loads(config.read_text())
    del document["optimizer"]
    config.write_text(json.dumps({**document, key: value}))
    status, _, err = run_main(["--runs", str(runs), "--out", str(tmp_path / "figures"), "-q"], capsys)
    assert status == 1  # a skipped run is reported as such, even though the fixture's d-sgd stands in for it
    assert err == [f"{PROG}: skipped {config}: {key} must be a string, got {json.dumps(value)}"]
    assert plots.find_runs(runs / "node_regression", ["d-sgd"]) == {"d-sgd": runs / "node_regression" / "d-sgd"}


def unwritable(monkeypatch, folder):
    """Make creating anything in ``folder`` fail as on /proc or a read-only mount (os.access passes as root)."""
    import tempfile

    real = tempfile.mkdtemp

    def mkdtemp(*args, dir=None, **kwargs):
        if dir is not None and os.path.abspath(dir) == str(folder):
            raise OSError(30, "Read-only file system", str(dir))
        return real(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "mkdtemp", mkdtemp)


@pytest.mark.parametrize("quick", [False, True])
def test_an_unwritable_out_is_refused_before_anything_runs_or_is_read(runs, tmp_path, capsys, monkeypatch, quick):
    from apps.figures import __main__ as figures

    locked = tmp_path / "locked"
    locked.mkdir()
    unwritable(monkeypatch, locked)
    monkeypatch.setattr(figures, "run_experiments", lambda *a: pytest.fail("ran the experiments"))
    monkeypatch.setattr(figures, "draw", lambda *a, **k: pytest.fail("read the runs"))
    before = sorted(tmp_path.rglob("*"))
    flags = ["--quick", "--runs", str(tmp_path / "new-runs")] if quick else ["--runs", str(runs)]
    status, _, err = run_main([*flags, "--out", str(locked / "figures" / "a"), "-q"], capsys)
    assert status == 2
    assert err == [f"{PROG}: error: --out: cannot write into {locked} (read-only file system) (see --help)"]
    assert sorted(tmp_path.rglob("*")) == before  # nothing created, not even an empty folder


def test_an_out_on_a_virtual_file_system_is_refused(runs, capsys):
    if not os.path.isdir("/proc/self"):
        pytest.skip("no /proc")
    status, _, err = run_main(["--runs", str(runs), "--out", "/proc/qa_out", "-q"], capsys)
    assert status == 2
    assert len(err) == 1 and err[0].startswith(f"{PROG}: error: --out: cannot write into /proc (")


def test_the_write_check_leaves_a_writable_out_as_it_was(runs, tmp_path, capsys):
    out = tmp_path / "figures"
    out.mkdir()
    parse_args(["--runs", str(runs), "--out", str(out / "deeper")])
    assert list(out.iterdir()) == []


def test_help_gives_the_runs_layout_exit_statuses_and_resuming(capsys):
    with pytest.raises(SystemExit) as stop:
        parse_args(["--help"])
    assert stop.value.code == 0
    text = capsys.readouterr().out
    assert "    <runs>/<app>/<approach>/ " in text and "    <runs>/<app>/<timestamp>/<approach>/ " in text
    flat = " ".join(text.split())
    for part in ("exit status: 0 every figure and Table I drawn; 1 some runs missing", "2 bad flags",
                 "130 interrupted", "continued with the app's --resume", "ignored, with a note"):
        assert part in flat


@pytest.mark.parametrize("flags, note", [(["--seed", "3"], True), ([], False)])
def test_seed_without_quick_or_reproduce_says_it_is_ignored(runs, tmp_path, capsys, flags, note):
    args = parse_args(["--runs", str(runs), "--out", str(tmp_path / "f"), *flags])
    assert capsys.readouterr().err.splitlines() == (
        [f"{PROG}: note: --seed is ignored without --quick or --reproduce (nothing is trained)"] if note else [])
    assert args.seed == (3 if flags else 0)


def test_seed_with_quick_is_passed_on_without_a_note(tmp_path, capsys):
    args = parse_args(["--quick", "--runs", str(tmp_path / "r"), "--seed", "4"])
    assert (args.seed, capsys.readouterr().err) == (4, "")
