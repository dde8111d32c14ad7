"""Command-line plumbing shared by the dataset kinds of `python -m datasets <kind>`.

A dataset kind is a module of this package that defines a module-level `KIND = DatasetKind(...)`;
`discover_kinds` finds it, so adding a kind means adding one module. The kind supplies

* `add_arguments(parser)`: its own flags (the common `--seed`, `--out`, `--force`, `-q` are added here);
* `configure(args) -> config`: turns parsed flags into a config object, raising `ValueError` with a
  message that names the flag for any bad value (exit status 2, nothing written);
* `generate(config, out_path, quiet)`: writes the file (use `storage.write_dataset` so the write is
  atomic, and `progress_bar` for the progress display).

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

    KIND = cli.DatasetKind("my-kind", "one-line help", "description", add_arguments, configure, generate)

and its loader subclasses `storage.DatasetReader` (see `datasets.power_allocation`).

Keep a kind module light to import (heavy libraries such as TensorFlow inside functions), because the
CLI imports every kind to list them.

Error policy (`run_kind`): a bad flag prints one line `python -m datasets <kind>: error: <message>` and
exits with status 2 before anything is written; an interruption (Ctrl-C) or a failure while writing
leaves no file under the output name and exits with status 130 or 1.
"""

from __future__ import annotations

import argparse
import importlib
import math
import pkgutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

DEFAULT_DATA_DIR = Path("data")
"""Folder of the default output files; created on demand (an explicit --out folder must exist)."""


@dataclass(frozen=True)
class DatasetKind:
    """A dataset kind of the CLI (see the module docstring for the contract of each function)."""

    name: str
    help: str
    description: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    configure: Callable[[argparse.Namespace], object]
    generate: Callable[[object, Path, bool], None]

    @property
    def default_output(self) -> Path:
        return DEFAULT_DATA_DIR / f"{self.name.replace('-', '_')}.h5"


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows "(default: X)" for options that take a value and have a default other than None."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.nargs == 0 or action.default is None:
            return action.help or ""
        return super()._get_help_string(action)


class OneLineErrorParser(argparse.ArgumentParser):
    """ArgumentParser whose errors are one line on stderr (`<prog>: error: <message>`), exit status 2."""

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
    """argparse type: a finite float > 0."""
    value = non_negative_float(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
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
    """ValueError unless `config.seed` is an int >= 0 (what numpy's SeedSequence accepts)."""
    if not isinstance(config.seed, int) or isinstance(config.seed, bool) or config.seed < 0:
        raise ValueError(f"--seed must be a non-negative integer, got {config.seed!r}")


def add_common_arguments(parser: argparse.ArgumentParser, kind: DatasetKind) -> None:
    """Flags every kind shares: --seed, --out, --force, -q."""
    group = parser.add_argument_group("output")
    group.add_argument(
        "--seed",
        type=non_negative_int,
        default=0,
        help="random seed; equal seeds give identical files",
    )
    group.add_argument(
        "--out",
        type=Path,
        default=None,
        help=f"output HDF5 file (default {kind.default_output}; its folder is created if missing, "
        "while the folder of an explicit --out must exist)",
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
        prog="python -m datasets",
        description="Generate a dataset file (HDF5). "
        "Run `python -m datasets <kind> --help` for the flags of a kind.",
    )
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
    return parser


def run_kind(kind: DatasetKind, args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Validate, then generate; returns the exit status (see the module docstring)."""
    try:
        config = kind.configure(args)
        out = resolve_output(args.out, kind.default_output, args.force)
    except ValueError as exc:
        parser.error(str(exc))
    try:
        kind.generate(config, out, args.quiet)
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted; nothing written to {out}", file=sys.stderr)
        return 130
    except OSError as exc:
        print(f"{parser.prog}: error while writing {out}: {exc}; nothing written", file=sys.stderr)
        return 1
    if not args.quiet:
        print(f"wrote {out}", file=sys.stderr)
    return 0


def resolve_output(out: Path | None, default: Path, force: bool) -> Path:
    """The output path, checked before any work: ValueError if its folder is missing or it exists."""
    if out is None:
        out = default
        out.parent.mkdir(parents=True, exist_ok=True)
    if not out.parent.is_dir():
        raise ValueError(f"--out: folder {out.parent} does not exist")
    if out.is_dir():
        raise ValueError(f"--out: {out} is a folder, expected a file name")
    if out.exists() and not force:
        raise ValueError(f"--out: {out} exists; pass --force to replace it")
    return out


def _parse(text: str, convert, description: str):
    try:
        return convert(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {description}, got {text!r}") from None
