"""`--backend` and `--partition` of `python -m apps.node_regression`, in-process (the runs under mpiexec are
tests/core/distributed/test_mpi_trainer.py): refusals with one line, P = 1 without mpiexec, what config.json
records, and the backend's identity in-process."""

import json

import numpy as np
import pytest

from apps.node_regression.experiment import build_parser, main
from core.runs import read_csv

TINY = ["--nodes", "12", "--train-samples", "24", "--test-samples", "4", "--input-dim", "6", "--hidden", "4",
        "--teacher-hidden", "5", "--batch-size", "6", "--epochs", "2", "--lr", "0.01", "--no-jit",
        "--optimizer", "d-sgd"]


def test_flags_and_defaults():
    args = build_parser().parse_args([])
    assert (args.backend, args.partition) == ("local", "metis")
    help_text = build_parser().format_help()
    assert "--backend {local,mpi}" in help_text and "--partition {metis,contiguous}" in help_text


@pytest.mark.parametrize("bad, needle", [
    (["--backend", "mpi", "--jobs", "2"], "--jobs: the MPI backend trains one approach at a time"),
    (["--backend", "mpi", "--jobs=2"], "--jobs: the MPI backend trains one approach at a time"),
    (["--backend", "gloo"], "--backend"),
    (["--partition", "random"], "--partition"),
])
def test_refused_with_one_line(tmp_path, capsys, bad, needle):
    out = tmp_path / "run"
    try:
        status = main([*TINY, "-q", *bad, "--out", str(out)])
    except SystemExit as exc:  # argparse's own errors
        status = exc.code
    assert status == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1, err
    assert not out.exists()


def test_mpi_without_mpiexec_runs_with_one_process_and_equals_local(tmp_path, capsys):
    mpi_out, local_out = tmp_path / "mpi", tmp_path / "local"
    assert main([*TINY, "--backend", "mpi", "--partition", "contiguous", "--out", str(mpi_out)]) == 0
    err = capsys.readouterr().err
    assert "--backend mpi without mpiexec runs with P = 1" in err, err
    assert main([*TINY, "-q", "--out", str(local_out)]) == 0
    config = json.loads((mpi_out / "config.json").read_text())
    assert config["backend"] == {"backend": "mpi", "ranks": 1, "partition": "contiguous", "edge_cut": 0}
    assert config["flags"]["backend"] == "mpi" and config["flags"]["jobs"] == 1
    assert json.loads((local_out / "config.json").read_text())["backend"] == {"backend": "local", "ranks": 1}
    got, want = read_csv(mpi_out / "metrics.csv"), read_csv(local_out / "metrics.csv")
    for g, w in zip(got, want, strict=True):
        assert {k: v for k, v in g.items() if k != "wall_s"} == {k: v for k, v in w.items() if k != "wall_s"}


def test_local_backend_is_the_identity():
    import tensorflow as tf

    from core import replicas
    from core.backend import LOCAL, LocalBackend

    theta = tf.constant(np.random.default_rng(0).normal(size=(5, 3)))
    backend = LocalBackend(5)
    assert not backend.distributed and backend.is_root and backend.num_owned == 5
    np.testing.assert_array_equal(backend.owned, np.arange(5))
    assert float(backend.consensus_error(theta)) == float(replicas.consensus_error(theta))
    np.testing.assert_array_equal(backend.consensus_model(theta), replicas.consensus_model(theta))
    assert backend.reduce_metrics({"a": 1.5}) == {"a": 1.5} and backend.bcast(3) == 3
    assert backend.all_true([True, False]).tolist() == [True, False]
    assert LOCAL.counters() == {} and LOCAL.describe() == {"backend": "local", "ranks": 1}
