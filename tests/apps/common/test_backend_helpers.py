"""apps/common/backend.py in one process: the shared checks of --backend, the threads per rank, on_root and the
local backend (the MPI paths run under mpiexec in tests/core/distributed/)."""

import argparse

import pytest

from apps.common import backend as B
from apps.common.main import World


def args(**kw):
    return argparse.Namespace(**{"backend": "mpi", "partition": "metis", "jobs": 3, "quiet": True, **kw})


class TwoRanks(World):
    size, rank, is_root = 2, 1, False


def test_backend_flags_refused_and_jobs_set_to_one():
    with pytest.raises(ValueError, match="started by mpiexec on 2 ranks with --backend local"):
        B.check_backend_flags(args(backend="local"), [], TwoRanks())
    with pytest.raises(ValueError, match="--jobs: the MPI backend trains one approach at a time"):
        B.check_backend_flags(args(), ["--jobs=3"], World())
    a = args()
    B.check_backend_flags(a, [], World())  # a default --jobs (one per core) is not a request
    assert a.jobs == 1
    a = args(backend="local")
    B.check_backend_flags(a, ["--jobs", "3"], World())
    assert a.jobs == 3


def test_more_ranks_than_nodes_refused_and_one_process_said(capsys, monkeypatch):
    with pytest.raises(ValueError, match="2 ranks for 1 pair; every rank must own at least one node"):
        B.check_ranks(args(), TwoRanks(), 1, "prog", "1 pair")
    for name in ("OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_RANK"):
        monkeypatch.delenv(name, raising=False)
    B.check_ranks(args(quiet=False), World(), 4, "prog", "4 pairs")
    assert "prog: note: --backend mpi without mpiexec runs with P = 1" in capsys.readouterr().err
    B.check_ranks(args(backend="local", quiet=False), TwoRanks(), 1, "prog", "1 pair")  # nothing to check


def test_threads_per_rank_share_the_cores(monkeypatch):
    monkeypatch.setattr(B.os, "cpu_count", lambda: 8)
    monkeypatch.setenv("OMPI_COMM_WORLD_LOCAL_SIZE", "3")
    assert B.threads_per_rank() == 2
    monkeypatch.setenv("OMPI_COMM_WORLD_LOCAL_SIZE", "16")
    assert B.threads_per_rank() == 1
    monkeypatch.delenv("OMPI_COMM_WORLD_LOCAL_SIZE")
    monkeypatch.delenv("MPI_LOCALNRANKS", raising=False)
    assert B.threads_per_rank() == 8


def test_on_root_in_one_process_and_the_local_backend():
    assert B.on_root(World(), lambda: 5) == 5
    with pytest.raises(ValueError, match="bad"):
        B.on_root(World(), lambda: (_ for _ in ()).throw(ValueError("bad")))
    called = []
    backend, info = B.make_backend(args(), World(), 4, lambda: called.append(1))
    assert not backend.distributed and backend.num_owned == 4 and not called  # sources only under mpiexec
    assert info == {"backend": "mpi", "ranks": 1, "partition": "metis", "edge_cut": 0}
    assert B.make_backend(args(backend="local"), World(), 4, list)[1] == {"backend": "local", "ranks": 1}
