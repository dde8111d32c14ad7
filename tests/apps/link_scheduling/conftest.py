"""Fixtures shared by the App C tests."""

import numpy as np
import pytest


@pytest.fixture(scope="session")
def er_adjacency():
    """``er_adjacency(rng, num_vertices, prob)``: a symmetric Erdos-Renyi adjacency without self-loops."""

    def draw(rng, num_vertices, prob):
        upper = np.triu(rng.random((num_vertices, num_vertices)) < prob, 1)
        return upper | upper.T

    return draw
