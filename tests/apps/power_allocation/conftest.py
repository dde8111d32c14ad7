"""Shared fixtures of the App B tests."""

import numpy as np
import pytest

from datasets import power_allocation as pa


@pytest.fixture(scope="module")
def channels(request, tmp_path_factory):
    """(H (B, N, N) float64 from the generator, σ², Pmax), with the N pairs and B samples of the test module."""
    n, b = request.module.N, request.module.B
    path = tmp_path_factory.mktemp("data") / "pa.h5"
    pa.generate(pa.PowerAllocationConfig(pairs=n, batch_size=b, layouts=1, batches_per_layout=1, test_batches=1,
                                         area=300.0, seed=3), path)
    with pa.PowerAllocationDataset(path) as data:
        return data.batch("train", 0).H.astype(np.float64), data.noise_power_w, data.pmax_w
