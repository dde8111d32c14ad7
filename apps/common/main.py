"""The ``main()`` every experiment app shares: flag parsing with presets and ``--resume``, exit statuses, signals.

:func:`parse_run_flags` turns a command line (or the flags saved in a run directory) into settings;
:func:`run_experiment` runs validate -> train -> report with the exit statuses of docs/design.md,
section 5 (2 bad input, 1 failure while running, 130 interrupted).
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

from core.runs import RunDir, RunError


def parse_run_flags(parser, argv, presets: Mapping[str, Mapping], tuple_flags: Sequence[str] = ()):
    """Parse an experiment's flags: a ``--preset``'s values become the defaults (explicit flags win); with
    ``--resume DIR`` the flags saved in DIR's config.json replace them all but ``--quiet`` and ``--resume``.

    The parser must define ``--preset``, ``--resume`` and ``-q/--quiet``. Saved ``data``, ``out`` and
    ``resume`` come back as paths and the list-valued ``tuple_flags`` (saved as JSON lists) as tuples. Returns
    ``(args, resumed)``; a missing or unreadable run raises ValueError with a one-line message. Flags that
    the saved run predates take their defaults (so that runs of an older version still resume).
    """
    args = parser.parse_args(argv)
    if args.preset:
        parser.set_defaults(**presets[args.preset])
        args = parser.parse_args(argv)
    if args.resume is None:
        return args, False
    try:
        saved = RunDir(args.resume, create=False).read_config()["flags"]
    except (RunError, KeyError, ValueError) as exc:
        raise ValueError(f"--resume: {exc}") from None
    quiet, resume = args.quiet, args.resume
    args = argparse.Namespace(**{**vars(args), **saved})
    for name in ("data", "out", "resume"):
        value = getattr(args, name, None)
        setattr(args, name, None if value is None else Path(value))
    for name in tuple_flags:
        setattr(args, name, tuple(getattr(args, name)))
    args.quiet, args.resume = quiet, resume
    return args, True


def run_experiment(prog: str, argv, parse_args, plan, execute, report, failures: tuple = ()) -> int:
    """The ``main()`` of an experiment app; returns its exit status.

    ``plan(parse_args(argv))`` validates everything before anything is written: a ValueError becomes one
    error line on stderr and status 2. ``execute(plan)`` then trains: Ctrl-C says how to continue
    (``--resume <plan.out>``) and gives 130; an exception of ``failures`` met mid-run (e.g. a corrupt
    batch of an unverified dataset) says the same after its message and gives 1. Unless ``-q``,
    ``report(result, plan)`` prints the final table. SIGTERM (``kill``, a batch scheduler's time limit)
    is handled as Ctrl-C: the run checkpoints its last completed epoch before it exits.
    """
    try:
        args = parse_args(argv)
        p = plan(args)
    except ValueError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    try:
        with _terminate_as_interrupt():
            result = execute(p)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; continue with --resume {p.out}", file=sys.stderr)
        return 130
    except failures as exc:
        print(f"{prog}: error: {exc}; fix it and continue with --resume {p.out}", file=sys.stderr)
        return 1
    if not args.quiet:
        report(result, p)
    return 0


@contextmanager
def _terminate_as_interrupt():
    """Within the block, SIGTERM raises KeyboardInterrupt in the main thread (as Ctrl-C does)."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
