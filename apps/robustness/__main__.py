"""``python -m apps.robustness``: training quality under packet loss, the paper's future work (docs/design.md, sec. 12).

Sweeps packet-loss rates p and receiver policies (``--on-loss``) for an app's distributed optimizers, with a
centralized reference over perfect links (:mod:`apps.robustness.sweep`), then writes ``sweep.csv``,
``points.csv`` and the figures (:mod:`apps.robustness.plots`) into the sweep's folder. Defaults: App A at paper
settings, p in {0, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3}, D-SGD, D-AMSGrad, D-naive-PB (K = 1), D-GT and D-GT-Adam,
policies stale (3 seeds), zero and retransmit:1 (1 seed each), C-SGD as the reference. Flags after ``--`` go to
every run of the app (e.g. ``-- --epochs 200`` or, for App B, ``-- --data data/power_allocation.h5``).
Resumable: ``--resume <folder>`` continues every unfinished run (the same command with ``--out`` of an
existing sweep is refused: the folder is not new). Ctrl-C or SIGTERM: the running apps checkpoint, then
exit status 130 with the command that continues. Bad flags: one error line, status 2, nothing written.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from apps.common.cli import LABELS, add_version_argument, loss_policy, optimizer_list, probability
from apps.common.main import refused_under_mpiexec
from apps.robustness.sweep import APPS, Cell, Grid, cell_command, cell_done, collect, epochs_done
from core.tf_notices import silence_startup_notices
from datasets.cli import (
    HelpFormatter,
    OneLineErrorParser,
    non_negative_int,
    plain_docstring,
    positive_int,
    program_name,
)

silence_startup_notices()  # TF_CPP_MIN_LOG_LEVEL, inherited by the app runs of the sweep

PROG = program_name("python -m apps.robustness")  # or the console script's name (fdtrain-...)
OWN_FLAGS = {"--optimizer": "--optimizer", "--seed": "--seed", "--loss-prob": "--loss-probs", "--on-loss": "--policies",
             "--loss-model": None, "--out": "--out", "--resume": "--resume", "--jobs": "--jobs", "-q": "-q",
             "--quiet": "-q"}
"""Flags the sweep sets on every run itself (refused after ``--``), with the sweep's own flag for each (None: the
sweep's model is independent losses, which it does not change)."""
IN_PROCESS_ONLY = ("--backend", "--partition")
"""App flags refused after ``--``: the sweep's runs are processes of this machine, never MPI jobs."""


def _list(kind, name: str):
    def parse(text: str):
        try:
            values = tuple(kind(v.strip()) for v in text.split(","))
        except argparse.ArgumentTypeError as exc:
            raise argparse.ArgumentTypeError(f"{exc} (in {text!r})") from None
        if len(set(values)) != len(values):
            raise argparse.ArgumentTypeError(f"has a value twice: {text!r}")
        return values

    parse.__name__ = name
    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(prog=PROG, formatter_class=HelpFormatter,
                                description=plain_docstring(__doc__.split("\n\n")[1]),
                                usage=f"{PROG} [flags] [-- app flags]")
    grid = parser.add_argument_group("the grid")
    grid.add_argument("--app", choices=tuple(APPS), default="node_regression",
                      help="the app whose distributed training is swept: App A (node regression) or App B (UWMMSE "
                      "power allocation; give its paper dataset after --, e.g. -- --data data/power_allocation.h5)")
    grid.add_argument("--optimizer", type=optimizer_list(), default=None,
                      help="the distributed optimizers swept (default: App A d-sgd,d-amsgrad,d-naive-pb,d-gt,"
                      "d-gt-adam; App B d-adam,d-gcp-adam,d-gt-adam)")
    grid.add_argument("--reference", default=None,
                      help="the centralized approach trained over perfect links as the reference line (default: App "
                      "A c-sgd, App B c-adam; 'none' for none)")
    grid.add_argument("--loss-probs", type=_list(probability, "probabilities"), default=None,
                      help="packet-loss probabilities p, comma-separated (default: App A 0,0.01,0.02,0.05,0.1,0.2,0.3; "
                      "App B 0,0.05,0.2)")
    grid.add_argument("--policies", type=_list(loss_policy, "policies"), default=None,
                      help="receiver policies (--on-loss of the apps), comma-separated; the first is run with --seeds "
                      "seeds and drawn with its spread, the others with --other-seeds (default: App A "
                      "stale,zero,retransmit:1; App B stale)")
    grid.add_argument("--seeds", type=positive_int, default=None,
                      help="seeds per point of the first policy (default: App A 3, App B 1)")
    grid.add_argument("--other-seeds", type=positive_int, default=1, help="seeds per point of the other policies")
    grid.add_argument("--seed", type=non_negative_int, default=0,
                      help="training seed of the first seed index (index k uses seed + k); the links' drop stream "
                      "derives from it")
    grid.add_argument("--quick", action="store_true",
                      help="a small version in a few minutes (the app's --preset quick; App A: p 0,0.1,0.3; "
                      "d-sgd,d-amsgrad,d-gt; App B: p 0,0.2; d-adam,d-gt-adam; policy stale, one seed); explicit "
                      "grid flags win")
    run = parser.add_argument_group("run")
    run.add_argument("--out", type=Path, default=None,
                     help="the sweep's folder (default runs/robustness/<timestamp>); it must be new or empty")
    run.add_argument("--resume", type=Path, default=None,
                     help="continue the sweep in this folder with its saved grid (with --jobs and -q only: any "
                     "other flag would not apply, so it is refused)")
    run.add_argument("--jobs", type=positive_int, default=min(2, os.cpu_count() or 1),
                     help="runs of the app side by side (each with cores/jobs TensorFlow threads)")
    run.add_argument("-q", "--quiet", action="store_true", help="no progress bar and no final table")
    add_version_argument(parser)
    return parser


def parse_args(argv=None) -> tuple[argparse.Namespace, list[str]]:
    argv = list(sys.argv[1:] if argv is None else argv)
    app_flags = argv[argv.index("--") + 1:] if "--" in argv else []
    own = argv[:argv.index("--")] if "--" in argv else argv
    parser = build_parser()
    args = parser.parse_args(own)
    mpi = [f for f in app_flags if f.split("=")[0] in IN_PROCESS_ONLY]
    if mpi:
        parser.error(f"{mpi[0]} after -- would not apply: the sweep runs each app in a process of its own on this "
                     "machine (in-process backend), never under mpiexec")
    taken = [f for f in app_flags if f.split("=")[0] in OWN_FLAGS]
    if taken:
        instead = OWN_FLAGS[taken[0].split("=")[0]]
        parser.error(f"{taken[0]} after -- is set by the sweep itself; "
                     + (f"use the sweep's own {instead}" if instead else "the sweep draws independent losses only"))
    if args.resume is not None:  # the saved grid and app flags are the sweep's: anything else would not apply
        from apps.common.main import given_flags

        refused = [flag for dest, flag in given_flags(parser, own).items() if dest not in ("resume", "jobs", "quiet")]
        if refused or "--" in argv:
            parser.error(f"--resume continues a sweep with its saved grid and app flags, so "
                         f"{refused[0] if refused else 'flags after --'} would not apply: resume without "
                         f"{'it' if refused else 'them'}, or start a new sweep with --out")
    return args, app_flags


def make_grid(args: argparse.Namespace, app_flags: list[str]) -> Grid:
    """The grid of the flags (--quick's values where a grid flag was not given); ValueError for a bad one."""
    spec = APPS[args.app]
    default = spec.quick if args.quick else {"loss_probs": spec.loss_probs, "optimizers": spec.optimizers,
                                             "policies": spec.policies, "seeds": spec.seeds,
                                             "flags": spec.paper_flags}
    optimizers = args.optimizer or default["optimizers"]
    central = [o for o in optimizers if o.startswith("c-")]
    if central:
        raise ValueError(f"--optimizer: {central[0]} is centralized (it trains over perfect links); give it as "
                         f"--reference")
    reference = spec.reference if args.reference is None else ("" if args.reference == "none" else args.reference)
    if reference and not reference.startswith("c-"):
        raise ValueError(f"--reference must be a centralized approach (c-sgd or c-adam), got {reference!r}")
    return Grid(args.app, tuple(optimizers), tuple(sorted(args.loss_probs or default["loss_probs"])),
                tuple(args.policies or default["policies"]), args.seeds or default["seeds"], args.other_seeds,
                args.seed, (*default["flags"], *app_flags), reference)


def check_app_flags(grid: Grid) -> int:
    """Parse one cell's command line with the app's own parser (before anything is written or TensorFlow is
    imported); returns the epochs each approach trains. The app's parser reports a bad flag and exits 2."""
    import importlib

    app = importlib.import_module(grid.spec.module + ".experiment")
    probe = Cell("stale", 0.1, grid.base_seed, grid.optimizers + ((grid.reference,) if grid.reference else ()))
    command = cell_command(grid, probe, Path("/nonexistent/robustness-probe"))
    argv = command[command.index(grid.spec.module) + 1:]
    argv = argv[:argv.index("--out")] + ["-q"]
    args = app.parse_args(argv)
    return int(args.epochs)


def _write_results(grid: Grid, out: Path, quiet: bool) -> list[Path]:
    from apps.robustness.plots import plot_sweep
    from apps.robustness.sweep import points
    from core.runs import atomic_write_csv

    rows = collect(grid, out)
    table = [r.as_dict() for r in rows]
    atomic_write_csv(out / "sweep.csv", list(table[0]) if table else ["policy"], table)
    pts = points(rows)
    atomic_write_csv(out / "points.csv", list(pts[0]) if pts else ["policy"], pts)
    spec = grid.spec
    written = plot_sweep(pts, out, grid.policies, grid.optimizers, grid.reference, spec.metric_label,
                         spec.log_metric, f"final_{spec.metric}", f"{grid.app.replace('_', ' ')}: "
                         f"training over lossy links")
    if not quiet:
        _print_table(grid, pts)
    return [out / "sweep.csv", out / "points.csv", *written]


def _print_table(grid: Grid, pts: list[dict]) -> None:
    by = {(q["policy"], q["loss_prob"], q["optimizer"]): q for q in pts}
    for policy in grid.policies:
        print(f"--on-loss {policy}: {grid.spec.metric_label} (mean over seeds; 'div' = every seed diverged)")
        print(f"{'optimizer':<12}" + "".join(f"{'p=' + format(p, 'g'):>11}" for p in grid.loss_probs))
        for name in grid.optimizers + ((grid.reference,) if grid.reference else ()):
            cells = []
            for p in grid.loss_probs:
                q = by.get((policy, p, name))
                cells.append("" if q is None else ("div" if q["mean"] != q["mean"] else f"{q['mean']:.4g}"))
            if any(cells):
                print(f"{LABELS.get(name, name):<12}" + "".join(f"{c:>11}" for c in cells))


def main(argv=None) -> int:
    from apps.common.children import run_children, stop_requests
    from core.runs import RunError, atomic_write_json, check_new_run_path, claim_run_dir, default_run_path, provenance

    args, app_flags = parse_args(argv)
    if refused_under_mpiexec(PROG):
        return 2
    try:
        if args.resume is not None:
            out = args.resume
            try:
                saved = json.loads((out / "config.json").read_text())
                grid = Grid.from_dict(saved["grid"])
            except (OSError, ValueError, KeyError, TypeError) as exc:
                if isinstance(exc, KeyError):
                    what = f"no {exc.args[0]!r} entry in its config.json"
                elif isinstance(exc, OSError):
                    what = f"{out / 'config.json'}: {exc.strerror or exc}"
                else:
                    what = f"{type(exc).__name__}: {exc}"
                raise ValueError(f"--resume: {out} holds no sweep of {PROG} ({what})") from None
        else:
            grid = make_grid(args, app_flags)
            try:
                out = check_new_run_path(args.out) if args.out is not None else default_run_path("robustness")
            except RunError as exc:
                raise ValueError(f"--out: {exc}") from None
        epochs = check_app_flags(grid)
        lock = claim_run_dir(out, new=args.resume is None)
    except (ValueError, RunError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    cells = grid.cells()
    with lock:
        if args.resume is None:
            threads = max(1, (os.cpu_count() or 1) // args.jobs)
            atomic_write_json(out / "config.json", {"app": "robustness", "grid": grid.as_dict(),
                                                    "threads_per_run": threads, **provenance()})
        else:
            threads = int(saved.get("threads_per_run", 1))
        # every run of the app gets the same TensorFlow thread count, also when resumed (its last bits depend on it)
        os.environ["TF_NUM_INTRAOP_THREADS"] = str(threads)
        (out / "logs").mkdir(exist_ok=True)
        todo = {c: cell_command(grid, c, out) for c in cells if not cell_done(c, out)}
        total = sum(len(c.optimizers) for c in cells) * epochs
        from tqdm import tqdm

        bar = tqdm(total=total, desc="sweep", unit="epoch", disable=args.quiet, dynamic_ncols=True)
        last_poll = [0.0]
        failed = {}

        def poll():
            if time.monotonic() - last_poll[0] > 1.0:
                last_poll[0] = time.monotonic()
                bar.n = min(total, sum(epochs_done(c, out) for c in cells))
                bar.refresh()

        def done(cell, status):
            if status != 0 and not cell_done(cell, out):  # status 1 with every summary: a diverged approach
                failed[cell] = status

        log_dir = out / "logs"
        start = time.perf_counter()
        try:
            with stop_requests() as stop:
                statuses = run_children(todo, stop, parallel=args.jobs, on_done=done, on_poll=poll,
                                        log_of=lambda cell: log_dir / _log_name(cell))
        finally:
            last_poll[0] = 0.0
            poll()
            bar.close()
        if stop.requested or len(statuses) < len(todo):
            print(f"{PROG}: interrupted; continue with {PROG} --resume {out}", file=sys.stderr)
            return 130
        written = _write_results(grid, out, args.quiet)
        if failed:
            for cell, status in failed.items():
                log = out / "logs" / _log_name(cell)
                tail = log.read_text(errors="replace").strip().splitlines()[-1:] if log.is_file() else []
                print(f"{PROG}: error: the run {cell.path(out)} failed with status {status}"
                      f"{': ' + tail[0] if tail else ''} (log: {log}); fix it and continue with --resume {out}",
                      file=sys.stderr)
            return 1
        if not args.quiet:
            print(f"sweep of {len(cells)} runs done in {time.perf_counter() - start:.0f} s; wrote "
                  + ", ".join(str(p) for p in written))
    return 0


def _log_name(cell: Cell) -> str:
    return cell.name.replace("/", "_") + ".log"


if __name__ == "__main__":
    sys.exit(main())
