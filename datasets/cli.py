"""Command-line plumbing shared by the dataset kinds of `python -m datasets <kind>`.

A dataset kind is a module of this package that defines a module-level `KIND = DatasetKind(...)`;
`discover_kinds` finds it, so adding a kind means adding one module. The kind supplies

* `add_arguments(parser)`: its own flags (the common `--data-seed` (alias `--seed`), `--out`, `--force`
  and `-q` are added here);
* `configure(args) -> config`: turns parsed flags into a config object, raising `ValueError` with a
  message that names the flag for any bad value (exit status 2, nothing written);
* `generate(config, out_path, quiet)`: writes the file (use `storage.write_dataset` so the write is
  atomic, and `progress_bar` for the progress display);
* optionally `estimate(config) -> Estimate`: the file size and peak memory of `generate`, so that a
  dataset that cannot fit is refused before any work (see `Estimate`).

* optionally `reader`: its loader class (a `storage.DatasetReader`), which `python -m datasets info FILE`
  opens to describe a file of the kind (`run_info`).

A minimal kind module (e.g. `datasets/my_kind.py`)::

    SCHEMA = storage.Schema("my-kind", 1, (storage.ArraySpec("train/x", ("samples", "width"), np.float32),))

    @dataclass(frozen=True)
    class MyConfig:
        samples: int = 100
        seed: int = 0

        def __post_init__(self):
            cli.check_counts(self, ("samples",))
            cli.check_seed(self)

    def generate(config, out, quiet=True):
        with storage.write_dataset(out, SCHEMA, dataclasses.asdict(config), f"{__name__} 1.0") as writer:
            writer.create_array("train/x", (config.samples, 8))
            writer.append("train/x", np.random.default_rng(config.seed).random((config.samples, 8)))

    def estimate(config):
        return cli.Estimate(storage.estimate_file_bytes(SCHEMA, {"samples": config.samples, "width": 8}),
                            memory_bytes=2 * 8 * 8 * config.samples, driver="--samples")

    KIND = cli.DatasetKind("my-kind", "one-line help", "description", add_arguments, configure, generate,
                           estimate)

and its loader subclasses `storage.DatasetReader` (see `datasets.power_allocation`).

Keep a kind module light to import (heavy libraries such as TensorFlow inside functions), because the
CLI imports every kind to list them.

Error policy (`run_kind`; the exit statuses of docs/design.md, section 5): every failure is one line on
stderr, `python -m datasets <kind>: error: <message>`, never a traceback, and never leaves a file
under the output name or a temporary file.

* Status 2, refused before anything is written: a bad flag; an output that exists (without
  `--force`) or is a folder; a dataset whose estimated peak memory exceeds 80% of the available
  memory, or whose file does not fit on the disk; an output that another process is writing.
* Status 1, failed while running: an OSError while writing (disk full, read-only file system, no
  permission) or any other error of the generator.
* Status 130: interrupted by Ctrl-C or SIGTERM.

Two runs writing the same file exclude each other with an advisory lock next to it
(`storage.claim_output`), which the kernel releases even when its holder is killed; a run removes the
temporaries of its output left by killed runs. Missing parent folders of `--out` are created (and
removed again if the run fails).
"""

from __future__ import annotations

import argparse
import importlib
import math
import os
import pkgutil
import re
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from datasets import __version__, resources, storage

DEFAULT_DATA_DIR = Path("data")
"""Folder of the default output files; created on demand (as are the missing folders of --out)."""


@dataclass(frozen=True)
class Estimate:
    """What generating a dataset takes, estimated from its config before any work.

    `file_bytes`: size of the file (`storage.estimate_file_bytes`); `memory_bytes`: peak memory of
    the generator, an upper estimate (refusing a dataset that would fit is worse than the rare one
    that is let through and fails with MemoryError, which is still reported in one line);
    `driver`: what the peak grows with, for the refusal message (e.g. "--pairs^2 x --batch-size").
    """

    file_bytes: int
    memory_bytes: int
    driver: str = ""


@dataclass(frozen=True)
class DatasetKind:
    """A dataset kind of the CLI (see the module docstring for the contract of each function)."""

    name: str
    help: str
    description: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    configure: Callable[[argparse.Namespace], object]
    generate: Callable[[object, Path, bool], None]
    estimate: Callable[[object], Estimate] | None = None
    reader: Callable[[Path], storage.DatasetReader] | None = None  # its loader class: `python -m datasets info`

    @property
    def default_output(self) -> Path:
        return DEFAULT_DATA_DIR / f"{self.name.replace('-', '_')}.h5"


def program_name(module_form: str) -> str:
    """How this process was invoked, for usage lines and error prefixes: the installed console script's name
    (``fdtrain-datasets``) when run as one, else ``module_form`` (``python -m datasets``)."""
    script = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return script if script.startswith("fdtrain-") else module_form


def plain_docstring(text: str) -> str:
    """A docstring's reST markup as --help shows it: ``code`` and :role:`target` become `code` and `target`."""
    return re.sub(r":\w+:`([^`]+)`", r"`\1`", text.replace("``", "`"))


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows "(default: X)" for options that take a value and have a default other than None."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.nargs == 0 or action.default is None:
            return action.help or ""
        return super()._get_help_string(action)


class OneLineErrorParser(argparse.ArgumentParser):
    """ArgumentParser whose errors are one line on stderr (`<prog>: error: <message>`), exit status 2, and that
    reads a negative number in exponent form as a value (`--noise-dbm -1.1e2`), as it reads `-110`.

    Abbreviated flags are refused (`--ep 3` is no `--epochs 3`): a prefix that names a flag today may name
    another tomorrow, and it slips past checks that look for a flag by its name (e.g. the flags the robustness
    sweep refuses after `--`). Its subcommand parsers inherit this, being of the same class."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)
        # argparse's own pattern has no exponent, so "-1.1e2" looked like an option (none of ours starts with a digit)
        self._negative_number_matcher = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    value = _parse(text, int, "an integer")
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0 (seeds, checkpoint intervals)."""
    value = _parse(text, int, "an integer")
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text}")
    return value


def non_negative_float(text: str) -> float:
    """argparse type: a finite float >= 0."""
    value = _parse(text, float, "a number")
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite float > 0 (one message for every value it refuses)."""
    value = _parse(text, float, "a number")
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def finite_float(text: str) -> float:
    """argparse type: any finite float."""
    value = _parse(text, float, "a number")
    if value != value or value in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


def flag(field_name: str) -> str:
    """The CLI flag of a config field: config fields are named after their flags (`batch_size` is
    `--batch-size`), so that config validation errors can name the flag to fix."""
    return "--" + field_name.replace("_", "-")


def check_counts(config, names: tuple[str, ...]) -> None:
    """ValueError naming the flag unless each field is an int >= 1."""
    for name in names:
        value = getattr(config, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{flag(name)} must be a positive integer, got {value!r}")


def check_numbers(config, names: tuple[str, ...], minimum: float | None = None, strict: bool = False) -> None:
    """ValueError naming the flag unless each field is a finite number (>= minimum, or > it if strict)."""
    for name in names:
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise ValueError(f"{flag(name)} must be a finite number, got {value!r}")
        if minimum is not None and (value < minimum or (strict and value == minimum)):
            raise ValueError(f"{flag(name)} must be {'>' if strict else '>='} {minimum:g}, got {value!r}")


def check_choice(config, name: str, allowed: tuple[str, ...]) -> None:
    """ValueError naming the flag unless the field is one of `allowed`."""
    if getattr(config, name) not in allowed:
        raise ValueError(f"{flag(name)} must be one of {', '.join(allowed)}, got {getattr(config, name)!r}")


def check_seed(config) -> None:
    """ValueError unless `config.seed` (the data generator's seed, flag --data-seed) is an int >= 0
    (what numpy's SeedSequence accepts)."""
    if not isinstance(config.seed, int) or isinstance(config.seed, bool) or config.seed < 0:
        raise ValueError(f"--data-seed must be a non-negative integer, got {config.seed!r}")


def output_path(text: str) -> Path:
    """argparse type of --out: a file name (a trailing slash, which names a folder, is refused)."""
    if not text or text.endswith(("/", os.sep)):
        raise argparse.ArgumentTypeError(f"must be a file name, got {text!r}")
    return Path(text)


def add_common_arguments(parser: argparse.ArgumentParser, kind: DatasetKind) -> None:
    """Flags every kind shares: --data-seed (alias --seed), --out, --force, -q."""
    group = parser.add_argument_group("output")
    group.add_argument(
        "--data-seed",
        "--seed",
        dest="seed",  # the config field, stored in the file's config as "seed"
        metavar="SEED",
        type=non_negative_int,
        default=0,
        help="seed of the data generator; equal seeds give identical files (--seed is an alias)",
    )
    group.add_argument(
        "--out",
        type=output_path,
        default=None,
        help=f"output HDF5 file (default {kind.default_output}); missing folders are created",
    )
    group.add_argument("--force", action="store_true", help="replace the output file if it exists")
    group.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def progress_bar(total: int, description: str, quiet: bool, unit: str = "batch") -> tqdm:
    """A tqdm progress bar on stderr, disabled by `quiet` (-q)."""
    return tqdm(total=total, desc=description, unit=unit, disable=quiet, file=sys.stderr, dynamic_ncols=True)


def discover_kinds() -> dict[str, DatasetKind]:
    """Every `KIND` defined by a module of the `datasets` package, by name."""
    package = importlib.import_module(__package__)
    kinds: dict[str, DatasetKind] = {}
    for module_info in pkgutil.iter_modules(package.__path__):
        if module_info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__package__}.{module_info.name}")
        kind = getattr(module, "KIND", None)
        if isinstance(kind, DatasetKind):
            kinds[kind.name] = kind
    return dict(sorted(kinds.items()))


def build_parser(kinds: dict[str, DatasetKind]) -> OneLineErrorParser:
    """The `python -m datasets` parser with one subcommand per kind."""
    parser = OneLineErrorParser(
        prog=program_name("python -m datasets"),
        description="Generate a dataset file (HDF5). "
        "Run `python -m datasets <kind> --help` for the flags of a kind.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s (fdtrain-gnn) {__version__}")
    subparsers = parser.add_subparsers(dest="kind", metavar="<kind>", required=True)
    for kind in kinds.values():
        sub = subparsers.add_parser(
            kind.name,
            help=kind.help,
            description=kind.description,
            formatter_class=HelpFormatter,
        )
        kind.add_arguments(sub)
        add_common_arguments(sub, kind)
        sub.set_defaults(_kind=kind, _parser=sub)
    info = subparsers.add_parser(
        INFO,
        help="describe a dataset file: its kind, generation settings, arrays and checksum",
        description="Print what a dataset file of any kind holds: its kind and schema version, the code that "
        "wrote it, its checksum and size, every generation setting, the attributes derived from them and "
        "every "
        "array's dtype and shape. Opening it checks the schema, dtypes and shapes; --verify also reads every "
        "row. Exit status 0, or 2 (one line on stderr) for a file that is missing, not a dataset of this "
        "project or damaged.",
        formatter_class=HelpFormatter,
    )
    info.add_argument("file", type=Path, help="the dataset file (HDF5)")
    info.add_argument("--verify", action="store_true",
                      help="also read every row (the kind's content checks) and recompute the checksum (about 6 s "
                      "for the paper's power-allocation dataset)")
    info.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    info.set_defaults(_kind=None, _parser=info)
    return parser


INFO = "info"
"""The subcommand that describes a dataset file (:func:`run_info`); not a kind."""


def run_info(args: argparse.Namespace, kinds: dict[str, DatasetKind], parser: argparse.ArgumentParser) -> int:
    """`python -m datasets info FILE [--verify] [--json]`: print :func:`storage.describe` of the file; returns
    the exit status (2 after one line on stderr when the file cannot be used)."""
    try:
        with _terminate_as_interrupt():
            name = storage.stored_kind(args.file)
            kind = kinds.get(name)
            if kind is None or kind.reader is None:
                raise storage.DatasetError(f"{args.file}: a {name!r} dataset, a kind this version does not read "
                                           f"(it reads {', '.join(k for k, v in kinds.items() if v.reader)})")
            with kind.reader(args.file) as reader:
                info = storage.describe(reader)
                if args.verify:
                    reader.verify()
                    info["verified"] = True
    except storage.DatasetError as exc:
        print(f"{parser.prog}: error: {_one_line(str(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted", file=sys.stderr)
        return 130
    try:
        _print_info(info, args.json)
    except BrokenPipeError:  # `... | head`: the reader has gone; not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python flushes
    return 0


def _print_info(info: dict, as_json: bool) -> None:
    import json

    if as_json:
        print(json.dumps(info, indent=2, sort_keys=True))
        return
    print(f"{info['file']}: {info['kind']} dataset, schema version {info['schema_version']}, "
          f"{info['bytes'] / 2**20:.1f} MB, written by {info['generator']}")
    print(f"checksum: {info['checksum']}")
    print(f"generation settings (see `python -m datasets {info['kind']} --help`):")
    for key, value in sorted(info["config"].items()):
        print(f"  {key} = {json.dumps(value)}")
    if info["attributes"]:
        print("derived attributes:")
        for key, value in sorted(info["attributes"].items()):
            print(f"  {key} = {json.dumps(value)}")
    print("arrays:")
    width = max((len(n) for n in info["arrays"]), default=0)
    for name, spec in info["arrays"].items():
        print(f"  {name:<{width}}  {spec['dtype']:<8} {tuple(spec['shape'])}")
    if info.get("verified"):
        print("verified: every row passes its content checks and the checksum matches")


def run_kind(kind: DatasetKind, args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Validate, claim the output, then generate; returns the exit status (see the module docstring).

    Refusals (status 2) print their line and raise SystemExit(2), as argparse does for bad flags.
    """
    prog = parser.prog
    try:
        config = kind.configure(args)
        out = resolve_output(args.out, kind.default_output, args.force)
        estimate = kind.estimate(config) if kind.estimate is not None else None
        if estimate is not None:
            hint = f"it grows with {estimate.driver}" if estimate.driver else ""
            resources.check_fits(estimate.memory_bytes, "generating this dataset", hint=hint)
    except ValueError as exc:
        parser.error(str(exc))
    created: list[Path] = []
    generated = False
    try:
        with _terminate_as_interrupt():
            _make_folders(out.parent, created)
            with storage.claim_output(out):  # OutputBusyError if another run writes `out`
                _check_claimed_output(out, args, estimate, prog)
                try:
                    kind.generate(config, out, args.quiet)
                    generated = True
                finally:
                    storage.remove_stale_temporaries(out)  # ours, if an interrupt hit write_dataset's cleanup
    except (_Refused, storage.OutputBusyError) as exc:
        parser.exit(2, f"{prog}: error: {exc}\n")
    except KeyboardInterrupt as exc:
        outcome = f"{out} is complete" if generated else f"nothing written to {out}"  # a signal as it ended
        print(f"{prog}: interrupted{' by SIGTERM' if isinstance(exc, Terminated) else ''}; {outcome}",
              file=sys.stderr)
        return 130
    except OSError as exc:
        print(f"{prog}: error while writing {out}: {describe_os_error(exc)}; nothing written", file=sys.stderr)
        return 1
    except MemoryError:
        print(f"{prog}: error: out of memory while generating {out}; nothing written (reduce the sizes)",
              file=sys.stderr)
        return 1
    except Exception as exc:  # a bug of a generator: still one line, and no file left behind
        print(f"{prog}: error while generating {out}: {type(exc).__name__}: {_one_line(str(exc))}; "
              "nothing written", file=sys.stderr)
        return 1
    finally:
        if not generated:
            _remove_folders(created)
    if not args.quiet:
        print(f"wrote {out}", file=sys.stderr)
    return 0


class _Refused(Exception):
    """A check made once the output is claimed failed: refuse (status 2), nothing was written."""


def _check_claimed_output(out: Path, args: argparse.Namespace, estimate: Estimate | None, prog: str) -> None:
    """The checks that need the claim on `out`: raises `_Refused`. Removes the temporaries of `out`
    left by killed runs first, so that their space counts as free."""
    if out.exists() and not args.force:  # again: another run may have written it since resolve_output
        raise _Refused(f"--out: {out} exists; pass --force to replace it")
    for stale in storage.remove_stale_temporaries(out):
        if not args.quiet:
            print(f"{prog}: removed {stale}, left by an interrupted run", file=sys.stderr)
    if estimate is not None:
        try:
            resources.check_disk_space(out.parent, estimate.file_bytes, f"the file {out}")
        except ValueError as exc:
            raise _Refused(str(exc)) from None


_NAME_ROOM = len("..4194304.0123abcd.tmp")  # what the temporary ".<name>.<pid>.<hex>.tmp" adds to a name


def resolve_output(out: Path | None, default: Path, force: bool) -> Path:
    """The output path, checked before any work: ValueError if it is a folder or another non-regular
    file (a device or pipe, which --force must not replace), if it exists (without `force`), if a
    component of its folder is a file, or if its name leaves no room for the name of the temporary.
    Nothing is created here (see `run_kind`)."""
    if out is None:
        out = default
    if out.is_dir():
        raise ValueError(f"--out: {out} is a folder, expected a file name")
    if out.exists() and not out.is_file():
        raise ValueError(f"--out: {out} exists and is not a regular file")
    if out.exists() and not force:
        raise ValueError(f"--out: {out} exists; pass --force to replace it")
    folder = out.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"--out: {folder} is a file, not a folder")
    try:
        limit = os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError):
        limit = 255
    if len(os.fsencode(out.name)) + _NAME_ROOM > limit:
        raise ValueError(f"--out: the file name is too long ({len(os.fsencode(out.name))} bytes; at most "
                         f"{limit - _NAME_ROOM}, leaving room for the hidden temporary file next to it)")
    return out


class Terminated(KeyboardInterrupt):
    """Raised by the SIGTERM handler of `_terminate_as_interrupt`: handled exactly as Ctrl-C."""


@contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM (kill, a batch scheduler's time limit) raises `Terminated` in the main
    thread, so it unwinds like Ctrl-C and the temporary file is removed; elsewhere a no-op (signal
    handlers can only be installed from the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(signum, frame):
        raise Terminated

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def describe_os_error(exc: OSError) -> str:
    """One line for an OSError: the description of its errno ("No space left on device"), which h5py
    buries in a long message naming the temporary file; else the message on one line."""
    code = exc.errno
    if code is None:
        found = re.search(r"errno = (\d+)", str(exc))
        code = int(found[1]) if found else None
    if code is not None:
        return os.strerror(code)
    return _one_line(str(exc)) or type(exc).__name__


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _make_folders(folder: Path, created: list[Path]) -> None:
    """Create `folder` and its missing parents, inserting each created one at the front of `created`
    (deepest first, for `_remove_folders`), even if a later one fails."""
    missing = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    for path in reversed(missing):
        try:
            path.mkdir()
        except FileExistsError:  # a concurrent run made it: not ours to remove
            if not path.is_dir():
                raise
            continue
        created.insert(0, path)


def _remove_folders(created: list[Path]) -> None:
    for path in created:  # deepest first; a folder someone else has put a file into stays
        try:
            path.rmdir()
        except OSError:
            break


def _parse(text: str, convert, description: str):
    try:
        return convert(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {description}, got {text!r}") from None
