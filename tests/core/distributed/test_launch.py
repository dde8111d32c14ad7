"""core.distributed.launch.kill_session ends a whole launched job, also members in process groups of their own
(as Open MPI 5's ranks are), and nothing outside the session."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from core.distributed.launch import kill_session

# the child starts a grandchild in a process group of its own (like a rank under prterun), prints its pid, waits
CHILD = """
import os, subprocess, sys, time
g = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], preexec_fn=lambda: os.setpgid(0, 0))
print(g.pid, flush=True)
time.sleep(60)
"""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has ended
    except OSError:
        return False


def test_kill_session_kills_members_in_other_process_groups():
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    child = subprocess.Popen([sys.executable, "-c", CHILD], stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        grandchild = int(child.stdout.readline())
        assert os.getpgid(grandchild) != os.getpgid(child.pid)  # killpg(child) would miss it
        kill_session(child.pid)
        child.wait(timeout=10)
        deadline = time.time() + 10
        while _alive(grandchild) and time.time() < deadline:
            time.sleep(0.05)
        assert not _alive(grandchild)
        assert bystander.poll() is None  # another session is left alone
    finally:
        for proc in (child, bystander):
            proc.kill()
            proc.wait()
