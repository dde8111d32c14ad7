"""A stand-in for a training app as a child process (no TensorFlow, so that a test of process handling takes
about a second): the script of :data:`SIGNAL_RECORDER` records its pid, then waits until a signal, on which it
records the signal's name (a second signal would show up as a second line), "checkpoints" for half a second
and exits with 130, as the apps do."""

SIGNAL_RECORDER = '''
import os, signal, sys, time
from pathlib import Path

# the folder it writes to: --out's (as the apps are started), else the first argument
out = Path(sys.argv[sys.argv.index("--out") + 1] if "--out" in sys.argv else sys.argv[1])
out.mkdir(parents=True, exist_ok=True)

def stop(signum, frame):
    with open(out / "signals", "a") as f:
        f.write(signal.Signals(signum).name + "\\n")
    time.sleep(0.5)
    (out / "checkpointed").write_text("")
    sys.exit(130)

signal.signal(signal.SIGTERM, stop)
signal.signal(signal.SIGINT, stop)
(out / "pid").write_text(str(os.getpid()))
time.sleep(60)
'''
