"""core.tf_notices: TensorFlow's start-up notices are dropped from stderr, and nothing else is."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _run(code: str, **env) -> subprocess.CompletedProcess:
    environ = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), **env}
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env=environ)


def test_filtered_stderr_drops_only_the_notices_and_keeps_order():
    done = _run(
        "import os, sys\n"
        "from core.tf_notices import filtered_stderr\n"
        "with filtered_stderr():\n"
        "    os.write(2, b'kept 1\\nWARNING: All log messages before absl::InitializeLog() is called are written '\n"
        "                b'to STDERR\\nI0000 port.cc:153] oneDNN custom operations are on. You may see\\nkept ')\n"
        "    os.write(2, b'2, split over two writes\\n')\n"
        "    print('from Python', file=sys.stderr)\n"
        "    os.write(2, b'no newline at the end')\n"
        "print('after', file=sys.stderr)\n")
    assert done.returncode == 0
    assert done.stderr == "kept 1\nkept 2, split over two writes\nfrom Python\nno newline at the endafter\n"


def test_tensorflow_imports_without_notices_and_works():
    code = ("from core.tf_notices import silence_startup_notices\n"
            "silence_startup_notices()\n"
            "import sys\n"
            "import tensorflow as tf\n"
            "print(int(tf.reduce_sum(tf.range(4))), type(tf.__spec__.loader).__name__, any(\n"
            "    type(f).__name__ == '_QuietImportFinder' for f in sys.meta_path))\n")
    quiet = _run(code)
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stdout.split() == ["6", "_QuietLoader", "False"]  # used once, then gone from sys.meta_path
    assert "oneDNN" not in quiet.stderr and "InitializeLog" not in quiet.stderr


def test_asking_for_info_logs_installs_no_filter():
    done = _run("import sys\nfrom core.tf_notices import silence_startup_notices\nsilence_startup_notices()\n"
                "silence_startup_notices()\n"
                "print(sum(type(f).__name__ == '_QuietImportFinder' for f in sys.meta_path))", TF_CPP_MIN_LOG_LEVEL="0")
    twice = _run("import sys\nfrom core.tf_notices import silence_startup_notices\nsilence_startup_notices()\n"
                 "silence_startup_notices()\n"
                 "import os; print(sum(type(f).__name__ == '_QuietImportFinder' for f in sys.meta_path),"
                 " os.environ['TF_CPP_MIN_LOG_LEVEL'])")
    assert done.stdout.split() == ["0"] and twice.stdout.split() == ["1", "2"]
