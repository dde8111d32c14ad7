"""`python -m apps.power_allocation`: train UWMMSE power allocation of Section IV-B (see `--help`)."""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up notices are not our output

from apps.power_allocation.experiment import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
