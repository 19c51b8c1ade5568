r"""Case ``graph``: a 2-layer GCN's full-batch training step on a large sparse graph.

Network, data and competitors: :mod:`benchmarks._graph_peers` (``Z = Â relu(Â X W1 + b1)
W2 + b2`` with ``Â = D_in^{-1/2}(A + I)D_out^{-1/2}``, softmax cross-entropy of the
labelled nodes, Adam 1e-2, Kipf & Welling's rate). Full size: a synthetic graph of
N = 100,000 nodes and E = 1,000,000 random directed edges (int32, fixed seed), F = 64 node
features, hidden 32, 8 classes, 10 % of the nodes labelled. F = 64 (not 32) so that
``X W1`` is a real matmul and the input ``X`` (25.6 MB) is a visible part of the memory
bound below, while the edge work this case is about, gathers and segment sums of
``E + N`` rows of width 32 (the self loops appended), still dominates the step; hidden 32
for the same reason (E × 32 gathered values per layer against N × 64 inputs). The labels
are a function of the graph (``argmax`` of a random projection of each node's
neighbourhood mean), so the GCN can learn them. One call of a competitor is one
full-batch training step (``Â`` normalised inside the step by every competitor, from the
degrees: neither ``jraph.GraphConvolution`` nor ``funnet.GraphConv`` takes a precomputed
``Â``). ``--quick`` runs the same code on a tiny graph (200 nodes, 1,000 edges, 2 rounds,
no A/A or reference rows): a smoke test of the machinery, bound by its compilations, not a
measurement.

Three parts, timings in interleaved rounds (median of per-round ratios):

- **train step**: the raw-jax ``segment_sum`` GCN (``jax.grad`` + optax; **the baseline**),
  ``jraph.GraphConvolution`` (if jraph is installed; otherwise its row says unavailable),
  funnet ``make_step(grad="reverse")`` (``jax.grad`` through funnet's ``apply``) and
  ``make_step(grad="hand")`` (funnet's hand backward rules along the edges), all from the
  same weights on the same device-resident graph; the full mode adds the baseline a second
  time (A/A check: the noise floor) and two profiling references: ``make_step``'s jitted
  program called directly (no per-call host check) and funnet's model in the baseline's own
  plain step and loss (no key split, no accuracy metric). Target: funnet reverse ≤ 1.05×
  the baseline.
- **gradient**: the jitted loss-and-gradient alone, same params: ``jax.value_and_grad`` of
  funnet's ``apply`` (the baseline) against ``fn.backprop.value_and_grad`` (hand); the full
  mode adds the baseline again (A/A) and ``jax.value_and_grad`` of the raw GCN (a
  reference). The loss is the same masked mean, written as ``fn.softmax_cross_entropy``
  with targets ``t = onehot(y) · m · N / Σ m`` (a zero row for an unlabelled node), which a
  ``Loss`` with its hand gradient takes as it is. Target: hand ≤ 1.2× ``jax.grad``.
- **memory and HLO**, no timing: every train-step and gradient program's
  ``compiled.memory_analysis()`` (temp, argument, output bytes) against the graph's
  O(edges) size ``u = E · hidden · 4 + N · F · 4`` bytes and against a dense ``N × N``
  float32 matrix (``N² · 4`` bytes: 40 GB at full size), with the optimised HLO's counts of
  scatters and gathers, its largest array and whether any array has two dimensions ≥ N.

Checks (failures make the run exit non-zero): all competitors' first-step losses agree to
1e-5 relative (the same function from the same init) and their losses over the steps they
all ran to 1e-3; every competitor's last loss is below its first (training reduces the
loss); the hand gradient agrees with ``jax.grad``'s to 1e-4 relative to the gradient's
scale (and so does the raw GCN's gradient, mapped to funnet's params, full mode); every
program's temp memory is ≤ 4 u, and no array of any program has two dimensions ≥ N (the
memory stays O(edges), never O(N²)). Targets missed are reported in the tables, not
failures (as in the other cases).
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

from benchmarks._common import (
    CaseResult,
    Ctx,
    Table,
    fmt,
    fmt_ratio,
    guarded,
    loss_agreement,
    require_funnet,
    unavailable,
)
from benchmarks._graph_peers import (
    Funnet,
    FunnetInner,
    FunnetPlain,
    Jraph,
    RawSegmentSum,
    funnet_gcn,
    funnet_gcn_params,
    funnet_graph,
    gcn_init,
    make_graph,
    masked_cross_entropy,
    raw_gcn,
)
from benchmarks._timing import interleaved
from benchmarks.cases.cnn import hlo_counts
from benchmarks.cases.recurrent import load_average

LR = 1e-2
LABELLED = 0.1
FIRST_LOSS_RTOL = 1e-5
STEP_LOSS_RTOL = 1e-3
GRAD_RTOL = 1e-4
PEER_TARGET = 1.05
HAND_TARGET = 1.2
MEMORY_FACTOR = 4  # temp bytes ≤ MEMORY_FACTOR · (E · hidden · 4 + N · F · 4)

BASE = RawSegmentSum.name
AA_NAME = "raw jax segment_sum GCN again (A/A check)"
JRAPH = Jraph.name
REVERSE = "funnet make_step, grad='reverse'"
HAND = "funnet make_step, grad='hand'"
INNER = FunnetInner.name
PLAIN = FunnetPlain.name
G_JAX = "jax.value_and_grad of funnet apply"
G_AA = "jax.value_and_grad of funnet apply again (A/A check)"
G_HAND = "fn.backprop.value_and_grad (hand)"
G_RAW = "jax.value_and_grad of the raw segment_sum GCN"


@dataclass(frozen=True)
class Sizes:
    """The graph and the GCN: ``nodes`` N, ``edges`` E, ``features`` F, ``hidden``,
    ``classes``."""

    nodes: int
    edges: int
    features: int
    hidden: int
    classes: int

    @property
    def label(self) -> str:
        return (f"GCN {self.features}-{self.hidden}-{self.classes} on N = {self.nodes:,} "
                f"nodes, E = {self.edges:,} edges")

    @property
    def edge_bytes(self) -> int:
        """``u = E · hidden · 4 + N · F · 4``: the graph's O(edges) size in float32 bytes."""
        return 4 * (self.edges * self.hidden + self.nodes * self.features)

    @property
    def dense_bytes(self) -> int:
        """``N² · 4``: one dense ``N × N`` float32 matrix."""
        return 4 * self.nodes * self.nodes


FULL = Sizes(nodes=100_000, edges=1_000_000, features=64, hidden=32, classes=8)
QUICK = Sizes(nodes=200, edges=1_000, features=64, hidden=32, classes=8)


def _mb(n: int | None) -> str:
    return "—" if n is None else f"{n / 2**20:.1f}" if n >= 2**20 else f"{n / 2**20:.3f}"


# ------------------------------------------------------------------------ HLO profile

_SHAPE = re.compile(r"\b(pred|[suf]\d+|bf16)\[([\d,]*)\]")
_OP_SHAPE = re.compile(r"= (\S+) (scatter|gather)\(")
_BYTES = {"pred": 1}


def _itemsize(dtype: str) -> int:
    return _BYTES.get(dtype) or max(1, int(re.sub(r"\D", "", dtype)) // 8)


def graph_profile(text: str, nodes: int) -> dict[str, Any]:
    """Counts in an optimised HLO module (``compiled.as_text()``), fusions included:
    ``scatters`` and ``gathers`` (the segment sums and edge gathers), ``largest_bytes``
    (the largest array any instruction names) and ``dense`` (how many array shapes have
    two dimensions ≥ ``nodes``: an ``N × N`` anything), plus :func:`hlo_counts`' kernels."""
    ops = [m.group(2) for m in _OP_SHAPE.finditer(text)]
    largest, dense = 0, 0
    for dtype, dims in _SHAPE.findall(text):
        shape = [int(d) for d in dims.split(",") if d]
        largest = max(largest, int(np.prod(shape, dtype=np.int64)) * _itemsize(dtype))
        dense += sum(d >= nodes for d in shape) >= 2
    return {**hlo_counts(text), "scatters": ops.count("scatter"),
            "gathers": ops.count("gather"), "largest_bytes": largest, "dense": dense}


def program_profile(compiled: Any, nodes: int) -> dict[str, Any]:
    """:func:`graph_profile` and the memory analysis (bytes) of a compiled program."""
    out = graph_profile(compiled.as_text(), nodes)
    mem = compiled.memory_analysis()
    for k in ("temp", "argument", "output", "alias"):
        out[f"{k}_bytes"] = int(getattr(mem, f"{k}_size_in_bytes", 0) or 0)
    return out


# ----------------------------------------------------------------------- train step


class StepCompetitor:
    """One call = one training step of ``peer``; the loss of every step is kept (device
    scalars, fetched after the rounds)."""

    def __init__(self, peer: Any):
        self.peer = peer
        self.losses: list[Any] = []

    def __call__(self) -> Any:
        loss = self.peer.step()
        self.losses.append(loss)
        return loss

    def fetched(self) -> np.ndarray:
        return np.asarray(jax.device_get(self.losses), np.float64)


def _train_step(ctx: Ctx, fn: Any, s: Sizes, graph: dict[str, np.ndarray], res: CaseResult,
                profiles: dict[str, Any]) -> None:
    init = gcn_init(s.features, s.hidden, s.classes)
    tx = optax.adam(LR)
    rounds = ctx.pick(2, 20)
    builds: list[tuple[str, str, Callable[[], Any]]] = [
        (BASE, "baseline", lambda: RawSegmentSum(init, tx, graph)),
        (JRAPH, "peer", lambda: Jraph(init, tx, graph)),
        (REVERSE, "funnet", lambda: Funnet(fn, init, tx, graph, grad="reverse")),
        (HAND, "funnet", lambda: Funnet(fn, init, tx, graph, grad="hand")),
    ]
    if not ctx.quick:
        builds.insert(1, (AA_NAME, "A/A check", lambda: RawSegmentSum(init, tx, graph)))
        builds += [(INNER, "reference", lambda: FunnetInner(fn, init, tx, graph)),
                   (PLAIN, "reference", lambda: FunnetPlain(fn, init, tx, graph))]
    peers: dict[str, Any] = {}
    kinds: dict[str, str] = {}
    missing: dict[str, str] = {}
    for name, kind, build in builds:
        kinds[name] = kind
        try:
            peers[name] = build()
        except ImportError as exc:  # jraph not installed: its row says so, not a failure
            missing[name] = unavailable(exc)
        except Exception as exc:  # noqa: BLE001 - any other error is reported as a failure
            missing[name] = unavailable(exc)
            if kind not in ("funnet", "reference"):
                res.failures.append(f"graph: {name} could not be built: {missing[name]}")
    comps = {n: StepCompetitor(p) for n, p in peers.items()}
    cmp = interleaved(comps, baseline=BASE, rounds=rounds, warmup=1,
                      fixed_inner=dict.fromkeys(comps, 1))
    ran = {n: c.fetched() for n, c in comps.items() if c.losses}
    common = min((len(v) for v in ran.values()), default=0)
    first, max_rel = loss_agreement("graph", {n: v[:common] for n, v in ran.items()}, BASE,
                                    res, first_rtol=FIRST_LOSS_RTOL,
                                    epoch_rtol=STEP_LOSS_RTOL) if BASE in ran else ({}, {})

    table = Table(
        f"graph: full-batch train step, {s.label}, softmax cross-entropy on "
        f"{LABELLED:.0%} labelled nodes, Adam {LR:g} ({rounds} interleaved rounds)",
        ["library", "kind", "steps", "first call s", "ms/step", "× baseline",
         "first-step loss", "loss first → last", "target", "note"])
    for name, r in cmp.results.items():
        losses = ran.get(name)
        start, end = (float(losses[0]), float(losses[-1])) if losses is not None else (None,
                                                                                      None)
        target = {REVERSE: f"≤ {PEER_TARGET}× baseline"}.get(name, "")
        table.add(name, kinds[name], len(comps[name].losses), fmt(r.first_s, ".2f"),
                  fmt(r.median_s, ".1f", scale=1e3), fmt_ratio(cmp.ratio(name)),
                  fmt(first.get(name), ".7f"), f"{fmt(start, '.4f')} → {fmt(end, '.4f')}",
                  target, r.error or "")
        if r.error:
            res.failures.append(f"graph: {name} failed: {r.error}")
        elif start is None or end is None or not end < start:
            res.failures.append(f"graph: {name} did not train: loss {start} → {end} after "
                                f"{len(comps[name].losses)} steps")
        profiles[name], perr = guarded(lambda p=peers[name]: program_profile(
            p.lowered().compile(), s.nodes))
        if perr:
            res.failures.append(f"graph: {name}'s compiled program could not be profiled: "
                                f"{perr}")
    for name, why in missing.items():
        table.add(name, kinds[name], *(["—"] * 6), "",
                  why if kinds[name] == "peer" else f"funnet: {why}")
    worst = max(max_rel.values(), default=None)
    table.notes += [
        (f"graph: {s.edges:,} directed edges drawn uniformly (fixed seed; duplicates and self "
         f"loops counted with multiplicity), a self loop per node appended by every "
         f"competitor (E + N = {s.edges + s.nodes:,} messages per layer); x ~ N(0, 1) "
         f"[{s.nodes:,}, {s.features}]; all arrays on the device, arguments of the jitted "
         "step (never constants)"),
        ("Â normalised inside every step from the degrees (jraph and funnet have no "
         "precomputed-Â input; the raw baseline computes it once per step for both layers)"),
        ("same numpy init (W ~ N(0, 1/fan_in), b = 0) in every library; jraph's bias is added "
         "after the aggregation (inside update_node_fn it would be aggregated too)"),
        (f"ms/step: median over rounds; × baseline: median of per-round ratios to '{BASE}'; "
         "one step per competitor per round, rotated"),
        (f"losses: the first step's (from the same init) must agree to {FIRST_LOSS_RTOL:g} "
         f"relative and those of the {common} steps every competitor ran to "
         f"{STEP_LOSS_RTOL:g} (max relative difference: {fmt(worst, '.1e')}); the last step's "
         "loss must be below the first's"),
        f"load average (1 / 5 / 15 min) at the end of the rounds: {load_average()}",
    ]
    if not ctx.quick:
        table.notes.append(f"references (full mode): '{INNER}' is make_step's compiled "
                           "program called directly (the per-call label check left out); "
                           f"'{PLAIN}' is funnet's model in the baseline's own step and loss "
                           "(no key split, no accuracy metric): between them and "
                           "make_step they split funnet's time into layers and wrapper")
    if not ctx.quick and AA_NAME in cmp.results:
        table.notes.append(f"'{AA_NAME}' is the baseline run twice: its ratio, "
                           f"{fmt_ratio(cmp.ratio(AA_NAME))}, shows the noise floor of this "
                           "table")
    res.tables.append(table)
    res.data["train_step"] = {"comparison": cmp.to_dict(), "losses": ran,
                              "first_loss": first, "max_rel_loss": max_rel,
                              "missing": missing}


# ------------------------------------------------------------------- gradient


def _rel_diff(a: Any, b: Any) -> float:
    """max |a − b| over all leaves / max |b|: the gradient's agreement, scale-free."""
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    scale = max(float(jnp.max(jnp.abs(v))) for v in lb)
    return max(float(jnp.max(jnp.abs(u - v))) for u, v in zip(la, lb, strict=True)) / scale


def _as_funnet(raw: dict[str, Any]) -> tuple:
    """The raw GCN's params (or gradient) ``{"W1", "b1", "W2", "b2"}`` in funnet's layout."""
    return funnet_gcn_params({k: np.asarray(v) for k, v in raw.items()})


def _gradient(ctx: Ctx, fn: Any, s: Sizes, graph: dict[str, np.ndarray], res: CaseResult,
              profiles: dict[str, Any]) -> None:
    init = gcn_init(s.features, s.hidden, s.classes)
    model = funnet_gcn(fn, s.hidden, s.classes)
    params = funnet_gcn_params(init)
    g = funnet_graph(fn, graph)
    mask = graph["mask"]
    t = jnp.asarray(np.eye(s.classes, dtype=np.float32)[graph["labels"]]
                    * (mask * len(mask) / mask.sum())[:, None])  # Σ_k t_ik = m_i N / Σ m

    def loss_of(p, g, t):
        return fn.softmax_cross_entropy(model.apply(p, g), t)

    programs: dict[str, tuple[Callable, tuple]] = {
        G_JAX: (jax.jit(jax.value_and_grad(loss_of)), (params, g, t)),
        G_HAND: (jax.jit(fn.backprop.value_and_grad(model, fn.softmax_cross_entropy)),
                 (params, g, t)),
    }
    if not ctx.quick:
        programs[G_AA] = (jax.jit(jax.value_and_grad(loss_of)), (params, g, t))
        dg = {k: jnp.asarray(v) for k, v in graph.items()}

        def raw_loss(p, dg):
            z = raw_gcn(p, dg["x"], dg["senders"], dg["receivers"])
            return masked_cross_entropy(z, dg["labels"], dg["mask"])

        programs[G_RAW] = (jax.jit(jax.value_and_grad(raw_loss)),
                           (jax.tree.map(jnp.asarray, init), dg))
    comps = {n: (lambda f=f, a=a: f(*a)) for n, (f, a) in programs.items()}
    rounds = ctx.pick(2, 20)
    cmp = interleaved(comps, baseline=G_JAX, rounds=rounds, warmup=1,
                      fixed_inner=dict.fromkeys(comps, 1))
    ref = cmp.results[G_JAX].last
    table = Table(
        f"graph: loss and gradient alone, {s.label}, jitted ({rounds} interleaved rounds)",
        ["gradient", "first call s", "ms/call", "× jax.grad (funnet apply)", "loss",
         "max |Δ| / max |g| vs jax.grad", "target", "note"])
    deltas: dict[str, float | None] = {}
    for name, r in cmp.results.items():
        delta = loss = None
        if r.ok and ref is not None:
            value, grads = r.last
            loss = float(value)
            if name == G_RAW:
                grads = _as_funnet(grads)
            delta = _rel_diff(grads, ref[1])
            rel = abs(loss - float(ref[0])) / abs(float(ref[0]))
            if delta > GRAD_RTOL:
                res.failures.append(f"graph: {name}'s gradient differs from {G_JAX}'s by "
                                    f"{delta:.1e} of the gradient's scale (> {GRAD_RTOL:g})")
            if rel > FIRST_LOSS_RTOL:
                res.failures.append(f"graph: {name}'s loss {loss:.7g} differs from {G_JAX}'s "
                                    f"{float(ref[0]):.7g} (relative {rel:.1e})")
        deltas[name] = delta
        target = {G_HAND: f"≤ {HAND_TARGET}×"}.get(name, "")
        table.add(name, fmt(r.first_s, ".2f"), fmt(r.median_s, ".1f", scale=1e3),
                  fmt_ratio(cmp.ratio(name)), fmt(loss, ".7f"),
                  fmt(delta, ".1e") if delta is not None and name != G_JAX else "", target,
                  r.error or "")
        if r.error:
            res.failures.append(f"graph: {name} failed: {r.error}")
        f, a = programs[name]
        profiles[name], perr = guarded(lambda f=f, a=a: program_profile(
            f.lower(*a).compile(), s.nodes))
        if perr:
            res.failures.append(f"graph: {name}'s compiled program could not be profiled: "
                                f"{perr}")
    table.notes += [
        ("one call: the loss and its gradient with respect to all params on the whole graph, "
         "the forward pass included; ratios: median of per-round ratios"),
        ("loss: fn.softmax_cross_entropy with targets t = onehot(y) · m · N / Σ m, the same "
         "masked mean over the labelled nodes as the train step's"),
        f"load average (1 / 5 / 15 min) at the end of the rounds: {load_average()}",
    ]
    if G_AA in cmp.results:
        table.notes.append(f"'{G_AA}' is the baseline run twice: its ratio, "
                           f"{fmt_ratio(cmp.ratio(G_AA))}, shows the noise floor of this "
                           "table")
    res.tables.append(table)
    res.data["gradient"] = {"comparison": cmp.to_dict(),
                            "max_rel_delta": deltas}


# ------------------------------------------------------------------------- memory


def _memory(s: Sizes, profiles: dict[str, Any], res: CaseResult) -> None:
    u, dense = s.edge_bytes, s.dense_bytes
    table = Table(
        f"graph: compiled memory and HLO of every program, {s.label} "
        f"(u = E · {s.hidden} · 4 + N · {s.features} · 4 B = {_mb(u)} MB; N² · 4 B = "
        f"{_mb(dense)} MB)",
        ["program", "temp MB", "argument MB", "output MB", "temp / u", "temp / N²·4",
         "largest array MB", "kernels", "scatters / gathers", "N × N arrays", "check"])
    for name, p in profiles.items():
        if not p:
            table.add(name, *(["—"] * 9), "not profiled")
            continue
        temp = p["temp_bytes"]
        ok = temp <= MEMORY_FACTOR * u and p["dense"] == 0
        table.add(name, _mb(temp), _mb(p["argument_bytes"]), _mb(p["output_bytes"]),
                  f"{temp / u:.2f}", f"{temp / dense:.1e}", _mb(p["largest_bytes"]),
                  p["kernels"], f"{p['scatters']} / {p['gathers']}", p["dense"],
                  "ok" if ok else "FAILED")
        if temp > MEMORY_FACTOR * u:
            res.failures.append(f"graph: {name}'s temp memory {temp:,} B exceeds "
                                f"{MEMORY_FACTOR} u = {MEMORY_FACTOR * u:,} B (u = E · hidden "
                                "· 4 + N · F · 4): not O(edges)")
        if p["dense"]:
            res.failures.append(f"graph: {name}'s optimised HLO has {p['dense']} array "
                                f"shape(s) with two dimensions ≥ N = {s.nodes}: an N × N "
                                "array")
    table.notes += [
        ("temp / argument / output MB: compiled.memory_analysis() temp_size_in_bytes, "
         "argument_size_in_bytes, output_size_in_bytes of each jitted program (MB = 2²⁰ B)"),
        (f"check: temp ≤ {MEMORY_FACTOR} u (O(edges)) and no array in the optimised HLO with "
         "two dimensions ≥ N (never N × N); a dense Â or adjacency alone would be N² · 4 B"),
        ("largest array: the largest shape any HLO instruction names (an [E + N, hidden] "
         "message array at most); kernels: top-level ops of the entry computation that do "
         "work; scatters / gathers: scatter and gather ops anywhere, fusions included"),
    ]
    res.tables.append(table)
    res.data["profiles"] = profiles
    res.data["memory_unit_bytes"] = u


def run(ctx: Ctx, sizes: Sizes | None = None) -> CaseResult:
    """The case; ``sizes`` overrides the graph and GCN sizes (default: by the mode)."""
    fn = require_funnet(ctx)
    s = sizes or ctx.pick(QUICK, FULL)
    res = CaseResult()
    res.notes.append(f"load average (1 / 5 / 15 min) at the start: {load_average()}")
    graph = make_graph(s.nodes, s.edges, s.features, s.classes, labelled=LABELLED)
    profiles: dict[str, Any] = {}
    _train_step(ctx, fn, s, graph, res, profiles)
    _gradient(ctx, fn, s, graph, res, profiles)
    _memory(s, profiles, res)
    return res
