"""Will a job fit? Available memory and disk space, checked before any work starts.

A generator that asks for more memory than the machine has is killed by the kernel's OOM killer after
minutes of swapping, and one that fills the disk can crash inside HDF5's flush; both are better
refused up front with one line saying how much is needed and how much there is. The functions here
are plain standard library (no NumPy), so any part of the project can reuse them:

* `available_memory_bytes()`: memory a new allocation can get without swapping, or None if unknown;
* `check_fits(needed_bytes, what)`: ValueError with a one-line message if `needed_bytes` exceeds
  `MEMORY_FRACTION` of it;
* `check_disk_space(folder, needed_bytes, what)`: the same for the free space of a folder;
* `format_bytes(n)`: "1.5 GB" style sizes for such messages.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

MEMORY_FRACTION = 0.8
"""Share of the available memory a job may plan to use: the estimates are approximate, and the rest
of the system (page cache, other processes) keeps working."""

DISK_MARGIN_BYTES = 64 * 2**20
DISK_MARGIN_FRACTION = 0.05
"""Free space kept beyond a file's estimated size: HDF5 metadata, and room for the rest of the system."""

_UNLIMITED = 2**60  # cgroup limits at or above this mean "no limit"
_CGROUP_ROOT = Path("/sys/fs/cgroup")  # inside a container: the container's own cgroup
_MEMINFO = "/proc/meminfo"


def available_memory_bytes() -> int | None:
    """Bytes of memory available to new allocations without swapping; None if it cannot be read.

    Linux: `MemAvailable` of /proc/meminfo (free memory plus reclaimable caches), capped by the
    memory limit of the process's cgroup (containers) minus what the cgroup already uses apart from
    reclaimable file cache. Elsewhere: the free physical pages of `os.sysconf`.
    """
    available = _meminfo_available()
    if available is None:
        available = _sysconf_available()
    limit = _cgroup_headroom()
    if limit is not None:
        available = limit if available is None else min(available, limit)
    return available


def check_fits(needed_bytes: int, what: str, available: int | None = None, hint: str = "") -> None:
    """Raise ValueError (one line) if `what` needs more than `MEMORY_FRACTION` of the available memory.

    `what` completes "<what> needs about ...", e.g. "generating this dataset"; `hint`, if given, is
    appended after a semicolon (e.g. what the need grows with). `available` defaults to
    `available_memory_bytes()`; if that is unknown the check passes (better to try than to refuse a
    job on a guess).
    """
    if available is None:
        available = available_memory_bytes()
    if available is None or needed_bytes <= MEMORY_FRACTION * available:
        return
    raise ValueError(
        f"{what} needs about {format_bytes(needed_bytes)} of memory, more than "
        f"{MEMORY_FRACTION:.0%} of the {format_bytes(available)} available" + (f"; {hint}" if hint else "")
    )


def check_disk_space(folder: str | os.PathLike, needed_bytes: int, what: str) -> None:
    """Raise ValueError (one line) unless `folder`'s file system has room for `needed_bytes` plus a margin.

    The margin is `DISK_MARGIN_FRACTION` of the size plus `DISK_MARGIN_BYTES`. `folder` must exist;
    if its free space cannot be read the check passes.
    """
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return
    required = int(needed_bytes * (1 + DISK_MARGIN_FRACTION)) + DISK_MARGIN_BYTES
    if free < required:
        raise ValueError(
            f"{what} needs about {format_bytes(required)} of disk space in {folder} (file and margin), "
            f"only {format_bytes(free)} is free"
        )


def format_bytes(count: float) -> str:
    """A byte count in decimal units, three significant digits: 950 B, 12.3 MB, 2.56 TB."""
    for unit in ("B", "kB", "MB", "GB", "TB", "PB"):
        if abs(count) < 999.5 or unit == "PB":  # 999.5 would print as "1e+03"
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.3g} {unit}"
        count /= 1000
    raise AssertionError("unreachable")


def _meminfo_available() -> int | None:
    try:
        with open(_MEMINFO, encoding="ascii") as file:
            for line in file:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024  # the value is in kB (KiB, in fact)
    except (OSError, ValueError, IndexError):
        pass
    return None


def _sysconf_available() -> int | None:
    try:
        pages = os.sysconf("SC_AVPHYS_PAGES")
        size = os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None
    return pages * size if pages > 0 and size > 0 else None


def _cgroup_headroom() -> int | None:
    """limit - (usage - inactive file cache) of the cgroup mounted at `_CGROUP_ROOT` (v2, else v1);
    None without a limit. (The inactive file cache is reclaimed before the OOM killer acts.)"""
    for limit_name, usage_name, stat_name, inactive_key in _CGROUP_FILES:
        try:
            limit = (_CGROUP_ROOT / limit_name).read_text().strip()
        except OSError:
            continue  # not this cgroup version
        if not limit.isdigit() or int(limit) >= _UNLIMITED:
            return None  # "max", or the huge number of cgroup v1: no limit
        try:
            usage = int((_CGROUP_ROOT / usage_name).read_text())
        except (OSError, ValueError):
            usage = 0
        return max(0, int(limit) - max(0, usage - _stat_value(_CGROUP_ROOT / stat_name, inactive_key)))
    return None


_CGROUP_FILES = (  # limit, usage, statistics, and the key of the inactive file cache in them
    ("memory.max", "memory.current", "memory.stat", "inactive_file"),
    ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes", "memory/memory.stat", "total_inactive_file"),
)


def _stat_value(path: Path, key: str) -> int:
    try:
        for line in path.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key and value.strip().isdigit():
                return int(value)
    except OSError:
        pass
    return 0
