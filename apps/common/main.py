"""The ``main()`` every experiment app shares: flag parsing with presets and ``--resume``, exit statuses, signals.

:func:`parse_run_flags` turns a command line (or the flags saved in a run directory) into settings;
:func:`run_experiment` runs validate -> train -> report with the exit statuses of docs/design.md,
section 5 (2 bad input, 1 failure while running, 130 interrupted).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Callable, Mapping
from contextlib import contextmanager
from functools import partial
from pathlib import Path

from core.runs import RunDir, RunError

RESUME_IGNORED = ("resume", "quiet", "out", "help", "version")
"""Flags that never come back from a saved run: --resume and -q are this invocation's own, and a resumed
run writes into the folder it resumes, never into a path read from its config.json."""
RESUME_OVERRIDES = ("jobs", "threads", "backend", "partition")
"""Flags that may be given with ``--resume`` (how the run is executed, not what it computes: a run resumes
under any P, or in-process, to the same numbers); the others would silently not apply, so they are refused."""
_UNSET = object()


def parse_run_flags(parser, argv, presets: Mapping[str, Mapping], app: str,
                    renamed: Mapping[str, str] | None = None) -> tuple[argparse.Namespace, dict | None]:
    """Parse an experiment's flags: a ``--preset``'s values become the defaults (explicit flags win); with
    ``--resume DIR`` the flags saved in DIR's config.json replace them all but ``-q``, ``--resume`` and the
    execution flags of :data:`RESUME_OVERRIDES` given with it; any other flag given with ``--resume`` is
    refused (it would not apply).

    The saved flags are turned back into a command line and parsed by the same ``parser``, so they are
    validated exactly as typed ones are (an edited config.json cannot name an approach folder such as
    ``../x`` or give a flag of the wrong type); ``renamed`` maps old flag names (config keys) to new
    ones, and flags the saved run predates take their defaults. A run of another ``app`` is refused.
    Resuming the folder of one approach of a group run (``<out>/<approach>``) resumes that approach only.
    Returns ``(args, config)``: config is the resumed run's config.json, or None for a new run. Every
    problem raises ValueError with a one-line message.
    """
    args = _parse_with_preset(parser, argv, presets)
    given = given_flags(parser, argv)
    if args.resume is None:
        args.given_flags = given  # for the notes on flags without effect (apps.common.cli.ignored_flag_notes)
        return args, None
    refused = [flag for dest, flag in given.items() if dest not in (*RESUME_IGNORED[:2], *RESUME_OVERRIDES)]
    if refused:
        raise ValueError(f"--resume continues a run with its saved flags, so {refused[0]} would not apply: resume "
                         f"without it, or start a new run with --out")
    run = RunDir(args.resume, create=False) if Path(args.resume).is_dir() else None
    if run is None:
        what = "is a file, not a run directory" if Path(args.resume).exists() else "does not exist"
        raise ValueError(f"--resume: run directory {args.resume} {what}")
    try:
        config = run.read_config()
    except (RunError, OSError, ValueError) as exc:
        raise ValueError(f"--resume: {run.config_path}: {_failure(exc)}") from None
    if not isinstance(config, dict) or not isinstance(config.get("flags"), dict):
        raise ValueError(f"--resume: {run.config_path} has no flags object; is it a run directory of {app}?")
    if config.get("app", app) != app:
        raise ValueError(f"--resume: {args.resume} is a run of {config['app']}, not of {app}")
    saved = {(renamed or {}).get(k, k): v for k, v in config["flags"].items()}
    single = config.get("optimizer", config.get("approach"))  # "approach": runs saved before 0.2
    if isinstance(single, str) and single != "all" and "," not in single and "optimizer" in saved:
        saved["optimizer"] = single  # the folder of one approach: resume it, not the whole group inside it
    try:
        replayed = saved_flags_to_argv(parser, saved)
    except ValueError as exc:
        raise ValueError(f"--resume: {run.config_path}: {exc}") from None
    resumed = _parse_with_preset(_raising(parser, f"--resume: {run.config_path}: saved flags"), replayed, presets)
    resumed.quiet, resumed.resume, resumed.out = args.quiet, args.resume, None
    resumed.given_flags = {}  # checked when the run started
    for dest in given:
        if dest in RESUME_OVERRIDES:
            setattr(resumed, dest, getattr(args, dest))
    return resumed, config


NOT_RECORDED = ("resumed_config", "given_flags")
"""Attributes of an app's parsed flags that are this invocation's, not the run's: never in config.json."""


def recorded_flags(args: argparse.Namespace) -> dict:
    """The flags config.json records: every parsed flag but :data:`NOT_RECORDED`, paths as absolute strings
    (so that ``--resume`` finds the run's dataset from any working directory)."""
    return {k: (str(v.absolute()) if isinstance(v, Path) else v) for k, v in vars(args).items()
            if k not in NOT_RECORDED}


def given_flags(parser: argparse.ArgumentParser, argv) -> dict[str, str]:
    """{dest: option string} of the flags ``argv`` gives explicitly (abbreviations included): parsed into a
    namespace whose every attribute is a sentinel, which argparse leaves alone where no flag sets it."""
    actions = [a for a in parser._actions if a.dest != argparse.SUPPRESS]
    probe = argparse.Namespace(**{a.dest: _UNSET for a in actions})
    parser.parse_args(argv, namespace=probe)
    return {a.dest: (a.option_strings or [a.dest])[-1] for a in actions if getattr(probe, a.dest) is not _UNSET}


def saved_flags_to_argv(parser: argparse.ArgumentParser, saved: Mapping) -> list[str]:
    """The command line that gives ``saved`` (a config.json "flags" object) back through ``parser``.

    JSON lists become comma-separated values (as typed); None means the flag was left to its default;
    keys that are no flag of ``parser`` (removed since) are dropped. Raises ValueError naming a flag whose
    saved value has a type no command line could give.
    """
    actions = {a.dest: a for a in parser._actions if a.option_strings}
    argv: list[str] = []
    for name, value in saved.items():
        action = actions.get(name)
        if action is None or name in RESUME_IGNORED or value is None:
            continue
        option = max(action.option_strings, key=len)
        if action.nargs == 0:  # store_true / store_false
            if not isinstance(value, bool):
                raise ValueError(f"flag {option} must be true or false, got {value!r}")
            if value == action.const:
                argv.append(option)
            continue
        if isinstance(value, list | tuple) and value and all(_scalar(v) for v in value):
            text = ",".join(_as_text(v) for v in value)
        elif _scalar(value):
            text = _as_text(value)
        else:
            raise ValueError(f"flag {option} has a saved value of the wrong type: {value!r}")
        argv.append(f"{option}={text}")  # "=" keeps values that start with "-" values
    return argv


def _scalar(value) -> bool:
    return isinstance(value, str | int | float) and not isinstance(value, bool)


def _as_text(value) -> str:
    return repr(value) if isinstance(value, float) else str(value)


def _parse_with_preset(parser, argv, presets):
    args = parser.parse_args(argv)
    if getattr(args, "preset", None):
        parser.set_defaults(**presets[args.preset])
        args = parser.parse_args(argv)
    return args


def _raising(parser: argparse.ArgumentParser, context: str) -> argparse.ArgumentParser:
    """``parser``, whose errors raise ValueError (prefixed by ``context``) instead of exiting."""

    def error(message):
        raise ValueError(f"{context}: {message}")

    parser.error = error
    return parser


class World:
    """The processes of one run: this one alone (the default), or the ranks of an MPI job (:class:`MPIWorld`).

    :func:`run_experiment` claims the run directory on the root only, and all processes agree on a
    validation error (each ends with status 2; only the root prints it).
    """

    size, rank, is_root = 1, 0, True

    def first_error(self, error: str | None) -> str | None:
        return error

    def bcast(self, obj):
        return obj

    def abort(self, status: int) -> None:
        pass

    @contextmanager
    def quiet_unless_root(self):
        yield


class MPIWorld(World):
    """The ranks of ``MPI.COMM_WORLD`` (importing mpi4py starts MPI; TensorFlow is not imported)."""

    def __init__(self):
        from core.distributed.exchange import mpi

        self.comm = mpi().COMM_WORLD.Dup()
        self.size, self.rank = self.comm.Get_size(), self.comm.Get_rank()
        self.is_root = self.rank == 0

    def first_error(self, error):
        errors = self.comm.allgather(error)
        return next((e for e in errors if e is not None), None)

    def bcast(self, obj):
        return self.comm.bcast(obj, root=0)

    def abort(self, status: int) -> None:
        """End every rank (a rank that stopped on an error must not leave the others waiting)."""
        sys.stdout.flush()
        sys.stderr.flush()
        self.comm.Abort(status)

    @contextmanager
    def quiet_unless_root(self):
        """Other ranks print nothing (progress, tables, errors); their streams come back for an uncaught
        exception, which :mod:`core.distributed.faults` reports in one line before aborting the job."""
        if self.is_root:
            yield
            return
        import os

        out, err = sys.stdout, sys.stderr
        with open(os.devnull, "w") as null:
            sys.stdout = sys.stderr = null
            try:
                yield
            finally:
                sys.stdout, sys.stderr = out, err


def refused_under_mpiexec(prog: str) -> bool:
    """For the commands that start the apps as processes of their own (apps.figures, apps.robustness): whether
    this process is a rank of an mpiexec job, where every rank would run the whole command (and the ranks would
    fight over its folders); the first rank then prints one line saying so. The caller exits with status 2."""
    from core.distributed.launch import under_mpiexec

    if not under_mpiexec():
        return False
    rank = next((os.environ[k] for k in ("OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK") if k in os.environ), "0")
    if rank == "0":
        print(f"{prog}: error: does not run under mpiexec (every rank would run the whole command); start it "
              "without mpiexec (the apps themselves run under mpiexec with --backend mpi)", file=sys.stderr)
    return True


def world_from_env() -> World:
    """:class:`MPIWorld` when started by mpiexec, else this process alone."""
    from core.distributed.launch import under_mpiexec

    return MPIWorld() if under_mpiexec() else World()


def run_experiment(prog: str, argv, parse_args, plan, execute, report, failures: tuple = (),
                   world: World | None = None) -> int:
    """The ``main()`` of an experiment app; returns its exit status.

    ``plan(parse_args(argv))`` validates everything before anything is written: a ValueError becomes one
    error line on stderr and status 2. The run directory ``plan.out`` is then created and claimed
    (:func:`core.runs.claim_run_dir`: a second run into it, or a resume of a run still going, is refused
    the same way). ``execute(plan)`` then trains: Ctrl-C says how to continue (``--resume <plan.out>``)
    and gives 130; a failure met mid-run (an OSError such as a full disk, or an exception of
    ``failures``, e.g. a corrupt batch of an unverified dataset) says the same after its message and
    gives 1, as does a run that diverged (:class:`core.runs.RunDiverged`, which cannot be resumed).
    Unless ``-q``, ``report(result, plan)`` prints the final table. SIGTERM (``kill``, a batch
    scheduler's time limit) is handled as Ctrl-C: the run checkpoints its last completed epoch first.
    ``world`` (:class:`MPIWorld` under mpiexec): only its root claims the run directory, and a validation
    error on any rank ends every rank with status 2.
    """
    from contextlib import nullcontext

    from core.runs import RunDiverged, claim_run_dir, clear_stop_request, stop_requested

    world = world or World()
    error = None
    try:
        args = parse_args(argv)
        p = plan(args)
        lock = claim_run_dir(p.out, new=not p.resume) if world.is_root else nullcontext()
        use_threads(getattr(args, "threads", None))
        reuse_threads(getattr(args, "resumed_config", None))
    except ValueError as exc:
        error = str(exc)
    error = world.first_error(error)  # under MPI: every rank stops, or none
    if error is not None:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 2
    try:
        clear_stop_request()
        with lock, _terminate_as_interrupt(defer=world.size > 1):
            result = execute(p)
    except KeyboardInterrupt:
        if world.is_root:
            print(f"{prog}: interrupted; continue with --resume {p.out}", file=sys.stderr)
        return 130
    except RunDiverged as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 1
    except RunError as exc:  # e.g. a damaged or foreign checkpoint met on --resume: bad input, nothing written
        if world.is_root:
            print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        if stop_requested() or isinstance(exc.__context__, KeyboardInterrupt):
            # e.g. an import that the interrupt broke half-way (ImportError from KeyboardInterrupt)
            print(f"{prog}: interrupted; continue with --resume {p.out}", file=sys.stderr)
            return 130
        if not isinstance(exc, (OSError, *failures)):
            raise
        print(f"{prog}: error: {_failure(exc)}; fix it and continue with --resume {p.out}", file=sys.stderr)
        return 1
    if not args.quiet:
        report(result, p)
    return 0


def use_threads(threads: int | None) -> None:
    """``--threads``: TensorFlow's intra- and inter-op thread counts, set before TensorFlow is imported (it reads
    them then); worker processes get the same count (:func:`core.parallel.run_jobs`)."""
    import os

    if threads:
        os.environ["TF_NUM_INTRAOP_THREADS"] = os.environ["TF_NUM_INTEROP_THREADS"] = str(int(threads))


def reuse_threads(config: Mapping | None) -> None:
    """A resumed run keeps the TensorFlow thread count it was started with (recorded as ``threads`` in
    its config.json), so that it ends with the same bits; TensorFlow reads it when first imported."""
    import os

    threads = config.get("threads") if isinstance(config, Mapping) else None
    if isinstance(threads, int) and threads > 0 and "TF_NUM_INTRAOP_THREADS" not in os.environ:
        os.environ["TF_NUM_INTRAOP_THREADS"] = str(threads)


def _failure(exc: BaseException) -> str:
    """One line for a failure: an OSError names its file and reason (not errno's tuple)."""
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.filename}: {exc.strerror}" if exc.filename else exc.strerror
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def resolve_out(args: argparse.Namespace, app: str) -> Path:
    """The run directory of a plan: the resumed one, ``--out`` (checked to be new; missing parents are
    created with it), or ``runs/<app>/<timestamp>``. ValueError with a one-line message."""
    from core.runs import RunError, check_new_run_path, default_run_path

    if args.resume is not None:
        return Path(args.resume)
    try:
        return check_new_run_path(args.out) if args.out is not None else default_run_path(app)
    except RunError as exc:
        raise ValueError(f"--out: {exc}") from None


def check_resumed_dataset(config: Mapping | None, checksum: str, path) -> None:
    """Refuse to resume a run on a dataset other than the one it started on (ValueError)."""
    if config is None:
        return
    recorded = (config.get("dataset") or {}).get("checksum") if isinstance(config.get("dataset"), dict) else None
    if recorded is not None and recorded != checksum:
        raise ValueError(f"--resume: the dataset {path} is not the one this run started on (checksum {checksum} "
                         f"differs from the recorded {recorded}); restore that file or start a new run")


def write_run_config(run: RunDir, config: Mapping) -> Callable[[], None]:
    """config.json of an approach's run, written when it starts; a resumed run keeps its own. Returns what
    to pass as ``Trainer.run(on_resumed=...)``: :func:`record_resumed` with this invocation's backend."""
    if not run.config_path.is_file():
        run.write_config(config)
    return partial(record_resumed, run, config.get("backend"))


def record_resumed(run: RunDir, backend: Mapping | None) -> None:
    """Append the backend a resumed run now runs on (another P, partition, or in-process) to its config.json's
    ``resumed`` list, with when, how and from which commit it was resumed (:func:`core.runs.provenance`), so
    that the file says how each part of the run was executed (summary.json's ``mpi_*`` counts cover the last
    part: from ``mpi_counts_from_step``). Called once the checkpoint was accepted
    (``Trainer.run(on_resumed=...)``): a refused resume writes nothing."""
    from core.runs import atomic_write_json, provenance

    started = {k: v for k, v in provenance().items() if k in ("started", "command_line", "git_commit", "threads")}
    saved = run.read_config()
    resumed = saved.get("resumed") if isinstance(saved.get("resumed"), list) else []
    saved["resumed"] = [*resumed, {**started, "backend": backend}]
    atomic_write_json(run.config_path, saved)


def logged_progress(out: Path, names) -> dict[str, int]:
    """Per approach of a group run in ``out`` the epochs (App C: mini-batches) its metrics.csv has logged, 0
    for none: where a resumed group's shared progress bar starts (``core.parallel.run_jobs(initial=...)``)."""
    from core.runs import read_csv

    done = {}
    for name in names:
        try:
            rows = read_csv(Path(out) / name / "metrics.csv")
            done[name] = int(float(rows[-1]["epoch"])) if rows else 0
        except (OSError, ValueError, KeyError):
            done[name] = 0  # (nothing logged yet, or unreadable: the trainer's resume says so)
    return done


def missing_dataset(args: argparse.Namespace, path, create: str = "pass --generate to create it") -> ValueError:
    """The one-line error for a dataset file that does not exist: for a new run with the way to ``create`` it;
    for a resumed run (whose flags cannot change) the file its config.json names."""
    if getattr(args, "resume", None) is not None:
        return ValueError(f"--resume: the run's dataset {path} does not exist (config.json names it); restore that "
                          f"file or start a new run")
    return ValueError(f"--data: {path} does not exist; {create}")


def prepare_data_folder(path: Path, default: bool) -> None:
    """``--generate`` is to write ``path``: create its folder when ``path`` is the app's default (``data/``, made on
    first use), refuse a missing folder the user named (a typo, more likely than a wish) and a parent that is a
    file; ValueError with one line, also when the folder cannot be created (a read-only file system, say)."""
    folder = path.parent
    if folder.is_dir():
        return
    if folder.exists():
        raise ValueError(f"--data: {folder} is a file, not a folder")
    if not default:
        raise ValueError(f"--data: folder {folder} does not exist")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValueError(f"--generate: cannot create the folder {folder} for {path.name}: "
                         f"{exc.strerror or exc}") from None


def check_generated_settings(path, stored: Mapping, wanted: Mapping) -> None:
    """``--generate`` found ``path`` already there: refuse it (ValueError naming the first settings that
    differ) unless it was written with the settings the dataset flags ask for, ``wanted``."""
    differ = [k for k in wanted if stored.get(k) != wanted[k]]
    if differ:
        shown = "; ".join(f"{k}: the file has {stored.get(k)!r}, the flags give {wanted[k]!r}" for k in differ[:3])
        raise ValueError(f"--data: {path} exists with other settings than the dataset flags ({shown}"
                         f"{'; ...' if len(differ) > 3 else ''}); remove it or choose another --data")


def is_grouped(args: argparse.Namespace, names) -> bool:
    """Whether a run keeps each approach in ``<out>/<approach>/``: with several approaches, or when no
    --out was given (the default layout ``runs/<app>/<timestamp>/<approach>/``, which apps.figures
    reads); a resumed run keeps the layout it was started with (its config.json says ``grouped``)."""
    config = getattr(args, "resumed_config", None)
    if config is not None:
        return bool(config.get("grouped", len(names) > 1))
    return len(names) > 1 or args.out is None


@contextmanager
def approach_run(out: Path, approach: str, several: bool):
    """The RunDir of one approach: ``out`` itself for a single approach (claimed by
    :func:`run_experiment`), else ``out/<approach>``, created and claimed (:class:`core.runs.RunLock`)
    for as long as the approach trains (it may train in a worker process)."""
    from core.runs import RunDir, approach_path, claim_run_dir

    if not several:
        yield RunDir(out)
        return
    path = approach_path(out, approach)
    with claim_run_dir(path, new=False):
        yield RunDir(path)


@contextmanager
def _terminate_as_interrupt(defer: bool = False):
    """Within the block, SIGTERM and Ctrl-C record a stop request (:func:`core.runs.request_stop`, which
    the trainer checks at every epoch boundary) and raise KeyboardInterrupt in the main thread.

    With ``defer`` (an MPI job of several ranks) the first signal only records the request: raising it
    wherever this rank happens to be could leave its peers waiting in an exchange or checkpoint forever,
    so the trainer's agreed stop point (:meth:`core.backend.MPIBackend.any_rank` at each epoch boundary)
    stops every rank together, each checkpointing the same epoch. A second signal raises at once.
    """
    from core.runs import request_stop, stop_requested

    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return

    def interrupt(signum, frame):
        again = stop_requested()
        request_stop()
        if not defer or again:
            raise KeyboardInterrupt

    previous = {s: signal.signal(s, interrupt) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def diverged_summary(run) -> dict:
    """The summary.json of a run that stopped on non-finite values (written by the trainer)."""
    return run.read_summary()


def train_in_run(p, name: str, outputs, train, world: World | None = None) -> dict:
    """Train approach ``name`` of plan ``p`` in its claimed run directory (:func:`approach_run`) with
    ``train(run) -> summary``; returns its summary. A resumed approach that finished with every file of
    ``outputs`` present is not trained again (finished means every output exists: a run killed before
    its plot redraws it); one that diverges gives the summary the trainer wrote with the reason, so that
    the other approaches of a group go on (:func:`raise_if_diverged` then ends the app with status 1).
    Under MPI (``world`` of several ranks) only rank 0 claims and reads the run directory (the other ranks
    train with ``run=None``) and broadcasts what it decides and reads."""
    from contextlib import nullcontext

    from core.runs import RunDiverged

    world = world or World()
    root = world.is_root
    with approach_run(p.out, name, p.grouped) if root else nullcontext() as run:
        finished = root and p.resume and run.finished and run.has_checkpoint() and all(
            (run.path / f).is_file() for f in outputs)
        if world.bcast(finished):
            return world.bcast(run.read_summary() if root else None)
        try:
            return train(run)
        except RunDiverged:
            return world.bcast(diverged_summary(run) if root else None)


def raise_if_diverged(summaries: Mapping[str, Mapping], labels: Mapping[str, str]) -> None:
    """After every approach of a group has run: :class:`core.runs.RunDiverged` naming those that diverged."""
    from core.runs import RunDiverged

    diverged = {name: s["diverged"] for name, s in summaries.items() if isinstance(s, Mapping) and s.get("diverged")}
    if diverged:
        parts = [f"{labels.get(name, name)} at epoch {d.get('epoch')} ({d.get('reason', 'non-finite values')})"
                 for name, d in diverged.items()]
        first = min(diverged.values(), key=lambda d: d.get("epoch", 0))
        raise RunDiverged("diverged: " + "; ".join(parts) + "; the last finite epoch of each is checkpointed, and a "
                          "diverged run cannot be resumed: start a new run with other settings",
                          epoch=first.get("epoch", 0), reason=first.get("reason", "non-finite values"))
