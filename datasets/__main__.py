"""`python -m datasets <kind> [flags]`: generate a dataset file; `--help` lists the kinds.

The kinds are discovered from the modules of this package (see `datasets.cli`).
"""

from __future__ import annotations

import sys

from datasets import cli


def main(argv: list[str] | None = None) -> int:
    """Parse `argv` (default sys.argv[1:]), generate the dataset, return the exit status.

    Bad flags raise SystemExit(2) after one error line on stderr.
    """
    parser = cli.build_parser(cli.discover_kinds())
    args = parser.parse_args(argv)
    return cli.run_kind(args._kind, args, args._parser)


if __name__ == "__main__":
    sys.exit(main())
