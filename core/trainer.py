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
steps are compiled without XLA there (the exchanges are ``tf.numpy_function`` calls) and issue their
exchanges in the same order on every rank.

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
"""

from __future__ import annotations

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
from core.gcnn import NO_COUNT
from core.ops import Operator
from core.optimizers import LearningRate, Optimizer
from core.runs import RunDir, RunDiverged, RunError, stop_requested

NO_COST = CommCost(rounds=0, floats_per_node=0, largest_message=0)
BASE_COLUMNS = ("epoch", "step", "mp_rounds", "floats_sent_per_node", "lr")
RENAMED_COLUMNS = {"floats_sent": "floats_sent_per_node", "lgs_rounds": "lgs_rounds_per_batch"}
"""Columns of metrics rows saved before version 0.2, by their new names (checkpoints of older runs resume)."""
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

    def __call__(self, *args):
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
    """The operators of one graph G(t): the shift S of the GNN and the consensus weights W (eq. 16)."""

    shift: Operator
    mixing: Operator | None = None


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

    def __post_init__(self):
        if (self.epochs < 1 or self.batch_size < 1 or self.checkpoint_every < 0 or self.seed < 0
                or self.steps_per_call < 1):
            raise ValueError(f"invalid trainer settings {self}")


@dataclass
class TrainResult:
    rows: list[dict]
    summary: dict
    theta: tf.Tensor
    state: tuple


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
    """

    def __init__(self, task: Task, optimizer: Optimizer, lr: LearningRate, graphs, config: TrainerConfig,
                 run: RunDir | None = None, extra_summary: Mapping | None = None):
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
        # No autograph: the loop is an explicit tf.while_loop, and converting every Python call of the
        # traced code (the counting simulator loops over samples and message pieces) costs seconds.
        # MPI exchanges are tf.numpy_function calls, which XLA cannot compile: no jit under MPI
        compile_ = dict(jit_compile=config.jit and not self.backend.distributed, reduce_retracing=True,
                        autograph=False)
        # The compiled programs (public for benchmarks; see CompiledProgram): epoch_fn(theta, state, step0,
        # batches, graph), step_fn(theta, state, step, indices, graph), steps_fn(theta, state, step0, batches,
        # graphs) for stacked graphs (one per mini-batch), eval_fn(theta, graph, split).
        # Closures rather than bound methods, so that TensorFlow counts retracing per trainer.
        # epoch_fn, step_fn and steps_fn also return all_finite(theta, state) as their last output.
        def epoch(theta, state, step0, batches, graph):
            return self._epoch(theta, state, step0, batches, graph)

        def step(theta, state, step, indices, graph):
            theta, state, metrics = self._step(theta, state, step, indices, graph)
            return theta, state, metrics, all_finite(theta, state)

        def steps(theta, state, step0, batches, graphs):
            theta, state, sums = self._steps(theta, state, step0, batches, lambda i: graph_at(graphs, i))
            return theta, state, sums, all_finite(theta, state)

        def evaluate(theta, graph, split):
            return self._evaluate(theta, graph, split)

        self.epoch_fn = CompiledProgram(tf.function(epoch, **compile_))
        self.step_fn = CompiledProgram(tf.function(step, **compile_))
        self.steps_fn = CompiledProgram(tf.function(steps, **compile_))
        self.eval_fn = CompiledProgram(tf.function(evaluate, **compile_))
        self._reset()

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
        if self.run_dir is None:  # another rank than 0 under MPI: its rows went to rank 0
            return
        arrays.update({f"task/{k}": np.asarray(v) for k, v in self.task.state_arrays().items()})
        meta = {
            "epoch": self.epoch, "step": self.step, "mp_rounds": self.rounds, "floats_sent": self.floats,
            "wall_s": self.wall, "rng_state": self.rng.bit_generator.state, "rows": self.rows,
            "optimizer": self.optimizer.name, "dtype": self.dtype.name,
            "cost": None if self.cost is None else asdict(self.cost),
        }
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
        try:
            self.task.load_state_arrays({k[len("task/"):]: v for k, v in arrays.items() if k.startswith("task/")})
        except (KeyError, ValueError, TypeError, IndexError) as exc:
            raise bad(f"has task state the task rejects ({type(exc).__name__}: {exc})") from None
        self.theta, self.state, self.cost = theta, state, cost
        self.epoch, self.step = meta["epoch"], meta["step"]
        self.rounds, self.floats, self.wall = meta["mp_rounds"], meta["floats_sent"], float(meta["wall_s"])
        self.rng.bit_generator.state = meta["rng_state"]
        self.rows = list(rows)
        return True

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
    def _step(self, theta, state, step, indices, graph: GraphOps):
        """One mini-batch of Algorithm 1 (lines 5-13). Runs at trace time only in Python."""
        schedule = self.task.schedule(self.optimizer, self.config.batch_size)
        transport = self.backend.transport
        if schedule is not None:
            exchange = CommSimulator(schedule, transport=None if transport is NO_COUNT else transport)
        else:
            exchange = transport
        grad, metrics = self.task.gradients(theta, indices, graph, self.optimizer, exchange)
        if self.optimizer.centralized:
            grad = self.backend.sum_gradient(grad)  # the ranks' parts (identity in-process)
        lr = self.lr(step, self.dtype)
        theta, state = consensus_update(self.optimizer, theta, state, grad, graph.mixing, lr, exchange)
        self.cost = exchange.cost() if schedule is not None else NO_COST  # counted while tracing
        return theta, tuple(state), {k: tf.cast(metrics[k], self.dtype) for k in self.task.train_metrics}

    def _evaluate(self, theta, graph: GraphOps, split: str):
        metrics = {k: tf.cast(v, self.dtype) for k, v in self.task.evaluate(theta, graph, split).items()}
        if self.optimizer.centralized:
            metrics["consensus_error"] = tf.zeros([], self.dtype)
        else:
            metrics["consensus_error"] = self.backend.consensus_error(theta)
        return metrics

    def _steps(self, theta, state, step0, batches, graph_of: Callable):
        """The mini-batches ``batches`` in one loop, mini-batch i on ``graph_of(i)``; returns the new
        (theta, state) and the sums over the mini-batches of the training metrics."""
        sums = {k: tf.zeros([], self.dtype) for k in self.task.train_metrics}

        def body(i, theta, state, sums):
            theta, state, metrics = self._step(theta, state, step0 + tf.cast(i, tf.int64), batches[i], graph_of(i))
            return i + 1, theta, state, {k: sums[k] + metrics[k] for k in sums}

        n = tf.shape(batches)[0]
        _, theta, state, sums = tf.while_loop(lambda i, *_: i < n, body, (tf.constant(0), theta, state, sums))
        return theta, tuple(state), sums

    def _epoch(self, theta, state, step0, batches, graph: GraphOps):
        """All mini-batches of an epoch in one loop, then the test evaluation (one compiled program)."""
        theta, state, sums = self._steps(theta, state, step0, batches, lambda i: graph)
        means = {k: v / tf.cast(tf.shape(batches)[0], self.dtype) for k, v in sums.items()}
        return theta, state, means, self._evaluate(theta, graph, "test"), all_finite(theta, state)

    # ------------------------------------------------------------------ the loop
    def run(self, resume: bool = False, until_epoch: int | None = None,
            on_epoch: Callable[[int, str], None] | None = None) -> TrainResult:
        """Train to ``config.epochs`` (or stop after ``until_epoch`` with a checkpoint and no summary).

        With ``resume``, continue from the run directory's checkpoint (if it has none, start afresh).
        On KeyboardInterrupt the last completed epoch is checkpointed before the exception propagates.
        ``on_epoch(epochs_done, postfix)`` is called after every epoch (e.g. a
        :mod:`core.parallel` progress report; ``postfix`` shows the primary metric).

        Raises :class:`core.runs.RunDiverged` at the first epoch (or logged step) with a non-finite
        metric, parameter or optimizer-state value, after checkpointing the last finite epoch and writing
        summary.json with its ``"diverged"`` entry (module docstring); and, with ``resume``, right away
        for a run directory whose run diverged.
        """
        if resume:
            self._refuse_diverged()
            self.restore()
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
                metrics = self._evaluate(self.theta, graph, "test")
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
                if fixed and per_epoch:
                    theta, state, train, test, finite = self.epoch_fn(
                        self.theta, self.state, tf.constant(self.step, tf.int64), tf.constant(batches), self.graphs.ops)
                    self._commit(theta, state, len(batches), start, {**train, **test}, finite=finite)
                elif per_epoch and getattr(self.graphs, "same_shapes", False):
                    self._run_stacked(batches, start)
                else:
                    self._run_steps(batches, start, per_epoch)
                postfix = f"{self.task.primary}={self.rows[-1][self.task.primary]:.4g}"
                bar.update(1)
                bar.set_postfix_str(postfix, refresh=False)
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
        return (self.theta, self.state, self.rng.bit_generator.state, self.epoch, self.step, self.rounds,
                self.floats, self.wall, len(self.rows), self.task.state_arrays())

    def _restore_snapshot(self, snapshot: tuple) -> None:
        (self.theta, self.state, rng_state, self.epoch, self.step, self.rounds, self.floats, self.wall, n,
         task_state) = snapshot
        self.rng.bit_generator.state = rng_state
        self.task.load_state_arrays(task_state)
        del self.rows[n:]

    def _run_steps(self, batches: np.ndarray, start: float, per_epoch: bool):
        """An epoch as one compiled call per mini-batch (per-step logging, or a graph per mini-batch)."""
        theta, state, sums, flags = self.theta, self.state, {}, []
        graph = self.graphs.ops if self.graphs.fixed else None
        step0 = self.step  # per-step logging advances self.step within the loop: t = step0 + b
        for b, indices in enumerate(batches):
            if not self.graphs.fixed:
                graph = self.graphs.draw(self.rng)
            theta, state, metrics, finite = self.step_fn(theta, state, tf.constant(step0 + b, tf.int64),
                                                          tf.constant(indices), graph)
            if not per_epoch:
                test = self.eval_fn(theta, graph, "test")
                self._commit(theta, state, 1, start, {**metrics, **test}, end_of_epoch=b == len(batches) - 1,
                             finite=finite)
                start = time.perf_counter()
            else:
                sums = {k: sums.get(k, 0.0) + float(v) for k, v in metrics.items()}
                flags.append(finite)  # checked once, at the commit
        if per_epoch:
            test = self.eval_fn(theta, graph, "test")
            means = {k: v / len(batches) for k, v in sums.items()}
            self._commit(theta, state, len(batches), start, {**means, **test}, finite=flags)

    def _run_stacked(self, batches: np.ndarray, start: float):
        """An epoch on a graph per mini-batch of equal shapes: ``steps_per_call`` mini-batches per call."""
        theta, state, sums, flags = self.theta, self.state, {}, []
        chunk = self.config.steps_per_call
        for begin in range(0, len(batches), chunk):
            indices = batches[begin:begin + chunk]
            drawn = [self.graphs.draw(self.rng) for _ in range(len(indices))]
            theta, state, chunk_sums, finite = self.steps_fn(theta, state, tf.constant(self.step + begin, tf.int64),
                                                             tf.constant(indices), stack_graphs(drawn))
            sums = {k: sums.get(k, 0.0) + v for k, v in chunk_sums.items()}  # tensors: no wait here
            flags.append(finite)  # likewise
        test = self.eval_fn(theta, drawn[-1], "test")  # the last graph, as in _run_steps
        self._commit(theta, state, len(batches), start, {**{k: v / len(batches) for k, v in sums.items()}, **test},
                     finite=flags)

    def _commit(self, theta, state, steps: int, start: float, metrics: Mapping, end_of_epoch: bool = True,
                finite=None):
        """Adopt the new parameters and log a row (after the compiled call has finished).

        ``finite``: the :func:`all_finite` flags of the call(s) that produced the row; a non-finite metric
        or flag raises _NonFinite (nothing is adopted), which :meth:`run` turns into RunDiverged.
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
        self.wall += time.perf_counter() - start
        self._log(metrics)

    def _log(self, metrics: Mapping):
        row = {"epoch": self.epoch, "step": self.step, "mp_rounds": self.rounds, "floats_sent_per_node": self.floats,
               "lr": self.lr.value(max(self.step - 1, 0))}  # alpha_t of the last update
        row.update({k: float(metrics[k]) for k in (*self.task.train_metrics, *self.task.test_metrics,
                                                   "consensus_error")})
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
            "epochs": self.epoch, "steps": self.step, "mp_rounds": self.rounds, "floats_sent_per_node": self.floats,
            "mp_rounds_per_batch": cost.rounds, "floats_sent_per_node_per_batch": cost.floats_per_node,
            "largest_message": cost.largest_message, "wall_s": self.wall, "optimizer": self.optimizer.name,
            "consensus_rounds": self.optimizer.consensus_rounds,
        })
        if self.backend.distributed:  # what really went over the wire, per rank (collective)
            out.update(self.wire_counts())
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
                "mpi_messages_sent_per_batch": [m / steps for m in counts["messages_sent"]],
                "mpi_bytes_sent_per_batch": [b / steps for b in counts["bytes_sent"]],
                "mpi_seconds_in_mpi": counts["seconds_in_mpi"]}
