"""apps.figures --quick and its app subprocesses, with a stand-in app (no TensorFlow, so each test takes about a
second): the app never outlives apps.figures (even on SIGKILL), gets SIGTERM or Ctrl-C exactly once, and is
waited for while it checkpoints; apps.figures then says how to continue, in one line, with status 130."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.stand_in_app import SIGNAL_RECORDER

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc; PR_SET_PDEATHSIG")

ROOT = Path(__file__).resolve().parents[3]


# apps.figures with two stand-in experiments
LAUNCH = '''
import sys
import apps.figures.__main__ as figures

figures.EXPERIMENTS = tuple((name, "fake_app", {"quick": "x", "paper": "x"}, []) for name in ("first", "second"))
sys.exit(figures.main(sys.argv[1:]))
'''


def start_figures(tmp_path, **popen):
    (tmp_path / "fake_app.py").write_text(SIGNAL_RECORDER)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(tmp_path)])}
    runs = tmp_path / "runs"
    # Ctrl-C's default disposition, whatever this process inherited (a shell's background job ignores SIGINT, and
    # an ignored SIGINT stays ignored across exec: Python would then never raise KeyboardInterrupt)
    figures = subprocess.Popen([sys.executable, "-c", LAUNCH, "--quick", "--runs", str(runs), "-q"], cwd=ROOT, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL), **popen)
    pid_file = runs / "first" / "pid"
    deadline = time.monotonic() + 20
    while not pid_file.is_file() or not pid_file.read_text():
        assert time.monotonic() < deadline and figures.poll() is None, "the stand-in app did not start"
        time.sleep(0.05)
    return figures, runs / "first", int(pid_file.read_text())


def alive(pid):
    """Whether ``pid`` is a live process (a zombie, dead but not yet reaped by its new parent, is not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False


def test_sigkill_of_figures_ends_its_app_through_its_checkpoint(tmp_path):
    figures, run, app = start_figures(tmp_path)
    figures.kill()
    figures.communicate()
    deadline = time.monotonic() + 5
    while alive(app) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(app), "the app outlived apps.figures"
    assert (run / "signals").read_text() == "SIGTERM\n" and (run / "checkpointed").is_file()


def test_sigterm_is_passed_on_once_and_the_app_waited_for(tmp_path):
    figures, run, app = start_figures(tmp_path)
    figures.send_signal(signal.SIGTERM)
    _, err = figures.communicate(timeout=20)
    assert not alive(app)  # apps.figures ended after its app
    assert figures.returncode == 130
    assert err.splitlines() == [f"python -m apps.figures: interrupted during fake_app; rerun the same command to "
                                f"continue (it continues {run} with --resume)"]
    assert (run / "signals").read_text() == "SIGTERM\n" and (run / "checkpointed").is_file()
    assert not (run.parent / "second").exists()  # the next experiment was not started


def test_ctrl_c_reaches_the_app_once_and_the_app_is_waited_for(tmp_path):
    figures, run, app = start_figures(tmp_path, start_new_session=True)  # its own group, as a terminal's job
    os.killpg(figures.pid, signal.SIGINT)  # what Ctrl-C does: the whole foreground process group
    _, err = figures.communicate(timeout=20)
    assert not alive(app)
    assert figures.returncode == 130
    assert err.splitlines() == [f"python -m apps.figures: interrupted during fake_app; rerun the same command to "
                                f"continue (it continues {run} with --resume)"]
    assert (run / "signals").read_text() == "SIGINT\n" and (run / "checkpointed").is_file()  # not killed meanwhile
