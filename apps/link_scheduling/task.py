"""Actor-critic link scheduling as a :class:`core.trainer.Task`: the actor is the trained model, the
critic a second, centralized learner updated in the same step (docs/design.md, section 9, Algorithm 1).

One mini-batch (one call of :meth:`LinkSchedulingTask.gradients`) on the conflict graph G(t) that the
trainer drew (Algorithm 1, line 3), with B weight samples:

1. actor forward, B samples x 3 rounds, counted: z (|V|, B) (computed once: see
   :func:`apps.link_scheduling.model.actor_output`);
2. exploration z~ = z + U(-0.03, 0.03) per node and sample;
3. LGS, batched over the B samples (NumPy, inside ``tf.numpy_function``): the critic's targets from
   fresh weights w' and z' = z~ + U(-0.075, 0.075), and the training utility ratio LGS(z * w) / LGS(w)
   with fresh weights w;
4. the critic at the server: one forward pass on z~, then the gradient of its loss with respect to its
   parameters and the gradient dJ/dz~ of the actor's objective;
5. the server sends dJ/dz~_i(b) to node i, and the actor's backward pass runs in the network
   (GradientTape through the counting simulator; docs/design.md, section 2: the tape is the oracle of eqs.
   11-14 and sends what they send, L - 1 = 2 rounds per sample);
6. the critic's Adam step (centralized, here); the actor's step is the trainer's (Algorithm 1, line 12).

Communication accounting (``mp_rounds``/``floats_sent_per_node``): neighbour message passing of the actor only:
3 forward rounds per sample, for distributed optimizers also 2 backward rounds per sample and the
consensus payload of the optimizer, exactly as Table I counts a GCNN. The critic is centralized: a
server that knows the graph evaluates and trains it, so it sends nothing between neighbours. What it
costs the network instead is node-to-server traffic, 2 floats per node and sample (z~_i up, dJ/dz~_i
down), and the LGS runs that produce its targets; both are outside the GCNN training schedule of
Table I, so they are not added to ``mp_rounds``; the LGS rounds of a mini-batch are reported as
``lgs_rounds_per_batch``.

Randomness: every draw of step t is a stateless function of (seed, t), with t a counter that is part
of the task's state, so a resumed run draws exactly what an uninterrupted one draws. The task's state
(critic parameters, its Adam moments, the counter) goes into the trainer's checkpoints and epoch
snapshots through :meth:`LinkSchedulingTask.state_arrays` / :meth:`load_state_arrays`.

MPI (``backend``: a :class:`core.backend.MPIBackend`; docs/design.md, section 11): the actor is distributed
over the ranks, each running the forward and backward passes of its vertices (vertex i keeps parameter copy
i), exchanging with the others along the drawn graph's edges: every graph of a run reaches the trainer as this
rank's views of S(t) and W(t) (:class:`core.distributed.exchange.TensorView`, on the communicator of the union
of the training and test graphs' edges, so one compiled step serves every graph and each exchanges its own
halo) together with the whole S(t) for the server (``GraphOps.observed``: no messages between neighbours, so
the link model never loses nor restricts it, in-process as under MPI). The server is rank 0: the nodes send it
z~_i(b) and z_i (:meth:`core.backend.LocalBackend.gather_to_root`); it runs the LGS (targets and the training
ratio: a measurement computed centrally from the gathered z and its own weight draws, although the LGS itself
is a distributed algorithm whose rounds are reported), the critic's forward and backward passes and its Adam
step, and sends node i its dJ/dz~_i(b) (``scatter_from_root``) and every rank the logged metrics
(``bcast_tensor``). The critic's parameters and moments live on rank 0 (the other ranks hold a copy they never
update) and go into rank 0's checkpoints, so a run resumes under another P or in-process. Every random draw is
the same stateless function of (seed, t) on every rank; a rank uses its vertices' rows of the exploration
noise, rank 0 the server's draws (weights and target noise). Evaluation runs the actor on the block-diagonal
test graph distributed the same way (a vertex's copy serves its G_test block copies), and rank 0 measures the
LGS ratio. Over imperfect links with ``--eval-under-loss`` the trainer draws the test exchanges' losses on the
links of that block graph (:meth:`LinkSchedulingTask.test_links`).

Evaluation: ``test`` is the mean utility ratio over every stored weight sample of the test graphs,
with each node using its own parameter copy (all test graphs form one block-diagonal graph whose node
g|V| + i runs copy i). ``train`` (the row of the untrained model) measures one fixed mini-batch on
the first training graph without updating anything.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import tensorflow as tf

from apps.link_scheduling import model
from core.backend import LOCAL
from core.comm import CommSimulator, Schedule
from core.executors import BatchedExecutor
from core.gcnn import NO_COUNT
from core.graph import Graph, SparseOperator
from core.ops import to_operator
from core.optimizers import CentralizedAdam, Optimizer
from core.replicas import flatten
from core.trainer import GraphOps, Task


class LinkSchedulingTask(Task):
    """GCNN-LGS with a twin critic on conflict graphs of a fixed vertex set.

    Args:
        train_adjacency: (G, V, V) 0/1 training conflict graphs (the trainer draws one per mini-batch).
        test_adjacency: (G_test, V, V) test graphs; test_weights: (G_test, S, V) their stored weights.
        batch_size: B, the weight samples per mini-batch (per call of ``gradients``).
        critic_lr: the critic's Adam step size.
        seed: seeds the actor's and critic's initial parameters and every random draw.
        dtype: float dtype of parameters and data.
        mixing: ``"mh"`` or ``"laplacian"`` consensus weights, and ``mixing_beta`` for the latter.
        num_train: mini-batches an epoch of the trainer holds (its index permutations are unused here:
            weights are drawn online).
        unit_output: scale the initial actor's output kernels so that its mean z is 1 on the first
            training graph (see :meth:`_initial_actor`).
        critic_warmup: mini-batches at the start in which only the critic learns (the actor's gradient
            is zeroed; its optimizer still counts the step).
        scale_free_critic: the critic sees z~ divided by its node mean (:func:`model.critic_input`).
        backend: :class:`core.backend.LocalBackend` (default) or an :class:`core.backend.MPIBackend` built on
            the union of the training and test graphs' edges (module docstring); construction is then
            collective. ``num_nodes`` is the number of vertices this process holds, ``num_vertices`` |V|.
    """

    train_metrics = ("train_ratio", "critic_loss", "lgs_rounds_per_batch")
    test_metrics = ("test_ratio",)
    primary = "test_ratio"
    maximize = frozenset({"train_ratio", "test_ratio"})

    def __init__(self, train_adjacency, test_adjacency, test_weights, batch_size: int, critic_lr: float,
                 seed: int = 0, dtype=tf.float32, mixing: str = "mh", mixing_beta: float = 1e-3,
                 num_train: int | None = None, unit_output: bool = False, critic_warmup: int = 0,
                 scale_free_critic: bool = False, backend=None):
        self.backend = LOCAL if backend is None else backend
        self.unit_output = bool(unit_output)
        self.scale_free_critic = bool(scale_free_critic)
        self.critic_warmup = int(critic_warmup)
        self.train_adjacency = np.asarray(train_adjacency, dtype=bool)
        self.num_vertices = int(self.train_adjacency.shape[-1])
        distributed = self.backend.distributed
        self.num_nodes = self.backend.num_owned if distributed else self.num_vertices
        self._owned = tf.constant(self.backend.owned) if distributed else None
        self.batch_size = int(batch_size)
        self.num_train = int(num_train or batch_size)
        self.dtype = tf.as_dtype(dtype)
        self.mixing, self.mixing_beta = mixing, mixing_beta
        self.critic_lr = float(critic_lr)
        self.seed = int(seed)
        actor_seed, critic_seed, self._draw_seed = np.random.SeedSequence(seed).generate_state(3).tolist()
        self._ops_cache: dict[int, GraphOps] = {}
        self._global_cache: dict[int, tuple] = {}
        self._nnz = self.num_vertices + int(self.train_adjacency.sum(axis=(1, 2)).max())
        self._eval_graph = self._global_ops(0)
        self._rank_eval_graph = None  # under MPI: graph 0's views on the evaluation exchange (made when needed)
        self.theta0 = self._initial_actor(actor_seed)
        if distributed:  # computed alike everywhere; rank 0's bits, so that shared parameters agree exactly
            self.theta0 = tf.constant(self.backend.bcast(self.theta0.numpy()), self.dtype)
        self.critic_optimizer = CentralizedAdam()
        critic0 = flatten(model.CRITIC.init_params(critic_seed, "glorot", self.dtype))
        self.critic_theta = tf.Variable(critic0, trainable=False, name="critic_theta")
        self.critic_state = tuple(tf.Variable(s, trainable=False) for s in self.critic_optimizer.init_state(critic0))
        self.counter = tf.Variable(0, dtype=tf.int64, trainable=False, name="draw_counter")
        self._set_test_graphs(np.asarray(test_adjacency, dtype=bool), np.asarray(test_weights, np.float64))

    # ------------------------------------------------------------------ graphs
    def graph_ops(self, index: int) -> GraphOps:
        """What a mini-batch on training graph ``index`` runs on (cached): in-process, S (normalized
        Laplacian) and W of the whole graph (:meth:`_global_ops`); under MPI, this rank's views of them; and
        S of the whole graph as ``observed``, which the server uses (critic and LGS: no messages between
        neighbours, so neither lost nor restricted by the link model)."""
        if index not in self._ops_cache:
            if self.backend.distributed:
                self._ops_cache[index] = self._rank_ops(index, self.backend.transport)
            else:
                self._ops_cache[index] = self._global_ops(index)
        return self._ops_cache[index]

    def _global_ops(self, index: int) -> GraphOps:
        """S and W of training graph ``index`` as tensors, padded to a common size (cached with the NumPy
        operators). Every training graph's operators get the same number of entries (|V| + the largest 2|E|
        of the training set; the padding entries are 0 at (0, 0), so they add nothing): the compiled step
        then has one input signature and is traced once, whatever graph a mini-batch draws."""
        if index not in self._global_cache:
            graph = Graph.from_dense(self.train_adjacency[index])
            sparse = (graph.shift_operator(model.SHIFT), graph.mixing_matrix(self.mixing, self.mixing_beta))
            shift, mixing = (to_operator(_padded(op, self._nnz), self.dtype) for op in sparse)
            ops = GraphOps(shift, mixing, observed=shift)
            self._global_cache[index] = (ops, sparse)
        return self._global_cache[index][0]

    def _rank_ops(self, index: int, exchange) -> GraphOps:
        """Under MPI: this rank's views of S and W of training graph ``index`` on ``exchange``, and the whole S."""
        full = self._global_ops(index)
        shift, mixing = self._global_cache[index][1]
        return GraphOps(exchange.tensor_view(shift, self.dtype), exchange.tensor_view(mixing, self.dtype),
                        observed=full.observed)

    def draw_graph(self, rng: np.random.Generator) -> GraphOps:
        """Algorithm 1, line 3: a training graph drawn uniformly (for :class:`core.trainer.RandomGraphs`)."""
        return self.graph_ops(int(rng.integers(len(self.train_adjacency))))

    def _set_test_graphs(self, adjacency: np.ndarray, weights: np.ndarray) -> None:
        self.test_adjacency, self.test_weights = adjacency, weights
        block = sp.block_diag([sp.csr_matrix(a.astype(np.float64)) for a in adjacency], format="csr")
        shift = Graph.from_sparse(block).shift_operator(model.SHIFT)
        if self.backend.distributed:  # block vertex g|V| + i lives where vertex i does (collective)
            from core.distributed.exchange import MPIExchange

            self._test_exchange = MPIExchange(np.tile(self.backend.owner, len(adjacency)), [shift], self.backend.comm,
                                              debug=self.backend.transport.debug)
            self._test_shift = self._test_exchange.view(shift)
        else:
            self._test_exchange, self._test_shift = NO_COUNT, to_operator(shift, self.dtype)
        # u(LGS(w)) of every stored sample: the denominator of the ratio never changes (the server's)
        self._test_baseline = np.stack([model.utilities(a, w, w)[0] for a, w in zip(adjacency, weights)]) \
            if self.backend.is_root else None

    def _initial_actor(self, seed: int) -> tf.Tensor:
        """Glorot-uniform actor whose output ReLU is alive: with input ones the features before the last
        layer are nearly equal on every node, so z is nearly constant and either mostly positive or
        mostly 0. Mostly 0 would leave LGS to break ties by index and pass no gradient from most
        nodes; the last layer's kernels are then negated, so that the untrained actor outputs a nearly
        constant z > 0 and reproduces LGS (the paper's untrained ratio is 0.984).

        With ``unit_output`` the output kernels are then scaled so that the mean z is 1. z is positively
        homogeneous in them (ReLU, no bias) and LGS only compares z w, so the untrained policy is the
        same; but Glorot's z is ~0.03, and Adam moves every weight by ~alpha per step whatever the
        gradient's size, so a few hundred steps at alpha = 5e-5 can push z below 0 on most nodes, where
        the output ReLU passes no gradient again (an absorbing state; see apps.link_scheduling.authors)."""
        params = model.ACTOR.init_params(seed, "glorot", self.dtype)
        z = model.actor_output(flatten(params), self._eval_graph.shift)
        if np.mean(z.numpy() > 0) < 0.5:
            params = params[:-2] + [-p for p in params[-2:]]  # the output layer has no bias
            z = model.actor_output(flatten(params), self._eval_graph.shift)
        if self.unit_output:  # z is positively homogeneous in the output kernels: the policy is unchanged
            scale = 1.0 / float(np.mean(np.maximum(z.numpy(), 0.0)))
            params = params[:-2] + [p * scale for p in params[-2:]]
        return flatten(params)

    # ------------------------------------------------------------------ Task API
    def initial_theta(self) -> tf.Tensor:
        return self.theta0

    def schedule(self, optimizer: Optimizer, batch_size: int) -> Schedule:
        return BatchedExecutor(model.ACTOR).schedule_for(optimizer, self.batch_size)

    # Traced by the trainer's tf.function: no tensor-dependent Python control flow here or below, so
    # AutoGraph's source conversion (seconds per trace) is skipped.
    @tf.autograph.experimental.do_not_convert
    def gradients(self, theta, indices, graph: GraphOps, optimizer: Optimizer, exchange):
        per_node = not optimizer.centralized
        if per_node and isinstance(exchange, CommSimulator):
            # The actor's backward pass is GradientTape's; the simulator performs and counts its
            # exchanges as the bwd payloads of eq. (14) (core.comm). The trainer builds the simulator
            # without this switch; see the report's proposal for a Task-level flag.
            exchange.count_tape_backward = True
        terms = self._batch_terms(theta, graph, self.counter, per_node, exchange)
        critic_grad, actor_grad = terms.pop("critic_grad"), terms.pop("actor_grad")
        if self.critic_warmup:
            actor_grad = actor_grad * tf.cast(self.counter >= self.critic_warmup, self.dtype)
        if critic_grad is not None:  # at the server (rank 0 under MPI), which alone trains the critic
            lr = tf.constant(self.critic_lr, self.dtype)
            new_theta, new_state = self.critic_optimizer.step(self.critic_theta, critic_grad, None,
                                                              tuple(self.critic_state), lr)
            self.critic_theta.assign(new_theta)
            for variable, value in zip(self.critic_state, new_state):
                variable.assign(value)
        self.counter.assign_add(1)
        return actor_grad, terms

    @tf.autograph.experimental.do_not_convert
    def evaluate(self, theta, graph: GraphOps | None, split: str) -> dict[str, tf.Tensor]:
        if split == "train":
            graph = self._eval_graph
            if self.backend.distributed:
                if self._rank_eval_graph is None:
                    self._rank_eval_graph = self._rank_ops(0, self.backend.eval_transport)
                graph = self._rank_eval_graph
            terms = self._batch_terms(theta, graph, tf.constant(-1, tf.int64), per_node=theta.shape.rank == 2,
                                      exchange=self.backend.eval_transport, gradients=False)
            return {k: terms[k] for k in self.train_metrics}
        tests = len(self.test_adjacency)
        if theta.shape.rank == 2:  # node g|V| + i of the block-diagonal test graph runs copy i
            theta = tf.tile(theta, [tests, 1])  # (under MPI local row g n_own + k is block vertex g|V| + owned[k])
        # over imperfect links (the trainer's eval_under_loss) through the trainer's lossy evaluation exchange
        exchange = self.backend.eval_transport if self.backend.under_loss else self._test_exchange
        z = model.actor_output(theta, self._test_shift, exchange)
        # to the server vertex-major (row i: vertex i's outputs on the test graphs), back to block order there
        z = self.backend.gather_to_root(tf.transpose(tf.reshape(z, [tests, -1])))
        if self.backend.is_root:
            ratio = tf.numpy_function(self._test_ratio, [tf.reshape(tf.transpose(z), [-1])], self.dtype,
                                      stateful=False)
        else:
            ratio = tf.zeros([], self.dtype)  # a placeholder for rank 0's value
        return {"test_ratio": self.backend.bcast_tensor(tf.reshape(ratio, []))}

    def test_links(self):
        """The block-diagonal test graph's S (this rank's view of it under MPI) and, under MPI, its exchange:
        what an evaluation over imperfect links draws its links on (core.trainer.Task.test_links)."""
        return self._test_shift, (self._test_exchange if self.backend.distributed else None)

    # ------------------------------------------------------------------ state (for checkpoints)
    def state_arrays(self) -> dict[str, np.ndarray]:
        arrays = {"critic_theta": self.critic_theta.numpy(), "counter": self.counter.numpy()}
        arrays.update({f"critic_state_{k}": v.numpy() for k, v in enumerate(self.critic_state)})
        return arrays

    def load_state_arrays(self, arrays) -> None:
        self.critic_theta.assign(arrays["critic_theta"])
        self.counter.assign(arrays["counter"])
        for k, variable in enumerate(self.critic_state):
            variable.assign(arrays[f"critic_state_{k}"])

    # ------------------------------------------------------------------ the mini-batch
    def _uniform(self, shape, counter, stream: int, low: float, high: float):
        """Stateless U(low, high) draw number ``stream`` of step ``counter``."""
        seed = tf.stack([tf.constant(self._draw_seed + stream, tf.int64), counter])
        return tf.random.stateless_uniform(shape, seed, minval=low, maxval=high, dtype=self.dtype)

    def _batch_terms(self, theta, graph: GraphOps, counter, per_node: bool, exchange, gradients: bool = True) -> dict:
        """Steps 1-5 of the module docstring; metrics and (``gradients``) both gradients (nothing is updated).

        Under MPI the actor's part runs on this rank's vertices and the critic's at the server (rank 0);
        ``critic_grad`` is None on the other ranks."""
        n, b, backend = self.num_vertices, self.batch_size, self.backend
        local_shift, full_shift = graph.shift, graph.shift if graph.observed is None else graph.observed
        # over imperfect links the B forward passes lose different packets: run them all (else one stands for B)
        samples = b if getattr(exchange, "lossy", False) else 1
        with tf.GradientTape() as actor_tape:
            actor_tape.watch(theta)
            z_out = model.actor_output(theta, local_shift, exchange or NO_COUNT, samples)
        z = z_out if samples > 1 else tf.tile(z_out[:, None], [1, b])  # the B samples' outputs
        noise = self._uniform([n, b], counter, 0, -model.EXPLORATION_NOISE, model.EXPLORATION_NOISE)
        z_tilde = z + (noise if self._owned is None else tf.gather(noise, self._owned))  # this node's draws
        # what the nodes send the server: z~_i(b), and z_i for the measured training ratio
        z_sent = z if samples > 1 else z_out[:, None]
        sent = backend.gather_to_root(tf.concat([z_sent, z_tilde], axis=1))
        if backend.is_root:
            dz, metrics, critic_grad = self._server_terms(sent[:, :samples], sent[:, samples:], full_shift, counter,
                                                          per_node, gradients)
        else:  # placeholders for what the server sends
            dz, metrics, critic_grad = tf.zeros([0, b], self.dtype), tf.zeros([3], self.dtype), None
        terms = dict(zip(self.train_metrics, tf.unstack(backend.bcast_tensor(metrics))))
        if gradients:
            dz = backend.scatter_from_root(dz)  # what the server sends back to each node: dJ/dz~_i(b)
            # the sum of the B samples' backward passes is one backward pass of the summed gradient
            out_grad = dz if samples > 1 else tf.reduce_sum(dz, axis=1)
            terms["actor_grad"] = actor_tape.gradient(z_out, theta, output_gradients=out_grad)
            terms["critic_grad"] = critic_grad
        return terms

    def _server_terms(self, z_node, z_tilde, shift, counter, per_node: bool, gradients: bool):
        """The server's part of a mini-batch on the whole graph (``shift``), given the actor's z (|V|, B or 1) and
        z~ (|V|, B): LGS targets and ratio, the critic's
        forward pass and, with ``gradients``, dJ/dz~ (|V|, B) and the critic's gradient. Returns (dJ/dz~ or None,
        [train_ratio, critic_loss, lgs_rounds_per_batch], critic gradient or None)."""
        n, b = self.num_vertices, self.batch_size
        z = z_node if z_node.shape[1] == b else tf.tile(z_node, [1, b])  # (|V|, B), or one column for all B
        draws = [tf.transpose(z), tf.transpose(z_tilde), self._uniform([b, n], counter, 1, 0.0, 1.0),
                 self._uniform([b, n], counter, 2, 0.0, 1.0),
                 self._uniform([b, n], counter, 3, -model.TARGET_NOISE, model.TARGET_NOISE)]
        target, ratio, rounds = tf.numpy_function(self._lgs_terms, [shift.rows, shift.cols, *draws],
                                                  [self.dtype] * 3, stateful=False)
        target = tf.transpose(tf.reshape(target, [b, n, 2]), [1, 0, 2])
        with tf.GradientTape(persistent=True) as critic_tape:
            critic_tape.watch([z_tilde, self.critic_theta])
            out = model.critic_output(self.critic_theta, z_tilde, shift, self.scale_free_critic)
            critic_loss = model.critic_loss(out, target, self.critic_theta)
            actor_loss = model.actor_loss(out, per_node)
        metrics = tf.stack([tf.reshape(ratio, []), critic_loss, tf.reshape(rounds, [])])
        if not gradients:
            return None, metrics, None
        dz = critic_tape.gradient(actor_loss, z_tilde)
        return dz, metrics, critic_tape.gradient(critic_loss, self.critic_theta)

    def _adjacency(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        adjacency = np.zeros((self.num_vertices, self.num_vertices), dtype=bool)
        off = rows != cols
        adjacency[rows[off], cols[off]] = True
        return adjacency

    def _lgs_terms(self, rows, cols, z, z_tilde, weights, critic_weights, noise):
        """NumPy: critic targets (B, V, 2), the mean training utility ratio and mean LGS rounds."""
        adjacency = self._adjacency(rows, cols)
        ratio = model.utility_ratio(adjacency, z, weights).mean()
        target, rounds = model.critic_targets(adjacency, z_tilde, critic_weights, noise)
        dtype = self.dtype.as_numpy_dtype
        return target.astype(dtype), np.asarray(ratio, dtype), np.asarray(rounds.mean(), dtype)

    def _test_ratio(self, z: np.ndarray) -> np.ndarray:
        """NumPy: the mean utility ratio over every stored test sample, for the actor's z (G V,)."""
        z = z.reshape(len(self.test_adjacency), 1, self.num_vertices)
        ratios = [model.utility_ratio(a, np.broadcast_to(zg, w.shape), w, base)
                  for a, zg, w, base in zip(self.test_adjacency, z, self.test_weights, self._test_baseline)]
        return np.asarray(np.mean(ratios), self.dtype.as_numpy_dtype)


def _padded(op: SparseOperator, nnz: int) -> SparseOperator:
    """``op`` with zero entries at (0, 0) appended up to ``nnz`` entries (the same matrix)."""
    extra = nnz - op.nnz
    pad = np.zeros(extra, dtype=op.rows.dtype)
    return SparseOperator(np.concatenate([op.rows, pad]), np.concatenate([op.cols, pad]),
                          np.concatenate([op.values, np.zeros(extra, op.values.dtype)]), op.num_nodes)


def union_graph(*adjacencies) -> Graph:
    """The union of the edges of stacks (G, V, V) of graphs on one vertex set: what an MPI run partitions and
    builds its communicator on (every training and test graph's edges lie in it)."""
    stacks = [np.asarray(a, bool) for a in adjacencies]
    n = stacks[0].shape[-1]
    return Graph.from_dense(np.any(np.concatenate([a.reshape(-1, n, n) for a in stacks]), axis=0))
