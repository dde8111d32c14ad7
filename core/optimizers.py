"""Centralized and distributed optimizers (docs/design.md, section 3) on flat parameter vectors.

Every optimizer works on parameters flattened to one vector: shape (|theta|,) for centralized
training (one shared model), (|V|, |theta|) for distributed training (one row per node). An optimizer
never talks to neighbours itself: it says what must be mixed and the executor performs the consensus
rounds through the communication simulator, then hands the mixed values to :meth:`Optimizer.step`:

- ``consensus = "none"`` (C-SGD, C-Adam): nothing is mixed;
- ``consensus = "gradient"`` (D-naive, D-naive-PB, D-GC-Adam, D-GCP-Adam): K rounds x <- W x (eq. 15) on
  :meth:`Optimizer.consensus_payload` (the local gradients g, or [theta, g] for D-GCP-Adam), ``mixed`` is
  W^K of it;
- ``consensus = "parameter"`` (D-SGD, D-Adam, D-AMSGrad, eq. 17; D-GT, D-GT-Adam): one round on
  :meth:`payload` (theta; [theta, u~] for D-AMSGrad; [theta, y] for the gradient-tracking optimizers),
  ``mixed`` is W times the payload.

State is a tuple of tensors so that steps compile into ``tf.function`` / XLA programs.

The step size alpha_t follows a :class:`LearningRate` schedule (Algorithm 1, line 13): constant or
exponential decay.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import tensorflow as tf

OPTIMIZERS = ("c-sgd", "c-adam", "d-naive", "d-naive-pb", "d-sgd", "d-adam", "d-amsgrad")
# Distributed optimizers beyond the paper's list (not part of ``OPTIMIZERS``, so no app's "all" changes).
EXTRA_OPTIMIZERS = ("d-gc-adam", "d-gcp-adam", "d-gt", "d-gt-adam")
LR_SCHEDULES = ("constant", "exponential")


@dataclass(frozen=True)
class LearningRate:
    """alpha_t for update t = 0, 1, ... (Algorithm 1, lines 1 and 13).

    ``constant``: alpha_t = alpha. ``exponential``: alpha_t = alpha * rate^(t / steps), or
    rate^floor(t / steps) with ``staircase`` (the usual exponential decay of Keras/TF).
    """

    alpha: float
    schedule: str = "constant"
    decay_rate: float = 0.96
    decay_steps: int = 1000
    staircase: bool = False

    def __post_init__(self):
        if not (isinstance(self.alpha, numbers.Real) and not isinstance(self.alpha, bool)
                and math.isfinite(self.alpha) and self.alpha > 0):
            raise ValueError(f"learning rate must be a finite number > 0, got {self.alpha!r}")
        object.__setattr__(self, "alpha", float(self.alpha))  # NumPy scalars too; a plain float in config.json
        if self.schedule not in LR_SCHEDULES:
            raise ValueError(f"unknown lr schedule {self.schedule!r}; choose one of {', '.join(LR_SCHEDULES)}")
        if not 0 < self.decay_rate <= 1:
            raise ValueError(f"lr decay rate must be in (0, 1], got {self.decay_rate!r}")
        if int(self.decay_steps) != self.decay_steps or self.decay_steps < 1:
            raise ValueError(f"lr decay steps must be an integer >= 1, got {self.decay_steps!r}")

    def __call__(self, step, dtype=tf.float32) -> tf.Tensor:
        """alpha_t as a scalar tensor of ``dtype``; ``step`` (t) may be a Python int or an integer tensor."""
        alpha = tf.constant(self.alpha, dtype)
        if self.schedule == "constant":
            return alpha
        exponent = tf.cast(step, dtype) / tf.constant(float(self.decay_steps), dtype)
        if self.staircase:
            exponent = tf.floor(exponent)
        return alpha * tf.pow(tf.constant(self.decay_rate, dtype), exponent)

    def value(self, step: int) -> float:
        """alpha_t as a Python float (for logs and tests)."""
        if self.schedule == "constant":
            return float(self.alpha)
        exponent = step / self.decay_steps
        return float(self.alpha * self.decay_rate ** (math.floor(exponent) if self.staircase else exponent))


class Optimizer:
    """Base class. Subclasses set ``name``, ``consensus`` and ``schedule`` and implement ``step``."""

    name = "optimizer"
    consensus = "none"
    schedule = "forward"  # the communication schedule of core.comm this optimizer runs under

    def __init__(self, consensus_rounds: int = 1):
        if int(consensus_rounds) != consensus_rounds or consensus_rounds < 1:
            raise ValueError(f"consensus rounds K must be an integer >= 1, got {consensus_rounds!r}")
        self.consensus_rounds = int(consensus_rounds)

    @property
    def centralized(self) -> bool:
        return self.consensus == "none"

    def payload_size(self, num_params: int) -> int:
        """Floats per node mixed by the parameter-consensus round (0 if there is none)."""
        return num_params if self.consensus == "parameter" else 0

    def init_state(self, theta: tf.Tensor) -> tuple:
        return ()

    def payload(self, theta: tf.Tensor, state: tuple) -> tf.Tensor:
        """What each node broadcasts for parameter consensus (eq. 17): theta by default."""
        return theta

    def consensus_payload(self, theta: tf.Tensor, grad: tf.Tensor, state: tuple) -> tf.Tensor:
        """What the K gradient-consensus rounds mix (eq. 15): the local gradients by default.

        Only batch-level consensus (schedules ``batch`` and ``piggyback``) may mix more than the gradient;
        per-sample consensus (``naive``) always mixes the per-sample gradients.
        """
        return grad

    def step(self, theta, grad, mixed, state, lr):  # pragma: no cover - abstract
        raise NotImplementedError

    def __repr__(self):
        return f"{type(self).__name__}(name={self.name!r}, K={self.consensus_rounds})"


class CentralizedSGD(Optimizer):
    name = "c-sgd"

    def step(self, theta, grad, mixed, state, lr):
        return theta - lr * grad, state


class CentralizedAdam(Optimizer):
    """Standard Adam with bias correction."""

    name = "c-adam"

    def __init__(self, beta1=0.9, beta2=0.999, eps=1e-8):
        super().__init__()
        self.beta1, self.beta2, self.eps = beta1, beta2, eps

    def init_state(self, theta):
        return (tf.zeros_like(theta), tf.zeros_like(theta), tf.zeros([], theta.dtype))

    def step(self, theta, grad, mixed, state, lr):
        m, v, t = state
        t = t + 1
        m = self.beta1 * m + (1 - self.beta1) * grad
        v = self.beta2 * v + (1 - self.beta2) * grad * grad
        m_hat = m / (1 - self.beta1**t)
        v_hat = v / (1 - self.beta2**t)
        return theta - lr * m_hat / (tf.sqrt(v_hat) + self.eps), (m, v, t)


class GradientConsensus(Optimizer):
    """D-naive (K): each node steps with K consensus rounds of local gradients, theta - alpha W^K g.

    The update is the same whether consensus runs per sample (``schedule="naive"``: D-naive) or once on
    the batch-summed gradient (``"batch"``, or ``"piggyback"``: D-naive-PB); only the rounds differ.
    """

    consensus = "gradient"

    def __init__(self, consensus_rounds: int = 1, schedule: str = "naive"):
        super().__init__(consensus_rounds)
        if schedule not in ("naive", "batch", "piggyback"):
            raise ValueError(f"gradient consensus runs under naive, batch or piggyback, not {schedule!r}")
        self.schedule = schedule
        self.name = {"naive": "d-naive", "batch": "d-naive-batch", "piggyback": "d-naive-pb"}[schedule]

    def payload_size(self, num_params):
        return num_params

    def step(self, theta, grad, mixed, state, lr):
        return theta - lr * mixed, state


class DSGD(Optimizer):
    """D-SGD (eq. 17, Swenson et al.): theta^i <- sum_j W_ij theta^j - alpha g_i."""

    name = "d-sgd"
    consensus = "parameter"
    schedule = "dopt"

    def step(self, theta, grad, mixed, state, lr):
        return mixed - lr * grad, state


class DAdam(Optimizer):
    """D-Adam (DADAM, Nazari et al.): local moments, max-tracked second moment, mixed parameters.

    m_i <- b1 m_i + (1-b1) g_i;  v_i <- b2 v_i + (1-b2) g_i^2;  v^_i <- max(v^_i, v_i);
    theta^i <- sum_j W_ij theta^j - alpha m_i / (sqrt(v^_i) + eps).

    ``bias_correction=True, eps=1e-7`` gives the paper authors' published variant (bias-corrected local
    Adam with Keras' epsilon, without the max), see docs/design.md, section 3.
    """

    name = "d-adam"
    consensus = "parameter"
    schedule = "dopt"

    def __init__(self, beta1=0.9, beta2=0.999, eps=1e-8, bias_correction: bool = False):
        super().__init__()
        self.beta1, self.beta2, self.eps, self.bias_correction = beta1, beta2, eps, bias_correction

    def init_state(self, theta):
        return (tf.zeros_like(theta), tf.zeros_like(theta), tf.zeros_like(theta), tf.zeros([], theta.dtype))

    def step(self, theta, grad, mixed, state, lr):
        m, v, v_max, t = state
        t = t + 1
        m = self.beta1 * m + (1 - self.beta1) * grad
        v = self.beta2 * v + (1 - self.beta2) * grad * grad
        if self.bias_correction:
            direction = (m / (1 - self.beta1**t)) / (tf.sqrt(v / (1 - self.beta2**t)) + self.eps)
        else:
            v_max = tf.maximum(v_max, v)
            direction = m / (tf.sqrt(v_max) + self.eps)
        return mixed - lr * direction, (m, v, v_max, t)


class DAMSGrad(Optimizer):
    """D-AMSGrad (Chen et al.): the second moment is tracked by consensus on u~ (docs/design.md, section 3).

    m_i, v_i as D-Adam; v^_i(t) = max(v^_i(t-1), v_i(t)) with v^_i(0) = eps; u~_i(1) = eps;
    u_i(t) = max(u~_i(t), eps);  theta^i(t+1) = sum_j W_ij theta^j(t) - alpha m_i(t) / sqrt(u_i(t));
    u~_i(t+1) = sum_j W_ij u~_j(t) - v^_i(t-1) + v^_i(t).
    The payload is [theta^i, u~_i]: one extra |theta|-sized consensus message per mini-batch.
    """

    name = "d-amsgrad"
    consensus = "parameter"
    schedule = "dopt"

    def __init__(self, beta1=0.9, beta2=0.999, eps=1e-8):
        super().__init__()
        self.beta1, self.beta2, self.eps = beta1, beta2, eps

    def payload_size(self, num_params):
        return 2 * num_params

    def init_state(self, theta):
        # v^_i(0) = u~_i(1) = eps, built in theta's dtype: tf.cast(1e-8, tf.float64) would go through
        # float32 and start float64 runs from 9.99999993922529e-09
        eps = tf.fill(tf.shape(theta), tf.constant(self.eps, theta.dtype))
        return (tf.zeros_like(theta), tf.zeros_like(theta), eps, eps)  # m, v, v^, u~

    def payload(self, theta, state):
        return tf.concat([theta, state[3]], axis=-1)

    def step(self, theta, grad, mixed, state, lr):
        m, v, v_max, u_tilde = state
        mixed_theta, mixed_u = tf.split(mixed, 2, axis=-1)
        m = self.beta1 * m + (1 - self.beta1) * grad
        v = self.beta2 * v + (1 - self.beta2) * grad * grad
        new_v_max = tf.maximum(v_max, v)
        u = tf.maximum(u_tilde, tf.constant(self.eps, u_tilde.dtype))
        theta = mixed_theta - lr * m / tf.sqrt(u)
        u_tilde = mixed_u - v_max + new_v_max
        return theta, (m, v, new_v_max, u_tilde)


class GradientConsensusAdam(GradientConsensus):
    """D-GC-Adam: K rounds of gradient consensus, then a local bias-corrected Adam step on the result.

    x_i = (W^K g)_i (eq. 15 on the batch-summed local gradients, as D-naive-PB); per node
    m_i <- b1 m_i + (1-b1) x_i;  v_i <- b2 v_i + (1-b2) x_i^2;
    theta^i <- theta^i - alpha m^_i / (sqrt(v^_i) + eps) with C-Adam's bias correction and constants.

    This is the scheme of the paper authors' published power-allocation code (gradient consensus and
    Adam). Unlike D-Adam, every node normalises (an estimate of) the network-average gradient rather
    than its own local gradient: where local gradients differ by orders of magnitude between nodes
    (UWMMSE), the mean of per-node normalised local steps is a poor descent direction, while W^K g
    tends to the average gradient as K grows, and with equal copies and K -> inf the update is C-Adam's.
    Rounds are D-naive-PB's: LB + L - 1 + K per mini-batch.

    ``mix_parameters=False`` (D-GC-Adam): parameters are not mixed, so the copies drift apart (nothing
    pulls them together; consensus error grows with training). ``mix_parameters=True`` (D-GCP-Adam):
    each of the K rounds carries [theta^i, g_i] (2|theta| floats instead of |theta|, same rounds), and
    the step starts from the mixed parameters: [y_i, x_i] = (W^K [theta, g])_i,
    theta^i <- y_i - alpha m^_i / (sqrt(v^_i) + eps), with the moments driven by x_i as above. The mixing
    contracts the disagreement of the copies by |lambda_2(W)|^K per mini-batch (as D-SGD does with K = 1),
    and with W = 11^T / |V| every copy takes C-Adam's step exactly.
    """

    def __init__(self, consensus_rounds: int = 1, beta1=0.9, beta2=0.999, eps=1e-8, mix_parameters: bool = False):
        super().__init__(consensus_rounds, "piggyback")
        self.mix_parameters = bool(mix_parameters)
        self.name = "d-gcp-adam" if self.mix_parameters else "d-gc-adam"
        self.beta1, self.beta2, self.eps = beta1, beta2, eps

    def payload_size(self, num_params):
        return 2 * num_params if self.mix_parameters else num_params

    def init_state(self, theta):
        return (tf.zeros_like(theta), tf.zeros_like(theta), tf.zeros([], theta.dtype))

    def consensus_payload(self, theta, grad, state):
        return tf.concat([theta, grad], axis=-1) if self.mix_parameters else grad

    def step(self, theta, grad, mixed, state, lr):
        if self.mix_parameters:
            theta, mixed = tf.split(mixed, 2, axis=-1)  # W^K theta, W^K g
        m, v, t = state
        t = t + 1
        m = self.beta1 * m + (1 - self.beta1) * mixed
        v = self.beta2 * v + (1 - self.beta2) * mixed * mixed
        m_hat = m / (1 - self.beta1**t)
        v_hat = v / (1 - self.beta2**t)
        return theta - lr * m_hat / (tf.sqrt(v_hat) + self.eps), (m, v, t)


class GradientTracking(Optimizer):
    """D-GT (DIGing, Nedic-Olshevsky-Shi 2017; GT-DSGD, Xin-Khan-Kar 2021) and D-GT-Adam (GTAdam,
    Carnevale et al. 2022): each node tracks the network-average gradient with y^i (docs/design.md, section 13).

        theta^i(t+1) = sum_j W_ij theta^j(t) - alpha d^i(t),
        y^i(t)       = sum_j W_ij y^j(t-1) + g_i(t) - g_i(t-1),     y^i(-1) = g_i(-1) = 0,

    with d^i(t) = y^i(t) for D-GT, and for D-GT-Adam the bias-corrected local Adam direction of moments
    driven by the tracker: m_i <- b1 m_i + (1-b1) y^i(t); v_i <- b2 v_i + (1-b2) y^i(t)^2;
    d^i(t) = m^_i / (sqrt(v^_i) + eps) with C-Adam's bias correction and constants (GTAdam without its clip
    of v). g_i(t) is node i's local gradient of mini-batch t (summed over its B samples, eq. 8c) at theta(t).

    How the recursion y(t+1) = W y(t) + g(t+1) - g(t), y(0) = g(0), fits Algorithm 1: mini-batch t only
    knows g(t) after its backward pass, so it completes y(t) = W y(t-1) + g(t) - g(t-1) and then steps
    theta(t+1) = W theta(t) - alpha y(t). Both W theta(t) and W y(t-1) mix values that exist when
    mini-batch t starts, so [theta^i(t), y^i(t-1)] rides in the eq. (17) payload, pieced over the forward
    rounds (schedule ``dopt``): LB + L - 1 rounds, 2|theta| + 1 floats (with the degree d_i) on top of the
    forward and backward messages, as D-AMSGrad's [theta, u~]. The iterates are DIGing's; only the
    labelling of rounds shifts (DIGing's iteration k sends x(k) and y(k); here theta(k) travels in
    mini-batch k and y(k) in mini-batch k + 1).

    State ``(y, g_prev)`` holds (y(t-1), g(t-1)) when mini-batch t starts, both zero before the first one,
    so y(0) = W 0 + (g(0) - 0) = g(0) exactly and the first update is D-SGD's (the zero tracker of the first
    payload is sent and counted anyway: every mini-batch has the same schedule). D-GT-Adam appends
    ``(m, v, t)``. Nothing else marks the first step, so checkpoints and exact resume need nothing new.

    Tracking: with W(t) doubly stochastic (the MH and Laplacian weights, also when G(t) changes per
    mini-batch), mean_i y^i(t) = mean_i y^i(t-1) + mean_i g_i(t) - mean_i g_i(t-1), hence by induction from
    0 = 0, mean_i y^i(t) = mean_i g_i(t) at every step. A consensual fixed point (theta^i = theta*,
    y^i = y*) has y* = mean_i g_i(theta*) = 0: a stationary point of sum_i f_i, so a constant step has no
    error floor from heterogeneous local gradients (D-SGD's fixed points have sum_i g_i(theta^i) = 0 with
    disagreeing copies, at a distance O(alpha) that grows with the spread of the g_i).
    """

    consensus = "parameter"
    schedule = "dopt"

    def __init__(self, adam: bool = False, beta1=0.9, beta2=0.999, eps=1e-8):
        super().__init__()
        self.adam = bool(adam)
        self.name = "d-gt-adam" if self.adam else "d-gt"
        self.beta1, self.beta2, self.eps = beta1, beta2, eps

    def payload_size(self, num_params):
        return 2 * num_params  # [theta, y]

    def init_state(self, theta):
        zeros = tf.zeros_like(theta)
        state = (zeros, zeros)  # y(-1), g(-1): y(0) = g(0) follows (class docstring)
        if self.adam:
            state += (tf.zeros_like(theta), tf.zeros_like(theta), tf.zeros([], theta.dtype))  # m, v, t
        return state

    def payload(self, theta, state):
        return tf.concat([theta, state[0]], axis=-1)

    def step(self, theta, grad, mixed, state, lr):
        y, g_prev = state[0], state[1]
        mixed_theta, mixed_y = tf.split(mixed, 2, axis=-1)  # W theta(t), W y(t-1)
        y = mixed_y + (grad - g_prev)  # y(t)
        if not self.adam:
            return mixed_theta - lr * y, (y, grad)
        m, v, t = state[2:]
        t = t + 1
        m = self.beta1 * m + (1 - self.beta1) * y
        v = self.beta2 * v + (1 - self.beta2) * y * y
        m_hat = m / (1 - self.beta1**t)
        v_hat = v / (1 - self.beta2**t)
        return mixed_theta - lr * m_hat / (tf.sqrt(v_hat) + self.eps), (y, grad, m, v, t)


def make_optimizer(name: str, consensus_rounds: int = 1, authors_variant: bool = False) -> Optimizer:
    """Build one of :data:`OPTIMIZERS` or :data:`EXTRA_OPTIMIZERS` by name (``authors_variant`` selects
    the published D-Adam; ``consensus_rounds`` K is used by the gradient-consensus optimizers only: the
    eq. (17) ones, D-GT and D-GT-Adam included, mix once per mini-batch)."""
    if name == "c-sgd":
        return CentralizedSGD()
    if name == "c-adam":
        return CentralizedAdam()
    if name == "d-naive":
        return GradientConsensus(consensus_rounds, "naive")
    if name == "d-naive-pb":
        return GradientConsensus(consensus_rounds, "piggyback")
    if name == "d-sgd":
        return DSGD()
    if name == "d-adam":
        return DAdam(eps=1e-7, bias_correction=True) if authors_variant else DAdam()
    if name == "d-amsgrad":
        return DAMSGrad()
    if name == "d-gc-adam":
        return GradientConsensusAdam(consensus_rounds)
    if name == "d-gcp-adam":
        return GradientConsensusAdam(consensus_rounds, mix_parameters=True)
    if name == "d-gt":
        return GradientTracking()
    if name == "d-gt-adam":
        return GradientTracking(adam=True)
    raise ValueError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS + EXTRA_OPTIMIZERS)}")
