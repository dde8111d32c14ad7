"""`python -m apps.node_regression`: train the student GCNN of Section IV-A (see `--help`)."""

import sys

from apps.node_regression.experiment import main

if __name__ == "__main__":
    sys.exit(main())
