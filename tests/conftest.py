"""Shared pytest set-up: quiet TensorFlow logs and make every test deterministic."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
