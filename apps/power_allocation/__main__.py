"""`python -m apps.power_allocation`: train UWMMSE power allocation of Section IV-B (see `--help`)."""

import sys

from apps.power_allocation.experiment import main

if __name__ == "__main__":
    sys.exit(main())
