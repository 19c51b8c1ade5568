"""Tests for funnet.checkpoint: round trips, ``like`` matching, corruption, atomic saves."""

import doctest
import hashlib
import json
import os
import re
import struct

import chex
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import optax
import pytest

from funnet import checkpoint

PREFIX = 48  # magic (8) + header length (8) + header sha256 (32)


# ----------------------------------------------------------------------------- helpers


def _listing(directory):
    return sorted(p.name for p in directory.iterdir())


def _assert_leaf_equal(got, want):
    """Same dtype, shape and values (bfloat16 and friends compared through float32)."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.dtype == want.dtype, (got.dtype, want.dtype)
    assert got.shape == want.shape, (got.shape, want.shape)
    if want.dtype.kind not in "biufc":  # ml_dtypes
        got, want = got.astype(np.float32), want.astype(np.float32)
    np.testing.assert_array_equal(got, want)


def _assert_trees_equal(got, want):
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        _assert_leaf_equal(g, w)


def _rng_array(dtype, shape, seed=0):
    rng = np.random.default_rng(seed)
    if np.dtype(dtype) == np.bool_:
        return rng.random(shape) < 0.5
    if np.dtype(dtype).kind in "iu":
        return rng.integers(-50 if np.dtype(dtype).kind == "i" else 0, 50, shape).astype(dtype)
    return rng.normal(size=shape).astype(dtype)


def _nested_tree():
    """Lists, tuples, dicts, None, empty containers, 0-d and Python-scalar leaves."""
    return {
        "layers": [
            {"W": _rng_array(np.float32, (4, 3), 1), "b": _rng_array(np.float32, (3,), 2)},
            {"W": _rng_array(ml_dtypes.bfloat16, (3, 2), 3), "b": None},
            (),
        ],
        "stats": (_rng_array(np.float64, (), 4), np.int32(7), np.array(True)),
        "mask": _rng_array(np.bool_, (5,), 5),
        "counts": _rng_array(np.int32, (2, 2), 6),
        "python": {"lr": 0.5, "step": 12, "flag": False},
        "empty": {},
    }


# ----------------------------------------------------------------------- round trips

DTYPES = [np.float32, np.float64, np.int32, np.bool_, ml_dtypes.bfloat16, np.float16,
          np.int8, np.uint8, np.int64, np.uint32, np.complex64]
SHAPES = [(), (3,), (2, 3), (0, 4)]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_dtype_round_trip(tmp_path, dtype, shape):
    x = _rng_array(dtype, shape)
    path = checkpoint.save(tmp_path / "x.funnet", {"x": x})
    plain = checkpoint.load(path)
    assert isinstance(plain["x"], np.ndarray)
    _assert_leaf_equal(plain["x"], x)
    typed = checkpoint.load(path, like={"x": np.zeros(shape, dtype)})
    assert isinstance(typed["x"], np.ndarray)
    _assert_leaf_equal(typed["x"], x)


def test_nested_round_trip_without_like(tmp_path):
    tree = _nested_tree()
    path = checkpoint.save(tmp_path / "t.funnet", tree)
    out = checkpoint.load(path)
    # the containers come back as the same plain types, None and empty ones included
    assert isinstance(out["layers"], list) and isinstance(out["stats"], tuple)
    assert out["layers"][1]["b"] is None and out["layers"][2] == () and out["empty"] == {}
    # Python scalars come back as 0-d arrays of the numpy default dtype
    assert out["python"]["lr"].shape == () and out["python"]["lr"].dtype == np.float64
    assert out["python"]["step"].dtype == np.asarray(12).dtype
    as_arrays = jax.tree.map(np.asarray, tree)
    _assert_trees_equal(out, as_arrays)


def test_nested_round_trip_with_like(tmp_path):
    tree = _nested_tree()
    path = checkpoint.save(tmp_path / "t.funnet", tree)
    like = jax.tree.map(lambda x: np.zeros_like(x) if isinstance(x, np.ndarray)
                        else type(x)(0), tree)
    out = checkpoint.load(path, like=like)
    assert jax.tree.structure(out) == jax.tree.structure(like)
    # leaves take the kind of like's leaves: Python scalars stay Python scalars
    assert out["python"] == {"lr": 0.5, "step": 12, "flag": False}
    assert type(out["python"]["step"]) is int and type(out["python"]["flag"]) is bool
    assert isinstance(out["stats"][1], np.int32)
    _assert_trees_equal(out, tree)


def test_jax_like_gives_jax_arrays(tmp_path):
    tree = {"W": jnp.arange(6, dtype=jnp.float32).reshape(2, 3),
            "h": jnp.ones(3, jnp.bfloat16), "n": jnp.int32(4)}
    path = checkpoint.save(tmp_path / "j.funnet", tree)
    for like in (jax.tree.map(jnp.zeros_like, tree), jax.eval_shape(lambda: tree)):
        out = checkpoint.load(path, like=like)
        assert all(isinstance(leaf, jax.Array) for leaf in jax.tree.leaves(out))
        chex.assert_trees_all_equal(out, tree)


def test_optax_adam_state_round_trip(tmp_path):
    params = {"W": jnp.linspace(-1.0, 1.0, 6, dtype=jnp.float32).reshape(3, 2),
              "b": jnp.zeros(2, jnp.float32)}
    opt = optax.adam(1e-2)
    state = opt.init(params)
    grads = jax.tree.map(lambda p: 0.1 * p + 1.0, params)
    for _ in range(2):
        updates, state = opt.update(grads, state, params)
        params = optax.apply_updates(params, updates)
    saved = {"params": params, "opt_state": state, "step": 2}
    path = checkpoint.save(tmp_path / "adam.funnet", saved, metadata={"optimizer": "adam"})

    fresh_params = jax.tree.map(jnp.zeros_like, params)
    like = {"params": fresh_params, "opt_state": opt.init(fresh_params), "step": 0}
    out = checkpoint.load(path, like=like)
    assert jax.tree.structure(out) == jax.tree.structure(saved)
    assert type(out["opt_state"][0]).__name__ == "ScaleByAdamState"
    chex.assert_trees_all_equal(out, saved)
    # training continues identically from the restored state
    want, _ = opt.update(grads, state, params)
    got, _ = opt.update(grads, out["opt_state"], out["params"])
    chex.assert_trees_all_equal(got, want)
    # without like the NamedTuple comes back as a dict keyed by field name
    plain = checkpoint.load(path)
    assert set(plain["opt_state"][0]) == {"count", "mu", "nu"}
    assert plain["opt_state"][1] == {}  # EmptyState has no fields
    _assert_leaf_equal(plain["opt_state"][0]["nu"]["W"], state[0].nu["W"])
    assert checkpoint.load_metadata(path) == {"optimizer": "adam"}


def test_typed_prng_keys_round_trip(tmp_path):
    tree = {"key": jax.random.key(42), "keys": jax.random.split(jax.random.key(1), 3),
            "rbg": jax.random.key(5, impl="rbg"), "raw": jax.random.PRNGKey(7)}
    path = checkpoint.save(tmp_path / "k.funnet", tree)
    like = {"key": jax.random.key(0), "keys": jax.random.split(jax.random.key(0), 3),
            "rbg": jax.random.key(0, impl="rbg"), "raw": jax.random.PRNGKey(0)}
    for out in (checkpoint.load(path, like=like), checkpoint.load(path)):
        for name in ("key", "keys", "rbg"):
            assert out[name].dtype == tree[name].dtype and out[name].shape == tree[name].shape
            np.testing.assert_array_equal(jax.random.key_data(out[name]),
                                          jax.random.key_data(tree[name]))
        np.testing.assert_array_equal(jax.random.normal(out["key"], (4,)),
                                      jax.random.normal(tree["key"], (4,)))
        assert out["raw"].dtype == np.uint32  # raw keys are plain uint32 arrays
        np.testing.assert_array_equal(out["raw"], tree["raw"])


def test_registered_dataclass_round_trip(tmp_path):
    @jax.tree_util.register_dataclass
    @__import__("dataclasses").dataclass
    class Affine:
        W: jax.Array
        b: jax.Array

    tree = [Affine(jnp.ones((2, 2)), jnp.zeros(2))]
    path = checkpoint.save(tmp_path / "dc.funnet", tree)
    assert set(checkpoint.load(path)[0]) == {"W", "b"}
    out = checkpoint.load(path, like=[Affine(jnp.zeros((2, 2)), jnp.ones(2))])
    assert isinstance(out[0], Affine)
    chex.assert_trees_all_equal(out, tree)


def test_file_layout_and_determinism(tmp_path):
    tree = [{"W": np.arange(12, dtype=np.float32).reshape(4, 3)}, np.int64(3)]
    a = checkpoint.save(tmp_path / "a.funnet", tree, metadata={"epoch": 1})
    b = checkpoint.save(tmp_path / "b.funnet", tree, metadata={"epoch": 1})
    raw = a.read_bytes()
    assert raw == b.read_bytes()
    magic, header_len, header_sha = struct.unpack("<8sQ32s", raw[:PREFIX])
    assert magic == checkpoint.MAGIC == b"FUNNET\x00\x01"
    header_bytes = raw[PREFIX:PREFIX + header_len]
    assert hashlib.sha256(header_bytes).digest() == header_sha
    header = json.loads(header_bytes)
    assert header["format_version"] == checkpoint.FORMAT_VERSION == 1
    assert header["metadata"] == {"epoch": 1}
    payload = raw[PREFIX + header_len:]
    assert header["payload_nbytes"] == len(payload) == 48 + 8
    assert header["payload_sha256"] == hashlib.sha256(payload).hexdigest()
    assert header["leaves"] == [
        {"path": "[0]['W']", "dtype": "float32", "shape": [4, 3], "offset": 0, "nbytes": 48},
        {"path": "[1]", "dtype": "int64", "shape": [], "offset": 48, "nbytes": 8},
    ]
    assert payload[:48] == tree[0]["W"].astype("<f4").tobytes()


# ------------------------------------------------------------------------- mismatches

MISMATCHES = [
    ("shape", lambda t: t[1].update(W=np.zeros((4, 2), np.float32)),
     r"leaf \[1\]\['W'\]: shape \(4, 3\) in checkpoint, \(4, 2\) expected"),
    ("dtype", lambda t: t[1].update(W=np.zeros((4, 3), np.float64)),
     r"leaf \[1\]\['W'\]: dtype float32 in checkpoint, float64 expected"),
    ("missing leaf", lambda t: t[1].pop("b"),
     r"structure mismatch .* only in the checkpoint: \[1\]\['b'\]; .* only in like: none"),
    ("extra leaf", lambda t: t[0].update(c=np.zeros(1)),
     r"only in the checkpoint: none; leaves only in like: \[0\]\['c'\]"),
    ("key expected", lambda t: t[0].update(k=jax.random.key(0)),
     (r"leaf \[0\]\['k'\]: shape \(2,\) in checkpoint, \(\) expected; "
      r"dtype uint32 in checkpoint, key<fry> expected")),
]


@pytest.mark.parametrize("name,modify,message", MISMATCHES, ids=[m[0] for m in MISMATCHES])
def test_like_mismatch_names_the_leaf(tmp_path, name, modify, message):
    tree = [{"k": np.zeros(2, np.uint32)},
            {"W": np.ones((4, 3), np.float32), "b": np.ones(3, np.float32)}]
    path = checkpoint.save(tmp_path / "m.funnet", tree)
    like = jax.tree.map(np.zeros_like, tree)
    modify(like)
    with pytest.raises(ValueError, match=message) as info:
        checkpoint.load(path, like=like)
    assert str(path) in str(info.value)


def test_unsupported_like_leaf_is_a_type_error(tmp_path):
    path = checkpoint.save(tmp_path / "u.funnet", {"x": np.ones(2)})
    with pytest.raises(TypeError, match=r"like leaf \['x'\]: unsupported type str"):
        checkpoint.load(path, like={"x": "not an array"})


# ------------------------------------------------------------------------- corruption


def _flip(i):
    def mutate(raw):
        j = i % len(raw)
        return raw[:j] + bytes([raw[j] ^ 0xFF]) + raw[j + 1:]
    return mutate


def _set_version(raw):
    (header_len,) = struct.unpack("<Q", raw[8:16])
    header = json.loads(raw[PREFIX:PREFIX + header_len])
    header["format_version"] = 2
    new = json.dumps(header).encode()
    prefix = struct.pack("<8sQ32s", raw[:8], len(new), hashlib.sha256(new).digest())
    return prefix + new + raw[PREFIX + header_len:]


CORRUPTIONS = [  # (name, mutate bytes, message, does load_metadata notice it?)
    ("payload byte flipped", _flip(-1), r"checksum mismatch", False),
    ("header byte flipped", _flip(PREFIX + 5), r"header checksum mismatch", True),
    ("payload truncated", lambda raw: raw[:-10],
     lambda n: rf"truncated: expected {n} bytes, found {n - 10}", True),
    ("inside prefix", lambda raw: raw[:30], r"truncated: expected at least 48 bytes, found 30",
     True),
    ("inside header", lambda raw: raw[:PREFIX + 3], r"truncated: expected at least \d+ bytes",
     True),
    ("empty file", lambda raw: b"", r"truncated: expected at least 48 bytes, found 0", True),
    ("bad magic", lambda raw: b"PK\x03\x04" + raw[4:], r"not a funnet checkpoint \(bad magic\)",
     True),
    ("trailing data", lambda raw: raw + b"xyz",
     lambda n: rf"trailing data: expected {n} bytes, found {n + 3}", True),
    ("future version", _set_version, r"unsupported format version 2", True),
]


@pytest.mark.parametrize("name,mutate,message,in_header", CORRUPTIONS,
                         ids=[c[0] for c in CORRUPTIONS])
def test_corrupt_file_is_rejected(tmp_path, name, mutate, message, in_header):
    path = checkpoint.save(tmp_path / "c.funnet", _nested_tree(), metadata={"a": 1})
    raw = path.read_bytes()
    if callable(message):
        message = message(len(raw))
    path.write_bytes(mutate(raw))
    with pytest.raises(ValueError, match=message) as info:
        checkpoint.load(path)
    assert str(path) in str(info.value)
    if in_header:
        with pytest.raises(ValueError, match=message):
            checkpoint.load_metadata(path)
    else:  # load_metadata reads only the (checksummed) header
        assert checkpoint.load_metadata(path) == {"a": 1}


def test_missing_file_names_the_path(tmp_path):
    for fn in (checkpoint.load, checkpoint.load_metadata):
        with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "nope.funnet"))):
            fn(tmp_path / "nope.funnet")


# ------------------------------------------------------------------------ safe saving


def _fail_on_second_write(monkeypatch):
    real_fdopen = os.fdopen

    def fdopen(fd, *args, **kwargs):
        f = real_fdopen(fd, *args, **kwargs)
        real_write, calls = f.write, []

        def write(chunk):
            calls.append(1)
            if len(calls) == 2:
                raise OSError(28, "No space left on device")
            return real_write(chunk)

        f.write = write
        return f

    monkeypatch.setattr(os, "fdopen", fdopen)


def _raise_in(name, exc):
    def patch(monkeypatch):
        def boom(*args, **kwargs):
            raise exc

        monkeypatch.setattr(os, name, boom)
    return patch


CRASHES = [
    ("write", _fail_on_second_write, OSError),
    ("fsync", _raise_in("fsync", OSError(5, "I/O error")), OSError),
    ("replace", _raise_in("replace", OSError(13, "Permission denied")), OSError),
    ("interrupt", _raise_in("replace", KeyboardInterrupt()), KeyboardInterrupt),
]


@pytest.mark.parametrize("name,patch,exc", CRASHES, ids=[c[0] for c in CRASHES])
def test_crash_during_save_keeps_previous_checkpoint(tmp_path, monkeypatch, name, patch, exc):
    old = {"w": np.arange(4.0)}
    path = checkpoint.save(tmp_path / "ckpt.funnet", old, metadata={"v": 1})
    before = path.read_bytes()
    with monkeypatch.context() as m:
        patch(m)
        with pytest.raises(exc):
            checkpoint.save(path, {"w": np.zeros(1000)}, metadata={"v": 2})
        with pytest.raises(exc):
            checkpoint.save(tmp_path / "new.funnet", old)
    assert path.read_bytes() == before
    assert _listing(tmp_path) == ["ckpt.funnet"]  # no temp file, no half-written new file
    _assert_trees_equal(checkpoint.load(path), old)


BAD_INPUTS = [  # (name, tree, metadata, message)
    ("numpy scalar", {"w": 1.0}, {"loss": np.float32(1.0)},
     r"metadata\['loss'\]: a value of type float32 is not JSON-serialisable"),
    ("function", {"w": 1.0}, {"cfg": {"act": len}}, r"metadata\['cfg'\]\['act'\]"),
    ("int key", {"w": 1.0}, {1: "x"}, r"metadata: key 1 is not a str"),
    ("nested list", {"w": 1.0}, {"xs": [1, object()]}, r"metadata\['xs'\]\[1\]"),
    ("not a dict", {"w": 1.0}, ["epoch", 1], r"metadata must be a dict or None, got list"),
    ("string leaf", {"w": "relu"}, None, r"leaf \['w'\]: cannot store a leaf of type str"),
    ("object array", {"w": np.array([None])}, None, r"leaf \['w'\]: dtype object"),
    ("tuple dict key", {(1, 2): 1.0}, None, r"dict key \(1, 2\) of type tuple"),
]


@pytest.mark.parametrize("name,tree,metadata,message", BAD_INPUTS,
                         ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_raises_before_writing(tmp_path, monkeypatch, name, tree, metadata, message):
    path = checkpoint.save(tmp_path / "ckpt.funnet", {"w": 0.0})
    before, opened = path.read_bytes(), []
    real_open = os.open
    monkeypatch.setattr(os, "open", lambda p, *a, **k: opened.append(p) or real_open(p, *a, **k))
    with pytest.raises(TypeError, match=message):
        checkpoint.save(path, tree, metadata=metadata)
    assert not [p for p in opened if str(tmp_path) in str(p)]  # nothing was even created
    assert path.read_bytes() == before and _listing(tmp_path) == ["ckpt.funnet"]


# ----------------------------------------------------------------- training directories


@pytest.mark.parametrize("keep", [1, 2, 3])
def test_save_step_keeps_the_newest(tmp_path, keep):
    directory = tmp_path / "run" / "ckpts"  # created on demand
    for step in range(6):
        written = checkpoint.save_step(directory, step * 10, {"w": np.full(2, step)},
                                       metadata={"step": step * 10}, keep=keep)
        assert written == directory / f"ckpt_{step * 10:08d}.funnet"
    want = [f"ckpt_{s:08d}.funnet" for s in range(50 - 10 * (keep - 1), 51, 10)]
    assert _listing(directory) == want
    assert checkpoint.latest_step(directory) == 50
    tree, meta = checkpoint.load_step(directory)
    _assert_leaf_equal(tree["w"], np.full(2, 5))
    assert meta == {"step": 50}
    tree, meta = checkpoint.load_step(directory, 50 - 10 * (keep - 1), like={"w": np.zeros(2, int)})
    assert meta == {"step": 50 - 10 * (keep - 1)}
    with pytest.raises(FileNotFoundError, match="ckpt_00000000.funnet"):
        checkpoint.load_step(directory, 0)


def test_save_step_never_deletes_what_it_just_wrote(tmp_path):
    for step in (5, 6, 1):
        checkpoint.save_step(tmp_path, step, {"w": 0.0}, keep=2)
    assert _listing(tmp_path) == ["ckpt_00000001.funnet", "ckpt_00000005.funnet",
                                  "ckpt_00000006.funnet"]
    checkpoint.save_step(tmp_path, 7, {"w": 0.0}, keep=2)
    assert _listing(tmp_path) == ["ckpt_00000006.funnet", "ckpt_00000007.funnet"]


def test_latest_step_ignores_temp_and_foreign_files(tmp_path):
    assert checkpoint.latest_step(tmp_path / "missing") is None
    assert checkpoint.latest_step(tmp_path) is None
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path))):
        checkpoint.load_step(tmp_path)
    checkpoint.save_step(tmp_path, 3, {"w": 1.0}, keep=None)
    checkpoint.save_step(tmp_path, 123_456_789, {"w": 2.0}, keep=None)  # > 8 digits
    for junk in (".ckpt_99999999.funnet.0123abcd.tmp", "ckpt_99999998.funnet.tmp",
                 "ckpt_99999997.npz", "ckpt_099999996.funnet", "ckpt_x.funnet"):
        (tmp_path / junk).write_bytes(b"junk")
    (tmp_path / "ckpt_99999995.funnet").mkdir()
    assert checkpoint.latest_step(tmp_path) == 123_456_789
    assert checkpoint.load_step(tmp_path)[0]["w"] == 2.0


@pytest.mark.parametrize("step,keep,error", [(-1, 3, ValueError), (1.5, 3, TypeError),
                                             (True, 3, TypeError), (1, 0, ValueError)])
def test_save_step_rejects_bad_arguments(tmp_path, step, keep, error):
    with pytest.raises(error):
        checkpoint.save_step(tmp_path, step, {"w": 1.0}, keep=keep)
    assert _listing(tmp_path) == []


def test_docstring_examples():
    result = doctest.testmod(checkpoint, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
