"""``python -m apps.figures``: draw Fig. 2a-c and Table I, optionally running the experiments first.

Without ``--reproduce``/``--quick`` it only reads the run directories under ``--runs`` (see
:mod:`apps.figures.plots` for the layout) and writes into ``--out``: ``fig2a_node_regression``,
``fig2b_power_allocation`` and ``fig2c_link_scheduling`` as PNG and PDF, and ``table1.md`` /
``table1.csv``. Runs that are missing are named on stderr; the figures that can be drawn still are
(exit status 1 if any is missing).

``--reproduce`` first runs every experiment the figures need at paper scale, ``--quick`` the same at
small scale (a few minutes), each app as its own process with its progress bar. Both are resumable:
an app whose folder already holds a run is continued with ``--resume`` (finished approaches are kept).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# (app folder, module, optimizers by preset, extra flags) of the runs each figure needs; App B's paper run
# adds D-GCP-Adam (K = 5), the distributed Adam that keeps up with C-Adam there (apps/power_allocation/task.py)
EXPERIMENTS = (
    ("node_regression", "apps.node_regression", {"quick": "all", "paper": "all"}, []),
    ("power_allocation", "apps.power_allocation", {"quick": "c-adam,d-adam", "paper": "c-adam,d-adam,d-gcp-adam"},
     ["--generate", "--consensus-rounds", "5"]),
    ("link_scheduling", "apps.link_scheduling", {"quick": "c-adam,d-adam", "paper": "c-adam,d-adam"}, ["--generate"]),
)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m apps.figures", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--runs", type=Path, default=None,
                        help="folder with the apps' run directories (default runs/paper, or runs/demo with --quick)")
    parser.add_argument("--out", type=Path, default=None, help="where the figures and the table go "
                        "(default <runs>/figures)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--reproduce", action="store_true",
                      help="first run every experiment the figures need at paper scale (resumable)")
    mode.add_argument("--quick", action="store_true",
                      help="first run every experiment at small scale (a few minutes)")
    parser.add_argument("--seed", type=int, default=0, help="seed passed to every experiment")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    if args.runs is None:
        args.runs = Path("runs/demo" if args.quick else "runs/paper")
    if args.out is None:
        args.out = args.runs / "figures"
    if not (args.reproduce or args.quick) and not args.runs.is_dir():
        parser.exit(2, f"{parser.prog}: error: runs folder {args.runs} does not exist "
                       "(run with --quick or --reproduce to create it)\n")
    if args.seed < 0:
        parser.exit(2, f"{parser.prog}: error: --seed must be >= 0, got {args.seed}\n")
    return args


def run_experiments(runs: Path, preset: str, seed: int, quiet: bool) -> None:
    """Run (or continue) each app's experiment into ``runs/<app>`` as a subprocess."""
    runs.mkdir(parents=True, exist_ok=True)
    for folder, module, optimizers, extra in EXPERIMENTS:
        target = runs / folder
        if (target / "config.json").is_file():
            command = [sys.executable, "-m", module, "--resume", str(target)]
        else:
            command = [sys.executable, "-m", module, "--preset", preset, "--optimizer", optimizers[preset],
                       "--seed", str(seed), "--out", str(target), *extra]
        if quiet:
            command.append("-q")
        print(f"== {module} ({preset}) -> {target}", flush=True)
        start = time.perf_counter()
        done = subprocess.run(command, check=False)
        if done.returncode != 0:
            raise SystemExit(f"apps.figures: {module} failed with exit status {done.returncode}; "
                             f"rerun the same command to continue it")
        print(f"   done in {time.perf_counter() - start:.0f} s", flush=True)


def draw(runs: Path, out: Path, widths=(10, 10, 1), batch_size: int = 100, consensus_rounds: int = 1):
    """Every figure and Table I (measured for ``widths``, ``batch_size`` and K = ``consensus_rounds``, the
    App A setting by default); returns the files written and the missing runs."""
    from apps.figures import plots, table
    from core.runs import atomic_write_csv, atomic_write_text

    out.mkdir(parents=True, exist_ok=True)
    written, missing = [], []
    for figure in (plots.fig2a, plots.fig2b, plots.fig2c):
        paths, absent = figure(runs, out)
        written += paths
        missing += absent
    rows = table.table_one(widths, batch_size, consensus_rounds, rounds_in_runs=plots.rounds_in_runs(runs))
    atomic_write_csv(out / "table1.csv", table.COLUMNS, rows)
    atomic_write_text(out / "table1.md", table.to_markdown(rows, widths, batch_size, consensus_rounds))
    written += [out / "table1.csv", out / "table1.md"]
    return written, missing


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.reproduce or args.quick:
        run_experiments(args.runs, "quick" if args.quick else "paper", args.seed, args.quiet)
    written, missing = draw(args.runs, args.out)
    for path in written:
        print(f"wrote {path}")
    if missing:
        print("apps.figures: missing runs (their curves are left out): " + ", ".join(missing), file=sys.stderr)
        return 1
    print(f"figures and Table I are in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
