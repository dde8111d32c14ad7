"""App B (UWMMSE power allocation) under ``mpiexec -n P``: cases that trainer_cases.py runs (not collected).

The problem: a generated dataset of N = 7 pairs (B = 4 samples per mini-batch, 6 training and 2 test batches),
UWMMSE with one unfolded layer and hidden width 3, float64. Every rank reads the file and trains its pairs
(:class:`apps.power_allocation.exchange.PairsBackend`); rank 0 also trains the in-process reference and compares,
to rtol 1e-10 / atol 1e-12, every logged metric and the parameters and optimizer state after 2 epochs
(12 mini-batches, 4 per compiled call so that the stacked graphs' shapes are relaxed once), and the logical
counts exactly:

- :func:`trainer_equal`: one optimizer through :class:`core.trainer.Trainer`, over perfect links or (a third
  part in the case's name, :data:`LINKS`) over imperfect ones: then also the same packets lost and the link
  counts;
- :func:`resume_across_p`: 1 epoch under P ranks, resumed in-process (rank 0), and 1 epoch in-process,
  resumed under P ranks, both ending where the uninterrupted in-process run ends;
- :func:`app_equal`: ``apps.power_allocation --backend mpi`` with two approaches into the group run directory
  that rank 0 alone writes, against the same flags in-process: each approach's metrics.csv, summary.json (but
  wall-clock and the MPI counters, which only the MPI run has), saved powers and what config.json records of
  the backend, and the group's summary.

:func:`run` is called by trainer_cases.py's main() with the cases of its launch.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import tensorflow as tf

from apps.power_allocation.batches import TrainingBatches
from apps.power_allocation.exchange import PairsBackend
from apps.power_allocation.task import PowerAllocationTask
from apps.power_allocation.uwmmse import UWMMSE
from core.backend import LocalBackend
from core.distributed.partition import partition
from core.optimizers import LearningRate, make_optimizer
from core.runs import RunDir
from core.trainer import RandomGraphs, Trainer, TrainerConfig
from datasets import power_allocation as pa
from tests.core.distributed.comparing import wait_for_all

F64 = tf.float64
PAIRS, BATCH, LAYERS, HIDDEN = 7, 4, 1, 3  # 7 pairs: ranks of unequal sizes
RTOL, ATOL = 1e-10, 1e-12
CASES = {2: ["power_allocation/d-adam", "power_allocation/c-adam", "power_allocation/app/c-adam,d-gcp-adam"],
         3: ["power_allocation/d-amsgrad", "power_allocation/c-adam", "power_allocation/resume_across_p/d-adam",
             "power_allocation/d-adam/stale"]}
"""The cases of each launch, by P (trainer_cases.py's CASES include them)."""
LINKS = {"stale": dict(loss_prob=0.3, on_loss="stale", link_failure=0.2, eval_under_loss=True)}
"""Link models of the lossy cases (``power_allocation/<optimizer>/<links>``): every rank keeps the whole network's
stale buffer (apps/power_allocation/exchange.py), links fail on the GCNNs' S, test batches lose their packets."""


def dataset(out: Path, comm) -> Path:
    """The small dataset, written by rank 0 (the others wait for it)."""
    path = out / f"pa_p{comm.Get_size()}.h5"
    if comm.Get_rank() == 0 and not path.exists():
        pa.generate(pa.PowerAllocationConfig(pairs=PAIRS, batch_size=BATCH, layouts=2, batches_per_layout=3,
                                             test_batches=2, area=400.0, seed=1), path)
    wait_for_all(comm)
    return path


def train(path: Path, backend, name: str, epochs: int = 2, run=None, until: int | None = None, resume=False,
          dtype=F64, jit: bool = False, links: str | None = None):
    """(trainer, result) of optimizer ``name`` on the dataset, on ``backend``'s pairs (over :data:`LINKS`
    ``[links]``)."""
    from core.links import LinkSetup

    model = UWMMSE(LAYERS, HIDDEN)
    optimizer = make_optimizer(name, 2)
    with pa.PowerAllocationDataset(path) as data:
        test_H = np.stack([data.batch("test", k).H for k in range(data.num_batches("test"))])
        train_H = np.stack([data.batch("train", k).H for k in (0, 3)])
        task = PowerAllocationTask(model, model.init_theta(11, dtype), data.num_batches("train"), BATCH,
                                   data.noise_power_w, data.pmax_w, test_H, train_H, dtype, backend=backend)
        config = TrainerConfig(epochs=epochs, batch_size=BATCH, seed=5, checkpoint_every=1, jit=jit, quiet=True,
                               steps_per_call=4)
        with TrainingBatches(data, dtype, None if optimizer.centralized else "mh", prefetch=4) as batches:
            trainer = Trainer(task, optimizer, LearningRate(0.02), RandomGraphs(batches.draw, same_shapes=True),
                              config, run, links=None if links is None else LinkSetup.from_flags(5, **LINKS[links]))
            result = trainer.run(resume=resume, until_epoch=until)
    return trainer, result


def gathered(backend, trainer) -> list:
    """theta and the optimizer state with every pair's rows (rank 0; None rows elsewhere)."""
    arrays = [trainer.theta.numpy(), *(s.numpy() for s in trainer.state)]
    if trainer.optimizer.centralized or backend is None or not backend.distributed:
        return arrays
    return [backend.gather_rows(a) if trainer._per_node(a) else a for a in arrays]


def wire(name: str, rounds_k: int, part_sizes, itemsize: int = 8) -> tuple[list, list]:
    """(bytes, messages) each rank must send per mini-batch, from the exchanges of UWMMSE on the complete
    pattern: per sample and pair, forward X^0 and X^1 of the 2K GCNNs and 2K + 1 WMMSE sums to every other
    rank; backward (the tape's, also for a centralized model) X^1's and 2K sums, each rank's contributions to
    the other ranks' pairs; then the optimizer's consensus rounds of its payload (no sample axis)."""
    optimizer, model = make_optimizer(name, rounds_k), UWMMSE(LAYERS, HIDDEN)
    rounds = {"none": 0, "parameter": 1, "gradient": rounds_k}[optimizer.consensus]
    gcnns = 2 * LAYERS
    forward, backward = gcnns * (1 + HIDDEN) + 2 * LAYERS + 1, gcnns * HIDDEN + 2 * LAYERS
    p, n = len(part_sizes), sum(part_sizes)
    sent = [itemsize * (BATCH * (own * (p - 1) * forward + (n - own) * backward)
                        + rounds * own * (p - 1) * optimizer.payload_size(model.num_params)) for own in part_sizes]
    exchanges = 2 + (2 * LAYERS + 1) + 1 + 2 * LAYERS + rounds
    return [float(b) for b in sent], [float(exchanges * (p - 1))] * p


def check_arrays(name: str, got: list, want: list) -> None:
    assert len(got) == len(want), (name, len(got), len(want))
    for k, (g, w) in enumerate(zip(got, want)):
        np.testing.assert_allclose(g, w, rtol=RTOL, atol=ATOL, err_msg=f"{name}: array {k} of theta and state")


def backend_for(comm, method: str = "contiguous") -> PairsBackend:
    from apps.power_allocation.exchange import complete_sparse_operator

    owner = comm.bcast(partition(complete_sparse_operator(PAIRS), comm.Get_size(), method) if comm.Get_rank() == 0
                       else None)
    return PairsBackend(owner, partition=method)


def reference_run(path: Path, name: str, reference: dict, links: str | None = None):
    """The in-process run of ``name`` (rank 0), trained once per launch."""
    if (name, links) not in reference:
        reference[name, links] = train(path, LocalBackend(PAIRS), name, links=links)
    return reference[name, links]


def trainer_equal(path: Path, name: str, comm, compare, method: str, reference: dict,
                  links: str | None = None) -> None:
    backend = backend_for(comm, method)
    trainer, result = train(path, backend, name, links=links)
    arrays = gathered(backend, trainer)
    if comm.Get_rank() == 0:
        case = f"power_allocation/{name}" + ("" if links is None else f"/{links}")
        ref_trainer, ref = reference_run(path, name, reference, links)
        compare(case, result.rows, trainer.theta.numpy() if trainer.optimizer.centralized
                else arrays[0], ref.rows, ref_trainer.theta.numpy())
        check_arrays(case, arrays, gathered(None, ref_trainer))
        counts = ("mp_rounds_per_batch", "floats_sent_per_node_per_batch", "largest_message", "mp_rounds",
                  "floats_sent_per_node")
        if links is not None:  # the same packets lost and links down as in-process
            counts += ("packet_loss_rate", "residual_loss_rate", "link_failure_rate", "packets")
            assert result.summary["packet_loss_rate"] > 0.2 and result.summary["link_failure_rate"] > 0.1
        for k in counts:
            assert result.summary[k] == ref.summary[k], (k, result.summary[k], ref.summary[k])
        sizes = np.bincount(backend.owner, minlength=comm.Get_size()).tolist()
        if links is None:  # (under stale a backward gathers every pair's rows instead of returning contributions)
            assert (result.summary["mpi_bytes_sent_per_batch"],
                    result.summary["mpi_messages_sent_per_batch"]) == wire(name, 2, sizes), (result.summary,
                                                                                              wire(name, 2, sizes))
        s = result.summary
        print(f"COUNTS power_allocation/{name} rounds/batch={s['mp_rounds_per_batch']} floats/node/batch="
              f"{s['floats_sent_per_node_per_batch']} bytes/batch={s['mpi_bytes_sent_per_batch']} "
              f"messages/batch={s['mpi_messages_sent_per_batch']}", flush=True)
    wait_for_all(comm)


def resume_across_p(path: Path, out: Path, name: str, comm, compare, reference: dict) -> None:
    rank, size = comm.Get_rank(), comm.Get_size()
    backend = backend_for(comm, "metis")
    mpi_dir, local_dir = out / f"pa_mpi_ckpt_p{size}", out / f"pa_local_ckpt_p{size}"
    if rank == 0:
        for d in (mpi_dir, local_dir):
            shutil.rmtree(d, ignore_errors=True)
        ref_trainer, ref = reference_run(path, name, reference)
        want = gathered(None, ref_trainer)
    wait_for_all(comm)
    train(path, backend, name, run=RunDir(mpi_dir) if rank == 0 else None, until=1)  # P ranks: 1 of 2 epochs
    if rank == 0:  # in-process resume of the P-rank checkpoint; then 1 in-process epoch for the P ranks to resume
        t, res = train(path, LocalBackend(PAIRS), name, run=RunDir(mpi_dir), resume=True)
        compare(f"pa resume mpi->local/{name}", res.rows, t.theta.numpy(), ref.rows, ref_trainer.theta.numpy())
        check_arrays(f"pa resume mpi->local/{name}", gathered(None, t), want)
        train(path, LocalBackend(PAIRS), name, run=RunDir(local_dir), until=1)
    wait_for_all(comm)
    t, res = train(path, backend, name, run=RunDir(local_dir, create=False) if rank == 0 else None, resume=True)
    arrays = gathered(backend, t)
    if rank == 0:
        assert res.rows[1]["epoch"] == 1 and len(res.rows) == 3, res.rows
        compare(f"pa resume local->mpi/{name}", res.rows, arrays[0], ref.rows, ref_trainer.theta.numpy())
        check_arrays(f"pa resume local->mpi/{name}", arrays, want)
    wait_for_all(comm)


def _metrics(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def app_equal(path: Path, out: Path, names: str, comm) -> None:
    """``apps.power_allocation --backend mpi`` (the approaches ``names``, a group run) against the in-process
    run (rank 0)."""
    from apps.common.main import World, run_experiment
    from apps.power_allocation import experiment as ex

    rank, size = comm.Get_rank(), comm.Get_size()
    mpi_dir, local_dir = out / f"pa_app_mpi_p{size}", out / f"pa_app_local_p{size}"
    argv = ["--data", str(path), "--epochs", "2", "--seed", "4", "--layers", str(LAYERS), "--hidden", str(HIDDEN),
            "--wmmse-iterations", "20", "-q", "--dtype", "float64", "--optimizer", names,
            "--consensus-rounds", "2", "--save-powers", "--jobs", "1"]  # in-process too: no worker processes
    # with XLA: auto-clustering under MPI (config.json says so), the XLA-compiled step in-process
    assert ex.main([*argv, "--backend", "mpi", "--out", str(mpi_dir)]) == 0
    if rank == 0:
        saved, ex.WORLD = ex.WORLD, World()  # the same app as one process, although started by mpiexec
        try:
            assert run_experiment(ex.PROG, [*argv, "--out", str(local_dir)], ex.parse_args, ex.plan, ex.execute,
                                  lambda *a: None, world=World()) == 0
        finally:
            ex.WORLD = saved
        group_mpi, group_loc = (json.loads((d / "summary.json").read_text()) for d in (mpi_dir, local_dir))
        assert list(group_mpi) == list(group_loc) == names.split(","), (list(group_mpi), list(group_loc))
        for name in names.split(","):
            check_app_run(mpi_dir / name, local_dir / name, size)
            assert group_mpi[name] == json.loads((mpi_dir / name / "summary.json").read_text())
        assert (mpi_dir / "test_sum_rate_vs_epoch.png").is_file()
    wait_for_all(comm)


def check_app_run(mpi_dir: Path, local_dir: Path, size: int) -> None:
    """One approach's run directory under MPI against the in-process one."""
    got, want = _metrics(mpi_dir / "metrics.csv"), _metrics(local_dir / "metrics.csv")
    assert len(got) == len(want) == 3, (len(got), len(want))
    for g, w in zip(got, want):
        for k in w:
            if k in ("epoch", "step", "mp_rounds", "floats_sent_per_node"):
                assert g[k] == w[k], (k, g[k], w[k])
            elif k != "wall_s":
                np.testing.assert_allclose(float(g[k]), float(w[k]), rtol=RTOL, atol=ATOL, err_msg=k)
    s_mpi, s_loc = (json.loads((d / "summary.json").read_text()) for d in (mpi_dir, local_dir))
    assert set(s_mpi) - set(s_loc) == {"mpi_ranks", "mpi_counts_from_step", "mpi_messages_sent_per_batch",
                                       "mpi_bytes_sent_per_batch", "mpi_seconds_in_mpi"}, set(s_mpi) ^ set(s_loc)
    assert s_mpi["mpi_counts_from_step"] == 0
    for k, v in s_loc.items():
        if isinstance(v, float) and k != "wall_s":
            np.testing.assert_allclose(s_mpi[k], v, rtol=RTOL, atol=ATOL, err_msg=k)
        elif k != "wall_s":
            assert s_mpi[k] == v, (k, s_mpi[k], v)
    backend = json.loads((mpi_dir / "config.json").read_text())["backend"]
    assert s_mpi["mpi_ranks"] == size, s_mpi
    # this approach's own traffic, although the group's approaches share the backend
    assert (s_mpi["mpi_bytes_sent_per_batch"], s_mpi["mpi_messages_sent_per_batch"]) == wire(
        s_mpi["optimizer"], 2, backend["part_sizes"]), s_mpi
    assert backend["backend"] == "mpi" and backend["ranks"] == size and backend["partition"] == "metis", backend
    assert backend["xla"] == "autoclustering", backend
    assert backend["edge_cut"] == sum(a * b for i, a in enumerate(backend["part_sizes"])
                                      for b in backend["part_sizes"][i + 1:]), backend  # the complete pattern
    p_mpi, p_loc = (np.load(d / "test_powers.npz") for d in (mpi_dir, local_dir))
    assert set(p_mpi.files) == set(p_loc.files) == {"uwmmse", "wmmse", "wmmse_tr"}, p_mpi.files
    for k in p_loc.files:
        np.testing.assert_allclose(p_mpi[k], p_loc[k], rtol=RTOL, atol=ATOL, err_msg=k)
    assert (mpi_dir / "learning_curve.png").is_file()
    print(f"APP power_allocation/{s_mpi['optimizer']} P={size} bytes/batch={s_mpi['mpi_bytes_sent_per_batch']} "
          f"edge_cut={backend['edge_cut']}/{backend['num_edges']}", flush=True)


def run(out: Path, rank: int, size: int, comm, ok, compare) -> None:
    """The App B cases of a launch with ``size`` ranks (module docstring); ``ok(name)`` reports a passed case."""
    del rank
    path = dataset(out, comm)
    reference = {}  # the in-process runs on rank 0, by optimizer
    for case in CASES.get(size, []):
        parts = case.split("/")
        if parts[1] == "resume_across_p":
            resume_across_p(path, out, parts[2], comm, compare, reference)
        elif parts[1] == "app":
            app_equal(path, out, parts[2], comm)
        else:
            trainer_equal(path, parts[1], comm, compare, "metis" if size == 2 else "contiguous", reference,
                          parts[2] if len(parts) == 3 else None)
        ok(case)
