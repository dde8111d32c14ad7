"""Fixtures for the dataset tests: tiny configurations and files generated once per session."""

import pytest

from datasets import conflict_graphs, power_allocation


@pytest.fixture(scope="session")
def tiny_power_config():
    return power_allocation.PowerAllocationConfig(
        pairs=4, layouts=3, batches_per_layout=2, test_batches=3, batch_size=5, seed=11
    )


@pytest.fixture(scope="session")
def tiny_graph_config():
    return conflict_graphs.ConflictGraphsConfig(
        vertices=12, min_degree=1.0, max_degree=6.0, train_graphs=7, test_graphs=4, test_samples=3
    )


@pytest.fixture(scope="session")
def power_file(tmp_path_factory, tiny_power_config):
    """A tiny power-allocation file with the paper's radio settings (read-only: copy before editing)."""
    return power_allocation.generate(tiny_power_config, tmp_path_factory.mktemp("power") / "power.h5")


@pytest.fixture(scope="session")
def graph_file(tmp_path_factory, tiny_graph_config):
    """A tiny conflict-graphs file (read-only: copy before editing)."""
    return conflict_graphs.generate(tiny_graph_config, tmp_path_factory.mktemp("graphs") / "graphs.h5")
