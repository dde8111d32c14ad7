"""``python -m apps.robustness``: training quality under packet loss, the paper's future work (docs/design.md, sec. 12).

Sweeps packet-loss rates p and receiver policies (``--on-loss``) for an app's distributed optimizers, with a
centralized reference over perfect links, then writes ``sweep.csv`` (a row per trained approach), ``points.csv``
(per policy, p and optimizer, over the seeds) and the figures into the sweep's folder. Defaults: App A at paper
settings, p in {0, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3}, D-SGD, D-AMSGrad, D-naive-PB (K = 1), D-GT and D-GT-Adam,
policies stale (3 seeds), zero and retransmit:1 (1 seed each), C-SGD as the reference. Flags after ``--`` go to
every run of the app (e.g. ``-- --epochs 200`` or, for App B, ``-- --data data/power_allocation.h5``).
Resumable: ``--resume DIR`` continues every unfinished run (the same command with ``--out`` of an
existing sweep is refused: the folder is not new). Ctrl-C or SIGTERM: the running apps checkpoint, then
exit status 130 with the command that continues. Bad flags: one error line, status 2, nothing written.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

from apps.common.cli import (
    EXTRA_OPTIMIZERS,
    LABELS,
    PAPER_OPTIMIZERS,
    add_version_argument,
    loss_policy,
    optimizer_list,
    probability,
)
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
CENTRALIZED = tuple(n for n in PAPER_OPTIMIZERS + EXTRA_OPTIMIZERS if n.startswith("c-"))
DISTRIBUTED = tuple(n for n in PAPER_OPTIMIZERS + EXTRA_OPTIMIZERS if not n.startswith("c-"))
EPILOG = ("Exit status: 0 done; 1 a run failed (named on stderr with its log; fix it and continue with --resume); "
          "2 bad input, nothing written; 130 interrupted (continue with --resume).")


def refused_flag(token: str, flags) -> str | None:
    """The flag of ``flags`` that the app-flag ``token`` names: exactly, as ``--flag=value``, or abbreviated
    (``--loss-p``; the apps refuse abbreviations, but the sweep's message says what to do instead); None if none.
    No app flag is a prefix of a refused one (tests/apps/robustness checks it), so a prefix is never a flag of
    its own."""
    name = token.split("=", 1)[0]
    if name in flags:
        return name
    if name.startswith("--") and len(name) > 2:
        return next((f for f in flags if f.startswith(name)), None)
    return None


def _list(kind, name: str):
    def parse(text: str):
        items = text.split(",")
        try:
            values = tuple(kind(v.strip()) for v in items)
        except argparse.ArgumentTypeError as exc:  # which list, when the bad value is one of several
            raise argparse.ArgumentTypeError(f"{exc} (in {text!r})" if len(items) > 1 else str(exc)) from None
        if len(set(values)) != len(values):
            raise argparse.ArgumentTypeError(f"has a value twice: {text!r}")
        return values

    parse.__name__ = name
    return parse


def distributed_optimizers(text: str) -> tuple[str, ...]:
    """argparse type of the sweep's ``--optimizer``: the apps' names, refusing what the sweep cannot sweep (at
    parse time: ``all``, which holds the centralized ones, and a centralized one, which is ``--reference``)."""
    if text.strip() == "all":
        raise argparse.ArgumentTypeError(f"'all' holds the centralized approaches, which train over perfect links: "
                                         f"name distributed ones ({', '.join(DISTRIBUTED)}); the centralized one is "
                                         f"--reference")
    names = optimizer_list()(text)
    central = [n for n in names if n in CENTRALIZED]
    if central:
        raise argparse.ArgumentTypeError(f"{central[0]} is centralized (it trains over perfect links); give it as "
                                         f"--reference")
    return names


distributed_optimizers.__name__ = "optimizer list"


def reference_approach(text: str) -> str:
    """argparse type of ``--reference``: a centralized approach, or ``none`` (stored as "")."""
    if text == "none":
        return ""
    if text not in CENTRALIZED:
        raise argparse.ArgumentTypeError(f"must be a centralized approach ({' or '.join(CENTRALIZED)}) or none, "
                                         f"got {text!r}")
    return text


reference_approach.__name__ = "reference"


def build_parser(parser_class=OneLineErrorParser) -> argparse.ArgumentParser:
    parser = parser_class(prog=PROG, formatter_class=HelpFormatter,
                          description=plain_docstring(__doc__.split("\n\n")[1]), epilog=EPILOG,
                          usage=f"{PROG} [flags] [-- app flags]")
    grid = parser.add_argument_group("the grid")
    grid.add_argument("--app", choices=tuple(APPS), default="node_regression",
                      help="the app whose distributed training is swept: App A (node regression) or App B (UWMMSE "
                      "power allocation; give its paper dataset after --, e.g. -- --data data/power_allocation.h5)")
    grid.add_argument("--optimizer", type=distributed_optimizers, default=None,
                      help="the distributed optimizers swept (default: App A d-sgd,d-amsgrad,d-naive-pb,d-gt,"
                      "d-gt-adam; App B d-adam,d-gcp-adam,d-gt-adam)")
    grid.add_argument("--reference", type=reference_approach, default=None,
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
    run.add_argument("--out", type=Path, default=None, metavar="DIR",
                     help="the sweep's folder (default runs/robustness/<timestamp>); it must be new or empty")
    run.add_argument("--resume", type=Path, default=None, metavar="DIR",
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
    mpi = [(f, refused_flag(f, IN_PROCESS_ONLY)) for f in app_flags if refused_flag(f, IN_PROCESS_ONLY)]
    if mpi:
        parser.error(f"{mpi[0][1]} after -- would not apply: the sweep runs each app in a process of its own on this "
                     "machine (in-process backend), never under mpiexec")
    taken = [(f, refused_flag(f, OWN_FLAGS)) for f in app_flags if refused_flag(f, OWN_FLAGS)]
    if taken:
        instead = OWN_FLAGS[taken[0][1]]
        parser.error(f"{taken[0][1]} after -- is set by the sweep itself; "
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
    reference = spec.reference if args.reference is None else args.reference
    return Grid(args.app, tuple(optimizers), tuple(sorted(args.loss_probs or default["loss_probs"])),
                tuple(args.policies or default["policies"]), args.seeds or default["seeds"], args.other_seeds,
                args.seed, (*default["flags"], *app_flags), reference)


class _RaisingParser(OneLineErrorParser):
    """The sweep's parser for a saved grid: an error is a ValueError (the caller names the file), not an exit."""

    def error(self, message: str):
        raise ValueError(message)


SAVED_GRID = {"app": ("--app", str), "optimizers": ("--optimizer", list), "loss_probs": ("--loss-probs", list),
              "policies": ("--policies", list), "seeds": ("--seeds", int), "other_seeds": ("--other-seeds", int),
              "base_seed": ("--seed", int), "reference": ("--reference", str)}
"""The entries of a saved grid (config.json's "grid"), each with the flag that gave it and its JSON type."""
_KINDS = {str: "a string", int: "an integer", list: "a list"}


def grid_from_saved(saved) -> Grid:
    """The grid of a sweep's config.json, checked as the flags that gave it are (the same parser), so that a
    damaged or hand-edited file is refused before any run starts; ValueError naming the entry."""
    if not isinstance(saved, dict):
        raise ValueError(f'"grid" must be an object, got {json.dumps(saved)}')
    argv = []
    for key, (flag, kind) in SAVED_GRID.items():
        value = saved.get(key, {"base_seed": 0, "reference": ""}.get(key))  # older sweeps saved neither
        if value is None:
            raise ValueError(f'no "{key}" entry in "grid"')
        items = value if isinstance(value, list) else [value]
        item_type = (int, float) if key == "loss_probs" else str if kind is list else kind
        # bool is an int to Python, and a comma inside a name would make two of it on the command line
        if not isinstance(value, kind) or not all(isinstance(v, item_type) and not isinstance(v, bool)
                                                  and "," not in str(v) for v in items):
            what = _KINDS[kind] + (f" of {'numbers' if key == 'loss_probs' else 'names'}" if kind is list else "")
            raise ValueError(f'"{key}" must be {what}, got {json.dumps(value)}')
        argv += [flag, ",".join(str(v) for v in items) or ("none" if key == "reference" else "")]
    flags = saved.get("app_flags", [])
    if not isinstance(flags, list) or not all(isinstance(f, str) for f in flags):
        raise ValueError(f'"app_flags" must be a list of strings, got {json.dumps(flags)}')
    try:
        args = build_parser(_RaisingParser).parse_args(argv)
    except ValueError as exc:  # "argument --loss-probs: ..." names the flag; here the entry is what to fix
        message = str(exc)
        for key, (flag, _) in SAVED_GRID.items():
            message = message.replace(f"argument {flag}:", f'"{key}":')
        raise ValueError(message) from None
    return dataclasses.replace(make_grid(args, []), app_flags=tuple(flags))


def check_app_flags(grid: Grid, out: Path, resumed: bool) -> int:
    """Parse one cell's command line with the app's own parser (before anything is written or TensorFlow is
    imported), and check that its dataset file exists where runs are still to start; returns the epochs each
    approach trains. The app's parser reports a bad flag and exits 2; a missing dataset is a ValueError."""
    import importlib

    app = importlib.import_module(grid.spec.module + ".experiment")
    probe = Cell("stale", 0.1, grid.base_seed, grid.optimizers + ((grid.reference,) if grid.reference else ()))
    command = cell_command(grid, probe, Path("/nonexistent/robustness-probe"))
    argv = command[command.index(grid.spec.module) + 1:]
    argv = argv[:argv.index("--out")] + ["-q"]
    args = app.parse_args(argv)
    # the app would find it missing only once it runs: in every cell, after the sweep's folder is written
    data = getattr(args, "data", None)
    if data is None:  # the app's default file for its preset, if it reads one (App A generates its data in memory)
        data = getattr(app, "DEFAULT_DATA", {}).get(getattr(args, "preset", None) or "paper")
    if data is not None and not Path(data).exists() and not getattr(args, "generate", False) and \
            not all(cell_done(c, out) for c in grid.cells()):
        if resumed:
            raise ValueError(f"--resume: the sweep's dataset {data} does not exist (its saved app flags name it); "
                             f"restore that file or start a new sweep")
        hint = "; add --generate after -- to have the runs write it first" if hasattr(args, "generate") else ""
        raise ValueError(f"--data: {data} does not exist{hint}")
    return int(args.epochs)


def _write_results(grid: Grid, out: Path, quiet: bool, failed=()) -> list[Path]:
    """sweep.csv, points.csv and the figures; the rows of the previous sweep.csv are kept for the approaches of
    ``failed`` cells that have no summary now (a failed resume must not lose results written before)."""
    from apps.robustness.plots import plot_sweep
    from apps.robustness.sweep import points, previous_rows
    from core.runs import atomic_write_csv

    rows = collect(grid, out, previous_rows(grid, out / "sweep.csv", failed) if failed else None)
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
                if not isinstance(saved, dict):
                    raise TypeError("its config.json is no JSON object")
                saved_grid = saved["grid"]
            except (OSError, ValueError, KeyError, TypeError) as exc:
                if isinstance(exc, KeyError):
                    what = f"no {exc.args[0]!r} entry in its config.json"
                elif isinstance(exc, OSError):
                    what = f"{out / 'config.json'}: {exc.strerror or exc}"
                else:
                    what = f"{type(exc).__name__}: {exc}"
                raise ValueError(f"--resume: {out} holds no sweep of {PROG} ({what})") from None
            try:
                grid = grid_from_saved(saved_grid)
            except ValueError as exc:
                raise ValueError(f"{out / 'config.json'}: {exc}") from None
        else:
            grid = make_grid(args, app_flags)
            try:
                out = check_new_run_path(args.out) if args.out is not None else default_run_path("robustness")
            except RunError as exc:
                raise ValueError(f"--out: {exc}") from None
        epochs = check_app_flags(grid, out, resumed=args.resume is not None)
        try:
            lock = claim_run_dir(out, new=args.resume is None)
        except RunError as exc:
            busy = " or choose another --out"  # core's advice to a new run: a resume has no other folder to choose
            if args.resume is None or not str(exc).endswith(busy):
                raise
            raise RunError(str(exc).removesuffix(busy)) from None
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
        try:
            written = _write_results(grid, out, args.quiet, failed)
        except KeyboardInterrupt:  # (each file is written atomically: what is there is whole)
            print(f"{PROG}: interrupted while writing the results; {PROG} --resume {out} writes them",
                  file=sys.stderr)
            return 130
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
