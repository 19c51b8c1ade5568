r"""The record of a training run (:class:`History`) and its progress display."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from .._table import table

__all__ = ["History", "ProgressBar", "epoch_line", "jsonable"]


_COLUMNS = (
    ("epoch", "epoch", "{:d}"),
    ("train_loss", "train loss", "{:.4f}"),
    ("train_accuracy", "train acc", "{:.4f}"),
    ("valid_loss", "valid loss", "{:.4f}"),
    ("valid_accuracy", "valid acc", "{:.4f}"),
    ("learning_rate", "lr", "{:.3g}"),
    ("seconds", "seconds", "{:.3f}"),
)


class History(list):
    """Per-epoch records of :func:`fit`: a list of dicts with keys ``epoch`` (1-based),
    ``train_loss``, ``train_accuracy``, ``valid_loss``, ``valid_accuracy``,
    ``learning_rate`` and ``seconds`` (``None`` where not available).

    Args:
      records: the per-epoch records, each copied into a new ``dict``; the default ``()``:
        an empty history.

    Attributes:
      best_epoch: the best epoch by the monitored validation metric (see
        :class:`~funnet.train.EarlyStopping`; None without validation data).
      stopped_early: whether early stopping ended the run.

    >>> h = History([{"epoch": 1, "train_loss": 0.5, "train_accuracy": None,
    ...               "valid_loss": None, "valid_accuracy": None, "learning_rate": None,
    ...               "seconds": 0.01}])
    >>> print(h.table())
    epoch  train loss  seconds
        1      0.5000    0.010
    """

    def __init__(self, records: Sequence[dict] = (), *, best_epoch: int | None = None,
                 stopped_early: bool = False):
        super().__init__(dict(r) for r in records)
        self.best_epoch = best_epoch
        self.stopped_early = stopped_early

    def column(self, name: str) -> list:
        """The values of one key over the epochs, e.g. ``history.column("valid_loss")``."""
        return [record.get(name) for record in self]

    def table(self) -> str:
        """The history as an aligned text table; ``*`` marks the best epoch."""
        cols = [(k, title, fmt) for k, title, fmt in _COLUMNS
                if k == "epoch" or any(r.get(k) is not None for r in self)]
        rows = []
        for r in self:
            cells = []
            for k, _, fmt in cols:
                v = r.get(k)
                cells.append("-" if v is None else fmt.format(v))
            if r.get("epoch") == self.best_epoch:
                cells[0] += "*"
            rows.append(cells)
        text = table([title for _, title, _ in cols], rows, align="right")
        if self.stopped_early:
            text += f"\nstopped early; best epoch {self.best_epoch}"
        return text

    def plot(self, path: str | Path) -> Path:
        """Save learning curves (loss, and accuracy when known, per epoch) as an image.

        Needs matplotlib (``pip install 'funnet[plot]'``). Returns ``path``.
        """
        try:
            from matplotlib.figure import Figure
        except ImportError:
            raise ImportError(
                "History.plot needs matplotlib; install it with pip install 'funnet[plot]'"
            ) from None
        epochs = self.column("epoch")
        has_acc = any(v is not None for k in ("train_accuracy", "valid_accuracy")
                      for v in self.column(k))
        fig = Figure(figsize=(10 if has_acc else 5, 4))
        axes = fig.subplots(1, 2 if has_acc else 1, squeeze=False)[0]
        panels = [("loss", "train_loss", "valid_loss")]
        if has_acc:
            panels.append(("accuracy", "train_accuracy", "valid_accuracy"))
        for ax, (what, train_key, valid_key) in zip(axes, panels):
            for key, label in ((train_key, "train"), (valid_key, "valid")):
                pts = [(e, v) for e, v in zip(epochs, self.column(key)) if v is not None]
                if pts:
                    ax.plot(*zip(*pts), marker=".", label=label)
            if self.best_epoch is not None:
                ax.axvline(self.best_epoch, color="grey", linestyle=":", label="best epoch")
            ax.set_xlabel("epoch")
            ax.set_ylabel(what)
            ax.legend()
        fig.tight_layout()
        path = Path(path)
        fig.savefig(path)
        return path


def epoch_line(record: dict, total: int) -> str:
    """One epoch's record as one line, e.g.
    ``epoch 3/20  loss 0.5796  acc 0.9086  val loss 0.5365  val acc 0.9405  lr 0.001  14 ms``.

    Args:
      record: a :class:`History` record (keys whose value is ``None`` are left out).
      total: the number of epochs of the run.
    """
    cells = [f"epoch {record['epoch']}/{total}"]
    for key, fmt in _LINE:
        if record.get(key) is not None:
            cells.append(fmt.format(record[key]))
    if record.get("seconds") is not None:
        t = record["seconds"]
        cells.append(f"{t:.2f} s" if t >= 1 else f"{1000 * t:.0f} ms")
    return "  ".join(cells)


_LINE = (("train_loss", "loss {:.4f}"), ("train_accuracy", "acc {:.4f}"),
         ("valid_loss", "val loss {:.4f}"), ("valid_accuracy", "val acc {:.4f}"),
         ("learning_rate", "lr {:.2g}"))


class ProgressBar:
    """A tqdm bar over epochs on a TTY (a plain line per epoch without tqdm); else nothing."""

    def __init__(self, enabled: bool, total: int, initial: int):
        self.bar, self.plain = None, False
        if not (enabled and sys.stderr.isatty()):
            return
        try:
            from tqdm.auto import tqdm
        except ImportError:
            self.plain = True
            return
        self.bar = tqdm(total=total, initial=initial, unit="epoch", file=sys.stderr,
                        dynamic_ncols=True, leave=True)

    def update(self, record: dict, total: int) -> None:
        shown = {k: record[k] for k in ("train_loss", "train_accuracy", "valid_loss",
                                        "valid_accuracy") if record.get(k) is not None}
        if self.bar is not None:
            self.bar.set_postfix({k.replace("_accuracy", "_acc"): f"{v:.4f}"
                                  for k, v in shown.items()}, refresh=False)
            self.bar.update(1)
        elif self.plain:
            print(epoch_line(record, total), file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def jsonable(record: dict) -> dict:
    return {k: (None if v is None else (int(v) if k == "epoch" else float(v)))
            for k, v in record.items()}
