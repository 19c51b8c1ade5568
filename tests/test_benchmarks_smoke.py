"""The benchmark harness's logic (interleaving, rotation, ratios), not its timings."""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `benchmarks/` is not an installed package
    sys.path.insert(0, str(ROOT))

from benchmarks import _timing as T
from benchmarks._common import Table
from benchmarks.run import parse_args


class FakeClock:
    """A clock that only moves when a competitor says how long its call took."""

    def __init__(self):
        self.now = 0.0
        self.calls: list[str] = []

    def __call__(self) -> float:
        return self.now

    def competitor(self, name: str, durations):
        """Each call advances the clock by the next of ``durations`` (cycled at the end)."""
        seq = list(durations)
        count = [0]

        def call():
            self.calls.append(name)
            self.now += seq[min(count[0], len(seq) - 1)]
            count[0] += 1
            return name

        return call


def run(clock: FakeClock, comps, **kw):
    kw.setdefault("warmup", 0)
    return T.interleaved(comps, timer=clock, sync=lambda out: out, collect=False, **kw)


@pytest.mark.parametrize(
    ("names", "r", "want"),
    [
        (["a", "b", "c"], 0, ["a", "b", "c"]),
        (["a", "b", "c"], 1, ["b", "c", "a"]),
        (["a", "b", "c"], 2, ["c", "a", "b"]),
        (["a", "b", "c"], 3, ["a", "b", "c"]),
        (["a"], 5, ["a"]),
        ([], 2, []),
    ],
)
def test_rotation(names, r, want):
    assert T.rotation(names, r) == want


def test_rounds_rotate_call_order():
    clock = FakeClock()
    comps = {n: clock.competitor(n, [1.0]) for n in "abc"}
    cmp = run(clock, comps, baseline="a", rounds=4)
    assert cmp.orders == [list("abc"), list("bca"), list("cab"), list("abc")]
    assert clock.calls == list("abc" "bca" "cab" "abc")


def test_ratio_is_median_of_per_round_ratios_not_ratio_of_medians():
    clock = FakeClock()
    # the machine slows down 10x in round 1: it hits both, and b/a stays 2 in every round
    a, b = [1.0, 10.0, 1.0], [2.0, 20.0, 2.0]
    cmp = run(clock, {"a": clock.competitor("a", a), "b": clock.competitor("b", b)},
              baseline="a", rounds=3)
    assert cmp.results["a"].times == a and cmp.results["b"].times == b
    assert cmp.ratios("b") == [2.0, 2.0, 2.0]
    assert cmp.ratio("b") == 2.0
    # per-round ratios 1, 1, 10 -> median 1, while median(x) / median(a) = 2 / 1 = 2
    clock = FakeClock()
    a, x = [1.0, 2.0, 1.0], [1.0, 2.0, 10.0]
    cmp = run(clock, {"a": clock.competitor("a", a), "x": clock.competitor("x", x)},
              baseline="a", rounds=3)
    assert cmp.ratio("x") == 1.0
    assert cmp.results["x"].median_s / cmp.results["a"].median_s == 2.0
    assert T.median_ratio([2.0, 3.0, 10.0], [1.0, 1.0, 1.0]) == 3.0
    assert T.median_ratio([1.0, None], [None, 1.0]) is None


def test_ratio_to_other_competitor_and_fastest():
    clock = FakeClock()
    comps = {"base": clock.competitor("base", [4.0]), "x": clock.competitor("x", [2.0]),
             "y": clock.competitor("y", [1.0])}
    cmp = run(clock, comps, baseline="base", rounds=3)
    assert cmp.ratio("x") == 0.5
    assert cmp.ratio("x", to="y") == 2.0
    assert cmp.fastest(["base", "x", "y"]) == "y"
    assert cmp.fastest(["base", "x"]) == "x"
    assert cmp.fastest(["nope"]) is None


def test_first_call_reported_apart_from_steady_state():
    clock = FakeClock()
    comps = {"a": clock.competitor("a", [10.0, 1.0]), "b": clock.competitor("b", [7.0, 2.0])}
    cmp = run(clock, comps, baseline="a", rounds=3, warmup=1)
    assert cmp.results["a"].first_s == 10.0
    assert cmp.results["b"].first_s == 7.0
    assert cmp.results["a"].times == [1.0, 1.0, 1.0]
    assert cmp.results["b"].median_s == 2.0
    assert clock.calls[:2] == ["a", "b"]  # warm-up in name order, before any round


def test_inner_calls_are_interleaved_within_a_round():
    clock = FakeClock()
    comps = {"a": clock.competitor("a", [1.0]), "b": clock.competitor("b", [3.0])}
    cmp = run(clock, comps, baseline="a", rounds=2, fixed_inner={"a": 2, "b": 2})
    # round 0: sub-rounds [a, b], [b, a]; round 1 starts with b: [b, a], [a, b]
    assert clock.calls == list("abba" "baab")
    assert cmp.results["a"].times == [1.0, 1.0]  # seconds per call, not per round
    assert cmp.results["b"].times == [3.0, 3.0]
    assert cmp.ratio("b") == 3.0


@pytest.mark.parametrize(("inner", "slots"), [(1, 1), (1, 5), (2, 6), (3, 7), (7, 7), (4, 9)])
def test_spread_picks_inner_of_slots_evenly(inner, slots):
    got = T.spread(inner, slots)
    assert len(got) == inner
    assert got == sorted(set(got)) and all(0 <= k < slots for k in got)
    if inner > 1:
        gaps = [b - a for a, b in itertools.pairwise(got)]
        assert max(gaps) - min(gaps) <= 1


def test_min_time_calibrates_inner_per_competitor():
    clock = FakeClock()
    comps = {"fast": clock.competitor("fast", [0.01]), "slow": clock.competitor("slow", [0.5])}
    cmp = run(clock, comps, baseline="fast", rounds=2, min_time=0.1)
    assert cmp.results["fast"].inner == 10
    assert cmp.results["slow"].inner == 1
    assert cmp.results["fast"].median_s == pytest.approx(0.01)
    assert cmp.ratio("slow") == pytest.approx(50.0)


def test_timed_output_overrides_wall_clock():
    clock = FakeClock()

    def self_timed():
        clock.now += 100.0  # e.g. a fit call that also compiles
        return T.Timed(0.25, {"mode": "history"})

    comps = {"a": clock.competitor("a", [1.0]), "t": self_timed}
    cmp = run(clock, comps, baseline="a", rounds=3, fixed_inner={"t": 1})
    assert cmp.results["t"].times == [0.25, 0.25, 0.25]
    assert cmp.results["t"].extras == [{"mode": "history"}] * 3
    assert cmp.ratio("t") == 0.25


def test_failing_competitor_is_recorded_and_the_others_go_on():
    clock = FakeClock()
    count = [0]

    def flaky():
        count[0] += 1
        if count[0] == 2:
            raise RuntimeError("boom\nsecond line")
        clock.now += 2.0
        return 0

    comps = {"a": clock.competitor("a", [1.0]), "f": flaky}
    cmp = run(clock, comps, baseline="a", rounds=4)
    f = cmp.results["f"]
    assert f.error == "RuntimeError: boom"
    assert f.times == [2.0, None, None, None]
    assert not f.ok or f.valid_times == [2.0]
    assert cmp.results["a"].times == [1.0] * 4
    assert cmp.ratio("f") == 2.0  # only the paired round counts
    assert cmp.orders[2] == ["a"]  # dropped from later rounds


def test_failing_at_warmup_never_runs():
    clock = FakeClock()

    def broken():
        raise AttributeError("module 'funnet' has no attribute 'fit'")

    cmp = run(clock, {"a": clock.competitor("a", [1.0]), "x": broken}, baseline="a",
              rounds=2, warmup=1)
    assert cmp.results["x"].error.startswith("AttributeError")
    assert cmp.results["x"].times == [None, None]
    assert cmp.ratio("x") is None and cmp.results["x"].median_s is None
    assert cmp.fastest(["a", "x"]) == "a"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"baseline": "zz", "rounds": 1}, "baseline"),
        ({"baseline": "a", "rounds": 0}, "rounds"),
        ({"baseline": "a", "rounds": 1, "warmup": -1}, "warmup"),
        ({"baseline": "a", "rounds": 1, "fixed_inner": {"q": 1}}, "fixed_inner"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        T.interleaved({"a": lambda: 0}, **kwargs)


def test_real_clock_on_a_trivial_jax_function():
    x = jnp.arange(1000.0)
    cmp = T.interleaved({"sum": lambda: x.sum(), "mul": lambda: (x * 2).sum()},
                        baseline="sum", rounds=3, min_time=0.001)
    for r in cmp.results.values():
        assert r.error is None and r.first_s is not None and r.first_s > 0
        assert len(r.times) == 3 and all(t is not None and t > 0 for t in r.times)
        assert r.inner >= 1
    assert cmp.ratio("sum") == 1.0
    assert cmp.ratio("mul") > 0
    d = cmp.to_dict()
    assert set(d["results"]) == {"sum", "mul"} and d["baseline"] == "sum"
    seconds, out = T.time_call(lambda: x + 1)
    assert seconds > 0 and out.shape == (1000,)


def test_table_and_cli():
    t = Table("t", ["a", "b"])
    t.add("x|y", 1)
    assert "| x\\|y | 1 |" in t.to_markdown()
    assert t.to_text().splitlines()[0] == "t"
    with pytest.raises(ValueError, match="expected 2"):
        t.add("only one")
    assert parse_args(["--only", "wide,digits", "--quick"]).cases == ["digits", "wide"]
    with pytest.raises(SystemExit):
        parse_args(["--only", "nope"])


def test_timing_doctests():
    import doctest

    result = doctest.testmod(T)
    assert result.attempted >= 5 and result.failed == 0


def test_recurrent_case_quick(tmp_path):
    """The ``recurrent`` case end to end in ``--quick`` mode (a tiny LSTM): every library
    builds from the shared init, their first-step losses agree (the weight layouts map to
    the same function), everything trains, the hand gradient matches ``jax.grad``, and the
    memory and HLO profile columns are filled in."""
    from benchmarks._common import Ctx, load_funnet
    from benchmarks.cases import recurrent

    fn, err = load_funnet()
    assert fn is not None, err
    # as `python -m benchmarks.run` runs it: float32 defaults, numpy broadcasting (the suite's
    # conftest turns on x64 and rank-promotion errors, which the peers are not written for)
    with jax.enable_x64(False), jax.numpy_rank_promotion("allow"):
        res = recurrent.run(Ctx(quick=True, out_dir=tmp_path, fn=fn, fn_error=None))
    assert res.failures == []
    train, grad = res.tables
    assert [row[0] for row in train.rows] == [*recurrent.PEERS, recurrent.REVERSE,
                                              recurrent.HAND]
    agree = res.data["train_step"]["agreement"]
    assert set(agree["first_loss"]) == {row[0] for row in train.rows}
    assert max(agree["max_rel_epoch"].values()) <= recurrent.EPOCH_LOSS_RTOL
    assert [row[0] for row in grad.rows] == [recurrent.G_JAX, recurrent.G_HAND]
    profiles = res.data["gradient"]["profiles"]
    for name in (recurrent.G_JAX, recurrent.G_HAND):
        assert profiles[name]["temp_bytes"] > 0 and profiles[name]["loops"] >= 2
        assert res.data["gradient"]["residual_bytes"][name] > 0
    assert res.data["gradient"]["max_rel_delta"][recurrent.G_HAND] <= recurrent.GRAD_RTOL


def test_recurrent_agreement_flags_a_wrong_layout():
    """A library whose outputs or losses differ (here: haiku's forget bias not corrected,
    which shifts every forget gate by 1) is reported as a failure; equal ones are not."""
    from benchmarks._common import CaseResult
    from benchmarks._rnn_peers import lstm_init, lstm_layouts
    from benchmarks.cases.recurrent import agreement

    init = lstm_init(3, 4)
    layouts = lstm_layouts(init)
    b = init["b"]
    hk_b = layouts["haiku"]["b"]  # blocks i, g, f, o; f is ours minus 1
    assert np.allclose(hk_b[8:12], b[4:8] - 1.0) and np.allclose(hk_b[4:8], b[8:12])
    assert np.array_equal(layouts["flax"]["hf"]["bias"], b[4:8])
    assert np.array_equal(layouts["equinox"]["weight_hh"], init["W_h"].T)
    ok = {"a": np.array([[1.0], [2.0]]), "b": np.array([[1.0], [2.0 + 1e-7]])}
    losses = {"a": np.array([0.5, 0.4]), "b": np.array([0.5, 0.4 + 1e-6])}
    res = CaseResult()
    agreement(ok, losses, "a", res)
    assert res.failures == []
    bad = {**ok, "c": np.array([[1.0], [2.1]])}
    res = CaseResult()
    out = agreement(bad, {**losses, "c": np.array([0.51, 0.4])}, "a", res)
    assert out["max_rel_output"]["c"] == pytest.approx(0.05)
    assert len(res.failures) == 3 and all(" c" in f for f in res.failures)  # out, 1st, epoch


def test_loop_profile_counts_slow_fusions():
    """The HLO profile finds a transcendental fused with a dynamic-slice in a loop body."""
    from jax import lax

    from benchmarks.cases.recurrent import loop_profile

    def scan_exp(xs):  # exp of each xs[t] inside the body: slice and exp fuse
        return lax.scan(lambda c, x_t: (c + jnp.exp(x_t), None), jnp.zeros(8), xs)[0]

    text = jax.jit(scan_exp).lower(jnp.ones((5, 8))).compile().as_text()
    got = loop_profile(text)
    assert got["loops"] == 1 and got["loop_kernels"] >= 1 and got["slow_fusions"] == 1
    plain = jax.jit(lambda x: jnp.exp(x)).lower(jnp.ones(8)).compile().as_text()
    assert loop_profile(plain) == {"loops": 0, "loop_kernels": 0, "slow_fusions": 0}


def test_attention_case_quick(tmp_path):
    """The ``attention`` case end to end in ``--quick`` mode (a tiny MultiHeadAttention):
    flax, haiku and funnet build from the shared init, their outputs and first-step losses
    agree (the weight layouts map to the same function), everything trains, the hand
    gradient matches ``jax.grad``, and the memory and HLO profile columns are filled in."""
    from benchmarks._common import Ctx, load_funnet
    from benchmarks.cases import attention

    fn, err = load_funnet()
    assert fn is not None, err
    with jax.enable_x64(False), jax.numpy_rank_promotion("allow"):  # as benchmarks.run
        res = attention.run(Ctx(quick=True, out_dir=tmp_path, fn=fn, fn_error=None))
    assert res.failures == []
    train, grad = res.tables
    assert [row[0] for row in train.rows] == [*attention.PEERS, attention.REVERSE,
                                              attention.HAND]
    agree = res.data["train_step"]["agreement"]
    assert set(agree["max_rel_output"]) == set(agree["first_loss"]) == {r[0] for r in train.rows}
    assert max(agree["max_rel_output"].values()) <= attention.OUT_RTOL
    assert [row[0] for row in grad.rows] == [attention.G_JAX, attention.G_HAND]
    profiles = res.data["gradient"]["profiles"]
    for name in (attention.G_JAX, attention.G_HAND):
        assert profiles[name]["temp_bytes"] > 0 and profiles[name]["dots"] > 0
        assert profiles[name]["exp_fusions"] >= 1 and profiles[name]["f64"] == 0
        assert profiles[name]["score_kernels"] >= 1
        assert res.data["gradient"]["residual_bytes"][name] > 0
    assert res.data["gradient"]["max_rel_delta"][attention.G_HAND] <= attention.GRAD_RTOL


def test_attention_layouts_map_the_heads():
    """The shared init's columns land on flax's ``[D, N, dh]`` head axes in order; a wrong
    mapping (heads transposed) is caught by the output check."""
    from benchmarks._attn_peers import attention_init, attention_layouts
    from benchmarks._common import CaseResult
    from benchmarks.cases.attention import agreement

    init = attention_init(4, 2, 6)
    flax = attention_layouts(init, 2)["flax"]
    assert np.array_equal(flax["query"]["kernel"][:, 1, :], init["W_q"][:, 3:])
    assert np.array_equal(flax["out"]["kernel"][1], init["W_o"][3:])
    assert np.array_equal(flax["key"]["bias"][0], init["b_k"][:3])
    ok = {"a": np.array([[1.0, 2.0]]), "b": np.array([[1.0, 2.0 + 1e-6]])}
    res = CaseResult()
    agreement(ok, {}, "a", res)
    assert res.failures == []
    agreement({**ok, "c": np.array([[1.0, 2.2]])}, {}, "a", res)
    assert len(res.failures) == 1 and " c" in res.failures[0]


def test_attention_profile_counts_layout_copies_and_exp():
    """The attention HLO profile: a transposed reshape is one layout copy (XLA's transpose
    and copy pair counted once), exp inside a fusion is one exp fusion, a 64×32 result one
    T×T-sized kernel at ``scores = 2048``; exp then a matrix product moves nothing."""
    from benchmarks.cases.attention import attention_profile

    def compiled(f, *shape):
        return jax.jit(f).lower(jnp.ones(shape, jnp.float32)).compile().as_text()

    moved = attention_profile(compiled(lambda x: jnp.exp(jnp.swapaxes(x, 0, 1)).reshape(-1),
                                       64, 32), big=1000, scores=2048)
    assert moved["layout_copies"] == 1 and moved["exp_fusions"] == 1 and moved["f64"] == 0
    assert moved["score_kernels"] == 1 and moved["dots"] == 0
    plain = attention_profile(compiled(lambda x: jnp.exp(x) @ x, 64, 64), big=1000, scores=10**6)
    assert plain["layout_copies"] == 0 and plain["dots"] == 1 and plain["score_kernels"] == 0
def test_graph_case_quick(tmp_path):
    """The ``graph`` case end to end in ``--quick`` mode (a GCN on 200 nodes, 1,000 edges):
    every competitor trains from the same init to the same losses, the hand gradient
    matches ``jax.grad``, and every compiled program's memory is within the O(edges) bound
    with no N × N array. Without jraph installed its row says unavailable (not a failure)."""
    from benchmarks._common import Ctx, load_funnet
    from benchmarks.cases import graph

    try:
        import jraph  # noqa: F401
        has_jraph = True
    except ImportError:
        has_jraph = False

    fn, err = load_funnet()
    assert fn is not None, err
    with jax.enable_x64(False), jax.numpy_rank_promotion("allow"):
        res = graph.run(Ctx(quick=True, out_dir=tmp_path, fn=fn, fn_error=None))
    assert res.failures == []
    train, grad, memory = res.tables
    ran = [graph.BASE, *([graph.JRAPH] if has_jraph else []), graph.REVERSE, graph.HAND]
    assert [row[0] for row in train.rows] == ran + ([] if has_jraph else [graph.JRAPH])
    if not has_jraph:
        assert train.rows[-1][-1].startswith("unavailable (")
    assert set(res.data["train_step"]["first_loss"]) == set(ran)
    assert max(res.data["train_step"]["max_rel_loss"].values()) <= graph.STEP_LOSS_RTOL
    assert [row[0] for row in grad.rows] == [graph.G_JAX, graph.G_HAND]
    assert res.data["gradient"]["max_rel_delta"][graph.G_HAND] <= graph.GRAD_RTOL
    assert [row[0] for row in memory.rows] == ran + [graph.G_JAX, graph.G_HAND]
    assert all(row[-1] == "ok" for row in memory.rows)
    for p in res.data["profiles"].values():
        assert 0 < p["temp_bytes"] <= graph.MEMORY_FACTOR * res.data["memory_unit_bytes"]
        assert p["dense"] == 0 and p["scatters"] >= 4 and p["gathers"] >= 4


def test_graph_profile_finds_a_dense_matrix():
    """The memory check's HLO scan flags an N × N array (a dense adjacency) and counts the
    segment sums and gathers of an edge-list program."""
    from benchmarks.cases.graph import graph_profile

    n = 50
    s = jnp.arange(n, dtype=jnp.int32)
    r = (s + 1) % n

    def edges(x, s, r):  # Â-free: one gather and one segment sum along the edges
        return jax.ops.segment_sum(x[s], r, num_segments=n)

    def dense(x, s, r):  # the same through a dense adjacency
        return jnp.zeros((n, n), jnp.float32).at[r, s].add(1.0) @ x

    x = jnp.ones((n, 4), jnp.float32)
    got = graph_profile(jax.jit(edges).lower(x, s, r).compile().as_text(), n)
    assert got["dense"] == 0 and got["scatters"] == 1 and got["gathers"] == 1
    assert got["largest_bytes"] == n * 4 * 4
    bad = graph_profile(jax.jit(dense).lower(x, s, r).compile().as_text(), n)
    assert bad["dense"] >= 1 and bad["largest_bytes"] >= n * n * 4
