"""The three apps accept the same shared flags with the same types and meaning (apps/common/cli.py)."""

import importlib

import pytest

from apps.common import cli as common_cli

APPS = ("node_regression", "power_allocation", "link_scheduling")
SHARED = ("--optimizer", "--lr", "--lr-schedule", "--lr-decay-rate", "--lr-decay-steps", "--epochs", "--batch-size",
          "--consensus-rounds", "--mixing", "--mixing-beta", "--d-adam-variant", "--seed", "--data-seed", "--dtype",
          "--preset", "--jobs", "--out", "--resume", "--checkpoint-every", "--quiet", "--version")


def parser_of(app):
    return importlib.import_module(f"apps.{app}.experiment").build_parser()


def options(parser):
    return {option: action for action in parser._actions for option in action.option_strings}


@pytest.mark.parametrize("app", APPS)
def test_every_app_has_the_shared_flags(app):
    assert set(SHARED) <= set(options(parser_of(app)))


@pytest.mark.parametrize("flag", [f for f in SHARED if f not in ("--optimizer", "--batch-size", "--lr", "--epochs",
                                                                   "--checkpoint-every", "--jobs", "--preset",
                                                                   "--d-adam-variant")])
def test_shared_flags_have_one_type_and_default(flag):
    """Same type, choices and default in every app (flags whose defaults are the app's paper settings excepted)."""
    seen = {(a.type, a.choices, a.default, a.nargs, type(a).__name__)
            for a in (options(parser_of(app))[flag] for app in APPS)}
    assert len(seen) == 1, seen


@pytest.mark.parametrize("app", APPS)
def test_optimizer_all_means_the_seven_everywhere(app):
    parser = parser_of(app)
    args = parser.parse_args(["--optimizer", "all"])
    assert args.optimizer == common_cli.PAPER_OPTIMIZERS
    assert parser.parse_args(["--optimizer", "d-sgd"]).optimizer == ("d-sgd",)
    assert parser.parse_args(["--optimizer", "c-adam,d-adam"]).optimizer == ("c-adam", "d-adam")
    with pytest.raises(SystemExit):
        parser.parse_args(["--optimizer", "../x"])


def test_the_optimizer_names_mirror_core():
    from core import optimizers

    assert common_cli.PAPER_OPTIMIZERS == optimizers.OPTIMIZERS
    assert common_cli.EXTRA_OPTIMIZERS == optimizers.EXTRA_OPTIMIZERS
    assert set(common_cli.LABELS) == set(optimizers.OPTIMIZERS + optimizers.EXTRA_OPTIMIZERS)


def test_the_retransmission_bound_of_the_flag_is_the_link_model_s():
    import argparse

    from core import links

    largest = links.MAX_RETRANSMISSIONS
    assert common_cli.MAX_RETRANSMISSIONS == largest
    assert common_cli.loss_policy(f"retransmit:{largest}") == f"retransmit:{largest}"
    with pytest.raises(argparse.ArgumentTypeError, match=f"from 1 to {largest}, got 'retransmit:128'"):
        common_cli.loss_policy("retransmit:128")
