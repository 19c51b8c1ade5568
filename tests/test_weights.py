"""Tests for funnet.weights: safetensors params files, their keys, checks and error paths.

Every error test asserts that the message names the file (and the leaf or layer at fault),
and that no temporary file is left beside the target.
"""

from __future__ import annotations

import collections
import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
import safetensors.numpy

import funnet
from funnet import weights
from funnet.weights import WeightsError, load_metadata, load_params, save_params

KEY = jax.random.PRNGKey(0)
REPO = Path(__file__).resolve().parent.parent


def mlp(activation=funnet.Tanh):
    return funnet.serial(funnet.Dense(4), activation, funnet.Dense(2))


def init(model, input_shape=(-1, 3)):
    _, params, state = model.init_with_state(KEY, input_shape)
    return params, state


def temporaries(directory):
    return sorted(p.name for p in Path(directory).glob(".*funnet-tmp*"))


def assert_equal_trees(got, want):
    """Same containers (types included), same leaf types, dtypes, shapes and bits."""
    assert type(got) is type(want), (type(got), type(want))
    if isinstance(want, dict):
        assert list(got) == list(want)
        for k in want:
            assert_equal_trees(got[k], want[k])
    elif isinstance(want, (tuple, list)):
        assert len(got) == len(want)
        for g, w in zip(got, want):
            assert_equal_trees(g, w)
    elif want is not None and not isinstance(want, (bool, int, float)):
        g, w = np.asarray(got), np.asarray(want)
        assert (g.dtype, g.shape) == (w.dtype, w.shape)
        assert g.tobytes() == w.tobytes()
    else:
        assert got == want


@pytest.fixture
def saved(tmp_path):
    """An MLP's params saved with its model and some metadata."""
    model = mlp()
    params, _ = init(model)
    path = save_params(tmp_path / "mlp.safetensors", params, model=model,
                       metadata={"note": "hello"})
    return model, params, path


# ----------------------------------------------------------------------------- round trips


def test_round_trip_of_an_mlp_with_and_without_like(saved):
    model, params, path = saved
    plain = load_params(path)
    assert_equal_trees(plain, jax.tree_util.tree_map(np.asarray, params))
    assert isinstance(plain[0]["W"], np.ndarray) and plain[1] == ()
    like = load_params(path, like=params, model=model)
    assert isinstance(like[0]["W"], jax.Array)
    assert_equal_trees(jax.tree_util.tree_map(np.asarray, like),
                       jax.tree_util.tree_map(np.asarray, params))
    abstract = jax.eval_shape(lambda k: model.init(k, (-1, 3))[1], KEY)
    from_structs = load_params(path, like=abstract)
    assert isinstance(from_structs[2]["b"], jax.Array)
    np.testing.assert_array_equal(from_structs[2]["W"], params[2]["W"])


def test_the_file_is_plain_safetensors_with_the_documented_keys(saved):
    _, params, path = saved
    tensors = safetensors.numpy.load_file(path)  # what any other tool sees
    assert sorted(tensors) == ["0.W", "0.b", "2.W", "2.b"]
    np.testing.assert_array_equal(tensors["2.W"], params[2]["W"])
    meta = load_metadata(path)
    assert meta["note"] == "hello"
    assert meta["funnet.file"] == "params" and meta["funnet.version"] == funnet.__version__
    assert set(meta) == {"note", "funnet.file", "funnet.format_version", "funnet.version",
                         "funnet.structure", "funnet.signature", "funnet.sha256"}


def test_nested_keys_and_state_keys(tmp_path):
    def stats():  # a stateful layer with params and a state dict (as BatchNorm)
        def init_fn(key, shape):
            return shape, {"scale": jnp.ones(shape[-1])}, {"mean": jnp.zeros(shape[-1])}

        return funnet.layer(init_fn, lambda p, s, x: (x, s, None),
                            lambda p, r, dy: ({"scale": 0 * p["scale"]}, dy),
                            stateful=True, name="Stats")

    model = funnet.serial(funnet.Dense(4), funnet.serial(funnet.Dense(2), funnet.PRelu), stats())
    params, state = init(model)
    path = save_params(tmp_path / "n.safetensors", params, model=model, state=state)
    assert sorted(safetensors.numpy.load_file(path)) == [
        "0.W", "0.b", "1.0.W", "1.0.b", "1.1.slope", "2.scale", "state.2.mean"]
    got_params, got_state = load_params(path, model=model, with_state=True)
    assert_equal_trees(got_state, jax.tree_util.tree_map(np.asarray, state))
    assert_equal_trees(got_params, jax.tree_util.tree_map(np.asarray, params))
    p, s = load_params(path, like=(params, state), with_state=True)
    assert isinstance(p[0]["W"], jax.Array) and isinstance(s[2]["mean"], jax.Array)
    assert_equal_trees(load_params(path), got_params)  # params only
    with pytest.raises(TypeError, match="like= is a pair"):
        load_params(path, like=params, with_state=True)


def test_containers_scalars_and_empty_trees_round_trip(tmp_path):
    tree = {
        "list": [1.5, 7, True, np.float32(2.5), np.int8(-3)],
        "tuple": (np.zeros((0, 3), np.float32), None, (), [], {}),
        "ints": {3: np.arange(4, dtype=np.int64), 0: np.ones(1)},  # int keys stay ints
        "nested": {"x": ({"y": np.ones((2,), ml_dtypes.bfloat16)},), "z": np.ones((2, 1, 3))},
        "": np.float64(1.0),  # an empty dict key
        "jax": jnp.arange(3.0),
    }
    path = save_params(tmp_path / "t.safetensors", tree, state={"step": 5})
    got, state = load_params(path, with_state=True)
    assert_equal_trees(got, {**tree, "jax": np.asarray(tree["jax"])})
    assert sorted(safetensors.numpy.load_file(path)) == sorted([  # the key scheme
        "list.0", "list.1", "list.2", "list.3", "list.4", "tuple.0", "ints.3", "ints.0",
        "nested.x.0.y", "nested.z", "", "jax", "state.step"])
    assert type(got["list"][3]) is np.float32 and type(got["list"][0]) is float
    assert state == {"step": 5} and type(state["step"]) is int
    for empty in [(), {}, [], None]:
        p = save_params(tmp_path / f"e{type(empty).__name__}.safetensors", empty)
        assert_equal_trees(load_params(p), empty)
        assert load_params(p, like=empty) == empty
    single = save_params(tmp_path / "one.safetensors", np.eye(2))
    assert list(safetensors.numpy.load_file(single)) == ["params"]
    np.testing.assert_array_equal(load_params(single), np.eye(2))


STORED_DTYPES = sorted(weights._CODES)


def test_every_stored_dtype_round_trips_bit_exactly(tmp_path):
    tree = {name: np.arange(-2, 4).astype(np.dtype(getattr(ml_dtypes, name, name)))
            for name in STORED_DTYPES}
    assert {"bfloat16", "float16", "float64", "int8", "uint64", "bool", "complex64",
            "float8_e4m3fn"} <= set(tree)
    path = save_params(tmp_path / "d.safetensors", tree)
    assert_equal_trees(load_params(path), tree)
    assert_equal_trees(load_params(path, like=tree), tree)
    # bfloat16 is read by plain safetensors.numpy too (numpy has no float8)
    plain = save_params(tmp_path / "bf.safetensors", {"w": tree["bfloat16"]})
    assert safetensors.numpy.load_file(plain)["w"].dtype == ml_dtypes.bfloat16


# ----------------------------------------------------------------------------- load checks


def test_like_mismatches_name_the_file_and_the_leaf(saved):
    _, params, path = saved
    bad_shape = (params[0], (), {"W": jnp.zeros((4, 3)), "b": params[2]["b"]})
    with pytest.raises(WeightsError) as e:
        load_params(path, like=bad_shape)
    assert str(e.value) == (f"{path}: params 2.W has shape (4, 2) float64 in the file, but "
                            "like= expects (4, 3) float64")
    bad_dtype = jax.tree_util.tree_map(lambda p: p.astype(jnp.float32), params)
    with pytest.raises(WeightsError, match=r"params 0\.W has shape \(3, 4\) float64 in the "
                                           r"file, but like= expects \(3, 4\) float32"):
        load_params(path, like=bad_dtype)
    with pytest.raises(WeightsError, match=r"mlp.safetensors: params 0: the file has the key "
                                           r"'b', like= has keys \['W'\]"):
        load_params(path, like=({"W": params[0]["W"]}, (), params[2]))
    with pytest.raises(WeightsError, match=r"params \(root\) is a tuple of 3 in the file, but "
                                           r"like= has a list of 3"):
        load_params(path, like=list(params))
    with pytest.raises(WeightsError, match=r"params 1 is a tuple of 0 in the file, but like= "
                                           r"has an array"):
        load_params(path, like=(params[0], jnp.zeros(()), params[2]))


def test_another_architecture_is_refused_naming_the_layer(saved, tmp_path):
    _, params, path = saved
    with pytest.raises(WeightsError) as e:
        load_params(path, model=mlp(funnet.Relu))  # same shapes, another activation
    assert str(e.value) == (f"{path} holds params of another model: serial[1]: saved Tanh, "
                            "this model has Relu")
    with pytest.raises(WeightsError, match=r"serial\[2\]: saved Dense\(2\), this model has "
                                           r"Dense\(3\)"):
        load_params(path, model=funnet.serial(funnet.Dense(4), funnet.Tanh, funnet.Dense(3)))
    unsigned = save_params(tmp_path / "unsigned.safetensors", params)
    with pytest.raises(WeightsError, match=rf"{unsigned} records no model signature"):
        load_params(unsigned, model=mlp())


def test_input_shape_checks_the_params_against_the_model_before_writing(tmp_path):
    model = funnet.serial(funnet.Dense(4), funnet.BatchNorm(), funnet.Dense(2))
    params, state = init(model)
    path = save_params(tmp_path / "ok.safetensors", params, model=model, state=state,
                       input_shape=(-1, 3))
    assert json_signature(path)["input_shape"] == [-1, 3]
    cast = jax.tree.map(lambda a: np.asarray(a, np.float16), params)  # any dtype is kept
    save_params(tmp_path / "half.safetensors", cast, model=model, state=state,
                input_shape=(-1, 3))
    dt = np.asarray(params[0]["W"]).dtype  # float64 under the suite's x64
    wide = [dict(p) for p in params]
    wide[2]["W"] = np.ones((4, 5), dt)
    bad_state = jax.tree.map(lambda a: a[:3], state)
    cases = [
        ({"params": params, "state": state, "input_shape": (-1, 5)},
         f"params serial[0].W: given shape (3, 4) {dt}, this model (5, 4) {dt}"),
        ({"params": tuple(wide), "state": state, "input_shape": (-1, 3)},
         f"params serial[2].W: given shape (4, 5) {dt}, this model (4, 2) {dt}"),
        ({"params": params, "state": bad_state, "input_shape": (-1, 3)},
         f"state serial[1].mean: given shape (3,) {dt}, this model (4,) {dt}"),
    ]
    for kw, message in cases:
        with pytest.raises(ValueError) as e:
            save_params(tmp_path / "bad.safetensors", model=model, **kw)
        assert str(e.value) == ("save_params: the params do not fit serial(Dense(4), BatchNorm, "
                                f"Dense(2)) at input shape {kw['input_shape']}: {message}")
    with pytest.raises(ValueError, match="cannot take input_shape \\(-1, 3, 0\\)"):
        save_params(tmp_path / "bad.safetensors", params, model=funnet.Conv(2, (3, 3)),
                    input_shape=(-1, 3, 0))
    with pytest.raises(ValueError, match="needs model= as well"):
        save_params(tmp_path / "bad.safetensors", params, input_shape=(-1, 3))
    assert not (tmp_path / "bad.safetensors").exists() and not temporaries(tmp_path)
    got, _ = load_params(path, model=model, with_state=True)
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(got),
                                                     jax.tree.leaves(params), strict=True))


def json_signature(path):
    import json

    return json.loads(load_metadata(path)["funnet.signature"])


def corrupt_copy(path, tmp_path, edit):
    data = bytearray(path.read_bytes())
    edit(data)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(bytes(data))
    return bad


def flip_last_byte(data):
    data[-1] ^= 0x01


def swap_a_shape(data):  # W [3, 4] -> [4, 3]: same bytes, still a valid safetensors file
    i = data.index(b'"shape":[3,4]')
    data[i:i + 13] = b'"shape":[4,3]'


def change_the_note(data):
    i = data.index(b"hello")
    data[i] = ord("j")


def change_a_dtype(data):  # F32 -> I32 (or F64 -> I64): same size, still valid safetensors
    i = data.index(b'"dtype":"F')
    data[i + 9] = ord("I")


def change_the_signature(data):  # funnet.* metadata is checked too (found by h-mut11)
    i = data.index(b"Tanh")
    data[i:i + 4] = b"Relu"


def rename_a_tensor(data):  # "2.b" -> "2.c": the sorted order of the tensors is unchanged
    i = data.index(b'"2.b":{')
    data[i + 3] = ord("c")


@pytest.mark.parametrize("edit", [flip_last_byte, swap_a_shape, change_the_note, change_a_dtype,
                                  change_the_signature, rename_a_tensor])
def test_a_flipped_byte_is_found_corrupt(saved, tmp_path, edit):
    bad = corrupt_copy(saved[2], tmp_path, edit)
    safetensors.numpy.load_file(bad)  # still a readable safetensors file ...
    with pytest.raises(WeightsError) as e:  # ... but not what was saved
        load_params(bad)
    assert str(e.value).startswith(f"{bad} is corrupt: its contents do not match the sha256")


@pytest.mark.parametrize("cut", [10, 200, -8, -3, 0])
def test_truncated_files_are_refused(saved, tmp_path, cut):
    data = saved[2].read_bytes()
    bad = tmp_path / "short.safetensors"
    bad.write_bytes(data[:cut] if cut > 0 else data[:len(data) + cut] if cut else b"")
    with pytest.raises(WeightsError, match=rf"^{bad} is not a (valid )?safetensors file"):
        load_params(bad)


def test_other_files_are_refused_by_name(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("these are not weights, but long enough to have a header length")
    with pytest.raises(WeightsError, match=rf"^{text} is not a valid safetensors file"):
        load_params(text)
    npz = tmp_path / "w.npz"
    np.savez(npz, W=np.ones(3))
    with pytest.raises(WeightsError, match=rf"^{npz} is not a valid safetensors file"):
        load_params(npz)
    foreign = tmp_path / "foreign.safetensors"
    safetensors.numpy.save_file({"weight": np.ones(2, np.float32)}, foreign)
    with pytest.raises(WeightsError, match=rf"^{foreign} is a safetensors file but not a "
                                           "funnet params file"):
        load_params(foreign)
    with pytest.raises(WeightsError, match="not a funnet params file"):
        load_metadata(foreign)
    missing = tmp_path / "missing.safetensors"
    for read in (load_params, load_metadata):
        with pytest.raises(FileNotFoundError, match=rf"{missing} does not exist"):
            read(missing)
    with pytest.raises(IsADirectoryError, match=rf"{tmp_path} is a directory"):
        load_params(tmp_path)


# ----------------------------------------------------------------------------- saving


def test_existing_files_are_not_replaced_by_accident(saved, tmp_path):
    model, params, path = saved
    before = path.read_bytes()
    with pytest.raises(FileExistsError, match=rf"{path} exists; pass overwrite=True"):
        save_params(path, params)
    assert path.read_bytes() == before
    doubled = jax.tree_util.tree_map(lambda p: 2 * p, params)
    save_params(path, doubled, model=model, overwrite=True)
    np.testing.assert_array_equal(load_params(path)[0]["W"], 2 * params[0]["W"])
    for name, content in [("data.csv", b"1,2,3\n"), ("other.safetensors", None)]:
        other = tmp_path / name
        if content is None:
            safetensors.numpy.save_file({"w": np.ones(1, np.float32)}, other)
        else:
            other.write_bytes(content)
        kept = other.read_bytes()
        with pytest.raises(FileExistsError, match=rf"{other} exists and is not a funnet params "
                                                  "file; it is not replaced even with "
                                                  "overwrite=True"):
            save_params(other, params, overwrite=True)
        assert other.read_bytes() == kept
    assert temporaries(tmp_path) == []


def test_unwritable_or_missing_directories_are_found_first(tmp_path, monkeypatch):
    touched = []
    monkeypatch.setattr(weights, "_encode", lambda *a: touched.append(a))  # "any work"
    params = {"W": np.ones(2)}
    with pytest.raises(FileNotFoundError, match=rf"the directory {tmp_path / 'no'} of "):
        save_params(tmp_path / "no" / "w.safetensors", params)
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(NotADirectoryError, match=rf"{a_file} \(the directory of "):
        save_params(a_file / "w.safetensors", params)
    with pytest.raises(OSError, match=r"cannot write /proc/w.safetensors: the directory /proc "
                                      r"is not writable"):
        save_params("/proc/w.safetensors", params)
    with pytest.raises(IsADirectoryError, match=rf"{tmp_path} is a directory"):
        save_params(tmp_path, params)
    assert touched == []


def test_leaves_and_metadata_that_cannot_be_stored_are_named(tmp_path):
    path = tmp_path / "w.safetensors"
    Pair = collections.namedtuple("Pair", "a b")
    cases = [
        ({"W": np.ones(2, np.complex128)}, TypeError,
         "leaf W has dtype complex128, which safetensors cannot store"),
        ([{"W": "abc"}], TypeError, "0.W is str; params and state must be"),
        ((Pair(1, 2),), TypeError, "0 is a NamedTuple"),
        ({"k": jax.random.key(0)}, TypeError, "leaf k is a typed PRNG key"),
        ({"a.b": np.ones(1), "a": {"b": np.ones(1)}}, ValueError,
         "two leaves would be stored under the key 'a.b'"),
        ({(1, 2): np.ones(1)}, TypeError, r"the dict at \(root\) has the key \(1, 2\)"),
        ({"big": 2**70}, TypeError, "leaf big is the int 1180591620717411303424, outside int64"),
    ]
    for params, error, message in cases:
        with pytest.raises(error, match=message):
            save_params(path, params)
    with pytest.raises(TypeError, match="save params outside jax.jit"):
        jax.jit(lambda w: save_params(path, {"w": w}) and w)(jnp.ones(2))
    with pytest.raises(TypeError, match=r"metadata must map str to str .*'epoch': int"):
        save_params(path, {}, metadata={"epoch": 3})
    with pytest.raises(ValueError, match="'funnet.version': keys starting with 'funnet.'"):
        save_params(path, {}, metadata={"funnet.version": "9"})
    assert not path.exists() and temporaries(tmp_path) == []


def test_without_hard_links_a_check_then_replace_is_used(tmp_path, monkeypatch):
    def no_link(src, dst):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(weights.os, "link", no_link)
    path = save_params(tmp_path / "w.safetensors", {"W": np.ones(2)})
    np.testing.assert_array_equal(load_params(path)["W"], np.ones(2))
    with pytest.raises(FileExistsError, match="exists; pass overwrite=True"):
        save_params(path, {"W": np.zeros(2)})
    assert temporaries(tmp_path) == []


def test_stale_temporaries_of_dead_processes_are_removed_by_the_next_save(tmp_path):
    done = subprocess.Popen([sys.executable, "-c", "pass"])
    done.wait()  # its pid no longer exists
    host = weights._host_tag()
    dead = tmp_path / f".w.safetensors.funnet-tmp-{host}-{done.pid}-ab12"
    alive = tmp_path / f".w.safetensors.funnet-tmp-{host}-{os.getpid()}-cd34"
    elsewhere = tmp_path / f".w.safetensors.funnet-tmp-otherhost-{done.pid}-ef56"
    for p in (dead, alive, elsewhere):
        p.write_bytes(b"partial")
    save_params(tmp_path / "v.safetensors", {"W": np.ones(2)})
    assert temporaries(tmp_path) == sorted([alive.name, elsewhere.name])


SAVER = r"""
import sys, numpy as np
from funnet.weights import save_params
path = sys.argv[1]
print("ready", flush=True)
i = 0
while True:
    i += 1
    save_params(path, {"W": np.full((256, 1024), i, np.float32), "i": i}, overwrite=True)
"""


def test_a_killed_save_never_leaves_a_damaged_file(tmp_path):
    """SIGKILL processes saving in a loop at random moments: every file stays whole.

    Four savers run at once (one directory each; starting Python and JAX is the cost, so
    they share it), each killed at its own random moment, mid-write or between writes. A
    kill mid-write leaves a temporary file; the next save into that directory removes it.
    """
    env = {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu"}
    paths = [tmp_path / f"run{n}" / "w.safetensors" for n in range(4)]
    for path in paths:
        path.parent.mkdir()
        save_params(path, {"W": np.full((256, 1024), 0, np.float32), "i": 0})
    procs = [subprocess.Popen([sys.executable, "-c", SAVER, str(path)], env=env,
                              stdout=subprocess.PIPE, text=True) for path in paths]
    for proc in procs:
        assert proc.stdout.readline() == "ready\n"
    for proc, pause in zip(procs, np.random.default_rng(0).uniform(0.02, 0.15, len(procs))):
        time.sleep(pause)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
    for path in paths:
        got = load_params(path)  # verified: complete, checksum intact
        assert np.all(got["W"] == got["i"])  # one save's data, not a mix
        save_params(path.parent / "next.safetensors", {"W": np.ones(1)})
        assert temporaries(path.parent) == []  # a killed save's leftover is gone
