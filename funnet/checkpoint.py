r"""Atomic, pickle-free checkpoints of pytrees.

A checkpoint is one file holding a pytree of arrays (params, optimiser state, PRNG
keys, step counters), a JSON-serialisable ``metadata`` dict and enough structure to
load it back *without* a skeleton. Nothing is ever unpickled: the header is JSON and
the leaves are raw bytes read with :func:`numpy.frombuffer`.

File format (version 1; all integers little-endian)::

    offset   size  content
    0        8     magic b"FUNNET\x00\x01"
    8        8     uint64 H: length of the JSON header in bytes
    16       32    sha256 digest of the H header bytes
    48       H     UTF-8 JSON header (below)
    48 + H   P     payload: every leaf's bytes, C order, little-endian, concatenated

The header is::

    {"format_version": 1,
     "metadata": {...},                       # the dict given to save(), or {}
     "structure": NODE,                       # the container tree, leaves by index
     "leaves": [{"path": "[1]['W']",          # jax.tree_util.keystr of the key path
                 "dtype": "float32",          # numpy / ml_dtypes name
                 "shape": [4, 3],
                 "offset": 0,                 # into the payload
                 "nbytes": 48,
                 "prng_impl": "threefry2x32"  # only for typed PRNG keys
                 }, ...],
     "payload_nbytes": P,
     "payload_sha256": "<hex digest of the P payload bytes>"}

    NODE := {"kind": "leaf", "index": i}          # i indexes "leaves"
          | {"kind": "none"}
          | {"kind": "dict", "keys": [k, ...], "children": [NODE, ...]}
          | {"kind": "list", "children": [NODE, ...]}
          | {"kind": "tuple", "children": [NODE, ...]}
          | {"kind": "node", "type": "module.QualName", "keys": [k, ...],
             "keyed": bool, "children": [NODE, ...]}  # NamedTuple, dataclass, custom

Loading without ``like`` rebuilds plain containers from ``structure``: ``dict`` (str
or int keys), ``list``, ``tuple`` and ``None`` come back as such; any other pytree
node (NamedTuples such as optax states, registered dataclasses, custom nodes) comes
back as a ``dict`` keyed by field name, or as a ``tuple`` when its children have no
names (custom nodes flattened without keys). Array leaves come back as
:class:`numpy.ndarray` (Python scalars as 0-d arrays); typed PRNG keys come back as
typed ``jax`` key arrays.

Loading with ``like`` returns a tree with exactly ``like``'s treedef. Leaves are
matched by key path, and each is converted to the kind of ``like``'s leaf:
``jax.Array`` or ``jax.ShapeDtypeStruct`` → ``jax.Array``, numpy array → numpy array,
numpy scalar → numpy scalar, Python ``bool``/``int``/``float``/``complex`` → the same
Python type. Shapes and dtypes must match exactly; nothing is cast.

Writes are atomic: the file is written to a hidden temporary file in the target
directory, flushed, fsynced and then :func:`os.replace`-d onto the target, so a crash
leaves either the old checkpoint or the new one, never a mix.

>>> import pathlib, tempfile
>>> import numpy as np
>>> from funnet import checkpoint
>>> tmp = tempfile.TemporaryDirectory()
>>> params = [{"W": np.ones((2, 3), np.float32), "b": np.zeros(3, np.float32)}, {}]
>>> path = checkpoint.save(pathlib.Path(tmp.name) / "params.funnet", params,
...                        metadata={"epoch": 3})
>>> restored = checkpoint.load(path)
>>> restored[0]["W"].shape, restored[0]["W"].dtype
((2, 3), dtype('float32'))
>>> checkpoint.load_metadata(path)
{'epoch': 3}
>>> tmp.cleanup()
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import operator
import os
import pathlib
import re
import secrets
import struct
import sys
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from jax.tree_util import (
    DictKey,
    FlattenedIndexKey,
    GetAttrKey,
    SequenceKey,
    keystr,
    tree_flatten_with_path,
    tree_unflatten,
)

from ._validate import check_int

__all__ = ["FORMAT_VERSION", "MAGIC", "latest_step", "load", "load_metadata", "load_step",
           "save", "save_step"]

MAGIC = b"FUNNET\x00\x01"
FORMAT_VERSION = 1

# magic (8 bytes) | header length (uint64 LE) | sha256 of the header (32 bytes)
_PREFIX = struct.Struct("<8sQ32s")
_STEP_FILE = re.compile(r"ckpt_(\d{8,})\.funnet")

_NUMPY_DTYPES = {
    name: np.dtype(name)
    for name in ("bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32",
                 "uint64", "float16", "float32", "float64", "complex64", "complex128")
}
_ML_DTYPES = {
    name: np.dtype(obj)
    for name, obj in vars(ml_dtypes).items()
    if isinstance(obj, type) and issubclass(obj, np.generic)
}
_DTYPES = {**_NUMPY_DTYPES, **_ML_DTYPES}


class _Leaf(NamedTuple):
    """One validated entry of the header's ``leaves`` list."""

    path: str
    dtype: np.dtype
    shape: tuple[int, ...]
    offset: int
    nbytes: int
    prng_impl: str | None


# ----------------------------------------------------------------------------- dtypes


def _dtype_name(dtype: np.dtype) -> str | None:
    """The header name of a storable dtype, or None if it cannot be stored."""
    name = dtype.name
    native = dtype.newbyteorder("=")
    return name if name in _DTYPES and _DTYPES[name] == native else None


def _little(dtype: np.dtype) -> np.dtype:
    """``dtype`` with little-endian byte order (a no-op for native dtypes on little-endian
    machines and for 1-byte dtypes)."""
    native_little = dtype.byteorder == "=" and sys.byteorder == "little"
    return dtype if dtype.byteorder in "<|" or native_little else dtype.newbyteorder("<")


def _is_prng_key(x: Any) -> bool:
    dtype = getattr(x, "dtype", None)
    return dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)


# -------------------------------------------------------------------------- structure


def _key_of(entry: Any, where: str) -> str | int:
    """The JSON key (field name, dict key or index) of one key-path entry."""
    if isinstance(entry, DictKey):
        key = entry.key
        if type(key) not in (str, int):
            raise TypeError(f"{where}: dict key {key!r} of type {type(key).__name__} cannot be "
                            "stored in a checkpoint; use str or int keys")
        return key
    if isinstance(entry, GetAttrKey):
        return entry.name
    if isinstance(entry, SequenceKey):
        return entry.idx
    if isinstance(entry, FlattenedIndexKey):
        return entry.key
    raise TypeError(f"{where}: unsupported pytree key entry {entry!r}")


def _encode(tree: Any, path: tuple, leaves: list[tuple[tuple, Any]]) -> dict:
    """Structure NODE of ``tree``; appends ``(key_path, leaf)`` pairs to ``leaves``."""
    if tree is None:
        return {"kind": "none"}
    # flatten exactly one level: the root is a node, every child is treated as a leaf
    children, _ = tree_flatten_with_path(tree, is_leaf=lambda x: x is not tree)
    if len(children) == 1 and children[0][0] == ():
        leaves.append((path, tree))
        return {"kind": "leaf", "index": len(leaves) - 1}
    entries = [entry for (entry,), _ in children]
    nodes = [_encode(child, path + (entry,), leaves) for (entry,), child in children]
    cls = type(tree)
    if cls in (list, tuple):
        return {"kind": cls.__name__, "children": nodes}
    keys = [_key_of(entry, keystr(path + (entry,))) for entry in entries]
    if cls is dict:
        return {"kind": "dict", "keys": keys, "children": nodes}
    keyed = all(isinstance(e, (DictKey, GetAttrKey)) for e in entries)
    return {"kind": "node", "type": f"{cls.__module__}.{cls.__qualname__}", "keys": keys,
            "keyed": keyed, "children": nodes}


def _decode(node: Any, leaves: list, used: set[int]) -> Any:
    """Plain containers from a structure NODE, taking leaf ``i`` from ``leaves[i]``."""
    if not isinstance(node, dict):
        raise TypeError(f"structure node {node!r} is not an object")
    kind = node.get("kind")
    if kind == "none":
        return None
    if kind == "leaf":
        index = node.get("index")
        if type(index) is not int or not 0 <= index < len(leaves) or index in used:
            raise ValueError(f"bad or repeated leaf index {index!r}")
        used.add(index)
        return leaves[index]
    children = node.get("children")
    if kind not in ("dict", "list", "tuple", "node") or not isinstance(children, list):
        raise ValueError(f"bad structure node of kind {kind!r}")
    values = [_decode(child, leaves, used) for child in children]
    if kind == "list":
        return values
    if kind == "tuple" or (kind == "node" and not node.get("keyed")):
        return tuple(values)
    keys = node.get("keys")
    if not isinstance(keys, list) or len(keys) != len(values):
        raise ValueError(f"{kind} node has keys {keys!r} for {len(values)} children")
    return dict(zip(keys, values))


# ------------------------------------------------------------------------ leaves → bytes


def _to_host(leaf: Any, where: str) -> tuple[np.ndarray, str | None]:
    """A C-contiguous little-endian numpy array for ``leaf`` and its PRNG impl name."""
    impl = None
    if isinstance(leaf, jax.Array) and _is_prng_key(leaf):
        impl = str(jax.random.key_impl(leaf))
        leaf = jax.random.key_data(leaf)
    elif not isinstance(leaf, (jax.Array, np.ndarray, np.generic, bool, int, float, complex)):
        raise TypeError(f"leaf {where}: cannot store a leaf of type {type(leaf).__name__} "
                        "(expected an array or a Python scalar)")
    try:
        arr = np.asarray(leaf)
    except OverflowError as err:
        raise TypeError(f"leaf {where}: {leaf!r} does not fit in a numpy integer") from err
    if _dtype_name(arr.dtype) is None:
        raise TypeError(f"leaf {where}: dtype {arr.dtype} cannot be stored (supported: bool, "
                        "[u]int8-64, float16/32/64, complex64/128 and the ml_dtypes types "
                        "such as bfloat16)")
    return np.asarray(arr, dtype=_little(arr.dtype), order="C"), impl  # keeps 0-d shape


def _raw_bytes(arr: np.ndarray) -> np.ndarray:
    """The bytes of a C-contiguous array, as a flat uint8 view."""
    return arr.reshape(-1).view(np.uint8)


def _check_metadata(value: Any, where: str = "metadata") -> None:
    """Raise TypeError unless ``value`` is JSON data (dict keys str; tuples become lists)."""
    if value is None or isinstance(value, (str, bool, int, float)):
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"{where}: key {key!r} is not a str; metadata must be "
                                "JSON-serialisable")
            _check_metadata(item, f"{where}[{key!r}]")
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_metadata(item, f"{where}[{i}]")
        return
    raise TypeError(f"{where}: a value of type {type(value).__name__} is not "
                    "JSON-serialisable (convert it first, e.g. float(x), int(x) or x.tolist())")


def _serialise(tree: Any, metadata: dict | None) -> tuple[bytes, list[np.ndarray]]:
    """The JSON header bytes and the payload arrays of a checkpoint of ``tree``."""
    if metadata is not None and not isinstance(metadata, dict):
        raise TypeError(f"metadata must be a dict or None, got {type(metadata).__name__}")
    _check_metadata(metadata)
    pairs: list[tuple[tuple, Any]] = []
    structure = _encode(tree, (), pairs)
    records, arrays, seen = [], [], set()
    offset, digest = 0, hashlib.sha256()
    for key_path, leaf in pairs:
        where = keystr(key_path)
        if where in seen:
            raise ValueError(f"two leaves share the key path {where}; cannot store the tree")
        seen.add(where)
        arr, impl = _to_host(leaf, where)
        record = {"path": where, "dtype": _dtype_name(arr.dtype), "shape": list(arr.shape),
                  "offset": offset, "nbytes": arr.nbytes}
        if impl is not None:
            record["prng_impl"] = impl
        records.append(record)
        arrays.append(arr)
        digest.update(_raw_bytes(arr))
        offset += arr.nbytes
    header = {"format_version": FORMAT_VERSION, "metadata": metadata or {},
              "structure": structure, "leaves": records, "payload_nbytes": offset,
              "payload_sha256": digest.hexdigest()}
    return json.dumps(header, ensure_ascii=False).encode("utf-8"), arrays


# ----------------------------------------------------------------------- atomic writes


def _fsync_directory(directory: pathlib.Path) -> None:
    """Persist a rename in ``directory``; a no-op where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _atomic_write(target: pathlib.Path, chunks: list) -> None:
    """Write ``chunks`` to ``target`` via temp file + fsync + os.replace + directory fsync.

    The temporary file is created with ``os.open(..., O_CREAT | O_EXCL, 0o666)`` so that
    the final file gets the usual umask-derived permissions (``NamedTemporaryFile`` would
    leave it at 0600). On any exception the temporary file is removed and ``target`` is
    left as it was.
    """
    directory = target.parent
    if not directory.is_dir():
        raise FileNotFoundError(errno.ENOENT, "checkpoint directory does not exist",
                                str(directory))
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    while True:
        tmp = directory / f".{target.name}.{secrets.token_hex(8)}.tmp"
        try:
            fd = os.open(tmp, flags, 0o666)
            break
        except FileExistsError:  # pragma: no cover - 64 random bits collided
            continue
    try:
        with os.fdopen(fd, "wb") as f:
            for chunk in chunks:
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_directory(directory)


def save(path: str | os.PathLike, tree: Any, *, metadata: dict | None = None) -> pathlib.Path:
    """Atomically write ``tree`` (and ``metadata``) to the checkpoint file ``path``.

    Args:
      path: the file to write; its directory must exist. An existing file is replaced
        atomically (see the module docstring for the format).
      tree: a pytree whose leaves are arrays (numpy, jax, typed PRNG keys) of a numeric
        dtype (bool, [u]int8–64, float16/32/64, complex, bfloat16 and other ml_dtypes)
        or Python ``bool``/``int``/``float``/``complex`` (stored as 0-d arrays).
        Containers: dicts with str or int keys, lists, tuples, None and any registered
        pytree node (NamedTuple, dataclass).
      metadata: a JSON-serialisable dict (str keys; tuples are stored as lists;
        NaN/inf floats allowed), stored in the header. Checked before anything is written.

    Returns:
      ``path`` as a :class:`pathlib.Path`.

    Raises:
      TypeError: metadata that is not JSON data, or a leaf that cannot be stored; raised
        before any file is created.

    >>> import pathlib, tempfile
    >>> import jax, numpy as np
    >>> from funnet import checkpoint
    >>> tmp = tempfile.TemporaryDirectory()
    >>> state = {"params": (np.ones(2), np.float32(0.5)), "key": jax.random.key(0), "step": 7}
    >>> path = checkpoint.save(pathlib.Path(tmp.name) / "state.funnet", state,
    ...                        metadata={"lr": 1e-3})
    >>> path.name
    'state.funnet'
    >>> checkpoint.save(path, state, metadata={"loss": np.float32(0.5)})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    TypeError: metadata['loss']: a value of type float32 is not JSON-serialisable ...
    >>> tmp.cleanup()
    """
    target = pathlib.Path(path)
    header, arrays = _serialise(tree, metadata)
    prefix = _PREFIX.pack(MAGIC, len(header), hashlib.sha256(header).digest())
    _atomic_write(target, [prefix, header, *map(_raw_bytes, arrays)])
    return target


# ------------------------------------------------------------------------------ reading


def _corrupt(path: pathlib.Path, what: str) -> ValueError:
    return ValueError(f"cannot load funnet checkpoint {str(path)!r}: {what}")


def _open(path: pathlib.Path):
    try:
        return open(path, "rb")
    except FileNotFoundError:
        raise FileNotFoundError(errno.ENOENT, "no funnet checkpoint at", str(path)) from None


def _read_exactly(f, n: int) -> bytearray:
    buf = bytearray(n)
    view, filled = memoryview(buf), 0
    while filled < n:
        got = f.readinto(view[filled:])
        if not got:
            break
        filled += got
    return buf if filled == n else buf[:filled]


def _parse_leaves(header: dict, path: pathlib.Path) -> list[_Leaf]:
    """Validate the header's ``leaves`` list against the payload size."""
    payload_nbytes = header["payload_nbytes"]
    records = header.get("leaves")
    if not isinstance(records, list):
        raise _corrupt(path, "corrupt header: 'leaves' is not a list")
    leaves = []
    for i, rec in enumerate(records):
        try:
            where, shape = rec["path"], tuple(rec["shape"])
            dtype, offset, nbytes = _DTYPES[rec["dtype"]], rec["offset"], rec["nbytes"]
            impl = rec.get("prng_impl")
        except (KeyError, TypeError) as err:
            raise _corrupt(path, f"corrupt header: leaf #{i} is malformed ({err!r})") from None
        ints = [*shape, offset, nbytes]
        if (not isinstance(where, str) or any(type(v) is not int or v < 0 for v in ints)
                or nbytes != math.prod(shape) * dtype.itemsize
                or offset + nbytes > payload_nbytes
                or not (impl is None or isinstance(impl, str))):
            raise _corrupt(path, f"corrupt header: leaf #{i} {rec!r} is inconsistent")
        leaves.append(_Leaf(where, dtype, shape, offset, nbytes, impl))
    if len({leaf.path for leaf in leaves}) != len(leaves):
        raise _corrupt(path, "corrupt header: repeated leaf paths")
    return leaves


def _read(path: pathlib.Path, *, payload: bool) -> tuple[dict, list[_Leaf], bytearray | None]:
    """Header, validated leaf records and (if ``payload``) the checksummed payload."""
    with _open(path) as f:
        size = os.fstat(f.fileno()).st_size
        prefix = f.read(_PREFIX.size)
        if not MAGIC.startswith(prefix[:len(MAGIC)]):
            raise _corrupt(path, "not a funnet checkpoint (bad magic)")
        if len(prefix) < _PREFIX.size:
            raise _corrupt(path, f"truncated: expected at least {_PREFIX.size} bytes, "
                                 f"found {size}")
        _, header_len, header_sha = _PREFIX.unpack(prefix)
        if _PREFIX.size + header_len > size:
            raise _corrupt(path, f"truncated: expected at least {_PREFIX.size + header_len} "
                                 f"bytes, found {size}")
        raw = bytes(_read_exactly(f, header_len))
        if hashlib.sha256(raw).digest() != header_sha:
            raise _corrupt(path, "header checksum mismatch")
        try:
            header = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise _corrupt(path, f"corrupt header ({err})") from None
        if not isinstance(header, dict):
            raise _corrupt(path, "corrupt header: not a JSON object")
        version = header.get("format_version")
        if version != FORMAT_VERSION:
            raise _corrupt(path, f"unsupported format version {version!r} (this funnet reads "
                                 f"version {FORMAT_VERSION})")
        payload_nbytes = header.get("payload_nbytes")
        if type(payload_nbytes) is not int or payload_nbytes < 0:
            raise _corrupt(path, f"corrupt header: payload_nbytes={payload_nbytes!r}")
        if not isinstance(header.get("metadata"), dict):
            raise _corrupt(path, "corrupt header: metadata is not an object")
        leaves = _parse_leaves(header, path)
        expected = _PREFIX.size + header_len + payload_nbytes
        if size < expected:
            raise _corrupt(path, f"truncated: expected {expected} bytes, found {size}")
        if size > expected:
            raise _corrupt(path, f"trailing data: expected {expected} bytes, found {size}")
        if not payload:
            return header, leaves, None
        data = _read_exactly(f, payload_nbytes)
    if len(data) != payload_nbytes:  # the file shrank while we read it
        raise _corrupt(path, f"truncated: expected {expected} bytes, found "
                             f"{_PREFIX.size + header_len + len(data)}")
    if hashlib.sha256(data).hexdigest() != header.get("payload_sha256"):
        raise _corrupt(path, "checksum mismatch (payload sha256 differs from the header)")
    return header, leaves, data


def _array(data: bytearray, leaf: _Leaf) -> np.ndarray:
    """A fresh native-order array holding ``leaf``'s bytes from the payload."""
    if leaf.nbytes == 0:
        return np.zeros(leaf.shape, leaf.dtype)
    flat = np.frombuffer(data, _little(leaf.dtype), math.prod(leaf.shape), leaf.offset)
    return flat.reshape(leaf.shape).astype(leaf.dtype)


def _wrap_key(arr: np.ndarray, leaf: _Leaf, path: pathlib.Path) -> jax.Array:
    try:
        return jax.random.wrap_key_data(arr, impl=leaf.prng_impl)
    except (ValueError, TypeError) as err:
        raise _corrupt(path, f"leaf {leaf.path}: cannot rebuild a {leaf.prng_impl!r} PRNG key "
                             f"from {leaf.dtype} data of shape {leaf.shape} ({err})") from None


def _stored_value(arr: np.ndarray, leaf: _Leaf, path: pathlib.Path) -> Any:
    return arr if leaf.prng_impl is None else _wrap_key(arr, leaf, path)


def _like_spec(like_leaf: Any, where: str) -> tuple[Any, tuple[int, ...]]:
    """(dtype, shape) that ``like_leaf`` asks for."""
    if isinstance(like_leaf, (jax.Array, jax.ShapeDtypeStruct, np.ndarray, np.generic)):
        return like_leaf.dtype, tuple(like_leaf.shape)
    if isinstance(like_leaf, (bool, int, float, complex)):
        return np.asarray(like_leaf).dtype, ()
    raise TypeError(f"like leaf {where}: unsupported type {type(like_leaf).__name__} (expected "
                    "a jax/numpy array, jax.ShapeDtypeStruct or Python scalar)")


def _match(arr: np.ndarray, leaf: _Leaf, like_leaf: Any, path: pathlib.Path) -> Any:
    """``leaf``'s value checked against, and converted to the kind of, ``like_leaf``."""
    want_dtype, want_shape = _like_spec(like_leaf, leaf.path)
    value = _stored_value(arr, leaf, path)
    problems = []
    if value.shape != want_shape:
        problems.append(f"shape {value.shape} in checkpoint, {want_shape} expected")
    if value.dtype != want_dtype:
        problems.append(f"dtype {value.dtype} in checkpoint, {want_dtype} expected")
    if problems:
        raise ValueError(f"leaf {leaf.path}: {'; '.join(problems)} (file {str(path)!r})")
    if isinstance(like_leaf, (jax.Array, jax.ShapeDtypeStruct)):
        sharding = getattr(like_leaf, "sharding", None)
        if sharding is not None and getattr(like_leaf, "committed", True):
            return jax.device_put(value, sharding)
        return jnp.asarray(value)
    if isinstance(like_leaf, np.ndarray):
        return value
    if isinstance(like_leaf, np.generic):
        return value[()]
    return type(like_leaf)(value.item())


def _load(path: str | os.PathLike, like: Any) -> tuple[Any, dict]:
    file = pathlib.Path(path)
    header, leaves, data = _read(file, payload=True)
    arrays = [_array(data, leaf) for leaf in leaves]
    values = arrays if like is not None else [
        _stored_value(arr, leaf, file) for arr, leaf in zip(arrays, leaves)]
    used: set[int] = set()
    try:
        plain = _decode(header.get("structure"), values, used)
    except (ValueError, TypeError) as err:
        raise _corrupt(file, f"corrupt header: bad structure ({err})") from None
    if used != set(range(len(leaves))):
        raise _corrupt(file, "corrupt header: structure does not use every leaf exactly once")
    if like is None:
        return plain, header["metadata"]
    like_leaves, treedef = tree_flatten_with_path(like)
    by_path = {leaf.path: (leaf, arr) for leaf, arr in zip(leaves, arrays)}
    like_paths = [keystr(key_path) for key_path, _ in like_leaves]
    like_set = set(like_paths)
    only_file = [p for p in by_path if p not in like_set]
    only_like = [p for p in like_paths if p not in by_path]
    if only_file or only_like:
        raise ValueError(f"structure mismatch between checkpoint {str(file)!r} and like: "
                         f"leaves only in the checkpoint: {_listing(only_file)}; "
                         f"leaves only in like: {_listing(only_like)}")
    values = [_match(by_path[p][1], by_path[p][0], like_leaf, file)
              for p, (_, like_leaf) in zip(like_paths, like_leaves)]
    return tree_unflatten(treedef, values), header["metadata"]


def _listing(paths: list[str], most: int = 8) -> str:
    shown = ", ".join(paths[:most]) or "none"
    return shown + (f" (+{len(paths) - most} more)" if len(paths) > most else "")


def load(path: str | os.PathLike, *, like: Any = None) -> Any:
    """Read the tree stored in the checkpoint file ``path``.

    Checks the magic bytes, format version, header checksum, file size and the payload
    sha256 before returning anything.

    Args:
      path: a file written by :func:`save`.
      like: optional skeleton (e.g. freshly initialised params, or
        ``jax.eval_shape(init, ...)``). Without it, the stored structure is rebuilt from
        plain containers (NamedTuples/dataclasses → dicts keyed by field name) with
        numpy leaves. With it, the result has exactly ``like``'s treedef; each leaf must
        have the same key path, shape and dtype as ``like``'s and takes its kind
        (jax array, numpy array/scalar or Python scalar).

    Raises:
      FileNotFoundError: no file at ``path``.
      ValueError: a corrupt or truncated file, or a tree that does not match ``like``
        (naming the leaf path and both values).

    >>> import pathlib, tempfile
    >>> import jax, jax.numpy as jnp, numpy as np
    >>> from funnet import checkpoint
    >>> tmp = tempfile.TemporaryDirectory()
    >>> path = pathlib.Path(tmp.name) / "p.funnet"
    >>> _ = checkpoint.save(path, [{"W": np.ones((4, 3), np.float32)}])
    >>> checkpoint.load(path)
    [{'W': array([[1., 1., 1.],
           [1., 1., 1.],
           [1., 1., 1.],
           [1., 1., 1.]], dtype=float32)}]
    >>> like = [{"W": jnp.zeros((4, 3), jnp.float32)}]
    >>> isinstance(checkpoint.load(path, like=like)[0]["W"], jax.Array)
    True
    >>> checkpoint.load(path, like=[{"W": jnp.zeros((4, 2), jnp.float32)}])  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: leaf [0]['W']: shape (4, 3) in checkpoint, (4, 2) expected (file '.../p.funnet')
    >>> tmp.cleanup()
    """
    return _load(path, like)[0]


def load_metadata(path: str | os.PathLike) -> dict:
    """The metadata dict stored in checkpoint ``path`` (``{}`` if none was given).

    Reads only the header: checks magic, version, header checksum and file size, but not
    the payload checksum (:func:`load` does).

    >>> import pathlib, tempfile
    >>> from funnet import checkpoint
    >>> tmp = tempfile.TemporaryDirectory()
    >>> path = checkpoint.save(pathlib.Path(tmp.name) / "m.funnet", {"x": 1.0},
    ...                        metadata={"step": 10, "config": {"widths": [4, 2]}})
    >>> checkpoint.load_metadata(path)
    {'step': 10, 'config': {'widths': [4, 2]}}
    >>> tmp.cleanup()
    """
    return _read(pathlib.Path(path), payload=False)[0]["metadata"]


# ------------------------------------------------------------------ training directories


def _step_path(directory: str | os.PathLike, step: int) -> pathlib.Path:
    return pathlib.Path(directory) / f"ckpt_{step:08d}.funnet"


def _check_step(step: Any) -> int:
    if isinstance(step, bool) or not hasattr(type(step), "__index__"):
        raise TypeError(f"step must be an int, got {step!r}")
    if operator.index(step) < 0:
        raise ValueError(f"step must be a non-negative int, got {step!r}")
    return operator.index(step)


def _steps(directory: str | os.PathLike) -> list[int]:
    """Sorted steps of the ``ckpt_{step:08d}.funnet`` files in ``directory``."""
    root = pathlib.Path(directory)
    if not root.is_dir():
        return []
    steps = []
    for entry in root.iterdir():
        match = _STEP_FILE.fullmatch(entry.name)
        if match and entry.name == _step_path(root, int(match[1])).name and entry.is_file():
            steps.append(int(match[1]))
    return sorted(steps)


def save_step(directory: str | os.PathLike, step: int, tree: Any, *,
              metadata: dict | None = None, keep: int | None = 3) -> pathlib.Path:
    """Save ``tree`` as ``directory/ckpt_{step:08d}.funnet``, keeping the newest ``keep``.

    Creates ``directory`` if needed, writes atomically with :func:`save`, then deletes
    the checkpoints with the lowest step numbers so that ``keep`` remain (``keep=None``
    keeps all). The file just written is never deleted, even if its step is older than
    ``keep`` others. Temporary files of interrupted saves are ignored.

    >>> import pathlib, tempfile
    >>> import numpy as np
    >>> from funnet import checkpoint
    >>> tmp = tempfile.TemporaryDirectory()
    >>> for step in range(0, 500, 100):
    ...     _ = checkpoint.save_step(tmp.name, step, {"w": np.full(2, step)}, keep=2)
    >>> sorted(p.name for p in pathlib.Path(tmp.name).iterdir())
    ['ckpt_00000300.funnet', 'ckpt_00000400.funnet']
    >>> checkpoint.latest_step(tmp.name)
    400
    >>> tree, meta = checkpoint.load_step(tmp.name)
    >>> tree["w"], meta
    (array([400, 400]), {})
    >>> tmp.cleanup()
    """
    step = _check_step(step)
    keep = check_int(keep, "keep", allow_none=True)
    root = pathlib.Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    written = save(_step_path(root, step), tree, metadata=metadata)
    if keep is not None:
        for old in _steps(root)[:-keep]:
            if old != step:
                _step_path(root, old).unlink(missing_ok=True)
    return written


def latest_step(directory: str | os.PathLike) -> int | None:
    """The highest step saved by :func:`save_step` in ``directory``; None if there is none
    (also when ``directory`` does not exist)."""
    steps = _steps(directory)
    return steps[-1] if steps else None


def load_step(directory: str | os.PathLike, step: int | None = None, *,
              like: Any = None) -> tuple[Any, dict]:
    """``(tree, metadata)`` of checkpoint ``step`` in ``directory`` (None: the latest).

    ``like`` is passed on to :func:`load`. Raises FileNotFoundError naming the directory
    when it holds no checkpoint, or naming the file when ``step`` has none.
    """
    if step is None:
        step = latest_step(directory)
        if step is None:
            raise FileNotFoundError(errno.ENOENT, "no funnet checkpoints (ckpt_*.funnet) in",
                                    str(directory))
    return _load(_step_path(directory, _check_step(step)), like)
