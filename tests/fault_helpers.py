"""Helpers of tests/test_faults.py: processes watched through /proc (no psutil), run-directory progress,
and the numbers of a run directory to compare bit for bit.

Every process is started in a session of its own (``start_new_session``), so that whatever it starts can be
found again after it died (orphans are handed to another parent, but keep their session) and ended in a
``finally``. A process is identified by its pid *and* its start time, so a reused pid is never mistaken
for (or killed as) one of ours.
"""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable  # the venv's python that runs pytest


# ---------------------------------------------------------------------------- /proc
def proc_stat(pid: int) -> tuple[str, int, int, int] | None:
    """(state, ppid, session, start time in clock ticks) of ``pid``, or None if there is no such process."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    fields = text[text.rindex(")") + 2:].split()  # the command name, in parentheses, may hold spaces
    return fields[0], int(fields[1]), int(fields[3]), int(fields[19])


def all_processes() -> dict[int, tuple[str, int, int, int]]:
    procs = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = proc_stat(int(entry))
            if stat is not None:
                procs[int(entry)] = stat
    return procs


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()[:160]
    except OSError:
        return "?"


def descendants(root: int) -> dict[int, int]:
    """Every living descendant of ``root`` (ppid chains): pid -> start time."""
    procs = all_processes()
    children: dict[int, list[int]] = {}
    for pid, (_, ppid, _, _) in procs.items():
        children.setdefault(ppid, []).append(pid)
    found, stack = {}, [root]
    while stack:
        for child in children.get(stack.pop(), ()):
            if child not in found:
                found[child] = procs[child][3]
                stack.append(child)
    return found


def _alive(stat) -> bool:
    return stat is not None and stat[0] not in "ZXx"  # a zombie has ended (init may never reap it here)


def still_alive(recorded: dict[int, int]) -> dict[int, str]:
    """Those of ``recorded`` (pid -> start time) that still run: pid -> command line."""
    alive = {}
    for pid, start in recorded.items():
        stat = proc_stat(pid)
        if _alive(stat) and stat[3] == start:
            alive[pid] = cmdline(pid)
    return alive


def session_members(leader: int, leader_start: int) -> dict[int, int]:
    """Living processes of the session ``leader`` started (pid -> start time), unless that pid now belongs to
    another process (then the session is not ours)."""
    stat = proc_stat(leader)
    if stat is not None and stat[3] != leader_start:
        return {}
    return {pid: s[3] for pid, s in all_processes().items()
            if s[2] == leader and _alive(s) and s[3] >= leader_start}


# ---------------------------------------------------------------------------- managed processes
class Managed:
    """A subprocess in its own session, stdout/stderr in files; :meth:`close` (call it in a ``finally``) kills
    it and everything it started, so nothing outlives the test."""

    def __init__(self, argv: list[str], cwd: Path, logs: Path, timeout: float):
        logs.parent.mkdir(parents=True, exist_ok=True)
        self.argv, self.timeout = argv, timeout
        self.stdout_path, self.stderr_path = logs.with_suffix(".out"), logs.with_suffix(".err")
        self._files = [open(self.stdout_path, "wb"), open(self.stderr_path, "wb")]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
               "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"}
        self.started = time.monotonic()
        self.popen = subprocess.Popen(argv, cwd=cwd, stdin=subprocess.DEVNULL, stdout=self._files[0],
                                      stderr=self._files[1], env=env, start_new_session=True)
        stat = proc_stat(self.popen.pid)
        self.start_ticks = stat[3] if stat else 0
        self.seen: dict[int, int] = {}  # every descendant ever recorded: pid -> start time

    @property
    def pid(self) -> int:
        return self.popen.pid

    def remaining(self) -> float:
        return self.started + self.timeout - time.monotonic()

    def record(self) -> dict[int, int]:
        now = descendants(self.pid)
        self.seen.update(now)
        return now

    def wait(self, timeout: float | None = None) -> int:
        """The exit status; AssertionError if it does not end in ``timeout`` (default: what is left of its own)."""
        limit = self.remaining() if timeout is None else min(timeout, self.remaining())
        try:
            return self.popen.wait(timeout=max(0.0, limit))
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{' '.join(self.argv[2:])} did not end within {limit:.0f} s; stderr:\n"
                                 f"{tail(self.stderr())}") from None

    def leftovers(self) -> dict[int, str]:
        """Processes this one started (recorded, or in its session) that still run."""
        found = still_alive(self.seen)
        for pid in session_members(self.pid, self.start_ticks):
            if pid != self.pid or self.popen.poll() is None:
                found.setdefault(pid, cmdline(pid))
        return found

    def wait_for_no_leftovers(self, deadline: float) -> dict[int, str]:
        """Poll until nothing this process started runs (returns {}) or ``deadline`` (time.monotonic())."""
        while True:
            left = self.leftovers()
            if not left or time.monotonic() >= deadline:
                return left
            time.sleep(0.05)

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def stderr_tail(self, size: int = 8192) -> str:
        with open(self.stderr_path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - size))
            return f.read().decode(errors="replace")

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def close(self) -> None:
        """Kill the process and everything it started (SIGKILL; ``seen`` and the session), and reap it."""
        try:
            for _ in range(3):
                targets = {pid: start for pid, start in self.seen.items() if pid in still_alive({pid: start})}
                targets.update(session_members(self.pid, self.start_ticks))
                if self.popen.poll() is None:
                    targets[self.pid] = self.start_ticks
                if not targets:
                    break
                for pid in targets:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except (ProcessLookupError, PermissionError):
                        pass
                time.sleep(0.2)
            try:
                self.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        finally:
            for f in self._files:
                f.close()


def tail(text: str, lines: int = 15) -> str:
    return "\n".join(last_lines(text)[-lines:])


def last_lines(text: str) -> list[str]:
    """Non-empty lines of a terminal stream, progress-bar carriage returns counted as line ends."""
    return [line.strip() for line in re.split(r"[\r\n]", text) if line.strip()]


# ---------------------------------------------------------------------------- progress
def checkpointed_epochs(run: Path) -> int:
    """Epochs in ``run/metrics.csv`` (written with every checkpoint): -1 without config.json, 0 with config.json
    but no checkpoint yet."""
    if not (run / "config.json").is_file():
        return -1
    try:
        text = (run / "metrics.csv").read_text()
    except FileNotFoundError:
        return 0
    return max(0, text.count("\n") - 2)  # the header and epoch 0's row


def group_checkpointed_epochs(out: Path, approaches) -> int:
    """Epochs checkpointed by all approaches of a group run together: -1 before the group's config.json."""
    if not (out / "config.json").is_file():
        return -1
    return sum(max(0, checkpointed_epochs(out / a)) for a in approaches)


_BAR = re.compile(r"(node regression|power allocation|link scheduling):\s+\d+%\|[^|\r\n]*\|\s*(\d+)/(\d+)"
                  r"|generating data/(power_allocation)")
_STAGE = {"node regression": 0, "power allocation": 1, "power_allocation": 1, "link scheduling": 2}


def figures_progress(stderr: str) -> float:
    """Progress of ``python -m apps.figures --quick`` from its (and its apps') stderr: the app's index (0, 1,
    2) plus the fraction of its progress bar; -1 before the first bar. The App B dataset generation counts as
    the start of App B (1.0)."""
    matches = list(_BAR.finditer(stderr))
    if not matches:
        return -1.0
    last = matches[-1]
    if last.group(4):
        return 1.0
    done, total = int(last.group(2)), int(last.group(3))
    return _STAGE[last.group(1)] + (done / total if total else 0.0)


# ---------------------------------------------------------------------------- numbers
def run_numbers(root: Path) -> dict[str, object]:
    """Every metrics.csv (rows without wall_s) and summary.json (without wall-time keys) under ``root``, by
    relative path: what an interrupted-and-resumed run must reproduce bit for bit."""
    numbers: dict[str, object] = {}
    for path in sorted(root.rglob("metrics.csv")):
        with open(path, newline="") as f:
            numbers[str(path.relative_to(root))] = [{k: v for k, v in row.items() if k != "wall_s"}
                                                    for row in csv.DictReader(f)]
    for path in sorted(root.rglob("summary.json")):
        numbers[str(path.relative_to(root))] = _without_wall(json.loads(path.read_text()))
    for path in sorted(root.rglob("checkpoint/latest.npz")):  # the final parameters and state, too
        numbers[str(path.relative_to(root))] = _checkpoint(path)
    return numbers


def _checkpoint(path: Path) -> dict:
    """A checkpoint's arrays (dtype, shape, sha256 of the bytes) and meta, without wall times."""
    import hashlib

    import numpy as np

    with np.load(path, allow_pickle=False) as data:
        out = {name: f"{data[name].dtype} {data[name].shape} {hashlib.sha256(data[name].tobytes()).hexdigest()}"
               for name in data.files if name != "meta"}
        out["meta"] = _without_wall(json.loads(str(data["meta"])))
    return out


def _without_wall(obj):
    if isinstance(obj, dict):
        return {k: _without_wall(v) for k, v in obj.items() if "wall" not in k}
    if isinstance(obj, list):
        return [_without_wall(v) for v in obj]
    return obj


def differences(expected: dict, actual: dict, limit: int = 8) -> list[str]:
    """Human-readable differences between two :func:`run_numbers` (empty if equal)."""
    out: list[str] = []
    for name in sorted(set(expected) | set(actual)):
        if name not in actual:
            out.append(f"{name}: missing after the resume")
        elif name not in expected:
            out.append(f"{name}: not in the uninterrupted run")
        else:
            _diff(name, expected[name], actual[name], out)
        if len(out) >= limit:
            break
    return out[:limit]


def _diff(where: str, a, b, out: list[str]) -> None:
    if type(a) is not type(b):
        out.append(f"{where}: {a!r} != {b!r}")
    elif isinstance(a, dict):
        for k in sorted(set(a) | set(b), key=str):
            if k not in a or k not in b:
                out.append(f"{where}[{k!r}]: only in {'the uninterrupted run' if k in a else 'the resumed run'}")
            else:
                _diff(f"{where}[{k!r}]", a[k], b[k], out)
    elif isinstance(a, list):
        if len(a) != len(b):
            out.append(f"{where}: {len(a)} entries uninterrupted, {len(b)} resumed")
        for k, (x, y) in enumerate(zip(a, b)):
            _diff(f"{where}[{k}]", x, y, out)
    elif a != b:
        out.append(f"{where}: uninterrupted {a!r}, resumed {b!r}")


def visible_files(root: Path) -> set[str]:
    """Relative paths of the files under ``root``, hidden ones (.lock, atomic-write temporaries) left out."""
    return {str(p.relative_to(root)) for p in root.rglob("*")
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)}


def temporaries(root: Path) -> list[str]:
    """Atomic-write temporaries (``.<name>.<pid>.<hex>.tmp``) left under ``root``."""
    return sorted(str(p.relative_to(root)) for p in root.rglob(".*.tmp"))
