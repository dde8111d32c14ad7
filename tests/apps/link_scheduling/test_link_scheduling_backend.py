"""`python -m apps.link_scheduling --backend ...` without mpiexec: ``--backend mpi`` runs with P = 1, says so and
gives the numbers of ``--backend local``; what MPI cannot run is refused up front (one line, status 2, nothing
written). Runs under real ``mpiexec`` are tests/core/distributed/link_scheduling_cases.py's."""

import json

import pytest

from apps.link_scheduling import experiment
from core.runs import read_csv
from datasets.conflict_graphs import ConflictGraphsConfig, generate

TINY = ConflictGraphsConfig(vertices=10, min_degree=1.0, max_degree=4.0, train_graphs=3, test_graphs=2,
                            test_samples=3, seed=5)
RUN = ["--batch-size", "4", "--mini-batches", "2", "--optimizer", "d-sgd", "-q"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return generate(TINY, tmp_path_factory.mktemp("data") / "tiny.h5")


def run(args, capsys):
    try:
        status = experiment.main([str(a) for a in args])
    except SystemExit as exc:  # argparse's errors exit from inside the parser
        status = exc.code
    return status, capsys.readouterr().err


def test_mpi_backend_without_mpiexec_runs_on_one_rank_like_local(data, tmp_path, capsys):
    status, err = run(["--data", data, *RUN, "--backend", "mpi", "--out", tmp_path / "mpi"], capsys)
    assert status == 0 and "--backend mpi without mpiexec runs with P = 1" not in err  # -q: no note
    status, err = run(["--data", data, *RUN[:-1], "--backend", "mpi", "--out", tmp_path / "noted"], capsys)
    assert status == 0 and "--backend mpi without mpiexec runs with P = 1" in err
    assert run(["--data", data, *RUN, "--out", tmp_path / "local"], capsys)[0] == 0
    assert read_csv(tmp_path / "mpi" / "metrics.csv") == [
        {**r, "wall_s": m["wall_s"]} for r, m in zip(read_csv(tmp_path / "local" / "metrics.csv"),
                                                    read_csv(tmp_path / "mpi" / "metrics.csv"))]
    backend = json.loads((tmp_path / "mpi" / "config.json").read_text())["backend"]
    assert backend == {"backend": "mpi", "ranks": 1, "partition": "contiguous", "edge_cut": 0}
    assert json.loads((tmp_path / "local" / "config.json").read_text())["backend"] == {"backend": "local", "ranks": 1}


def test_partition_defaults_to_contiguous_blocks_of_vertex_ids():
    args = experiment.build_parser().parse_args([])
    assert (args.backend, args.partition) == ("local", "contiguous")
    assert "(default: contiguous)" in experiment.build_parser().format_help()


@pytest.mark.parametrize("extra, needle", [
    (["--mode", "authors"], "--mode authors does not run on --backend mpi"),
    (["--jobs", "2"], "--jobs: the MPI backend trains one approach at a time"),
])
def test_what_mpi_cannot_run_is_refused_up_front(data, tmp_path, capsys, extra, needle):
    status, err = run(["--data", data, *RUN, "--backend", "mpi", *extra, "--out", tmp_path / "x"], capsys)
    assert status == 2 and needle in err and err.count("\n") == 1, err
    assert not (tmp_path / "x").exists()
