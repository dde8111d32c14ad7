"""`python -m datasets`: tiny runs, flags, one-line errors with exit status 2, nothing written on failure."""

import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from datasets import cli
from datasets import power_allocation as pa
from datasets.__main__ import main
from datasets.conflict_graphs import ConflictGraphDataset, ConflictGraphsConfig
from datasets.power_allocation import PowerAllocationConfig, PowerAllocationDataset

ROOT = Path(__file__).resolve().parents[2]
TINY_PA = [
    "power-allocation",
    "--pairs",
    "3",
    "--layouts",
    "2",
    "--batches-per-layout",
    "2",
    "--test-batches",
    "2",
    "--batch-size",
    "4",
]
TINY_CG = [
    "conflict-graphs",
    "--vertices",
    "8",
    "--max-degree",
    "5",
    "--train-graphs",
    "3",
    "--test-graphs",
    "2",
    "--test-samples",
    "2",
]


def test_kinds_are_discovered():
    kinds = cli.discover_kinds()
    assert {"power-allocation", "conflict-graphs"} <= set(kinds)
    assert kinds["power-allocation"] is pa.KIND
    assert pa.KIND.default_output == Path("data/power_allocation.h5")


def test_power_allocation_run(tmp_path, capsys):
    out = tmp_path / "pa.h5"
    flags = [
        "--shadowing-std",
        "standard",
        "--no-fading",
        "--no-threshold",
        "--pathloss",
        "uma-nlos",
        "--seed",
        "4",
        "--carrier-ghz",
        "3.5",
        "--tx-height",
        "25",
        "--noise-dbm",
        "-100",
        "--pmax",
        "2",
    ]
    assert main([*TINY_PA, *flags, "--out", str(out), "-q"]) == 0
    assert capsys.readouterr().err == ""  # -q silences the progress bar
    with PowerAllocationDataset(out) as data:
        config = PowerAllocationConfig(**data.config)
        assert config == PowerAllocationConfig(
            pairs=3,
            layouts=2,
            batches_per_layout=2,
            test_batches=2,
            batch_size=4,
            shadowing_std=6.0,
            fading="none",
            threshold=False,
            pathloss="uma-nlos",
            seed=4,
            carrier_ghz=3.5,
            tx_height=25.0,
            noise_dbm=-100.0,
            pmax=2.0,
        )
        assert data.attrs["shadowing_source"].startswith(
            "3GPP TR 38.901 Table 7.4.1-1 value for uma-nlos (6 dB)"
        )
        assert data.noise_power_w == pytest.approx(1e-13) and data.pmax_w == 2.0
        assert "threshold_db" not in data.attrs
        assert data.batch("train", 3).H.shape == (4, 3, 3)


def test_conflict_graphs_run_with_progress(tmp_path, capsys):
    out = tmp_path / "cg.h5"
    assert main([*TINY_CG, "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "5/5" in err and f"wrote {out}" in err
    with ConflictGraphDataset(out) as data:
        assert ConflictGraphsConfig(**data.config) == ConflictGraphsConfig(
            vertices=8, max_degree=5.0, train_graphs=3, test_graphs=2, test_samples=2
        )


def test_default_output_and_force(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main([*TINY_CG, "-q"]) == 0
    default = tmp_path / "data" / "conflict_graphs.h5"
    first = default.read_bytes()
    with pytest.raises(SystemExit) as exit_info:
        main([*TINY_CG, "-q", "--seed", "1"])
    assert exit_info.value.code == 2 and "exists; pass --force to replace it" in capsys.readouterr().err
    assert default.read_bytes() == first
    assert main([*TINY_CG, "-q", "--seed", "1", "--force"]) == 0
    assert default.read_bytes() != first


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([*TINY_PA, "--pairs", "-3"], "argument --pairs: must be a positive integer, got -3"),
        ([*TINY_PA, "--batch-size", "abc"], "argument --batch-size: must be an integer, got 'abc'"),
        ([*TINY_PA, "--pathloss", "uma"], "argument --pathloss: invalid choice: 'uma'"),
        ([*TINY_PA, "--shadowing-std", "-1"], "argument --shadowing-std: must be a finite number >= 0"),
        ([*TINY_PA, "--carrier-ghz", "200"], r"--carrier-ghz must be in \[0.5, 100\] GHz"),
        ([*TINY_PA, "--pair-min-distance", "500"], "must not exceed --pair-max-distance"),
        ([*TINY_PA, "--out", "{tmp}"], "is a folder, expected a file name"),
        ([*TINY_PA, "--out", "{tmp}/new/"], "argument --out: must be a file name, got '.*new/'"),
        ([*TINY_CG, "--min-degree", "6"], "need --min-degree <= --max-degree"),
        (["node-classification"], "argument <kind>: invalid choice"),
        ([], "the following arguments are required: <kind>"),
    ],
)
def test_bad_flags_exit_2_with_one_line_and_write_nothing(tmp_path, capsys, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    if "--out" not in argv and argv:
        argv += ["--out", str(tmp_path / "x.h5")]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("python -m datasets") and ": error: " in err
    assert re.search(message, err), err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("error", "status"), [(KeyboardInterrupt, 130), (OSError, 1)])
def test_failure_while_writing(tmp_path, capsys, monkeypatch, error, status):
    def fail(*args):
        raise error("disk full" if error is OSError else "")

    monkeypatch.setattr(pa, "_channel_block", fail)
    out = tmp_path / "pa.h5"
    assert main([*TINY_PA, "--out", str(out), "-q"]) == status
    assert "nothing written" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_module_entry_point_help_and_exit_status(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    helped = subprocess.run(
        [sys.executable, "-m", "datasets", "power-allocation", "--help"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    for field in dataclasses.fields(PowerAllocationConfig):  # booleans are switched off by --no-<name>
        assert cli.flag(field.name).replace("--", "--no-" if field.type == "bool" else "--") in helped.stdout
    for required in ("--no-fading", "--out", "--force", "-q"):
        assert required in helped.stdout
    failed = subprocess.run(
        [sys.executable, "-m", "datasets", "conflict-graphs", "--vertices", "0"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert failed.returncode == 2 and failed.stdout == ""
    assert failed.stderr == (
        "python -m datasets conflict-graphs: error: argument --vertices: must be a positive integer, got 0 "
        "(see --help)\n"
    )
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------- python -m datasets info FILE
def test_info_describes_a_file_of_each_kind(tmp_path, capsys, power_file, graph_file, tiny_power_config):
    import json

    from datasets import node_regression as nr

    regression = nr.generate(nr.NodeRegressionConfig(nodes=6, train_samples=4, test_samples=2), tmp_path / "nr.h5")
    for path, kind in ((power_file, "power-allocation"), (graph_file, "conflict-graphs"), (regression,
                                                                                          "node-regression")):
        assert main(["info", str(path), "--json"]) == 0
        info = json.loads(capsys.readouterr().out)
        assert info["kind"] == kind and info["file"] == str(path) and info["checksum"].startswith("sha256:")
        assert info["bytes"] == Path(path).stat().st_size and "verified" not in info
    assert info["config"]["nodes"] == 6 and info["arrays"]["train/x"]["shape"][0] == 4
    assert main(["info", str(power_file), "--verify"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{power_file}: power-allocation dataset, schema version 1, ")
    assert f"  pairs = {tiny_power_config.pairs}" in out and "  noise_power_w = " in out
    assert re.search(r"  train/H +float32 +\(6, 5, 4, 4\)", out)  # 3 layouts x 2 batches of 5 samples, 4 pairs
    assert out.rstrip().endswith("verified: every row passes its content checks and the checksum matches")


def test_info_refuses_what_is_not_a_usable_dataset_with_one_line(tmp_path, capsys, graph_file):
    import shutil

    import h5py

    damaged = tmp_path / "damaged.h5"
    shutil.copy(graph_file, damaged)
    with h5py.File(damaged, "r+") as f:  # one edge made one-way: the content check of a read fails
        adjacency = f["train/adjacency"][0]
        i, j = map(int, np.argwhere(adjacency)[0])
        adjacency[i, j] = 0
        f["train/adjacency"][0] = adjacency
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f.attrs["schema"] = "weather"
    (tmp_path / "notes.h5").write_text("not HDF5")
    cases = {tmp_path / "missing.h5": "no such dataset file", tmp_path: "a folder, not a dataset file",
             tmp_path / "notes.h5": "not a readable HDF5 file", other: "a 'weather' dataset, a kind this version",
             damaged: "is not symmetric"}
    for path, message in cases.items():
        assert main(["info", str(path), "--verify"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("python -m datasets info: error: ") and message in err
    assert main(["info", str(damaged)]) == 0  # opening checks the schema; only --verify reads every row
