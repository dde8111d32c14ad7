"""Fully distributed training of graph convolutional neural networks (GCNNs).

Layout: :mod:`core.graph` (graphs, shift operators, consensus weights), :mod:`core.ops` (message
passing in TensorFlow), :mod:`core.gcnn` (the GCNN and its forward pass, eqs. 9-10),
:mod:`core.backprop` (local backpropagation, eqs. 11-14), :mod:`core.replicas` (per-node copies),
:mod:`core.comm` (communication simulator and the schedules of Table I), :mod:`core.optimizers`
(centralized and distributed optimizers, eqs. 15-17, and step sizes), :mod:`core.executors` (one
mini-batch of training, batched or literally round by round), :mod:`core.trainer` (Algorithm 1: the
training loop with counts, logs, checkpoints and exact resume), :mod:`core.runs` (run directories and
atomic writes), :mod:`core.supervised` (a trainer task for node-level regression), :mod:`core.backend`
(where the nodes live: this process, or P MPI ranks) and :mod:`core.distributed` (the MPI exchanges).
``core`` knows nothing of wireless, datasets or apps.
"""

__version__ = "0.2.0"
