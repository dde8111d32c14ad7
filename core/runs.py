"""Run directories (docs/design.md, section 5): atomic writes, config with library versions, metrics, checkpoints.

A run directory holds

- ``config.json``: every flag of the run, the seed, library versions, dataset path and checksum;
- ``metrics.csv``: one row per logged step (``epoch, step, mp_rounds, floats_sent_per_node, ...``);
- ``summary.json``: final and best metrics;
- ``checkpoint/latest.npz``: everything needed to resume (see :mod:`core.trainer`);
- a PNG plot of the learning curve.

Every file is written atomically: to a temporary name in the same folder, flushed to disk, then moved
over the final name with ``os.replace``, so a killed run never leaves a torn file behind (at worst a
hidden ``.<name>.*.tmp`` file). Nothing here knows about TensorFlow; tensors are saved as NumPy arrays.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import platform
import secrets
import time
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path

import numpy as np

CONFIG = "config.json"
METRICS = "metrics.csv"
SUMMARY = "summary.json"
CHECKPOINT_DIR = "checkpoint"
CHECKPOINT = "latest.npz"
LOCK = ".lock"

_LIBRARIES = ("tensorflow-cpu", "tensorflow", "numpy", "scipy", "networkx", "h5py", "matplotlib", "tqdm")


_STOP_REQUESTED = False


def request_stop() -> None:
    """Record that the process was asked to stop (Ctrl-C, SIGTERM). The signal handler also raises
    KeyboardInterrupt, but an exception raised inside a finaliser (``__del__``) is only printed and
    dropped, so the trainer checks this flag at every epoch boundary too (:func:`stop_requested`)."""
    global _STOP_REQUESTED
    _STOP_REQUESTED = True


def stop_requested() -> bool:
    return _STOP_REQUESTED


def clear_stop_request() -> None:
    global _STOP_REQUESTED
    _STOP_REQUESTED = False


class RunError(ValueError):
    """A run directory cannot be created or resumed (bad path, existing run, missing checkpoint)."""


class RunDiverged(RuntimeError):
    """Training met a non-finite loss, metric or parameter, or a diverged run was asked to resume.

    The trainer stops at the first epoch whose values are not all finite, checkpoints the last epoch
    whose values were, and records ``"diverged"`` in summary.json (:attr:`RunDir.diverged`); the
    message is one line. Attributes: ``epoch`` (the first non-finite epoch k; 0 for the initial
    model), ``reason`` (which values were not finite, e.g. ``"train_loss is nan"``), ``path`` (the run
    directory, or None) and ``last_finite_epoch`` (k - 1; -1 when not even the initial model was finite).
    A RuntimeError rather than a ValueError: the input was valid, the optimisation failed.
    """

    def __init__(self, message: str, epoch: int, reason: str, path: str | os.PathLike | None = None):
        super().__init__(message)
        self.epoch, self.reason = int(epoch), str(reason)
        self.path = None if path is None else Path(path)

    @property
    def last_finite_epoch(self) -> int:
        return self.epoch - 1

    def __reduce__(self):  # picklable with its attributes (core.parallel sends a worker's exception back)
        return type(self), (str(self), self.epoch, self.reason, self.path)


# ---------------------------------------------------------------------------- atomic writes
@contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path next to ``path``; on success it is fsync'ed and renamed onto ``path``."""
    final = Path(path)
    temporary = final.parent / f".{final.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    try:
        yield temporary
        descriptor = os.open(temporary, os.O_RDONLY)
        try:
            os.fsync(descriptor)  # durable before the rename publishes it
        finally:
            os.close(descriptor)
        os.replace(temporary, final)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def atomic_write_json(path: str | os.PathLike, obj) -> None:
    atomic_write_text(path, json.dumps(_jsonable(obj), indent=2, sort_keys=True, allow_nan=True) + "\n")


def atomic_write_csv(path: str | os.PathLike, columns: Sequence[str], rows: Sequence[Mapping]) -> None:
    """Write ``rows`` (dicts) under the header ``columns``; floats keep full precision (repr)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_csv_value(row.get(c, "")) for c in columns])
    atomic_write_text(path, buffer.getvalue())


def atomic_savez(path: str | os.PathLike, **arrays) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)


def atomic_savefig(fig, path: str | os.PathLike, **kwargs) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        fig.savefig(f, format=Path(path).suffix.lstrip(".") or "png", **kwargs)


def read_csv(path: str | os.PathLike) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _csv_value(value):
    if isinstance(value, float | np.floating):
        return repr(float(value))
    if isinstance(value, np.integer):
        return int(value)
    return value


def _jsonable(obj):
    """Plain JSON types from NumPy scalars/arrays, Paths and tuples (recursively)."""
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, float) and not math.isfinite(obj):
        return obj  # json writes NaN / Infinity (allow_nan), which Python reads back
    return obj


# ---------------------------------------------------------------------------- provenance
CONFIG_SCHEMA_VERSION = 1
"""Version of config.json's layout (a config without one predates it; its missing keys keep their old
meaning)."""


def provenance() -> dict:
    """Where and how a run was started: ``schema_version``, the command line, the start time, the git
    commit of the code (None outside a checkout), the machine (CPU count, memory, GPUs visible to the
    process) and the intra-op thread count of TensorFlow (``threads``, which a resume reuses: the
    thread count can change a result's last bits)."""
    import subprocess
    import sys

    source = Path(__file__).resolve().parents[1]  # the folder holding core/: a checkout's root, or site-packages
    try:
        found = subprocess.run(["git", "rev-parse", "--show-toplevel", "HEAD"], cwd=source,
                               capture_output=True, text=True, timeout=5)
        top, commit = (found.stdout.split("\n") + ["", ""])[:2] if found.returncode == 0 else ("", "")
        # only the toolkit's own checkout: an installed copy may sit inside another project's repository
        commit = commit.strip() if top and Path(top).resolve() == source else None
    except (OSError, subprocess.SubprocessError):
        commit = None
    memory = None
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        pass
    gpus = os.environ.get("CUDA_VISIBLE_DEVICES")
    return {
        "schema_version": CONFIG_SCHEMA_VERSION,
        "command_line": _command_line(sys.argv),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "git_commit": commit,
        "machine": {"cpu_count": os.cpu_count(), "memory_bytes": memory, "platform": platform.platform(),
                    "cuda_visible_devices": gpus},
        "threads": int(os.environ.get("TF_NUM_INTRAOP_THREADS") or os.cpu_count() or 1),
    }


def _command_line(argv: list[str]) -> list[str]:
    """``argv`` as typed: ``python -m pkg`` gives argv[0] = .../pkg/__main__.py, recorded as [python, -m, pkg]."""
    import sys

    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    if argv and argv[0].endswith("__main__.py") and spec is not None and spec.name.endswith(".__main__"):
        return [sys.executable, "-m", spec.name[:-len(".__main__")], *argv[1:]]
    return list(argv)


def library_versions() -> dict[str, str]:
    """Python, platform, this toolkit's version (``fdtrain-gnn``, also for an installed copy without git) and the
    installed versions of the libraries a run depends on."""
    from core import __version__

    versions = {"python": platform.python_version(), "platform": platform.platform(), "fdtrain-gnn": __version__}
    for name in _LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def file_checksum(path: str | os.PathLike, block: int = 1 << 20) -> str:
    """"sha256:<hex>" of a file's bytes (for recording which dataset a run used)."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            digest.update(chunk)
    return f"sha256:{digest.hexdigest()}"


def default_run_path(app: str, name: str | None = None, root: str | os.PathLike = "runs") -> Path:
    """``runs/<app>/<name or timestamp>`` (the timestamp has seconds; a suffix avoids collisions)."""
    base = Path(root) / app
    stem = name or time.strftime("%Y%m%d-%H%M%S")
    path, k = base / stem, 1
    while path.exists():
        path, k = base / f"{stem}-{k}", k + 1
    return path


def check_new_run_path(path: str | os.PathLike) -> Path:
    """Validate (without creating anything) that ``path`` can become a new run directory: it must not
    exist, or be an empty folder (a lock file left by a run killed before it wrote anything counts as
    empty). Missing parent folders are fine (they are created with the run). Raises :class:`RunError`."""
    path = Path(path)
    for parent in path.parents:  # the nearest existing ancestor must be a folder
        if parent.exists():
            if not parent.is_dir():
                raise RunError(f"{parent} is a file, not a folder")
            break
    if path.exists() and not path.is_dir():
        raise RunError(f"{path} is a file, not a run directory; choose another --out")
    if path.exists() and _has_content(path):
        raise RunError(f"{path} already exists and is not empty; use --resume {path} or another --out")
    return path


def _has_content(folder: Path) -> bool:
    return any(entry.name != LOCK for entry in folder.iterdir())


def approach_path(out: str | os.PathLike, name: str) -> Path:
    """``out/name``, the run directory of one approach of a group run; ``name`` must be one plain folder
    name, so that nothing a run writes can land outside ``out`` (RunError otherwise)."""
    out = Path(out)
    if not name or name in (".", "..") or "/" in name or os.sep in name or "\x00" in name:
        raise RunError(f"{name!r} is not a valid approach folder name")
    path = out / name
    if path.resolve().parent != out.resolve():
        raise RunError(f"{path} would lie outside the run directory {out}")
    return path


class RunLock:
    """An advisory lock (``fcntl.flock``) on ``<run>/.lock`` that claims a run directory for one process.

    The kernel releases a flock when its holder ends, however it ends (SIGKILL included), so a killed
    run can always be resumed, while a second run started into the same folder (or a resume of a run
    still going) is refused. The lock file holds the owner's pid, for the message.
    """

    def __init__(self, path: str | os.PathLike):
        import fcntl

        self.path = Path(path) / LOCK
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(self._fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(self._fd)
            raise RunError(f"{self.path.parent} is in use by another run (pid {owner}); wait for it to end or "
                           "choose another --out") from None
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"{os.getpid()}\n".encode(), 0)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the last descriptor releases the flock
            self._fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()


def claim_run_dir(path: str | os.PathLike, new: bool) -> RunLock:
    """Create ``path`` (and missing parents) and lock it (:class:`RunLock`); for a ``new`` run it must
    then still be empty (another run may have started into it since it was checked). RunError with a
    one-line message on any problem (including a read-only or full file system)."""
    path = Path(path)
    existed = path.is_dir()
    try:
        path.mkdir(parents=True, exist_ok=True)
        lock = RunLock(path)
    except OSError as exc:
        what = "lock" if existed else "create"  # (a finished run on a read-only file system: only the lock fails)
        raise RunError(f"cannot {what} the run directory {path}: {exc.strerror or exc}") from None
    if new and _has_content(path):
        lock.release()
        raise RunError(f"{path} already exists and is not empty; use --resume {path} or another --out")
    return lock


# ---------------------------------------------------------------------------- the run directory
class RunDir:
    """One run directory; see the module docstring for its files. Creating it makes the folder."""

    def __init__(self, path: str | os.PathLike, create: bool = True):
        self.path = Path(path)
        if create:
            self.path.mkdir(parents=True, exist_ok=True)
        elif not self.path.is_dir():
            raise RunError(f"run directory {self.path} does not exist")

    # files
    @property
    def config_path(self) -> Path:
        return self.path / CONFIG

    @property
    def metrics_path(self) -> Path:
        return self.path / METRICS

    @property
    def summary_path(self) -> Path:
        return self.path / SUMMARY

    @property
    def checkpoint_path(self) -> Path:
        return self.path / CHECKPOINT_DIR / CHECKPOINT

    def write_config(self, config: Mapping) -> None:
        """config.json: the given settings plus ``library_versions`` and :func:`provenance` (added here)."""
        atomic_write_json(self.config_path, {**provenance(), **config, "library_versions": library_versions()})

    def read_config(self) -> dict:
        if not self.config_path.is_file():
            raise RunError(f"{self.path} has no {CONFIG}; is it a run directory?")
        return json.loads(self.config_path.read_text())

    def write_metrics(self, columns: Sequence[str], rows: Sequence[Mapping]) -> None:
        atomic_write_csv(self.metrics_path, columns, rows)

    def write_summary(self, summary: Mapping) -> None:
        atomic_write_json(self.summary_path, summary)

    def read_summary(self) -> dict:
        return json.loads(self.summary_path.read_text())

    def read_metrics(self) -> list[dict[str, str]]:
        return read_csv(self.metrics_path)

    @property
    def finished(self) -> bool:
        """Whether the run ended normally: it has a summary, and the summary records no divergence."""
        return self.summary_path.is_file() and self.diverged is None

    @property
    def diverged(self) -> dict | None:
        """The summary's ``"diverged"`` entry (``{"epoch": k, "reason": ..., ...}``) of a run that stopped on
        non-finite values (:class:`RunDiverged`), or None (no summary yet, or a normal one). A diverged run
        has a summary but is not :attr:`finished`, and must not be resumed."""
        if not self.summary_path.is_file():
            return None
        try:
            summary = self.read_summary()
        except (OSError, ValueError) as exc:
            raise RunError(f"{self.summary_path} cannot be read ({' '.join(str(exc).split())})") from None
        return summary.get("diverged") if isinstance(summary, dict) else None

    # checkpoints
    # Version of the checkpoint's layout and meta. 1: meta records "schema_version"; a checkpoint without
    # it is the original layout, otherwise the same, and still loads.
    CHECKPOINT_SCHEMA_VERSION = 1

    def save_checkpoint(self, arrays: Mapping[str, np.ndarray], meta: Mapping) -> None:
        """One file holding named arrays and a JSON document ``meta`` (atomic as a whole); meta also
        records ``schema_version`` (:attr:`CHECKPOINT_SCHEMA_VERSION`)."""
        payload = {f"array/{k}": np.asarray(v) for k, v in arrays.items()}
        meta = {**meta, "schema_version": self.CHECKPOINT_SCHEMA_VERSION}
        payload["meta"] = np.array(json.dumps(_jsonable(meta), allow_nan=True))
        self.checkpoint_path.parent.mkdir(exist_ok=True)
        atomic_savez(self.checkpoint_path, **payload)

    def load_checkpoint(self) -> tuple[dict[str, np.ndarray], dict]:
        """The checkpoint's ``(arrays, meta)``, every array read (so its CRC is checked) before returning.

        Raises :class:`RunError` with one line naming the file if it is missing, or is not a readable
        checkpoint: empty, truncated, corrupted or foreign (not an npz archive, a single array, pickled
        data), without its ``meta`` entry, with meta that is not a JSON object, or of a newer
        ``schema_version``. What the arrays and meta must hold is checked by their user (the trainer).
        """
        import struct
        import zipfile
        import zlib

        path = self.checkpoint_path
        if not path.is_file():
            raise RunError(f"{self.path} has no checkpoint ({CHECKPOINT_DIR}/{CHECKPOINT})")
        # What np.load and zipfile raise for damaged bytes: a bad or truncated archive (BadZipFile,
        # EOFError, struct.error, zlib.error), a bad .npy header or pickled data (ValueError), flipped
        # header flags (NotImplementedError: compression method, RuntimeError: encrypted), a vanished
        # entry (KeyError), or the file system (OSError).
        damaged = (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError, NotImplementedError, RuntimeError,
                   struct.error, zlib.error)

        def unreadable(problem: str) -> RunError:
            return RunError(f"checkpoint {path} is not a readable checkpoint: {' '.join(problem.split())}")

        try:
            data = np.load(path, allow_pickle=False)
        except damaged as exc:
            raise unreadable(f"{type(exc).__name__}: {exc}") from None
        if not isinstance(data, np.lib.npyio.NpzFile):
            raise unreadable("a single NumPy array, not an npz archive")
        with data:
            if "meta" not in data.files:
                raise unreadable("it has no meta entry")
            try:
                entries = {k: data[k] for k in data.files}  # reads every entry: each name and CRC is checked
                unexpected = [k for k in entries if k != "meta" and not k.startswith("array/")]
                if unexpected:  # e.g. a damaged name in the archive's directory
                    raise KeyError(f"unexpected entry {unexpected[0]!r}")
                arrays = {k[len("array/"):]: v for k, v in entries.items() if k.startswith("array/")}
                entry = entries["meta"]
                if entry.shape != () or entry.dtype.kind != "U":
                    raise ValueError(f"meta is a {entry.dtype} array of shape {entry.shape}, not a JSON string")
                meta = json.loads(str(entry))
            except damaged as exc:
                raise unreadable(f"{type(exc).__name__}: {exc}") from None
        if not isinstance(meta, dict):
            raise unreadable(f"meta is a JSON {type(meta).__name__}, not an object")
        version = meta.get("schema_version", 0)  # absent: the original format
        if not isinstance(version, int) or isinstance(version, bool) or version < 0:
            raise unreadable(f"schema_version {version!r} is not a non-negative integer")
        if version > self.CHECKPOINT_SCHEMA_VERSION:
            raise RunError(f"checkpoint {path} has schema_version {version}, newer than this version reads "
                           f"({self.CHECKPOINT_SCHEMA_VERSION}); resume it with the version that wrote it")
        return arrays, meta

    def has_checkpoint(self) -> bool:
        return self.checkpoint_path.is_file()
