"""Dataset generators, the shared HDF5 format and streaming loaders (uses `channel_models`).

Generate with `python -m datasets <kind> --help` (kinds: power-allocation, conflict-graphs, ...).
Read with the kind's loader, which validates the file and streams it item by item:

    from datasets import PowerAllocationDataset
    with PowerAllocationDataset("data/power_allocation.h5") as data:
        for batch in data.batches("train", shuffle=True, seed=0, epoch=0):
            ...  # batch.H: (batch_size, N, N) float32, H[s, j, i] from transmitter j to receiver i

Modules: `storage` (HDF5 writing/reading, metadata, checksum, `DatasetError`, output locks), `cli`
(command-line plumbing and the kind registry), `streaming` (item order, tf.data), `resources`
(available memory and disk space, for refusing jobs that cannot fit), and one module per kind.
"""

__version__ = "0.2.0"  # the toolkit's, as core.__version__ (datasets does not import core; a test keeps them equal)

# (the imports follow __version__, which datasets.cli imports)
from datasets.conflict_graphs import ConflictGraph, ConflictGraphDataset, ConflictGraphsConfig  # noqa: E402
from datasets.power_allocation import PowerAllocationBatch, PowerAllocationConfig, PowerAllocationDataset  # noqa: E402
from datasets.storage import DatasetError  # noqa: E402

__all__ = [
    "ConflictGraph",
    "ConflictGraphDataset",
    "ConflictGraphsConfig",
    "DatasetError",
    "PowerAllocationBatch",
    "PowerAllocationConfig",
    "PowerAllocationDataset",
]
