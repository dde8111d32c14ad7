"""Link-scheduling experiment (Fig. 2c): flags, validation, data, and one training run per optimizer.

``main(argv)`` parses and validates every flag and reads (or, with ``--generate``, writes) the
conflict-graph dataset *before* creating a run directory: bad input prints one error line on stderr,
exits with status 2 and writes nothing. Each optimizer is then trained by :class:`core.trainer.Trainer`
on :class:`apps.link_scheduling.task.LinkSchedulingTask` into its run directory (docs/design.md, section 5).

Modes:

- ``algorithm1`` (default): Algorithm 1 as docs/design.md, section 9 states it. A mini-batch is one training
  graph drawn at random with B weight samples on it; one actor update and one critic update per
  mini-batch. Each trainer epoch is one mini-batch, so metrics.csv has a row per mini-batch and its
  ``epoch`` column is the mini-batch count of Fig. 2c's x-axis (``step`` counts updates).
- ``authors``: the paper authors' published loop, which Fig. 2c plots: a "mini-batch" is B samples,
  *each on its own graph*; all B gradients of actor and critic are taken at the parameters of the
  start of the mini-batch and applied as B sequential updates in a random order, with the authors'
  step sizes (actor 5e-5, critic 1e-4) and 55 mini-batches (:mod:`apps.link_scheduling.authors`,
  batched: one trainer step per mini-batch, so ``step`` counts mini-batches). D-Adam there is what the
  authors ran for their distributed curve: per-sample gradient consensus (K = 1) and Adam per node.
  Three departures from the authors' code, each a default of this mode with a flag to undo it:
  the initial actor's output is scaled to a mean of 1 (the same policy), the first mini-batch trains
  only the critic (``--critic-warmup``), and the critic sees z~ divided by its node mean
  (``--critic-input scale-free``). Without the first two, for some seeds (0 and 3 of 0-5) the
  untrained critic's gradient drove the actor's output ReLU to 0 on 80-100% of the nodes within 300
  updates, where it gets no gradient again: the test ratio stayed at 0.63-0.84, below the untrained
  0.98 (the 0.835 of D-Adam in issue 6). With them but the authors' critic input, at alpha = 5e-5 over
  55 mini-batches (paper data, seeds 0/1/2, final test ratio; untrained 0.979/1.035/0.982): C-Adam
  1.006/1.024/1.019, D-Adam 0.989/1.011/0.990, the curves swinging by +-0.03 between mini-batches
  while z's mean grew to 10-22 (alpha = 1e-4: 1.004 and 0.997 at seed 0). LGS only compares z w,
  but the authors' critic input is not scale-free, and the actor chased the critic's response to the
  scale of z. With the scale-free input (seeds 0/1/2): C-Adam 1.050/1.040/1.038, D-Adam
  1.020/1.018/1.016, the curves climbing without the swings (published: 1.063, 1.042, untrained
  0.984); seed 1's untrained actor (1.035) was already better than its trained D-Adam.

MPI (docs/design.md, section 11): ``mpiexec -n P python -m apps.link_scheduling --backend mpi`` splits the
vertices over the P ranks by vertex index (``--partition``, contiguous blocks by default: the conflict graphs
are Erdos-Renyi, so vertex ids carry no locality and every balanced split cuts the same share of a drawn
graph's edges in expectation, while the union of the training graphs, which METIS would partition, is nearly
complete at the paper's sizes). Every rank reads the dataset (``--generate`` writes it on rank 0 first); the
actor is distributed (each rank runs its vertices' forward and backward passes and parameter copies,
exchanging along the edges of the graph drawn for the mini-batch), the critic and the LGS measurements run at
the server on rank 0 (apps/link_scheduling/task.py says what is sent to it and back). Rank 0 alone chooses,
claims and writes the run directory (config.json records the backend, P, the partition and its edge cut on
the union of the graphs and on the training graphs; summary.json the bytes and messages each rank sent per
mini-batch next to the logical counts, which equal the in-process ones) and prints. Checkpoints hold every
vertex's rows and the critic, so a run resumes under any P, or in-process. ``--mode authors`` is refused
under MPI (its replay mixes with dense per-sample matrices inside the optimizer, not through exchanges).

With one update per mini-batch the authors' 55 mini-batches at alpha = 5e-5 move the actor by about
55 alpha, i.e. not at all; the defaults of ``algorithm1`` (``ALGORITHM1``) are the step sizes and the
number of mini-batches that make that mode learn (measured in the report of issue 6). The critic must
learn first: until it does, its gradient pushes the actor towards structural patterns of z that LGS
turns into worse schedules, and the test ratio dips before it rises above 1. With the critic at 1e-3
and the actor at 1e-4, C-Adam dipped to 0.70 and needed ~150 mini-batches to recover; with the critic
at 3e-3 the dip stays above 0.95 and the ratio passes 1 within ~50 mini-batches.

D-Adam is DADAM by default, as in every app; ``--d-adam-variant authors`` selects the authors' variant
(bias-corrected local Adam, docs/design.md, section 3), the optimizer behind the distributed curve of
Fig. 2c, which ``python -m apps.figures`` runs (and the only D-Adam of ``--mode authors``). The design's
DADAM has no bias correction, so its first ~100 steps are 3-6 times an Adam step; here they push the
actor, which early on follows a critic that has not learnt yet, into a dip (test ratio ~0.8) it had not
left after 300 mini-batches, while the authors' variant recovered like C-Adam.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from pathlib import Path

from apps.common import cli as common_cli
from apps.common.backend import check_backend_flags, check_ranks, on_root, run_on_world, say_notes, start_world
from apps.common.backend import make_backend as shared_make_backend
from apps.common.main import World, logged_progress, write_run_config
from core.parallel import default_workers
from datasets import cli
from datasets.conflict_graphs import ConflictGraphDataset, ConflictGraphsConfig
from datasets.storage import DatasetError

APP = "link_scheduling"
PROG = cli.program_name("python -m apps.link_scheduling")  # or the console script's name (fdtrain-...)
OPTIMIZERS = common_cli.PAPER_OPTIMIZERS + common_cli.EXTRA_OPTIMIZERS
LABELS = common_cli.LABELS
MODES = ("algorithm1", "authors")
# Mode defaults for the flags left unset: actor alpha, critic alpha, mini-batches.
ALGORITHM1 = {"lr": 1e-4, "critic_lr": 3e-3, "mini_batches": 500, "critic_warmup": 0, "critic_input": "authors"}
AUTHORS = {"lr": 5e-5, "critic_lr": 1e-4, "mini_batches": 55, "critic_warmup": 1, "critic_input": "scale-free"}
DATASET_FLAGS = ("vertices", "min_degree", "max_degree", "train_graphs", "test_graphs", "test_samples")
# Quick: the paper's 500 training graphs and each mode's mini-batches (ALGORITHM1, AUTHORS), on a test set of
# 20 graphs x 50 samples instead of 50 x 100, whose evaluation after every mini-batch is most of a paper run's
# time. Test ratios at seeds 0/1/2: algorithm1 C-Adam 1.036/1.036/1.032, D-Adam (authors' variant)
# 1.010/1.009/1.004; authors C-Adam 1.045/1.031/1.021, D-Adam 1.004/1.011/1.016. Fewer training graphs or
# more mini-batches lose the authors' loop: with 40 graphs and 200 mini-batches (20 000 updates) its D-Adam
# peaked at 1.014 after 9 mini-batches and ended at 0.96. A new file name: a quick dataset of earlier
# settings stays valid for the runs made on it.
PRESETS = {
    "paper": {"data": Path("data/conflict_graphs.h5")},  # the defaults are the paper-scale settings
    "quick": {"data": Path("data/conflict_graphs_small_test.h5"), "test_graphs": 20, "test_samples": 50},
}
WORLD: World = World()
"""The processes of this run (set by :func:`main`: the ranks of mpiexec, or this process alone)."""


def build_parser() -> argparse.ArgumentParser:
    parser = cli.OneLineErrorParser(
        prog=PROG, formatter_class=cli.HelpFormatter,
        description="Train the GCNN actor of GCNN-LGS link scheduling (MWIS on conflict graphs) with a "
        "centralized twin critic, the actor centrally or fully distributed with per-node parameter copies "
        "(paper Section IV-C, Fig. 2c). Writes config.json, metrics.csv (a row per mini-batch), "
        "summary.json, checkpoint/ and learning_curve.png per optimizer.")
    data = parser.add_argument_group("data")
    data.add_argument("--data", type=Path, default=PRESETS["paper"]["data"],
                      help="conflict-graph dataset written by `python -m datasets conflict-graphs`")
    data.add_argument("--generate", action="store_true",
                      help="write the dataset to --data first if that file does not exist, with the settings "
                      "below (an existing file is used if it has these settings, else an error)")
    d = ConflictGraphsConfig()
    data.add_argument("--vertices", type=cli.positive_int, default=d.vertices, help="|V| (with --generate)")
    data.add_argument("--min-degree", type=cli.non_negative_float, default=d.min_degree,
                      help="smallest mean degree of the Erdos-Renyi graphs (with --generate)")
    data.add_argument("--max-degree", type=cli.non_negative_float, default=d.max_degree,
                      help="largest mean degree (with --generate)")
    data.add_argument("--train-graphs", type=cli.positive_int, default=d.train_graphs,
                      help="training graphs, one drawn per mini-batch (with --generate)")
    data.add_argument("--test-graphs", type=cli.positive_int, default=d.test_graphs,
                      help="test graphs, degrees spread over the range (with --generate)")
    data.add_argument("--test-samples", type=cli.positive_int, default=d.test_samples,
                      help="stored weight samples per test graph (with --generate)")
    data.add_argument("--data-seed", type=cli.non_negative_int, default=d.seed, help="dataset seed (with --generate)")
    train = parser.add_argument_group("training")
    train.add_argument("--mode", choices=MODES, default="algorithm1",
                       help="algorithm1: a graph per mini-batch, B samples on it, one update per mini-batch; "
                       "authors: the paper authors' loop, a graph per sample and one update per sample "
                       "(B updates per mini-batch)")
    train.add_argument("--optimizer", type=common_cli.optimizer_list(OPTIMIZERS), default="c-adam,d-adam",
                       help="actor optimizer(s), comma-separated, or all; "
                       "several (or any without --out) run into <out>/<optimizer>/ (the "
                       "two curves of Fig. 2c are c-adam,d-adam)")
    train.add_argument("--lr", type=cli.positive_float, default=None,
                       help=f"actor step size alpha (default {ALGORITHM1['lr']:g} with --mode algorithm1, the "
                       f"paper's {AUTHORS['lr']:g} with --mode authors)")
    train.add_argument("--critic-lr", type=cli.positive_float, default=None,
                       help=f"critic Adam step size (default {ALGORITHM1['critic_lr']:g} with --mode algorithm1, "
                       f"the paper's {AUTHORS['critic_lr']:g} with --mode authors)")
    train.add_argument("--critic-warmup", type=cli.non_negative_int, default=None,
                       help=f"mini-batches at the start in which only the critic learns (default "
                       f"{ALGORITHM1['critic_warmup']} with --mode algorithm1, {AUTHORS['critic_warmup']} with --mode "
                       "authors, whose untrained critic can otherwise drive the actor's output to 0)")
    train.add_argument("--critic-input", choices=("authors", "scale-free"), default=None,
                       help="the critic's input [1, z~] as the authors normalise it, or with z~ divided by its node "
                       f"mean first (default {ALGORITHM1['critic_input']} with --mode algorithm1, "
                       f"{AUTHORS['critic_input']} with --mode authors; see apps/link_scheduling/model.py)")
    common_cli.add_lr_schedule_arguments(train, subject="actor alpha_t", step_unit="updates")
    train.add_argument("--mini-batches", type=cli.positive_int, default=None,
                       help=f"actor updates to train, the x-axis of Fig. 2c (default {ALGORITHM1['mini_batches']} "
                       f"with --mode algorithm1, the paper's {AUTHORS['mini_batches']} with --mode authors)")
    train.add_argument("--epochs", type=cli.positive_int, default=None,
                       help="passes over the training graphs instead: E x (training graphs) / (graphs per "
                       "mini-batch: 1 with --mode algorithm1, B with --mode authors) mini-batches, rounded up "
                       "(with --mini-batches too, both must agree)")
    train.add_argument("--batch-size", type=cli.positive_int, default=100,
                       help="weight samples B per mini-batch (all on one graph with --mode algorithm1, each on its "
                       "own graph with --mode authors)")
    common_cli.add_consensus_arguments(train, graph=" on the conflict graph",
                                       d_adam_note=", which produced Fig. 2c and the only D-Adam of --mode authors; "
                                       "DADAM's large first steps push the actor into a dip here (see the module "
                                       "docstring)")
    common_cli.add_seed_dtype_preset_arguments(
        train, PRESETS, seed_help="seed of the initial actor and critic, the graph draws and every weight and noise "
        "draw", dtype_of="parameters, optimizer states and data",
        paper="the paper-scale settings (the defaults, data/conflict_graphs.h5)")
    run = common_cli.add_run_arguments(parser, APP, checkpoint_every=50, unit="mini-batches",
                                       jobs_default=default_workers(2))
    common_cli.add_backend_arguments(run)
    common_cli.add_link_arguments(parser, "the actor's neighbour exchanges (the critic is a server, the LGS a "
                                  "measurement)")
    # vertex ids of Erdos-Renyi graphs carry no locality (see the module docstring): contiguous blocks
    parser.set_defaults(partition="contiguous")
    return parser


@dataclass
class Data:
    """The dataset in memory: training and test graphs (bool (G, V, V)), test weights (G_test, S, V)."""

    path: Path
    checksum: str
    config: dict
    train_adjacency: object
    test_adjacency: object
    test_weights: object


@dataclass
class Plan:
    """A validated request (nothing written yet, except a dataset that --generate asked for)."""

    args: argparse.Namespace
    out: Path
    resume: bool
    data: Data
    resumed_config: dict | None = None
    grouped: bool = True  # each optimizer in <out>/<optimizer>/ (apps.common.main.is_grouped)
    backend: object = None  # core.backend.LocalBackend / MPIBackend, made by execute (collective under MPI)
    backend_info: dict = dataclasses.field(default_factory=dict)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Flags with the preset's and the mode's defaults, or the saved flags of the run given to --resume."""
    from apps.common.main import parse_run_flags

    args, config = parse_run_flags(build_parser(), argv, PRESETS, APP)
    args.resumed_config = config
    check_backend_flags(args, argv, WORLD)
    if args.backend == "mpi" and args.mode == "authors":
        raise ValueError("--mode authors does not run on --backend mpi: its replay mixes the per-sample gradients "
                         "with dense per-sample matrices inside the optimizer, not through the exchanges; use "
                         "--mode algorithm1")
    common_cli.check_link_arguments(args)
    if args.mode == "authors" and common_cli.links_active(args):
        raise ValueError("--mode authors runs over perfect links only: its replay mixes the per-sample gradients "
                         "inside the optimizer, outside the exchanges the link model acts on; use --mode algorithm1")
    if config is not None:
        return args
    for name, value in (AUTHORS if args.mode == "authors" else ALGORITHM1).items():
        if getattr(args, name) is None and not (name == "mini_batches" and args.epochs is not None):
            setattr(args, name, value)  # (mini-batches given as --epochs are derived once the data are read)
    return args


def derive_mini_batches(args: argparse.Namespace, num_train_graphs: int) -> None:
    """``--epochs`` -> ``args.mini_batches`` (passes over the training graphs; ValueError if
    ``--mini-batches`` says otherwise). Both are saved, so a resume replays them consistently."""
    import math

    per_mini_batch = args.batch_size if args.mode == "authors" else 1
    if args.epochs is not None:
        derived = math.ceil(args.epochs * num_train_graphs / per_mini_batch)
        if args.mini_batches is not None and args.mini_batches != derived:
            raise ValueError(f"--epochs {args.epochs} is {derived} mini-batches on {num_train_graphs} training graphs, "
                             f"not --mini-batches {args.mini_batches}; give one of the two")
        args.mini_batches = derived


def dataset_config(args: argparse.Namespace) -> ConflictGraphsConfig:
    return ConflictGraphsConfig(seed=args.data_seed, **{k: getattr(args, k) for k in DATASET_FLAGS})


def load_data(path: Path) -> Data:
    """Read and fully validate a conflict-graph dataset (content checks and checksum)."""
    with ConflictGraphDataset(path) as dataset:
        dataset.verify()
        return Data(path, dataset.checksum, dict(dataset.config),
                    dataset.read("train/adjacency", slice(None)).astype(bool),
                    dataset.read("test/adjacency", slice(None)).astype(bool),
                    dataset.read("test/weights", slice(None)))


def generate_missing(config: ConflictGraphsConfig, path: Path, quiet: bool, default: bool) -> None:
    """``--generate``: write the dataset to ``path`` unless that file exists (its folder as
    :func:`apps.common.main.prepare_data_folder` says; ``default``: ``path`` is the preset's)."""
    if path.exists():
        return
    from apps.common.main import prepare_data_folder
    from datasets.conflict_graphs import generate

    prepare_data_folder(path, default)

    generate(config, path, quiet=quiet)


GENERATION_FLAGS = tuple((name, lambda a: a.generate, "without --generate (the dataset's own settings are used)")
                         for name in ("vertices", "min_degree", "max_degree", "train_graphs", "test_graphs",
                                      "test_samples", "data_seed"))
"""The dataset flags that only --generate reads (apps.common.cli.ignored_flag_notes)."""


def plan(args: argparse.Namespace) -> Plan:
    """Validate everything and load (or generate) the data; raises ValueError with a one-line message."""
    from apps.common.main import (
        check_generated_settings,
        check_resumed_dataset,
        is_grouped,
        missing_dataset,
        resolve_out,
    )

    if not 0 < args.lr_decay_rate <= 1:
        raise ValueError(f"--lr-decay-rate must be in (0, 1], got {args.lr_decay_rate}")
    if args.mode == "authors":
        check_authors_mode_optimizers(args.optimizer, args.d_adam_variant)
    out = on_root(WORLD, lambda: resolve_out(args, APP))  # rank 0 picks (and checks) the path; every rank uses it
    check_memory(args)
    path = args.data
    if args.generate and args.resume is None:
        config = dataset_config(args)  # ValueError naming the flag
        if not path.exists():  # P > |V| is refused before anything is written
            check_ranks(args, WORLD, config.vertices, PROG, f"conflict graphs of {config.vertices} vertices")
        default = "data" not in getattr(args, "given_flags", {})  # the preset's file
        on_root(WORLD, lambda: generate_missing(config, path, args.quiet, default))  # under MPI the others wait
    elif not path.exists():
        raise missing_dataset(args, path)
    try:
        data = load_data(path)
    except DatasetError as exc:
        raise ValueError(f"--data: {exc}") from None
    if args.generate and args.resume is None:
        check_generated_settings(path, data.config, dataclasses.asdict(dataset_config(args)))
    check_resumed_dataset(args.resumed_config, data.checksum, path)
    common_cli.check_mixing_beta(args, (data.train_adjacency, data.test_adjacency))
    vertices = int(data.train_adjacency.shape[-1])
    check_ranks(args, WORLD, vertices, PROG, f"conflict graphs of {vertices} vertices")
    say_notes(args, WORLD, PROG, *common_cli.ignored_flag_notes(args, GENERATION_FLAGS))
    if args.resumed_config is None:
        derive_mini_batches(args, data.train_adjacency.shape[0])
    return Plan(args, out, args.resume is not None, data, args.resumed_config, is_grouped(args, args.optimizer))


def memory_needed(args: argparse.Namespace) -> int:
    """A lower bound of the bytes one optimizer's training needs: the actor's and critic's activations
    and their gradients for the B weight samples of a mini-batch on |V| vertices (1-32-32-1 and
    2-64-64-64-64-2 features per vertex, kept for the backward pass)."""
    itemsize = 8 if args.dtype == "float64" else 4
    features = (1 + 32 + 32 + 1) + (2 + 4 * 64 + 2)
    return args.batch_size * args.vertices * features * itemsize * 3


def check_memory(args: argparse.Namespace) -> None:
    """Refuse up front (ValueError) a run that cannot fit in memory."""
    from datasets.resources import check_fits

    jobs = min(args.jobs, len(args.optimizer))
    check_fits(jobs * memory_needed(args), f"--batch-size {args.batch_size} on {args.vertices} vertices "
               f"({jobs} optimizer(s) side by side)")


def run_config(p: Plan, optimizer: str) -> dict:
    """What config.json records: every flag, the optimizer and mode, and the data set."""
    from apps.common.main import recorded_flags

    flags = recorded_flags(p.args)
    return {
        "app": APP, "optimizer": optimizer, "label": LABELS.get(optimizer, optimizer), "flags": flags,
        "seed": p.args.seed, "mode": p.args.mode,
        "optimizer_mode": {"mixing": p.args.mixing,
                           "mixing_beta": p.args.mixing_beta if p.args.mixing == "laplacian" else None,
                           "d_adam_variant": p.args.d_adam_variant},
        "dataset": {"path": str(Path(p.data.path).resolve()), "checksum": p.data.checksum, "config": p.data.config},
        "backend": p.backend_info or {"backend": "local", "ranks": 1},
    }


AUTHORS_MODE_OPTIMIZERS = ("c-sgd", "c-adam", "d-naive", "d-adam")


def check_authors_mode_optimizers(optimizers, d_adam_variant: str) -> None:
    """The authors' mode replays B per-sample steps, each sample on its own graph: only optimizers whose
    messages the simulator's schedules describe there can run in it (centralized ones, per-sample
    gradient consensus, and the authors' D-Adam, which is per-sample gradient consensus + Adam).
    Parameter mixing (eq. 17) would mix once per replayed step, and a per-batch gradient consensus
    (D-naive-PB) cannot mix gradients of B different graphs at once."""
    for name in optimizers:
        if name not in AUTHORS_MODE_OPTIMIZERS or (name == "d-adam" and d_adam_variant != "authors"):
            raise ValueError(f"--optimizer {name}{' --d-adam-variant paper' if name == 'd-adam' else ''} does not "
                             f"run in --mode authors, which replays per-sample steps on per-sample graphs (choose "
                             f"from {', '.join(AUTHORS_MODE_OPTIMIZERS)}, D-Adam in the authors' variant), or use "
                             "--mode algorithm1")


def make_actor_optimizer(name: str, mode: str, consensus_rounds: int = 1, d_adam_variant: str = "authors"):
    """The actor's optimizer. Algorithm 1 mode: ``name`` from :func:`core.optimizers.make_optimizer`
    (D-Adam in the authors' bias-corrected variant unless ``d_adam_variant="paper"``). Authors' mode:
    wrapped in :class:`apps.link_scheduling.authors.Replay`; there D-Adam with the authors' variant is
    what their Fig. 2c code runs, per-sample gradient consensus then Adam
    (:class:`apps.link_scheduling.authors.ConsensusAdam`)."""
    from apps.link_scheduling.authors import ConsensusAdam, Replay
    from core.optimizers import make_optimizer

    authors_variant = d_adam_variant == "authors"
    if mode != "authors":
        return make_optimizer(name, consensus_rounds, authors_variant=authors_variant)
    if name == "d-adam" and authors_variant:
        return Replay(ConsensusAdam(consensus_rounds))
    return Replay(make_optimizer(name, consensus_rounds))


def make_backend(p: Plan):
    """The backend of the run and what config.json records of it (collective under MPI: the partition of the
    union of the training and test graphs' edges is computed on rank 0 and broadcast, the exchanges'
    communicators are created on every rank). Under MPI the record adds the mean edge cut of the training
    graphs, the edges a mini-batch's exchanges really cross."""
    import numpy as np

    def union():
        from apps.link_scheduling.task import union_graph

        return [union_graph(p.data.train_adjacency, p.data.test_adjacency)]

    # no XLA auto-clustering: the actor's operators change shape with every drawn graph, and each new shape
    # compiles the step's clusters anew (measured: 40 mini-batches under -n 2 train in 19.3 s with it, 3.7 s
    # without)
    backend, info = shared_make_backend(p.args, WORLD, int(p.data.train_adjacency.shape[-1]), union,
                                        autocluster=False)
    if backend.distributed:
        owner, adjacency = backend.owner, p.data.train_adjacency
        cut = adjacency & (owner[:, None] != owner[None, :])
        info["training_graphs_mean_edges"] = float(adjacency.sum() / 2 / len(adjacency))
        info["training_graphs_mean_edge_cut"] = float(cut.sum() / 2 / len(adjacency))
        info["training_graphs_edge_cut_share"] = float(np.sum(cut) / max(np.sum(adjacency), 1))
    return backend, info


def execute(p: Plan) -> dict[str, dict]:
    """Train every optimizer of the plan; returns their summaries by optimizer."""
    from apps.common.main import raise_if_diverged
    from apps.common.plots import plot_curves
    from core.parallel import run_jobs
    from core.runs import RunDir, atomic_write_json

    args = p.args
    p.backend, p.backend_info = make_backend(p)
    root = WORLD.is_root  # under MPI only rank 0 writes; every rank trains
    parent = RunDir(p.out) if p.grouped and root else None
    if parent is not None and not p.resume:
        parent.write_config({**run_config(p, ",".join(args.optimizer)), "grouped": True})
    jobs = {name: (p, name) for name in args.optimizer}
    summaries = run_jobs(train_job, jobs, min(args.jobs, len(jobs)), total=len(jobs) * args.mini_batches,
                         desc="link scheduling", quiet=args.quiet or not root, unit="mini-batch", threads=args.threads,
                         initial=logged_progress(p.out, jobs) if p.resume else None)
    if parent is not None:
        atomic_write_json(parent.summary_path, summaries)
        curves = {}
        for name in args.optimizer:
            rows = RunDir(p.out / name, create=False).read_metrics()
            curves[LABELS[name]] = ([float(r["epoch"]) for r in rows], [float(r["test_ratio"]) for r in rows])
        plot_curves(p.out / "test_ratio_vs_minibatch.png", curves, xlabel="mini-batch", ylabel="test utility ratio",
                    title=f"Link scheduling ({args.mode})")
    raise_if_diverged(summaries, LABELS)
    return summaries


def train_job(p: Plan, name: str, progress=None) -> dict:
    """Train optimizer ``name`` into its run directory (resuming if asked); returns its summary.

    ``progress``: a :mod:`core.parallel` progress report (None: the trainer's own progress bar).
    """
    from apps.common.main import train_in_run

    # under MPI only rank 0 touches the run directory (run is None on the others); every rank trains
    return train_in_run(p, name, ["learning_curve.png"], lambda run: train_optimizer(
        p, name, run, None if run is None else run.path / "learning_curve.png", progress), world=WORLD)


def train_optimizer(p: Plan, name: str, run, plot: Path | None, progress=None) -> dict:
    """Train the actor with optimizer ``name`` into ``run`` (resuming if asked) and draw its curve (``run``
    and ``plot`` are None on the ranks other than 0 under MPI)."""
    import tensorflow as tf

    from apps.common.plots import plot_curves
    from apps.link_scheduling.authors import AuthorsTask
    from apps.link_scheduling.task import LinkSchedulingTask
    from core.optimizers import LearningRate
    from core.trainer import RandomGraphs, Trainer, TrainerConfig

    args, data = p.args, p.data
    on_resumed = write_run_config(run, run_config(p, name)) if run is not None else None
    if p.backend is not None and p.backend.distributed:  # this optimizer's bytes only (the backend serves them all)
        p.backend.transport.counters.reset()
    # authors: a trainer step is one mini-batch of B samples on B graphs, replayed as B updates
    task = (AuthorsTask if args.mode == "authors" else LinkSchedulingTask)(
        data.train_adjacency, data.test_adjacency, data.test_weights, batch_size=args.batch_size,
        critic_lr=args.critic_lr, seed=args.seed, dtype=tf.as_dtype(args.dtype), mixing=args.mixing,
        mixing_beta=args.mixing_beta, num_train=args.batch_size,
        critic_warmup=getattr(args, "critic_warmup", None) or 0,
        scale_free_critic=getattr(args, "critic_input", "authors") == "scale-free", backend=p.backend)
    optimizer = make_actor_optimizer(name, args.mode, args.consensus_rounds, args.d_adam_variant)
    lr = LearningRate(args.lr, args.lr_schedule, args.lr_decay_rate, args.lr_decay_steps)
    config = TrainerConfig(epochs=args.mini_batches, batch_size=args.batch_size,
                           seed=args.seed, checkpoint_every=args.checkpoint_every, jit=False,
                           quiet=args.quiet or progress is not None or not WORLD.is_root, description=LABELS[name],
                           unit="mini-batch")
    untrained = float(task.evaluate(task.initial_theta(), None, "test")["test_ratio"])
    links = None if optimizer.centralized else common_cli.link_setup(args, args.mixing)  # a server: perfect links
    trainer = Trainer(task, optimizer, lr, RandomGraphs(task.draw_graph), config, run, links=links,
                      extra_summary={"optimizer": name, "label": LABELS[name], "mode": args.mode,
                                     "untrained_test_ratio": untrained})
    result = trainer.run(resume=p.resume, on_epoch=progress, on_resumed=on_resumed)
    if plot is None:
        return result.summary
    rows = result.rows
    x = [r["epoch"] for r in rows]
    plot_curves(plot, {"test": (x, [r["test_ratio"] for r in rows]), "train": (x, [r["train_ratio"] for r in rows]),
                       "LGS": (x, [1.0] * len(x))},
                xlabel="mini-batch", ylabel="utility ratio GCNN-LGS / LGS",
                title=f"{LABELS[name]} ({args.mode}): link scheduling")
    return result.summary


def print_table(summaries: dict[str, dict], out: Path) -> None:
    print(f"{'optimizer':<11}{'untrained':>10}{'final test':>12}{'best test':>11}{'best at':>9}{'rounds/step':>13}"
          f"{'s/mini-batch':>14}")
    for name, s in summaries.items():
        per_batch = s["wall_s"] / max(s["epochs"], 1)
        print(f"{LABELS[name]:<11}{s['untrained_test_ratio']:>10.4f}{s['final_test_ratio']:>12.4f}"
              f"{s['best_test_ratio']:>11.4f}{s['best_epoch']:>9}{s['mp_rounds_per_batch']:>13}{per_batch:>14.3f}")
    print(f"run directory: {out}")


def main(argv: list[str] | None = None) -> int:
    """Parse, validate, train; returns the exit status (2: bad input, 130: interrupted)."""
    global WORLD
    WORLD = start_world()  # the ranks of mpiexec (an exception on any rank ends the job), or this process
    return run_on_world(WORLD, PROG, argv, parse_args, plan, execute,
                        lambda summaries, p: print_table(summaries, p.out))
