"""Run directories (DESIGN section 5): atomic writes, config with library versions, metrics, checkpoints.

A run directory holds

- ``config.json``: every flag of the run, the seed, library versions, dataset path and checksum;
- ``metrics.csv``: one row per logged step (``epoch, step, mp_rounds, floats_sent, ...``);
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

_LIBRARIES = ("tensorflow-cpu", "tensorflow", "numpy", "scipy", "networkx", "h5py", "matplotlib", "tqdm")


class RunError(ValueError):
    """A run directory cannot be created or resumed (bad path, existing run, missing checkpoint)."""


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
def library_versions() -> dict[str, str]:
    """Python, platform and the installed versions of the libraries a run depends on."""
    versions = {"python": platform.python_version(), "platform": platform.platform()}
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


def check_new_run_path(path: str | os.PathLike, create_parents: bool = False) -> Path:
    """Validate (without creating anything) that ``path`` can become a new run directory.

    Its parent must exist unless ``create_parents``; ``path`` itself must not exist or be an empty
    folder. Raises :class:`RunError` with a one-line message otherwise.
    """
    path = Path(path)
    if not create_parents and not path.parent.is_dir():
        raise RunError(f"output folder {path.parent} does not exist")
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise RunError(f"{path} already exists and is not empty; use --resume {path} or another --out")
    return path


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
        """config.json: the given settings plus ``library_versions`` (added here)."""
        atomic_write_json(self.config_path, {**config, "library_versions": library_versions()})

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
        return self.summary_path.is_file()

    # checkpoints
    def save_checkpoint(self, arrays: Mapping[str, np.ndarray], meta: Mapping) -> None:
        """One file holding named arrays and a JSON document ``meta`` (atomic as a whole)."""
        payload = {f"array/{k}": np.asarray(v) for k, v in arrays.items()}
        payload["meta"] = np.array(json.dumps(_jsonable(meta), allow_nan=True))
        self.checkpoint_path.parent.mkdir(exist_ok=True)
        atomic_savez(self.checkpoint_path, **payload)

    def load_checkpoint(self) -> tuple[dict[str, np.ndarray], dict]:
        if not self.checkpoint_path.is_file():
            raise RunError(f"{self.path} has no checkpoint ({CHECKPOINT_DIR}/{CHECKPOINT})")
        with np.load(self.checkpoint_path, allow_pickle=False) as data:
            arrays = {k[len("array/"):]: data[k] for k in data.files if k.startswith("array/")}
            meta = json.loads(str(data["meta"]))
        return arrays, meta

    def has_checkpoint(self) -> bool:
        return self.checkpoint_path.is_file()
