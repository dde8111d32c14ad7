"""apps.common.children with a stand-in child (no TensorFlow, about a second each): a stop signal reaches the running
child exactly once, whether it was sent to the parent alone (``kill -INT <pid>``) or to its whole process group
(Ctrl-C at a terminal), and the child is waited for while it checkpoints."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.stand_in_app import SIGNAL_RECORDER

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG")

ROOT = Path(__file__).resolve().parents[3]


# what the sweep does: run_children within stop_requests; prints whether a stop was requested and the statuses
PARENT = '''
import sys
from apps.common.children import run_children, stop_requests

with stop_requests() as stop:
    statuses = run_children({0: [sys.executable, sys.argv[1], sys.argv[2]]}, stop)
print(stop.requested, statuses)
'''


def start(tmp_path):
    (tmp_path / "child.py").write_text(SIGNAL_RECORDER)
    parent = subprocess.Popen([sys.executable, "-c", PARENT, str(tmp_path / "child.py"), str(tmp_path)], cwd=ROOT,
                              env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE, text=True,
                              start_new_session=True,  # its own group, as a terminal's job
                              preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 20
    while not (tmp_path / "pid").is_file() or not (tmp_path / "pid").read_text():
        if time.monotonic() > deadline or parent.poll() is not None:
            if parent.poll() is None:
                os.killpg(parent.pid, signal.SIGKILL)
            pytest.fail("the child did not start")
        time.sleep(0.05)
    return parent


@pytest.mark.parametrize("target, signum", [
    (os.kill, signal.SIGINT),  # to the parent alone (kill -INT <pid>): the child must get it passed on
    (os.killpg, signal.SIGINT),  # Ctrl-C at a terminal: the whole group; the child must not get it twice
    (os.kill, signal.SIGTERM),
], ids=["sigint-to-parent", "ctrl-c-to-group", "sigterm-to-parent"])
def test_a_stop_reaches_the_child_once_and_it_is_waited_for(tmp_path, target, signum):
    parent = start(tmp_path)
    try:
        target(parent.pid, signum)
        out, _ = parent.communicate(timeout=20)
    finally:  # on a timeout too: the parent's session ends (its child has the parent-death signal)
        if parent.poll() is None:
            os.killpg(parent.pid, signal.SIGKILL)
            parent.wait()
    assert out.strip() == "True {0: 130}"
    assert (tmp_path / "signals").read_text() == signum.name + "\n" and (tmp_path / "checkpointed").is_file()
