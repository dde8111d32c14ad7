"""Keeps TensorFlow's C++ start-up notices off stderr.

``TF_CPP_MIN_LOG_LEVEL=2`` silences TensorFlow's informational C++ logs, except one: since TensorFlow 2.19 the
"oneDNN custom operations are on" notice is logged through absl before TensorFlow applies that level, so
every process that imports TensorFlow prints it twice, each time after absl's "All log messages before
absl::InitializeLog() is called are written to STDERR" (tensorflow/tensorflow issue 100442). An app launched
under ``mpiexec -n P`` or with ``--jobs`` printed 4 such lines per process. :func:`silence_startup_notices`
drops exactly these lines, and only while ``tensorflow`` is first imported; everything else written to stderr
meanwhile (a real error of a failing import included) is passed on as it comes.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.util
import os
import sys
import threading

STARTUP_NOTICES = (
    "All log messages before absl::InitializeLog() is called are written to STDERR",
    "oneDNN custom operations are on.",
)
"""Substrings of the stderr lines that :func:`filtered_stderr` drops during TensorFlow's import."""


def silence_startup_notices() -> None:
    """Set ``TF_CPP_MIN_LOG_LEVEL=2`` unless set, and, unless it asks for informational logs (0), drop
    :data:`STARTUP_NOTICES` from stderr while ``tensorflow`` is first imported. Idempotent; call it first
    thing in a program (it does not import TensorFlow, so flags can still be checked quickly)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if os.environ["TF_CPP_MIN_LOG_LEVEL"].strip() in ("", "0") or "tensorflow" in sys.modules:
        return
    if not any(isinstance(finder, _QuietImportFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _QuietImportFinder())


class _QuietImportFinder(importlib.abc.MetaPathFinder):
    """Finds ``tensorflow`` once, with a loader that executes it inside :func:`filtered_stderr`."""

    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow":
            return None
        sys.meta_path.remove(self)  # one import only; the regular finders locate the package
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            spec.loader = _QuietLoader(spec.loader)
        return spec


class _QuietLoader(importlib.abc.Loader):
    def __init__(self, loader):
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        module.__loader__ = self._loader  # what the package sees of itself is the regular loader
        with filtered_stderr(STARTUP_NOTICES):
            self._loader.exec_module(module)

    def __getattr__(self, name):  # get_resource_reader, is_package, ...: the regular loader's
        return getattr(self._loader, name)


@contextlib.contextmanager
def filtered_stderr(drop=STARTUP_NOTICES):
    """File descriptor 2 (what C++ libraries and ``sys.stderr`` write to) goes through a pipe whose lines are
    passed on to the original stderr as they arrive, except those containing one of ``drop``. Without a usable
    descriptor 2 (e.g. an embedding program closed it), nothing is filtered."""
    try:
        sys.stderr.flush()
        original = os.dup(2)
    except (OSError, ValueError, AttributeError):
        yield
        return
    read_end, write_end = os.pipe()
    relay = threading.Thread(target=_relay_lines, args=(read_end, original, tuple(drop)), daemon=True,
                             name="stderr-filter")
    relay.start()
    os.dup2(write_end, 2)
    os.close(write_end)
    try:
        yield
    finally:
        with contextlib.suppress(OSError, ValueError, AttributeError):
            sys.stderr.flush()
        os.dup2(original, 2)  # closes the pipe's last write end: the relay reads to its end and stops
        relay.join(timeout=5.0)  # (a process started meanwhile could hold a write end: never wait on it)
        if not relay.is_alive():  # else the relay keeps writing to it (closed, its number could be reused)
            os.close(original)


def _relay_lines(read_end: int, out: int, drop: tuple[str, ...]) -> None:
    pending = b""
    with os.fdopen(read_end, "rb", buffering=0) as pipe:
        while chunk := pipe.read(65536):
            *lines, pending = (pending + chunk).split(b"\n")
            _write(out, [line + b"\n" for line in lines], drop)
    _write(out, [pending] if pending else [], drop)


def _write(out: int, lines: list[bytes], drop: tuple[str, ...]) -> None:
    kept = b"".join(line for line in lines if not any(d in line.decode("utf-8", "replace") for d in drop))
    while kept:
        kept = kept[os.write(out, kept):]
