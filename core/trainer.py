"""Algorithm 1 as a reusable training loop: samplers, compiled steps, counts, logs and checkpoints.

An app describes its learning problem as a :class:`Task` (how to compute the local gradients of a
mini-batch, how to evaluate the parameters) and hands it to a :class:`Trainer` with an optimizer
(:mod:`core.optimizers`), a learning-rate schedule and a graph sampler. The trainer then runs
Algorithm 1:

- line 1: one shared initial theta, replicated to every node for distributed optimizers;
- line 3: draw the graph G(t) (:class:`FixedGraph`, or :class:`RandomGraphs` for a new graph per
  mini-batch); line 4: its mixing matrix W comes with it (:class:`GraphOps`);
- lines 5-11: ``Task.gradients`` on the mini-batch given by :class:`EpochBatches` (the training set
  reshuffled every epoch from the trainer's seeded generator);
- line 12: :func:`core.executors.consensus_update` (consensus rounds, then the local step);
- line 13: alpha_t from :class:`core.optimizers.LearningRate`.

Every neighbour exchange of a step goes through a :class:`core.comm.CommSimulator` built from the
task's schedule. The simulator counts at trace time (the counts of a step are static), so the trainer
keeps the :class:`core.comm.CommCost` of the traced step and accumulates it per executed step.

Speed: with a fixed graph and per-epoch logging, one epoch (all its mini-batches in a
``tf.while_loop``, then the evaluation) is one compiled function (XLA with ``jit=True``, traced without
autograph and called as a :class:`CompiledProgram`), and the only Python work is drawing the
epoch's index permutation and logging its row. A new graph per mini-batch whose tensors always have
the same shapes (``RandomGraphs(same_shapes=True)``) runs ``steps_per_call`` mini-batches per compiled
call on the graphs drawn for them, stacked. Otherwise (per-step logging, or graphs of varying size) a
compiled step function is called per mini-batch (a graph with a new number of edges retraces it; XLA
then recompiles too, so apps with varying graphs should pad or pass ``jit=False``).

Divergence: every logged row is checked where its metrics become Python floats (no extra host
synchronisation): its metrics and a finite flag of the parameters and optimizer state (computed inside
the compiled program, :func:`all_finite`). At the first epoch k with a NaN or inf, the trainer rolls
back to the end of epoch k - 1, checkpoints it, writes summary.json with ``"diverged": {"epoch": k,
"reason": ...}`` and raises :class:`core.runs.RunDiverged`; such a run cannot be resumed.

Backends: the task's ``backend`` (:mod:`core.backend`; in-process by default) says which nodes this process
holds. Under MPI (:class:`core.backend.MPIBackend`) every rank runs this same loop on its nodes (the task's
data and graph views are its part): theta is replicated for the owned nodes only, the simulator's exchanges
move their data through the backend's transport (the logical counts are unchanged), a centralized gradient
is the sum of the ranks' parts, the consensus error and the logged node-means are reduced over ranks, the
finite flags too (all ranks stop together), and checkpoints hold every node's rows, gathered on rank 0 (the
only rank with a run directory) and scattered on resume, so a run resumes under any P or in-process. The
steps cannot be compiled whole by XLA there (the exchanges are ``tf.numpy_function`` calls): the apps
that turn on auto-clustering (:func:`core.backend.enable_xla_autoclustering`, Apps A and B) get each
stretch between two exchanges compiled as one XLA cluster. Every rank issues the exchanges in the same
order.

Logs: one row per epoch (``log_every_step=False``; epoch 0 is the initial model) or per mini-batch,
with columns ``epoch, step, mp_rounds`` (rounds so far, cumulative), ``floats_sent_per_node`` (floats
so far that one node with neighbours broadcast, cumulative), ``lr`` (alpha_t of the last update), the
task's training metrics (the mean over the epoch's mini-batches of the value measured before each
update; at epoch 0, the task's evaluation on the training set), the task's test metrics,
``consensus_error`` (0 for a centralized model) and ``wall_s`` (training wall-clock seconds,
compilation included). Rows, the parameters, the optimizer state, the generator state and the counts
are checkpointed every ``checkpoint_every`` epochs and at the end (with the task's own
:meth:`Task.state_arrays`, if any), so that a resumed run ends with exactly the metrics of an
uninterrupted one.

Imperfect links (``links``, a :class:`core.links.LinkSetup`; docs/design.md, section 12): before each compiled
call the trainer draws, in Python and vectorized, the plans of its mini-batches from the link stream keyed by
the global mini-batch counter (:func:`core.links.draw_plans`: which packets are lost after any retransmission,
which links are down; the next call's drawn in a background thread while this one runs), and feeds them like
the batch indices: a bool tensor (mini-batches, links, rounds, packets), per operator the link of each entry
(computed once per graph from global node ids), and under link failures the up-mask of each operator's
entries, from which the compiled step restricts S (failed entries 0) and rebuilds W on the surviving graph
(:func:`core.links.surviving_mixing_tf`). The step's :class:`core.comm.CommSimulator` applies them to every
exchange. The stale buffer (policy ``stale``) and the
Gilbert-Elliott chain state are carried across mini-batches and epochs and checkpointed; retransmission rounds
vary per mini-batch and are added to ``mp_rounds`` and ``floats_sent_per_node`` when the call is committed
(each extra round after round t counts one round, and the floats of the packets of round t that were pending
on some link in it: round t's bundle for packet 0, its parameter piece for packet 1). metrics.csv gets the
columns ``packet_loss_rate`` and ``residual_loss_rate`` (of the row's mini-batches: lost at the first
transmission, and never delivered, over the packets sent), ``extra_rounds`` (cumulative) and
``link_failure_rate`` (undirected links down over link-mini-batches of the row); summary.json the same over
the run. Test metrics are measured over lossless links unless ``eval_under_loss`` (on the fixed graph's links,
or on those of the task's own test graph, :meth:`Task.test_links`). What a task computes on that is no message
(``GraphOps.observed``) is never lost nor restricted. Between the calls of graphs drawn per mini-batch the
stale buffer is kept by link (:class:`core.links.StaleLinks`; under MPI each rank the links it receives on).
An inactive model (nothing can be lost or down) runs exactly the lossless programs (only the columns are added).

Exchange kernels (``TrainerConfig.kernel``, docs/design.md, section 2): ``auto`` runs the exchanges of a fixed
graph of at least ``core.ops.CSR_MIN_NODES`` nodes, in-process over perfect links, as CSR sparse-dense products
(:func:`core.ops.csr_apply`), and the training programs then without XLA (the evaluation keeps it); ``xla``
always uses gather + segment sum; ``csr`` insists (ValueError naming why it cannot). summary.json records it.
"""

from __future__ import annotations

import inspect
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import NamedTuple

import numpy as np
import tensorflow as tf
from tqdm import tqdm

from core import replicas
from core.backend import LOCAL
from core.comm import CommCost, CommSimulator, Schedule
from core.executors import consensus_update
from core.gcnn import NO_COUNT, Exchange
from core.links import (
    GilbertState,
    LinkContext,
    LinkLayout,
    LinkModel,
    LinkSetup,
    LossPolicy,
    StaleBuffer,
    StaleLinks,
    check_diagonal,
    draw_plans,
    global_entries,
    link_codes,
    lossy_apply,
    surviving_mixing_tf,
)
from core.ops import CSR_MIN_NODES, CSRKernels, Operator, csr_layout
from core.optimizers import LearningRate, Optimizer
from core.runs import RunDir, RunDiverged, RunError, stop_requested

NO_COST = CommCost(rounds=0, floats_per_node=0, largest_message=0)
BASE_COLUMNS = ("epoch", "step", "mp_rounds", "floats_sent_per_node", "lr")
KERNELS = ("auto", "xla", "csr")
"""TrainerConfig.kernel: how in-process exchanges over a fixed graph run (Trainer._csr_layouts)."""
RENAMED_COLUMNS = {"floats_sent": "floats_sent_per_node", "lgs_rounds": "lgs_rounds_per_batch"}
"""Columns of metrics rows saved before version 0.2, by their new names (checkpoints of older runs resume)."""
LINK_COLUMNS = ("packet_loss_rate", "residual_loss_rate", "extra_rounds", "link_failure_rate")
"""Columns metrics.csv gets when the trainer runs with a :class:`core.links.LinkSetup` (module docstring)."""
# What a checkpoint's meta must hold for Trainer.restore ("cost" is optional: None before a step was traced).
META_FIELDS = ("epoch", "step", "mp_rounds", "floats_sent", "wall_s", "rng_state", "rows", "optimizer", "dtype")


def all_finite(theta: tf.Tensor, state: Sequence[tf.Tensor]) -> tf.Tensor:
    """[theta all finite, optimizer state all finite] as a bool (2,) tensor.

    Computed inside the compiled programs and returned beside the metrics, so that the divergence check
    of :meth:`Trainer.run` costs one tiny extra output instead of a host copy of theta per epoch.
    """
    floats = [tf.reduce_all(tf.math.is_finite(s)) for s in state if s.dtype.is_floating]
    state_ok = tf.reduce_all(tf.stack(floats)) if floats else tf.constant(True)
    return tf.stack([tf.reduce_all(tf.math.is_finite(theta)), state_ok])


@dataclass
class LinkTotals:
    """Cumulative link counts of a run: packets sent (first transmissions), lost at the first transmission,
    never delivered, undirected link-mini-batches and those down, extra (retransmission) rounds and the floats
    per node they broadcast (this process's links; summed over ranks under MPI)."""

    packets: int = 0
    lost: int = 0
    still_lost: int = 0
    links: int = 0
    links_down: int = 0
    extra_rounds: int = 0
    extra_floats: int = 0

    def minus(self, other: LinkTotals) -> LinkTotals:
        return LinkTotals(**{k: v - getattr(other, k) for k, v in asdict(self).items()})

    def rates(self) -> dict[str, float]:
        return {"packet_loss_rate": self.lost / self.packets if self.packets else 0.0,
                "residual_loss_rate": self.still_lost / self.packets if self.packets else 0.0,
                "link_failure_rate": self.links_down / self.links if self.links else 0.0}


class _NonFinite(Exception):
    """Raised by Trainer._commit at the first logged row with a non-finite value; caught by Trainer.run."""

    def __init__(self, reason: str, step: int):
        super().__init__(reason)
        self.reason, self.step = reason, step


class CompiledProgram:
    """A ``tf.function`` called through its concrete functions, one per input signature seen.

    A plain call of a ``tf.function`` re-derives the trace type of every argument (the nested
    parameter, optimizer-state and graph structures here) to pick its concrete function: about
    0.4 ms per call on this machine, and apps that call a compiled step per mini-batch do so 10 000
    times per epoch (App B). This wrapper keeps the concrete functions it has obtained, picks one by
    comparing the flattened arguments' shapes and static values, and calls it with the flat tensors
    (0.15 ms; falling back to TensorFlow's public call should the private flat-call entry point
    change). New shapes still trace as TensorFlow would (``reduce_retracing`` relaxes varying
    sizes, e.g. the edge count of graphs drawn per mini-batch, to unknown dimensions).
    """

    def __init__(self, function):
        self.function = function
        self._programs: list[tuple[tuple, list, object]] = []  # (static values, tensor dims, concrete function)
        self._flat_call = True
        # trailing parameters with defaults: filled in here (a concrete function does not apply them)
        params = list(inspect.signature(getattr(function, "python_function", function)).parameters.values())
        self._arity = len(params)
        self._defaults = tuple(p.default for p in params if p.default is not inspect.Parameter.empty)

    def __call__(self, *args):
        if len(args) < self._arity and len(args) >= self._arity - len(self._defaults):
            args = args + self._defaults[len(self._defaults) - (self._arity - len(args)):]
        tensors, static, shapes = [], [], []
        for x in tf.nest.flatten(args):
            if isinstance(x, tf.Tensor):
                tensors.append(x)
                shapes.append(_shape(x))
            else:
                static.append(x)
        static = tuple(static)
        for key, dims, program in self._programs:
            if key == static and all(len(d) == len(s) and all(a is None or a == b for a, b in zip(d, s))
                                     for d, s in zip(dims, shapes)):
                return self._call(program, args, tensors)
        program = self.function.get_concrete_function(*args)
        specs = [x for x in tf.nest.flatten(program.structured_input_signature) if isinstance(x, tf.TensorSpec)]
        if len(specs) == len(tensors):  # else: an argument structure this cache does not understand
            self._programs.append((static, [tuple(spec.shape) for spec in specs], program))
        return program(*args)

    def _call(self, program, args, tensors):
        if self._flat_call:
            try:
                return program._call_flat(tensors, program.captured_inputs)  # the structured outputs
            except (AttributeError, TypeError):
                self._flat_call = False
        return program(*args)


def _shape(tensor: tf.Tensor) -> tuple:
    """The static shape as a tuple (an eager tensor's cached shape tuple when it has one: ~10x faster)."""
    fast = getattr(tensor, "_shape_tuple", None)
    return fast() if fast is not None else tuple(tensor.shape)


class GraphOps(NamedTuple):
    """The operators of one graph G(t): the shift S of the GNN and the consensus weights W (eq. 16), along
    whose links the nodes exchange messages, and optionally ``observed``: what the task computes on that is no
    message between neighbours (App C's server holds the whole conflict graph): passed to the task as it is,
    never lost nor restricted by the link model, and under MPI not cut into a rank's view."""

    shift: Operator
    mixing: Operator | None = None
    observed: Operator | None = None


class Task:
    """What an app plugs into the :class:`Trainer` (override the methods; see :class:`core.supervised`).

    ``gradients`` and ``evaluate`` are traced into compiled programs without autograph: write loops
    over tensors as ``tf.while_loop`` (Python loops over static sizes are fine).

    Attributes:
        num_nodes: |V|.
        num_train: size of the training set (mini-batches index into it).
        dtype: the float dtype of parameters and data.
        train_metrics: names of the metrics ``gradients`` returns (the first is the training loss).
        test_metrics: names of the metrics ``evaluate(..., "test")`` returns.
        primary: the metric shown in the progress bar and plotted, whose best value sets ``best_epoch``.
        maximize: metrics for which higher is better (the others are minimized).
    """

    num_nodes: int
    num_train: int
    dtype: tf.DType = tf.float32
    train_metrics: tuple[str, ...] = ("train_loss",)
    test_metrics: tuple[str, ...] = ()
    primary: str = "train_loss"
    maximize: frozenset = frozenset()

    def initial_theta(self) -> tf.Tensor:
        """The shared initial parameters as one flat vector (|theta|,) (Algorithm 1, line 1)."""
        raise NotImplementedError

    def schedule(self, optimizer: Optimizer, batch_size: int) -> Schedule | None:
        """The communication schedule of one mini-batch (None: nothing is counted)."""
        return None

    def gradients(self, theta, indices, graph: GraphOps, optimizer: Optimizer, exchange):
        """Local gradients of the mini-batch ``indices`` (int32 (B,)) and its training metrics.

        Returns ``(grad, metrics)``: grad is (|V|, |theta|), row i node i's local gradient summed over
        the batch (eq. 8c) for a distributed optimizer, or the (|theta|,) gradient of the summed
        node-mean loss for a centralized one (``optimizer.centralized``); metrics maps each name of
        ``train_metrics`` to a scalar. Every neighbour exchange must go through ``exchange``.
        """
        raise NotImplementedError

    def state_arrays(self) -> dict[str, np.ndarray]:
        """State the task itself changes during training (e.g. a centrally trained critic), as arrays;
        checkpointed with the trainer's state. None by default."""
        return {}

    def upgrade_row(self, row: dict) -> dict:
        """A metrics row of a checkpoint saved by an older version, with the columns this task logs now
        (e.g. a column derived from another); the row itself by default."""
        return row

    def load_state_arrays(self, arrays: Mapping[str, np.ndarray]) -> None:
        """Restore what :meth:`state_arrays` returned (from a checkpoint or an epoch-start snapshot)."""

    def evaluate(self, theta, graph: GraphOps | None, split: str) -> dict[str, tf.Tensor]:
        """Metrics of theta (shared or per node) on ``split``: ``"test"`` gives ``test_metrics``,
        ``"train"`` gives ``train_metrics`` (used for the row of the initial model). ``graph`` is the
        fixed training graph, or None when graphs are drawn per mini-batch (the task then evaluates
        on graphs of its own)."""
        raise NotImplementedError

    def test_links(self):
        """For a test evaluation over imperfect links (``eval_under_loss``) of a task that tests on a graph of
        its own: ``(shift, exchange)``, the operator its test exchanges run on (under MPI this rank's view of it)
        and the MPI exchange that moves their halos (None in-process); its evaluation then exchanges through
        ``self.backend.eval_transport`` whenever ``self.backend.under_loss`` is set. None (the default): the
        test split runs on the fixed training graph, through ``backend.eval_transport`` always."""
        return None


class FixedGraph:
    """One graph for the whole run (Algorithm 1 with E(t) = E)."""

    fixed = True

    def __init__(self, ops: GraphOps):
        self.ops = ops

    def draw(self, rng: np.random.Generator) -> GraphOps:
        return self.ops


class RandomGraphs:
    """A new graph per mini-batch (Algorithm 1, line 3): ``draw(rng) -> GraphOps``.

    ``same_shapes=True`` promises that every drawn graph has tensors of the same shapes (e.g. per-sample
    weights on a fixed pattern, where a cut link is a zero weight). The trainer then runs
    ``TrainerConfig.steps_per_call`` mini-batches per compiled call on their graphs stacked
    (:func:`stack_graphs`), instead of one call per mini-batch, which saves the per-call dispatch and
    synchronisation (about 1 ms per mini-batch on this 2-core machine, a third of an App B step).
    """

    fixed = False

    def __init__(self, draw: Callable[[np.random.Generator], GraphOps], same_shapes: bool = False):
        self._draw = draw
        self.same_shapes = bool(same_shapes)

    def draw(self, rng: np.random.Generator) -> GraphOps:
        return self._draw(rng)


def stack_graphs(graphs: Sequence[GraphOps]) -> GraphOps:
    """Graphs whose tensors have equal shapes as one GraphOps with a leading graph axis on every tensor
    (rows, cols and values of each operator); :func:`graph_at` takes graph k back out (in a compiled loop)."""

    def stack(ops):
        if ops[0] is None:
            return None
        return Operator(tf.stack([op.rows for op in ops]), tf.stack([op.cols for op in ops]),
                        tf.stack([op.values for op in ops]), ops[0].num_nodes)

    return GraphOps(*(stack([getattr(g, name) for g in graphs]) for name in GraphOps._fields))


def graph_at(stacked: GraphOps, k) -> GraphOps:
    """Graph ``k`` of :func:`stack_graphs` (``k`` may be a scalar tensor)."""

    def take(op):
        return None if op is None else Operator(op.rows[k], op.cols[k], op.values[k], op.num_nodes)

    return GraphOps(*(take(op) for op in stacked))


class EpochBatches:
    """Mini-batches of an epoch: a fresh permutation of the training set cut into floor(N / B) batches
    of B indices (the remainder of the permutation is left out of that epoch)."""

    def __init__(self, num_samples: int, batch_size: int):
        if not 1 <= batch_size <= num_samples:
            raise ValueError(f"batch size must be between 1 and the training set size {num_samples}, "
                             f"got {batch_size}")
        self.num_samples, self.batch_size = int(num_samples), int(batch_size)
        self.num_batches = self.num_samples // self.batch_size

    def draw(self, rng: np.random.Generator) -> np.ndarray:
        order = rng.permutation(self.num_samples)[: self.num_batches * self.batch_size]
        return order.reshape(self.num_batches, self.batch_size).astype(np.int32)


@dataclass(frozen=True)
class TrainerConfig:
    """Loop settings. ``checkpoint_every`` counts epochs (0: only at the end); ``steps_per_call`` is the
    number of mini-batches per compiled call when graphs are drawn per mini-batch with equal shapes
    (:class:`RandomGraphs`); ``unit`` names what an epoch is in the progress bar (an app whose epoch is one
    mini-batch says "mini-batch")."""

    epochs: int
    batch_size: int
    seed: int = 0
    checkpoint_every: int = 50
    log_every_step: bool = False
    steps_per_call: int = 50
    jit: bool = True
    quiet: bool = False
    description: str = ""
    unit: str = "epoch"
    kernel: str = "auto"

    def __post_init__(self):
        if (self.epochs < 1 or self.batch_size < 1 or self.checkpoint_every < 0 or self.seed < 0
                or self.steps_per_call < 1):
            raise ValueError(f"invalid trainer settings {self}")
        if self.kernel not in KERNELS:
            raise ValueError(f"kernel must be one of {', '.join(KERNELS)}, got {self.kernel!r}")


@dataclass
class TrainResult:
    rows: list[dict]
    summary: dict
    theta: tf.Tensor
    state: tuple


def _check_arguments(optimizer, lr, graphs, config) -> None:
    """A TypeError naming the argument of :class:`Trainer` that is not of its kind (rather than an AttributeError
    from deep inside the first epoch)."""
    expected = ((optimizer, isinstance(optimizer, Optimizer), "optimizer",
                 "an Optimizer (core.optimizers.make_optimizer)"),
                (lr, isinstance(lr, LearningRate), "lr", "a core.optimizers.LearningRate, e.g. LearningRate(1e-2)"),
                (graphs, hasattr(graphs, "fixed") and hasattr(graphs, "draw"), "graphs",
                 "a graph sampler: FixedGraph(GraphOps(...)) or RandomGraphs(draw)"),
                (config, isinstance(config, TrainerConfig), "config", "a TrainerConfig"))
    for value, ok, name, what in expected:
        if not ok:
            raise TypeError(f"Trainer's {name} must be {what}, got {type(value).__name__}")


class Trainer:
    """Runs Algorithm 1 for a :class:`Task`; see the module docstring.

    Args:
        task: the learning problem.
        optimizer: from :func:`core.optimizers.make_optimizer`.
        lr: the step-size schedule.
        graphs: :class:`FixedGraph` or :class:`RandomGraphs`.
        config: :class:`TrainerConfig`.
        run: the run directory for metrics, summary and checkpoints (None: keep everything in memory).
        extra_summary: entries added to summary.json (e.g. the approach's label).
        links: imperfect links (:class:`core.links.LinkSetup`; module docstring); None: perfect links.
    """

    def __init__(self, task: Task, optimizer: Optimizer, lr: LearningRate, graphs, config: TrainerConfig,
                 run: RunDir | None = None, extra_summary: Mapping | None = None, links: LinkSetup | None = None):
        _check_arguments(optimizer, lr, graphs, config)
        self.task, self.optimizer, self.lr, self.graphs, self.config = task, optimizer, lr, graphs, config
        self.backend = getattr(task, "backend", None) or LOCAL
        self.run_dir = run
        # under MPI only rank 0 holds the run directory; every rank takes part in gathering a checkpoint
        self._checkpointing = bool(self.backend.bcast(run is not None))
        self.extra_summary = dict(extra_summary or {})
        self.batches = EpochBatches(task.num_train, config.batch_size)
        self.dtype = task.dtype
        self.cost: CommCost | None = None  # of one mini-batch, known once a step has been traced
        self.columns = (*BASE_COLUMNS, *task.train_metrics, *task.test_metrics, "consensus_error", "wall_s")
        self.links = links
        self._lossy = links is not None and links.active  # else the lossless programs run, untouched
        self._layouts: dict[int, tuple[GraphOps, LinkLayout]] = {}
        self._test_layout: tuple | None = None  # (operator, layout) of Task.test_links
        if links is not None:
            self.columns = (*self.columns[:-1], *LINK_COLUMNS, "wall_s")
            self._schedule = task.schedule(optimizer, config.batch_size)
            if self._lossy and self._schedule is None:
                raise ValueError("a link model needs a task whose exchanges are counted (Task.schedule returns None)")
            if self._lossy and links.eval_under_loss and not graphs.fixed and task.test_links() is None:
                raise ValueError("--eval-under-loss needs a fixed graph, or a task that names the graph it tests on "
                                 "(Task.test_links)")
        self._eval_lossy = self._lossy and links.eval_under_loss
        self._csr = self._csr_layouts()  # (shift, mixing) CSR layouts when the exchanges run as CSR products
        self.kernel = "csr" if self._csr is not None else "xla"
        # No autograph: the loop is an explicit tf.while_loop, and converting every Python call of the
        # traced code (the counting simulator loops over samples and message pieces) costs seconds.
        # MPI exchanges are tf.numpy_function calls, which XLA cannot compile: no jit under MPI; nor with
        # CSR exchanges (TensorFlow's kernel, outside XLA), except the evaluation, which does not use them
        jit = config.jit and not self.backend.distributed
        compile_ = dict(jit_compile=jit and self._csr is None, reduce_retracing=True, autograph=False)
        eval_compile = dict(compile_, jit_compile=jit)
        # The compiled programs (public for benchmarks; see CompiledProgram): epoch_fn(theta, state, step0,
        # batches, graph), step_fn(theta, state, step, indices, graph), steps_fn(theta, state, step0, batches,
        # graphs) for stacked graphs (one per mini-batch), eval_fn(theta, graph, split). With the CSR kernel
        # (self.kernel == "csr") the training programs take only the fixed graph's GraphOps: its CSR layouts
        # (entry orders) are the trainer's, fixed when it was built.
        # Closures rather than bound methods, so that TensorFlow counts retracing per trainer.
        # epoch_fn, step_fn and steps_fn also return all_finite(theta, state) as their last output.
        # Under a link model they take two more arguments, the plans of their mini-batches (``links``, see
        # _link_feed) and the stale buffer, and return the new stale buffer last.
        def epoch(theta, state, step0, batches, graph, links=None, stale=None):
            return self._epoch(theta, state, step0, batches, graph, links, stale)

        def step(theta, state, step, indices, graph, links=None, stale=None):
            theta, state, metrics, stale = self._step(theta, state, step, indices, graph, links, stale)
            out = (theta, state, metrics, all_finite(theta, state))
            return out if links is None else (*out, stale)

        def steps(theta, state, step0, batches, graphs, links=None, stale=None):
            theta, state, sums, stale = self._steps(theta, state, step0, batches, lambda i: graph_at(graphs, i),
                                                    links, stale)
            out = (theta, state, sums, all_finite(theta, state))
            return out if links is None else (*out, stale)

        def evaluate(theta, graph, split):
            return self._evaluate(theta, graph, split)

        self.epoch_fn = CompiledProgram(tf.function(epoch, **compile_))
        self.step_fn = CompiledProgram(tf.function(step, **compile_))
        self.steps_fn = CompiledProgram(tf.function(steps, **compile_))
        self.eval_fn = CompiledProgram(tf.function(evaluate, **eval_compile))
        self._reset()

    def _csr_layouts(self) -> tuple | None:
        """``config.kernel`` resolved: the CSR layouts of the fixed graph's S and W (core.ops.csr_layout), or
        None for XLA's gather + segment sum. ``auto`` takes CSR for a fixed graph of at least
        core.ops.CSR_MIN_NODES nodes in-process over perfect links; ``csr`` insists (ValueError if it cannot)."""
        kernel = self.config.kernel
        if kernel == "xla":
            return None
        reason = None
        if self.backend.distributed:
            reason = "the MPI backend exchanges through MPI"
        elif not self.graphs.fixed:
            reason = "graphs drawn per mini-batch have no fixed pattern to lay out"
        elif self._lossy:
            reason = "exchanges over imperfect links mask each entry"
        elif self.task.schedule(self.optimizer, self.config.batch_size) is None:
            reason = "the task's exchanges are not counted by the simulator"
        layouts = None
        if reason is None:
            ops = self.graphs.ops
            layouts = (csr_layout(ops.shift), None if ops.mixing is None else csr_layout(ops.mixing))
            if layouts[0] is None:
                reason = "S has per-sample values or repeated entries"
        if kernel == "csr" and reason is not None:
            raise ValueError(f"kernel csr is not available here: {reason}")
        if reason is not None or (kernel == "auto" and self.task.num_nodes < CSR_MIN_NODES):
            return None
        return layouts

    # ------------------------------------------------------------------ state
    def _reset(self):
        theta = tf.convert_to_tensor(self.task.initial_theta(), self.dtype)
        if not self.optimizer.centralized:
            theta = replicas.replicate(theta, self.task.num_nodes)  # Algorithm 1, line 1
        self.theta, self.state = theta, tuple(self.optimizer.init_state(theta))
        self.rng = np.random.default_rng(self.config.seed)
        self.epoch = self.step = self.rounds = self.floats = 0
        self.steps_here = 0  # mini-batches run by this process (the MPI counters count since it started)
        self.wall = 0.0
        self.rows: list[dict] = []
        # imperfect links: the Gilbert chains, the stale buffer (None until its slots are known), the counts
        self._chain = GilbertState()
        self._stale: dict[str, tf.Tensor] | None = None
        self._stale_links = StaleLinks()  # graphs drawn per mini-batch: the buffer by link between calls
        self._link_totals, self._row_totals = LinkTotals(), LinkTotals()
        self._packet_sizes: np.ndarray | None = None  # (rounds, 2) floats per packet, known once traced
        self._prefetch = None  # ((first step, count), layout, future) of the next call's plans (_prefetched_feed)
        self._index_feed = None  # (key, layouts, stacked index tensors) of the last feed (_stacked_index)
        self._pattern_layouts: dict[tuple, LinkLayout] = {}  # LinkLayout per operator pattern (_layout)
        self._last_layout: LinkLayout | None = None
        if not hasattr(self, "_pool"):
            self._pool = None

    @property
    def _stale_by_link(self) -> bool:
        """Whether the stale buffer is kept by link between compiled calls (:class:`core.links.StaleLinks`):
        graphs drawn per mini-batch, a call each (:meth:`_run_steps`; the stacked calls of graphs of one
        pattern, :meth:`_run_stacked`, keep it entry-aligned)."""
        return (self.links is not None and self.links.policy.kind == "stale" and not self.graphs.fixed
                and (self.config.log_every_step or not getattr(self.graphs, "same_shapes", False)))

    def _per_node(self, array) -> bool:
        """Whether an array of theta or the optimizer state has a node axis (one row per owned node)."""
        return (not self.optimizer.centralized and len(array.shape) >= 1
                and tuple(array.shape) == tuple(self.theta.shape))

    def _global(self, array) -> np.ndarray | None:
        """A theta/state array with all |V| rows (gathered to rank 0 under MPI; None on other ranks)."""
        array = np.asarray(array)
        if self.backend.distributed and self._per_node(array):
            return self.backend.gather_rows(array)
        return array

    def save_checkpoint(self) -> None:
        """Write everything needed to continue from the current epoch (atomically); under MPI the per-node
        arrays are gathered to rank 0 in global node order (collective), so any P can resume."""
        if not self._checkpointing:
            return
        arrays = {"theta": self._global(self.theta.numpy())}
        arrays.update({f"state_{k}": self._global(s.numpy()) for k, s in enumerate(self.state)})
        link_arrays = self._link_arrays() if self.links is not None else {}  # collective under MPI
        if self.run_dir is None:  # another rank than 0 under MPI: its rows went to rank 0
            return
        arrays.update({f"task/{k}": np.asarray(v) for k, v in self.task.state_arrays().items()})
        arrays.update(link_arrays)
        meta = {
            "epoch": self.epoch, "step": self.step, "mp_rounds": self.rounds, "floats_sent": self.floats,
            "wall_s": self.wall, "rng_state": self.rng.bit_generator.state, "rows": self.rows,
            "optimizer": self.optimizer.name, "dtype": self.dtype.name,
            "cost": None if self.cost is None else asdict(self.cost),
        }
        if self.links is not None:
            meta["links"] = {"setup": self.links.describe(), "totals": asdict(self._link_totals),
                             "row_totals": asdict(self._row_totals),
                             "packet_sizes": None if self._packet_sizes is None else self._packet_sizes.tolist()}
        self.run_dir.save_checkpoint(arrays, meta)
        self.run_dir.write_metrics(self.columns, self.rows)

    def restore(self) -> bool:
        """Load the run directory's checkpoint if it has one; returns whether it did.

        Raises :class:`core.runs.RunError`, one line naming the checkpoint file, if the file cannot be read
        (:meth:`core.runs.RunDir.load_checkpoint`) or does not fit this trainer: meta fields missing or
        malformed, another optimizer or dtype, parameters or optimizer state missing or of other shapes or
        dtypes, task state the task rejects. The trainer is changed only once everything has been checked.
        """
        if not self._checkpointing:
            return False
        loaded = None
        if self.run_dir is not None:  # rank 0 reads and broadcasts (the others may have no file system view)
            try:
                loaded = ("ok", self.run_dir.load_checkpoint(), str(self.run_dir.checkpoint_path)) \
                    if self.run_dir.has_checkpoint() else None
            except RunError as exc:
                loaded = ("error", str(exc), None)
        loaded = self.backend.bcast(loaded)
        if loaded is None:
            return False
        if loaded[0] == "error":
            raise RunError(loaded[1])
        (arrays, meta), path = loaded[1], loaded[2]

        def bad(problem: str) -> RunError:
            return RunError(f"checkpoint {path} {' '.join(problem.split())}")

        missing = [k for k in META_FIELDS if k not in meta]
        if missing:
            raise bad(f"lacks the meta field{'s' * (len(missing) > 1)} {', '.join(missing)}")
        if meta["optimizer"] != self.optimizer.name or meta["dtype"] != self.dtype.name:
            raise bad(f"is for {meta['optimizer']} in {meta['dtype']}, not {self.optimizer.name} in {self.dtype.name}")
        for k in ("epoch", "step", "mp_rounds", "floats_sent"):
            if not isinstance(meta[k], int) or isinstance(meta[k], bool) or meta[k] < 0:
                raise bad(f"has {k} = {meta[k]!r}, not a count")
        if not isinstance(meta["wall_s"], int | float) or not math.isfinite(meta["wall_s"]):
            raise bad(f"has wall_s = {meta['wall_s']!r}, not a number of seconds")
        rows = meta["rows"]
        if isinstance(rows, list) and all(isinstance(r, dict) for r in rows):
            rows = [self.task.upgrade_row({RENAMED_COLUMNS.get(k, k): v for k, v in r.items()}) for r in rows]
        if not isinstance(rows, list) or not all(isinstance(r, dict) and all(c in r for c in self.columns)
                                                 for r in rows):
            raise bad(f"has rows that are not a list of rows with the columns {', '.join(self.columns)}")
        last = rows[-1] if rows else {"epoch": 0, "step": 0}  # no rows: interrupted before the first one
        if (last["epoch"], last["step"]) != (meta["epoch"], meta["step"]):
            raise bad(f"is at epoch {meta['epoch']}, step {meta['step']}, but its last row is at epoch "
                      f"{last['epoch']}, step {last['step']}")
        rng = np.random.default_rng()
        try:
            rng.bit_generator.state = meta["rng_state"]
        except (TypeError, ValueError, KeyError) as exc:
            raise bad(f"has an unusable rng_state ({type(exc).__name__}: {exc})") from None
        cost = self.cost
        if meta.get("cost") is not None:  # a finished run resumed traces nothing, yet reports its counts
            try:
                cost = CommCost(**meta["cost"])
            except TypeError as exc:
                raise bad(f"has an unusable cost ({exc})") from None
        theta = self._checked_array(arrays, "theta", self._initial_shape(), self.dtype, bad)
        names = {f"state_{k}" for k in range(len(self.state))}
        extra = sorted(k for k in arrays if k.startswith("state_") and k not in names)
        if extra:
            raise bad(f"has optimizer state {', '.join(extra)} beyond the {len(names)} arrays of {self.optimizer.name}")
        state = tuple(self._checked_array(arrays, f"state_{k}", self._global_shape(s), s.dtype, bad)
                      for k, s in enumerate(self.state))
        if self.backend.distributed:  # this rank's rows of the per-node arrays
            local = self._per_node
            theta = tf.constant(self.backend.scatter_rows(theta.numpy()), self.dtype) if local(self.theta) else theta
            state = tuple(tf.constant(self.backend.scatter_rows(a.numpy()), a.dtype) if local(s) else a
                          for a, s in zip(state, self.state))
        link_state = self._checked_link_state(arrays, meta, bad)
        try:
            self.task.load_state_arrays({k[len("task/"):]: v for k, v in arrays.items() if k.startswith("task/")})
        except (KeyError, ValueError, TypeError, IndexError) as exc:
            raise bad(f"has task state the task rejects ({type(exc).__name__}: {exc})") from None
        self.theta, self.state, self.cost = theta, state, cost
        if link_state is not None:
            self._chain, self._stale, self._link_totals, self._row_totals, self._packet_sizes = link_state
            self._stale_links = StaleLinks.from_arrays({k[len("links/"):]: v for k, v in arrays.items()
                                                        if k.startswith(("links/stale_codes/", "links/stale_links/"))})
            if self.backend.distributed:  # the links this rank receives on
                self._stale_links = self._stale_links.receiving(self.backend.owned)
            for slot, values in self._stale_links.arrays().items():
                if slot.startswith("stale_links/") and values.dtype != self.dtype.as_numpy_dtype:
                    raise bad(f"has the stale slot {slot[len('stale_links/'):]} in {values.dtype}, not "
                              f"{self.dtype.name}")
        self.epoch, self.step = meta["epoch"], meta["step"]
        self.rounds, self.floats, self.wall = meta["mp_rounds"], meta["floats_sent"], float(meta["wall_s"])
        self.rng.bit_generator.state = meta["rng_state"]
        self.rows = list(rows)
        return True

    # ------------------------------------------------------------------ link state in checkpoints
    def _link_arrays(self) -> dict[str, np.ndarray]:
        """The link state to checkpoint: the Gilbert chains and the stale buffer, in global terms (under MPI,
        collective: the union of the ranks' chains, each slot's entries in the global entry order of its
        operator; rank 0 gets them, so a run resumes under any P; for graphs drawn per mini-batch, in-process,
        the buffer by link, :class:`core.links.StaleLinks`)."""
        chain = self._chain
        if self.backend.distributed:
            parts = self.backend.comm.gather(chain.arrays(), root=0)
            if self.backend.is_root:  # a link drawn on two ranks (one receives, one sends) has one state
                codes = np.concatenate([c["codes"] for c in parts])
                _, first = np.unique(codes, return_index=True)
                chain = GilbertState(codes[first], np.concatenate([c["bad"] for c in parts])[first],
                                     np.concatenate([c["last"] for c in parts])[first])
        out = {f"links/chain_{k}": v for k, v in chain.arrays().items()}
        if self._stale_by_link:  # graphs drawn per mini-batch: the buffer by link is the state
            stale_links = self._stale_links
            if self.backend.distributed:  # each rank holds the links it receives on: their union
                parts = self.backend.comm.gather(stale_links.arrays(), root=0)
                stale_links = StaleLinks.merged(parts) if self.backend.is_root else stale_links
            out.update({f"links/{k}": v for k, v in stale_links.arrays().items()})
            return out
        for slot, value in sorted((self._stale or {}).items()):
            value = value.numpy()
            # (graphs of one pattern under MPI are global operators, e.g. App B's: every rank holds the whole slot)
            if self.backend.distributed and self.graphs.fixed:
                view = self._slot_operator(slot)
                parts = self.backend.comm.gather((view.entries, value), root=0)
                if self.backend.is_root:
                    total = int(sum(e.size for e, _ in parts))
                    value = np.zeros((total,) + value.shape[1:], value.dtype)
                    for entries, part in parts:
                        value[entries] = part
            out[f"links/stale/{slot}"] = value
        return out

    @staticmethod
    def _slot_of(ops: GraphOps, slot: str):
        """The operator whose entries a stale slot is aligned with: S for fwd/bwd, W else."""
        return ops.shift if slot.split("/")[0] in ("fwd", "bwd") else ops.mixing

    def _slot_codes(self, graph: GraphOps, slot: str) -> np.ndarray:
        """The link code of each entry a stale slot is aligned with on ``graph``."""
        rows, cols = global_entries(self.backend.link_view(self._slot_of(graph, slot)))
        return link_codes(cols, rows)

    def _slot_operator(self, slot: str):
        """This rank's view of the operator a stale slot is aligned with (a fixed graph)."""
        return self._slot_of(self.graphs.ops, slot)

    def _checked_link_state(self, arrays: Mapping, meta: Mapping, bad: Callable):
        """(chain, stale, totals, row totals, packet sizes) of a checkpoint, checked against this trainer's
        links (None for a run without links)."""
        saved = meta.get("links")
        if self.links is None:
            if saved is not None:
                raise bad("was run over imperfect links: resume it with its link settings")
            return None
        setup = self.links.describe()
        if not isinstance(saved, dict) or saved.get("setup") != setup:
            was = saved.get("setup") if isinstance(saved, dict) else "perfect links"
            raise bad(f"was run with the link settings {was}, not {setup}")
        try:
            totals, row_totals = LinkTotals(**saved["totals"]), LinkTotals(**saved["row_totals"])
            sizes = None if saved.get("packet_sizes") is None else np.asarray(saved["packet_sizes"], np.int64)
            chain = GilbertState.from_arrays({k: arrays[f"links/chain_{k}"] for k in ("codes", "bad", "last")})
        except (KeyError, TypeError, ValueError) as exc:
            raise bad(f"has unusable link state ({type(exc).__name__}: {exc})") from None
        stale = {k[len("links/stale/"):]: v for k, v in arrays.items() if k.startswith("links/stale/")}
        for slot, value in stale.items():
            if value.dtype != self.dtype.as_numpy_dtype:
                raise bad(f"has the stale slot {slot} in {value.dtype}, not {self.dtype.name}")
            if self.backend.distributed and self.graphs.fixed:
                value = self._slot_operator(slot).localize(np.moveaxis(value, 0, -1))
                value = np.moveaxis(value, -1, 0)
            stale[slot] = tf.constant(value, self.dtype)
        return chain, (stale or None), totals, row_totals, sizes

    @staticmethod
    def _checked_array(arrays: Mapping, name: str, shape, dtype: tf.DType, bad: Callable) -> tf.Tensor:
        """``arrays[name]`` as a tensor, if it is there with exactly this shape and dtype (else ``bad(...)``)."""
        if name not in arrays:
            raise bad(f"has no array {name}")
        array, shape = arrays[name], tuple(shape)
        if array.shape != shape:
            what = "parameters" if name == "theta" else f"optimizer state {name}"
            raise bad(f"has {what} of shape {array.shape}, this model has {shape}")
        if array.dtype != dtype.as_numpy_dtype:
            raise bad(f"has {name} in {array.dtype}, not {dtype.name}")
        return tf.constant(array, dtype)

    def _initial_shape(self):
        n = int(self.task.initial_theta().shape[-1])
        nodes = self.backend.num_nodes if self.backend.distributed else self.task.num_nodes
        return (n,) if self.optimizer.centralized else (nodes, n)

    def _global_shape(self, array) -> tuple:
        """The checkpointed shape of a state array (all |V| rows of a per-node one)."""
        shape = tuple(array.shape)
        if self.backend.distributed and self._per_node(array):
            return (self.backend.num_nodes,) + shape[1:]
        return shape

    # ------------------------------------------------------------------ compiled pieces
    def _step(self, theta, state, step, indices, graph: GraphOps, links=None, stale=None):
        """One mini-batch of Algorithm 1 (lines 5-13). Runs at trace time only in Python.

        ``links``: this mini-batch's plan (one slice of :meth:`_link_feed`), ``stale``: the stale buffer's
        values; both None without a link model. Returns (theta, state, metrics, new stale values)."""
        schedule = self.task.schedule(self.optimizer, self.config.batch_size)
        transport = self.backend.transport
        context = None
        if links is not None:
            graph = self._surviving_graph(graph, links)
            # operators built inside the task on a constant pattern (e.g. a complete one) are indexed from the
            # layout, when every mini-batch of the program has the same links (a fixed graph or equal shapes)
            same_links = self.graphs.fixed or getattr(self.graphs, "same_shapes", False)
            context = LinkContext(links["lost"], self.links.policy,
                                  StaleBuffer(stale) if self.links.policy.kind == "stale" else None,
                                  self._last_layout if same_links else None, link_major=True)
            for name in ("shift", "mixing"):
                if getattr(graph, name) is not None:
                    context.bind(getattr(graph, name), links["index"][name], links["index"][f"{name}_t"])
        if schedule is not None:
            kernels = None
            if self._csr is not None:  # the fixed graph's operators (as traced) with their CSR layouts
                kernels = CSRKernels([(graph.shift, self._csr[0]), (graph.mixing, self._csr[1])])
            exchange = CommSimulator(schedule, transport=None if transport is NO_COUNT else transport, links=context,
                                     kernels=kernels)
        else:
            exchange = transport
        grad, metrics = self.task.gradients(theta, indices, graph, self.optimizer, exchange)
        if self.optimizer.centralized:
            grad = self.backend.sum_gradient(grad)  # the ranks' parts (identity in-process)
        lr = self.lr(step, self.dtype)
        theta, state = consensus_update(self.optimizer, theta, state, grad, graph.mixing, lr, exchange)
        self.cost = exchange.cost() if schedule is not None else NO_COST  # counted while tracing
        if context is not None:
            if exchange.bypassed():
                raise ValueError(f"the task records payloads (e.g. {exchange.bypassed()[0]}) through CommSimulator."
                                 f"record without applying the link model; its exchanges cannot run over imperfect "
                                 f"links (docs/design.md, section 12)")
            self._packet_sizes = exchange.packet_sizes()
        new_stale = dict(context.stale.values) if context is not None and context.stale is not None else {}
        return theta, tuple(state), {k: tf.cast(metrics[k], self.dtype) for k in self.task.train_metrics}, new_stale

    def _surviving_graph(self, graph: GraphOps, links) -> GraphOps:
        """Under link failures, S with its failed entries 0 and W rebuilt on the surviving graph (same patterns,
        from the fed up-masks); else ``graph``."""
        up = links.get("up")
        if up is None:
            return graph
        if self.backend.distributed and not isinstance(graph.shift, Operator):  # (App B's ranks: global operators)
            return self._surviving_views(graph, up)
        shift, mixing = graph.shift, graph.mixing
        if shift is not None:
            keep = up["shift"][None, :] if shift.per_sample else up["shift"]
            shift = shift._replace(values=tf.where(keep, shift.values, tf.zeros_like(shift.values)))
        if mixing is not None:
            mixing = surviving_mixing_tf(mixing, up["mixing"], self.links.mixing_rule)
        return graph._replace(shift=shift, mixing=mixing)

    def _surviving_views(self, graph: GraphOps, up) -> GraphOps:
        """:meth:`_surviving_graph` of a rank's operator views: the same views with the surviving values
        (:class:`core.distributed.exchange.ValuedView`); W's Metropolis-Hastings weights need the surviving
        degrees of the ghost nodes, which one forward exchange of the owned nodes' degrees brings (a message
        round of topology upkeep: in the bytes on the wire, not in the logical counts, as in-process)."""
        from core.distributed.exchange import TensorView, ValuedView

        exchange, shift, mixing = self.backend.transport, graph.shift, graph.mixing

        def with_values(view, values):  # (a drawn graph's TensorView holds its values as an input already)
            return view._replace(values=values) if isinstance(view, TensorView) else ValuedView(view, values)

        if shift is not None:
            values = tf.cast(shift.values, self.dtype)
            shift = with_values(shift, tf.where(up["shift"], values, tf.zeros_like(values)))
        if mixing is not None:
            local = Operator(tf.convert_to_tensor(mixing.rows), tf.convert_to_tensor(mixing.cols),
                             tf.cast(mixing.values, self.dtype), mixing.num_owned)
            view = mixing

            def extended_degrees(degree):
                return exchange.extended_block(view, degree[:, None])[:, 0]

            rebuilt = surviving_mixing_tf(local, up["mixing"], self.links.mixing_rule, extended_degrees)
            mixing = with_values(mixing, rebuilt.values)
        return graph._replace(shift=shift, mixing=mixing)

    def _evaluate(self, theta, graph: GraphOps, split: str):
        metrics = {k: tf.cast(v, self.dtype) for k, v in self.task.evaluate(theta, graph, split).items()}
        if self.optimizer.centralized:
            metrics["consensus_error"] = tf.zeros([], self.dtype)
        else:
            metrics["consensus_error"] = self.backend.consensus_error(theta)
        return metrics

    def _steps(self, theta, state, step0, batches, graph_of: Callable, links=None, stale=None):
        """The mini-batches ``batches`` in one loop, mini-batch i on ``graph_of(i)`` (and on plan i of ``links``,
        the stale buffer carried through); returns the new (theta, state), the sums over the mini-batches of
        the training metrics and the new stale values ({} without links)."""
        sums = {k: tf.zeros([], self.dtype) for k in self.task.train_metrics}
        n = tf.shape(batches)[0]
        if links is None:
            def body(i, theta, state, sums):
                theta, state, metrics, _ = self._step(theta, state, step0 + tf.cast(i, tf.int64), batches[i],
                                                      graph_of(i))
                return i + 1, theta, state, {k: sums[k] + metrics[k] for k in sums}

            _, theta, state, sums = tf.while_loop(lambda i, *_: i < n, body, (tf.constant(0), theta, state, sums))
            return theta, tuple(state), sums, {}

        def lossy_body(i, theta, state, sums, stale):
            plan = tf.nest.map_structure(lambda t: t[i], links)
            theta, state, metrics, stale = self._step(theta, state, step0 + tf.cast(i, tf.int64), batches[i],
                                                      graph_of(i), plan, stale)
            return i + 1, theta, state, {k: sums[k] + metrics[k] for k in sums}, stale

        _, theta, state, sums, stale = tf.while_loop(lambda i, *_: i < n, lossy_body,
                                                     (tf.constant(0), theta, state, sums, dict(stale or {})))
        return theta, tuple(state), sums, stale

    def _epoch(self, theta, state, step0, batches, graph: GraphOps, links=None, stale=None):
        """All mini-batches of an epoch in one loop, then the test evaluation (one compiled program)."""
        theta, state, sums, stale = self._steps(theta, state, step0, batches, lambda i: graph, links, stale)
        means = {k: v / tf.cast(tf.shape(batches)[0], self.dtype) for k, v in sums.items()}
        out = (theta, state, means, self._evaluate(theta, graph, "test"), all_finite(theta, state))
        return out if links is None else (*out, stale)

    # ------------------------------------------------------------------ imperfect links, in Python
    def _layout(self, graph: GraphOps) -> LinkLayout:
        """The links and per-operator entry indices of a graph: cached per graph object (a fixed graph: once),
        and per pattern, so that graphs drawn per mini-batch with one pattern (App B's, whose cut links are
        zero weights) share one layout, and the stacked index of a feed (:meth:`_stacked_index`) with it."""
        key = id(graph)
        entry = self._layouts.get(key)  # one lookup: the prefetch thread may look up while this one clears
        if entry is None or entry[0] is not graph:
            if len(self._layouts) > 64:
                self._layouts.clear()
            # (under MPI a graph drawn per mini-batch is a TensorView: its entries are its registered view's)
            ops = {"shift": self.backend.link_view(graph.shift), "mixing": self.backend.link_view(graph.mixing)}
            entries = {name: global_entries(op) for name, op in ops.items() if op is not None}
            pattern = tuple((name, rows.tobytes(), cols.tobytes()) for name, (rows, cols) in entries.items())
            layout = self._pattern_layouts.get(pattern)
            if layout is None:
                if self.links.model.link_failure > 0 and graph.mixing is not None:
                    check_diagonal(graph.mixing, "the mixing operator W")
                owned = self.backend.owned if self.backend.distributed else None
                if len(self._pattern_layouts) > 64:
                    self._pattern_layouts.clear()
                layout = self._pattern_layouts[pattern] = LinkLayout(ops, owned)
            entry = self._layouts[key] = (graph, layout)
        return entry[1]

    def _prefetched_feed(self, first_step: int, graphs: Sequence[GraphOps]):
        """:meth:`_link_feed` of mini-batches ``first_step ..`` on ``graphs``, and the next as many mini-batches'
        drawn in a background thread while their compiled call runs (TensorFlow and NumPy release the GIL).

        Plans of independent erasures and link failures are pure functions of the stream and of the graphs'
        links (no chain state), so the next call's can be drawn before its graphs are: on the links of these
        (a fixed graph, or graphs drawn per mini-batch on one pattern, which share one layout). A prefetched
        draw is taken when its first mini-batch, count and layout match the request; anything else (a
        rollback, a resume, a shorter last call, a Gilbert chain) is drawn here."""
        num, layout = len(graphs), self._layout(graphs[0])
        pending, self._prefetch = self._prefetch, None
        if (pending is not None and pending[0] == (first_step, num) and pending[1] is layout
                and all(self._layout(g) is layout for g in graphs)):
            feed = pending[2].result()
        else:
            feed = self._link_feed(first_step, graphs)
        if self.links.model.gilbert is None:
            if self._pool is None:
                from concurrent.futures import ThreadPoolExecutor

                self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="link-plans")
            nxt = self._pool.submit(self._link_feed, first_step + num, [graphs[0]] * num)
            self._prefetch = ((first_step + num, num), layout, nxt)
        return feed

    def _link_feed(self, first_step: int, graphs: Sequence[GraphOps]):
        """Draw the plans of mini-batches ``first_step ..`` on ``graphs`` (one per mini-batch): the compiled
        programs' ``links`` argument (stacked tensors: ``lost`` (n, E, T, P), link-major; ``index``: per operator
        the link of each entry and of its transpose's; ``up``: per operator its surviving entries, under link
        failures) and what the commit counts (the plans' counts without their masks, undirected links drawn and
        down: a row's draws are kept until it is committed)."""
        layouts = [self._layout(g) for g in graphs]
        layout = self._last_layout = layouts[0]
        for other in layouts[1:]:
            if other is not layout and not (np.array_equal(other.senders, layout.senders)
                                            and np.array_equal(other.receivers, layout.receivers)):
                raise ValueError("graphs drawn per mini-batch with equal shapes must have the same links under a link "
                                 "model (a fixed pattern whose cut links are zero weights)")
        model, n = self.links.model, len(graphs)
        up, links_drawn, links_down = None, 0, 0
        if model.link_failure > 0:
            up = np.stack([model.link_up(first_step + k, layout.senders, layout.receivers) for k in range(n)])
            once = (layout.senders < layout.receivers) & layout.counted  # each undirected link once
            links_drawn, links_down = n * int(once.sum()), int((~up & once[None]).sum())
        plans = draw_plans(model, first_step, n, layout.senders, layout.receivers, self._schedule.packets_per_round(),
                           self.links.policy, chain=self._chain, active=up, counted=layout.counted)
        feed = {"lost": plans.lost, "index": self._stacked_index(layouts)}
        if up is not None:
            feed["up"] = {name: tf.constant(np.stack([_entries_up(lay.index[name][0], up[k])
                                                      for k, lay in enumerate(layouts)]))
                          for name in ("shift", "mixing") if name in layout.index}
        return feed, (plans.counts_only(), links_drawn, links_down)  # the masks live in the feed only

    def _stacked_index(self, layouts: Sequence[LinkLayout]) -> dict[str, tf.Tensor]:
        """The feed's ``index``: per operator the plan-link index of each entry (and of its transpose's), stacked
        over the mini-batches' layouts; kept for the last layouts drawn (a fixed graph: every epoch the same)."""
        key = tuple(id(lay) for lay in layouts)
        entry = self._index_feed  # one read: the prefetch thread may replace it meanwhile
        if entry is None or entry[0] != key or any(a is not b for a, b in zip(entry[1], layouts)):
            index = {}
            for name in ("shift", "mixing"):
                if name in layouts[0].index:
                    index[name] = tf.constant(np.stack([lay.index[name][0] for lay in layouts]))
                    index[f"{name}_t"] = tf.constant(np.stack([lay.index[name][1] for lay in layouts]))
            entry = self._index_feed = (key, list(layouts), index)
        return entry[2]

    def _stale_values(self, graph: GraphOps, feed, indices) -> dict | None:
        """The stale buffer to feed (policy ``stale``): its slots and shapes are what one traced step puts into
        an empty buffer, found once by tracing a step (no XLA compile), all zeros to start."""
        if self.links.policy.kind != "stale":
            return {}
        if self._stale is None:
            one = tf.nest.map_structure(lambda t: t[0], feed)
            trace = tf.function(lambda *a: self._step(*a)[3], autograph=False)
            specs = trace.get_concrete_function(self.theta, self.state, tf.constant(self.step, tf.int64),
                                                tf.constant(indices), graph, one, {}).structured_outputs
            self._stale = {k: tf.zeros(v.shape, v.dtype) for k, v in specs.items()}
        return self._stale

    def _count_links(self, draws) -> tuple[int, int]:
        """Add the draws of committed mini-batches to the link totals; returns their (extra rounds, extra floats
        per node) for mp_rounds and floats_sent_per_node (module docstring)."""
        sizes = self._packet_sizes
        totals = self._link_totals
        extra_rounds = extra_floats = 0
        for plans, links_drawn, links_down in draws:
            extra, retransmitted = plans.extra_rounds, plans.retransmitted
            counts = np.array([plans.packets.sum(), plans.lost_packets.sum(), plans.still_lost.sum(), links_drawn,
                               links_down], np.int64)
            if self.backend.distributed:  # a retransmission round is global: the worst link of any rank
                extra = np.asarray(self.backend.transport.allreduce_max(extra), np.int64)
                retransmitted = np.asarray(self.backend.transport.allreduce_max(retransmitted), np.int64)
                counts = np.asarray(self.backend.transport.allreduce_sum(counts), np.int64)
            extra_rounds += int(extra.sum())
            if retransmitted.size:
                extra_floats += int((retransmitted.sum(axis=0) * sizes[:, :retransmitted.shape[-1]]).sum())
            totals.packets += int(counts[0])
            totals.lost += int(counts[1])
            totals.still_lost += int(counts[2])
            totals.links += int(counts[3])
            totals.links_down += int(counts[4])
        totals.extra_rounds += extra_rounds
        totals.extra_floats += extra_floats
        return extra_rounds, extra_floats

    # ------------------------------------------------------------------ the loop
    def run(self, resume: bool = False, until_epoch: int | None = None,
            on_epoch: Callable[[int, str], None] | None = None,
            on_resumed: Callable[[], None] | None = None) -> TrainResult:
        """Train to ``config.epochs`` (or stop after ``until_epoch`` with a checkpoint and no summary).

        With ``resume``, continue from the run directory's checkpoint (if it has none, start afresh).
        On KeyboardInterrupt the last completed epoch is checkpointed before the exception propagates.
        ``on_epoch(epochs_done, postfix)`` is called after every epoch (e.g. a
        :mod:`core.parallel` progress report; ``postfix`` shows the primary metric), ``on_resumed()`` once the
        checkpoint of a resumed run has been read and accepted.

        Raises :class:`core.runs.RunDiverged` at the first epoch (or logged step) with a non-finite
        metric, parameter or optimizer-state value, after checkpointing the last finite epoch and writing
        summary.json with its ``"diverged"`` entry (module docstring); and, with ``resume``, right away
        for a run directory whose run diverged.
        """
        if resume:
            self._refuse_diverged()
            self.restore()
            if on_resumed is not None:  # (e.g. the app records how the resumed part runs: only once restored)
                on_resumed()
        last = self.config.epochs if until_epoch is None else min(until_epoch, self.config.epochs)
        fixed, per_epoch = self.graphs.fixed, not self.config.log_every_step
        bar = tqdm(total=self.config.epochs, initial=self.epoch, desc=self.config.description or self.optimizer.name,
                   unit=self.config.unit, disable=self.config.quiet, dynamic_ncols=True, leave=False)
        snapshot = None
        try:
            if not self.rows:
                start = time.perf_counter()
                graph = self.graphs.ops if fixed else None
                # eagerly: runs once, so compiling it would cost more than it saves
                metrics = self._evaluate_under_loss(self.theta, graph, 0) if self._eval_lossy else \
                    self._evaluate(self.theta, graph, "test")
                metrics.update(self._evaluate(self.theta, graph, "train"))
                metrics = self.backend.reduce_metrics({k: float(v) for k, v in metrics.items()},
                                                      exclude=("consensus_error",))
                self.wall += time.perf_counter() - start
                self._check_finite(metrics, all_finite(self.theta, self.state), self.step)
                self._log(metrics)
            while self.epoch < last:
                # A Ctrl-C/SIGTERM whose KeyboardInterrupt was swallowed (e.g. in a __del__), or, under MPI, one
                # that any rank got: there the signal only records the request (raising could leave peers in an
                # exchange), and this agreed point (a reduction over ranks) is where every rank stops together
                if self.backend.any_rank(stop_requested()):
                    snapshot = None  # the state is that of the last completed epoch: checkpoint it as it is
                    raise KeyboardInterrupt
                snapshot = self._snapshot()
                start = time.perf_counter()
                batches = self.batches.draw(self.rng)
                if fixed and per_epoch and self._lossy:
                    self._run_lossy_epoch(batches, start)
                elif fixed and per_epoch:
                    theta, state, train, test, finite = self.epoch_fn(
                        self.theta, self.state, tf.constant(self.step, tf.int64), tf.constant(batches), self.graphs.ops)
                    self._commit(theta, state, len(batches), start, {**train, **test}, finite=finite)
                elif per_epoch and getattr(self.graphs, "same_shapes", False):
                    self._run_stacked(batches, start)
                else:
                    self._run_steps(batches, start, per_epoch)
                postfix = f"{self.task.primary}={self.rows[-1][self.task.primary]:.4g}"
                bar.set_postfix_str(postfix, refresh=False)  # before the update, which redraws the bar
                bar.update(1)
                if on_epoch is not None:
                    on_epoch(self.epoch, postfix)
                if self.config.checkpoint_every and self.epoch % self.config.checkpoint_every == 0:
                    self.save_checkpoint()
        except _NonFinite as exc:
            diverged = exc
        except KeyboardInterrupt:
            if snapshot is not None:
                self._restore_snapshot(snapshot)  # back to the last completed epoch
            self.save_checkpoint()
            raise
        else:
            diverged = None
        finally:
            bar.close()
        if diverged is not None:
            self._stop_diverged(diverged, snapshot)
        self.save_checkpoint()
        summary = self.summary() if self.epoch >= self.config.epochs else {}
        if summary and self.run_dir is not None:
            self.run_dir.write_summary(summary)
        return TrainResult(self.rows, summary, self.theta, self.state)

    def _check_finite(self, metrics: Mapping[str, float], finite, step: int) -> None:
        """Raise _NonFinite naming every non-finite value of a row about to be logged (``finite``: the
        compiled program's :func:`all_finite` flags, or a sequence of them for an epoch of several calls)."""
        flags = finite if isinstance(finite, tf.Tensor) else tf.reduce_all(tf.stack(list(finite)), axis=0)
        theta_ok, state_ok = (bool(f) for f in self.backend.all_true(flags.numpy()))  # all ranks stop together
        names = [c for c in self.columns if c in metrics] + [k for k in metrics if k not in self.columns]
        reasons = [f"{k} is {float(metrics[k])}" for k in names if not math.isfinite(float(metrics[k]))]
        reasons += [] if theta_ok else ["parameters are not finite"]
        reasons += [] if state_ok else ["optimizer state is not finite"]
        if reasons:
            raise _NonFinite(", ".join(reasons), step)

    def _stop_diverged(self, exc: _NonFinite, snapshot: tuple | None):
        """Roll back to the last finite epoch, checkpoint it, record the divergence and raise RunDiverged.

        ``snapshot`` is the start of the epoch that went non-finite (None: the initial model's row did).
        """
        if snapshot is None:  # not even the initial model (epoch 0) is finite: nothing worth keeping
            epoch = 0
            summary = {**self.extra_summary, "epochs": 0, "optimizer": self.optimizer.name}
            kept = "the initial model is not finite and nothing is checkpointed"
        else:
            self._restore_snapshot(snapshot)
            epoch = self.epoch + 1
            self.save_checkpoint()
            summary = self.summary()  # final_* / best_* over the rows kept, all finite
            kept = (f"the last finite epoch {self.epoch} is checkpointed" if self.run_dir is not None
                    else f"the trainer holds the last finite epoch {self.epoch}")
        summary["diverged"] = {"epoch": epoch, "step": exc.step, "reason": exc.reason, "last_finite_epoch": epoch - 1}
        if self.run_dir is not None:
            self.run_dir.write_summary(summary)
        path = None if self.run_dir is None else self.run_dir.path
        raise RunDiverged(f"diverged at epoch {epoch} ({exc.reason}); {kept}", epoch, exc.reason, path)

    def _refuse_diverged(self) -> None:
        """A diverged run stays stopped: resuming it would only reproduce the divergence."""
        info = self.backend.bcast(None if self.run_dir is None else self.run_dir.diverged)
        if info is None:
            return
        info = info if isinstance(info, dict) else {}
        epoch, reason = int(info.get("epoch", -1)), str(info.get("reason", "non-finite values"))
        path = None if self.run_dir is None else self.run_dir.path
        raise RunDiverged(f"run {path} diverged at epoch {epoch} ({reason}) and cannot be resumed; "
                          f"start a new run with other settings", epoch, reason, path)

    def _snapshot(self) -> tuple:
        """The loop state at an epoch boundary (tensors are immutable, so references suffice)."""
        links = (self._chain.copy(), self._stale, LinkTotals(**asdict(self._link_totals)),
                 LinkTotals(**asdict(self._row_totals)), self._stale_links.copy())
        return (self.theta, self.state, self.rng.bit_generator.state, self.epoch, self.step, self.rounds,
                self.floats, self.wall, len(self.rows), self.task.state_arrays(), links)

    def _restore_snapshot(self, snapshot: tuple) -> None:
        (self.theta, self.state, rng_state, self.epoch, self.step, self.rounds, self.floats, self.wall, n,
         task_state, links) = snapshot
        self.rng.bit_generator.state = rng_state
        self.task.load_state_arrays(task_state)
        del self.rows[n:]
        self._chain, self._stale, self._link_totals, self._row_totals, self._stale_links = links
        self._chain, self._stale_links = self._chain.copy(), self._stale_links.copy()  # valid for another rollback

    def _run_steps(self, batches: np.ndarray, start: float, per_epoch: bool):
        """An epoch as one compiled call per mini-batch (per-step logging, or a graph per mini-batch)."""
        theta, state, sums, flags, draws = self.theta, self.state, {}, [], []
        graph = self.graphs.ops if self.graphs.fixed else None
        step0 = self.step  # per-step logging advances self.step within the loop: t = step0 + b
        stale = None
        by_link = self._stale_by_link
        for b, indices in enumerate(batches):
            if not self.graphs.fixed:
                graph = self.graphs.draw(self.rng)
            if self._lossy:  # this mini-batch's plan, drawn before the call
                feed, draw = self._link_feed(step0 + b, [graph])
                stale = self._stale_values(graph, feed, indices) if stale is None else stale
                if by_link:  # this graph's entries get their links' last payloads
                    codes = {k: self._slot_codes(graph, k) for k in stale}
                    stale = {k: tf.constant(self._stale_links.aligned(k, codes[k], v), v.dtype)
                             for k, v in stale.items()}
                theta, state, metrics, finite, stale = self.step_fn(
                    theta, state, tf.constant(step0 + b, tf.int64), tf.constant(indices), graph,
                    tf.nest.map_structure(lambda t: t[0], feed), stale)
                if by_link:
                    for k, v in stale.items():
                        self._stale_links.update(k, codes[k], v.numpy())
                draws.append(draw)
            else:
                theta, state, metrics, finite = self.step_fn(theta, state, tf.constant(step0 + b, tf.int64),
                                                              tf.constant(indices), graph)
            if not per_epoch:
                test = self._test_metrics(theta, graph, self.step + 1)
                self._commit(theta, state, 1, start, {**metrics, **test}, end_of_epoch=b == len(batches) - 1,
                             finite=finite, links=draws, stale=stale)
                draws = []
                start = time.perf_counter()
            else:
                sums = {k: sums.get(k, 0.0) + float(v) for k, v in metrics.items()}
                flags.append(finite)  # checked once, at the commit
        if per_epoch:
            test = self._test_metrics(theta, graph, self.step + len(batches))
            means = {k: v / len(batches) for k, v in sums.items()}
            self._commit(theta, state, len(batches), start, {**means, **test}, finite=flags, links=draws, stale=stale)

    def _run_stacked(self, batches: np.ndarray, start: float):
        """An epoch on a graph per mini-batch of equal shapes: ``steps_per_call`` mini-batches per call."""
        theta, state, sums, flags, draws = self.theta, self.state, {}, [], []
        chunk = self.config.steps_per_call
        stale = None
        for begin in range(0, len(batches), chunk):
            indices = batches[begin:begin + chunk]
            drawn = [self.graphs.draw(self.rng) for _ in range(len(indices))]
            step0 = tf.constant(self.step + begin, tf.int64)
            if self._lossy:
                feed, draw = self._prefetched_feed(self.step + begin, drawn)
                stale = self._stale_values(drawn[0], feed, indices[0]) if stale is None else stale
                theta, state, chunk_sums, finite, stale = self.steps_fn(theta, state, step0, tf.constant(indices),
                                                                        stack_graphs(drawn), feed, stale)
                draws.append(draw)
            else:
                theta, state, chunk_sums, finite = self.steps_fn(theta, state, step0, tf.constant(indices),
                                                                 stack_graphs(drawn))
            sums = {k: sums.get(k, 0.0) + v for k, v in chunk_sums.items()}  # tensors: no wait here
            flags.append(finite)  # likewise
        test = self._test_metrics(theta, drawn[-1], self.step + len(batches))  # the last graph, as in _run_steps
        self._commit(theta, state, len(batches), start, {**{k: v / len(batches) for k, v in sums.items()}, **test},
                     finite=flags, links=draws, stale=stale)

    def _run_lossy_epoch(self, batches: np.ndarray, start: float):
        """A fixed-graph epoch as one compiled call under a link model: the epoch's plans drawn first, stacked."""
        graph = self.graphs.ops
        feed, draw = self._prefetched_feed(self.step, [graph] * len(batches))
        stale = self._stale_values(graph, feed, batches[0])
        theta, state, train, test, finite, stale = self.epoch_fn(
            self.theta, self.state, tf.constant(self.step, tf.int64), tf.constant(batches), graph, feed, stale)
        if self._eval_lossy:
            test = self._test_metrics(theta, graph, self.step + len(batches))
        self._commit(theta, state, len(batches), start, {**train, **test}, finite=finite, links=[draw], stale=stale)

    def _test_metrics(self, theta, graph: GraphOps, evaluation: int) -> dict:
        """The test metrics of a row: over lossless links (the compiled evaluation), or, with
        ``eval_under_loss``, over links drawn for evaluation ``evaluation`` (:meth:`_evaluate_under_loss`)."""
        if self._eval_lossy:
            return self._evaluate_under_loss(theta, graph, evaluation)
        return self.eval_fn(theta, graph, "test")

    def _evaluate_under_loss(self, theta, graph: GraphOps, evaluation: int) -> dict:
        """The test metrics over imperfect links (``eval_under_loss``), eagerly: the task's evaluation runs with
        a backend whose ``eval_transport`` is an :class:`_EvaluationLinks` exchange drawing from
        ``model.for_evaluation(evaluation)`` (fresh chains, a fresh stale buffer, its own links down), so
        evaluating never changes the training draws. The task must evaluate through ``task.backend.eval_transport``
        (as :class:`core.supervised.SupervisedGCNN` does)."""
        own = self.task.test_links()
        if own is None:
            layout, transport = self._layout(graph), self.backend.eval_transport if self.backend.distributed else None
        else:  # the task's test graph (the same every time: its layout is kept)
            shift, transport = own
            if self._test_layout is None or self._test_layout[0] is not shift:
                owned = getattr(shift, "owned", None) if transport is not None else None  # (a rank's view)
                self._test_layout = (shift, LinkLayout({"shift": shift}, owned))
            layout = self._test_layout[1]
        exchange = _EvaluationLinks(self.links.model.for_evaluation(evaluation), self.links.policy,
                                    self._schedule.L, layout, transport)
        backend = self.task.backend if hasattr(self.task, "backend") else None
        self.task.backend = _EvaluationBackend(backend or self.backend, exchange)
        try:
            metrics = self._evaluate(theta, graph, "test")
        finally:
            if backend is None:
                del self.task.backend
            else:
                self.task.backend = backend
        if not exchange.used:
            raise ValueError("eval_under_loss needs a task whose evaluation exchanges through task.backend."
                             "eval_transport; this one does not")
        return metrics

    def _commit(self, theta, state, steps: int, start: float, metrics: Mapping, end_of_epoch: bool = True,
                finite=None, links=(), stale=None):
        """Adopt the new parameters and log a row (after the compiled call has finished).

        ``finite``: the :func:`all_finite` flags of the call(s) that produced the row; a non-finite metric
        or flag raises _NonFinite (nothing is adopted), which :meth:`run` turns into RunDiverged. ``links``:
        the draws of the row's mini-batches (:meth:`_link_feed`), ``stale``: the new stale buffer.
        """
        metrics = {k: float(v) for k, v in metrics.items()}  # waits for the computation
        # node-means of this process's nodes -> of all nodes (the consensus error is global already)
        metrics = self.backend.reduce_metrics(metrics, exclude=("consensus_error",))
        self._check_finite(metrics, all_finite(theta, state) if finite is None else finite, self.step + steps)
        self.theta, self.state = theta, tuple(state)
        self.step += steps
        self.steps_here += steps
        self.epoch += int(end_of_epoch)
        self.rounds += steps * self.cost.rounds
        self.floats += steps * self.cost.floats_per_node
        if links:
            extra_rounds, extra_floats = self._count_links(links)
            self.rounds += extra_rounds
            self.floats += extra_floats
        if stale:
            self._stale = stale
        self.wall += time.perf_counter() - start
        self._log(metrics)

    def _log(self, metrics: Mapping):
        row = {"epoch": self.epoch, "step": self.step, "mp_rounds": self.rounds, "floats_sent_per_node": self.floats,
               "lr": self.lr.value(max(self.step - 1, 0))}  # alpha_t of the last update
        row.update({k: float(metrics[k]) for k in (*self.task.train_metrics, *self.task.test_metrics,
                                                   "consensus_error")})
        if self.links is not None:  # the rates of this row's mini-batches, the extra rounds so far
            row.update(self._link_totals.minus(self._row_totals).rates())
            row["extra_rounds"] = self._link_totals.extra_rounds
            self._row_totals = LinkTotals(**asdict(self._link_totals))
            row = {c: row[c] for c in self.columns if c in row}  # the column order
        row["wall_s"] = round(self.wall, 6)
        self.rows.append(row)

    # ------------------------------------------------------------------ results
    def summary(self) -> dict:
        """Final and best value of every metric (``final_<m>``, ``best_<m>``), the epoch of the best
        primary metric, the counts per mini-batch (``..._per_batch``) and in total, the wall time, and
        ``extra_summary`` (whose ``optimizer`` and ``label``, the app's names, come last)."""
        rows, task = self.rows, self.task
        out = {}
        for k in (*task.train_metrics, *task.test_metrics, "consensus_error"):
            values = [r[k] for r in rows]
            out[f"final_{k}"] = values[-1]
            finite = [v for v in values if math.isfinite(v)]
            if k == "consensus_error" or not finite:
                continue
            out[f"best_{k}"] = max(finite) if k in task.maximize else min(finite)
        primary = [r[task.primary] for r in rows]
        pick = np.nanargmax if task.primary in task.maximize else np.nanargmin
        best_row = rows[int(pick(np.asarray(primary, float)))] if any(map(math.isfinite, primary)) else rows[-1]
        cost = self.cost or NO_COST
        out.update({
            "best_epoch": best_row["epoch"], "best_step": best_row["step"], "best_mp_rounds": best_row["mp_rounds"],
            "epochs": self.epoch, "epoch_unit": self.config.unit,  # (App C: an epoch of the trainer is a mini-batch)
            "steps": self.step, "mp_rounds": self.rounds, "floats_sent_per_node": self.floats,
            "mp_rounds_per_batch": cost.rounds, "floats_sent_per_node_per_batch": cost.floats_per_node,
            "largest_message": cost.largest_message, "wall_s": self.wall, "optimizer": self.optimizer.name,
            "consensus_rounds": self.optimizer.consensus_rounds, "kernel": self.kernel,
        })
        if self.backend.distributed:  # what really went over the wire, per rank (collective)
            out.update(self.wire_counts())
        if self.links is not None:
            totals = self._link_totals
            out.update(totals.rates())
            out.update({"packets": totals.packets, "extra_rounds": totals.extra_rounds,
                        "extra_rounds_per_batch": totals.extra_rounds / max(self.step, 1),
                        "extra_floats_per_node": totals.extra_floats, "links": self.links.describe()})
        out.update(self.extra_summary)
        return out

    def wire_counts(self) -> dict:
        """Under MPI: the ranks, and per rank (lists in rank order) the messages and bytes its training
        exchanges sent per mini-batch run in this process (evaluation exchanges are not included), next
        to the logical ``floats_sent_per_node_per_batch``. Collective; {} in-process."""
        if not self.backend.distributed:
            return {}
        counts = self.backend.counters()
        steps = max(self.steps_here, 1)
        return {"mpi_ranks": self.backend.size,
                "mpi_counts_from_step": self.step - self.steps_here,  # (a resumed run: since it was resumed)
                "mpi_messages_sent_per_batch": [m / steps for m in counts["messages_sent"]],
                "mpi_bytes_sent_per_batch": [b / steps for b in counts["bytes_sent"]],
                "mpi_seconds_in_mpi": counts["seconds_in_mpi"]}


def _entries_up(index: np.ndarray, up: np.ndarray) -> np.ndarray:
    """Per operator entry (plan-link ``index``, -1 on the diagonal) whether its link is up, from ``up`` (..., E)
    per link; a diagonal entry is always up."""
    return np.where(index >= 0, up[..., np.maximum(index, 0)], True)


class _EvaluationBackend:
    """A task's backend with another ``eval_transport`` (see :meth:`Trainer._evaluate_under_loss`)."""

    under_loss = True  # (Task.test_links: the task's test exchanges then go through eval_transport)

    def __init__(self, backend, eval_transport: Exchange):
        self._backend, self.eval_transport = backend, eval_transport

    def __getattr__(self, name):
        return getattr(self._backend, name)


class _EvaluationLinks(Exchange):
    """The forward exchanges of an evaluation over imperfect links (eager).

    An exchange ``("fwd", l)`` of N samples is N rounds, sample b's in round b L + l - 1 (the ``forward``
    schedule of N samples); the evaluation's plan over those L N rounds is drawn when the first exchange shows
    N. Links down for the evaluation carry nothing (S restricted to the surviving links). Under MPI
    (``transport``, the backend's evaluation exchange) each exchange moves the halo and applies the losses to
    the view's local entries (``propagate_with``)."""

    def __init__(self, model: LinkModel, policy: LossPolicy, num_layers: int, layout: LinkLayout, transport=None):
        self.model, self.policy, self.L, self.layout = model, policy, int(num_layers), layout
        self.transport = transport
        self.used = 0
        self._context = None
        self._up = None

    def plans(self, schedule: Schedule, num: int):
        """For a task whose evaluation runs simulators of its own (App B: a :class:`core.comm.CommSimulator` per
        test batch): the plans of ``num`` evaluation mini-batches under ``schedule`` on the layout's links,
        ``(lost, keep)``: ``lost`` bool (num, E, T, P), link-major (a :class:`core.links.LinkContext` with
        ``link_major``), and ``keep`` bool (num, nnz) of the layout's ``shift`` entries up in each, or None
        without link failures. Batch k draws as mini-batch k of the evaluation's stream."""
        self.used += 1
        s, r = self.layout.senders, self.layout.receivers
        up = None
        if self.model.link_failure > 0:
            up = np.stack([self.model.link_up(k, s, r) for k in range(num)])
        plans = draw_plans(self.model, 0, num, s, r, schedule.packets_per_round(), self.policy, active=up)
        keep = None
        if up is not None:
            keep = _entries_up(self.layout.index["shift"][0], up)
        return plans.lost, keep

    def propagate(self, op: Operator, x: tf.Tensor, message=None) -> tf.Tensor:
        kind, layer = message[0], int(message[1])
        if kind != "fwd":
            raise ValueError(f"an evaluation over imperfect links runs forward exchanges only, got {message}")
        samples = int(x.shape[1]) if x.shape.rank == 3 else 1
        if self._context is None:
            s, r = self.layout.senders, self.layout.receivers
            self._up = self.model.link_up(0, s, r) if self.model.link_failure > 0 else None
            plan = self.model.plan(0, s, r, [1] * (self.L * samples), self.policy, active=self._up)
            self._context = LinkContext(plan.lost, self.policy, StaleBuffer(), self.layout)
        self.used += 1
        mask = self._context.mask(op, [b * self.L + layer - 1 for b in range(samples)])
        if x.shape.rank != 3:
            mask = mask[0]
        if self._up is not None:
            index = self._context.index_of(op)
            keep = tf.where(index >= 0, tf.gather(tf.constant(self._up), tf.maximum(index, 0)), True)
            keep = keep[None] if op.per_sample else keep
            if self.transport is None:
                op = op._replace(values=tf.where(keep, op.values, tf.zeros_like(op.values)))
            else:  # an MPI rank's view: the same view with the surviving values
                from core.distributed.exchange import ValuedView

                values = tf.constant(op.values, x.dtype)
                op = ValuedView(op, tf.where(keep, values, tf.zeros_like(values)))

        def local(local_op: Operator, block: tf.Tensor) -> tf.Tensor:
            return lossy_apply(local_op, block, mask, self.policy, self._context.stale, ("fwd", layer))

        return local(op, x) if self.transport is None else self.transport.propagate_with(op, x, local)
