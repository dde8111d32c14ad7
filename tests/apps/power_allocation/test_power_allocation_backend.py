"""`--backend` and `--partition` of `python -m apps.power_allocation` in-process (the runs under mpiexec are in
tests/core/distributed/power_allocation_cases.py): refusals with one line, P = 1 without mpiexec equal to the
local run, what config.json records."""

import json

import pytest

from apps.power_allocation.experiment import build_parser, main
from core.runs import read_csv
from datasets import power_allocation as pa


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "pa.h5"
    pa.generate(pa.PowerAllocationConfig(pairs=5, batch_size=4, layouts=2, batches_per_layout=2, test_batches=1,
                                         area=400.0, seed=2), path)
    return path


def flags(dataset, *extra):
    return ["--data", str(dataset), "--epochs", "2", "--seed", "1", "--layers", "1", "--hidden", "2",
            "--wmmse-iterations", "5", "--no-jit", "--optimizer", "d-adam", *extra]


def test_flags_and_defaults():
    args = build_parser().parse_args([])
    assert (args.backend, args.partition) == ("local", "metis")
    help_text = build_parser().format_help()
    assert "--backend {local,mpi}" in help_text and "--partition {metis,contiguous}" in help_text


@pytest.mark.parametrize("bad, needle", [
    (["--backend", "mpi", "--jobs", "2"], "--jobs: the MPI backend trains one approach at a time"),
    (["--backend", "nccl"], "--backend"),
    (["--partition", "spectral"], "--partition"),
])
def test_refused_with_one_line_and_nothing_written(dataset, tmp_path, capsys, bad, needle):
    out = tmp_path / "run"
    try:
        status = main(flags(dataset, "-q", *bad, "--out", str(out)))
    except SystemExit as exc:  # argparse's own errors
        status = exc.code
    assert status == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1, err
    assert not out.exists()


def test_mpi_without_mpiexec_runs_with_one_process_and_equals_local(dataset, tmp_path, capsys):
    mpi_out, local_out = tmp_path / "mpi", tmp_path / "local"
    assert main(flags(dataset, "--backend", "mpi", "--partition", "contiguous", "--out", str(mpi_out))) == 0
    err = capsys.readouterr().err
    assert "--backend mpi without mpiexec runs with P = 1" in err, err
    assert main(flags(dataset, "-q", "--out", str(local_out))) == 0
    config = json.loads((mpi_out / "config.json").read_text())
    assert config["backend"] == {"backend": "mpi", "ranks": 1, "partition": "contiguous", "edge_cut": 0}
    assert config["flags"]["backend"] == "mpi" and config["flags"]["jobs"] == 1
    assert json.loads((local_out / "config.json").read_text())["backend"] == {"backend": "local", "ranks": 1}
    got, want = read_csv(mpi_out / "metrics.csv"), read_csv(local_out / "metrics.csv")
    for g, w in zip(got, want, strict=True):
        assert {k: v for k, v in g.items() if k != "wall_s"} == {k: v for k, v in w.items() if k != "wall_s"}
