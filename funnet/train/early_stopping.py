r"""Early stopping as an immutable value (as flax's ``EarlyStopping``)."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from .._validate import check_int

__all__ = ["MONITORS", "EarlyStopping"]

#: What early stopping can watch: the validation loss (the default, as Keras), or the
#: validation error rate ``1 - accuracy`` (ties broken by the validation loss).
MONITORS = ("valid_loss", "valid_error")


@dataclasses.dataclass(frozen=True)
class EarlyStopping:
    r"""Tracks the best epoch by a validation metric; says when to stop.

    An epoch *improves* when its monitored value is lower than the best so far by more
    than ``min_delta``. With ``monitor="valid_error"`` an epoch with the same error rate
    as the best improves when its validation loss is lower: on small validation sets the
    error rate ties often (100 % accuracy from epoch 2 on), and the first epoch of a tie
    is rarely the best model. NaN never improves. Training stops once ``patience`` epochs
    in a row did not improve (never, when ``patience`` is ``None``).

    The first three fields configure it; the other four are the state :meth:`update`
    carries forward (their defaults: nothing seen yet).

    Attributes:
      patience: how many epochs in a row without improvement stop training, an int
        ``≥ 1``; ``None`` (the default): never stop, only track the best epoch.
      monitor: the metric, one of :data:`MONITORS`: ``"valid_loss"`` (the default) or
        ``"valid_error"`` (``1 - valid_accuracy``, which :meth:`update` then needs).
      min_delta: how much lower than the best the monitored value must be to improve, a
        number ``≥ 0`` (the default 0: any decrease).
      best_value: the best monitored value so far (``inf`` before the first epoch).
      best_loss: the validation loss of the best epoch (``inf`` before the first), which
        breaks ties of ``"valid_error"``.
      best_epoch: the best epoch's number as passed to :meth:`update` (``None`` before
        the first).
      bad_epochs: how many epochs in a row have not improved (since the best one, or the
        first).

    >>> es = EarlyStopping(patience=2)
    >>> for epoch, loss in enumerate([0.9, 0.5, 0.6, 0.5], start=1):
    ...     es = es.update(epoch, valid_loss=loss)
    >>> es.best_epoch, es.bad_epochs, es.should_stop
    (2, 2, True)
    """

    patience: int | None = None
    monitor: str = "valid_loss"
    min_delta: float = 0.0
    best_value: float = math.inf
    best_loss: float = math.inf
    best_epoch: int | None = None
    bad_epochs: int = 0

    def __post_init__(self) -> None:
        if self.patience is not None:
            check_int(self.patience, "patience", minimum=1)
        if self.monitor not in MONITORS:
            raise ValueError(f"monitor must be one of {MONITORS}, got {self.monitor!r}")
        if not (isinstance(self.min_delta, (int, float)) and self.min_delta >= 0):
            raise ValueError(f"min_delta must be a number ≥ 0, got {self.min_delta!r}")

    def value(self, valid_loss: float, valid_accuracy: float | None = None) -> float:
        """The monitored value of an epoch."""
        if self.monitor == "valid_loss":
            return valid_loss
        if valid_accuracy is None:
            raise ValueError('monitor="valid_error" needs an accuracy: use a classification '
                             'loss (Loss.task "multiclass" or "binary") or monitor="valid_loss"')
        return 1.0 - valid_accuracy

    def improves(self, value: float, valid_loss: float) -> bool:
        """Whether an epoch with ``value`` (and ``valid_loss``) beats the best so far."""
        if value < self.best_value - self.min_delta:
            return True
        return (self.monitor != "valid_loss" and value == self.best_value
                and valid_loss < self.best_loss)

    def update(self, epoch: int, *, valid_loss: float,
               valid_accuracy: float | None = None) -> EarlyStopping:
        """The state after ``epoch`` (1-based) with these validation metrics."""
        value = self.value(valid_loss, valid_accuracy)
        if self.improves(value, valid_loss):
            return dataclasses.replace(self, best_value=value, best_loss=valid_loss,
                                       best_epoch=epoch, bad_epochs=0)
        return dataclasses.replace(self, bad_epochs=self.bad_epochs + 1)

    @property
    def improved(self) -> bool:
        """Whether the last update improved (the best epoch is the one just seen)."""
        return self.best_epoch is not None and self.bad_epochs == 0

    @property
    def should_stop(self) -> bool:
        return self.patience is not None and self.bad_epochs >= self.patience

    def to_json(self) -> dict[str, Any]:
        """The fields as a JSON-serialisable dict (infinities as ``None``)."""
        return {k: (None if isinstance(v, float) and math.isinf(v) else v)
                for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> EarlyStopping:
        fields = {k: (math.inf if k in ("best_value", "best_loss") and v is None else v)
                  for k, v in data.items()}
        return cls(**fields)
