r"""Interleaved timing with median-of-per-round ratios, for noisy shared machines.

A *competitor* is a zero-argument callable that does one unit of work (one epoch, one
training step, one gradient) and returns its output; the harness blocks on that output
with ``jax.block_until_ready`` before it stops the clock. :func:`interleaved` then

1. **warm-up**: calls every competitor ``warmup`` times; the wall time of the first call
   (trace + compile + run) is kept apart as ``first_s`` and never mixed into the
   steady-state numbers;
2. **calibration** (``min_time > 0``): picks ``inner``, the number of calls of each
   competitor per round, so that they add up to at least ``min_time`` seconds;
3. **rounds**: round ``r`` runs the competitors in the order ``rotation(names, r)`` —
   the list rotated by ``r``. With ``inner > 1`` the round is split into sub-rounds that
   call each competitor once (rotated again), so that all competitors sample the same
   stretch of machine time; every call is timed and blocked on by itself. The round's
   time of a competitor is its mean seconds per call in that round;
4. **summary**: per competitor the median seconds per call over rounds, and against the
   baseline the median over rounds of the per-round ratio

   .. math:: \mathrm{ratio}(a, b) = \operatorname{median}_r \; t_a[r] / t_b[r]

   using only rounds where both ran. A slow spell of the machine hits every
   competitor of a round alike, so it cancels in ``t_a[r] / t_b[r]``; a ratio of
   medians, or one absolute time, would not cancel it.

A call may return :class:`Timed` to report its own duration (for instance one epoch
taken from inside ``fit``) instead of the wall time of the call.

>>> clock = [0.0]
>>> def tick(dt):
...     def call():
...         clock[0] += dt
...     return call
>>> cmp = interleaved({"a": tick(1.0), "b": tick(2.0)}, baseline="a", rounds=3,
...                   timer=lambda: clock[0], sync=lambda out: out)
>>> cmp.results["b"].median_s, cmp.ratio("b")
(2.0, 2.0)
>>> cmp.orders
[['a', 'b'], ['b', 'a'], ['a', 'b']]
"""

from __future__ import annotations

import gc
import math
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import jax

Timer = Callable[[], float]
Sync = Callable[[Any], Any]


@dataclass(frozen=True)
class Timed:
    """A competitor's own measurement: ``seconds`` for this call, ``value`` its output.

    ``value`` is kept (per round) in :attr:`Result.extras`; it is not blocked on.
    """

    seconds: float
    value: Any = None


@dataclass
class Result:
    """Timings of one competitor: ``times[r]`` is seconds per call in round ``r``."""

    name: str
    first_s: float | None = None
    inner: int = 1
    times: list[float | None] = field(default_factory=list)
    extras: list[Any] = field(default_factory=list)
    error: str | None = None
    last: Any = None

    @property
    def valid_times(self) -> list[float]:
        return [t for t in self.times if t is not None]

    @property
    def median_s(self) -> float | None:
        """Median seconds per call over the rounds it ran, ``None`` if it never ran."""
        vals = self.valid_times
        return statistics.median(vals) if vals else None

    @property
    def ok(self) -> bool:
        return self.error is None and bool(self.valid_times)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "first_s": self.first_s,
            "inner": self.inner,
            "times_s": self.times,
            "median_s": self.median_s,
            "error": self.error,
        }


def rotation(names: Sequence[str], r: int) -> list[str]:
    """``names`` rotated left by ``r``: the call order of round ``r``.

    >>> rotation(["a", "b", "c"], 1)
    ['b', 'c', 'a']
    """
    if not names:
        return []
    k = r % len(names)
    return list(names[k:]) + list(names[:k])


def per_round_ratios(
    times: Sequence[float | None], base: Sequence[float | None]
) -> list[float]:
    """``times[r] / base[r]`` for every round where both are present and ``base[r] > 0``."""
    return [
        t / b
        for t, b in zip(times, base, strict=False)
        if t is not None and b is not None and b > 0
    ]


def median_ratio(times: Sequence[float | None], base: Sequence[float | None]) -> float | None:
    """Median of the per-round ratios ``times[r] / base[r]`` (``None`` if no round pairs up).

    >>> median_ratio([2.0, 3.0, 10.0], [1.0, 1.0, 1.0])
    3.0
    """
    ratios = per_round_ratios(times, base)
    return statistics.median(ratios) if ratios else None


@dataclass
class Comparison:
    """Results of :func:`interleaved`: per-competitor :class:`Result` plus call orders."""

    baseline: str
    results: dict[str, Result]
    orders: list[list[str]]

    def ratio(self, name: str, to: str | None = None) -> float | None:
        """Median over rounds of ``t_name[r] / t_to[r]``; ``to`` defaults to the baseline."""
        other = self.results[to or self.baseline]
        mine = self.results[name]
        if mine.error is not None and not mine.valid_times:
            return None
        return median_ratio(mine.times, other.times)

    def ratios(self, name: str, to: str | None = None) -> list[float]:
        """The per-round ratios behind :meth:`ratio`."""
        return per_round_ratios(self.results[name].times, self.results[to or self.baseline].times)

    def fastest(self, names: Sequence[str]) -> str | None:
        """The competitor among ``names`` with the smallest median (only those that ran)."""
        ran = [n for n in names if n in self.results and self.results[n].ok]
        return min(ran, key=lambda n: self.results[n].median_s) if ran else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "baseline": self.baseline,
            "orders": self.orders,
            "results": {k: v.to_dict() for k, v in self.results.items()},
            "ratio_to_baseline": {k: self.ratio(k) for k in self.results},
            "per_round_ratios": {k: self.ratios(k) for k in self.results},
        }


def describe(exc: BaseException) -> str:
    """``"ErrorType: first line of the message"``, at most 240 characters."""
    msg = str(exc).strip().splitlines()
    text = f"{type(exc).__name__}: {msg[0] if msg else ''}"
    return text if len(text) <= 240 else text[:237] + "..."


def time_call(
    fn: Callable[[], Any],
    *,
    timer: Timer = time.perf_counter,
    sync: Sync = jax.block_until_ready,
) -> tuple[float, Any]:
    """Seconds for one call of ``fn`` (blocked on with ``sync``) and its output.

    A :class:`Timed` output supplies its own seconds and is not blocked on.
    """
    t0 = timer()
    out = fn()
    if isinstance(out, Timed):
        return out.seconds, out
    sync(out)
    return timer() - t0, out


def spread(inner: int, slots: int) -> list[int]:
    """The ``inner`` of ``slots`` sub-rounds a competitor is called in, evenly spread.

    >>> spread(2, 6), spread(6, 6)
    ([2, 5], [0, 1, 2, 3, 4, 5])
    """
    return [k for k in range(slots) if (k * inner) // slots < ((k + 1) * inner) // slots]


def calibrate(
    call: Callable[[], tuple[float, Any] | None], *, min_time: float, max_calls: int = 9
) -> float | None:
    """Median seconds per call over calls made until ``min_time`` is spent (1..``max_calls``).

    ``call`` returns ``(seconds, output)`` or ``None`` on failure (then ``None``).
    """
    times: list[float] = []
    while not times or (len(times) < max_calls and sum(times) < min_time):
        got = call()
        if got is None:
            return None
        times.append(got[0])
    return statistics.median(times)


def interleaved(
    competitors: Mapping[str, Callable[[], Any]],
    *,
    baseline: str,
    rounds: int,
    warmup: int = 1,
    min_time: float = 0.0,
    max_inner: int = 10_000,
    fixed_inner: Mapping[str, int] | None = None,
    timer: Timer = time.perf_counter,
    sync: Sync = jax.block_until_ready,
    collect: bool = True,
) -> Comparison:
    """Time ``competitors`` in interleaved, rotating rounds; see the module docstring.

    Args:
      competitors: name -> zero-argument callable doing one unit of work.
      baseline: the name that :meth:`Comparison.ratio` divides by by default.
      rounds: number of interleaved rounds (>= 1).
      warmup: calls before the rounds; the first one's wall time is ``Result.first_s``.
        ``0`` when every call is meant to be a cold start.
      min_time: if > 0, choose ``inner`` per competitor so its calls in one round add up
        to at least this many seconds.
      max_inner: upper bound for ``inner``.
      fixed_inner: name -> ``inner`` for competitors that must not be calibrated (a call
        that is expensive to repeat, or that reports its own time via :class:`Timed`).
      timer, sync: clock and blocking function (injectable for tests).
      collect: run ``gc.collect()`` before each round, outside any measurement.

    Within a round the calls are interleaved too: the round is ``max(inner)`` sub-rounds;
    sub-round ``k`` calls, in the order ``rotation(round_order, k)``, every competitor
    whose ``spread(inner, max_inner_of_round)`` includes ``k``. Each call is timed on its
    own (blocked on), so competitors share the machine's state at a fine grain.

    A competitor that raises is recorded with ``Result.error`` and dropped from the rest
    of the run; the others go on.
    """
    names = list(competitors)
    if baseline not in competitors:
        raise ValueError(f"baseline {baseline!r} is not one of the competitors {names}")
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}")
    unknown = set(fixed_inner or ()) - set(names)
    if unknown:
        raise ValueError(f"fixed_inner names {sorted(unknown)} are not competitors {names}")
    results = {n: Result(name=n) for n in names}

    def call(name: str) -> tuple[float, Any] | None:
        res = results[name]
        try:
            seconds, out = time_call(competitors[name], timer=timer, sync=sync)
        except Exception as exc:  # noqa: BLE001 - a failing competitor must not stop the others
            res.error = describe(exc)
            return None
        res.last = out.value if isinstance(out, Timed) else out
        return seconds, out

    for name in names:
        for i in range(warmup):
            got = call(name)
            if got is None:
                break
            if i == 0:
                results[name].first_s = got[0]
        if fixed_inner and name in fixed_inner:
            results[name].inner = int(fixed_inner[name])
        elif min_time > 0 and results[name].error is None:
            per_call = calibrate(lambda n=name: call(n), min_time=min_time)
            if per_call is not None:
                want = math.ceil(min_time / max(per_call, 1e-9))
                results[name].inner = int(min(max(want, 1), max_inner))

    orders: list[list[str]] = []
    for r in range(rounds):
        if collect:
            gc.collect()
        order = [n for n in rotation(names, r) if results[n].error is None]
        orders.append(order)
        slots = max((results[n].inner for n in order), default=0)
        plan = {n: set(spread(results[n].inner, slots)) for n in order}
        total = dict.fromkeys(order, 0.0)
        for name in names:
            results[name].times.append(None)
            results[name].extras.append(None)
        for k in range(slots):
            for name in rotation(order, k):
                if k not in plan[name] or results[name].error is not None:
                    continue
                got = call(name)
                if got is None:
                    continue
                total[name] += got[0]
                if isinstance(got[1], Timed):
                    results[name].extras[r] = got[1].value
        for name in order:
            if results[name].error is None:
                results[name].times[r] = total[name] / results[name].inner
    return Comparison(baseline=baseline, results=results, orders=orders)
