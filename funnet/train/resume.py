r"""What ``fit`` keeps between epochs, and its checkpoints: save after an epoch, resume.

A checkpoint of ``fit`` (step = the number of completed epochs) holds the train state
(params, optimiser state, step, the PRNG key's data, model state), the params and model
state of the best epoch so far, and as JSON: the history, the early-stopping value, the
run's configuration and the model's signature (:func:`funnet.model_signature`). Resuming
with another configuration or another architecture is refused, naming the difference;
with the same, the run continues bitwise as if never interrupted.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp

from .. import checkpoint as ckpt
from ..contract import PyTree
from ..signature import signature_difference
from .early_stopping import EarlyStopping
from .history import History, jsonable
from .state import TrainState

__all__ = ["RunState", "open_checkpoints", "save_epoch", "save_last_good"]

FORMAT = 2  # the layout of fit's checkpoints (1 was the home-made single-file format)


@dataclasses.dataclass
class RunState:
    """The run so far: the train state, history, early stopping and the best epoch's
    params and model state (``None`` before the first validated epoch)."""

    state: TrainState
    history: History
    stopping: EarlyStopping
    best: tuple[PyTree, PyTree] | None = None
    epoch: int = 0

    def record(self, record: dict, track: bool) -> None:
        """Append an epoch's record; update early stopping and the best epoch."""
        self.history.append(record)
        self.epoch = record["epoch"]
        if track:
            self.stopping = self.stopping.update(record["epoch"],
                                                 valid_loss=record["valid_loss"],
                                                 valid_accuracy=record["valid_accuracy"])
            if self.stopping.improved:
                self.best = jax.tree.map(lambda a: jnp.array(a, copy=True),
                                         (self.state.params, self.state.model_state))
            self.history.best_epoch = self.stopping.best_epoch
            self.history.stopped_early = self.stopping.should_stop


def _key_free(state: TrainState) -> TrainState:
    """The state with its typed key replaced by the key's raw data (storable)."""
    return state._replace(key=jax.random.key_data(state.key))


def _tree(progress: RunState) -> dict:
    best = progress.best or (progress.state.params, progress.state.model_state)
    return {"train": _key_free(progress.state), "best": best}


def open_checkpoints(directory: str | Path | None, *, resume: bool, keep: int
                     ) -> ckpt.CheckpointRun | None:
    """The locked checkpoint directory of a run, checked before any training."""
    if directory is None:
        if resume:
            raise ValueError("resume=True needs checkpoint=DIR")
        return None
    run = ckpt.CheckpointRun(directory, keep=keep)
    latest = run.latest_step()
    if latest is not None and not resume:
        run.close()
        raise ckpt.CheckpointError(
            f"checkpoint directory {str(run.directory)!r} already holds checkpoints (latest "
            f"epoch {latest}) of another run; pass resume=True (funnet train --resume) to "
            "continue it, or use an empty directory")
    return run


def restore(run: ckpt.CheckpointRun, progress: RunState, *, config: dict,
            signature: dict) -> RunState:
    """``progress`` continued from the newest checkpoint of ``run`` (unchanged if none)."""
    latest = run.latest_step()
    if latest is None:
        return progress
    meta = run.metadata(latest)  # the metadata first: refuse a mismatch by name
    where = f"checkpoint {str(run.directory / str(latest))!r}"
    if meta.get("format") != FORMAT:
        raise ckpt.CheckpointError(f"{where} is not a funnet fit checkpoint (format "
                                   f"{meta.get('format')!r}, expected {FORMAT})")
    difference = signature_difference(meta["signature"], signature)
    if difference is not None:
        raise ckpt.CheckpointError(f"{where} was written for another model: {difference}")
    saved = meta["config"]
    diff = {k: (saved.get(k), v) for k, v in config.items() if saved.get(k) != v}
    if diff:
        raise ckpt.CheckpointError(
            f"{where} was written by a different fit: "
            + ", ".join(f"{k}={a!r} there, {b!r} here" for k, (a, b) in diff.items()))
    # the stored key has the stored implementation, whatever key this call was given
    # (made by jit on the key's sharding: device_put cannot reach other processes' devices)
    template = progress.state._replace(key=jax.jit(
        lambda: jax.random.key(0, impl=meta["key_impl"]),
        out_shardings=progress.state.key.sharding)())
    tree, _ = run.restore(latest, like=_tree(dataclasses.replace(progress, state=template)))
    train = tree["train"]
    state = train._replace(key=jax.random.wrap_key_data(train.key, impl=meta["key_impl"]))
    stopping = EarlyStopping.from_json(meta["early_stopping"])
    history = History(meta["history"], best_epoch=stopping.best_epoch,
                      stopped_early=bool(meta["stopped_early"]))
    best = tree["best"] if stopping.best_epoch is not None else None
    return RunState(state, history, stopping, best, int(meta["epoch"]))


def save_epoch(run: ckpt.CheckpointRun, progress: RunState, *, config: dict,
               signature: dict) -> None:
    meta = {"format": FORMAT, "epoch": progress.epoch, "config": config,
            "signature": signature, "key_impl": str(jax.random.key_impl(progress.state.key)),
            "history": [jsonable(r) for r in progress.history],
            "early_stopping": progress.stopping.to_json(),
            "stopped_early": progress.history.stopped_early}
    run.save(progress.epoch, _tree(progress), meta)


def save_last_good(run: ckpt.CheckpointRun | None, state: TrainState, epoch: int,
                   step: int) -> Path | None:
    """The last good state of a diverged run, saved in ``DIR/last_good`` (or nothing)."""
    if run is None:
        return None
    path = run.directory / "last_good"
    shutil.rmtree(path, ignore_errors=True)  # the newest divergence replaces an older one
    ckpt.save_step(path, state.step.item(), _key_free(state),
                   metadata={"epoch": epoch, "step": step,
                             "key_impl": str(jax.random.key_impl(state.key))}, keep=1)
    return path
