"""Power-allocation experiment (Fig. 2b): flags, validation, data, baselines and one run per approach.

``main(argv)`` parses and validates every flag and the dataset *before* creating a run directory (bad
input: one error line on stderr, exit status 2, nothing written), then

1. computes the baselines on the test split: WMMSE with ``--wmmse-iterations`` (100) iterations and
   WMMSE-Tr, truncated to as many iterations as UWMMSE has layers (4), in float64;
2. trains UWMMSE with each requested approach through :class:`core.trainer.Trainer`, streaming the
   training split (:mod:`apps.power_allocation.batches`), into its run directory (docs/design.md, section 5):
   config.json, metrics.csv (one row per epoch), summary.json (final/best sum-rates in bit/s/Hz and
   Mbps, the baselines on the same test split), checkpoint/, ``learning_curve.png`` and, with
   ``--save-powers``, ``test_powers.npz``. Several approaches (``--optimizer c-adam,d-adam``, the
   default, or ``all``) go into ``<out>/<approach>/`` with a combined plot ``test_sum_rate_vs_epoch.png``.

The dataset comes from ``--data`` (default ``data/power_allocation.h5``, or
``data/power_allocation_quick.h5`` for ``--preset quick``); ``--generate`` writes it first when the file
does not exist (the paper preset of docs/design.md, section 7, or the quick preset's small version).

Seeds: ``--seed`` derives the initial parameters (the same for every approach) and the trainer's
generator, which orders the training batches of every epoch.

MPI (docs/design.md, section 11): ``mpiexec -n P python -m apps.power_allocation --backend mpi`` splits the N
transmitter-receiver pairs over the P ranks (``--partition``; pair i's copies of the 8 GCNNs go with it).
Rank 0 alone chooses the run path, generates the dataset (``--generate``; the other ranks wait for it),
verifies it, computes the WMMSE baselines (centralized computations without messages: once is enough, and
the other ranks would only take CPU from it; their numbers are broadcast) and writes the run directory
(config.json records the backend, P, the partition and its edge cut; summary.json the bytes and messages each
rank sent per mini-batch, next to the logical counts, which equal the in-process ones). Every rank reads the
HDF5 file (read-only: the whole mini-batch's H, from which it computes its pairs' rows) and trains its pairs,
every exchange going over MPI (:class:`apps.power_allocation.exchange.PairsBackend`). Checkpoints hold every
pair's rows, so a run resumes under any P, or in-process. Started without mpiexec, ``--backend mpi`` runs
with P = 1 (and says so); ``--jobs`` and P > N are refused.

Imperfect links (docs/design.md, sections 8 and 12): the shared link flags (``--loss-prob``, ``--loss-model
gilbert``, ``--link-failure``, ``--on-loss``) apply to the distributed approaches' GCNN messages and consensus
rounds; the WMMSE sums are channel measurements and never lost: a failed link cuts the GCNNs' S (H on the
surviving links) and rebuilds the consensus weights, while the sums measure the whole H (``GraphOps.observed``);
centralized approaches train over perfect links (a server). ``--eval-under-loss``: test batch k loses the
packets of the evaluation's mini-batch k in the GCNNs' forward exchanges (and, under link failures, its GCNNs
run on the links up). Refused with one line (:func:`check_link_flags`): ``d-naive`` under loss (per-sample
gradients).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from apps.common import cli as common_cli
from apps.common.backend import (
    check_backend_flags,
    check_ranks,
    make_backend,
    on_root,
    run_on_world,
    say_notes,
    start_world,
)
from apps.common.main import World, logged_progress, write_run_config
from core.parallel import default_workers
from datasets import cli
from datasets import power_allocation as pa
from datasets.storage import DatasetError, OutputBusyError, claim_output

APP = "power_allocation"
PROG = cli.program_name("python -m apps.power_allocation")  # or the console script's name (fdtrain-...)
APPROACHES = common_cli.PAPER_OPTIMIZERS + common_cli.EXTRA_OPTIMIZERS
LABELS = common_cli.LABELS
DEFAULT_DATA = {"paper": cli.DEFAULT_DATA_DIR / "power_allocation.h5",
                "quick": cli.DEFAULT_DATA_DIR / "power_allocation_quick.h5"}
# sizes of the dataset that --generate writes; everything else is the paper preset (docs/design.md, section 7).
# Quick: 10 epochs of 1 000 batches are 10 000 Adam steps, as many as one paper epoch, which UWMMSE needs
# to move clearly above WMMSE-Tr (its GCNN weights must grow to amplify gains of ~1e-3), at alpha = 3e-2
# (3x the paper's): on the quick test set (WMMSE-Tr 79.7 Mbps) C-Adam and D-GCP-Adam (K = 5) end at
# 89.4-90.2 Mbps for seeds 0-2, DADAM at 80.4-80.6; at the paper's 1e-2 they end at 82.7-82.9 and DADAM at
# 79.7, below WMMSE-Tr (20 epochs: 87.6-87.8 and 79.9). Under a minute for the three approaches.
GENERATED = {"paper": {}, "quick": {"layouts": 20, "batches_per_layout": 50, "test_batches": 20}}
PRESETS = {
    "paper": {},  # the defaults are the paper's settings (200 epochs, alpha 1e-2, B = 64)
    "quick": {"epochs": 10, "lr": 3e-2, "checkpoint_every": 5},
}
GENERATE_WAIT_S = 1800  # how long --generate waits for another run writing the same dataset file
TRAIN_EVAL_BATCHES = 20  # training batches on which the initial model's train_sum_rate is measured
LINK_EXCHANGES = ("the 8 GCNNs' neighbour exchanges and the consensus rounds (not to the WMMSE interference and "
                  "feedback sums: physical measurements of the channel, never lost nor cut by a failed link; "
                  "refused here: d-naive under loss)")
"""What App B's link model applies to (docs/design.md, section 8): the text of its link flags' group."""
WORLD: World = World()
"""The processes of this run (set by :func:`main`: the ranks of mpiexec, or this process alone)."""


def build_parser() -> argparse.ArgumentParser:
    parser = cli.OneLineErrorParser(
        prog=PROG, formatter_class=cli.HelpFormatter,
        description="Train UWMMSE power allocation (4 unfolded WMMSE layers whose weights are rescaled by "
        "8 GCNNs) centrally or fully distributed, and compare it with WMMSE and truncated WMMSE on the same "
        "test set (paper Section IV-B, Fig. 2b). Defaults are the paper's settings. Writes config.json, "
        "metrics.csv (one row per epoch), summary.json, checkpoint/ and learning_curve.png per approach.")
    data = parser.add_argument_group("data")
    data.add_argument("--data", type=Path, default=None,
                      help="HDF5 file of `python -m datasets power-allocation` (default "
                      f"{DEFAULT_DATA['paper']}; {DEFAULT_DATA['quick']} with --preset quick)")
    data.add_argument("--generate", action="store_true",
                      help="if the dataset file does not exist, generate it first: the paper preset "
                      "(640 000 training matrices, ~20 s, 1.6 GB), or with --preset quick "
                      + ", ".join(f"{k.replace('_', '-')} {v}" for k, v in GENERATED["quick"].items())
                      + ", with --pairs, --batch-size and --data-seed; a file already there must have been "
                      "written with these settings")
    data.add_argument("--pairs", type=cli.positive_int, default=None,
                      help="transmitter-receiver pairs N: checked against the dataset, and used by --generate "
                      "(default: the dataset's; 25 when generating)")
    data.add_argument("--data-seed", type=cli.non_negative_int, default=0, help="seed of the dataset --generate writes")
    data.add_argument("--no-verify", action="store_true",
                      help="skip the full pass over the dataset (finite, non-negative gains and checksum; ~6 s "
                      "for the paper dataset) before training")
    model = parser.add_argument_group("UWMMSE")
    model.add_argument("--layers", type=cli.positive_int, default=4,
                       help="unfolded WMMSE layers (WMMSE-Tr runs as many iterations)")
    model.add_argument("--hidden", type=cli.positive_int, default=5, help="hidden width of each GCNN (1 -> h -> 1)")
    train = parser.add_argument_group("training")
    train.add_argument("--optimizer", type=common_cli.optimizer_list(APPROACHES), default="c-adam,d-adam",
                       help="approach(es) to train: one name, several separated by commas (each into "
                       "<out>/<approach>/ when several or without --out; Fig. 2b draws c-adam,d-adam,d-gcp-adam), "
                       "or all: the paper's seven ("
                       + " ".join(common_cli.PAPER_OPTIMIZERS) + "). By name only: d-gc-adam (not in "
                       "the paper's list): K gradient-consensus rounds, then local Adam, the scheme of the authors' "
                       "code; D-Adam's mean of per-node Adam steps trails C-Adam here (see apps/power_allocation/"
                       "task.py). d-gcp-adam: the same K rounds carry [theta, gradient] (2|theta| floats) and the "
                       "Adam step starts from the mixed parameters, which keeps the copies together (K = 5 on the "
                       "paper dataset: within 0.04 bit/s/Hz of C-Adam at each of epochs 1-10)")
    train.add_argument("--lr", type=cli.positive_float, default=1e-2, help="learning rate alpha")
    common_cli.add_lr_schedule_arguments(train)
    train.add_argument("--epochs", type=cli.positive_int, default=200, help="passes over the training batches")
    train.add_argument("--batch-size", type=cli.positive_int, default=None,
                       help="samples per mini-batch B: must equal the dataset's batch size (one layout per "
                       "batch; default: the dataset's), and used by --generate (default 64)")
    common_cli.add_consensus_arguments(train, graph=" on each batch's consensus graph")
    common_cli.add_seed_dtype_preset_arguments(
        train, PRESETS, seed_help="seed of the initial parameters and of the order of the training batches",
        dtype_of="parameters, optimizer state and channels (baselines always float64)",
        quick="the small dataset of --generate, ")
    baseline = parser.add_argument_group("baselines")
    baseline.add_argument("--wmmse-iterations", type=cli.positive_int, default=100,
                          help="iterations of the full WMMSE baseline")
    run = common_cli.add_run_arguments(parser, APP, checkpoint_every=10, jobs_default=default_workers(2))
    run.add_argument("--save-powers", action="store_true",
                     help="also write test_powers.npz: the final UWMMSE, WMMSE and WMMSE-Tr powers (W) of every "
                     "test sample")
    run.add_argument("--prefetch", type=cli.positive_int, default=128,
                     help="training batches read ahead by a background thread (keep it above the 50 mini-batches "
                          "trained per compiled call)")
    run.add_argument("--no-jit", action="store_true", help="do not XLA-compile the training step")
    common_cli.add_backend_arguments(run)
    common_cli.add_link_arguments(parser, LINK_EXCHANGES)
    return parser


@dataclass
class Plan:
    """A validated request (nothing written yet, except a dataset that --generate had to create)."""

    args: argparse.Namespace
    approaches: tuple[str, ...]
    out: Path
    resume: bool
    data_path: Path
    dataset: dict = field(default_factory=dict)
    resumed_config: dict | None = None
    grouped: bool = True  # each approach in <out>/<approach>/ (apps.common.main.is_grouped)
    backend: object = None  # core.backend.LocalBackend / PairsBackend, made by execute (collective under MPI)
    backend_info: dict = field(default_factory=dict)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Flags with the preset's values as defaults, or the saved flags of the run given to --resume."""
    from apps.common.main import parse_run_flags

    args, config = parse_run_flags(build_parser(), argv, PRESETS, APP)
    if config is not None:
        args.generate = False  # the resumed run's dataset exists already
    args.resumed_config = config
    check_backend_flags(args, argv, WORLD)
    check_link_flags(args)
    return args


def check_link_flags(args: argparse.Namespace) -> None:
    """The link flags (docs/design.md, sections 8 and 12) App B cannot honour; ValueError with one line."""
    common_cli.check_link_arguments(args)
    if not common_cli.links_active(args):
        return
    if "d-naive" in args.optimizer:
        raise ValueError("--optimizer d-naive cannot run over imperfect links in App B: each sample's gradient must "
                         "be mixed in its own rounds, and UWMMSE's GradientTape gives the batch's sum; use "
                         "d-naive-pb")


def plan(args: argparse.Namespace) -> Plan:
    """Validate flags and dataset (generating it if asked); raises ValueError with a one-line message."""
    from apps.common.main import check_resumed_dataset, is_grouped, resolve_out

    if not 0 < args.lr_decay_rate <= 1:
        raise ValueError(f"--lr-decay-rate must be in (0, 1], got {args.lr_decay_rate}")
    out = on_root(WORLD, lambda: resolve_out(args, APP))  # rank 0 picks (and checks) the path; every rank uses it
    path = args.data if args.data is not None else DEFAULT_DATA[args.preset or "paper"]
    # rank 0 alone generates and verifies the dataset; the others wait for its answer, then read the file
    dataset = on_root(WORLD, lambda: _prepare_dataset(args, path))
    check_memory(args, dataset)
    check_resumed_dataset(args.resumed_config, dataset["checksum"], path)
    # a batch's consensus graph links some of its N pairs: at most N - 1 neighbours, whatever the batch
    common_cli.check_mixing_beta(args, (), largest_degree=dataset["pairs"] - 1)
    check_ranks(args, WORLD, dataset["pairs"], PROG, f"{dataset['pairs']} transmitter-receiver pairs")
    say_notes(args, WORLD, PROG, *common_cli.ignored_flag_notes(
        args, [("data_seed", lambda a: a.generate, "without --generate (the dataset's own seed is used)")]))
    return Plan(args, tuple(args.optimizer), out, args.resume is not None, path, dataset, args.resumed_config,
                is_grouped(args, args.optimizer))


def _prepare_dataset(args: argparse.Namespace, path: Path) -> dict:
    """The checked dataset of ``path`` (generated first if asked and missing); what config.json records.
    With ``--generate`` a file already there must have been written with the dataset flags' settings."""
    from apps.common.main import missing_dataset

    wanted = generation_config(args) if args.generate else None
    if not path.exists():
        if wanted is None:
            raise missing_dataset(args, path)
        _generate(args, path, wanted)
    return check_dataset(path, args, wanted)


def generation_config(args: argparse.Namespace) -> pa.PowerAllocationConfig:
    """The dataset ``--generate`` writes: the preset's sizes with ``--pairs``, ``--batch-size`` and ``--data-seed``."""
    defaults = pa.PowerAllocationConfig
    return pa.PowerAllocationConfig(**GENERATED[args.preset or "paper"], pairs=args.pairs or defaults.pairs,
                                    batch_size=args.batch_size or defaults.batch_size, seed=args.data_seed)


def _generate(args: argparse.Namespace, path: Path, config: pa.PowerAllocationConfig) -> None:
    from apps.common.main import prepare_data_folder

    prepare_data_folder(path, default=args.data is None)
    # Runs started side by side with --generate (e.g. the cells of python -m apps.robustness) ask for the same
    # file: one writes it, the others wait for its claim (datasets/storage.py) and then read what it wrote.
    deadline, waiting = time.monotonic() + GENERATE_WAIT_S, False
    while True:
        try:
            with claim_output(path):
                if path.exists():
                    return  # written by the run we waited for
                if not args.quiet:
                    print(f"generating {path} ({config.num_batches['train']} training and {config.test_batches} "
                          "test batches)", file=sys.stderr)
                pa.generate(config, path, quiet=args.quiet)
                return
        except OutputBusyError as exc:
            if time.monotonic() > deadline:
                raise ValueError(f"--generate: {exc} for more than {GENERATE_WAIT_S} s") from None
            if not waiting and not args.quiet:
                print(f"--generate: {exc}; waiting for it", file=sys.stderr)
            waiting = True
            time.sleep(0.5)


def check_dataset(path: Path, args: argparse.Namespace, generated: pa.PowerAllocationConfig | None = None) -> dict:
    """Open and check the dataset against the flags (and, with ``--generate``, against the settings
    ``generated`` it would have been written with); returns what config.json records about it."""
    from apps.common.main import check_generated_settings

    try:
        with pa.PowerAllocationDataset(path) as data:
            if generated is not None:
                check_generated_settings(path, data.config, asdict(generated))
            if args.pairs is not None and args.pairs != data.num_pairs:
                raise ValueError(f"--pairs {args.pairs} does not match the dataset's {data.num_pairs} pairs ({path})")
            if args.batch_size is not None and args.batch_size != data.batch_size:
                raise ValueError(f"--batch-size {args.batch_size} does not match the dataset's batch size "
                                 f"{data.batch_size} (one layout per batch; generate a dataset with --batch-size)")
            if not args.no_verify:
                data.verify()  # every gain finite and non-negative, and the checksum
            return {"path": str(Path(path).resolve()), "checksum": data.checksum, "config": data.config,
                    "noise_power_w": data.noise_power_w, "pmax_w": data.pmax_w,
                    "bandwidth_hz": float(data.attrs["bandwidth_hz"]),
                    "pairs": data.num_pairs, "batch_size": data.batch_size,
                    "train_batches": data.num_batches("train"), "test_batches": data.num_batches("test")}
    except DatasetError as exc:
        raise ValueError(f"--data: {exc}") from None


def memory_needed(args: argparse.Namespace, dataset: dict) -> int:
    """A lower bound of the bytes one approach's training needs: per unfolded layer, the channel
    matrices and the 8 GCNNs' activations of one mini-batch kept for the backward pass, for the
    ``steps_per_call`` (50) mini-batches read ahead and stacked, plus the test channels (float64)."""
    itemsize = 8 if args.dtype == "float64" else 4
    pairs, batch = dataset["pairs"], dataset["batch_size"]
    per_layer = batch * pairs * (pairs + 8 * (2 * args.hidden + 2)) * itemsize * 3
    test = dataset["test_batches"] * batch * pairs * pairs * 8
    return args.layers * per_layer + (50 + args.prefetch) * batch * pairs * pairs * itemsize + test


def check_memory(args: argparse.Namespace, dataset: dict) -> None:
    """Refuse up front (ValueError) a run that cannot fit in memory."""
    from datasets.resources import check_fits

    jobs = min(args.jobs, len(args.optimizer))
    check_fits(jobs * memory_needed(args, dataset), f"training with --layers {args.layers}, --hidden {args.hidden} "
               f"and --prefetch {args.prefetch} on {dataset['pairs']} pairs, B = {dataset['batch_size']} ({jobs} "
               f"approach(es) side by side)", hint="the need grows with each of them")


def run_config(p: Plan, approach: str) -> dict:
    """What config.json records: every flag, the approach, the optimizer mode and the dataset."""
    from apps.common.main import recorded_flags

    flags = recorded_flags(p.args)
    flags["optimizer"] = list(p.args.optimizer)
    flags["data"] = str(p.data_path.absolute())  # the preset's default too: --resume reads this file
    return {
        "app": APP, "optimizer": approach, "label": LABELS.get(approach, approach), "flags": flags, "seed": p.args.seed,
        "mode": {"mixing": p.args.mixing, "mixing_beta": p.args.mixing_beta if p.args.mixing == "laplacian" else None,
                 "d_adam_variant": p.args.d_adam_variant,
                 "consensus_graph": "links up in both directions in every sample of the mini-batch"},
        "dataset": p.dataset,
        "backend": p.backend_info or {"backend": "local", "ranks": 1},
    }


def derived_seeds(seed: int) -> tuple[int, int]:
    """(initial-parameter seed, trainer seed) from --seed."""
    import numpy as np

    return tuple(int(s.generate_state(1)[0]) for s in np.random.SeedSequence(seed).spawn(2))


def wmmse_baselines(test_H, sigma2: float, pmax: float, iterations: dict[str, int], jit: bool = True) -> dict:
    """{name: (mean test sum-rate in bit/s/Hz, powers (T, B, N))} of WMMSE with each iteration count,
    in float64 on every test sample (XLA-compiled unless ``jit`` is False)."""
    import numpy as np

    from apps.power_allocation.wmmse import sum_rate, wmmse

    H = np.asarray(test_H, np.float64).reshape(-1, *test_H.shape[-2:])
    out = {}
    for name, count in iterations.items():
        p = wmmse(H, sigma2, pmax, count, jit_compile=jit)
        out[name] = (float(np.mean(sum_rate(H, p, sigma2))), p.numpy().reshape(test_H.shape[:-1]))
    return out


def with_mbps(summary: dict, bandwidth_hz: float) -> dict:
    """The summary plus ``<key>_mbps`` (x bandwidth) for every sum-rate entry in bit/s/Hz."""
    out = dict(summary)
    for key, value in summary.items():
        if key.endswith("sum_rate") and isinstance(value, float):
            out[f"{key}_mbps"] = value * bandwidth_hz / 1e6
    return out


def execute(p: Plan) -> tuple[dict[str, dict], dict[str, float]]:
    """Train every approach of the plan (side by side in ``--jobs`` processes); returns their summaries by
    approach and the baselines."""
    import numpy as np

    from apps.common.main import raise_if_diverged
    from core.parallel import run_jobs
    from core.runs import RunDir, atomic_write_json

    args, info = p.args, p.dataset
    root = WORLD.is_root
    # the pairs of the exchanges: all N x N entries (per-sample values; a cut link is a zero weight), so the
    # partition only balances the pairs over the ranks, each of which exchanges with every other
    p.backend, p.backend_info = make_backend(args, WORLD, info["pairs"],
                                             lambda: _exchange_pattern(info["pairs"]), build=_pairs_backend)
    reference, powers = None, None
    if root:  # the baselines are centralized computations without messages: rank 0 alone
        with pa.PowerAllocationDataset(p.data_path) as data:
            test_H = np.stack([data.batch("test", k).H for k in range(data.num_batches("test"))])
        baselines = wmmse_baselines(test_H, info["noise_power_w"], info["pmax_w"],
                                    {"wmmse": args.wmmse_iterations, "wmmse_tr": args.layers}, jit=not args.no_jit)
        reference = {"wmmse_test_sum_rate": baselines["wmmse"][0],
                     "wmmse_tr_test_sum_rate": baselines["wmmse_tr"][0], "wmmse_iterations": args.wmmse_iterations,
                     "wmmse_tr_iterations": args.layers, "bandwidth_hz": info["bandwidth_hz"]}
        powers = {name: baseline[1] for name, baseline in baselines.items()} if args.save_powers else None
    reference = WORLD.bcast(reference)
    parent = RunDir(p.out) if p.grouped and root else None
    if parent is not None and not p.resume:
        parent.write_config({**run_config(p, ",".join(p.approaches)), "grouped": True})
    jobs = {approach: (p, approach, reference, powers) for approach in p.approaches}
    summaries = run_jobs(train_approach, jobs, min(args.jobs, len(jobs)), total=len(jobs) * args.epochs,
                         desc="power allocation", quiet=args.quiet or not root, threads=args.threads,
                         initial=logged_progress(p.out, jobs) if p.resume else None)
    if parent is not None:
        atomic_write_json(parent.summary_path, summaries)
        curves = {LABELS[a]: _curve(RunDir(p.out / a, create=False).read_metrics(), "test_sum_rate")
                  for a in p.approaches}
        _plot(p.out / "test_sum_rate_vs_epoch.png", curves, reference, title="UWMMSE power allocation")
    raise_if_diverged(summaries, LABELS)
    return summaries, reference


def _exchange_pattern(pairs: int):
    """All N x N entries: what every exchange of App B runs on (imported late: it imports TensorFlow)."""
    from apps.power_allocation.exchange import complete_sparse_operator

    return complete_sparse_operator(pairs)


def _pairs_backend(owner, sources, partition: str):
    from apps.power_allocation.exchange import PairsBackend

    del sources  # the complete pattern of _exchange_pattern, which PairsBackend builds itself
    return PairsBackend(owner, partition=partition)


def train_approach(p: Plan, approach: str, reference: dict, powers: dict | None, progress=None) -> dict:
    """Train one approach into its run directory (resuming if asked); returns its summary.

    ``powers``: the baselines' test powers to store beside UWMMSE's (``--save-powers``; on rank 0), or None;
    ``progress``: a :mod:`core.parallel` progress report (None: the trainer's own progress bar).
    """
    from apps.common.main import train_in_run

    outputs = ["learning_curve.png"] + (["test_powers.npz"] if p.args.save_powers else [])
    # under MPI only rank 0 touches the run directory (run is None on the others); every rank trains
    return train_in_run(p, approach, outputs,
                        lambda run: _train_approach(p, approach, reference, powers, run, progress), world=WORLD)


def _train_approach(p: Plan, approach: str, reference: dict, powers: dict | None, run, progress) -> dict:
    """Train (or finish the outputs of) one approach in its claimed run directory."""
    import numpy as np
    import tensorflow as tf

    from apps.power_allocation.batches import TrainingBatches
    from apps.power_allocation.task import PowerAllocationTask
    from apps.power_allocation.uwmmse import UWMMSE
    from core.optimizers import LearningRate, make_optimizer
    from core.runs import atomic_savez
    from core.trainer import RandomGraphs, Trainer, TrainerConfig

    args, info = p.args, p.dataset
    root = WORLD.is_root
    on_resumed = write_run_config(run, run_config(p, approach)) if root else None
    dtype = tf.as_dtype(args.dtype)
    init_seed, trainer_seed = derived_seeds(args.seed)
    with pa.PowerAllocationDataset(p.data_path) as data:
        num_train = data.num_batches("train")
        test_H = np.stack([data.batch("test", k).H for k in range(data.num_batches("test"))])
        picks = np.unique(np.linspace(0, num_train - 1, min(num_train, TRAIN_EVAL_BATCHES)).round().astype(int))
        train_eval_H = np.stack([data.batch("train", int(k)).H for k in picks])
        model = UWMMSE(args.layers, args.hidden)
        task = PowerAllocationTask(model, model.init_theta(init_seed, dtype), num_train, data.batch_size,
                                   info["noise_power_w"], info["pmax_w"], test_H, train_eval_H, dtype,
                                   info["bandwidth_hz"], backend=p.backend)
        optimizer = make_optimizer(approach, args.consensus_rounds, authors_variant=args.d_adam_variant == "authors")
        lr = LearningRate(args.lr, args.lr_schedule, args.lr_decay_rate, args.lr_decay_steps)
        config = TrainerConfig(epochs=args.epochs, batch_size=data.batch_size, seed=trainer_seed,
                               checkpoint_every=args.checkpoint_every, jit=not args.no_jit,
                               quiet=args.quiet or progress is not None or not root, description=LABELS[approach])
        mixing = None if optimizer.centralized else args.mixing
        links = None if optimizer.centralized else common_cli.link_setup(args, args.mixing)  # a server: perfect links
        p.backend.reset_counters()  # this approach's wire counts only (a group run reuses the backend)
        with TrainingBatches(data, dtype, mixing, args.mixing_beta, args.prefetch) as batches:
            trainer = Trainer(task, optimizer, lr, RandomGraphs(batches.draw, same_shapes=True), config, run,
                              extra_summary={"optimizer": approach, "label": LABELS[approach], **reference},
                              links=links)
            result = trainer.run(resume=p.resume, on_epoch=progress, on_resumed=on_resumed)
    summary = with_mbps({**result.summary, "initial_test_sum_rate": result.rows[0]["test_sum_rate"]},
                        info["bandwidth_hz"])
    uwmmse_powers = task.powers(result.theta) if args.save_powers else None  # collective under MPI
    if root:
        run.write_summary(summary)
        _plot(run.path / "learning_curve.png", {f"{LABELS[approach]} test": _curve(result.rows, "test_sum_rate"),
                                                f"{LABELS[approach]} train": _curve(result.rows, "train_sum_rate")},
              reference, title=f"{LABELS[approach]}: UWMMSE power allocation")
        if uwmmse_powers is not None:
            atomic_savez(run.path / "test_powers.npz", uwmmse=uwmmse_powers, **powers)
    return summary


def _curve(rows, name):
    return [float(r["epoch"]) for r in rows], [float(r[name]) for r in rows]


def _plot(path: Path, curves: dict, reference: dict, title: str) -> None:
    """Sum-rate in Mbps against epochs, with the WMMSE baselines as horizontal lines (Fig. 2b)."""
    from apps.common.plots import plot_curves

    scale = reference["bandwidth_hz"] / 1e6
    epochs = sorted({x for xs, _ in curves.values() for x in xs})
    span = [epochs[0], epochs[-1]] if len(epochs) > 1 else [0.0, 1.0]
    lines = {label: ([x for x in xs], [y * scale for y in ys]) for label, (xs, ys) in curves.items()}
    lines[f"WMMSE ({reference['wmmse_iterations']} it.)"] = (span, [reference["wmmse_test_sum_rate"] * scale] * 2)
    lines[f"WMMSE-Tr ({reference['wmmse_tr_iterations']} it.)"] = (span,
                                                                   [reference["wmmse_tr_test_sum_rate"] * scale] * 2)
    plot_curves(path, lines, xlabel="epoch", ylabel="sum-rate (Mbps)", title=title)


def print_table(summaries: dict[str, dict], reference: dict, out: Path) -> None:
    scale = reference["bandwidth_hz"] / 1e6
    print(f"{'approach':<12}{'final test':>12}{'best test':>11}{'best epoch':>12}{'rounds/batch':>14}{'wall s':>9}"
          "   (sum-rate in bit/s/Hz)")
    for approach, s in summaries.items():
        print(f"{LABELS[approach]:<12}{s['final_test_sum_rate']:>12.3f}{s['best_test_sum_rate']:>11.3f}"
              f"{s['best_epoch']:>12}{s['mp_rounds_per_batch']:>14}{s['wall_s']:>9.1f}")
    for name, label in (("wmmse", "WMMSE"), ("wmmse_tr", "WMMSE-Tr")):
        rate = reference[f"{name}_test_sum_rate"]
        print(f"{label:<12}{rate:>12.3f}   ({rate * scale:.2f} Mbps, {reference[f'{name}_iterations']} iterations)")
    print(f"run directory: {out}")


def main(argv: list[str] | None = None) -> int:
    """Parse, validate, train; returns the exit status (2: bad input, 1: unreadable data, 130: interrupted)."""
    global WORLD
    WORLD = start_world()  # the ranks of mpiexec (an exception on any rank ends the job), or this process
    # DatasetError mid-run: only with --no-verify, a batch that fails its checks
    return run_on_world(WORLD, PROG, argv, parse_args, plan, execute, lambda result, p: print_table(*result, p.out),
                        failures=(DatasetError,))
