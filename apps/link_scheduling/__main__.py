"""`python -m apps.link_scheduling`: train the GCNN-LGS actor of Section IV-C (see `--help`)."""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up notices are not our output

from apps.link_scheduling.experiment import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
