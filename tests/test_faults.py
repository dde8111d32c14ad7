"""Fault injection: runs killed at points chosen by progress, then resumed, end with the uninterrupted numbers.

Twenty kills in all, SIGTERM and SIGKILL, of single-approach App A runs, of ``--jobs 2`` App A parents and of
``python -m apps.figures --quick`` (two kills: it takes about 45 s uninterrupted here). The kill points come
from ``random.Random(SEED)``: each kill draws a fraction of the run's progress (epochs checkpointed, read from
the run directory's metrics.csv; for the figures, the apps' progress bars on stderr) and a short delay after
it. After each kill:

- SIGTERM: exit status 130 and, as the last line of stderr, the one-line hint to continue (``--resume DIR``;
  the figures: rerun the same command); SIGKILL: -9;
- within 15 s of the signal, no process that descended from the killed one (recorded while it ran, and just
  before the kill), nor any other process of its session, is alive;
- the resumed run (``--resume DIR``; the figures: the same command again) ends with status 0, leaves no
  process behind, has the files of the uninterrupted run, and its metrics.csv (all columns but ``wall_s``),
  summary.json (all but wall times) and final checkpoints (arrays and meta but wall times) are equal to the
  uninterrupted run's, bit for bit (the same --jobs, so the same TensorFlow thread counts).

A wrong exit status, hint or leftover process after a kill is recorded and the case still resumes and
compares, so that one failure reports everything that went wrong in it.

Some cases kill twice (the resumed run is killed again). Every subprocess runs in a session of its own with a
timeout and is killed, with everything it started, in a ``finally``. Slow: ``-m slow`` (about 5 minutes on 2
cores); a summary of kills, kinds and durations is printed at the end.
"""

from __future__ import annotations

import contextlib
import random
import shutil
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from fault_helpers import (
    PYTHON,
    Managed,
    checkpointed_epochs,
    differences,
    figures_progress,
    group_checkpointed_epochs,
    last_lines,
    run_numbers,
    tail,
    temporaries,
    visible_files,
)

pytestmark = pytest.mark.slow

SEED = 20240607
EPOCHS = 60
CHECKPOINT_EVERY = 3
APP_A = ["--preset", "quick", "--epochs", str(EPOCHS), "--checkpoint-every", str(CHECKPOINT_EVERY),
         "--train-samples", "120", "--batch-size", "20"]
GROUP = ("c-sgd", "d-sgd")
COMMANDS = {
    "single": ["-m", "apps.node_regression", *APP_A, "--optimizer", "d-sgd"],
    "jobs2": ["-m", "apps.node_regression", *APP_A, "--optimizer", ",".join(GROUP), "--jobs", "2"],
    "figures": ["-m", "apps.figures", "--quick"],
}
PROGS = {"single": "python -m apps.node_regression", "jobs2": "python -m apps.node_regression",
         "figures": "python -m apps.figures"}
RUN_TIMEOUT = {"single": 180, "jobs2": 180, "figures": 600}  # seconds, per process
GONE_WITHIN_S = 15.0
FIGURES_SPAN = 2.95  # figures progress: app index + fraction of its bar; targets stay before the last 5 %

# Kinds of kill per case (a case with two kills kills its first resume again): 9 + 9 + 2 = 20 kills.
PLAN = {
    "single": [("TERM",), ("KILL",), ("TERM",), ("KILL",), ("TERM", "KILL"), ("KILL", "TERM"), ("KILL",)],
    "jobs2": [("KILL",), ("TERM",), ("KILL",), ("TERM",), ("KILL", "TERM"), ("TERM", "KILL"), ("TERM",)],
    "figures": [("TERM",), ("KILL",)],
}


@dataclass
class Kill:
    kind: str  # "TERM" or "KILL"
    fraction: float  # of the progress still to go, drawn from the seed
    delay_s: float  # after the target is reached, drawn from the seed
    target: float | None = None
    reached: float | None = None
    status: int | None = None
    gone_s: float | None = None
    descendants: int = 0


@dataclass
class Case:
    name: str
    command: str
    kills: list[Kill]
    durations: dict = field(default_factory=dict)
    outcome: str = "not run"
    note: str = ""
    problems: list[str] = field(default_factory=list)  # after a kill; the case still resumes and compares


def _cases() -> list[Case]:
    rng = random.Random(SEED)
    cases = []
    for command, plans in PLAN.items():
        for k, kinds in enumerate(plans, 1):
            kills = [Kill(kind, rng.random(), rng.uniform(0.0, 0.03)) for kind in kinds]
            cases.append(Case(f"{command}-{k}-{'+'.join(kinds)}", command, kills))
    return cases


CASES = _cases()
RESULTS: list[Case] = []
BASELINES: dict[str, tuple[dict, set, float]] = {}


# ---------------------------------------------------------------------------- running
def command_line(command: str, out: Path) -> list[str]:
    if command == "figures":
        return [PYTHON, *COMMANDS[command], "--runs", str(out)]
    return [PYTHON, *COMMANDS[command], "--out", str(out)]


def resume_line(command: str, out: Path) -> list[str]:
    if command == "figures":  # it has no --resume: the same command continues its apps' runs
        return command_line(command, out)
    return [PYTHON, "-m", "apps.node_regression", "--resume", str(out)]


def progress_of(command: str, out: Path, proc: Managed) -> float:
    if command == "single":
        return checkpointed_epochs(out)
    if command == "jobs2":
        return group_checkpointed_epochs(out, GROUP)
    return figures_progress(proc.stderr_tail())


def total_progress(command: str) -> float:
    return {"single": EPOCHS, "jobs2": EPOCHS * len(GROUP), "figures": FIGURES_SPAN}[command]


def run_to_end(argv: list[str], cwd: Path, logs: Path, timeout: float) -> Managed:
    """Run to completion: status 0 and nothing left running afterwards (AssertionError otherwise)."""
    proc = Managed(argv, cwd, logs, timeout)
    try:
        while proc.popen.poll() is None and proc.remaining() > 0:
            proc.record()
            time.sleep(0.1)
        status = proc.wait()
        assert status == 0, f"{' '.join(argv[1:])} ended with status {status}; stderr:\n{tail(proc.stderr())}"
        left = proc.wait_for_no_leftovers(time.monotonic() + GONE_WITHIN_S)
        assert not left, f"processes still alive {GONE_WITHIN_S:.0f} s after {' '.join(argv[1:])} ended: {left}"
        return proc
    finally:
        proc.close()


def kill_target(command: str, fraction: float, start: float, first_of_two: bool) -> float:
    """Where to kill: ``fraction`` of the way from ``start`` (where a resumed run begins) to the last progress
    before the run's end (the last checkpoint but the final one; the figures: 95 % of the last app); the first
    of two kills stays in the first half, to leave room for the second."""
    if command == "figures":
        low, high = start, FIGURES_SPAN
        if first_of_two:
            high = (low + high) / 2
        return round(low + fraction * (high - low), 3)
    # whole epochs; a resumed run must checkpoint once itself, so that it is killed past its start-up
    low = 0 if start <= 0 else int(start) + 1
    high = int(total_progress(command)) - CHECKPOINT_EVERY * (len(GROUP) if command == "jobs2" else 1)
    if first_of_two:
        high = (low + high) // 2
    assert low <= high, f"no room for a kill between progress {start} and {high}"
    return low + int(fraction * (high - low + 1))


def kill_at_progress(case: Case, kill: Kill, argv: list[str], cwd: Path, out: Path, logs: Path,
                     first_of_two: bool = False) -> None:
    """Start ``argv``, kill it once its progress reaches the kill's target, and check how it ended."""
    proc = Managed(argv, cwd, logs, RUN_TIMEOUT[case.command])
    try:
        start = max(0.0, progress_of(case.command, out, proc))  # a resumed run starts where its checkpoint is
        kill.target = kill_target(case.command, kill.fraction, start, first_of_two)
        last_record = 0.0
        while True:
            if proc.popen.poll() is not None:
                raise AssertionError(f"{case.name}: the run ended (status {proc.popen.returncode}) before progress "
                                     f"{kill.target}; stderr:\n{tail(proc.stderr())}")
            if proc.remaining() <= 0:
                raise AssertionError(f"{case.name}: progress {kill.target} not reached within {proc.timeout} s")
            if time.monotonic() - last_record >= 0.1:
                proc.record()
                last_record = time.monotonic()
            if progress_of(case.command, out, proc) >= kill.target:
                break
            time.sleep(0.02 if case.command == "figures" else 0.002)
        time.sleep(kill.delay_s)
        kill.descendants = len(proc.record())  # just before the kill
        kill.reached = progress_of(case.command, out, proc)
        signum = signal.SIGTERM if kill.kind == "TERM" else signal.SIGKILL
        signalled = time.monotonic()
        proc.popen.send_signal(signum)
        kill.status = proc.wait(timeout=GONE_WITHIN_S)
        left = proc.wait_for_no_leftovers(signalled + GONE_WITHIN_S)
        kill.gone_s = round(time.monotonic() - signalled, 2)
        where = f"SIG{kill.kind} at progress {kill.reached} (target {kill.target})"
        if left:
            case.problems.append(f"{where}: still alive {GONE_WITHIN_S:.0f} s later: {left}")
        err = proc.stderr()
        expected = -signal.SIGKILL if kill.kind == "KILL" else 130
        if kill.status != expected:
            case.problems.append(f"{where}: exit status {kill.status}, expected {expected}; stderr ends:\n"
                                 + tail(_without_tf_logs(err)))
        elif kill.kind == "TERM":
            problem = hint_problem(case.command, out, err)
            if problem:
                case.problems.append(f"{where}: {problem}")
    finally:
        proc.close()


def _without_tf_logs(text: str) -> str:
    return "\n".join(line for line in last_lines(text)
                     if not line.startswith(("I0000", "WARNING: All log messages", "W0000", "E0000")))


def hint_problem(command: str, out: Path, stderr: str) -> str | None:
    """What is wrong with the interrupted run's last stderr line, the hint to continue (None: nothing)."""
    lines = last_lines(stderr)
    last = lines[-1] if lines else ""
    if command == "figures":
        if not (last.startswith(f"{PROGS[command]}: interrupted during apps.")
                and "rerun the same command to continue" in last and "with --resume)" in last):
            return f"last stderr line is not the hint to continue: {last!r}"
        return None
    if last != f"{PROGS[command]}: interrupted; continue with --resume {out}":
        return f"last stderr line is not the hint to continue: {last!r}"
    if sum("--resume" in line for line in lines) != 1:
        return "more than one line mentions --resume:\n" + tail(stderr)
    return None


# ---------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module", autouse=True)
def summary(request):
    yield
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture is not None else contextlib.nullcontext():
        print_summary()


def print_summary() -> None:
    write = print
    write("")
    write(f"fault injection (seed {SEED}): {sum(len(c.kills) for c in RESULTS)} kills in {len(RESULTS)} cases")
    for name, (_, _, seconds) in BASELINES.items():
        write(f"  uninterrupted {name}: {seconds:.1f} s")
    for case in RESULTS:
        kills = ", ".join(f"SIG{k.kind}@{k.reached}/{k.target}->{k.status} ({k.descendants} desc., gone "
                          f"{k.gone_s} s)" for k in case.kills if k.status is not None)
        times = " + ".join(f"{v:.1f}" for v in case.durations.values())
        write(f"  {case.name:<22} {case.outcome:<5} [{times} s] {kills} {case.note}".rstrip())
        for problem in case.problems:
            write(f"      problem: {problem.splitlines()[0]}")


def baseline(command: str, tmp_root: Path) -> tuple[dict, set, float]:
    """The numbers and files of the uninterrupted run of ``command`` (run once per module)."""
    if command not in BASELINES:
        root = tmp_root / f"baseline-{command}"
        cwd = root / "cwd"
        cwd.mkdir(parents=True)
        out = root / "run"
        start = time.monotonic()
        run_to_end(command_line(command, out), cwd, root / "logs" / "run", RUN_TIMEOUT[command])
        BASELINES[command] = (run_numbers(out), visible_files(out), time.monotonic() - start)
        shutil.rmtree(cwd / "data", ignore_errors=True)  # the figures' generated datasets (160 MB)
    return BASELINES[command]


@pytest.fixture(scope="module")
def tmp_root(tmp_path_factory):
    return tmp_path_factory.mktemp("faults")


# ---------------------------------------------------------------------------- the test
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_killed_run_resumes_to_the_uninterrupted_numbers(case: Case, tmp_root: Path):
    RESULTS.append(case)
    case.outcome = "FAIL"
    expected, expected_files, _ = baseline(case.command, tmp_root)
    root = tmp_root / case.name
    cwd = root / "cwd"  # the figures' apps write their datasets into data/ of the working directory
    cwd.mkdir(parents=True)
    out = root / "run"
    try:
        for k, kill in enumerate(case.kills):
            argv = command_line(case.command, out) if k == 0 else resume_line(case.command, out)
            start = time.monotonic()
            kill_at_progress(case, kill, argv, cwd, out, root / "logs" / f"kill{k}",
                             first_of_two=len(case.kills) > 1 and k == 0)
            case.durations[f"kill{k}"] = time.monotonic() - start
        start = time.monotonic()
        run_to_end(resume_line(case.command, out), cwd, root / "logs" / "resume", RUN_TIMEOUT[case.command])
        case.durations["resume"] = time.monotonic() - start
        left = temporaries(out)
        if left:
            case.note = f"({len(left)} atomic-write temporaries left: {left[:3]})"
        assert visible_files(out) == expected_files, (
            f"files differ: missing {sorted(expected_files - visible_files(out))}, "
            f"extra {sorted(visible_files(out) - expected_files)}")
        diff = differences(expected, run_numbers(out))
        assert not diff, f"{case.name}: the resumed run's numbers differ from the uninterrupted run's:\n" + "\n".join(
            diff)
        assert not case.problems, f"{case.name}: " + "\n".join(case.problems)
        case.outcome = "pass"
    finally:
        shutil.rmtree(cwd / "data", ignore_errors=True)
