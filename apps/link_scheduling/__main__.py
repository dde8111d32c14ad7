"""`python -m apps.link_scheduling`: train the GCNN-LGS actor of Section IV-C (see `--help`)."""

import sys

from apps.link_scheduling.experiment import main

if __name__ == "__main__":
    sys.exit(main())
