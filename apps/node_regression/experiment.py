"""Node-regression experiment (Fig. 2a): flags, validation, data, and one training run per approach.

``main(argv)`` parses and validates every flag *before* creating anything (bad input: one error line
on stderr, exit status 2, nothing written), then trains each requested approach with
:class:`core.trainer.Trainer` into its run directory (docs/design.md, section 5). ``--optimizer all`` trains
the seven approaches of Fig. 2a into ``<out>/<approach>/`` and draws their test MSE against
message-passing rounds into ``<out>/test_mse_vs_rounds.png``.

MPI (docs/design.md, section 11): ``mpiexec -n P python -m apps.node_regression --backend mpi`` splits the
graph's nodes over the P ranks (``--partition``); every rank generates the data from the global seed and
keeps its nodes' columns ``x[:, owned]``, and trains them, exchanging with the other ranks over MPI. Rank 0
alone chooses, claims and writes the run directory (config.json records the backend, P, the partition and
its edge cut; summary.json the bytes and messages each rank sent per mini-batch, next to the logical
counts, which equal the in-process ones) and prints; the other ranks are silent. Checkpoints hold every
node's rows, so a run resumes under any P, or in-process. Started without mpiexec, ``--backend mpi`` runs
with P = 1 (and says so); under mpiexec with P > 1, ``--backend local`` is refused.

Seeds: ``--data-seed`` is the seed of the data generated in memory (equal to ``python -m datasets
node-regression --data-seed`` with the same flags); ``--seed`` is the training seed: the student's
initial parameters and the shuffling use streams derived from it, the same for every approach.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from apps.common import cli as common_cli
from apps.common.backend import check_backend_flags, check_ranks, on_root, run_on_world, say_notes, start_world
from apps.common.backend import make_backend as shared_make_backend
from apps.common.main import World, logged_progress, write_run_config
from core.parallel import default_workers
from datasets import cli
from datasets import node_regression as nr
from datasets.storage import DatasetError

APP = "node_regression"
PROG = cli.program_name("python -m apps.node_regression")  # or the console script's name (fdtrain-...)
APPROACHES = common_cli.PAPER_OPTIMIZERS + common_cli.EXTRA_OPTIMIZERS
LABELS = common_cli.LABELS
ACTIVATIONS = ("sigmoid", "relu", "leaky_relu", "tanh", "identity")
PRESETS = {
    "paper": {},  # the defaults are the paper's settings
    "quick": {"epochs": 60, "train_samples": 200, "batch_size": 20, "checkpoint_every": 20},
}
WORLD: World = World()
"""The processes of this run (set by :func:`main`: the ranks of mpiexec, or this process alone)."""


def build_parser() -> argparse.ArgumentParser:
    parser = cli.OneLineErrorParser(
        prog=PROG, formatter_class=cli.HelpFormatter,
        description="Train a GCNN student to regress the node labels of a teacher GCNN on a fixed "
        "Barabasi-Albert graph, centrally or fully distributed (paper Section IV-A, Fig. 2a). Defaults are "
        "the paper's settings. Writes config.json, metrics.csv (one row per epoch), summary.json, "
        "checkpoint/ and a PNG per approach.")
    data = parser.add_argument_group("data (ignored with --data, whose stored settings are used)")
    nr.add_arguments(data)
    data.add_argument("--data-seed", type=cli.non_negative_int, default=0,
                      help="seed of the data generated in memory (equal to `python -m datasets node-regression "
                      "--data-seed`); a --data file keeps its own")
    data.add_argument("--data", type=Path, default=None,
                      help="read the data written by `python -m datasets node-regression` instead of "
                      "generating them in memory")
    model = parser.add_argument_group("student GCNN")
    model.add_argument("--hidden", type=nr.int_list, default="10",
                       help="hidden widths of the student, comma-separated (input g_0, output 1, no bias)")
    model.add_argument("--activation", choices=ACTIVATIONS, default="sigmoid",
                       help="activation after every student layer")
    model.add_argument("--init", choices=("uniform", "glorot"), default="uniform",
                       help="initial entries: init-scale * U(0, 1) (the paper's), or Glorot-uniform")
    model.add_argument("--init-scale", type=cli.positive_float, default=1.0, help="scale of the uniform init")
    train = parser.add_argument_group("training")
    train.add_argument("--optimizer", type=common_cli.optimizer_list(APPROACHES), default="all",
                       help="approach(es) to train: one name, several separated by commas (each into "
                       "<out>/<approach>/, as is one without --out), or all: the seven of Fig. 2a ("
                       + " ".join(common_cli.PAPER_OPTIMIZERS)
                       + "); also " + ", ".join(common_cli.EXTRA_OPTIMIZERS) + " by name")
    train.add_argument("--lr", type=cli.positive_float, default=1e-3, help="learning rate alpha")
    common_cli.add_lr_schedule_arguments(train)
    train.add_argument("--epochs", type=cli.positive_int, default=1000, help="passes over the training set")
    train.add_argument("--batch-size", type=cli.positive_int, default=100, help="samples per mini-batch B")
    common_cli.add_consensus_arguments(train)
    common_cli.add_seed_dtype_preset_arguments(
        train, PRESETS, seed_help="training seed: the student's initial parameters and the shuffling derive from it "
        "(never the data)",
        dtype_of="data, parameters and optimizer state (float32 runs about twice as fast as float64 on a CPU; "
        "the paper authors used float64)")
    run = common_cli.add_run_arguments(parser, APP, checkpoint_every=50,
                                       jobs_default=default_workers(len(common_cli.PAPER_OPTIMIZERS)))
    run.add_argument("--no-jit", action="store_true", help="do not XLA-compile the training epoch")
    run.add_argument("--kernel", choices=("auto", "xla", "csr"), default="auto",
                     help="how the exchanges of training run in-process: xla (gather + segment sum inside the "
                          "XLA-compiled epoch), csr (CSR sparse-dense products, TensorFlow's CPU kernel, the epoch "
                          "then not XLA-compiled: about 1.6x faster from 10^3 nodes, slower at 10^2), auto (csr "
                          "from 1000 nodes over perfect links, else xla); docs/design.md, section 2")
    common_cli.add_backend_arguments(run)
    common_cli.add_link_arguments(parser)
    return parser


@dataclass
class Plan:
    """A validated request: settings, approaches, output folder and data (nothing written yet)."""

    args: argparse.Namespace
    approaches: tuple[str, ...]
    out: Path
    resume: bool
    data: nr.NodeRegressionData
    dataset: dict = field(default_factory=dict)
    resumed_config: dict | None = None
    grouped: bool = True  # each approach in <out>/<approach>/ (apps.common.main.is_grouped)
    backend: object = None  # core.backend.LocalBackend / MPIBackend, made by execute (collective under MPI)
    backend_info: dict = field(default_factory=dict)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Flags with the preset's values as defaults, or the saved flags of the run given to --resume (its
    config.json is kept in ``args.resumed_config``)."""
    from apps.common.main import parse_run_flags

    args, config = parse_run_flags(build_parser(), argv, PRESETS, APP)
    if config is not None and "data_seed" not in config["flags"]:
        args.data_seed = args.seed  # saved before --data-seed existed, when --seed was the data seed too
    args.resumed_config = config
    check_backend_flags(args, argv, WORLD)
    common_cli.check_link_arguments(args)
    if args.kernel == "csr" and (args.backend == "mpi" or common_cli.links_active(args)):
        raise ValueError("--kernel csr runs in-process exchanges over perfect links: not with --backend mpi or "
                         "imperfect links (use --kernel auto)")
    return args


UNREAD_FLAGS = (
    *((name, lambda a: a.data is None, "with --data (the file's own settings are used)")
      for name in [f.name for f in dataclasses.fields(nr.NodeRegressionConfig) if f.name != "seed"] + ["data_seed"]),
    ("graph_m", lambda a: a.data is not None or a.graph == "ba", "without --graph ba"),  # (--data: said above)
    ("graph_p", lambda a: a.data is not None or a.graph == "er", "without --graph er"),
    ("init_scale", lambda a: a.init == "uniform", "with --init glorot"),
)
"""App A's flags that a --data file, the other graph model or the other initialisation leaves unread
(apps.common.cli.ignored_flag_notes)."""


def load_data(args: argparse.Namespace) -> tuple[nr.NodeRegressionData, dict]:
    """The data of ``--data``, or generated in memory from the data flags; and their provenance."""
    if args.data is not None:
        try:
            with nr.NodeRegressionDataset(args.data) as reader:
                reader.verify()  # every row and the checksum: a flipped byte must not train silently
                data, checksum = reader.load(), reader.checksum
        except DatasetError as exc:
            raise ValueError(f"--data: {exc}") from None
        except OSError as exc:
            raise ValueError(f"--data: {args.data}: {exc.strerror or exc}") from None
        dataset = {"path": str(Path(args.data).resolve()), "checksum": checksum}
    else:
        data = nr.generate_arrays(nr.NodeRegressionConfig.from_dict({**vars(args), "seed": args.data_seed}))
        digest = hashlib.sha256(b"".join(a.tobytes() for a in data[:6])).hexdigest()
        dataset = {"path": None, "checksum": f"sha256:{digest}", "generated": "in memory"}
    dataset["config"] = {**vars(data.config), "teacher_hidden": list(data.config.teacher_hidden)}
    return data, dataset


def plan(args: argparse.Namespace) -> Plan:
    """Validate everything and load (or generate) the data; raises ValueError with a one-line message."""
    from apps.common.main import check_resumed_dataset, is_grouped, resolve_out

    out = on_root(WORLD, lambda: resolve_out(args, APP))  # rank 0 picks (and checks) the path; every rank uses it
    check_memory(args)  # before generating the data in memory
    data, dataset = load_data(args)
    if args.data is not None:  # the file's sizes, not the flags'
        check_memory(argparse.Namespace(**{**vars(args), **dataset["config"]}))
    check_resumed_dataset(args.resumed_config, dataset["checksum"], args.data or "(generated in memory)")
    num_train = data.x_train.shape[0]
    if args.batch_size > num_train:
        raise ValueError(f"--batch-size {args.batch_size} is larger than the training set ({num_train} samples)")
    if not 0 < args.lr_decay_rate <= 1:
        raise ValueError(f"--lr-decay-rate must be in (0, 1], got {args.lr_decay_rate}")
    common_cli.check_mixing_beta(args, [data.adjacency])
    nodes = int(data.adjacency.shape[0])
    check_ranks(args, WORLD, nodes, PROG, f"a graph of {nodes} nodes")
    from core.graph import Graph

    graph = Graph.from_dense(data.adjacency)
    sizes = graph.component_sizes()
    dataset["graph"] = {"nodes": nodes, "edges": int((graph.senders < graph.receivers).sum()),
                        "components": int(sizes.size), "largest_component": int(sizes[0])}
    say_notes(args, WORLD, PROG, common_cli.disconnected_graph_note(sizes, args.optimizer),
              *common_cli.ignored_flag_notes(args, UNREAD_FLAGS))
    return Plan(args, tuple(args.optimizer), out, args.resume is not None, data, dataset, args.resumed_config,
                is_grouped(args, args.optimizer))



def memory_needed(args: argparse.Namespace, jobs: int = 1) -> int:
    """A lower bound of the bytes a run needs: the graph (stored and generated as a dense |V| x |V|
    adjacency, with a float64 shift built from it), the data generated in memory (float64, plus its copy
    in --dtype), and per approach trained side by side the per-node parameter copies with their
    optimizer state and the activations of one mini-batch."""
    itemsize = 8 if args.dtype == "float64" else 4
    nodes, width_in = args.nodes, args.input_dim
    samples = args.train_samples + args.test_samples
    data = 0 if args.data is not None else samples * nodes * (width_in + 1 + max(args.teacher_hidden)) * (8 + itemsize)
    widths = (width_in, *args.hidden, 1)
    params = sum(2 * a * b for a, b in zip(widths[:-1], widths[1:]))
    per_job = nodes * params * itemsize * 5 + args.batch_size * nodes * sum(widths) * itemsize * 4
    dense_graph = nodes * nodes * (1 + 8)
    return dense_graph + data + jobs * (per_job + samples * nodes * (width_in + 1) * itemsize)


def check_memory(args: argparse.Namespace) -> None:
    """Refuse up front (ValueError) a run that cannot fit in memory."""
    from datasets.resources import check_fits

    jobs = min(args.jobs, len(args.optimizer))
    check_fits(memory_needed(args, jobs), f"this run ({len(args.optimizer)} approach(es), {jobs} side by side)")


def run_config(p: Plan, approach: str) -> dict:
    """What config.json records: every flag, the approach, the optimizer mode and the data set."""
    from apps.common.main import recorded_flags

    flags = recorded_flags(p.args)
    return {
        "app": APP, "optimizer": approach, "label": LABELS.get(approach, approach), "flags": flags, "seed": p.args.seed,
        "mode": {"mixing": p.args.mixing, "mixing_beta": p.args.mixing_beta if p.args.mixing == "laplacian" else None,
                 "d_adam_variant": p.args.d_adam_variant},
        "dataset": p.dataset,
        "backend": p.backend_info or {"backend": "local", "ranks": 1},
    }


def seeds(seed: int) -> tuple[int, int]:
    """(student init seed, shuffling seed), derived from --seed (its first stream is the data's)."""
    import numpy as np

    init, shuffle = np.random.SeedSequence(seed).spawn(3)[1:]
    return int(init.generate_state(1)[0]), int(shuffle.generate_state(1)[0])


def graph_operators(args: argparse.Namespace, data: nr.NodeRegressionData):
    """The global shift S and mixing matrix W (NumPy :class:`core.graph.SparseOperator`)."""
    from core.graph import Graph

    graph = Graph.from_dense(data.adjacency)
    return graph.shift_operator(data.config.shift), graph.mixing_matrix(args.mixing, args.mixing_beta)


def make_backend(args: argparse.Namespace, data: nr.NodeRegressionData):
    """The backend of the run and what config.json records of it (collective under MPI: the partition of S
    and W is computed on rank 0 and broadcast, the exchanges' communicators are created on every rank)."""
    return shared_make_backend(args, WORLD, int(data.adjacency.shape[0]), lambda: list(graph_operators(args, data)))


def build_task(args: argparse.Namespace, data: nr.NodeRegressionData, backend=None):
    """The student task (a :class:`core.supervised.SupervisedGCNN`) and the fixed graph with S and W; with an
    MPI backend, this rank's nodes of the data and its views of S and W."""
    import tensorflow as tf

    from core.gcnn import GCNN
    from core.ops import to_operator
    from core.replicas import flatten
    from core.supervised import SupervisedGCNN
    from core.trainer import FixedGraph, GraphOps

    dtype = tf.as_dtype(args.dtype)
    shift, mixing = graph_operators(args, data)
    gcnn = GCNN((data.x_train.shape[-1], *args.hidden, 1), args.activation, bias=False)
    theta0 = flatten(gcnn.init_params(seeds(args.seed)[0], args.init, dtype, args.init_scale))
    if backend is not None and backend.distributed:
        cut = backend.local_rows  # this rank's nodes: x[:, owned]
        task = SupervisedGCNN(gcnn, theta0, cut(data.x_train, 1), cut(data.y_train, 1), cut(data.x_test, 1),
                              cut(data.y_test, 1), dtype, backend=backend)
        ops = backend.local_graph(GraphOps(to_operator(shift, dtype), to_operator(mixing, dtype)))
        return task, FixedGraph(ops)
    ops = GraphOps(to_operator(shift, dtype), to_operator(mixing, dtype))
    task = SupervisedGCNN(gcnn, theta0, data.x_train, data.y_train, data.x_test, data.y_test, dtype)
    return task, FixedGraph(ops)


def make_trainer(args: argparse.Namespace, task, graphs, approach: str, run=None):
    """The :class:`core.trainer.Trainer` of one approach (run: its RunDir, or None for no files)."""
    from core.optimizers import LearningRate, make_optimizer
    from core.trainer import Trainer, TrainerConfig

    optimizer = make_optimizer(approach, args.consensus_rounds, authors_variant=args.d_adam_variant == "authors")
    lr = LearningRate(args.lr, args.lr_schedule, args.lr_decay_rate, args.lr_decay_steps)
    config = TrainerConfig(epochs=args.epochs, batch_size=args.batch_size, seed=seeds(args.seed)[1],
                           checkpoint_every=args.checkpoint_every, jit=not args.no_jit, quiet=args.quiet,
                           description=LABELS[approach], kernel=getattr(args, "kernel", "auto"))
    links = None if optimizer.centralized else common_cli.link_setup(args, args.mixing)  # a server: perfect links
    return Trainer(task, optimizer, lr, graphs, config, run, links=links,
                   extra_summary={"optimizer": approach, "label": LABELS[approach]})


def execute(p: Plan) -> dict[str, dict]:
    """Train every approach of the plan (side by side in ``--jobs`` processes); their summaries by approach."""
    from apps.common.main import raise_if_diverged
    from apps.common.plots import plot_curves
    from core.parallel import run_jobs
    from core.runs import RunDir, atomic_write_json

    p.backend, p.backend_info = make_backend(p.args, p.data)
    root = WORLD.is_root
    parent = RunDir(p.out) if p.grouped and root else None
    if parent is not None and not p.resume:
        parent.write_config({**run_config(p, ",".join(p.approaches)), "grouped": True})
    jobs = {approach: (p, approach) for approach in p.approaches}
    summaries = run_jobs(train_approach, jobs, min(p.args.jobs, len(jobs)), total=len(jobs) * p.args.epochs,
                         desc="node regression", quiet=p.args.quiet or not root, threads=p.args.threads,
                         initial=logged_progress(p.out, jobs) if p.resume else None)
    if parent is not None:
        atomic_write_json(parent.summary_path, summaries)
        curves = {_group_label(a, summaries.get(a)): _curve(RunDir(p.out / a, create=False).read_metrics(), "test_mse")
                  for a in p.approaches}
        plot_curves(p.out / "test_mse_vs_rounds.png", curves, xlabel="message-passing rounds", ylabel="test MSE",
                    logx=True, logy=True, title="Node regression")
    raise_if_diverged(summaries, LABELS)
    return summaries


def train_approach(p: Plan, approach: str, progress=None) -> dict:
    """Train one approach into its run directory (resuming if asked); returns its summary.

    ``progress``: a :mod:`core.parallel` progress report (None: the trainer's own progress bar).
    """
    from apps.common.main import train_in_run

    # under MPI only rank 0 touches the run directory (run is None on the others); every rank trains
    return train_in_run(p, approach, ["learning_curve.png"], lambda run: _train_approach(p, approach, run, progress),
                        world=WORLD)


def _train_approach(p: Plan, approach: str, run, progress) -> dict:
    from apps.common.plots import plot_curves

    root = WORLD.is_root
    on_resumed = write_run_config(run, run_config(p, approach)) if root else None
    task, graphs = build_task(p.args, p.data, p.backend)
    p.backend.reset_counters()  # this approach's wire counts only (a group run reuses the backend)
    quiet = progress is not None or not root
    args = argparse.Namespace(**{**vars(p.args), "quiet": True}) if quiet else p.args
    result = make_trainer(args, task, graphs, approach, run).run(resume=p.resume, on_epoch=progress,
                                                                 on_resumed=on_resumed)
    if root:
        curves = {name: _curve(result.rows, name) for name in ("test_mse", "train_mse")}
        plot_curves(run.path / "learning_curve.png", curves, xlabel="message-passing rounds", ylabel="MSE",
                    logx=True, logy=True, title=f"{LABELS[approach]}: node regression")
    return result.summary


def _group_label(approach: str, summary) -> str:
    """An approach's legend entry in the group figure, saying where it diverged: a run that diverged in its first
    epoch has only its initial model, at 0 rounds, which the log axis leaves out (plot_curves says so)."""
    diverged = summary.get("diverged") if isinstance(summary, dict) else None
    if not isinstance(diverged, dict):
        return LABELS[approach]
    epoch = diverged.get("epoch")
    return LABELS[approach] + (f" (diverged at epoch {epoch})" if isinstance(epoch, int) else " (diverged)")


def _curve(rows, name):
    return [float(r["mp_rounds"]) for r in rows], [float(r[name]) for r in rows]


def print_table(summaries: dict[str, dict], out: Path) -> None:
    print(f"{'approach':<12}{'final test MSE':>16}{'best test MSE':>15}{'best epoch':>12}{'rounds/batch':>14}"
          f"{'wall s':>9}")
    for approach, s in summaries.items():
        print(f"{LABELS[approach]:<12}{s['final_test_mse']:>16.5f}{s['best_test_mse']:>15.5f}{s['best_epoch']:>12}"
              f"{s['mp_rounds_per_batch']:>14}{s['wall_s']:>9.1f}")
    print(f"run directory: {out}")


def main(argv: list[str] | None = None) -> int:
    """Parse, validate, train; returns the exit status (2: bad input, 130: interrupted)."""
    global WORLD
    WORLD = start_world()  # the ranks of mpiexec (an exception on any rank ends the job), or this process
    return run_on_world(WORLD, PROG, argv, parse_args, plan, execute,
                        lambda summaries, p: print_table(summaries, p.out))
