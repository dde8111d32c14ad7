"""App C over imperfect links in-process: the test ratio over lossy links (``--eval-under-loss``).

(App C under MPI over lossy links, stale buffers, link failures and the lossy evaluation: the launches of
tests/core/distributed/link_scheduling_cases.py.)"""

import numpy as np
import tensorflow as tf

from apps.link_scheduling import model
from core.gcnn import Exchange
from core.links import LinkLayout, LinkSetup, lossy_apply
from tests.core.distributed import link_scheduling_cases as cases


class _PlannedLosses(Exchange):
    """The forward exchanges of one evaluation, each layer's packets lost as a drawn plan says (policy zero)."""

    def __init__(self, lost_by_layer, layout: LinkLayout):
        self.lost, self.index = lost_by_layer, layout.index["shift"][0]

    def propagate(self, op, x, message=None):
        lost_links = self.lost[int(message[1]) - 1]
        lost_entries = np.where(self.index >= 0, lost_links[np.maximum(self.index, 0)], False)
        return lossy_apply(op, x, tf.constant(lost_entries), "zero")


def _test_ratio_over(task, theta, setup: LinkSetup, evaluation: int) -> float:
    """The test ratio of ``theta`` (per node) with the packets of evaluation ``evaluation``'s plan lost."""
    shift = task._test_shift
    layout = LinkLayout({"shift": shift})
    plan = setup.model.for_evaluation(evaluation).plan(0, layout.senders, layout.receivers,
                                                       [1] * model.ACTOR.num_layers, "zero")
    lost = plan.lost[:, 0]  # (L, E): one packet per link in each layer's round
    assert lost.any()
    tiled = tf.tile(theta, [len(task.test_adjacency), 1])
    z = model.actor_output(tiled, shift, _PlannedLosses(lost, layout))
    return float(task._test_ratio(z.numpy()))


def test_eval_under_loss_measures_the_test_ratio_over_lossy_links():
    """The training draws are the same with and without --eval-under-loss; the test ratio is the actor's on the
    block-diagonal test graph with the evaluation's packets lost (the first row: evaluation 0 of the untrained
    actor; the last: evaluation 4 after 4 mini-batches)."""
    data = cases.problem()
    cases.LINKS["eval_test"] = dict(loss_prob=0.3, on_loss="zero", eval_under_loss=True)
    cases.LINKS["eval_off"] = dict(loss_prob=0.3, on_loss="zero")
    try:
        runs = {}
        for links in ("eval_off", "eval_test"):
            task = cases.make_task(data)
            trainer = cases.make_trainer(task, "d-sgd", links=links)
            runs[links] = (trainer.run().rows, trainer, task)
    finally:
        del cases.LINKS["eval_test"], cases.LINKS["eval_off"]
    (plain, _, _), (lossy, trainer, task) = runs["eval_off"], runs["eval_test"]
    assert len(plain) == len(lossy) == cases.MINI_BATCHES + 1
    for a, b in zip(plain, lossy):
        assert a["train_ratio"] == b["train_ratio"] and a["critic_loss"] == b["critic_loss"]
    assert all(a["test_ratio"] != b["test_ratio"] for a, b in zip(plain, lossy))
    setup = trainer.links
    first = _test_ratio_over(task, tf.tile(task.initial_theta()[None], [cases.V, 1]), setup, 0)
    last = _test_ratio_over(task, trainer.theta, setup, cases.MINI_BATCHES)
    np.testing.assert_allclose([lossy[0]["test_ratio"], lossy[-1]["test_ratio"]], [first, last], rtol=1e-12)
