r"""Case ``cnn``: the digits CNN's train step in funnet, flax linen, haiku and equinox.

Network, init and peers: :mod:`benchmarks._cnn_peers` (Conv 16 – BatchNorm – ReLU –
MaxPool 2, Conv 32 – BatchNorm – ReLU – MaxPool 2, Flatten, Dense 10 on ``[N, 8, 8, 1]``;
softmax cross-entropy, Adam 1e-3, batch 64). Every library trains from the same numpy init
on the same 1792 of the 1797 digits (28 full batches), with the same permutation in its
k-th epoch; one call of a competitor is one epoch of 28 per-step calls on numpy batches,
reported per step (ms/epoch / 28).

Two comparisons, each in interleaved rounds (median of per-round ratios):

- **train step**: flax linen, haiku, equinox, funnet ``make_step(grad="reverse")`` and
  ``make_step(grad="hand")``, all in the same rounds. Targets: funnet reverse ≤ 1.05× the
  fastest peer; funnet hand ≤ 1.2× funnet reverse. The full mode adds, in the same
  rounds, linen a second time (an A/A check: the noise floor) and three profiling
  references that split funnet's time: linen with ``use_fast_variance=False`` (the
  two-pass variance funnet computes), funnet's layers in the peers' plain
  ``jax.value_and_grad`` + optax step, and ``make_step``'s jitted program without the
  wrapper's host checks.
- **BatchNorm alone** on ``x [64, 8, 8, 16]`` float32 in training mode, one call = the
  gradients ``(dγ, dβ, dx)`` for a fixed ``dy``, jitted: ``funnet.BatchNorm``'s
  ``forward_with_state`` + ``backward`` (hand) against ``jax.grad`` of the plain formula
  ``Σ dy ⊙ (γ (x − μ)/√(σ² + ε) + β)`` written here (the baseline), and ``jax.grad``
  through funnet's own ``apply_with_state`` and through ``flax.linen.BatchNorm``, each with
  the kernel and reduction counts of its compiled program. Target: hand ≤ 1.1× the
  formula's grad.

Checks (failures make the run exit non-zero): the peers' first-step losses from the same
init agree to 1e-5 relative and their losses over the whole first epoch to 1e-3 (Adam
turns reduction-order differences into slowly growing drift; a broken peer — a wrong
flatten order, BatchNorm in the wrong mode — is off by more than 1e-1), every peer's train
accuracy in evaluation mode (running statistics) after all its epochs is > 0.9, and the
BatchNorm gradients agree to 1e-4 (float32).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks._cnn_peers import (
    EPSILON,
    IMAGE,
    MOMENTUM,
    PEERS,
    Funnet,
    FunnetInner,
    FunnetPlain,
    Linen,
    cnn_init,
)
from benchmarks._common import (
    CaseResult,
    Ctx,
    Table,
    accuracy,
    batches,
    epoch_permutation,
    fmt,
    fmt_ratio,
    guarded,
    load_digits_arrays,
    loss_agreement,
    require_funnet,
)
from benchmarks._timing import interleaved

BATCH = 64
LR = 1e-3
N_USED = 1792  # 28 × 64 of the 1797 samples
STEPS = N_USED // BATCH
MIN_ACCURACY = 0.9
FIRST_LOSS_RTOL = 1e-5
EPOCH_LOSS_RTOL = 1e-3
BN_SHAPE = (64, 8, 8, 16)
BN_ATOL = 1e-4

REVERSE = "funnet make_step, grad='reverse'"
HAND = "funnet make_step, grad='hand'"
BN_FORMULA = "jax.grad of the plain formula"
BN_HAND = "funnet.BatchNorm forward_with_state + backward (hand)"
BN_APPLY = "jax.grad of funnet.BatchNorm apply_with_state"
BN_FLAX = "jax.grad of flax.linen.BatchNorm (E[x²] − E[x]²)"
AA_NAME = "flax linen (per-step) again (A/A check)"
REF_LINEN = "flax linen, two-pass variance (use_fast_variance=False)"
REF_PLAIN = FunnetPlain.name
REF_INNER = "funnet make_step's jitted program alone (no host checks)"


class EpochCompetitor:
    """One call = one epoch of ``peer``; its k-th call uses permutation k. The losses of
    the first epoch (the warm-up call) are kept for the agreement check."""

    def __init__(self, peer: Any, x: np.ndarray, y: np.ndarray):
        self.peer, self.x, self.y = peer, x, y
        self.epochs = 0
        self.first_losses: list[Any] | None = None

    def __call__(self) -> Any:
        perm = epoch_permutation(len(self.x), self.epochs)
        losses = self.peer.epoch(*batches(self.x, self.y, perm, BATCH))
        if self.epochs == 0:
            self.first_losses = losses
        self.epochs += 1
        return losses


def _agreement(comps: dict[str, EpochCompetitor], res: CaseResult) -> dict[str, Any]:
    """First-step and first-epoch losses of every competitor against the first one's."""
    ran = {n: np.asarray(jax.device_get(c.first_losses), np.float64)
           for n, c in comps.items() if c.first_losses is not None}
    if not ran:
        return {}
    ref_name = next(iter(ran))
    first, epoch = loss_agreement("cnn", ran, ref_name, res, first_rtol=FIRST_LOSS_RTOL,
                                  epoch_rtol=EPOCH_LOSS_RTOL)
    out: dict[str, Any] = {"reference": ref_name, "first_loss": first, "max_rel_epoch": epoch}
    return out


def _train_step(ctx: Ctx, fn: Any, res: CaseResult) -> None:
    x_all, y_all, source = load_digits_arrays(fn)
    x = x_all[:N_USED].reshape(N_USED, *IMAGE)
    y = y_all[:N_USED]
    init = cnn_init(seed=0)
    tx = optax.adam(LR)
    rounds = ctx.pick(5, 30)

    peers: dict[str, Any] = {name: make(init, tx) for name, make in PEERS.items()}
    missing: dict[str, str] = {}
    kinds = dict.fromkeys(peers, "peer")
    builds: list[tuple[str, str, Callable[[], Any]]] = [
        (REVERSE, "funnet", lambda: Funnet(fn, init, tx, grad="reverse")),
        (HAND, "funnet", lambda: Funnet(fn, init, tx, grad="hand")),
    ]
    if not ctx.quick:  # the noise floor, and profiling references: where the time goes
        builds += [
            (AA_NAME, "A/A check", lambda: Linen(init, tx)),
            (REF_LINEN, "reference", lambda: Linen(init, tx, fast_variance=False)),
            (REF_PLAIN, "reference", lambda: FunnetPlain(fn, init, tx)),
            (REF_INNER, "reference", lambda: FunnetInner(fn, init, tx)),
        ]
    for name, kind, build in builds:
        peer, err = guarded(build)
        if peer is not None:
            peers[name], kinds[name] = peer, kind
        else:
            missing[name] = err or ""
    comps = {name: EpochCompetitor(p, x, y) for name, p in peers.items()}
    base = next(iter(PEERS))
    # the same number of calls per round for every competitor (they cost about the same;
    # calibrating each from its first few calls on a loaded machine gave 1, 2 or 3)
    inner = ctx.pick(1, 2)
    cmp = interleaved(comps, baseline=base, rounds=rounds, warmup=1,
                      fixed_inner=dict.fromkeys(comps, inner))
    fastest = cmp.fastest(list(PEERS))
    agreement = _agreement(comps, res)

    table = Table(
        f"cnn: train step, Conv16-BN-ReLU-Pool-Conv32-BN-ReLU-Pool-Dense10 on [64, 8, 8, 1], "
        f"Adam 1e-3 ({STEPS} steps per call, {inner} call{'s' * (inner > 1)} per round, "
        f"{rounds} interleaved "
        "rounds)",
        ["library", "kind", "epochs", "first epoch s", "ms/step", "× fastest peer", "× funnet reverse",
         "kernels / reductions", "first-step loss", "train acc", "target", "note"])
    accs: dict[str, float | None] = {}
    counts: dict[str, dict[str, int] | None] = {}
    for name, r in cmp.results.items():
        acc, acc_err = (None, None) if not r.ok else guarded(
            lambda p=peers[name]: accuracy(p.logits(x), y))
        accs[name] = acc
        target = {REVERSE: "≤ 1.05× fastest peer", HAND: "≤ 1.2× funnet reverse"}.get(name, "")
        to_rev = cmp.ratio(name, to=REVERSE) if REVERSE in cmp.results else None
        counts[name], cnt_err = guarded(
            lambda p=peers[name]: hlo_counts(p.compiled_text(x[:BATCH], y[:BATCH])))
        table.add(name, kinds[name], comps[name].epochs, fmt(r.first_s, ".2f"),
                  fmt(r.median_s, ".3f", scale=1e3 / STEPS),
                  fmt_ratio(cmp.ratio(name, to=fastest) if fastest else None),
                  fmt_ratio(to_rev),
                  "{kernels} / {reductions}".format(**counts[name]) if counts[name] else "—",
                  fmt(agreement.get("first_loss", {}).get(name), ".6f"),
                  fmt(acc, ".3f"), target, r.error or acc_err or cnt_err or "")
        if name in PEERS and r.error:
            res.failures.append(f"cnn: peer {name} failed: {r.error}")
        elif r.ok and (acc is None or acc <= MIN_ACCURACY):
            res.failures.append(f"cnn: {name} train accuracy {acc} <= {MIN_ACCURACY} after "
                                f"{comps[name].epochs} epochs")
    for name, why in missing.items():
        table.add(name, "funnet", "—", "—", "—", "—", "—", "—", "—", "—", "",
                  f"funnet: {why}")
    worst = max(agreement.get("max_rel_epoch", {}).values(), default=None)
    table.notes += [
        (f"data: {source} as [N, 8, 8, 1]; first {N_USED} samples, {STEPS} full batches of "
         f"{BATCH}, the same permutation in every library's k-th epoch; numpy batches"),
        ("same numpy init (W ~ N(0, 1/fan_in), b = 0, BatchNorm γ = 1, β = 0) converted into "
         "each library's params; BatchNorm momentum 0.9, ε = 1e-5, batch statistics"),
        (f"ms/step: median over rounds of the epoch time / {STEPS}; × columns: median of "
         f"per-round ratios; fastest peer: {fastest}"),
        (f"agreement: first-step losses from the same init, and the first epoch's {STEPS} "
         f"losses, max relative difference to {agreement.get('reference')}: "
         f"{fmt(worst, '.1e')}"),
        "train acc: evaluation mode (running statistics) on the 1792 training images",
        ("kernels / reductions: of the compiled step (its optimised HLO): top-level ops that "
         "launch work (fusions, unfused ops) / reduce ops anywhere; on this tiny network "
         "each kernel's fixed cost is a sizeable part of a step"),
    ]
    if not ctx.quick:
        aa = cmp.ratio(AA_NAME) if AA_NAME in cmp.results else None
        table.notes.append(f"'{AA_NAME}' is linen run twice: its ratio to the first linen, "
                           f"{fmt_ratio(aa)}, shows the noise floor of this table")
        table.notes.append(
            f"references (not peers, not in 'fastest'): '{REF_LINEN}' is linen with the "
            "two-pass variance mean((x − μ)²) that funnet computes (linen's default is "
            f"E[x²] − E[x]²); '{REF_PLAIN}' runs funnet's layers in the peers' plain step; "
            f"'{REF_INNER}' is make_step's compiled program without its per-call host "
            "checks")
    res.tables.append(table)
    res.data["train_step"] = {"comparison": cmp.to_dict(), "accuracy": accs,
                              "kernel_counts": counts,
                              "fastest_peer": fastest, "agreement": agreement,
                              "missing": missing, "data_source": source}


# -------------------------------------------------------------------------- BatchNorm


def bn_formula(params: dict, x: jax.Array) -> jax.Array:
    r"""``y = γ (x − μ)/√(σ² + ε) + β`` over the batch and spatial axes (biased ``σ²``)."""
    axes = tuple(range(x.ndim - 1))
    mu = jnp.mean(x, axis=axes, keepdims=True)
    var = jnp.mean(jnp.square(x - mu), axis=axes, keepdims=True)
    gamma = params["scale"].reshape((1,) * (x.ndim - 1) + (-1,))
    beta = params["offset"].reshape((1,) * (x.ndim - 1) + (-1,))
    return gamma * (x - mu) / jnp.sqrt(var + EPSILON) + beta


_HLO_OP = re.compile(r"^\s*(?:ROOT )?%\S+ = (?:\([^=]*?\)|\S+) ([a-z][a-z0-9\-]*)\(")
_NOT_WORK = {"parameter", "constant", "get-tuple-element", "tuple", "bitcast"}


def hlo_counts(text: str) -> dict[str, int]:
    """``{"kernels", "reductions"}`` of an optimised HLO module (``compiled.as_text()``): the
    top-level ops of the entry computation that do work (fusions and unfused ops, not
    parameters, constants, tuples, bitcasts) and the ``reduce`` ops anywhere (inside
    fusions too)."""
    entry = text[text.index("\nENTRY"):]
    entry = entry[: entry.index("\n}")]
    top = [m.group(1) for line in entry.splitlines() if (m := _HLO_OP.match(line))]
    every = [m.group(1) for line in text.splitlines() if (m := _HLO_OP.match(line))]
    return {"kernels": sum(op not in _NOT_WORK for op in top),
            "reductions": every.count("reduce")}


def kernel_counts(f: Callable, args: tuple) -> dict[str, int]:
    """:func:`hlo_counts` of the jitted ``f`` compiled for ``args`` (jax caches the
    executable of an earlier call: no new compilation)."""
    return hlo_counts(f.lower(*args).compile().as_text())


def _flax_batchnorm(params: dict, x: jax.Array, dy: jax.Array) -> tuple[Callable, tuple]:
    """``jax.grad`` of ``flax.linen.BatchNorm`` (its defaults: one-pass variance), as
    ``(jitted, args)`` returning ``({"offset", "scale"}, dx)`` like the others."""
    import flax.linen as nn

    module = nn.BatchNorm(use_running_average=False, momentum=MOMENTUM, epsilon=EPSILON)
    variables = module.init(jax.random.PRNGKey(0), x)
    stats = variables["batch_stats"]

    @jax.jit
    def grad(params, x, dy):
        def f(p, x):
            y, _ = module.apply({"params": p, "batch_stats": stats}, x,
                                mutable=["batch_stats"])
            return jnp.sum(y * dy)

        dp, dx = jax.grad(f, argnums=(0, 1))(params, x)
        return {"offset": dp["bias"], "scale": dp["scale"]}, dx

    mine = {"scale": params["scale"], "bias": params["offset"]}
    if jax.tree.map(jnp.shape, mine) != jax.tree.map(jnp.shape, variables["params"]):
        raise ValueError(f"flax BatchNorm params {jax.tree.map(jnp.shape, variables['params'])}")
    return grad, (mine, x, dy)


def _batchnorm(ctx: Ctx, fn: Any, res: CaseResult) -> None:
    rng = np.random.default_rng(0)
    c = BN_SHAPE[-1]
    x = jnp.asarray(rng.standard_normal(BN_SHAPE, np.float32) * 2 + 0.5)
    dy = jnp.asarray(rng.standard_normal(BN_SHAPE, np.float32))
    params = {"scale": jnp.asarray(rng.uniform(0.5, 1.5, c).astype(np.float32)),
              "offset": jnp.asarray(rng.standard_normal(c).astype(np.float32))}
    bn = fn.BatchNorm(momentum=0.9, epsilon=EPSILON)
    _, _, state = bn.init_with_state(jax.random.PRNGKey(0), (-1, *BN_SHAPE[1:]))

    @jax.jit
    def formula(params, x, dy):
        return jax.grad(lambda p, x: jnp.sum(bn_formula(p, x) * dy), argnums=(0, 1))(params, x)

    @jax.jit
    def hand(params, state, x, dy):
        _, _, residuals = bn.forward_with_state(params, state, x, train=True)
        return bn.backward(params, residuals, dy)

    @jax.jit
    def through_apply(params, state, x, dy):
        def f(p, x):
            return jnp.sum(bn.apply_with_state(p, state, x, train=True)[0] * dy)

        return jax.grad(f, argnums=(0, 1))(params, x)

    programs: dict[str, tuple[Callable, tuple]] = {
        BN_FORMULA: (formula, (params, x, dy)),
        BN_HAND: (hand, (params, state, x, dy)),
        BN_APPLY: (through_apply, (params, state, x, dy)),
    }
    flax_bn, err = guarded(lambda: _flax_batchnorm(params, x, dy))
    if flax_bn is not None:
        programs[BN_FLAX] = flax_bn
    comps: dict[str, Callable[[], Any]] = {
        name: (lambda f=f, a=a: f(*a)) for name, (f, a) in programs.items()}
    cmp = interleaved(comps, baseline=BN_FORMULA, rounds=ctx.pick(7, 25), warmup=1,
                      min_time=ctx.pick(0.02, 0.1))
    ref = cmp.results[BN_FORMULA].last
    table = Table(f"cnn: BatchNorm alone, training mode, (dγ, dβ, dx) for x {list(BN_SHAPE)} "
                  "float32, jitted", ["gradient", "first call s", "µs/call", "× formula grad",
                                      "max |Δ| vs formula grad", "kernels / reductions",
                                      "target", "note"])
    deltas: dict[str, float | None] = {}
    counts: dict[str, dict[str, int] | None] = {}
    for name, r in cmp.results.items():
        delta = None
        if r.ok and ref is not None:
            got = r.last  # (dparams, dx) in each case
            delta = float(max(jnp.max(jnp.abs(a - b)) for a, b in zip(
                jax.tree.leaves(got), jax.tree.leaves(ref), strict=True)))
            if delta > BN_ATOL:
                res.failures.append(f"cnn: {name} differs from {BN_FORMULA} by {delta:.1e} "
                                    f"(> {BN_ATOL:g})")
        deltas[name] = delta
        counts[name], err = guarded(lambda n=name: kernel_counts(*programs[n]))
        table.add(name, fmt(r.first_s, ".2f"), fmt(r.median_s, ".1f", scale=1e6),
                  fmt_ratio(cmp.ratio(name)), fmt(delta, ".1e") if name != BN_FORMULA else "",
                  "{kernels} / {reductions}".format(**counts[name]) if counts[name] else "—",
                  "≤ 1.1×" if name == BN_HAND else "", r.error or err or "")
        if r.error:
            res.failures.append(f"cnn: {name} failed: {r.error}")
    table.notes += [
        ("one call: the gradients of Σ dy ⊙ BatchNorm(x) (a fixed dy) with respect to "
         "(γ, β, x), batch statistics; the forward pass is inside every call; the running "
         "statistics update is not returned (dead code in every variant)"),
        "× formula grad: median of per-round ratios",
        ("kernels / reductions: in the compiled program (compiled.as_text()), the "
         "top-level ops that launch work (fusions and unfused ops) / the reduce ops anywhere "
         "(each a pass over the [64, 8, 8, 16] input or a product of it)"),
        (f"'{BN_FLAX}' is flax's default one-pass variance (reference, in the "
         "reverse-mode train steps of the peers); the plain formula and funnet compute the "
         "two-pass mean((x − μ)²)"),
    ]
    if flax_bn is None:
        table.notes.append(f"{BN_FLAX}: {err}")
    res.tables.append(table)
    res.data["batchnorm"] = {"comparison": cmp.to_dict(), "max_abs_delta": deltas,
                             "kernel_counts": counts}


def run(ctx: Ctx) -> CaseResult:
    fn = require_funnet(ctx)
    res = CaseResult()
    _train_step(ctx, fn, res)
    _batchnorm(ctx, fn, res)
    return res
