"""On-disk format shared by every dataset kind: HDF5 files with a schema, metadata and a checksum.

A dataset kind declares a `Schema`: its name, an integer version and the arrays it stores, each an
`ArraySpec` with a dtype, symbolic dimension names (so that e.g. every `train/*` array must agree on
the number of batches) and content checks. This module then provides both directions:

Writing, `write_dataset(path, schema, config, generator, attrs)`: a context manager yielding a
`DatasetWriter` whose `create_array` / `append` stream arrays to disk along their first axis (the
"row" axis: a batch, a graph, ...), hashing the bytes as they go. The file is written under a
temporary name in the destination folder and moved to `path` with `os.replace` only after every
array is complete and the metadata is written, so an interrupted or failed run never leaves a file
under the final name. Writers of one path exclude each other with an advisory lock (`claim_output`),
and a writer removes the hidden temporaries (`.<name>.<pid>.<hex>.tmp`) that killed writers of the
same path left behind (`remove_stale_temporaries`).

Reading, `DatasetReader(path, schema)`: opens the file, checks the root attributes and the presence,
dtype and shape of every array, and reads rows on demand (`read`), checking their content. A full
pass (`verify`) also recomputes the checksum. Every problem raises `DatasetError` naming the file,
whatever the file holds (never a KeyError or TypeError from a config of the wrong shape).

Root attributes of every file (the names are the constants below):

* `schema` (str, the kind) and `schema_version` (int);
* `generator` (str, "<module> <version>" of the code that wrote it);
* `config` (str, JSON of every generation parameter including the seed);
* any kind-specific scalar attributes (e.g. `noise_power_w`);
* `checksum` (str, "sha256:<hex>"): SHA-256 over the canonical JSON of all the other root
  attributes and, for every array in name order, its name, dtype, shape and the SHA-256 of its bytes
  in C order. Each array also carries its own digest in its `sha256` attribute.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import math
import os
import re
import secrets
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

ATTR_SCHEMA = "schema"
ATTR_SCHEMA_VERSION = "schema_version"
ATTR_GENERATOR = "generator"
ATTR_CONFIG = "config"
ATTR_CHECKSUM = "checksum"
ARRAY_DIGEST_ATTR = "sha256"

_VERIFY_BLOCK_BYTES = 64 * 2**20  # rows are re-read in blocks of about this size by `verify`
_MAX_CHUNK_BYTES = 2**32 - 1  # HDF5 refuses chunks of 4 GiB or more
_CHUNK_OVERHEAD_BYTES = 128  # HDF5's index per chunk, rounded up (about 65 bytes measured)


class DatasetError(Exception):
    """A dataset file is missing, truncated, corrupted, of another kind or schema version."""


class OutputBusyError(ValueError):
    """Another writer (process or thread) holds the output path. A ValueError because it is refused
    before anything is written, like a bad flag."""


_H5_ERRORS = (OSError, ValueError, KeyError, RuntimeError, TypeError)
"""What h5py raises on a damaged file (RuntimeError for damaged attribute headers, TypeError for a garbled string
type); caught where a file is read and turned into a DatasetError."""


class GeneratedDataError(RuntimeError):
    """A generator produced rows that the schema's content checks refuse (e.g. gains that overflow float32)."""


ContentCheck = Callable[[np.ndarray], "str | None"]
"""Validates rows of an array; returns None if fine, else a description of the problem."""


def check_item(index, count: int, what: str) -> int:
    """``index`` as an int in [0, count) (no negative indexing from the end); an IndexError naming ``what``
    (e.g. "train batch") and the count otherwise."""
    if isinstance(index, bool) or not isinstance(index, int | np.integer) or not 0 <= index < count:
        raise IndexError(f"{what} {index!r} does not exist: there are {count}, numbered 0 to {count - 1}")
    return int(index)


def check_finite(rows: np.ndarray) -> str | None:
    """Content check: every value is finite (no NaN or infinity)."""
    if rows.dtype.kind == "f" and not np.all(np.isfinite(rows)):
        return "contains NaN or infinite values"
    return None


def check_non_negative(rows: np.ndarray) -> str | None:
    """Content check: no value is negative."""
    if np.any(rows < 0):
        return f"contains negative values (min {np.min(rows):g})"
    return None


@dataclass(frozen=True)
class ArraySpec:
    """One array of a schema.

    `dims` names each axis (the first is the row axis); arrays that share a name must have equal sizes
    along those axes. `checks` run on every row that is read (and on every row in `verify`).
    """

    name: str
    dims: tuple[str, ...]
    dtype: np.dtype | type
    checks: tuple[ContentCheck, ...] = (check_finite,)

    @property
    def numpy_dtype(self) -> np.dtype:
        return np.dtype(self.dtype)


@dataclass(frozen=True)
class Schema:
    """A dataset kind's on-disk layout: its name, integer version, arrays and the root attributes it adds to the
    common ones (`attributes`: required; `positive_attributes`: required finite numbers > 0, e.g. powers in W)."""

    name: str
    version: int
    arrays: tuple[ArraySpec, ...]
    attributes: tuple[str, ...] = ()
    positive_attributes: tuple[str, ...] = ()
    _by_name: dict[str, ArraySpec] = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "_by_name", {spec.name: spec for spec in self.arrays})

    def spec(self, name: str) -> ArraySpec:
        """The `ArraySpec` called `name`; KeyError if the schema has none."""
        return self._by_name[name]


class DatasetWriter:
    """Streams the arrays of one file (obtain it from `write_dataset`)."""

    def __init__(self, file: h5py.File, schema: Schema):
        self._file = file
        self._schema = schema
        self._filled: dict[str, int] = {}  # rows written so far, per array
        self._hashes: dict = {}  # running SHA-256 of each array's bytes, in row order

    def create_array(self, name: str, shape: tuple[int, ...], rows_per_chunk: int = 1) -> None:
        """Create array `name` of the schema with `shape`, chunked by `rows_per_chunk` rows."""
        spec = self._schema.spec(name)
        if len(shape) != len(spec.dims):
            raise ValueError(f"{name} has dims {spec.dims}, got shape {shape}")
        chunks = _chunk_shape(shape, rows_per_chunk, spec.numpy_dtype.itemsize) if all(shape) else None
        # track_times=False keeps the bytes of a file a pure function of its content (determinism).
        self._file.create_dataset(name, shape=shape, dtype=spec.numpy_dtype, chunks=chunks, track_times=False)
        self._filled[name] = 0
        self._hashes[name] = hashlib.sha256()

    def append(self, name: str, rows: np.ndarray) -> None:
        """Write `rows` (shape (k, *shape[1:])) after the rows already written to `name`."""
        dataset = self._file[name]
        rows = np.ascontiguousarray(rows, dtype=dataset.dtype)
        start = self._filled[name]
        if rows.shape[1:] != dataset.shape[1:] or start + rows.shape[0] > dataset.shape[0]:
            raise ValueError(
                f"cannot append rows of shape {rows.shape} to {name} {dataset.shape} at row {start}"
            )
        for check in self._schema.spec(name).checks:  # what the readers would refuse is never written
            problem = check(rows)
            if problem:
                raise GeneratedDataError(f"the generated {name}[{start}:{start + rows.shape[0]}] {problem} "
                                         f"(as {dataset.dtype}); settings outside what the data type holds?")
        dataset[start : start + rows.shape[0]] = rows
        self._hashes[name].update(rows)  # C-contiguous: hashes exactly the bytes of rows.tobytes()
        self._filled[name] = start + rows.shape[0]

    def _finish(self, metadata: Mapping[str, object]) -> None:
        missing = [spec.name for spec in self._schema.arrays if spec.name not in self._filled]
        incomplete = [n for n, rows in self._filled.items() if rows != self._file[n].shape[0]]
        if missing or incomplete:
            raise RuntimeError(f"dataset incomplete: missing arrays {missing}, partly written {incomplete}")
        digests = {name: h.hexdigest() for name, h in self._hashes.items()}
        for name, digest in digests.items():
            self._file[name].attrs[ARRAY_DIGEST_ATTR] = digest
        for key, value in metadata.items():
            self._file.attrs[key] = value
        self._file.attrs[ATTR_CHECKSUM] = _combine_checksum(metadata, self._array_entries(digests))

    def _array_entries(self, digests: Mapping[str, str]) -> list[tuple[str, str, tuple[int, ...], str]]:
        return [(n, self._file[n].dtype.str, self._file[n].shape, d) for n, d in digests.items()]


@contextmanager
def write_dataset(
    path: str | os.PathLike,
    schema: Schema,
    config: Mapping[str, object],
    generator: str,
    attrs: Mapping[str, object] | None = None,
) -> Iterator[DatasetWriter]:
    """Write a dataset file atomically; yields a `DatasetWriter`.

    `config` (JSON-serialisable: every generation parameter and the seed) is stored as the `config`
    attribute, `generator` as `generator`, and `attrs` (scalars or strings) as further root
    attributes. On normal exit every array of `schema` must have been created and filled; the
    checksum is written and the file is moved to `path` (replacing an existing file). If the body
    raises (including KeyboardInterrupt), the temporary file is removed and `path` is untouched.

    The path is claimed for the whole write (`claim_output`; OutputBusyError if another writer holds
    it), and temporaries of `path` left by killed writers are removed first.
    """
    final = Path(path)
    metadata = {
        ATTR_SCHEMA: schema.name,
        ATTR_SCHEMA_VERSION: int(schema.version),
        ATTR_GENERATOR: generator,
        ATTR_CONFIG: json.dumps(config, sort_keys=True),
        **(attrs or {}),
    }
    with claim_output(final):
        remove_stale_temporaries(final)
        # Same folder as the destination, so that os.replace is an atomic rename on one file system.
        temporary = final.parent / f".{final.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        try:
            with h5py.File(temporary, "x") as file:
                writer = DatasetWriter(file, schema)
                yield writer
                writer._finish(metadata)
            _fsync(temporary)
            os.replace(temporary, final)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise


def lock_path(path: str | os.PathLike) -> Path:
    """The lock file of output `path`: hidden, next to it (`.<name>.lock`)."""
    path = Path(path)
    return path.parent / f".{path.name}.lock"


# Claims held by this process: lock-file path -> [descriptor, owning thread, nesting depth].
_claims: dict[str, list] = {}
_claims_guard = threading.Lock()


@contextmanager
def claim_output(path: str | os.PathLike) -> Iterator[None]:
    """Hold the advisory lock of output `path` (`fcntl.flock` on `lock_path(path)`) for the block.

    Raises OutputBusyError naming the holder's pid if another process or thread holds it; nested
    claims of the same path by one thread are allowed (the CLI claims the path before calling a
    generator, whose `write_dataset` claims it again). The kernel drops the lock when its holder
    dies, even by SIGKILL, so a crash never blocks the next run (it only leaves the unlocked file,
    which the next claim reuses); the lock file is removed when the outermost claim ends. The folder
    of `path` must exist. OSError if the lock file cannot be created (read-only file system, no
    permission). Not an O_EXCL file: one of those would survive a killed holder and block every run.
    """
    key = os.path.abspath(lock_path(path))
    me = (os.getpid(), threading.get_ident())  # the pid: a forked child must not inherit a claim
    with _claims_guard:
        held = _claims.get(key)
        if held is not None and held[1] == me:
            held[2] += 1
        elif held is not None and held[1][0] == me[0]:
            raise OutputBusyError(f"{path} is being written by another thread of this process")
        else:
            held = _claims[key] = [_lock(key, path), me, 1]
    try:
        yield
    finally:
        with _claims_guard:
            held[2] -= 1
            if held[2] == 0:
                del _claims[key]
                # Unlink while still locked: a process that opened the file meanwhile notices (see _lock).
                Path(key).unlink(missing_ok=True)
                os.close(held[0])


def _lock(key: str, path) -> int:
    """Open and flock the lock file `key`; returns the descriptor, with our pid written into the file."""
    while True:
        descriptor = os.open(key, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(descriptor)
            os.close(descriptor)
            raise OutputBusyError(
                f"{path} is being written by another process" + (f" (pid {holder})" if holder else "")
            ) from None
        except BaseException:
            os.close(descriptor)
            raise
        # If the previous holder unlinked the file between our open and our flock, we hold a lock on
        # a file nobody else can see: start again with the file now at that path.
        try:
            current = os.stat(key)
            opened = os.fstat(descriptor)
            if (current.st_dev, current.st_ino) == (opened.st_dev, opened.st_ino):
                break
        except FileNotFoundError:
            pass
        os.close(descriptor)
    try:
        os.ftruncate(descriptor, 0)
        os.write(descriptor, f"{os.getpid()}\n".encode())
    except BaseException:
        Path(key).unlink(missing_ok=True)
        os.close(descriptor)
        raise
    return descriptor


def _read_pid(descriptor: int) -> int | None:
    try:
        text = os.pread(descriptor, 32, 0).decode("ascii").strip()
        return int(text) if text.isdigit() else None
    except (OSError, UnicodeDecodeError):
        return None


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Remove the temporaries of `path` (see `write_dataset`) whose writer is gone; returns them.

    Call it while holding `claim_output(path)`: every writer of `path` holds that claim, so a
    temporary found then is not being written, unless by a writer that does not lock (an older
    version of this code); as a second guard, only temporaries whose pid (in the name) is this
    process or no running process are removed.
    """
    path = Path(path)
    pattern = re.compile(rf"\.{re.escape(path.name)}\.(\d+)\.[0-9a-f]{{8}}\.tmp")
    removed = []
    try:
        entries = list(os.scandir(path.parent))
    except OSError:
        return removed
    for entry in entries:
        match = pattern.fullmatch(entry.name)
        if match and entry.is_file(follow_symlinks=False) and not _is_other_live_process(int(match[1])):
            try:
                os.unlink(entry.path)
            except OSError:  # gone already, or not ours to remove: never mask the caller's own error
                continue
            removed.append(Path(entry.path))
    return removed


def _is_other_live_process(pid: int) -> bool:
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)  # signal 0: only checks that the process exists
    except PermissionError:
        return True  # it exists, and belongs to another user
    except (ProcessLookupError, OverflowError):
        return False
    return True


def estimate_file_bytes(
    schema: Schema, dims: Mapping[str, int], rows_per_chunk: int | Mapping[str, int] = 1
) -> int:
    """Upper estimate of the size of a file of `schema` with dimension sizes `dims`, written with
    `DatasetWriter.create_array(..., rows_per_chunk)` (one value for every array, or by array name,
    1 for the arrays it omits).

    HDF5 stores whole chunks (a last, partly filled chunk takes a full chunk's space), plus an index
    entry per chunk and the metadata.
    """
    total = 64 * 1024  # superblock, groups, attributes
    for spec in schema.arrays:
        shape = tuple(int(dims[d]) for d in spec.dims)
        if not all(shape):
            continue
        itemsize = spec.numpy_dtype.itemsize
        rows = rows_per_chunk if isinstance(rows_per_chunk, int) else rows_per_chunk.get(spec.name, 1)
        chunks = _chunk_shape(shape, rows, itemsize)
        count = math.prod(-(-size // chunk) for size, chunk in zip(shape, chunks))
        total += count * (itemsize * math.prod(chunks) + _CHUNK_OVERHEAD_BYTES)
    return total


def _chunk_shape(shape: tuple[int, ...], rows_per_chunk: int, itemsize: int) -> tuple[int, ...]:
    """(rows_per_chunk, *shape[1:]), cut along the first axes as far as needed to stay below HDF5's
    chunk-size limit (only huge rows are cut, so ordinary files keep one or more whole rows per chunk)."""
    chunks = [max(1, min(rows_per_chunk, shape[0])), *shape[1:]]
    for axis in range(len(chunks)):
        others = itemsize * math.prod(chunks[:axis]) * math.prod(chunks[axis + 1 :])
        if others * chunks[axis] <= _MAX_CHUNK_BYTES:
            break
        chunks[axis] = max(1, _MAX_CHUNK_BYTES // others)
    return tuple(chunks)


class DatasetReader:
    """Opens a dataset file of a given schema and validates it; base of the kind-specific loaders.

    On construction: the file must open as HDF5, carry the root attributes of this module with the
    expected `schema` and `schema_version`, a `config` that parses as a JSON object, and every array
    of the schema with the right dtype and number of axes; axes sharing a dimension name must agree,
    and `expected_dims` (e.g. sizes read from the config) must match. Raises `DatasetError` otherwise.
    Content checks run on each row read (`read`), or on all rows in `verify`.
    Use as a context manager or call `close`.

    A subclass that sets `config_class` (a dataclass whose constructor validates its fields, such
    as the kinds' configs) gets `parsed_config`, built from the stored config, which must then have
    every field of the class and pass its validation.
    """

    config_class: type | None = None

    def __init__(self, path: str | os.PathLike, schema: Schema):
        self.path = Path(path)
        self.schema = schema
        self._datasets: dict[str, h5py.Dataset] = {}
        self.parsed_config = None
        if self.path.is_dir():
            raise DatasetError(f"{self.path}: a folder, not a dataset file")
        if not self.path.is_file():
            raise DatasetError(f"{self.path}: no such dataset file")
        try:
            self.file = h5py.File(self.path, "r")
        except OSError as exc:
            raise DatasetError(
                f"{self.path}: not a readable HDF5 file (truncated or corrupted?): {exc}"
            ) from exc
        try:
            self.attrs = self._read_attributes()
            self.config: dict = self.attrs[ATTR_CONFIG]
            if self.config_class is not None:
                self.parsed_config = self._parse_config(self.config_class)
            self.dims = self._check_arrays()
            self._check_expected_dims()
        except BaseException:
            self.file.close()
            raise

    def expected_dims(self) -> Mapping[str, int]:
        """Hook for subclasses: dimension sizes fixed by the metadata (e.g. by `self.config`).

        Checked against the arrays on construction; a KeyError (a config entry missing), TypeError or
        ValueError (an entry of the wrong type) becomes a `DatasetError`.
        """
        return {}

    def read(self, name: str, index: int | slice) -> np.ndarray:
        """Rows `index` of array `name` (an int gives one row without the row axis), content-checked."""
        try:
            if name not in self._datasets:  # h5py's path lookup costs as much as reading a small row
                self._datasets[name] = self.file[name]
            rows = self._datasets[name][index]
        except _H5_ERRORS as exc:
            raise DatasetError(f"{self.path}: cannot read {name}[{_format_index(index)}]: {exc}") from exc
        for check in self.schema.spec(name).checks:
            problem = check(rows)
            if problem:
                raise DatasetError(f"{self.path}: {name}[{self._first_bad(name, index, rows, check)}] {problem}")
        return rows

    def _first_bad(self, name: str, index: int | slice, rows: np.ndarray, check) -> str:
        """Where ``check`` fails among ``rows`` (array ``name``'s rows ``index``): the first failing row, or the
        rows' range within the array (a slice may reach past its end)."""
        if not isinstance(index, slice):
            return str(index)
        start, stop, step = index.indices(self._datasets[name].shape[0])
        if step == 1:
            for i in range(len(rows)):
                if check(rows[i:i + 1]):
                    return str(start + i)
        return _format_index(slice(start, stop))

    def verify(self) -> None:
        """Read every row (content checks) and recompute the checksum; raise `DatasetError` on mismatch."""
        digests = {}
        for spec in self.schema.arrays:
            dataset = self.file[spec.name]
            row_bytes = max(1, dataset.dtype.itemsize * int(np.prod(dataset.shape[1:])))
            step = max(1, _VERIFY_BLOCK_BYTES // row_bytes)
            digest = hashlib.sha256()
            for start in range(0, dataset.shape[0], step):
                digest.update(np.ascontiguousarray(self.read(spec.name, slice(start, start + step))))
            digests[spec.name] = digest.hexdigest()
            try:
                stored = _plain(dataset.attrs.get(ARRAY_DIGEST_ATTR))
            except _H5_ERRORS as exc:
                raise DatasetError(f"{self.path}: unreadable checksum of {spec.name}: {exc}") from None
            if stored != digests[spec.name]:
                raise DatasetError(f"{self.path}: {spec.name} does not match its checksum (corrupted data)")
        entries = [(n, self.file[n].dtype.str, self.file[n].shape, d) for n, d in digests.items()]
        metadata = {key: self.file.attrs[key] for key in self.file.attrs if key != ATTR_CHECKSUM}
        if _combine_checksum(metadata, entries) != self.checksum:
            raise DatasetError(f"{self.path}: metadata does not match the checksum (corrupted attributes)")

    @property
    def checksum(self) -> str:
        """The stored content checksum, "sha256:<hex>"."""
        return self.attrs[ATTR_CHECKSUM]

    def close(self) -> None:
        self.file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _read_attributes(self) -> dict:
        attrs = {}
        try:
            for key in self.file.attrs:
                attrs[key] = _plain(self.file.attrs[key])
        except _H5_ERRORS as exc:
            raise DatasetError(f"{self.path}: unreadable attributes (corrupted file?): {exc}") from exc
        garbled = [key for key in attrs if not isinstance(key, str)]
        if garbled:
            raise DatasetError(f"{self.path}: an attribute name is not text ({garbled[0]!r}; corrupted file?)")
        missing = [
            k
            for k in (ATTR_SCHEMA, ATTR_SCHEMA_VERSION, ATTR_GENERATOR, ATTR_CONFIG, ATTR_CHECKSUM,
                      *self.schema.attributes, *self.schema.positive_attributes)
            if k not in attrs
        ]
        if ATTR_SCHEMA in missing:
            raise DatasetError(f"{self.path}: not a dataset of this project (no {ATTR_SCHEMA!r} attribute)")
        if attrs[ATTR_SCHEMA] != self.schema.name:
            raise DatasetError(
                f"{self.path}: is a {attrs[ATTR_SCHEMA]!r} dataset, expected {self.schema.name!r}"
            )
        if missing:
            raise DatasetError(f"{self.path}: missing root attributes {missing}")
        version = attrs[ATTR_SCHEMA_VERSION]
        if not isinstance(version, int) or isinstance(version, bool):
            raise DatasetError(f"{self.path}: the {ATTR_SCHEMA_VERSION!r} attribute is {version!r}, not an integer "
                               "(corrupted attributes?)")
        for key in self.schema.positive_attributes:
            value = attrs[key]
            if not (isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
                    and value > 0):
                raise DatasetError(f"{self.path}: the {key!r} attribute is {value!r}, expected a number > 0")
        if attrs[ATTR_SCHEMA_VERSION] != self.schema.version:
            raise DatasetError(
                f"{self.path}: schema version {attrs[ATTR_SCHEMA_VERSION]} of {self.schema.name!r}, "
                "this code "
                f"reads version {self.schema.version}; regenerate the dataset"
            )
        try:
            attrs[ATTR_CONFIG] = json.loads(attrs[ATTR_CONFIG])
        except (TypeError, ValueError, RecursionError) as exc:
            raise DatasetError(
                f"{self.path}: the {ATTR_CONFIG!r} attribute is not valid JSON: {exc}"
            ) from exc
        if not isinstance(attrs[ATTR_CONFIG], dict):
            raise DatasetError(
                f"{self.path}: the {ATTR_CONFIG!r} attribute is a JSON {_json_type(attrs[ATTR_CONFIG])}, "
                "expected an object of generation parameters"
            )
        return attrs

    def _parse_config(self, config_class: type):
        fields = [f.name for f in dataclasses.fields(config_class)]
        missing = [name for name in fields if name not in self.config]
        if missing:
            raise DatasetError(f"{self.path}: the {ATTR_CONFIG!r} attribute lacks the entries {missing}")
        try:
            return config_class(**{name: self.config[name] for name in fields})
        except (TypeError, ValueError, ArithmeticError) as exc:
            raise DatasetError(f"{self.path}: the stored {ATTR_CONFIG!r} is invalid: {exc}") from None

    def _check_arrays(self) -> dict[str, int]:
        dims: dict[str, tuple[int, str]] = {}
        for spec in self.schema.arrays:
            try:
                dataset = self.file[spec.name]
            except KeyError:
                raise DatasetError(f"{self.path}: missing array {spec.name!r}") from None
            except (OSError, ValueError) as exc:  # e.g. a dangling external link
                raise DatasetError(f"{self.path}: cannot open array {spec.name!r}: {exc}") from None
            if not isinstance(dataset, h5py.Dataset):
                raise DatasetError(f"{self.path}: {spec.name!r} is not an array")
            if dataset.dtype != spec.numpy_dtype:
                raise DatasetError(
                    f"{self.path}: {spec.name} has dtype {dataset.dtype}, expected {spec.numpy_dtype}"
                )
            if dataset.ndim != len(spec.dims):
                raise DatasetError(
                    f"{self.path}: {spec.name} has shape {dataset.shape}, expected axes {spec.dims}"
                )
            for dim, size in zip(spec.dims, dataset.shape, strict=True):
                if dim not in dims:
                    dims[dim] = (size, spec.name)
                elif dims[dim][0] != size:
                    raise DatasetError(
                        f"{self.path}: {spec.name} has {dim}={size} "
                        f"but {dims[dim][1]} has {dim}={dims[dim][0]}"
                    )
        return {dim: size for dim, (size, _) in dims.items()}

    def _check_expected_dims(self) -> None:
        try:
            expected = dict(self.expected_dims())
        except KeyError as exc:
            raise DatasetError(f"{self.path}: the {ATTR_CONFIG!r} attribute lacks the entry {exc}") from None
        except (TypeError, ValueError, ArithmeticError) as exc:
            raise DatasetError(f"{self.path}: the stored {ATTR_CONFIG!r} is invalid: {exc}") from None
        for name, size in expected.items():
            if self.dims.get(name) != size:
                raise DatasetError(
                    f"{self.path}: dimension {name!r} is {self.dims.get(name)} in the arrays but {size} "
                    "in the metadata"
                )


def _combine_checksum(metadata: Mapping[str, object], entries) -> str:
    digest = hashlib.sha256()
    plain = {key: _plain(value) for key, value in metadata.items() if key != ATTR_CHECKSUM}
    digest.update(json.dumps(plain, sort_keys=True).encode())
    for name, dtype, shape, array_digest in sorted(entries):
        digest.update(f"\n{name}\t{dtype}\t{tuple(int(s) for s in shape)}\t{array_digest}".encode())
    return f"sha256:{digest.hexdigest()}"


def stored_kind(path: str | os.PathLike) -> str:
    """The `schema` attribute (the dataset kind) of a dataset file, read without knowing its kind; raises
    `DatasetError` naming the file when it is missing, a folder, not HDF5, or not a dataset of this project."""
    path = Path(path)
    if path.is_dir():
        raise DatasetError(f"{path}: a folder, not a dataset file")
    if not path.is_file():
        raise DatasetError(f"{path}: no such dataset file")
    try:
        with h5py.File(path, "r") as file:
            kind = _plain(file.attrs.get(ATTR_SCHEMA))
    except _H5_ERRORS as exc:
        raise DatasetError(f"{path}: not a readable HDF5 file (truncated or corrupted?): {exc}") from exc
    if not isinstance(kind, str):
        raise DatasetError(f"{path}: not a dataset of this project (no {ATTR_SCHEMA!r} attribute)")
    return kind


def describe(reader: DatasetReader) -> dict:
    """What an open dataset holds, as plain JSON values: its kind and schema version, the code that wrote it,
    the checksum, the file size, the generation settings, the kind's other root attributes and every array's
    dtype and shape."""
    common = (ATTR_SCHEMA, ATTR_SCHEMA_VERSION, ATTR_GENERATOR, ATTR_CONFIG, ATTR_CHECKSUM)
    return {
        "file": str(reader.path),
        "kind": reader.attrs[ATTR_SCHEMA],
        "schema_version": reader.attrs[ATTR_SCHEMA_VERSION],
        "generator": reader.attrs[ATTR_GENERATOR],
        "checksum": reader.checksum,
        "bytes": reader.path.stat().st_size,
        "config": reader.config,
        "attributes": {k: v for k, v in reader.attrs.items() if k not in common},
        "arrays": {spec.name: {"dtype": str(reader.file[spec.name].dtype), "shape": list(reader.file[spec.name].shape)}
                   for spec in reader.schema.arrays},
    }


def _plain(value):
    """HDF5 attribute value (numpy scalar, bytes) -> plain Python value for JSON and comparisons."""
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


def _json_type(value) -> str:
    """The JSON name of the type of a parsed JSON value."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    return {list: "array", str: "string", int: "number", float: "number"}.get(type(value), "object")


def _format_index(index: int | slice) -> str:
    if isinstance(index, slice):
        return f"{index.start or 0}:{'' if index.stop is None else index.stop}"
    return str(index)


def _fsync(path: str) -> None:
    # Make the data durable before the rename publishes it, so a crash cannot expose a torn file.
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
