"""Buffers of the MPI exchange (no MPI): 64-byte aligned (unless empty), C-contiguous, of the asked shape; a
pooled block is handed out again only when nothing refers to it (a view, a caller, a TensorFlow tensor)."""

import numpy as np
import pytest
import tensorflow as tf

from core.distributed.exchange import BlockPool, aligned_empty


@pytest.mark.parametrize("shape", [(0, 3, 2), (1,), (7, 5), (1000, 100, 10)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int8])
def test_aligned_empty(shape, dtype):
    a = aligned_empty(shape, dtype)
    assert a.shape == shape and a.dtype == dtype and a.flags.c_contiguous and a.flags.writeable
    assert a.size == 0 or a.ctypes.data % 64 == 0
    a[...] = 1  # the whole block is usable
    assert a.sum() == a.size


@pytest.mark.parametrize("shape", [(0, 3), (7, 5), (1000, 100, 10)])
def test_pool_blocks_are_aligned_empty_blocks(shape):
    a = BlockPool(min_bytes=64).empty(shape, np.float32)
    assert a.shape == shape and a.dtype == np.float32 and a.flags.c_contiguous and a.flags.writeable
    assert a.size == 0 or a.ctypes.data % 64 == 0


def test_pool_reuses_a_block_only_when_nothing_refers_to_it():
    pool = BlockPool(min_bytes=64)
    a = pool.empty((10, 4), np.float32)
    b = pool.empty((10, 4), np.float32)
    assert a.ctypes.data != b.ctypes.data  # a is in use
    address, part = a.ctypes.data, a[3:]
    del a
    c = pool.empty((40,), np.float32)  # same bytes, another shape: a's block is still seen through its view
    assert c.ctypes.data not in (address, b.ctypes.data)
    del part
    d = pool.empty((5, 8), np.float32)
    assert d.ctypes.data == address  # free again: the same block
    small = BlockPool()  # below min_bytes: ordinary allocations, never pooled
    assert not small._blocks and small.empty((3,), np.float64).ctypes.data % 64 == 0 and not small._blocks


def test_pool_keeps_at_most_per_size_blocks():
    pool = BlockPool(min_bytes=64, per_size=2)
    held = [pool.empty((16,), np.float64) for _ in range(4)]
    assert len({h.ctypes.data for h in held}) == 4 and len(pool._blocks[128]) == 2


def test_a_block_wrapped_by_tensorflow_is_not_handed_out_while_the_tensor_lives():
    """tf.numpy_function wraps an aligned result without a copy (the exchanges rely on it): the block must stay
    reserved for as long as the tensor exists, and come back once it is gone."""
    pool = BlockPool(min_bytes=64)

    def fill(x):
        out = pool.empty(x.shape, x.dtype)
        out[...] = x
        return out

    run = tf.function(lambda x: tf.numpy_function(fill, [x], tf.float32, stateful=True), autograph=False)
    first = run(tf.fill([10, 4], 1.0))
    second = run(tf.fill([10, 4], 2.0))  # must not overwrite first
    assert (first.numpy() == 1).all() and (second.numpy() == 2).all()
    del first, second
    third = run(tf.fill([10, 4], 3.0))
    assert (third.numpy() == 3).all() and len(pool._blocks[160]) == 2  # a freed block was reused
