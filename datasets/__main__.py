"""`python -m datasets <kind> [flags]`: generate a dataset file; `--help` lists the kinds;
`python -m datasets info FILE [--verify] [--json]` describes a file of any kind.

The kinds are discovered from the modules of this package, and the run follows the error policy of
`datasets.cli` (one line on stderr per failure; exit status 2, 1 or 130).
"""

from __future__ import annotations

import sys

from datasets import cli


def main(argv: list[str] | None = None) -> int:
    """Parse `argv` (default sys.argv[1:]), generate the dataset, return the exit status.

    Refusals (bad flags, and the checks of `cli.run_kind` before anything is written) raise
    SystemExit(2) after one error line on stderr.
    """
    try:
        kinds = cli.discover_kinds()
        parser = cli.build_parser(kinds)
        args = parser.parse_args(argv)
    except KeyboardInterrupt:
        print("python -m datasets: interrupted; nothing written", file=sys.stderr)
        return 130
    if args._kind is None:  # `info FILE`: describe, not generate
        return cli.run_info(args, kinds, args._parser)
    return cli.run_kind(args._kind, args, args._parser)


if __name__ == "__main__":
    sys.exit(main())
