"""Conflict-graph dataset for MWIS link scheduling (docs/design.md, section 9): generator, CLI kind, loader.

Graphs are Erdos-Renyi G(|V|, p) with p = d / (|V| - 1), so that d is the expected mean degree. For
training graphs d is drawn uniformly in [min_degree, max_degree]; training vertex weights are not
stored, since the app draws them afresh for every sample (online training). The test graphs have
degrees spread evenly over the range (np.linspace(min_degree, max_degree, test_graphs)) and stored
vertex weights w ~ U(0, 1), `test_samples` per graph, so every run is evaluated on the same samples.

Storage: graphs are dense adjacency matrices (uint8, 1 = edge): 10 kB per graph of 100 vertices,
trivially validated (binary, symmetric, zero diagonal) and read back without index juggling; use
`ConflictGraph.edges()` for sender/receiver index arrays. Random streams: SeedSequence(seed) spawns
one stream per split, which spawns one per graph, so a file is a pure function of its config.

File layout (HDF5, schema "conflict-graphs" version 1; common attributes and checksum as described in
`datasets.storage`):

* `train/adjacency`  uint8   (train_graphs, V, V), one graph per chunk;
* `train/mean_degree` float64 (train_graphs,), the degree d each graph was drawn with;
* `test/adjacency`, `test/mean_degree` likewise for the test graphs;
* `test/weights`     float64 (test_graphs, test_samples, V), vertex weights in [0, 1).
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from datasets import cli, storage, streaming

GENERATOR = f"{__name__} 1.0"
SPLITS = ("train", "test")


def check_adjacency(rows: np.ndarray) -> str | None:
    """Content check: 0/1 entries, symmetric, no self-loops (rows of shape (..., V, V))."""
    if np.any(rows > 1):
        return "has entries other than 0 and 1"
    if np.any(np.diagonal(rows, axis1=-2, axis2=-1)):
        return "has self-loops (non-zero diagonal)"
    if not np.array_equal(rows, np.swapaxes(rows, -1, -2)):
        return "is not symmetric"
    return None


def check_unit_interval(rows: np.ndarray) -> str | None:
    """Content check: every value in [0, 1]."""
    if np.any((rows < 0) | (rows > 1)):
        return f"has values outside [0, 1] (min {np.min(rows):g}, max {np.max(rows):g})"
    return None


SCHEMA = storage.Schema(
    name="conflict-graphs",
    version=1,
    arrays=(
        storage.ArraySpec(
            "train/adjacency", ("train_graphs", "vertices", "vertices"), np.uint8, (check_adjacency,)
        ),
        storage.ArraySpec(
            "train/mean_degree",
            ("train_graphs",),
            np.float64,
            (storage.check_finite, storage.check_non_negative),
        ),
        storage.ArraySpec(
            "test/adjacency", ("test_graphs", "vertices", "vertices"), np.uint8, (check_adjacency,)
        ),
        storage.ArraySpec(
            "test/mean_degree",
            ("test_graphs",),
            np.float64,
            (storage.check_finite, storage.check_non_negative),
        ),
        storage.ArraySpec(
            "test/weights",
            ("test_graphs", "test_samples", "vertices"),
            np.float64,
            (storage.check_finite, check_unit_interval),
        ),
    ),
)


@dataclass(frozen=True)
class ConflictGraphsConfig:
    """Every generation parameter (docs/design.md, section 9); field names equal the CLI flags."""

    vertices: int = 100
    min_degree: float = 2.0
    max_degree: float = 25.0
    train_graphs: int = 500
    test_graphs: int = 50
    test_samples: int = 100
    seed: int = 0

    def __post_init__(self):
        cli.check_counts(self, ("vertices", "train_graphs", "test_graphs", "test_samples"))
        cli.check_numbers(self, ("min_degree", "max_degree"), minimum=0.0)
        cli.check_seed(self)
        if self.vertices < 2:
            raise ValueError(f"--vertices must be at least 2, got {self.vertices}")
        if not self.min_degree <= self.max_degree <= self.vertices - 1:
            raise ValueError(
                f"need --min-degree <= --max-degree <= --vertices - 1 = {self.vertices - 1}, got "
                f"{self.min_degree} and {self.max_degree}"
            )


def dims(config: ConflictGraphsConfig) -> dict[str, int]:
    """The size of every dimension of `SCHEMA` for `config` (file checks and size estimates)."""
    names = ("vertices", "train_graphs", "test_graphs", "test_samples")
    return {name: getattr(config, name) for name in names}


# Peak-memory model of `generate` (bytes; measured with tracemalloc, rounded up): drawing one graph
# holds 9 bytes per vertex pair (float64 uniforms, then boolean masks); each graph has a SeedSequence
# (about 450 bytes) and a degree; one graph's test weights are drawn at a time.
_BYTES_PER_PAIR = 9
_BYTES_PER_GRAPH = 600
_BASE_BYTES = 64 * 2**20  # h5py and the writer's buffers (the model is counted 10% high, too)


def estimate(config: ConflictGraphsConfig) -> cli.Estimate:
    """File size and peak memory of `generate`, which draws and writes one graph at a time."""
    v = config.vertices
    graphs = config.train_graphs + config.test_graphs
    peak = _BYTES_PER_PAIR * v * v + 8 * config.test_samples * v + _BYTES_PER_GRAPH * graphs
    return cli.Estimate(
        file_bytes=storage.estimate_file_bytes(
            SCHEMA, dims(config),
            {"train/mean_degree": config.train_graphs, "test/mean_degree": config.test_graphs},
        ),
        memory_bytes=int(1.1 * peak) + _BASE_BYTES,
        driver=("--vertices^2 (a dense graph)" if _BYTES_PER_PAIR * v * v >= _BYTES_PER_GRAPH * graphs
                else "--train-graphs + --test-graphs (the seeds and degrees of every graph)"),
    )


def generate(config: ConflictGraphsConfig, out: str | Path, quiet: bool = True) -> Path:
    """Write the dataset of `config` to `out` atomically (see the module docstring); returns the path."""
    out = Path(out)
    sizes = {"train": config.train_graphs, "test": config.test_graphs}
    # Per split: child 0 draws the training degrees, child 1 + g draws graph g (and its test weights).
    seeds = {
        split: split_seed.spawn(1 + sizes[split])
        for split, split_seed in zip(
            SPLITS, np.random.SeedSequence(config.seed).spawn(len(SPLITS)), strict=True
        )
    }
    degrees = {
        "train": np.random.default_rng(seeds["train"][0]).uniform(
            config.min_degree, config.max_degree, config.train_graphs
        ),
        "test": np.linspace(config.min_degree, config.max_degree, config.test_graphs),
    }
    v = config.vertices
    with (
        storage.write_dataset(out, SCHEMA, dataclasses.asdict(config), GENERATOR) as writer,
        cli.progress_bar(sum(sizes.values()), f"conflict-graphs -> {out.name}", quiet, unit="graph") as bar,
    ):
        for split in SPLITS:
            writer.create_array(f"{split}/adjacency", (sizes[split], v, v))
            writer.create_array(f"{split}/mean_degree", (sizes[split],), rows_per_chunk=sizes[split])
            writer.append(f"{split}/mean_degree", degrees[split])
            if split == "test":
                writer.create_array("test/weights", (sizes[split], config.test_samples, v))
            for degree, graph_seed in zip(degrees[split], seeds[split][1:], strict=True):
                graph_rng, weight_rng = (np.random.default_rng(s) for s in graph_seed.spawn(2))
                writer.append(f"{split}/adjacency", erdos_renyi_adjacency(v, degree, graph_rng)[None])
                if split == "test":
                    writer.append("test/weights", weight_rng.random((1, config.test_samples, v)))
                bar.update(1)
    return out


def erdos_renyi_adjacency(num_vertices: int, mean_degree: float, rng: np.random.Generator) -> np.ndarray:
    """Adjacency (uint8, symmetric, zero diagonal) of G(n, p) with p = mean_degree / (n - 1)."""
    probability = mean_degree / (num_vertices - 1)
    upper = np.triu(rng.random((num_vertices, num_vertices)) < probability, k=1)
    return (upper | upper.T).astype(np.uint8)


class ConflictGraph(NamedTuple):
    """One graph: `adjacency` (V, V) uint8, the `mean_degree` it was drawn with, and for test graphs the
    stored vertex `weights` (test_samples, V) (None for training graphs); `index` within its split."""

    index: int
    adjacency: np.ndarray
    mean_degree: float
    weights: np.ndarray | None

    def edges(self) -> tuple[np.ndarray, np.ndarray]:
        """(senders, receivers) int64 arrays with both directions of every edge, sorted by sender."""
        senders, receivers = np.nonzero(self.adjacency)
        return senders, receivers


class ConflictGraphDataset(storage.DatasetReader):
    """Streaming, validating reader of a conflict-graphs file.

    Opening checks the schema, arrays, dtypes and shapes (against the config too) and raises
    `storage.DatasetError` naming the file and the problem; each graph read is checked (binary,
    symmetric, no self-loops; weights finite in [0, 1]). `verify()` makes a full pass with checksum.
    """

    config_class = ConflictGraphsConfig

    def __init__(self, path: str | Path):
        super().__init__(path, SCHEMA)

    def expected_dims(self):
        return dims(self.parsed_config)

    @property
    def num_vertices(self) -> int:
        return self.dims["vertices"]

    @property
    def num_test_samples(self) -> int:
        return self.dims["test_samples"]

    def num_graphs(self, split: str = "train") -> int:
        """Number of graphs of `split` ("train" or "test")."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        return self.dims[f"{split}_graphs"]

    def graph(self, split: str, index: int) -> ConflictGraph:
        """Graph `index` of `split`, read from disk and checked (IndexError outside 0..num_graphs - 1)."""
        index = storage.check_item(index, self.num_graphs(split), f"{split} graph")
        weights = self.read("test/weights", index) if split == "test" else None
        return ConflictGraph(
            index,
            self.read(f"{split}/adjacency", index),
            float(self.read(f"{split}/mean_degree", index)),
            weights,
        )

    def graphs(
        self, split: str = "train", shuffle: bool = False, seed: int | None = None, epoch: int = 0
    ) -> Iterator[ConflictGraph]:
        """Every graph of `split` once, in file order or shuffled by (seed, epoch)."""
        for index in streaming.item_order(self.num_graphs(split), shuffle, seed, epoch):
            yield self.graph(split, int(index))

    def as_tf_dataset(self, split: str = "train", shuffle: bool = False, seed: int | None = None):
        """A `tf.data.Dataset` of dicts {"adjacency": (V, V) uint8, "mean_degree": () float64} plus, for
        the test split, "weights": (test_samples, V) float64. Keep the reader open while in use."""
        v = self.num_vertices
        signature = {"adjacency": ((v, v), np.uint8), "mean_degree": ((), np.float64)}
        if split == "test":
            signature["weights"] = ((self.num_test_samples, v), np.float64)

        def items(epoch: int):
            for graph in self.graphs(split, shuffle, seed, epoch):
                item = {"adjacency": graph.adjacency, "mean_degree": np.float64(graph.mean_degree)}
                if graph.weights is not None:
                    item["weights"] = graph.weights
                yield item

        return streaming.to_tf_dataset(items, signature)


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    d = ConflictGraphsConfig()
    parser.add_argument(
        "--vertices", type=cli.positive_int, default=d.vertices, help="vertices |V| per graph"
    )
    parser.add_argument(
        "--min-degree", type=cli.non_negative_float, default=d.min_degree, help="smallest mean degree"
    )
    parser.add_argument(
        "--max-degree", type=cli.non_negative_float, default=d.max_degree, help="largest mean degree"
    )
    parser.add_argument(
        "--train-graphs",
        type=cli.positive_int,
        default=d.train_graphs,
        help="training graphs, mean degree uniform in [--min-degree, --max-degree]",
    )
    parser.add_argument(
        "--test-graphs",
        type=cli.positive_int,
        default=d.test_graphs,
        help="test graphs, mean degrees evenly spread over [--min-degree, --max-degree]",
    )
    parser.add_argument(
        "--test-samples",
        type=cli.positive_int,
        default=d.test_samples,
        help="stored vertex-weight samples U(0, 1) per test graph",
    )


def _configure(args: argparse.Namespace) -> ConflictGraphsConfig:
    return ConflictGraphsConfig(
        **{f.name: getattr(args, f.name) for f in dataclasses.fields(ConflictGraphsConfig)}
    )


KIND = cli.DatasetKind(
    name="conflict-graphs",
    help="Erdos-Renyi conflict graphs with test vertex weights (MWIS link scheduling)",
    description=__doc__.split("\n\n")[0]
    + " Defaults: 100 vertices, mean degree in [2, 25], 500 training graphs, 50 test graphs with 100 "
    "weight samples each.",
    add_arguments=_add_arguments,
    configure=_configure,
    generate=generate,
    estimate=estimate,
    reader=ConflictGraphDataset,
)
