"""Benchmark: generate the paper-size power-allocation dataset, then stream it back.

Generates 100 layouts x 100 batches x 64 samples of 25 x 25 channel matrices (640 000 training
matrices, 1.6 GB, plus 100 test batches) into a temporary folder with the CLI, then reads it back
with the NumPy loader (one shuffled epoch), the full verification pass (content checks + checksum)
and the tf.data pipeline. Every phase runs in its own child process so that its peak resident
memory (ru_maxrss) is its own. Targets: generation <= 3 min on 2 cores with peak memory <= 2 GB;
streaming with memory independent of the file size. The file is read right after being written, so
reading mostly hits the OS page cache: the numbers measure the loader, not the disk.

    python benchmarks/bench_datasets.py [--layouts 100] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MB (Linux reports ru_maxrss in kB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def phase_generate(out: Path, layouts: int) -> dict:
    from datasets.__main__ import main

    start = time.perf_counter()
    status = main(["power-allocation", "--layouts", str(layouts), "--out", str(out), "--force", "-q"])
    if status:
        raise SystemExit(status)
    return {"seconds": time.perf_counter() - start, "bytes": out.stat().st_size}


def phase_numpy(out: Path, layouts: int) -> dict:
    from datasets import PowerAllocationDataset

    with PowerAllocationDataset(out) as data:
        start = time.perf_counter()
        matrices = sum(batch.H.shape[0] for batch in data.batches("train", shuffle=True, seed=0))
        return {"seconds": time.perf_counter() - start, "matrices": matrices}


def phase_verify(out: Path, layouts: int) -> dict:
    from datasets import PowerAllocationDataset

    with PowerAllocationDataset(out) as data:
        start = time.perf_counter()
        data.verify()
        return {"seconds": time.perf_counter() - start, "matrices": data.num_batches() * data.batch_size}


def phase_tf(out: Path, layouts: int) -> dict:
    from core.tf_notices import silence_startup_notices

    silence_startup_notices()
    import tensorflow as tf

    from datasets import PowerAllocationDataset

    with PowerAllocationDataset(out) as data:
        dataset = data.as_tf_dataset("train", shuffle=True, seed=0).prefetch(tf.data.AUTOTUNE)
        start = time.perf_counter()
        matrices = 0
        for item in dataset:
            matrices += int(item["H"].shape[0])
        return {"seconds": time.perf_counter() - start, "matrices": matrices}


PHASES = {"generate": phase_generate, "numpy": phase_numpy, "verify": phase_verify, "tf": phase_tf}


def run_child(phase: str, out: Path, layouts: int) -> dict:
    """Run one phase in a fresh interpreter; returns its JSON result including peak_rss_mb."""
    command = [sys.executable, __file__, "--phase", phase, "--file", str(out), "--layouts", str(layouts)]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if result.returncode:
        sys.stderr.write(result.stderr)
        raise SystemExit(f"phase {phase} failed with status {result.returncode}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def report(folder: Path, layouts: int) -> None:
    out = folder / "power_allocation.h5"
    print(f"power-allocation, {layouts} layouts x 100 batches x 64 samples of 25 x 25, in {folder}")
    generated = run_child("generate", out, layouts)
    print(
        f"generate : {generated['seconds']:7.1f} s, file {generated['bytes'] / 1e9:.2f} GB, "
        f"peak memory {generated['peak_rss_mb']:.0f} MB (targets: <= 180 s, <= 2048 MB)"
    )
    for phase, label in (
        ("numpy", "numpy loader, one shuffled epoch"),
        ("verify", "verify (checks + checksum)"),
        ("tf", "tf.data, one shuffled epoch"),
    ):
        result = run_child(phase, out, layouts)
        rate = result["matrices"] / result["seconds"]
        print(
            f"{phase:9s}: {result['seconds']:7.1f} s, {rate:10,.0f} matrices/s, "
            f"peak memory {result['peak_rss_mb']:.0f} MB  [{label}]"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layouts", type=int, default=100, help="training layouts (100 = paper size)")
    parser.add_argument("--keep", type=Path, default=None, help="write the file into this folder and keep it")
    parser.add_argument("--phase", choices=tuple(PHASES), help=argparse.SUPPRESS)
    parser.add_argument("--file", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        sys.path.insert(0, str(ROOT))
        result = PHASES[args.phase](args.file, args.layouts)
        print(json.dumps({**result, "peak_rss_mb": peak_rss_mb()}))
    elif args.keep:
        report(args.keep, args.layouts)
    else:
        with tempfile.TemporaryDirectory(prefix="bench_datasets_") as folder:
            report(Path(folder), args.layouts)


if __name__ == "__main__":
    main()
