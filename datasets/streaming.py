"""Streaming helpers shared by the dataset loaders: item order per epoch and tf.data wrapping.

Loaders read one item (a batch, a graph) at a time from disk, so memory stays bounded by a few
items whatever the file size. Shuffling permutes the order in which items are read, not their content.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Mapping

import numpy as np


def item_order(num_items: int, shuffle: bool, seed: int | None, epoch: int = 0) -> np.ndarray:
    """Indices 0..num_items-1 in reading order.

    Unshuffled: ascending. Shuffled: a permutation that is a pure function of (seed, epoch), so a run
    is reproducible and every epoch sees a different order; seed=None draws fresh OS entropy.
    """
    if not shuffle:
        return np.arange(num_items)
    entropy = None if seed is None else [int(seed), int(epoch)]
    return np.random.default_rng(np.random.SeedSequence(entropy)).permutation(num_items)


def to_tf_dataset(
    make_items: Callable[[int], Iterator[Mapping[str, np.ndarray]]],
    signature: Mapping[str, tuple[tuple[int | None, ...], np.dtype]],
):
    """A `tf.data.Dataset` streaming the dicts that `make_items(epoch)` yields.

    `signature` maps each key to (shape, NumPy dtype). Each full iteration over the dataset (each
    epoch) calls `make_items` with the next epoch number 0, 1, 2, ..., so a shuffled loader reshuffles
    per epoch. TensorFlow is imported here only, so NumPy-only users never load it.
    """
    import tensorflow as tf

    epochs = itertools.count()
    output_signature = {
        key: tf.TensorSpec(shape=shape, dtype=tf.as_dtype(np.dtype(dtype)))
        for key, (shape, dtype) in signature.items()
    }
    return tf.data.Dataset.from_generator(lambda: make_items(next(epochs)), output_signature=output_signature)
