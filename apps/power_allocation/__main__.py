"""`python -m apps.power_allocation`: train UWMMSE power allocation of Section IV-B (see `--help`)."""

import sys

from core.tf_notices import silence_startup_notices

silence_startup_notices()  # TensorFlow's C++ start-up notices are not our output (before it is imported)

from apps.power_allocation.experiment import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
