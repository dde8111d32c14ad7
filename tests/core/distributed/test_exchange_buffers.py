"""Receive buffers of the MPI exchange (no MPI): 64-byte aligned (unless empty), C-contiguous, of the asked shape."""

import numpy as np
import pytest

from core.distributed.exchange import aligned_empty


@pytest.mark.parametrize("shape", [(0, 3, 2), (1,), (7, 5), (1000, 100, 10)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int8])
def test_aligned_empty(shape, dtype):
    a = aligned_empty(shape, dtype)
    assert a.shape == shape and a.dtype == dtype and a.flags.c_contiguous and a.flags.writeable
    assert a.size == 0 or a.ctypes.data % 64 == 0
    a[...] = 1  # the whole block is usable
    assert a.sum() == a.size
