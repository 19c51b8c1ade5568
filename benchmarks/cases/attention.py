r"""Case ``attention``: a multi-head self-attention train step in funnet, flax linen and haiku.

Network, init and peers: :mod:`benchmarks._attn_peers` (``MultiHeadAttention(N, dim)`` on
``x [B, T, D]``, a mean over the ``T`` steps; loss ``1/(2n) Σ (ŷ − y)²``, Adam 1e-3). Full
size: 8 heads, dim 256 (``dh = 32``), sequence T = 256, batch 16, D = 256 features, 4
batches per epoch; ``--quick`` runs the same code on a tiny layer (2 heads, dim 16, T = 8,
batch 4, D = 16, 2 batches per epoch, 2 rounds, no references): a smoke test of the
machinery, bound by its compilations, not a measurement. Data: ``x ~ N(0, 1)``
``[N, T, D]`` (fixed seed), target ``y = Σ_t x[:, t, :] / √T`` (the scaled mean of the
sequence, which attention with uniform weights and ``W_v W_o ∝ I`` represents); one call
of a competitor is one epoch of per-step calls on numpy batches (the k-th epoch of every
library uses the same permutation), reported per step.

Three parts, timings in interleaved rounds (median of per-round ratios):

- **train step**: flax linen ``nn.MultiHeadDotProductAttention`` (the baseline), haiku
  ``hk.MultiHeadAttention``, funnet ``make_step(grad="reverse")`` (``jax.grad`` through
  funnet's ``apply``) and ``make_step(grad="hand")`` (funnet's hand backward), all from
  the same weights. Target: funnet reverse ≤ 1.05× flax. The full mode adds flax a second
  time (A/A check: the noise floor) and funnet's layers in the peers' plain jitted step,
  both ways (profiling references that take ``make_step``'s own work out).
- **gradient**: the jitted loss-and-gradient alone, on one batch, same params:
  ``jax.value_and_grad`` of funnet's ``apply`` (the baseline) against
  ``fn.backprop.value_and_grad`` (the hand backward), with flax's and haiku's
  ``jax.value_and_grad`` as references (full mode). Target: hand ≤ 1.3× ``jax.grad``.
- **memory**, no timing, in both tables: each program's ``compiled.memory_analysis()``
  (temp, argument and output bytes); in the gradient table also the bytes the forward
  pass keeps for the backward (funnet's ``forward_with_state`` residuals — the hand rule
  stores ``P`` rather than recomputing it —, ``jax.vjp``'s residuals of the autodiff
  programs, both by ``jax.eval_shape``).

Profile columns (deterministic, from each compiled program's optimised HLO,
:func:`attention_profile`): ``dot`` ops, ``transpose`` and ``copy`` ops that move at least
``B·T·dim / 4`` elements (layout changes of activations, inside fusions or not; head
reshapes show up here), fusions evaluating ``exp`` (the softmax), and whether any op is
float64.

Checks (failures make the run exit non-zero): every library's outputs at the shared init on
one batch agree with funnet's to 1e-5 relative to their scale and the first-step losses to
1e-5 relative (the layouts compute the same function); the first epoch's losses agree to
1e-3 (Adam turns reduction-order differences into slow drift); each competitor's mean batch
loss in its last epoch is below 0.9× that of its first (full mode; below it in quick mode);
the hand gradient agrees with ``jax.grad``'s to 1e-4 relative to the gradient's scale.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks._attn_peers import (
    PEERS,
    Funnet,
    FunnetPlain,
    Linen,
    attention_init,
    funnet_attention,
    funnet_attention_params,
)
from benchmarks._common import (
    CaseResult,
    Ctx,
    EpochCompetitor,
    Table,
    fmt,
    fmt_ratio,
    guarded,
    init_agreement,
    require_funnet,
)
from benchmarks._rnn_peers import half_mse
from benchmarks._timing import interleaved
from benchmarks.cases.cnn import _NOT_WORK, hlo_counts
from benchmarks.cases.recurrent import _mb, _rel_diff, load_average, tree_bytes

LR = 1e-3
OUT_RTOL = 1e-5
FIRST_LOSS_RTOL = 1e-5
EPOCH_LOSS_RTOL = 1e-3
GRAD_RTOL = 1e-4
HAND_TARGET = 1.3
PEER_TARGET = 1.05
TRAIN_BOUND = 0.9  # full mode: last epoch's mean loss < 0.9× the first's

BASE = Linen.name
REVERSE = "funnet make_step, grad='reverse'"
HAND = "funnet make_step, grad='hand'"
AA_NAME = "flax linen nn.MultiHeadDotProductAttention again (A/A check)"
PLAIN_REVERSE = "funnet layers in a plain jitted step, reverse"
PLAIN_HAND = "funnet layers in a plain jitted step, hand"
G_JAX = "jax.value_and_grad of funnet apply"
G_HAND = "fn.backprop.value_and_grad (hand backward)"
G_LINEN = "jax.value_and_grad of flax linen"
G_HAIKU = "jax.value_and_grad of haiku"


@dataclass(frozen=True)
class Sizes:
    """The layer and the data: ``x [steps · batch, time, features]``, ``heads`` heads over
    ``dim`` columns."""

    batch: int
    time: int
    features: int
    heads: int
    dim: int
    steps: int = 4  # batches per epoch (one call)

    @property
    def label(self) -> str:
        return (f"MultiHeadAttention({self.heads} heads, dim {self.dim}) on [{self.batch}, "
                f"{self.time}, {self.features}], mean over the steps")


FULL = Sizes(batch=16, time=256, features=256, heads=8, dim=256)
QUICK = Sizes(batch=4, time=8, features=16, heads=2, dim=16, steps=2)


def make_data(s: Sizes, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``x ~ N(0, 1)`` ``[steps · batch, T, D]`` float32, ``y = Σ_t x[:, t, :] / √T``."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((s.steps * s.batch, s.time, s.features)).astype(np.float32)
    y = (x.sum(axis=1) / np.sqrt(s.time)).astype(np.float32)
    return x, y


# ------------------------------------------------------------------------ HLO profile

_OP = re.compile(r"^\s*(?:ROOT )?%\S+ = (\([^=]*?\)|\S+) ([a-z][a-z0-9\-]*)\(")
_COMP = re.compile(r"^(?:ENTRY )?%?([\w.\-]+) .*\{\s*$")


def _elements(shape: str) -> int:
    """Elements of an HLO array shape such as ``f32[16,8,256,32]{3,2,1,0}`` (0 for a tuple)."""
    m = re.match(r"[a-z0-9]+\[([0-9,]*)\]", shape)
    if not m:
        return 0
    return int(np.prod([int(d) for d in m.group(1).split(",") if d], dtype=np.int64))


def attention_profile(text: str, big: int, scores: int) -> dict[str, int]:
    """Counts in an optimised HLO module (``compiled.as_text()``), fused ops included.

    ``dots``: ``dot`` ops; ``layout_copies``: kernels that move an array of at least
    ``big`` elements into another memory layout — a fusion whose computation has such a
    ``transpose`` or ``copy`` (XLA writes one as a transpose feeding a copy), or such an
    op on its own (activations, not scalars or the optimiser's bookkeeping); head reshapes
    of activations show up here. ``score_kernels``: top-level kernels (of the entry
    computation) whose result has at least ``scores`` elements, the size of ``S`` or ``P``
    ``[B, N, T_q, T_k]``: each writes one such array to memory. ``exp_fusions``: fusions
    evaluating an ``exponential``; ``f64``: ops with a float64 result.
    """
    comps: dict[str, list[tuple[str, str]]] = {}
    current = entry = ""
    for line in text.splitlines():
        head = _COMP.match(line)
        if head:
            current = head.group(1)
            entry = current if line.startswith("ENTRY") else entry
            comps[current] = []
            continue
        m = _OP.match(line)
        if m and current:
            comps[current].append(m.groups())
    fused = set(re.findall(r" fusion\(.*?calls=%?([\w.\-]+)", text))

    def moves(shape: str, op: str) -> bool:
        return op in ("transpose", "copy") and _elements(shape) >= big

    out = {"dots": 0, "layout_copies": 0, "score_kernels": 0, "exp_fusions": 0, "f64": 0}
    out["score_kernels"] = sum(op not in _NOT_WORK and _elements(shape) >= scores
                               for shape, op in comps.get(entry, []))
    for name, ops in comps.items():
        out["dots"] += sum(op == "dot" for _, op in ops)
        out["f64"] += sum(shape.startswith("f64") for shape, _ in ops)
        if name in fused:
            out["layout_copies"] += any(moves(shape, op) for shape, op in ops)
            out["exp_fusions"] += any(op == "exponential" for _, op in ops)
        else:
            out["layout_copies"] += sum(moves(shape, op) for shape, op in ops)
    return out


def program_profile(compiled: Any, s: Sizes) -> dict[str, Any]:
    """:func:`attention_profile`, the kernel count (:func:`hlo_counts`) and the memory
    analysis (bytes) of a compiled program."""
    text = compiled.as_text()
    big = max(1, s.batch * s.time * s.dim // 4)
    scores = s.batch * s.heads * s.time * s.time
    out: dict[str, Any] = {**hlo_counts(text), **attention_profile(text, big, scores)}
    mem = compiled.memory_analysis()
    for k in ("temp", "argument", "output", "alias"):
        out[f"{k}_bytes"] = int(getattr(mem, f"{k}_size_in_bytes", 0) or 0)
    return out


def _profile_cell(p: dict[str, Any] | None) -> str:
    if not p:
        return "—"
    return (f"{p['kernels']} / {p['dots']} / {p['layout_copies']} / {p['score_kernels']} / "
            f"{p['exp_fusions']} / {'yes' if p['f64'] else 'no'}")


PROFILE_COLUMN = "kernels / dots / layout copies / T×T kernels / exp fusions / f64"
PROFILE_NOTE = ("kernels / dots / layout copies / T×T kernels / exp fusions / f64 of the "
                "compiled program's optimised HLO: top-level ops that launch work / dot ops "
                "/ kernels moving ≥ B·T·dim/4 elements into another layout (a transpose or "
                "copy, fused or alone) / top-level kernels writing a [B, N, T, T] array (S, P, "
                "dP, dS or a broadcast of that size) / fusions evaluating exp (the softmax) / "
                "any float64 op; temp MB: compiled.memory_analysis().temp_size_in_bytes")


# ----------------------------------------------------------------------- train step


def agreement(outputs: dict[str, np.ndarray], first: dict[str, np.ndarray], ref: str,
              res: CaseResult) -> dict[str, Any]:
    """Initial outputs and first-epoch losses of every library against ``ref``'s
    (:func:`benchmarks._common.init_agreement` with this case's tolerances)."""
    return init_agreement("attention", "the layer", outputs, first, ref, res, out_rtol=OUT_RTOL,
                          first_rtol=FIRST_LOSS_RTOL, epoch_rtol=EPOCH_LOSS_RTOL)


def _train_step(ctx: Ctx, fn: Any, s: Sizes, res: CaseResult) -> None:
    x, y = make_data(s)
    init = attention_init(s.features, s.heads, s.dim)
    tx = optax.adam(LR)
    rounds = ctx.pick(2, 20)
    h = s.heads
    builds: list[tuple[str, str, Callable[[], Any]]] = [
        (name, "peer", lambda make=make: make(init, tx, heads=h)) for name, make in PEERS.items()]
    builds += [
        (REVERSE, "funnet", lambda: Funnet(fn, init, tx, heads=h, grad="reverse")),
        (HAND, "funnet", lambda: Funnet(fn, init, tx, heads=h, grad="hand")),
    ]
    if not ctx.quick:
        builds += [
            (AA_NAME, "A/A check", lambda: Linen(init, tx, heads=h)),
            (PLAIN_REVERSE, "reference",
             lambda: FunnetPlain(fn, init, tx, heads=h, grad="reverse")),
            (PLAIN_HAND, "reference", lambda: FunnetPlain(fn, init, tx, heads=h, grad="hand")),
        ]
    peers: dict[str, Any] = {}
    kinds: dict[str, str] = {}
    missing: dict[str, str] = {}
    for name, kind, build in builds:
        peer, err = guarded(build)
        if peer is None:
            if kind in ("peer", "A/A check"):
                res.failures.append(f"attention: peer {name} could not be built: {err}")
            missing[name] = err or ""
            continue
        peers[name], kinds[name] = peer, kind
    outputs = {}
    for name, p in peers.items():  # at the shared init, before a step
        o, err = guarded(lambda p=p: np.asarray(p.predict(x[:s.batch]), np.float64))
        if o is not None:
            outputs[name] = o
        else:
            res.failures.append(f"attention: {name}.predict failed: {err}")
    comps = {n: EpochCompetitor(p, x, y, s.batch) for n, p in peers.items()}
    base = BASE if BASE in comps else next(iter(comps))
    cmp = interleaved(comps, baseline=base, rounds=rounds, warmup=1,
                      fixed_inner=dict.fromkeys(comps, 1))
    first = {n: np.asarray(jax.device_get(c.first_losses), np.float64)
             for n, c in comps.items() if c.first_losses is not None}
    ref = REVERSE if REVERSE in first else next(iter(first))
    agree = agreement(outputs, first, ref, res)

    table = Table(
        f"attention: train step, {s.label}, MSE, Adam {LR:g} ({s.steps} steps per call, "
        f"{rounds} interleaved rounds)",
        ["library", "kind", "epochs", "first epoch s", "ms/step", "× flax",
         "× funnet reverse", PROFILE_COLUMN, "temp MB", "first-step loss",
         "epoch loss first → last", "target", "note"])
    profiles: dict[str, Any] = {}
    trained: dict[str, Any] = {}
    bound = ctx.pick(1.0, TRAIN_BOUND)
    for name, r in cmp.results.items():
        prof, perr = guarded(lambda p=peers[name]: program_profile(
            p.lowered(x[:s.batch], y[:s.batch]).compile(), s))
        profiles[name] = prof
        start, end = comps[name].mean_losses()
        trained[name] = (start, end)
        target = {REVERSE: f"≤ {PEER_TARGET}× flax",
                  HAND: f"≤ {HAND_TARGET}× funnet reverse"}.get(name, "")
        table.add(name, kinds[name], comps[name].epochs, fmt(r.first_s, ".2f"),
                  fmt(r.median_s, ".1f", scale=1e3 / s.steps),
                  fmt_ratio(cmp.ratio(name, to=base)),
                  fmt_ratio(cmp.ratio(name, to=REVERSE) if REVERSE in cmp.results else None),
                  _profile_cell(prof), _mb(prof["temp_bytes"]) if prof else "—",
                  fmt(agree["first_loss"].get(name), ".6f"),
                  f"{fmt(start, '.4f')} → {fmt(end, '.4f')}", target,
                  r.error or perr or "")
        if r.error:
            res.failures.append(f"attention: {name} failed: {r.error}")
        elif start is None or end is None or not end < bound * start:
            res.failures.append(f"attention: {name} did not train: mean epoch loss {start} → "
                                f"{end} after {comps[name].epochs} epochs (must fall below "
                                f"{bound:g}× the first)")
    for name, why in missing.items():
        table.add(name, "funnet", *(["—"] * 9), "", f"funnet: {why}")
    worst = max(agree["max_rel_epoch"].values(), default=None)
    worst_out = max(agree["max_rel_output"].values(), default=None)
    table.notes += [
        (f"data: x ~ N(0, 1) [{s.steps * s.batch}, {s.time}, {s.features}], y = Σ_t x[:, t, :]"
         f" / √T; {s.steps} batches of {s.batch} per epoch, the same permutation in every "
         "library's k-th epoch; numpy batches"),
        ("same numpy init (W_q, W_k, W_v ~ N(0, 1/D), W_o ~ N(0, 1/dim), biases ~ N(0, 0.01)) "
         "mapped into each library's layout (benchmarks/_attn_peers.py)"),
        (f"ms/step: median over rounds of the epoch time / {s.steps}; × columns: median of "
         "per-round ratios"),
        (f"agreement with {agree['reference']}: outputs at the init on one batch, max relative "
         f"difference {fmt(worst_out, '.1e')}; first-epoch losses {fmt(worst, '.1e')}"),
        ("epoch loss: mean of the batch losses (each before its update) of the first and of "
         f"the last epoch; the case fails unless last < {bound:g}× first"),
        PROFILE_NOTE,
        f"load average (1 / 5 / 15 min) at the end of the rounds: {load_average()}",
    ]
    if not ctx.quick:
        aa = cmp.ratio(AA_NAME, to=BASE) if AA_NAME in cmp.results else None
        table.notes.append(f"'{AA_NAME}' is flax run twice: its ratio to the first flax, "
                           f"{fmt_ratio(aa)}, shows the noise floor of this table")
    res.tables.append(table)
    res.data["train_step"] = {"comparison": cmp.to_dict(), "profiles": profiles,
                              "agreement": agree, "epoch_loss_first_last": trained,
                              "missing": missing}


# ------------------------------------------------------------------- gradient, memory


def _gradient(ctx: Ctx, fn: Any, s: Sizes, res: CaseResult) -> None:
    x, y = (jnp.asarray(v[:s.batch]) for v in make_data(s))
    init = attention_init(s.features, s.heads, s.dim)
    model = funnet_attention(fn, s.heads, s.dim)
    params = funnet_attention_params(fn, model, init)

    def loss_of(p, x, y):
        return half_mse(model.apply(p, x), y)

    losses: dict[str, tuple[Callable, tuple]] = {G_JAX: (loss_of, (params, x, y))}
    programs: dict[str, tuple[Callable, tuple]] = {
        G_JAX: (jax.jit(jax.value_and_grad(loss_of)), (params, x, y)),
        G_HAND: (jax.jit(fn.backprop.value_and_grad(model, fn.mse)), (params, x, y)),
    }
    tx = optax.sgd(0.0)
    notes: dict[str, str] = {}
    references = () if ctx.quick else ((G_LINEN, PEERS[Linen.name]),
                                       (G_HAIKU, list(PEERS.values())[1]))
    for name, build in references:
        peer, err = guarded(lambda b=build: b(init, tx, heads=s.heads))
        if peer is None:
            notes[name] = err or ""
            continue
        f, pp = peer.loss_fn()
        losses[name] = (f, (pp, x, y))
        programs[name] = (jax.jit(jax.value_and_grad(f)), (pp, x, y))
    comps = {n: (lambda f=f, a=a: f(*a)) for n, (f, a) in programs.items()}
    cmp = interleaved(comps, baseline=G_JAX, rounds=ctx.pick(2, 25), warmup=1,
                      min_time=ctx.pick(0.0, 0.3))
    ref = cmp.results[G_JAX].last

    # what the forward pass keeps for the backward (shapes only, nothing runs)
    def hand_residuals(p, x):  # the arrays only (the residuals also carry dtypes, flags)
        leaves = jax.tree.leaves(model.forward_with_state(p, (), x)[2])
        return [v for v in leaves if isinstance(v, jax.Array)]

    def vjp_residuals(f):
        return lambda p, x, y: jax.vjp(lambda p: f(p, x, y), p)[1]

    kept = {G_HAND: guarded(lambda: tree_bytes(jax.eval_shape(hand_residuals, params, x)))}
    for name, (f, args) in losses.items():
        kept[name] = guarded(lambda f=f, a=args: tree_bytes(jax.eval_shape(vjp_residuals(f),
                                                                           *a)))
    table = Table(
        f"attention: loss and gradient alone, {s.label}, one batch, jitted "
        f"({cmp.results[G_JAX].inner} calls per round, {len(cmp.orders)} rounds)",
        ["gradient", "first call s", "ms/call", "× jax.grad (funnet apply)",
         "max |Δ| / max |g| vs jax.grad", PROFILE_COLUMN, "temp MB", "× jax.grad temp",
         "args + outputs MB", "residuals kept MB", "target", "note"])
    profiles: dict[str, Any] = {}
    deltas: dict[str, float | None] = {}
    for name, r in cmp.results.items():
        prof, perr = guarded(lambda n=name: program_profile(
            programs[n][0].lower(*programs[n][1]).compile(), s))
        profiles[name] = prof
        delta = None
        if name in (G_JAX, G_HAND) and r.ok and ref is not None:
            delta = _rel_diff(r.last, ref)
            if delta > GRAD_RTOL:
                res.failures.append(f"attention: {name} differs from {G_JAX} by {delta:.1e} "
                                    f"of the gradient's scale (> {GRAD_RTOL:g})")
        deltas[name] = delta
        base = profiles.get(G_JAX)
        temp_ratio = (prof["temp_bytes"] / base["temp_bytes"]
                      if prof and base and base["temp_bytes"] else None)
        k = kept.get(name, (None, None))
        target = {G_HAND: f"time ≤ {HAND_TARGET}×"}.get(name, "")
        table.add(name, fmt(r.first_s, ".2f"), fmt(r.median_s, ".1f", scale=1e3),
                  fmt_ratio(cmp.ratio(name)),
                  fmt(delta, ".1e") if delta is not None and name != G_JAX else "",
                  _profile_cell(prof), _mb(prof["temp_bytes"]) if prof else "—",
                  fmt_ratio(temp_ratio),
                  _mb(prof["argument_bytes"] + prof["output_bytes"]) if prof else "—",
                  _mb(k[0]) if k[0] is not None else "—", target,
                  r.error or notes.get(name) or perr or k[1] or "")
        if r.error:
            res.failures.append(f"attention: {name} failed: {r.error}")
    for name, why in notes.items():
        if name not in cmp.results:
            table.add(name, *(["—"] * 10), why)
    p_bytes = s.batch * s.heads * s.time * s.time * 4
    table.notes += [
        ("one call: the loss and its gradient with respect to all params on one batch "
         f"[{s.batch}, {s.time}, {s.features}], the forward pass included; ratios: median of "
         "per-round ratios"),
        ("temp MB, args + outputs MB: compiled.memory_analysis() of the jitted program "
         "(temp_size_in_bytes; argument_size_in_bytes + output_size_in_bytes)"),
        ("residuals kept: bytes of what the forward pass keeps for the backward, by "
         "jax.eval_shape: the residuals of funnet's forward_with_state (hand: x, Q, K, V, "
         f"P and O; P alone [B, N, T, T] is {_mb(p_bytes)} MB), the leaves of jax.vjp's "
         "pullback (autodiff; they include the inputs it closes over)"),
        PROFILE_NOTE.replace("; temp MB: compiled.memory_analysis().temp_size_in_bytes", ""),
        f"load average (1 / 5 / 15 min) at the end of the rounds: {load_average()}",
    ]
    res.tables.append(table)
    res.data["gradient"] = {"comparison": cmp.to_dict(), "profiles": profiles,
                            "max_rel_delta": deltas,
                            "residual_bytes": {k: v[0] for k, v in kept.items()},
                            "notes": notes}


def run(ctx: Ctx, sizes: Sizes | None = None) -> CaseResult:
    """The case; ``sizes`` overrides the layer and data sizes (default: by the mode)."""
    fn = require_funnet(ctx)
    s = sizes or ctx.pick(QUICK, FULL)
    res = CaseResult()
    res.notes.append(f"load average (1 / 5 / 15 min) at the start: {load_average()}")
    _train_step(ctx, fn, s, res)
    _gradient(ctx, fn, s, res)
    return res
