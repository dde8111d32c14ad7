"""Put on ``PYTHONPATH`` of an ``mpiexec`` job by test_mpi_app_interrupt.py (never imported by pytest): rank 0's
metrics.csv writes (:meth:`core.runs.RunDir.write_metrics`, the last write of every checkpoint) take
``FDTRAIN_TEST_SLOW_ROOT_WRITES`` seconds more, as on a slow disk, so that a rank that ended the job without
waiting for rank 0's last writes after an agreed stop would deterministically cut them off (the run directory
then lacks the stop epoch's metrics.csv rows and the log rank 0's --resume line).

Python imports ``sitecustomize`` at start-up, before ``-m`` puts the working directory on ``sys.path``: the job's
``PYTHONPATH`` also names the repository. Only ``core.runs`` is imported here (NumPy, no TensorFlow, so the
TensorFlow thread settings the apps make before importing it still apply).
"""

import os
import time

DELAY = os.environ.get("FDTRAIN_TEST_SLOW_ROOT_WRITES")
if DELAY and os.environ.get("OMPI_COMM_WORLD_RANK") == "0":
    from core import runs

    _write_metrics = runs.RunDir.write_metrics

    def _slow_write_metrics(self, *args, **kwargs):
        time.sleep(float(DELAY))
        return _write_metrics(self, *args, **kwargs)

    runs.RunDir.write_metrics = _slow_write_metrics
