"""Shared pieces of the benchmark cases: context, tables, machine info, data, init."""

from __future__ import annotations

import importlib
import importlib.metadata
import itertools
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

import numpy as np

from benchmarks._timing import describe

T = TypeVar("T")

#: distributions whose versions every results file records
LIBRARIES = (
    "funnet", "jax", "jaxlib", "optax", "flax", "dm-haiku", "equinox", "jraph", "numpy",
    "scikit-learn", "matplotlib",
)


# ----------------------------------------------------------------------------- context


@dataclass
class Ctx:
    """What every case gets: the mode, the output folder, and funnet (or why not)."""

    quick: bool
    out_dir: Path
    fn: ModuleType | None
    fn_error: str | None

    def pick(self, quick: T, full: T) -> T:
        """``quick`` in ``--quick`` mode, else ``full``."""
        return quick if self.quick else full


def unavailable(exc: BaseException) -> str:
    """``"unavailable (ErrorType: first line of the message)"`` for tables and notes."""
    return f"unavailable ({describe(exc)})"


def load_funnet() -> tuple[ModuleType | None, str | None]:
    """Import funnet; ``(module, None)`` or ``(None, "unavailable (...)")``.

    A bare ``funnet/`` folder without ``__init__.py`` imports as a namespace package with
    nothing in it; that counts as unavailable.
    """
    try:
        fn = importlib.import_module("funnet")
        if getattr(fn, "__file__", None) is None:
            raise ImportError("funnet/__init__.py not found (namespace package)")
    except Exception as exc:  # noqa: BLE001 - a half-written funnet must not stop the peers
        return None, unavailable(exc)
    return fn, None


def guarded(build: Callable[[], T]) -> tuple[T | None, str | None]:
    """Run ``build()``; on any exception return ``(None, "unavailable (...)")``.

    Used only around funnet entries, whose API is being written while the suite is:
    a missing or changed piece is reported in the table instead of stopping the run.
    """
    try:
        return build(), None
    except Exception as exc:  # noqa: BLE001 - any funnet API gap is reported, not raised
        return None, unavailable(exc)


def require_funnet(ctx: Ctx) -> ModuleType:
    """``ctx.fn`` or an ``ImportError`` carrying the reason it is missing."""
    if ctx.fn is None:
        raise ImportError(ctx.fn_error or "funnet not importable")
    return ctx.fn


# ------------------------------------------------------------------------------ tables


def fmt(x: float | None, spec: str = ".3g", *, scale: float = 1.0) -> str:
    """``format(x * scale, spec)``, or ``"—"`` for ``None``/nan."""
    if x is None or (isinstance(x, float) and np.isnan(x)):
        return "—"
    return format(x * scale, spec)


def fmt_ratio(r: float | None) -> str:
    """``"1.23×"`` or ``"—"``."""
    return "—" if r is None else f"{r:.2f}×"


@dataclass
class Table:
    """A result table: rows of already formatted cells, plus notes printed under it."""

    title: str
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, *cells: Any) -> None:
        if len(cells) != len(self.columns):
            raise ValueError(
                f"table {self.title!r}: row has {len(cells)} cells, expected {len(self.columns)}"
            )
        self.rows.append([str(c) for c in cells])

    def to_text(self) -> str:
        widths = [len(c) for c in self.columns]
        for row in self.rows:
            widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
        line = "  ".join(c.ljust(w) for c, w in zip(self.columns, widths, strict=True))
        out = [self.title, line, "  ".join("-" * w for w in widths)]
        out += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in self.rows]
        out += [f"  * {n}" for n in self.notes]
        return "\n".join(out)

    def to_markdown(self) -> str:
        def esc(cell: str) -> str:
            return cell.replace("|", "\\|")

        out = [f"**{self.title}**", ""]
        out.append("| " + " | ".join(esc(c) for c in self.columns) + " |")
        out.append("|" + "|".join("---" for _ in self.columns) + "|")
        out += ["| " + " | ".join(esc(c) for c in row) + " |" for row in self.rows]
        if self.notes:
            out.append("")
            out += [f"- {n}" for n in self.notes]
        return "\n".join(out)

    def to_dict(self) -> dict[str, Any]:
        return {"title": self.title, "columns": self.columns, "rows": self.rows,
                "notes": self.notes}


@dataclass
class CaseResult:
    """What a case returns: tables to print, raw data for JSON, and hard failures.

    ``failures`` are checks that did not hold (a peer that did not learn, ...); the
    runner reports them and exits non-zero.
    """

    tables: list[Table] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------ machine info


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def library_versions(names: Sequence[str] = LIBRARIES) -> dict[str, str]:
    """Installed distribution versions, ``"not installed"`` where missing."""
    out = {}
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def machine_info() -> dict[str, Any]:
    """Platform, CPU, Python, jax backend and devices: the context of every number."""
    import jax

    devices = jax.devices()
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = None
    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": affinity,
        "python": sys.version.split()[0],
        "jax_backend": jax.default_backend(),
        "device_kind": devices[0].device_kind,
        "device_count": len(devices),
        "devices": [str(d) for d in devices],
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


# ------------------------------------------------------------------------ data & init


def _as_xy(obj: Any) -> tuple[Any, Any]:
    if hasattr(obj, "x") and hasattr(obj, "y"):
        return obj.x, obj.y
    if isinstance(obj, dict) and {"x", "y"} <= set(obj):
        return obj["x"], obj["y"]
    if isinstance(obj, tuple | list) and len(obj) == 2:
        return obj[0], obj[1]
    raise TypeError(f"funnet.data.load_digits() returned {type(obj).__name__}, "
                    "expected (x, y)")


def load_digits_arrays(fn: ModuleType | None) -> tuple[np.ndarray, np.ndarray, str]:
    """The 1797 8×8 digits as ``x`` float32 [1797, 64] in [0, 1] and ``y`` int32 [1797].

    From ``funnet.data.load_digits()`` when that works, else scikit-learn's copy
    (``x / 16``). Returns ``(x, y, source)``.
    """
    reason = "funnet unavailable"
    if fn is not None:
        try:
            x, y = _as_xy(fn.data.load_digits())
            x = np.asarray(x, dtype=np.float32).reshape(len(x), -1)
            y = np.asarray(y).astype(np.int32)
            if x.shape != (1797, 64) or y.shape != (1797,):
                raise ValueError(f"shapes x{x.shape} y{y.shape}, expected (1797, 64), (1797,)")
            if x.max() > 1.0 + 1e-6:
                x = x / 16.0
            return x, y, "funnet.data.load_digits()"
        except Exception as exc:  # noqa: BLE001 - fall back to sklearn, say why
            reason = unavailable(exc)
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.data / 16.0).astype(np.float32)
    y = d.target.astype(np.int32)
    return x, y, f"sklearn.datasets.load_digits() / 16 (funnet.data.load_digits: {reason})"


def lecun_init(sizes: Sequence[int], *, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """One numpy init shared by every library: ``W ~ N(0, 1/fan_in)`` [in, out], ``b = 0``.

    ``sizes = (64, 128, 128, 10)`` gives three ``(W, b)`` pairs.
    """
    rng = np.random.default_rng(seed)
    out = []
    for d_in, d_out in itertools.pairwise(sizes):
        w = (rng.standard_normal((d_in, d_out)) / np.sqrt(d_in)).astype(np.float32)
        out.append((w, np.zeros(d_out, np.float32)))
    return out


def epoch_permutation(n: int, epoch: int, *, seed: int = 1) -> np.ndarray:
    """The shuffle of epoch ``epoch``: the same for every peer that runs that epoch."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def batches(x: np.ndarray, y: np.ndarray, perm: np.ndarray, batch: int
            ) -> tuple[np.ndarray, np.ndarray]:
    """``x[perm]``, ``y[perm]`` cut into ``[n // batch, batch, ...]`` (n divisible by batch)."""
    n = len(perm)
    if n % batch:
        raise ValueError(f"{n} samples do not split into batches of {batch}")
    nb = n // batch
    return x[perm].reshape(nb, batch, *x.shape[1:]), y[perm].reshape(nb, batch)


def accuracy(logits: Any, y: np.ndarray) -> float:
    """Fraction of rows whose argmax equals ``y``."""
    return float(np.mean(np.argmax(np.asarray(logits), axis=-1) == y))


def loss_agreement(case: str, ran: dict[str, np.ndarray], ref: str, res: CaseResult, *,
                   first_rtol: float, epoch_rtol: float) -> tuple[dict, dict]:
    """Each library's first-epoch losses ``ran[name]`` against ``ref``'s, from the same init
    and batches: the relative difference of the first step's loss must stay within
    ``first_rtol`` and of every step's within ``epoch_rtol``, else a failure in ``res``.
    Returns ``(first_loss, max_rel_epoch)`` by name."""
    first_loss, max_rel = {}, {}
    r = ran[ref]
    for name, losses in ran.items():
        rel0 = abs(losses[0] - r[0]) / abs(r[0])
        rel = float(np.max(np.abs(losses - r) / np.abs(r)))
        first_loss[name], max_rel[name] = float(losses[0]), rel
        if rel0 > first_rtol:
            res.failures.append(f"{case}: {name} first-step loss {losses[0]:.7g} differs from "
                                f"{ref}'s {r[0]:.7g} (relative {rel0:.1e} > {first_rtol:g}) "
                                "from the same init and batch")
        if rel > epoch_rtol:
            res.failures.append(f"{case}: {name}'s first-epoch losses differ from {ref}'s "
                                f"by {rel:.1e} relative (> {epoch_rtol:g})")
    return first_loss, max_rel


class EpochCompetitor:
    """One call = one epoch of ``peer`` (``steps`` per-step calls) on the sequences ``x``
    and targets ``y``; its k-th call uses permutation k. The first epoch's losses (the
    warm-up call) are kept for the check. Used by the ``recurrent`` and ``attention`` cases."""

    def __init__(self, peer: Any, x: np.ndarray, y: np.ndarray, batch: int):
        self.peer, self.x, self.y, self.batch = peer, x, y, batch
        self.epochs = 0
        self.first_losses: list[Any] | None = None
        self.last_losses: list[Any] | None = None

    def __call__(self) -> Any:
        perm = epoch_permutation(len(self.x), self.epochs)
        xb, _ = batches(self.x, np.zeros(len(self.x)), perm, self.batch)
        yb = self.y[perm].reshape(len(xb), self.batch, *self.y.shape[1:])
        losses = self.peer.epoch(xb, yb)
        if self.epochs == 0:
            self.first_losses = losses
        self.last_losses = losses
        self.epochs += 1
        return losses

    def mean_losses(self) -> tuple[float | None, float | None]:
        """Mean batch loss of the first and of the last epoch (before each update)."""
        import jax

        def mean(v):
            return None if v is None else float(np.mean(jax.device_get(v)))

        return mean(self.first_losses), mean(self.last_losses)


def init_agreement(case: str, what: str, outputs: dict[str, np.ndarray],
                   first: dict[str, np.ndarray], ref: str, res: CaseResult, *,
                   out_rtol: float, first_rtol: float, epoch_rtol: float) -> dict[str, Any]:
    """Initial outputs and first-epoch losses of every library against ``ref``'s; each
    disagreement beyond the tolerances is a failure in ``res`` (``what``: the part whose
    mapping is checked, e.g. ``"the cell"``)."""
    out: dict[str, Any] = {"reference": ref, "max_rel_output": {}, "first_loss": {},
                           "max_rel_epoch": {}}
    if ref in outputs:
        scale = float(np.max(np.abs(outputs[ref])))
        for name, o in outputs.items():
            rel = float(np.max(np.abs(o - outputs[ref]))) / scale
            out["max_rel_output"][name] = rel
            if rel > out_rtol:
                res.failures.append(f"{case}: {name}'s outputs at the shared init differ "
                                    f"from {ref}'s by {rel:.1e} relative (> {out_rtol:g}): "
                                    f"the weight mapping or {what} is not the same function")
    if ref in first:
        out["first_loss"], out["max_rel_epoch"] = loss_agreement(
            case, first, ref, res, first_rtol=first_rtol, epoch_rtol=epoch_rtol)
    return out
