"""`python -m apps.node_regression`: train the student GCNN of Section IV-A (see `--help`)."""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up notices are not our output

from apps.node_regression.experiment import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
