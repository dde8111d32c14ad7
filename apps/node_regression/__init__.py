"""App A: supervised node regression with a teacher GCNN (paper Section IV-A, Fig. 2a; docs/design.md, section 6).

Run ``python -m apps.node_regression --help``. The data come from :mod:`datasets.node_regression`
(generated in memory, or read from a file with ``--data``); training runs through
:class:`core.trainer.Trainer` with the :class:`core.supervised.SupervisedGCNN` task.
"""
