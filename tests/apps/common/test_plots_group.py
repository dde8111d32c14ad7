"""The group figure of apps.node_regression (test_mse_vs_rounds.png): a run that diverged says so in its legend
entry, and with plot_curves a group whose runs all diverged in their first epoch is still drawn."""

from apps.node_regression import experiment


def test_group_legend_entries_say_where_a_run_diverged():
    assert experiment._group_label("d-sgd", {"diverged": {"epoch": 1}}) == "D-SGD (diverged at epoch 1)"
    assert experiment._group_label("d-sgd", {"diverged": {}}) == "D-SGD (diverged)"
    assert experiment._group_label("c-sgd", {"final_test_mse": 0.01}) == "C-SGD"
    assert experiment._group_label("c-sgd", None) == "C-SGD"
