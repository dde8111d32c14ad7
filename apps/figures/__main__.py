"""``python -m apps.figures``: draw Fig. 2a-c and Table I, optionally running the experiments first.

Without ``--reproduce``/``--quick`` it only reads the run directories under ``--runs``: for each app,
the newest run of each approach under ``<runs>/<app>/``, in ``<runs>/<app>/<approach>/`` (what
``--quick`` and ``--reproduce`` write) or the apps' default ``<runs>/<app>/<timestamp>/<approach>/``
(see :mod:`apps.figures.plots`), so ``--runs runs`` draws whatever was run last. It writes into
``--out`` (created with its missing parents): ``fig2a_node_regression``, ``fig2b_power_allocation`` and
``fig2c_link_scheduling`` as PNG and PDF, and ``table1.md`` / ``table1.csv``. The figures that can be
drawn are; runs that are missing, and runs skipped for a bad file (one line each naming the file and the
problem), are named on stderr and give exit status 1. When nothing at all can be drawn it says so, writes
nothing (no Table I either) and exits with status 1. Bad flags (``--out`` naming a file or a folder that
cannot be created and written, tried for real before anything runs; a negative ``--seed``, ...) give one error
line and exit status 2 before anything is written. ``--seed`` without ``--quick``/``--reproduce`` is ignored,
with a note on stderr.

``--reproduce`` first runs every experiment the figures need at paper scale, ``--quick`` the same at
small scale (a few minutes), each app as its own process with its progress bar. Both are resumable:
an app whose folder already holds a run is continued with ``--resume`` (finished approaches are kept;
a note says so if that run trains other approaches than the current version asks for; a run started with
another ``--seed`` or preset is refused with exit status 2 before anything runs).
An app never outlives this process, however it ends (even by SIGKILL: the kernel sends the app SIGTERM,
on which it checkpoints). Ctrl-C (at the terminal or as ``kill -INT`` of this process) and SIGTERM are
passed on to it once (it runs in a session of its own); either way this process waits for the app to
checkpoint, says how to continue and exits with status 130.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

from apps.common.children import run_app, stop_requests
from apps.common.cli import add_version_argument
from apps.common.main import refused_under_mpiexec
from core.tf_notices import silence_startup_notices
from datasets.cli import HelpFormatter, OneLineErrorParser, non_negative_int, plain_docstring, program_name

silence_startup_notices()  # before Table I's measurement imports TensorFlow here; inherited by the app runs

PROG = program_name("python -m apps.figures")  # or the console script's name (fdtrain-...)

# (app folder, module, optimizers by preset, extra flags) of the runs each figure needs. Fig. 2b: C-Adam, the
# paper's D-Adam (DADAM, the default variant) and D-GCP-Adam with K = 5, the distributed Adam that keeps up with
# C-Adam on UWMMSE (apps/power_allocation/task.py). Fig. 2c: D-Adam in the authors' variant (bias-corrected
# local Adam), which produced the paper's curve; DADAM's large first steps push the actor into a dip there
# (apps/link_scheduling/experiment.py).
EXPERIMENTS = (
    ("node_regression", "apps.node_regression", {"quick": "all", "paper": "all"}, []),
    ("power_allocation", "apps.power_allocation",
     {"quick": "c-adam,d-adam,d-gcp-adam", "paper": "c-adam,d-adam,d-gcp-adam"},
     ["--generate", "--consensus-rounds", "5"]),
    ("link_scheduling", "apps.link_scheduling", {"quick": "c-adam,d-adam", "paper": "c-adam,d-adam"},
     ["--generate", "--d-adam-variant", "authors"]),
)


EPILOG = """\
--runs holds one folder per app (node_regression, power_allocation, link_scheduling), and in it the run of each
approach in either layout (the newest run of an approach is drawn):

    <runs>/<app>/<approach>/               what --quick and --reproduce write
    <runs>/<app>/<timestamp>/<approach>/   the apps' default layout

--quick and --reproduce resume: an app whose folder under --runs already holds a run is continued with the
app's --resume (finished approaches are kept), so after an interruption or a failure the same command continues
where it stopped; a run started with another --seed or preset is refused (status 2) before anything runs.

exit status: 0 every figure and Table I drawn; 1 some runs missing or skipped for a bad file (the figures
are drawn without them), nothing to draw at all, an experiment that failed, or a file that could not be
written; 2 bad flags (an unusable --runs or --out, a run to resume with another seed or preset, under
mpiexec), before anything runs or is written; 130 interrupted (Ctrl-C or SIGTERM)."""


class ParagraphHelpFormatter(HelpFormatter):
    """Fills each paragraph of the description and epilog on its own and keeps indented lines as they are
    (argparse would run the runs layout above into one paragraph)."""

    def _fill_text(self, text, width, indent):
        paragraphs = []
        for paragraph in text.split("\n\n"):
            if paragraph.startswith(" "):
                paragraphs.append("\n".join(indent + line for line in paragraph.splitlines()))
            else:
                paragraphs.append(super()._fill_text(paragraph, width, indent))
        return "\n\n".join(paragraphs)


class Interrupted(Exception):
    """The experiments were stopped (Ctrl-C or SIGTERM) while ``module`` ran into ``target``."""

    def __init__(self, module: str, target: Path):
        super().__init__(module, target)
        self.module, self.target = module, target


def parse_args(argv=None):
    parser = OneLineErrorParser(prog=PROG, description=plain_docstring(__doc__.split("\n\n")[0]),
                                epilog=EPILOG, formatter_class=ParagraphHelpFormatter)
    parser.add_argument("--runs", type=Path, default=None,
                        help="folder with the apps' run directories (default runs/paper, or runs/demo with --quick)")
    parser.add_argument("--out", type=Path, default=None, help="folder the figures and the table go to, created if "
                        "missing (default <runs>/figures)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--reproduce", action="store_true",
                      help="first run every experiment the figures need at paper scale (resumable)")
    mode.add_argument("--quick", action="store_true",
                      help="first run every experiment at small scale (a few minutes)")
    parser.add_argument("--seed", type=non_negative_int, default=None,
                        help="seed passed to every experiment of --quick or --reproduce (default 0); without them "
                        "nothing is trained and it is ignored, with a note")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    add_version_argument(parser)
    args = parser.parse_args(argv)
    if args.runs is None:
        args.runs = Path("runs/demo" if args.quick else "runs/paper")
    if args.out is None:
        args.out = args.runs / "figures"
    running = args.reproduce or args.quick
    if not running and not args.runs.exists():
        parser.error(f"runs folder {args.runs} does not exist (run with --quick or --reproduce to create it)")
    for flag, folder in (("--runs", args.runs), ("--out", args.out)):
        if running or flag == "--out":  # folders this run may create
            problem = _cannot_create(folder)
        else:
            problem = None if folder.is_dir() else f"{folder} is a file, not a folder"
        if problem:
            parser.error(f"{flag}: {problem}")
    # (after the checks, so that a bad flag is still the only line) a seed the user thinks applies: it does not
    if args.seed is not None and not running:
        print(f"{PROG}: note: --seed is ignored without --quick or --reproduce (nothing is trained)", file=sys.stderr)
    args.seed = 0 if args.seed is None else args.seed
    return args


def _cannot_create(folder: Path) -> str | None:
    """Why ``folder`` cannot be used or created as a folder (a file in the way, no permission, a read-only or
    virtual file system such as /proc), or None. It tries for real, creating and removing a folder in ``folder``
    or its nearest existing ancestor (os.access passes everything as root), and creates nothing that stays, so
    that a command refused later leaves no empty folder behind."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        if existing == folder:
            return f"{folder} is a file, not a folder"
        return f"cannot create {folder}: {existing} is a file"
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".write-test-", dir=existing))
    except OSError as exc:
        reason = " ".join((exc.strerror or str(exc) or type(exc).__name__).split()).lower()
        return f"cannot write into {existing} ({reason})"
    return None


def experiment_command(runs: Path, folder: str, module: str, optimizers: dict, extra: list, preset: str,
                       seed: int, quiet: bool) -> list[str]:
    """The command line of one app's experiment: a new run into ``runs/<folder>``, or its ``--resume``."""
    target = runs / folder
    if (target / "config.json").is_file():
        command = [sys.executable, "-m", module, "--resume", str(target)]
    else:
        command = [sys.executable, "-m", module, "--preset", preset, "--optimizer", optimizers[preset],
                   "--seed", str(seed), "--out", str(target), *extra]
    return [*command, "-q"] if quiet else command


def resumed_elsewise(target: Path, optimizers: str) -> str | None:
    """A note when the run in ``target`` (to be continued with --resume) trains other approaches than
    ``optimizers`` (e.g. one started by an older version): it is continued as it is. None otherwise."""
    try:
        flags = json.loads((target / "config.json").read_text()).get("flags", {})
    except (OSError, ValueError, AttributeError):
        return None
    saved = flags.get("optimizer") if isinstance(flags, dict) else None
    saved = ",".join(saved) if isinstance(saved, list) else saved
    if not isinstance(saved, str) or optimizers == "all" or saved.split(",") == optimizers.split(","):
        return None
    return (f"{PROG}: note: {target} holds a run of {saved}, not {optimizers}; it is continued as it is "
            f"(remove that folder to run {optimizers})")


def resumed_conflict(target: Path, preset: str, seed: int) -> str | None:
    """Why the run in ``target`` cannot be continued for this command: it was started with another ``--seed``
    or preset (continuing it would draw that run's numbers under this command's name); None if it can."""
    try:
        config = json.loads((target / "config.json").read_text())
    except (OSError, ValueError):
        return None  # the app's --resume names the problem
    flags = config.get("flags") if isinstance(config, dict) else None
    if not isinstance(flags, dict):
        return None
    saved = {"preset": flags.get("preset") or "paper", "seed": flags.get("seed", seed)}  # (no preset: the paper's)
    for name, wanted in (("preset", preset), ("seed", seed)):
        if saved[name] != wanted:
            return (f"{target} holds a run with {name} {saved[name]}, not {wanted}, which this command would "
                    f"continue; remove that folder or choose another --runs")
    return None


def run_experiments(runs: Path, preset: str, seed: int, quiet: bool) -> None:
    """Run (or continue) each app's experiment into ``runs/<app>`` as a subprocess; raises
    :class:`Interrupted` once the running app has stopped if this process was told to stop."""
    runs.mkdir(parents=True, exist_ok=True)
    with stop_requests() as stop:
        for folder, module, optimizers, extra in EXPERIMENTS:
            target = runs / folder
            try:
                if stop.requested:
                    raise KeyboardInterrupt
                print(f"== {module} ({preset}) -> {target}", flush=True)
                if (target / "config.json").is_file() and (note := resumed_elsewise(target, optimizers[preset])):
                    print(note, file=sys.stderr, flush=True)
                start = time.perf_counter()
                status = run_app(experiment_command(runs, folder, module, optimizers, extra, preset, seed, quiet),
                                 stop)
                if stop.requested:
                    raise KeyboardInterrupt
                if status != 0:
                    raise SystemExit(f"{PROG}: {module} failed with exit status {status}; "
                                     f"rerun the same command to continue it")
                print(f"   done in {time.perf_counter() - start:.0f} s", flush=True)
            except KeyboardInterrupt:
                raise Interrupted(module, target) from None


def draw(runs: Path, out: Path, widths=None, batch_size: int | None = None, consensus_rounds: int | None = None,
         problems: list[str] | None = None):
    """Every figure that can be drawn and, if any can, Table I; returns the files written and the missing runs.

    Table I is measured for ``widths``, ``batch_size`` and K = ``consensus_rounds``; those left None are the
    setting of the node-regression runs if they all share one (so that their "in runs" column compares
    like with like), else App A's paper setting (g = (10, 10, 1), B = 100, K = 1). ``out`` is created only
    when there is something to write. Runs skipped for a bad file count as missing; ``problems`` (if
    given) receives one line per such file ("<file>: <problem>").
    """
    from apps.figures import plots

    bad: list[str] = []
    written, missing = [], []
    for figure in (plots.fig2a, plots.fig2b, plots.fig2c):
        paths, absent = figure(runs, out, bad)
        written += paths
        missing += absent
    if written:
        from apps.figures import table
        from core.runs import atomic_write_csv, atomic_write_text

        recorded = plots.rounds_in_runs(runs)
        setting = table.common_setting(recorded)
        widths = tuple(widths) if widths is not None else setting["widths"]
        batch_size = batch_size if batch_size is not None else setting["batch_size"]
        consensus_rounds = consensus_rounds if consensus_rounds is not None else setting["consensus_rounds"]
        rows = table.table_one(widths, batch_size, consensus_rounds, rounds_in_runs=recorded)
        atomic_write_csv(out / "table1.csv", table.COLUMNS, rows)
        atomic_write_text(out / "table1.md", table.to_markdown(rows, widths, batch_size, consensus_rounds))
        written += [out / "table1.csv", out / "table1.md"]
    if problems is not None:
        problems.extend(dict.fromkeys(bad))  # a file two figures read is named once
    return written, missing


def main(argv=None) -> int:
    args = parse_args(argv)
    if refused_under_mpiexec(PROG):
        return 2
    if args.reproduce or args.quick:
        preset = "quick" if args.quick else "paper"
        for folder, *_ in EXPERIMENTS:
            target = args.runs / folder
            if (target / "config.json").is_file() and (conflict := resumed_conflict(target, preset, args.seed)):
                print(f"{PROG}: error: {conflict}", file=sys.stderr)
                return 2
    try:
        if args.reproduce or args.quick:
            run_experiments(args.runs, "quick" if args.quick else "paper", args.seed, args.quiet)
        problems: list[str] = []
        written, missing = draw(args.runs, args.out, problems=problems)
    except Interrupted as stop:
        print(f"{PROG}: interrupted during {stop.module}; rerun the same command to continue "
              f"(it continues {stop.target} with --resume)", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; rerun the same command to draw the figures", file=sys.stderr)
        return 130
    except OSError as exc:  # a folder or file that cannot be written (disk full, ...), an app that cannot start
        reason = " ".join((exc.strerror or str(exc) or type(exc).__name__).split())
        print(f"{PROG}: error: {exc.filename}: {reason}" if exc.filename else f"{PROG}: error: {reason}",
              file=sys.stderr)
        return 1
    for problem in problems:
        print(f"{PROG}: skipped {problem}", file=sys.stderr)
    if not written:
        print(f"{PROG}: nothing to draw: no usable run under {args.runs} (expected <app>/<approach>/metrics.csv or "
              "<app>/<timestamp>/<approach>/metrics.csv; create them with --quick or --reproduce); no figure or table "
              "written", file=sys.stderr)
        return 1
    for path in written:
        print(f"wrote {path}")
    if missing:
        print(f"{PROG}: missing runs (their curves are left out): " + ", ".join(missing), file=sys.stderr)
    if missing or problems:  # (a skipped run need not leave its approach missing: an older run may stand in)
        return 1
    print(f"figures and Table I are in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
