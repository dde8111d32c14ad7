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

Logs: one row per epoch (``log_every_step=False``; epoch 0 is the initial model) or per mini-batch,
with columns ``epoch, step, mp_rounds`` (rounds so far), ``floats_sent`` (floats so far that one
node with neighbours broadcast), ``lr`` (alpha_t of the last update), the task's training metrics (the mean over
the epoch's mini-batches of the value measured before each update; at epoch 0, the task's evaluation
on the training set), the task's test metrics, ``consensus_error`` (0 for a centralized model) and
``wall_s`` (training wall-clock seconds, compilation included). Rows, the parameters, the optimizer
state, the generator state and the counts are checkpointed every ``checkpoint_every`` epochs and at
the end (with the task's own :meth:`Task.state_arrays`, if any), so that a resumed run ends with
exactly the metrics of an uninterrupted one.
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
from core.comm import CommCost, CommSimulator, Schedule
from core.executors import consensus_update
from core.gcnn import NO_COUNT
from core.ops import Operator
from core.optimizers import LearningRate, Optimizer
from core.runs import RunDir, RunError

NO_COST = CommCost(rounds=0, floats_per_node=0, largest_message=0)
BASE_COLUMNS = ("epoch", "step", "mp_rounds", "floats_sent", "lr")


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
    (:class:`RandomGraphs`)."""

    epochs: int
    batch_size: int
    seed: int = 0
    checkpoint_every: int = 50
    log_every_step: bool = False
    steps_per_call: int = 50
    jit: bool = True
    quiet: bool = False
    description: str = ""

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
        self.run_dir = run
        self.extra_summary = dict(extra_summary or {})
        self.batches = EpochBatches(task.num_train, config.batch_size)
        self.dtype = task.dtype
        self.cost: CommCost | None = None  # of one mini-batch, known once a step has been traced
        self.columns = (*BASE_COLUMNS, *task.train_metrics, *task.test_metrics, "consensus_error", "wall_s")
        # No autograph: the loop is an explicit tf.while_loop, and converting every Python call of the
        # traced code (the counting simulator loops over samples and message pieces) costs seconds.
        compile_ = dict(jit_compile=config.jit, reduce_retracing=True, autograph=False)
        # The compiled programs (public for benchmarks; see CompiledProgram): epoch_fn(theta, state, step0,
        # batches, graph), step_fn(theta, state, step, indices, graph), steps_fn(theta, state, step0, batches,
        # graphs) for stacked graphs (one per mini-batch), eval_fn(theta, graph, split).
        # Closures rather than bound methods, so that TensorFlow counts retracing per trainer.
        def epoch(theta, state, step0, batches, graph):
            return self._epoch(theta, state, step0, batches, graph)

        def step(theta, state, step, indices, graph):
            return self._step(theta, state, step, indices, graph)

        def steps(theta, state, step0, batches, graphs):
            return self._steps(theta, state, step0, batches, lambda i: graph_at(graphs, i))

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
        self.wall = 0.0
        self.rows: list[dict] = []

    def save_checkpoint(self) -> None:
        """Write everything needed to continue from the current epoch (atomically)."""
        if self.run_dir is None:
            return
        arrays = {"theta": self.theta.numpy()}
        arrays.update({f"state_{k}": s.numpy() for k, s in enumerate(self.state)})
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
        """Load the run directory's checkpoint if it has one; returns whether it did."""
        if self.run_dir is None or not self.run_dir.has_checkpoint():
            return False
        arrays, meta = self.run_dir.load_checkpoint()
        if meta["optimizer"] != self.optimizer.name or meta["dtype"] != self.dtype.name:
            raise RunError(f"checkpoint of {self.run_dir.path} is for {meta['optimizer']} in {meta['dtype']}, "
                           f"not {self.optimizer.name} in {self.dtype.name}")
        self.theta = tf.constant(arrays["theta"], self.dtype)
        if tuple(self.theta.shape) != tuple(self._initial_shape()):
            raise RunError(f"checkpoint parameters have shape {tuple(self.theta.shape)}, "
                           f"this model has {tuple(self._initial_shape())}")
        self.state = tuple(tf.constant(arrays[f"state_{k}"]) for k in range(len(self.state)))
        self.task.load_state_arrays({k[len("task/"):]: v for k, v in arrays.items() if k.startswith("task/")})
        self.epoch, self.step = int(meta["epoch"]), int(meta["step"])
        self.rounds, self.floats, self.wall = int(meta["mp_rounds"]), int(meta["floats_sent"]), float(meta["wall_s"])
        self.rng.bit_generator.state = meta["rng_state"]
        self.rows = list(meta["rows"])
        if meta.get("cost") is not None:  # a finished run resumed traces nothing, yet reports its counts
            self.cost = CommCost(**meta["cost"])
        return True

    def _initial_shape(self):
        n = int(self.task.initial_theta().shape[-1])
        return (n,) if self.optimizer.centralized else (self.task.num_nodes, n)

    # ------------------------------------------------------------------ compiled pieces
    def _step(self, theta, state, step, indices, graph: GraphOps):
        """One mini-batch of Algorithm 1 (lines 5-13). Runs at trace time only in Python."""
        schedule = self.task.schedule(self.optimizer, self.config.batch_size)
        exchange = CommSimulator(schedule) if schedule is not None else NO_COUNT
        grad, metrics = self.task.gradients(theta, indices, graph, self.optimizer, exchange)
        lr = self.lr(step, self.dtype)
        theta, state = consensus_update(self.optimizer, theta, state, grad, graph.mixing, lr, exchange)
        self.cost = exchange.cost() if schedule is not None else NO_COST  # counted while tracing
        return theta, tuple(state), {k: tf.cast(metrics[k], self.dtype) for k in self.task.train_metrics}

    def _evaluate(self, theta, graph: GraphOps, split: str):
        metrics = {k: tf.cast(v, self.dtype) for k, v in self.task.evaluate(theta, graph, split).items()}
        if self.optimizer.centralized:
            metrics["consensus_error"] = tf.zeros([], self.dtype)
        else:
            metrics["consensus_error"] = replicas.consensus_error(theta)
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
        return theta, state, means, self._evaluate(theta, graph, "test")

    # ------------------------------------------------------------------ the loop
    def run(self, resume: bool = False, until_epoch: int | None = None,
            on_epoch: Callable[[int, str], None] | None = None) -> TrainResult:
        """Train to ``config.epochs`` (or stop after ``until_epoch`` with a checkpoint and no summary).

        With ``resume``, continue from the run directory's checkpoint (if it has none, start afresh).
        On KeyboardInterrupt the last completed epoch is checkpointed before the exception propagates.
        ``on_epoch(epochs_done, postfix)`` is called after every epoch (e.g. a
        :mod:`core.parallel` progress report; ``postfix`` shows the primary metric).
        """
        if resume:
            self.restore()
        last = self.config.epochs if until_epoch is None else min(until_epoch, self.config.epochs)
        fixed, per_epoch = self.graphs.fixed, not self.config.log_every_step
        bar = tqdm(total=self.config.epochs, initial=self.epoch, desc=self.config.description or self.optimizer.name,
                   unit="epoch", disable=self.config.quiet, dynamic_ncols=True, leave=False)
        snapshot = None
        try:
            if not self.rows:
                start = time.perf_counter()
                graph = self.graphs.ops if fixed else None
                # eagerly: runs once, so compiling it would cost more than it saves
                metrics = self._evaluate(self.theta, graph, "test")
                metrics.update(self._evaluate(self.theta, graph, "train"))
                self.wall += time.perf_counter() - start
                self._log(metrics)
            while self.epoch < last:
                snapshot = self._snapshot()
                start = time.perf_counter()
                batches = self.batches.draw(self.rng)
                if fixed and per_epoch:
                    theta, state, train, test = self.epoch_fn(self.theta, self.state, tf.constant(self.step, tf.int64),
                                                              tf.constant(batches), self.graphs.ops)
                    self._commit(theta, state, len(batches), start, {**train, **test})
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
        except KeyboardInterrupt:
            if snapshot is not None:
                self._restore_snapshot(snapshot)  # back to the last completed epoch
            self.save_checkpoint()
            raise
        finally:
            bar.close()
        self.save_checkpoint()
        summary = self.summary() if self.epoch >= self.config.epochs else {}
        if summary and self.run_dir is not None:
            self.run_dir.write_summary(summary)
        return TrainResult(self.rows, summary, self.theta, self.state)

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
        theta, state, sums = self.theta, self.state, {}
        graph = self.graphs.ops if self.graphs.fixed else None
        for b, indices in enumerate(batches):
            if not self.graphs.fixed:
                graph = self.graphs.draw(self.rng)
            theta, state, metrics = self.step_fn(theta, state, tf.constant(self.step + b, tf.int64),
                                                  tf.constant(indices), graph)
            if not per_epoch:
                test = self.eval_fn(theta, graph, "test")
                self._commit(theta, state, 1, start, {**metrics, **test}, end_of_epoch=b == len(batches) - 1)
                start = time.perf_counter()
            else:
                sums = {k: sums.get(k, 0.0) + float(v) for k, v in metrics.items()}
        if per_epoch:
            test = self.eval_fn(theta, graph, "test")
            means = {k: v / len(batches) for k, v in sums.items()}
            self._commit(theta, state, len(batches), start, {**means, **test})

    def _run_stacked(self, batches: np.ndarray, start: float):
        """An epoch on a graph per mini-batch of equal shapes: ``steps_per_call`` mini-batches per call."""
        theta, state, sums = self.theta, self.state, {}
        chunk = self.config.steps_per_call
        for begin in range(0, len(batches), chunk):
            indices = batches[begin:begin + chunk]
            drawn = [self.graphs.draw(self.rng) for _ in range(len(indices))]
            theta, state, chunk_sums = self.steps_fn(theta, state, tf.constant(self.step + begin, tf.int64),
                                                     tf.constant(indices), stack_graphs(drawn))
            sums = {k: sums.get(k, 0.0) + v for k, v in chunk_sums.items()}  # tensors: no wait here
        test = self.eval_fn(theta, drawn[-1], "test")  # the last graph, as in _run_steps
        self._commit(theta, state, len(batches), start, {**{k: v / len(batches) for k, v in sums.items()}, **test})

    def _commit(self, theta, state, steps: int, start: float, metrics: Mapping, end_of_epoch: bool = True):
        """Adopt the new parameters and log a row (after the compiled call has finished)."""
        metrics = {k: float(v) for k, v in metrics.items()}  # waits for the computation
        self.theta, self.state = theta, tuple(state)
        self.step += steps
        self.epoch += int(end_of_epoch)
        self.rounds += steps * self.cost.rounds
        self.floats += steps * self.cost.floats_per_node
        self.wall += time.perf_counter() - start
        self._log(metrics)

    def _log(self, metrics: Mapping):
        row = {"epoch": self.epoch, "step": self.step, "mp_rounds": self.rounds, "floats_sent": self.floats,
               "lr": self.lr.value(max(self.step - 1, 0))}  # alpha_t of the last update
        row.update({k: float(metrics[k]) for k in (*self.task.train_metrics, *self.task.test_metrics,
                                                   "consensus_error")})
        row["wall_s"] = round(self.wall, 6)
        self.rows.append(row)

    # ------------------------------------------------------------------ results
    def summary(self) -> dict:
        """Final and best value of every metric (``final_<m>``, ``best_<m>``), the epoch of the best
        primary metric, the counts per mini-batch and in total, and the wall time."""
        rows, task = self.rows, self.task
        out = dict(self.extra_summary)
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
            "epochs": self.epoch, "steps": self.step, "mp_rounds": self.rounds, "floats_sent": self.floats,
            "rounds_per_step": cost.rounds, "floats_per_step": cost.floats_per_node,
            "largest_message": cost.largest_message, "wall_s": self.wall, "optimizer": self.optimizer.name,
            "consensus_rounds": self.optimizer.consensus_rounds,
        })
        return out
