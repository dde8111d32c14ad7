"""The flags every training app shares: run, consensus, learning-rate, seed/dtype/preset (docs/design.md, section 5).

Each builder adds one group of flags with one meaning across the three apps; the argparse types and the
one-line-error parser come from :mod:`datasets.cli`, which the dataset CLI uses too.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from datasets.cli import non_negative_int, positive_float, positive_int


def add_lr_schedule_arguments(group, subject: str = "alpha_t", step_unit: str = "mini-batches") -> None:
    """``--lr-schedule``, ``--lr-decay-rate``, ``--lr-decay-steps`` of the training apps (Algorithm 1, line
    13); the apps check that the decay rate is at most 1."""
    group.add_argument("--lr-schedule", choices=("constant", "exponential"), default="constant",
                       help=f"{subject} (Algorithm 1, line 13): constant, or alpha * decay-rate^(t / decay-steps)")
    group.add_argument("--lr-decay-rate", type=positive_float, default=0.96,
                       help="decay factor of the exponential schedule, in (0, 1]")
    group.add_argument("--lr-decay-steps", type=positive_int, default=1000,
                       help=f"{step_unit} per decay-rate factor of the exponential schedule")


GRADIENT_CONSENSUS = ("d-naive", "d-naive-pb", "d-gc-adam", "d-gcp-adam")
"""The approaches that run ``--consensus-rounds`` K rounds of gradient consensus (eq. 15) per mini-batch; the
others mix once (core.optimizers.make_optimizer)."""


def add_consensus_arguments(group, graph: str = "", d_adam_default: str = "paper", d_adam_note: str = "") -> None:
    """``--consensus-rounds``, ``--mixing``, ``--mixing-beta``, ``--d-adam-variant`` of the training apps:
    ``graph`` says where W lives (e.g. " on the conflict graph"), and ``d_adam_note`` ends the D-Adam help
    (e.g. what the authors' variant is for there)."""
    group.add_argument("--consensus-rounds", type=positive_int, default=1,
                       help=f"gradient-consensus rounds K of {_names(GRADIENT_CONSENSUS)} (eq. 15); the other "
                       "approaches mix once per mini-batch")
    group.add_argument("--mixing", choices=("mh", "laplacian"), default="mh",
                       help=f"consensus weights W{graph}: Metropolis-Hastings (eq. 16), or the paper authors' "
                       "I - beta (D - A) on the raw adjacency")
    group.add_argument("--mixing-beta", type=positive_float, default=1e-3, help="beta of --mixing laplacian")
    group.add_argument("--d-adam-variant", choices=("paper", "authors"), default=d_adam_default,
                       help="D-Adam as in docs/design.md, section 3 (DADAM, max-tracked second moment), or the "
                       "authors' "
                       f"published bias-corrected local Adam{d_adam_note}")


def add_seed_dtype_preset_arguments(group, presets: dict[str, dict], seed_help: str, dtype_of: str,
                                    paper: str = "the paper's settings (the defaults)", quick: str = "") -> None:
    """``--seed`` (``seed_help``), ``--dtype`` (the float type of ``dtype_of``) and ``--preset`` of the training
    apps. The preset help reads "paper: <paper>; quick: <quick><the flags of presets["quick"]> (explicit flags
    win)"."""
    group.add_argument("--seed", type=non_negative_int, default=0, help=seed_help)
    group.add_argument("--dtype", choices=("float32", "float64"), default="float32", help=f"float type of {dtype_of}")
    group.add_argument("--preset", choices=tuple(presets), default=None,
                       help=f"paper: {paper}; quick: {quick}"
                       + ", ".join(f"{k.replace('_', '-')} {v}" for k, v in presets["quick"].items())
                       + " (explicit flags win)")


def add_run_arguments(parser: argparse.ArgumentParser, app: str, checkpoint_every: int, unit: str = "epochs",
                      jobs_default: int | None = None):
    """The "run" flags every training app's main shares (docs/design.md, section 5): ``--out``, ``--resume``,
    ``--checkpoint-every`` (counted in ``unit``), ``--jobs`` when ``jobs_default`` is given, and ``-q``.
    Returns the argument group, for the app's own run flags."""
    run = parser.add_argument_group("run")
    run.add_argument("--out", type=Path, default=None,
                     help=f"run directory (default runs/{app}/<timestamp>/ with a folder per approach; missing "
                     "parents are created); it must be new or empty, and is locked while the run goes on")
    run.add_argument("--resume", type=Path, default=None,
                     help="continue the interrupted run in this directory with its saved settings, validated as on the "
                     "command line; only -q and the execution flags --jobs, --threads, --backend and --partition "
                     "may be given with it (any other is refused); the folder of one approach of a group run "
                     "resumes that approach only")
    run.add_argument("--checkpoint-every", type=non_negative_int, default=checkpoint_every,
                     help=f"{unit} between checkpoints (0: only at the end)")
    if jobs_default is not None:
        run.add_argument("--jobs", type=positive_int, default=jobs_default,
                         help="approaches trained side by side in worker processes, with cores/jobs TensorFlow "
                         "threads each (one per CPU core here, at most one per approach); the thread count can "
                         "change the last bits of a result, so a resume keeps it")
    run.add_argument("--threads", type=positive_int, default=None,
                     help="TensorFlow intra-op threads of each training process (default: every core; cores / jobs "
                     "per worker with --jobs; cores / local ranks under mpiexec); the thread count can change the "
                     "last bits of a result, so a resume keeps the one recorded")
    run.add_argument("-q", "--quiet", action="store_true", help="no progress bar, no final table and no notes "
                     "(errors are still printed)")
    add_version_argument(parser)
    return run


def add_backend_arguments(group) -> None:
    """``--backend {local,mpi}`` and ``--partition {metis,contiguous}`` (docs/design.md, section 11): where the
    network's nodes live, one process or the ranks of ``mpiexec -n P``, and how they are split over the ranks."""
    group.add_argument("--backend", choices=("local", "mpi"), default="local",
                       help="local: every node in this process; mpi: the nodes split over the ranks of "
                       "`mpiexec -n P` (started without mpiexec: P = 1), each rank training its own nodes and "
                       "exchanging with the others over MPI (a step is then not one XLA program: the stretches between "
                       "exchanges are XLA-compiled by auto-clustering in Apps A and B; one approach at a time)")
    group.add_argument("--partition", choices=("metis", "contiguous"), default="metis",
                       help="how --backend mpi splits the nodes over the ranks: METIS (fewest cut edges) or "
                       "contiguous blocks of node ids")


def add_version_argument(parser: argparse.ArgumentParser) -> None:
    """``--version``: the toolkit's version (every entry point has it)."""
    from core import __version__

    parser.add_argument("--version", action="version", version=f"%(prog)s (fdtrain-gnn) {__version__}")


# The optimizer names every app accepts (mirrors core.optimizers, which imports TensorFlow: flags are
# validated before it is imported; a test checks that the two lists agree).
PAPER_OPTIMIZERS = ("c-sgd", "c-adam", "d-naive", "d-naive-pb", "d-sgd", "d-adam", "d-amsgrad")
"""The seven approaches of the paper: what ``--optimizer all`` means in every app (docs/design.md, section 3)."""
EXTRA_OPTIMIZERS = ("d-gc-adam", "d-gcp-adam", "d-gt", "d-gt-adam")
"""Distributed optimizers beyond the paper's list: only by name, never part of ``all``."""
LABELS = {"c-sgd": "C-SGD", "c-adam": "C-Adam", "d-naive": "D-naive", "d-naive-pb": "D-naive-PB", "d-sgd": "D-SGD",
          "d-adam": "D-Adam", "d-amsgrad": "D-AMSGrad", "d-gc-adam": "D-GC-Adam", "d-gcp-adam": "D-GCP-Adam",
          "d-gt": "D-GT", "d-gt-adam": "D-GT-Adam"}
"""How figures, tables and legends name each optimizer."""


def _names(approaches) -> str:
    labels = [LABELS[a] for a in approaches]
    return labels[0] if len(labels) == 1 else ", ".join(labels[:-1]) + " and " + labels[-1]


def _lossy(args: argparse.Namespace) -> bool:
    return args.loss_model == "gilbert" or args.loss_prob > 0


EFFECTIVE_ONLY_WITH = (
    ("mixing_beta", lambda a: a.mixing == "laplacian", "without --mixing laplacian"),
    ("lr_decay_rate", lambda a: a.lr_schedule == "exponential", "without --lr-schedule exponential"),
    ("lr_decay_steps", lambda a: a.lr_schedule == "exponential", "without --lr-schedule exponential"),
    ("on_loss", _lossy, "without lost packets (--loss-prob > 0 or --loss-model gilbert)"),
    ("eval_under_loss", lambda a: links_active(a), "without a link model (--loss-prob, --loss-model gilbert or "
                                                     "--link-failure)"),
    ("d_adam_variant", lambda a: "d-adam" in a.optimizer, "without d-adam among the approaches"),
)
"""(flag, when it matters, why not otherwise) of the flags shared by the apps that only some settings read."""


def ignored_flag_notes(args: argparse.Namespace, more=()) -> list[str]:
    """A note per flag given on the command line (``args.given_flags``, apps.common.main.parse_run_flags) that
    these settings do not read, from :data:`EFFECTIVE_ONLY_WITH` and the app's own ``more`` (same triples),
    and the note of :func:`consensus_rounds_note`."""
    given = getattr(args, "given_flags", None) or {}
    notes = [f"note: {given[dest]} has no effect {why}" for dest, matters, why in (*EFFECTIVE_ONLY_WITH, *more)
             if dest in given and hasattr(args, dest) and not matters(args)]
    if "consensus_rounds" in given:
        notes.append(consensus_rounds_note(args))
    link_flags = [given[d] for d in ("loss_prob", "loss_model", "link_failure", "on_loss", "eval_under_loss")
                  if d in given]
    if link_flags and hasattr(args, "loss_prob") and links_active(args) and not any(map(is_distributed,
                                                                                        args.optimizer)):
        notes.append(f"note: {', '.join(link_flags)} {'has' if len(link_flags) == 1 else 'have'} no effect: "
                     f"{_names(args.optimizer)} {'trains' if len(args.optimizer) == 1 else 'train'} at a server "
                     f"over perfect links")
    return [n for n in notes if n]


def consensus_rounds_note(args: argparse.Namespace) -> str | None:
    """The note a run prints when ``--consensus-rounds`` K > 1 is given but none of its approaches runs K
    rounds (they would train as with K = 1), or None."""
    if args.consensus_rounds == 1 or any(a in GRADIENT_CONSENSUS for a in args.optimizer):
        return None
    return (f"note: --consensus-rounds {args.consensus_rounds} changes nothing here: only "
            f"{_names(GRADIENT_CONSENSUS)} run K rounds of gradient consensus; {_names(args.optimizer)} "
            f"{'does' if len(args.optimizer) == 1 else 'do'} not")


def is_distributed(approach: str) -> bool:
    """Whether an approach trains per-node copies that mix with neighbours (all but C-SGD and C-Adam)."""
    return approach not in ("c-sgd", "c-adam")


def disconnected_graph_note(sizes, approaches) -> str | None:
    """The note a run prints when its graph is not connected and it trains a distributed approach (``sizes``:
    nodes per connected component, largest first), or None: the per-node copies then agree within each
    component only (docs/design.md, section 2), which is allowed but rarely what a user meant."""
    sizes = [int(n) for n in sizes]
    if len(sizes) <= 1 or not any(is_distributed(a) for a in approaches):
        return None
    isolated = sum(1 for n in sizes if n == 1)
    return (f"note: the graph is not connected: {len(sizes)} components, the largest with {sizes[0]} of the "
            f"{sum(sizes)} nodes, {isolated} isolated node{'s' if isolated != 1 else ''}; the distributed approaches "
            f"reach consensus within each component only")


def optimizer_list(allowed: tuple[str, ...] = PAPER_OPTIMIZERS + EXTRA_OPTIMIZERS):
    """argparse type of ``--optimizer``: one name, distinct names separated by commas, or ``all`` (the
    paper's seven, those of them in ``allowed``); returns a tuple of names."""

    def parse(text: str) -> tuple[str, ...]:
        if text.strip() == "all":
            return tuple(n for n in PAPER_OPTIMIZERS if n in allowed)
        names = tuple(n.strip() for n in text.split(","))
        unknown = [n for n in names if n not in allowed]
        if unknown or not all(names) or len(set(names)) != len(names):
            raise argparse.ArgumentTypeError(
                f"must be 'all' or distinct names from {', '.join(allowed)} separated by commas, got {text!r}")
        return names

    parse.__name__ = "optimizer list"  # argparse names the type in its messages
    return parse


def check_mixing_beta(args: argparse.Namespace, adjacencies, largest_degree: int | None = None) -> None:
    """``--mixing laplacian``: W = I - beta (D - A) keeps non-negative weights (stays stochastic) only for
    beta <= 1 / max degree over every graph the run uses (``adjacencies``, or their bound
    ``largest_degree``); ValueError otherwise."""
    import numpy as np

    if args.mixing != "laplacian":
        return
    largest = largest_degree if largest_degree is not None else max(
        (int(np.count_nonzero(a, axis=-1).max(initial=0)) for a in adjacencies), default=0)
    if largest and args.mixing_beta > 1 / largest:
        raise ValueError(f"--mixing-beta {args.mixing_beta:g} is above 1 / max degree = {1 / largest:.4g} (max degree "
                         f"{largest}): I - beta (D - A) would have negative weights")


# ------------------------------------------------------------------------------------------- imperfect links
def probability(text: str) -> float:
    """argparse type: a probability in [0, 1) (a packet or link lost with probability 1 would never arrive)."""
    import math

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a probability in [0, 1), got {text!r}") from None
    if not (math.isfinite(value) and 0.0 <= value < 1.0):
        raise argparse.ArgumentTypeError(f"must be a probability in [0, 1), got {text!r}")
    return value


probability.__name__ = "probability"


MAX_RETRANSMISSIONS = 100
"""``core.links.MAX_RETRANSMISSIONS`` (equal, tested; not imported here: flags are checked before TensorFlow)."""


def loss_policy(text: str) -> str:
    """argparse type of ``--on-loss``: ``zero``, ``stale`` or ``retransmit:R`` with an integer R from 1 to
    :data:`MAX_RETRANSMISSIONS`."""
    name, sep, arg = text.strip().partition(":")
    if (name in ("zero", "stale") and not sep) or (name == "retransmit" and sep and arg.strip().isdigit()
                                                   and 1 <= int(arg) <= MAX_RETRANSMISSIONS):
        return f"{name}:{int(arg)}" if sep else name
    raise argparse.ArgumentTypeError(f"must be zero, stale or retransmit:R with an integer R from 1 to "
                                     f"{MAX_RETRANSMISSIONS}, got {text!r}")


loss_policy.__name__ = "loss policy"

GILBERT_FLAGS = ("gilbert_p_gb", "gilbert_p_bg", "gilbert_loss_bad")


def add_link_arguments(parser: argparse.ArgumentParser, exchanges: str = "every neighbour exchange") -> None:
    """The imperfect-link flags (docs/design.md, section 12), one meaning in every app: ``--loss-prob``,
    ``--loss-model`` and the Gilbert-Elliott parameters, ``--link-failure``, ``--on-loss``, ``--eval-under-loss``.
    ``exchanges`` says which messages the model applies to (e.g. App B: not the WMMSE channel sums)."""
    links = parser.add_argument_group(
        "imperfect links (docs/design.md, section 12; default: perfect links)",
        f"The link model applies to {exchanges}: forward, backward and consensus messages. A packet is one round's "
        "broadcast from a node to one neighbour; payloads piggybacked on it are lost together, a node's own term "
        "never. Drops come from a stream of their own keyed by the run's --seed, so a run with --loss-prob 0 is "
        "bit for bit a run without the model. Centralized approaches train over perfect links.")
    links.add_argument("--loss-prob", type=probability, default=0.0,
                       help="independent erasures: each packet is lost with this probability")
    links.add_argument("--loss-model", choices=("independent", "gilbert"), default="independent",
                       help="independent erasures (--loss-prob), or a Gilbert-Elliott chain per directed link "
                       "(bursts; --gilbert-*), each link starting in the chain's stationary distribution")
    links.add_argument("--gilbert-p-gb", type=probability, default=None,
                       help="Gilbert-Elliott: probability of moving from the good to the bad state per transmission "
                       "(> 0)")
    links.add_argument("--gilbert-p-bg", type=probability, default=None,
                       help="Gilbert-Elliott: probability of moving from the bad to the good state (> 0)")
    links.add_argument("--gilbert-loss-good", type=probability, default=0.0,
                       help="Gilbert-Elliott: loss probability in the good state")
    links.add_argument("--gilbert-loss-bad", type=probability, default=None,
                       help="Gilbert-Elliott: loss probability in the bad state")
    links.add_argument("--link-failure", type=probability, default=0.0,
                       help="each undirected link is down for a whole mini-batch with this probability; S is "
                       "restricted to the surviving links (failed entries 0, not renormalised) and the consensus "
                       "weights W are rebuilt on the surviving graph (a topology change, Algorithm 1)")
    links.add_argument("--on-loss", type=loss_policy, default="zero",
                       help="what a receiver does with a lost packet: zero (the neighbour's term counts as 0), stale "
                       "(reuse the last payload of the same kind and layer received from that neighbour), or "
                       "retransmit:R (lost packets are repeated in extra global rounds, at most R <= "
                       f"{MAX_RETRANSMISSIONS}, each counted as a round); in consensus the lost weight moves to the "
                       "receiver's own term")
    links.add_argument("--eval-under-loss", action="store_true",
                       help="measure the test metrics over the same imperfect links (default: over perfect links)")


def check_link_arguments(args: argparse.Namespace) -> None:
    """The combinations the link flags' types cannot check; ValueError with one line (before TensorFlow loads)."""
    given = [f"--{name.replace('_', '-')}" for name in GILBERT_FLAGS if getattr(args, name) is not None]
    if args.loss_model == "independent":
        if given or args.gilbert_loss_good:
            raise ValueError(f"{given[0] if given else '--gilbert-loss-good'} needs --loss-model gilbert")
        return
    if args.loss_prob > 0:
        raise ValueError("--loss-prob is the independent-erasure model: with --loss-model gilbert give the "
                         "--gilbert-* flags instead")
    missing = [f"--{name.replace('_', '-')}" for name in GILBERT_FLAGS if getattr(args, name) is None]
    if missing:
        raise ValueError(f"--loss-model gilbert needs {missing[0]}")
    for flag, value in (("--gilbert-p-gb", args.gilbert_p_gb), ("--gilbert-p-bg", args.gilbert_p_bg)):
        if value == 0.0:
            raise ValueError(f"{flag} must be > 0: with a zero transition probability the Gilbert-Elliott chain has "
                             "no stationary bad state")


def links_active(args: argparse.Namespace) -> bool:
    """Whether the flags ask for imperfect links at all (otherwise the trainer gets no link model)."""
    if args.loss_model == "gilbert":
        return True  # checked: the chain is given; a chain whose states never lose still runs the model
    return args.loss_prob > 0 or args.link_failure > 0


def link_setup(args: argparse.Namespace, mixing: str = "mh"):
    """The :class:`core.links.LinkSetup` of the flags (imports TensorFlow), or None for perfect links."""
    if not links_active(args):
        return None
    from core.links import LinkSetup

    return LinkSetup.from_flags(args.seed, args.loss_prob, args.loss_model, args.gilbert_p_gb, args.gilbert_p_bg,
                                args.gilbert_loss_good, args.gilbert_loss_bad, args.link_failure, args.on_loss,
                                args.eval_under_loss, mixing)
