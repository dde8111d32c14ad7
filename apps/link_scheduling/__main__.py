"""`python -m apps.link_scheduling`: train the GCNN-LGS actor of Section IV-C (see `--help`)."""

import sys

from core.tf_notices import silence_startup_notices

silence_startup_notices()  # TensorFlow's C++ start-up notices are not our output (before it is imported)

from apps.link_scheduling.experiment import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
