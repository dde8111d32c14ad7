"""Sizes that cannot fit: `datasets.resources` (available memory, disk space) and the kinds' estimates.

Each kind estimates the file size and peak memory of its generator from its config; the estimates are
checked against tracemalloc's measured peak and the real file size on small datasets, so they stay
upper bounds without refusing sizes that fit.
"""

import collections
import tracemalloc

import networkx  # noqa: F401  (imported before tracemalloc starts: its import is not the generator's)
import numpy as np
import pytest

from datasets import cli, resources, storage
from datasets import conflict_graphs as cg
from datasets import node_regression as nr
from datasets import power_allocation as pa
from datasets.__main__ import main

GB = 10**9
KINDS = {"node-regression": nr, "power-allocation": pa, "conflict-graphs": cg}


# ---------------------------------------------------------------------------- resources
def test_check_fits_refuses_above_80_percent_of_the_available_memory():
    resources.check_fits(8 * GB, "generating this dataset", available=10 * GB)
    with pytest.raises(ValueError) as info:
        resources.check_fits(int(8.1 * GB), "generating this dataset", available=10 * GB, hint="it grows with --n")
    assert str(info.value) == (
        "generating this dataset needs about 8.1 GB of memory, more than 80% of the 10 GB available; "
        "it grows with --n"
    )


def test_available_memory_from_meminfo_then_sysconf(tmp_path, monkeypatch):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       24684092 kB\nMemFree:  100 kB\nMemAvailable:    2000000 kB\n")
    monkeypatch.setattr(resources, "_MEMINFO", str(meminfo))
    monkeypatch.setattr(resources, "_CGROUP_ROOT", tmp_path / "no-cgroup")
    assert resources.available_memory_bytes() == 2000000 * 1024
    monkeypatch.setattr(resources, "_MEMINFO", str(tmp_path / "missing"))  # not Linux
    assert resources.available_memory_bytes() == resources._sysconf_available() > 0


@pytest.mark.parametrize(
    ("files", "headroom"),
    [
        ({"memory.max": "2000000000\n", "memory.current": "1500000000\n",
          "memory.stat": "anon 1\ninactive_file 500000000\nactive_file 3\n"}, 1_000_000_000),
        ({"memory.max": "max\n", "memory.current": "1\n"}, None),
        ({"memory/memory.limit_in_bytes": "3000000000\n", "memory/memory.usage_in_bytes": "1000000000\n",
          "memory/memory.stat": "total_inactive_file 250000000\n"}, 2_250_000_000),
        ({"memory/memory.limit_in_bytes": "9223372036854771712\n"}, None),  # v1 without a limit
    ],
)
def test_the_cgroup_limit_caps_the_available_memory(tmp_path, monkeypatch, files, headroom):
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text(text)
    monkeypatch.setattr(resources, "_CGROUP_ROOT", tmp_path)
    monkeypatch.setattr(resources, "_meminfo_available", lambda: 8 * GB)
    assert resources._cgroup_headroom() == headroom
    assert resources.available_memory_bytes() == (8 * GB if headroom is None else headroom)


def test_disk_space_check(tmp_path, monkeypatch):
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(resources.shutil, "disk_usage", lambda path: usage(10 * GB, 9 * GB, GB))
    resources.check_disk_space(tmp_path, 800 * 10**6, "the file x.h5")  # 800 MB + 5% + 64 MiB < 1 GB
    with pytest.raises(ValueError, match=f"the file x.h5 needs about 1.01 GB of disk space in {tmp_path} "
                       r"\(file and margin\), only 1 GB is free"):
        resources.check_disk_space(tmp_path, 900 * 10**6, "the file x.h5")


def test_format_bytes():
    assert [resources.format_bytes(n) for n in (0, 999, 999.6, 12_345_678, 3.6e12, 2.5e18)] == [
        "0 B", "999 B", "1 kB", "12.3 MB", "3.6 TB", "2.5e+03 PB"]


# ---------------------------------------------------------------------------- refusals by the CLI
@pytest.mark.parametrize(
    ("argv", "driver"),
    [
        (["power-allocation", "--pairs", "100000"], "--pairs^2 x --batch-size"),
        (["node-regression", "--nodes", "1000000", "--train-samples", "100"], "--nodes^2"),
        (["conflict-graphs", "--vertices", "100000", "--max-degree", "5"], "--vertices^2"),
    ],
)
def test_sizes_that_cannot_fit_in_memory_are_refused(tmp_path, capsys, monkeypatch, argv, driver):
    monkeypatch.setattr(resources, "available_memory_bytes", lambda: 16 * GB)
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--out", str(tmp_path / "new" / "x.h5")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"python -m datasets {argv[0]}: error: generating this "
                                                   "dataset needs about ")
    assert "B of memory, more than 80% of the 16 GB available; it grows with " in err and driver in err
    assert list(tmp_path.iterdir()) == []


def test_every_kind_estimates_its_needs():
    assert set(cli.discover_kinds()) == set(KINDS)
    assert all(kind.estimate is not None for kind in cli.discover_kinds().values())


@pytest.mark.parametrize("kind", KINDS)
def test_the_default_sizes_fit_a_small_machine(kind):
    estimate = KINDS[kind].KIND.estimate(KINDS[kind].KIND.configure(_default_args(kind)))
    resources.check_fits(estimate.memory_bytes, kind, available=2 * GB)
    assert estimate.memory_bytes < 200 * 10**6


def test_a_million_node_graph_is_accepted_where_it_fits():
    """Node regression stores and shifts the graph densely (9 bytes per node pair, docs/design.md,
    section 6), so a 10^6-node graph needs about 10 TB: accepted on a machine that has it."""
    config = nr.NodeRegressionConfig(nodes=10**6, train_samples=100, test_samples=20)
    estimate = nr.estimate(config)
    assert 9e12 <= estimate.memory_bytes <= 1.2 * 9e12  # the model, not a guess a factor off
    resources.check_fits(estimate.memory_bytes, "generating", available=int(estimate.memory_bytes / 0.79))
    with pytest.raises(ValueError):
        resources.check_fits(estimate.memory_bytes, "generating", available=int(estimate.memory_bytes / 0.81))


def _default_args(kind):
    parser = cli.build_parser(cli.discover_kinds())
    return parser.parse_args([kind])


# ---------------------------------------------------------------------------- estimates against measurements
ESTIMATED = [
    (nr, nr.NodeRegressionConfig(nodes=600, train_samples=20, test_samples=5)),
    (nr, nr.NodeRegressionConfig(nodes=60, train_samples=400, test_samples=40, features="binary",
                                 teacher_hidden=(16, 8), teacher_activation="tanh", input_dim=4)),
    (nr, nr.NodeRegressionConfig(nodes=400, train_samples=5, test_samples=5, shift="laplacian", graph="er",
                                 graph_p=0.2, teacher_activation="tanh")),
    (pa, pa.PowerAllocationConfig(pairs=300, layouts=2, batches_per_layout=2, test_batches=1, batch_size=16,
                                  pathloss="uma-nlos", tx_height=25.0)),
    (pa, pa.PowerAllocationConfig(pairs=10, layouts=2, batches_per_layout=40, test_batches=3, batch_size=16,
                                  shadowing_per="sample", fading="rician")),
    (cg, cg.ConflictGraphsConfig(vertices=600, max_degree=20, train_graphs=3, test_graphs=2, test_samples=50)),
]


@pytest.mark.parametrize(("module", "config"), ESTIMATED, ids=lambda v: getattr(v, "__name__", ""))
def test_estimates_bound_the_measured_peak_and_file_size(tmp_path, module, config):
    estimate = module.estimate(config)
    out = tmp_path / "x.h5"
    tracemalloc.start()
    try:
        module.generate(config, out)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    model = estimate.memory_bytes - module._BASE_BYTES
    assert peak <= model <= 1.6 * peak + 2 * 10**6
    size = out.stat().st_size
    assert size <= estimate.file_bytes <= 1.05 * size + 200_000


def test_dense_shift_in_place_is_bit_for_bit_the_textbook_formula():
    rng = np.random.default_rng(0)
    for n in (1, 2, 7, 30):
        upper = np.triu(rng.random((n, n)) < 0.3, 1)
        adjacency = (upper | upper.T).astype(np.uint8)
        a = adjacency.astype(np.float64)
        deg = a.sum(axis=1)
        inv_sqrt = np.where(deg > 0, 1.0 / np.sqrt(np.maximum(deg, 1.0)), 0.0)
        norm = inv_sqrt[:, None] * a * inv_sqrt[None, :]
        textbook = {"adjacency": a, "laplacian": np.diag(deg) - a, "normalized_adjacency": norm,
                    "normalized_laplacian": np.eye(n) - norm}
        for kind, expected in textbook.items():
            shift = nr.dense_shift(adjacency, kind)
            assert shift.dtype == np.float64 and shift.tobytes() == expected.tobytes(), (kind, n)  # signs of 0 too


def test_file_size_estimate_counts_whole_chunks():
    schema = storage.Schema("toy", 1, (storage.ArraySpec("x", ("rows", "width"), np.float64),))
    def size(rows):
        return storage.estimate_file_bytes(schema, {"rows": rows, "width": 100}, rows_per_chunk=256)

    assert size(257) == size(512) == size(256) + 256 * 800 + 128  # the second chunk is stored whole
