r"""Training: a jitted step, ``fit`` (each epoch one compiled ``lax.scan``), evaluation.

One concern per module:

* ``state``: :class:`TrainState` (params, optimiser state, step, PRNG key, model state);
* ``objective``: the loss of the real rows of a padded batch, autodiff or hand gradients,
  accuracy from the loss's declared task;
* ``step``: :func:`make_step` and the compiled epoch;
* ``permutation``: the on-device permutation of the rows;
* ``early_stopping``: :class:`EarlyStopping`, an immutable value;
* ``history``: :class:`History` and the progress bar;
* ``evaluation``: :func:`evaluate`, :func:`predict`;
* ``resume``: fit's checkpoints (orbax, :mod:`funnet.checkpoint`);
* ``inputs``, ``devices``: checks of data and arguments, device placement;
* ``loop``: :func:`fit`, composing the above.
"""

from .early_stopping import MONITORS as MONITORS
from .early_stopping import EarlyStopping as EarlyStopping
from .evaluation import evaluate as evaluate
from .evaluation import predict as predict
from .history import History as History
from .loop import NonFiniteLossError as NonFiniteLossError
from .loop import fit as fit
from .objective import GRADS as GRADS
from .permutation import shuffle as shuffle
from .state import TrainState as TrainState
from .step import make_step as make_step

__all__ = [
    "GRADS",
    "MONITORS",
    "EarlyStopping",
    "History",
    "NonFiniteLossError",
    "TrainState",
    "evaluate",
    "fit",
    "make_step",
    "predict",
    "shuffle",
]
