"""Synthetic node-regression data (docs/design.md, section 6; paper Section IV-A): generator, CLI kind, loader.

One graph, fixed for the whole data set: Barabasi-Albert (|V| = 100, m = 2, networkx seed 3) or
Erdos-Renyi G(|V|, p). Node features X (|V| x g_0) per sample:

* ``mix`` (g_0 >= 6, the paper's 10): columns U(0, 1); N(0, 1); integer uniform in {0..5};
  Bernoulli(0.25); Bernoulli(0.75); one-hot of depth g_0 - 5 of an integer uniform in {0..g_0 - 6};
* ``uniform`` U(0, 1), ``normal`` N(0, 1), ``discrete`` {0..5}, ``binary`` Bernoulli(0.5), ``one-hot``
  (depth g_0), in every column.

Labels y = Phi(X) + n: Phi is a teacher GCNN (eq. 9, no bias) g_0 -> hidden... -> 1 with entries of
Theta0 ~ teacher_scale * U(0, 1) and Theta1 ~ teacher_neighbour_scale * U(0, 1), on the shift S of
the graph (normalized Laplacian I - D^-1/2 A D^-1/2 by default); n ~ N(0, noise_variance) per node.

Random streams: SeedSequence(seed) spawns (teacher, train, test); each split draws its features, then
its noise. The graph has its own networkx seed. So a file is a pure function of its config, and
:func:`generate_arrays` gives the same arrays in memory (what ``python -m apps.node_regression`` uses
without ``--data``).

This module is NumPy-only (the layering of docs/design.md, section 1 keeps ``core`` out of ``datasets``): the
teacher's forward pass is written densely here, and a test checks it against ``core.gcnn``.

File layout (HDF5, schema "node-regression" version 1; common attributes and checksum as described
in ``datasets.storage``):

* ``graph/adjacency`` uint8 (nodes, nodes), 1 = edge;
* ``train/x`` float64 (train_samples, nodes, input_dim), ``train/y`` float64 (train_samples, nodes, 1);
* ``test/x``, ``test/y`` likewise;
* ``teacher/theta`` float64 (teacher_params,): [Theta0^1, Theta1^1, Theta0^2, ...] flattened row-major.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from datasets import cli, storage

GENERATOR = f"{__name__} 1.0"
GRAPH_MODELS = ("ba", "er")
FEATURES = ("mix", "uniform", "normal", "discrete", "binary", "one-hot")
SHIFTS = ("normalized_laplacian", "laplacian", "normalized_adjacency", "adjacency")
ACTIVATIONS = ("sigmoid", "relu", "leaky_relu", "tanh", "identity")
SPLITS = ("train", "test")

def _check_binary(rows: np.ndarray) -> str | None:
    """Content check: adjacency entries are 0 or 1."""
    return "has entries other than 0 and 1" if np.any(rows > 1) else None


SCHEMA = storage.Schema(
    name="node-regression",
    version=1,
    arrays=(
        storage.ArraySpec("graph/adjacency", ("nodes", "nodes"), np.uint8, (_check_binary,)),
        storage.ArraySpec("train/x", ("train_samples", "nodes", "input_dim"), np.float64),
        storage.ArraySpec("train/y", ("train_samples", "nodes", "output_dim"), np.float64),
        storage.ArraySpec("test/x", ("test_samples", "nodes", "input_dim"), np.float64),
        storage.ArraySpec("test/y", ("test_samples", "nodes", "output_dim"), np.float64),
        storage.ArraySpec("teacher/theta", ("teacher_params",), np.float64),
    ),
)


@dataclass(frozen=True)
class NodeRegressionConfig:
    """Every generation parameter; field names equal the CLI flags (``graph_m`` is ``--graph-m``)."""

    nodes: int = 100
    graph: str = "ba"
    graph_m: int = 2
    graph_p: float = 0.05
    graph_seed: int = 3
    shift: str = "normalized_laplacian"
    features: str = "mix"
    input_dim: int = 10
    teacher_hidden: tuple = (10,)
    teacher_activation: str = "sigmoid"
    teacher_scale: float = 1.0
    teacher_neighbour_scale: float = 2.0
    noise_variance: float = 0.01
    train_samples: int = 1000
    test_samples: int = 20
    seed: int = 0

    def __post_init__(self):
        object.__setattr__(self, "teacher_hidden", tuple(self.teacher_hidden))
        cli.check_counts(self, ("nodes", "input_dim", "train_samples", "test_samples", "graph_m"))
        cli.check_choice(self, "graph", GRAPH_MODELS)
        cli.check_choice(self, "shift", SHIFTS)
        cli.check_choice(self, "features", FEATURES)
        cli.check_choice(self, "teacher_activation", ACTIVATIONS)
        cli.check_numbers(self, ("teacher_scale", "teacher_neighbour_scale", "noise_variance"), minimum=0.0)
        cli.check_numbers(self, ("graph_p",), minimum=0.0)
        cli.check_seed(self)
        if not isinstance(self.graph_seed, int) or self.graph_seed < 0:
            raise ValueError(f"--graph-seed must be a non-negative integer, got {self.graph_seed!r}")
        if not self.teacher_hidden or any(not isinstance(h, int) or h < 1 for h in self.teacher_hidden):
            raise ValueError(f"--teacher-hidden must list positive layer widths, got {self.teacher_hidden!r}")
        if self.graph == "ba" and not self.graph_m < self.nodes:
            raise ValueError(f"--graph-m must be smaller than --nodes ({self.nodes}), got {self.graph_m}")
        if self.graph_p > 1:
            raise ValueError(f"--graph-p must be a probability in [0, 1], got {self.graph_p}")
        if self.features == "mix" and self.input_dim < 6:
            raise ValueError(f"--features mix needs --input-dim >= 6 (5 columns + one-hot), got {self.input_dim}")

    @property
    def teacher_widths(self) -> tuple[int, ...]:
        return (self.input_dim, *self.teacher_hidden, 1)

    @classmethod
    def from_dict(cls, values: dict) -> NodeRegressionConfig:
        """The config of a dict that may hold other keys too (e.g. app flags); missing keys take their
        defaults. (A file's stored config must have every key: see `NodeRegressionDataset`.)"""
        return cls(**{f.name: values[f.name] for f in dataclasses.fields(cls) if f.name in values})


def dims(config: NodeRegressionConfig) -> dict[str, int]:
    """The size of every dimension of `SCHEMA` for `config` (file checks and size estimates)."""
    widths = config.teacher_widths
    return {
        "nodes": config.nodes,
        "input_dim": config.input_dim,
        "output_dim": 1,
        "train_samples": config.train_samples,
        "test_samples": config.test_samples,
        "teacher_params": sum(2 * g_in * g_out for g_in, g_out in zip(widths[:-1], widths[1:])),
    }


class NodeRegressionData(NamedTuple):
    """The arrays of a data set (sample-major) and the config they were generated with."""

    adjacency: np.ndarray  # (nodes, nodes) uint8
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    teacher_theta: np.ndarray
    config: NodeRegressionConfig


# ---------------------------------------------------------------------------- generation
def graph_adjacency(config: NodeRegressionConfig) -> np.ndarray:
    """The (nodes, nodes) 0/1 adjacency of the data set's graph (networkx generators, own seed)."""
    import networkx as nx

    if config.graph == "ba":
        g = nx.barabasi_albert_graph(config.nodes, config.graph_m, seed=config.graph_seed)
    else:
        g = nx.gnp_random_graph(config.nodes, config.graph_p, seed=config.graph_seed)
    return nx.to_numpy_array(g, nodelist=range(config.nodes), dtype=np.uint8, weight=None)


def dense_shift(adjacency: np.ndarray, kind: str) -> np.ndarray:
    """Dense S of a 0/1 adjacency: A, L = D - A, D^-1/2 A D^-1/2, or I - D^-1/2 A D^-1/2 (D^-1/2 := 0
    at an isolated node), as in docs/design.md, section 2."""
    # One float64 (nodes, nodes) array is built in place: these matrices bound the size of graph the
    # generator can handle. The operations are those of the textbook formulas (e.g. 0.0 - x, not -x,
    # off the diagonal of I - N), so the values are bit for bit the same.
    if kind == "adjacency":
        return adjacency.astype(np.float64)
    deg = adjacency.sum(axis=1, dtype=np.float64)
    if kind == "laplacian":
        shift = np.subtract(0.0, adjacency, dtype=np.float64)  # diag(deg) - A
        np.fill_diagonal(shift, deg - np.diagonal(adjacency))
        return shift
    inv_sqrt = np.where(deg > 0, 1.0 / np.sqrt(np.maximum(deg, 1.0)), 0.0)
    norm = np.multiply(inv_sqrt[:, None], adjacency, dtype=np.float64)
    norm *= inv_sqrt[None, :]
    if kind == "normalized_adjacency":
        return norm
    diagonal = 1.0 - np.diagonal(norm)  # I - norm
    np.subtract(0.0, norm, out=norm)
    np.fill_diagonal(norm, diagonal)
    return norm


def node_features(kind: str, num_samples: int, nodes: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    """Features (num_samples, nodes, dim) of the given kind (see the module docstring)."""
    shape = (num_samples, nodes)
    if kind == "mix":
        columns = [
            rng.uniform(0.0, 1.0, shape),
            rng.normal(0.0, 1.0, shape),
            rng.integers(0, 6, shape).astype(np.float64),
            rng.binomial(1, 0.25, shape).astype(np.float64),
            rng.binomial(1, 0.75, shape).astype(np.float64),
        ]
        depth = dim - 5
        one_hot = np.eye(depth)[rng.integers(0, depth, shape)]
        return np.concatenate([np.stack(columns, axis=-1), one_hot], axis=-1)
    shape = (*shape, dim)
    if kind == "uniform":
        return rng.uniform(0.0, 1.0, shape)
    if kind == "normal":
        return rng.normal(0.0, 1.0, shape)
    if kind == "discrete":
        return rng.integers(0, 6, shape).astype(np.float64)
    if kind == "binary":
        return rng.binomial(1, 0.5, shape).astype(np.float64)
    return np.eye(dim)[rng.integers(0, dim, shape[:2])]  # one-hot


def _activation(name: str, h: np.ndarray) -> np.ndarray:
    if name == "sigmoid":
        return 1.0 / (1.0 + np.exp(-h))
    if name == "relu":
        return np.maximum(h, 0.0)
    if name == "leaky_relu":
        return np.where(h > 0, h, 0.2 * h)
    if name == "tanh":
        return np.tanh(h)
    return h


def teacher_parameters(config: NodeRegressionConfig, rng: np.random.Generator) -> list[np.ndarray]:
    """[Theta0^1, Theta1^1, Theta0^2, ...], Theta0 ~ teacher_scale U(0,1), Theta1 ~ neighbour_scale U(0,1)."""
    params = []
    widths = config.teacher_widths
    for g_in, g_out in zip(widths[:-1], widths[1:]):
        params.append(config.teacher_scale * rng.uniform(0.0, 1.0, (g_in, g_out)))
        params.append(config.teacher_neighbour_scale * rng.uniform(0.0, 1.0, (g_in, g_out)))
    return params


DENSE_TEACHER_MAX_NODES = 1000
"""Up to this many nodes the teacher's S X is a dense einsum (the data of these sizes, the paper's included,
bit for bit what earlier versions generated); above, a sparse product: the dense one costs samples x |V|^2 x g
(measured: 78 s at 3 000 nodes, 15 minutes at 10 000, against seconds sparse)."""


def teacher_forward(params: list[np.ndarray], x: np.ndarray, shift: np.ndarray, activation: str) -> np.ndarray:
    """Phi(X) of eq. (9) for every sample: X^l = sigma(X^{l-1} Theta0^l + S X^{l-1} Theta1^l)."""
    n = shift.shape[0]
    sparse_shift = None
    if n > DENSE_TEACHER_MAX_NODES:
        from scipy import sparse

        sparse_shift = sparse.csr_matrix(shift)
    for theta0, theta1 in zip(params[0::2], params[1::2]):
        if sparse_shift is None:
            aggregate = np.einsum("ij,njg->nig", shift, x)
        else:  # (|V|, N g): one sparse product for every sample and feature
            samples, _, width = x.shape
            flat = np.ascontiguousarray(x.transpose(1, 0, 2)).reshape(n, samples * width)
            aggregate = (sparse_shift @ flat).reshape(n, samples, width).transpose(1, 0, 2)
        x = _activation(activation, x @ theta0 + aggregate @ theta1)
    return x


def generate_arrays(config: NodeRegressionConfig) -> NodeRegressionData:
    """All arrays of the data set of ``config`` in memory (identical to what :func:`generate` writes)."""
    adjacency = graph_adjacency(config)
    shift = dense_shift(adjacency, config.shift)
    teacher_rng, *split_rngs = (np.random.default_rng(s) for s in np.random.SeedSequence(config.seed).spawn(3))
    params = teacher_parameters(config, teacher_rng)
    arrays = {}
    for split, rng, size in zip(SPLITS, split_rngs, (config.train_samples, config.test_samples)):
        x = node_features(config.features, size, config.nodes, config.input_dim, rng)
        noise = rng.normal(0.0, np.sqrt(config.noise_variance), (size, config.nodes, 1))
        arrays[split] = (x, teacher_forward(params, x, shift, config.teacher_activation) + noise)
    theta = np.concatenate([p.ravel() for p in params])
    return NodeRegressionData(adjacency, *arrays["train"], *arrays["test"], theta, config)


# Peak-memory model of `generate` (bytes), counted from the code above and checked with tracemalloc:
# networkx's graph and the edge lists of `to_numpy_array` cost about 350 bytes per edge and 250 per
# node (measured, rounded up); then the uint8 adjacency and the float64 shift (9 bytes per node pair)
# stay for the whole run, with the training arrays and the temporaries of the split being generated.
_NX_BYTES_PER_EDGE = 500
_NX_BYTES_PER_NODE = 300
_BASE_BYTES = 64 * 2**20  # h5py and the writer's buffers (the model is counted 10% high, too)


def estimate(config: NodeRegressionConfig) -> cli.Estimate:
    """File size and peak memory of :func:`generate` (everything is generated in memory, then written)."""
    n, g = config.nodes, config.input_dim
    square = n * n
    edges = config.graph_m * n if config.graph == "ba" else config.graph_p * n * (n - 1) / 2
    graph_phase = square + _NX_BYTES_PER_EDGE * edges + _NX_BYTES_PER_NODE * n
    # Per layer, in float64 per (sample, node): its input if it is a hidden layer (the features are
    # counted apart), the aggregate S X (g_in), and three arrays of width g_out at a time (X Theta0,
    # (S X) Theta1 and their sum; then the temporaries of the activation).
    widths = config.teacher_widths
    layer = 0
    for index, (g_in, g_out) in enumerate(zip(widths[:-1], widths[1:])):
        layer = max(layer, (g_in if index > 0 else 0) + g_in + 3 * g_out)

    def split(samples: int) -> int:
        features = 2 * g + 5  # "mix": five columns, their stack, the one-hot and the result
        forward = g + layer + 3  # the features, a layer, and the noise, the output and y
        return 8 * samples * n * max(features, forward)  # in float64 per (sample, node)

    kept_train = 8 * config.train_samples * n * (g + 1)
    data_phase = 9 * square + max(split(config.train_samples), kept_train + split(config.test_samples))
    return cli.Estimate(
        file_bytes=storage.estimate_file_bytes(SCHEMA, dims(config), rows_per_chunk=256),
        memory_bytes=int(1.1 * max(graph_phase, data_phase)) + _BASE_BYTES,
        driver="--nodes^2 (dense graph matrices) and --nodes x --input-dim x --train-samples",
    )


def generate(config: NodeRegressionConfig, out: str | Path, quiet: bool = True) -> Path:
    """Write the data set of ``config`` to ``out`` atomically; returns the path."""
    out = Path(out)
    data = generate_arrays(config)
    named = {
        "graph/adjacency": data.adjacency, "train/x": data.x_train, "train/y": data.y_train,
        "test/x": data.x_test, "test/y": data.y_test, "teacher/theta": data.teacher_theta,
    }
    config_dict = dataclasses.asdict(config)
    config_dict["teacher_hidden"] = list(config.teacher_hidden)
    with (
        storage.write_dataset(out, SCHEMA, config_dict, GENERATOR) as writer,
        cli.progress_bar(len(named), f"node-regression -> {out.name}", quiet, unit="array") as bar,
    ):
        for name, array in named.items():
            writer.create_array(name, array.shape, rows_per_chunk=max(1, min(len(array), 256)))
            writer.append(name, array)
            bar.update(1)
    return out


# ---------------------------------------------------------------------------- loading
class NodeRegressionDataset(storage.DatasetReader):
    """Validating reader of a node-regression file; :meth:`load` returns every array (they are small).

    Opening checks schema, arrays, dtypes and shapes against the stored config and raises
    ``storage.DatasetError`` naming the file and the problem; values are checked to be finite and the
    adjacency to be a 0/1 symmetric matrix without self-loops.
    """

    config_class = NodeRegressionConfig

    def __init__(self, path: str | Path):
        super().__init__(path, SCHEMA)

    def expected_dims(self):
        return dims(self.parsed_config)

    def verify(self) -> None:
        """The full pass of :meth:`storage.DatasetReader.verify`, and the graph's check of :meth:`load`."""
        super().verify()
        self._adjacency()

    def _adjacency(self) -> np.ndarray:
        adjacency = self.read("graph/adjacency", slice(None))
        if np.any(np.diag(adjacency)) or not np.array_equal(adjacency, adjacency.T):
            raise storage.DatasetError(f"{self.path}: graph/adjacency is not a 0/1 symmetric matrix without "
                                       "self-loops")
        return adjacency

    def load(self) -> NodeRegressionData:
        adjacency = self._adjacency()
        arrays = [self.read(f"{split}/{v}", slice(None)) for split in SPLITS for v in ("x", "y")]
        theta = self.read("teacher/theta", slice(None))
        return NodeRegressionData(adjacency, *arrays, theta, self.parsed_config)


def load(path: str | Path) -> tuple[NodeRegressionData, str]:
    """The data of a node-regression file and its checksum (raises ``storage.DatasetError``)."""
    with NodeRegressionDataset(path) as reader:
        return reader.load(), reader.checksum


# ---------------------------------------------------------------------------- command line
def int_list(text: str) -> tuple[int, ...]:
    """argparse type: comma-separated positive integers ("10" or "16,8")."""
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"must be positive integers, got {text!r}")
    return values


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The generation flags (all but --seed); shared with ``python -m apps.node_regression``."""
    d = NodeRegressionConfig()
    parser.add_argument("--nodes", type=cli.positive_int, default=d.nodes, help="number of nodes |V|")
    parser.add_argument("--graph", choices=GRAPH_MODELS, default=d.graph,
                        help="graph model: Barabasi-Albert (ba) or Erdos-Renyi (er)")
    parser.add_argument("--graph-m", type=cli.positive_int, default=d.graph_m,
                        help="edges attached per new node of the Barabasi-Albert model")
    parser.add_argument("--graph-p", type=cli.non_negative_float, default=d.graph_p,
                        help="edge probability of the Erdos-Renyi model")
    parser.add_argument("--graph-seed", type=cli.non_negative_int, default=d.graph_seed,
                        help="networkx seed of the graph")
    parser.add_argument("--shift", choices=SHIFTS, default=d.shift, help="graph shift operator S of the GCNNs")
    parser.add_argument("--features", choices=FEATURES, default=d.features, help="node feature distribution")
    parser.add_argument("--input-dim", type=cli.positive_int, default=d.input_dim, help="features per node g_0")
    parser.add_argument("--teacher-hidden", type=int_list, default=",".join(map(str, d.teacher_hidden)),
                        help="hidden widths of the teacher GCNN, comma-separated (its output width is 1)")
    parser.add_argument("--teacher-activation", choices=ACTIVATIONS, default=d.teacher_activation,
                        help="activation after every teacher layer")
    parser.add_argument("--teacher-scale", type=cli.non_negative_float, default=d.teacher_scale,
                        help="teacher Theta0 entries ~ this * U(0, 1)")
    parser.add_argument("--teacher-neighbour-scale", type=cli.non_negative_float,
                        default=d.teacher_neighbour_scale, help="teacher Theta1 entries ~ this * U(0, 1)")
    parser.add_argument("--noise-variance", type=cli.non_negative_float, default=d.noise_variance,
                        help="variance of the Gaussian label noise per node")
    parser.add_argument("--train-samples", type=cli.positive_int, default=d.train_samples,
                        help="training samples")
    parser.add_argument("--test-samples", type=cli.positive_int, default=d.test_samples, help="test samples")


def _configure(args: argparse.Namespace) -> NodeRegressionConfig:
    return NodeRegressionConfig.from_dict(vars(args))


KIND = cli.DatasetKind(
    name="node-regression",
    help="synthetic node regression on one graph with a teacher GCNN (paper Section IV-A)",
    description=__doc__.split("\n\n")[0]
    + " Defaults: the paper's settings (BA graph of 100 nodes, m = 2, seed 3; mix features g_0 = 10; "
    "teacher 10 -> 10 -> 1 sigmoid; noise variance 0.01; 1000 training and 20 test samples).",
    add_arguments=add_arguments,
    configure=_configure,
    generate=generate,
    estimate=estimate,
    reader=NodeRegressionDataset,
)
