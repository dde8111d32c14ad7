"""core.runs.run_experiment: the exit statuses and messages every app main shares."""

import argparse
from types import SimpleNamespace

import pytest

from core.runs import run_experiment


class Corrupt(Exception):
    pass


def parse(argv):
    return argparse.Namespace(quiet="-q" in argv, outcome=argv[0])


def plan(args):
    if args.outcome == "bad":
        raise ValueError("--lr must be positive")
    return SimpleNamespace(out="runs/x", outcome=args.outcome)


def execute(p):
    if p.outcome == "interrupt":
        raise KeyboardInterrupt
    if p.outcome == "corrupt":
        raise Corrupt("batch 7 has NaN")
    return {"a": 1}


@pytest.mark.parametrize("argv, status, err", [
    (["ok"], 0, ""),
    (["ok", "-q"], 0, ""),
    (["bad"], 2, "prog: error: --lr must be positive\n"),
    (["interrupt"], 130, "prog: interrupted; continue with --resume runs/x\n"),
    (["corrupt"], 1, "prog: error: batch 7 has NaN; fix it and continue with --resume runs/x\n"),
])
def test_exit_status_and_one_line_messages(argv, status, err, capsys):
    reports = []
    assert run_experiment("prog", argv, parse, plan, execute, lambda r, p: reports.append((r, p.out)),
                          failures=(Corrupt,)) == status
    captured = capsys.readouterr()
    assert captured.err == err
    assert reports == ([({"a": 1}, "runs/x")] if argv == ["ok"] else [])
