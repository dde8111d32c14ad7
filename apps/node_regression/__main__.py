"""`python -m apps.node_regression`: train the student GCNN of Section IV-A (see `--help`)."""

import sys

from core.tf_notices import silence_startup_notices

silence_startup_notices()  # TensorFlow's C++ start-up notices are not our output (before it is imported)

from apps.node_regression.experiment import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
