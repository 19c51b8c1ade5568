r"""Training checkpoints on orbax: numbered steps in a directory, atomic, the newest kept.

A checkpoint directory holds one sub-directory per saved step (``DIR/7/``), written by
orbax's ``CheckpointManager``: each step is written to a temporary directory and renamed
when complete (an atomic commit), so a crash or a ``SIGKILL`` at any moment leaves the
earlier steps intact and no half-written step visible; the leftover temporary
directories are removed the next time the directory is opened. Arrays are stored by
tensorstore (sharded arrays and multi-process runs included); the JSON ``metadata``
(epoch, history, configuration, the model's signature) beside them. Nothing is pickled.

``fit(checkpoint=DIR)`` uses this module; it is also usable on its own::

    save_step(directory, step, tree, metadata={...}, keep=3)
    latest_step(directory)                          # -> int | None
    tree, metadata = load_step(directory, like=tree)

A directory is *locked* while a run writes to it (an advisory ``fcntl`` lock on
``DIR/.lock``, released by the operating system when the process ends, even by
``SIGKILL``): a second run given the same directory is refused instead of silently
overwriting the first one's checkpoints. With several processes (``jax.distributed``) they
all open the same directory and save collectively; process 0 alone takes the lock.

To share trained weights (one file, readable by PyTorch and other tools) use
:func:`funnet.save_params` / :func:`funnet.load_params` instead.

>>> import tempfile, jax.numpy as jnp
>>> folder = tempfile.mkdtemp()
>>> _ = save_step(folder, 1, {"W": jnp.ones(2)}, metadata={"note": "first"})
>>> tree, meta = load_step(folder, like={"W": jnp.zeros(2)})
>>> latest_step(folder), tree["W"].tolist(), meta["note"]
(1, [1.0, 1.0], 'first')
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import jax
import numpy as np
from typing_extensions import Self

__all__ = ["CheckpointError", "CheckpointRun", "check_writable", "latest_step", "load_step",
           "save_step"]

PyTree = Any


class CheckpointError(ValueError):
    """A checkpoint directory cannot be used: locked, unwritable, corrupt or mismatched."""


def _ocp():
    import orbax.checkpoint as ocp  # imported on first use: orbax takes ~1 s to import

    # orbax logs every save at INFO/WARNING level through absl; a library must not print
    logging.getLogger("absl").setLevel(max(logging.getLogger("absl").level, logging.ERROR))
    return ocp


def check_writable(directory: str | os.PathLike, what: str = "checkpoint") -> Path:
    """Create ``directory`` if needed and prove it writable, or raise naming it.

    Catches, before any training: a path under a file, a read-only mount, ``/proc``, a
    directory without write permission. Returns the directory as a ``Path`` (``~``
    expanded).

    Args:
        directory: the directory to use; created with its parents if missing. An empty
            path, or one that exists and is not a directory, raises :class:`CheckpointError`.
        what: what the directory is for, the first word of the error messages
            (``"checkpoint directory ... is not writable"``).
    """
    if str(directory) == "":
        raise CheckpointError(f"{what} directory: an empty path (give a directory name)")
    directory = Path(directory).expanduser()
    if directory.exists() and not directory.is_dir():
        raise CheckpointError(f"{what} directory {str(directory)!r} exists and is not a "
                              "directory")
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".write-test-"):
            pass
    except OSError as e:
        raise CheckpointError(f"{what} directory {str(directory)!r} is not writable: "
                              f"{e.strerror or e}") from None
    return directory


def _manager(directory: Path, keep: int | None, *, read_only: bool = False):
    ocp = _ocp()
    # Old steps are *renamed* into DIR/.funnet-deleted-steps (atomic) and removed from there: deleting a
    # step in place is not atomic, and a kill in the middle would leave a listed step that
    # does not restore (seen under fault injection).
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=not read_only, read_only=read_only,
        cleanup_tmp_directories=not read_only, enable_async_checkpointing=False,
        todelete_subdir=_DELETED)
    # zstd compression (orbax's default) buys little on float weights and triples the time
    # of a save (benchmarks/cases/training.py): arrays are stored uncompressed
    handlers = {"tree": ocp.PyTreeCheckpointHandler(use_compression=False),
                "metadata": ocp.JsonCheckpointHandler()}
    return ocp.CheckpointManager(directory.absolute(), options=options,
                                 item_handlers=handlers)  # orbax needs absolute paths


_DELETED = ".funnet-deleted-steps"


def _empty_trash(directory: Path) -> None:
    shutil.rmtree(directory / _DELETED, ignore_errors=True)


def _remove_leftovers(directory: Path) -> None:
    """Remove what a killed writer left: orbax's temporary step directories (orbax's own
    cleanup misses the first step's) and steps half moved to the trash. Only called with
    the directory's lock held, so no writer is active."""
    _empty_trash(directory)
    for entry in directory.iterdir():
        if ".orbax-checkpoint-tmp" in entry.name:
            shutil.rmtree(entry, ignore_errors=True)


def _save_args(tree: PyTree, metadata: dict | None):
    ocp = _ocp()
    return ocp.args.Composite(tree=ocp.args.PyTreeSave(tree),
                              metadata=ocp.args.JsonSave(dict(metadata or {})))


def _restore(manager, directory: Path, step: int, like: PyTree | None) -> tuple[PyTree, dict]:
    ocp = _ocp()
    if like is None:  # as stored, as numpy arrays (no device placement to guess)
        stored = manager.item_metadata(step)["tree"].tree
        restore = ocp.args.PyTreeRestore(restore_args=jax.tree.map(
            lambda _: ocp.RestoreArgs(restore_type=np.ndarray), stored))
    else:
        abstract = _abstract(like)
        restore = ocp.args.PyTreeRestore(
            item=abstract, restore_args=ocp.checkpoint_utils.construct_restore_args(abstract))
    try:
        out = manager.restore(step, args=ocp.args.Composite(
            tree=restore, metadata=ocp.args.JsonRestore()))
    except (ValueError, KeyError, TypeError, FileNotFoundError, OSError) as e:
        raise CheckpointError(f"checkpoint {str(directory / str(step))!r} cannot be restored "
                              f"into the expected structure: {_first_line(e)}") from None
    return out["tree"], dict(out["metadata"] or {})


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:300] if text else type(e).__name__


def _abstract(like: PyTree) -> PyTree:
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype,
                                                       sharding=getattr(a, "sharding", None))
                        if hasattr(a, "shape") else a, like)


class CheckpointRun:
    """A checkpoint directory held by one training run: checked, locked, orbax-managed.

    Opening one proves the directory writable and takes its lock (else
    :class:`CheckpointError` naming the directory); :meth:`close` (or the end of a
    ``with`` block, or of the process) releases it.

    Args:
        directory: the run's checkpoint directory, created if missing
            (:func:`check_writable`); what a killed writer left in it (orbax's temporary
            step directories) is removed once the lock is held.
        keep: how many of the newest steps to keep, an int ``>= 1`` (else
            :class:`CheckpointError`); older ones are deleted as new ones are saved.
    """

    def __init__(self, directory: str | os.PathLike, *, keep: int = 3):
        if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
            raise CheckpointError(f"keep must be an int ≥ 1 (the newest steps to keep), "
                                  f"got {keep!r}")
        self.directory = check_writable(directory)
        # Several processes (jax.distributed) save collectively into one directory: process
        # 0 alone holds the lock and clears leftovers, the others follow its verdict.
        primary, several = jax.process_index() == 0, jax.process_count() > 1
        self._lock, self._closed = None, False
        locked = True
        if primary:
            self._lock = open(self.directory / ".lock", "a+")  # noqa: SIM115 (until close)
            try:
                fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                self._lock.close()
                self._lock = None
                if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    raise
                locked = False
        if several:
            from jax.experimental import multihost_utils

            locked = bool(multihost_utils.broadcast_one_to_all(np.int32(locked)))
        if not locked:
            raise CheckpointError(
                f"checkpoint directory {str(self.directory)!r} is in use by another "
                "run; give each run its own directory")
        if primary:
            self._lock.seek(0)
            self._lock.truncate()
            self._lock.write(f"{os.getpid()}\n")
            self._lock.flush()
            _remove_leftovers(self.directory)
        if several:
            multihost_utils.sync_global_devices(f"funnet checkpoint {self.directory}")
        self._manager = _manager(self.directory, keep)
        # orbax removes the temporary directories of a killed save in a background
        # thread, awaited only by the next save: wait for it here (leftovers it misses,
        # _remove_leftovers took above)
        wait = getattr(self._manager, "_maybe_await_cleanup_tmp_directory", None)
        if wait is not None:
            wait()

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def save(self, step: int, tree: PyTree, metadata: dict | None = None) -> Path:
        if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 0:
            raise CheckpointError(f"step must be an int ≥ 0, got {step!r}")
        step = int(step)
        if step in self._manager.all_steps():
            raise CheckpointError(f"{str(self.directory)!r} already holds step {step}")
        try:
            json.dumps(metadata or {})
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"metadata must be JSON-serialisable: {e}") from None
        self._manager.save(step, args=_save_args(tree, metadata), force=True)
        self._manager.wait_until_finished()
        _empty_trash(self.directory)
        return self.directory / str(step)

    def restore(self, step: int, like: PyTree | None = None) -> tuple[PyTree, dict]:
        return _restore(self._manager, self.directory, step, like)

    def metadata(self, step: int) -> dict:
        """The JSON metadata of ``step`` alone (no arrays are read)."""
        ocp = _ocp()
        try:
            out = self._manager.restore(step, args=ocp.args.Composite(
                metadata=ocp.args.JsonRestore()))
        except (ValueError, KeyError, TypeError, FileNotFoundError, OSError) as e:
            raise CheckpointError(f"checkpoint {str(self.directory / str(step))!r} has no "
                                  f"readable metadata: {_first_line(e)}") from None
        return dict(out["metadata"] or {})

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(Exception):
            self._manager.close()
        if self._lock is not None:  # process 0 (or the only process) holds it
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def save_step(directory: str | os.PathLike, step: int, tree: PyTree, *,
              metadata: dict | None = None, keep: int = 3) -> Path:
    """Save ``tree`` (and the JSON-serialisable ``metadata``) as step ``step`` of
    ``directory``, keeping the newest ``keep`` steps; returns the step's directory.

    The directory is locked while saving (:class:`CheckpointRun`).

    Args:
        directory: the run's checkpoint directory (created if missing).
        step: the step number, an int ``>= 0`` that the directory does not hold yet.
        tree: the pytree of arrays to save (params, optimiser state, ...).
        metadata: JSON-serialisable data saved beside the arrays (``load_step`` returns it).
        keep: how many of the newest steps to keep; older ones are deleted.
    """
    with CheckpointRun(directory, keep=keep) as run:
        return run.save(step, tree, metadata)


def latest_step(directory: str | os.PathLike) -> int | None:
    """The newest complete step in ``directory``, or ``None`` (no directory, no steps).

    Args:
        directory: the run's checkpoint directory.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return None
    manager = _manager(directory, None, read_only=True)
    try:
        return manager.latest_step()
    finally:
        manager.close()


def load_step(directory: str | os.PathLike, step: int | None = None, *,
              like: PyTree | None = None) -> tuple[PyTree, dict]:
    """``(tree, metadata)`` of ``step`` (default: the newest) in ``directory``.

    With ``like`` (a pytree of arrays or ``jax.ShapeDtypeStruct``) the tree comes back with
    ``like``'s structure, shapes, dtypes and shardings; without it, as stored (dicts and
    lists of arrays).

    Args:
        directory: the run's checkpoint directory.
        step: the step to load; ``None``, the default, loads the newest.
        like: a pytree of arrays or ``jax.ShapeDtypeStruct`` giving the structure, shapes,
            dtypes and shardings to restore to; ``None`` restores as stored.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"no checkpoint directory {str(directory)!r}")
    manager = _manager(directory, None, read_only=True)
    try:
        if step is None:
            step = manager.latest_step()
            if step is None:
                raise FileNotFoundError(f"no checkpoint in {str(directory)!r}")
        elif int(step) not in manager.all_steps():
            raise FileNotFoundError(f"no step {step} in {str(directory)!r}; it holds "
                                    f"{sorted(manager.all_steps())}")
        return _restore(manager, directory, int(step), like)
    finally:
        manager.close()
