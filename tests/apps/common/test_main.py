"""apps.common.main.run_experiment: the exit statuses and messages every app main shares."""

import argparse
import signal
from types import SimpleNamespace

import pytest

from apps.common.main import run_experiment


class Corrupt(Exception):
    pass


def parse(argv):
    return argparse.Namespace(quiet="-q" in argv, outcome=argv[0], out="runs/x")


def plan(args):
    if args.outcome == "bad":
        raise ValueError("--lr must be positive")
    return SimpleNamespace(out=args.out, outcome=args.outcome, resume=False)


def execute(p):
    if p.outcome == "interrupt":
        raise KeyboardInterrupt
    if p.outcome == "terminate":  # run the installed SIGTERM handler as the interpreter would (no real
        signal.getsignal(signal.SIGTERM)(signal.SIGTERM, None)  # signal: a failure must not kill pytest)
        raise AssertionError("the SIGTERM handler did not interrupt the run")
    if p.outcome == "corrupt":
        raise Corrupt("batch 7 has NaN")
    return {"a": 1}


@pytest.mark.parametrize("argv, status, err", [
    (["ok"], 0, ""),
    (["ok", "-q"], 0, ""),
    (["bad"], 2, "prog: error: --lr must be positive\n"),
    (["interrupt"], 130, "prog: interrupted; continue with --resume runs/x\n"),
    (["terminate"], 130, "prog: interrupted; continue with --resume runs/x\n"),
    (["corrupt"], 1, "prog: error: batch 7 has NaN; fix it and continue with --resume runs/x\n"),
])
def test_exit_status_and_one_line_messages(argv, status, err, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the run directory runs/x is created (and locked) there
    reports = []
    before = signal.getsignal(signal.SIGTERM)
    assert run_experiment("prog", argv, parse, plan, execute, lambda r, p: reports.append((r, p.out)),
                          failures=(Corrupt,)) == status
    captured = capsys.readouterr()
    assert captured.err == err
    assert reports == ([({"a": 1}, "runs/x")] if argv == ["ok"] else [])
    assert signal.getsignal(signal.SIGTERM) == before  # SIGTERM is handled as Ctrl-C only during the run


def test_resume_of_a_run_saved_before_a_flag_existed_gives_that_flag_its_default(tmp_path):
    from apps.common.main import parse_run_flags
    from core.runs import RunDir

    parser = argparse.ArgumentParser()
    parser.add_argument("--preset", default=None)
    parser.add_argument("--resume", default=None)
    parser.add_argument("-q", "--quiet", action="store_true")
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--jobs", type=int, default=2)  # new since the run was saved
    run = RunDir(tmp_path / "old")
    run.write_config({"flags": {"preset": None, "resume": None, "quiet": False, "lr": 0.5, "out": str(run.path),
                                "data": None}})
    args, resumed = parse_run_flags(parser, ["--resume", str(run.path), "-q"], {}, app="test")
    assert resumed and args.lr == 0.5 and args.jobs == 2 and args.quiet and args.resume == str(run.path)


def test_resume_takes_execution_flags_and_refuses_flags_that_would_not_apply(tmp_path):
    from apps.common.main import parse_run_flags
    from core.runs import RunDir

    parser = argparse.ArgumentParser()
    for flag, default in (("--preset", None), ("--resume", None), ("--epochs", 10), ("--jobs", 2),
                          ("--backend", "local")):
        parser.add_argument(flag, default=default)
    parser.add_argument("-q", "--quiet", action="store_true")
    run = RunDir(tmp_path / "run")
    run.write_config({"flags": {"epochs": 40, "jobs": 2, "backend": "mpi"}})
    args, _ = parse_run_flags(parser, ["--resume", str(run.path), "--jobs", "1", "--backend", "local", "-q"], {},
                              app="test")
    assert (args.epochs, args.jobs, args.backend, args.quiet) == ("40", "1", "local", True)  # (no types here)
    args, _ = parse_run_flags(parser, ["--resume", str(run.path)], {}, app="test")
    assert (args.epochs, args.jobs, args.backend) == ("40", "2", "mpi")
    for extra in (["--epochs", "80"], ["--ep", "80"], ["--preset", "quick"]):  # abbreviations too
        with pytest.raises(ValueError, match=r"--resume continues a run with its saved flags, so --(epochs|preset) "
                                             r"would not apply"):
            parse_run_flags(parser, ["--resume", str(run.path), *extra], {"quick": {}}, app="test")


def test_an_import_broken_by_the_interrupt_counts_as_an_interruption(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)

    def broken(p):
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            raise ImportError("initialization failed") from None

    assert run_experiment("prog", ["ok"], parse, plan, broken, lambda r, p: None) == 130
    assert capsys.readouterr().err == "prog: interrupted; continue with --resume runs/x\n"


def test_logged_progress_is_the_last_logged_epoch_of_each_approach(tmp_path):
    from apps.common.main import logged_progress

    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "metrics.csv").write_text("epoch,step\n0,0\n1,10\n2,20\n")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "metrics.csv").write_text("epoch,step\n")
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "metrics.csv").write_text("epoch,step\nx,0\n")
    assert logged_progress(tmp_path, ["a", "b", "c", "d"]) == {"a": 2, "b": 0, "c": 0, "d": 0}
