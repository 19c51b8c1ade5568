r"""Case ``recurrent``: an LSTM's train step in funnet, flax linen, haiku and equinox.

Network, init and peers: :mod:`benchmarks._rnn_peers` (``LSTM(H)`` over ``T`` steps, the
last step's ``h_T``, ``Dense(1)``; loss ``1/(2n) Σ (ŷ − y)²``, Adam 1e-3). Full size:
hidden 128, T = 50, batch 64, 32 input features, 4 batches per epoch; ``--quick`` runs the
same code on a tiny LSTM (hidden 16, T = 10, batch 8, 4 features, 2 batches per epoch, 2
rounds, no references): a smoke test of the machinery, bound by its compilations, not a
measurement. Data: ``x ~ N(0, 1)`` ``[N, T, F]`` (fixed seed), target
``y = Σ_t x[:, t, 0] / √T`` (the running sum of one input channel, which an LSTM learns in
a few hundred steps); one call of a competitor is one epoch of per-step calls on numpy
batches (the k-th epoch of every library uses the same permutation), reported per step.

Three parts, timings in interleaved rounds (median of per-round ratios):

- **train step**: flax linen ``nn.RNN(nn.LSTMCell)`` and ``nn.RNN(nn.OptimizedLSTMCell)``,
  haiku ``hk.LSTM`` + ``hk.dynamic_unroll``, equinox ``eqx.nn.LSTMCell`` + ``lax.scan``,
  funnet ``make_step(grad="reverse")`` (``jax.grad`` through funnet's ``apply``) and
  ``make_step(grad="hand")`` (funnet's hand BPTT), all from the same weights. Target:
  funnet reverse ≤ 1.05× the fastest peer. The full mode adds haiku a second time (A/A
  check: the noise floor) and funnet's layers in the peers' plain jitted step, both
  ways (profiling references that take ``make_step``'s own work out), and once more in
  reverse mode with the activations wired as plain formulas (``rewired("formula")``:
  ``jax.grad`` then differentiates ``jax.nn.sigmoid``/``jnp.tanh`` itself, as in the
  peers, instead of using funnet's hand-derived ``f'``).
- **gradient**: the jitted loss-and-gradient alone, on one batch, same params:
  ``jax.value_and_grad`` of funnet's ``apply`` (the baseline) against
  ``fn.backprop.value_and_grad`` (hand BPTT), with the formula-wired funnet LSTM and
  haiku's and linen's ``jax.value_and_grad`` as references (full mode). Target: hand ≤
  1.3× ``jax.grad``.
- **memory**, no timing: each gradient program's ``compiled.memory_analysis()``
  (temp, argument and output bytes), and the bytes the forward pass keeps for the
  backward (funnet's ``forward_with_state`` residuals; ``jax.vjp``'s residuals of
  the autodiff programs, both by ``jax.eval_shape``). Target: hand temp ≤ 1.2× autodiff's.

Profile columns (deterministic, from each compiled program's optimised HLO): *kernels*
(top-level ops that launch work), *loop kernels* (ops launched per time step inside the
``while`` bodies, forward and backward) and *slow fusions*: loop-body fusions that read a
``dynamic-slice`` of a per-step array and evaluate a transcendental (exp, tanh, logistic)
in the same fusion, which XLA's CPU backend runs several times slower than the same
arithmetic on a separate buffer (measured: docs/benchmarks.md, recurrent).

Checks (failures make the run exit non-zero): every library's outputs at the shared init on
one batch agree with funnet's to 1e-5 relative to their scale (full mode; the quick mode
saves these compilations) and the first-step losses to 1e-5 relative (the layouts compute
the same function); the first epoch's losses agree to 1e-3 (Adam turns reduction-order
differences into slow drift); each competitor's mean batch loss in its last epoch is below
half that of its first (full mode; below it in quick mode); the hand gradient agrees with
``jax.grad``'s to 1e-4 relative to the gradient's scale.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

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
from benchmarks._rnn_peers import (
    PEERS,
    Funnet,
    FunnetPlain,
    Haiku,
    Linen,
    LinenOptimized,
    funnet_lstm,
    funnet_lstm_params,
    half_mse,
    lstm_init,
)
from benchmarks._timing import interleaved
from benchmarks.cases.cnn import hlo_counts

LR = 1e-3
OUT_RTOL = 1e-5
FIRST_LOSS_RTOL = 1e-5
EPOCH_LOSS_RTOL = 1e-3
GRAD_RTOL = 1e-4
MEMORY_TARGET = 1.2
HAND_TARGET = 1.3
PEER_TARGET = 1.05

REVERSE = "funnet make_step, grad='reverse'"
HAND = "funnet make_step, grad='hand'"
AA_NAME = "haiku hk.LSTM + hk.dynamic_unroll again (A/A check)"
PLAIN_REVERSE = "funnet layers in a plain jitted step, reverse"
PLAIN_HAND = "funnet layers in a plain jitted step, hand"
PLAIN_FORMULA = "funnet layers in a plain jitted step, reverse, activations wired as 'formula'"
G_JAX = "jax.value_and_grad of funnet apply"
G_FORMULA = "jax.value_and_grad of funnet apply, activations wired as 'formula'"
G_HAND = "fn.backprop.value_and_grad (hand BPTT)"
G_HAIKU = "jax.value_and_grad of haiku"
G_LINEN = "jax.value_and_grad of linen OptimizedLSTMCell"


@dataclass(frozen=True)
class Sizes:
    """The LSTM and the data: ``x [steps · batch, time, features]``, hidden ``hidden``."""

    batch: int
    time: int
    features: int
    hidden: int
    steps: int = 4  # batches per epoch (one call)

    @property
    def label(self) -> str:
        return (f"LSTM({self.hidden}) over T = {self.time}, batch {self.batch}, "
                f"{self.features} features, Dense(1)")


FULL = Sizes(batch=64, time=50, features=32, hidden=128)
QUICK = Sizes(batch=8, time=10, features=4, hidden=16, steps=2)


def make_data(s: Sizes, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``x ~ N(0, 1)`` ``[steps · batch, T, F]`` float32, ``y = Σ_t x[:, t, 0] / √T``."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((s.steps * s.batch, s.time, s.features)).astype(np.float32)
    y = (x[:, :, 0].sum(axis=1) / np.sqrt(s.time))[:, None].astype(np.float32)
    return x, y


def load_average() -> str:
    """``os.getloadavg()`` as ``"1.2 / 3.4 / 5.6"`` (1, 5, 15 min), or ``"n/a"``."""
    try:
        return " / ".join(f"{v:.1f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


# ------------------------------------------------------------------------ HLO profile

_COMP_HEAD = re.compile(r"^(?:ENTRY )?%?([\w.\-]+) ", re.MULTILINE)
_OP = re.compile(r"^\s*(?:ROOT )?%\S+ = (?:\([^=]*?\)|\S+) ([a-z][a-z0-9\-]*)\(")
_NOT_WORK = {"parameter", "constant", "get-tuple-element", "tuple", "bitcast"}
_TRANSCENDENTAL = re.compile(r" (?:exponential|tanh|logistic|log|log-plus-one|"
                             r"exponential-minus-one)\(")


def computations(text: str) -> dict[str, str]:
    """The computations of an optimised HLO module, ``name -> text``."""
    out = {}
    for block in re.split(r"\n\n+", text):
        block = block.strip("\n")
        m = _COMP_HEAD.match(block)
        if m and "{" in block.splitlines()[0]:
            out[m.group(1)] = block
    return out


def loop_profile(text: str) -> dict[str, int]:
    """Per-step work of the ``while`` loops in an optimised HLO module.

    ``loops``: number of while loops; ``loop_kernels``: ops that launch work in their
    bodies, summed over the loops (what each time step costs in launches);
    ``slow_fusions``: body fusions whose fused computation has a ``dynamic-slice`` and a
    transcendental op (exp, tanh, logistic, log).
    """
    comps = computations(text)
    bodies = re.findall(r"body=%?([\w.\-]+)", text)
    kernels = slow = 0
    for name in bodies:
        body = comps.get(name, "")
        for line in body.splitlines()[1:]:
            m = _OP.match(line)
            if not m or m.group(1) in _NOT_WORK or m.group(1) == "while":
                continue
            kernels += 1
            called = re.search(r"calls=%?([\w.\-]+)", line)
            if m.group(1) == "fusion" and called:
                fused = comps.get(called.group(1), "")
                if "dynamic-slice(" in fused and _TRANSCENDENTAL.search(fused):
                    slow += 1
    return {"loops": len(bodies), "loop_kernels": kernels, "slow_fusions": slow}


def program_profile(compiled: Any) -> dict[str, Any]:
    """Kernel counts (:func:`hlo_counts`, :func:`loop_profile`) and the memory analysis
    (bytes) of a compiled program."""
    text = compiled.as_text()
    out: dict[str, Any] = {**hlo_counts(text), **loop_profile(text)}
    mem = compiled.memory_analysis()
    for k in ("temp", "argument", "output", "alias"):
        out[f"{k}_bytes"] = int(getattr(mem, f"{k}_size_in_bytes", 0) or 0)
    return out


def _mb(n: int | None) -> str:
    return "—" if n is None else f"{n / 2**20:.2f}"


def _kernels_cell(p: dict[str, Any] | None) -> str:
    if not p:
        return "—"
    return f"{p['kernels']} / {p['loop_kernels']} / {p['slow_fusions']}"


def tree_bytes(tree: Any) -> int:
    """Bytes of all array leaves (arrays or ``ShapeDtypeStruct``) of ``tree``."""
    return int(sum(np.prod(leaf.shape, dtype=np.int64) * np.dtype(leaf.dtype).itemsize
                   for leaf in jax.tree.leaves(tree) if hasattr(leaf, "shape")))


# ----------------------------------------------------------------------- train step


def agreement(outputs: dict[str, np.ndarray], first: dict[str, np.ndarray], ref: str,
              res: CaseResult) -> dict[str, Any]:
    """Initial outputs and first-epoch losses of every library against ``ref``'s
    (:func:`benchmarks._common.init_agreement` with this case's tolerances)."""
    return init_agreement("recurrent", "the cell", outputs, first, ref, res, out_rtol=OUT_RTOL,
                          first_rtol=FIRST_LOSS_RTOL, epoch_rtol=EPOCH_LOSS_RTOL)


def _train_step(ctx: Ctx, fn: Any, s: Sizes, res: CaseResult) -> None:
    x, y = make_data(s)
    init = lstm_init(s.features, s.hidden)
    tx = optax.adam(LR)
    rounds = ctx.pick(2, 20)
    builds: list[tuple[str, str, Callable[[], Any]]] = [
        (name, "peer", lambda make=make: make(init, tx)) for name, make in PEERS.items()]
    builds += [
        (REVERSE, "funnet", lambda: Funnet(fn, init, tx, grad="reverse")),
        (HAND, "funnet", lambda: Funnet(fn, init, tx, grad="hand")),
    ]
    if not ctx.quick:
        builds += [
            (AA_NAME, "A/A check", lambda: Haiku(init, tx)),
            (PLAIN_REVERSE, "reference", lambda: FunnetPlain(fn, init, tx, grad="reverse")),
            (PLAIN_HAND, "reference", lambda: FunnetPlain(fn, init, tx, grad="hand")),
            (PLAIN_FORMULA, "reference",
             lambda: FunnetPlain(fn, init, tx, grad="reverse", wiring="formula")),
        ]
    peers: dict[str, Any] = {}
    kinds: dict[str, str] = {}
    missing: dict[str, str] = {}
    for name, kind, build in builds:
        peer, err = guarded(build)
        if peer is None:
            if kind == "peer":
                res.failures.append(f"recurrent: peer {name} could not be built: {err}")
            missing[name] = err or ""
            continue
        peers[name], kinds[name] = peer, kind
    outputs = {}
    for name, p in ([] if ctx.quick else peers.items()):  # at the shared init, before a step
        o, err = guarded(lambda p=p: np.asarray(p.predict(x[:s.batch]), np.float64))
        if o is not None:
            outputs[name] = o
        else:
            res.failures.append(f"recurrent: {name}.predict failed: {err}")
    comps = {n: EpochCompetitor(p, x, y, s.batch) for n, p in peers.items()}
    # the first peer that could be built (a run without the peers' libraries still times
    # funnet, and reports each missing peer as a failure)
    base = next((n for n in PEERS if n in comps), REVERSE)
    cmp = interleaved(comps, baseline=base, rounds=rounds, warmup=1,
                      fixed_inner=dict.fromkeys(comps, 1))
    fastest = cmp.fastest(list(PEERS))
    first = {n: np.asarray(jax.device_get(c.first_losses), np.float64)
             for n, c in comps.items() if c.first_losses is not None}
    agree = agreement(outputs, first, REVERSE if REVERSE in first else next(iter(first)), res)

    table = Table(
        f"recurrent: train step, {s.label}, MSE, Adam {LR:g} ({s.steps} steps per call, "
        f"{rounds} interleaved rounds)",
        ["library", "kind", "epochs", "first epoch s", "ms/step", "× fastest peer",
         "× funnet reverse", "kernels / loop kernels / slow fusions", "temp MB",
         "first-step loss", "epoch loss first → last", "target", "note"])
    profiles: dict[str, Any] = {}
    trained: dict[str, Any] = {}
    bound = ctx.pick(1.0, 0.5)
    for name, r in cmp.results.items():
        prof, perr = guarded(lambda p=peers[name]: program_profile(
            p.lowered(x[:s.batch], y[:s.batch]).compile()))
        profiles[name] = prof
        start, end = comps[name].mean_losses()
        trained[name] = (start, end)
        target = {REVERSE: f"≤ {PEER_TARGET}× fastest peer",
                  HAND: f"≤ {HAND_TARGET}× funnet reverse"}.get(name, "")
        table.add(name, kinds[name], comps[name].epochs, fmt(r.first_s, ".2f"),
                  fmt(r.median_s, ".2f", scale=1e3 / s.steps),
                  fmt_ratio(cmp.ratio(name, to=fastest) if fastest else None),
                  fmt_ratio(cmp.ratio(name, to=REVERSE) if REVERSE in cmp.results else None),
                  _kernels_cell(prof), _mb(prof["temp_bytes"]) if prof else "—",
                  fmt(agree["first_loss"].get(name), ".6f"),
                  f"{fmt(start, '.4f')} → {fmt(end, '.4f')}", target,
                  r.error or perr or "")
        if r.error:
            res.failures.append(f"recurrent: {name} failed: {r.error}")
        elif start is None or end is None or not end < bound * start:
            res.failures.append(f"recurrent: {name} did not train: mean epoch loss {start} → "
                                f"{end} after {comps[name].epochs} epochs (must fall below "
                                f"{bound:g}× the first)")
    for name, why in missing.items():
        table.add(name, "funnet", *(["—"] * 9), "", f"funnet: {why}")
    worst = max(agree["max_rel_epoch"].values(), default=None)
    worst_out = max(agree["max_rel_output"].values(), default=None)
    table.notes += [
        (f"data: x ~ N(0, 1) [{s.steps * s.batch}, {s.time}, {s.features}], y = Σ_t x[:, t, 0]"
         f" / √T; {s.steps} batches of {s.batch} per epoch, the same permutation in every "
         "library's k-th epoch; numpy batches"),
        ("same numpy init (W_x ~ N(0, 1/F), W_h ~ N(0, 1/H), b = 0 but 1 on the forget gate, "
         "Dense W ~ N(0, 1/H)) mapped into each library's layout (benchmarks/_rnn_peers.py)"),
        (f"ms/step: median over rounds of the epoch time / {s.steps}; × columns: median of "
         f"per-round ratios; fastest peer: {fastest}"),
        (f"agreement with {agree['reference']}: outputs at the init on one batch, max relative "
         f"difference {fmt(worst_out, '.1e')}; first-epoch losses {fmt(worst, '.1e')}"),
        ("epoch loss: mean of the batch losses (each before its update) of the first and of "
         "the last epoch; the case fails unless last < "
         f"{bound:g}× first"),
        ("kernels / loop kernels / slow fusions of the compiled step's optimised HLO: "
         "top-level ops that launch work / ops launched per time step in the while bodies "
         "(forward + backward) / body fusions reading a dynamic-slice and evaluating exp, "
         "tanh or logistic; temp MB: compiled.memory_analysis().temp_size_in_bytes"),
        f"load average (1 / 5 / 15 min) at the end of the rounds: {load_average()}",
    ]
    if not ctx.quick:
        aa = cmp.ratio(AA_NAME, to=Haiku.name) if AA_NAME in cmp.results else None
        table.notes.append(f"'{AA_NAME}' is haiku run twice: its ratio to the first haiku, "
                           f"{fmt_ratio(aa)}, shows the noise floor of this table")
    res.tables.append(table)
    res.data["train_step"] = {"comparison": cmp.to_dict(), "profiles": profiles,
                              "agreement": agree, "epoch_loss_first_last": trained,
                              "fastest_peer": fastest, "missing": missing}


# ------------------------------------------------------------------- gradient, memory


def _rel_diff(a: Any, b: Any) -> float:
    """max |a − b| over all leaves / max |b|: the gradient's agreement, scale-free."""
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    scale = max(float(jnp.max(jnp.abs(v))) for v in lb)
    return max(float(jnp.max(jnp.abs(u - v))) for u, v in zip(la, lb, strict=True)) / scale


def _gradient(ctx: Ctx, fn: Any, s: Sizes, res: CaseResult) -> None:
    x, y = (jnp.asarray(v[:s.batch]) for v in make_data(s))
    init = lstm_init(s.features, s.hidden)
    model = funnet_lstm(fn, s.hidden)
    params = funnet_lstm_params(fn, model, init)

    def loss_of(p, x, y):
        return half_mse(model.apply(p, x), y)

    losses: dict[str, tuple[Callable, tuple]] = {G_JAX: (loss_of, (params, x, y))}
    programs: dict[str, tuple[Callable, tuple]] = {
        G_JAX: (jax.jit(jax.value_and_grad(loss_of)), (params, x, y)),
        G_HAND: (jax.jit(fn.backprop.value_and_grad(model, fn.mse)), (params, x, y)),
    }
    tx = optax.sgd(0.0)
    notes: dict[str, str] = {}
    if not ctx.quick:
        formula = model.rewired("formula")

        def loss_formula(p, x, y):
            return half_mse(formula.apply(p, x), y)

        losses[G_FORMULA] = (loss_formula, (params, x, y))
        programs[G_FORMULA] = (jax.jit(jax.value_and_grad(loss_formula)), (params, x, y))
    references = () if ctx.quick else ((G_HAIKU, Haiku), (G_LINEN, LinenOptimized))
    for name, build in references:
        peer, err = guarded(lambda b=build: b(init, tx))
        if peer is None:
            notes[name] = err or ""
            continue
        if isinstance(peer, Linen):
            apply, pp = peer.state.apply_fn, peer.state.params

            def f(p, x, y, apply=apply):
                return half_mse(apply({"params": p}, x), y)
        else:
            apply, pp = peer.model.apply, peer.params

            def f(p, x, y, apply=apply):
                return half_mse(apply(p, x), y)

        losses[name] = (f, (pp, x, y))
        programs[name] = (jax.jit(jax.value_and_grad(f)), (pp, x, y))
    comps = {n: (lambda f=f, a=a: f(*a)) for n, (f, a) in programs.items()}
    cmp = interleaved(comps, baseline=G_JAX, rounds=ctx.pick(2, 25), warmup=1,
                      min_time=ctx.pick(0.0, 0.2))
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
        f"recurrent: loss and gradient alone, {s.label}, one batch, jitted "
        f"({cmp.results[G_JAX].inner} calls per round, {len(cmp.orders)} rounds)",
        ["gradient", "first call s", "ms/call", "× jax.grad (funnet apply)",
         "max |Δ| / max |g| vs jax.grad", "kernels / loop kernels / slow fusions",
         "temp MB", "× jax.grad temp", "args + outputs MB", "residuals kept MB", "target",
         "note"])
    profiles: dict[str, Any] = {}
    deltas: dict[str, float | None] = {}
    for name, r in cmp.results.items():
        prof, perr = guarded(lambda n=name: program_profile(
            programs[n][0].lower(*programs[n][1]).compile()))
        profiles[name] = prof
        delta = None
        if name in (G_JAX, G_HAND, G_FORMULA) and r.ok and ref is not None:
            delta = _rel_diff(r.last, ref)
            if delta > GRAD_RTOL:
                res.failures.append(f"recurrent: {name} differs from {G_JAX} by {delta:.1e} "
                                    f"of the gradient's scale (> {GRAD_RTOL:g})")
        deltas[name] = delta
        base = profiles.get(G_JAX)
        temp_ratio = (prof["temp_bytes"] / base["temp_bytes"]
                      if prof and base and base["temp_bytes"] else None)
        k = kept.get(name, (None, None))
        target = {G_HAND: f"time ≤ {HAND_TARGET}×, temp ≤ {MEMORY_TARGET}×"}.get(name, "")
        table.add(name, fmt(r.first_s, ".2f"), fmt(r.median_s, ".2f", scale=1e3),
                  fmt_ratio(cmp.ratio(name)),
                  fmt(delta, ".1e") if delta is not None and name != G_JAX else "",
                  _kernels_cell(prof), _mb(prof["temp_bytes"]) if prof else "—",
                  fmt_ratio(temp_ratio),
                  _mb(prof["argument_bytes"] + prof["output_bytes"]) if prof else "—",
                  _mb(k[0]) if k[0] is not None else "—", target,
                  r.error or notes.get(name) or perr or k[1] or "")
        if r.error:
            res.failures.append(f"recurrent: {name} failed: {r.error}")
    for name, why in notes.items():
        if name not in cmp.results:
            table.add(name, *(["—"] * 9), "", why)
    table.notes += [
        ("one call: the loss and its gradient with respect to all params on one batch "
         f"[{s.batch}, {s.time}, {s.features}], the forward pass included; ratios: median of "
         "per-round ratios"),
        ("temp MB, args + outputs MB: compiled.memory_analysis() of the jitted program "
         "(temp_size_in_bytes; argument_size_in_bytes + output_size_in_bytes)"),
        ("residuals kept: bytes of what the forward pass keeps for the backward, by "
         "jax.eval_shape: the residuals of funnet's forward_with_state (hand), the leaves "
         "of jax.vjp's pullback (autodiff; they include the inputs it closes over)"),
        f"load average (1 / 5 / 15 min) at the end of the rounds: {load_average()}",
    ]
    res.tables.append(table)
    res.data["gradient"] = {"comparison": cmp.to_dict(), "profiles": profiles,
                            "max_rel_delta": deltas,
                            "residual_bytes": {k: v[0] for k, v in kept.items()},
                            "notes": notes}


def run(ctx: Ctx, sizes: Sizes | None = None) -> CaseResult:
    """The case; ``sizes`` overrides the LSTM and data sizes (default: by the mode)."""
    fn = require_funnet(ctx)
    s = sizes or ctx.pick(QUICK, FULL)
    res = CaseResult()
    res.notes.append(f"load average (1 / 5 / 15 min) at the start: {load_average()}")
    _train_step(ctx, fn, s, res)
    _gradient(ctx, fn, s, res)
    return res
