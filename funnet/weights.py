r"""Trained params for sharing: one ``.safetensors`` file, no pickle, readable by other tools.

:func:`save_params` writes a model's params (and its state, if any) to one `safetensors
<https://github.com/huggingface/safetensors>`_ file; :func:`load_params` reads them back,
checked against the file's checksum and, on request, against the params you expect
(``like=``) and the model you will apply them with (``model=``).

**Keys.** Each array is stored under its pytree path, the path's parts joined by ``.``:
a tuple or list index is written in decimal, a dict key as it is. Params keys are bare,
state keys start with ``state.``::

    serial(Dense(4), Tanh, Dense(1))  params ({"W", "b"}, (), {"W", "b"})
        -> "0.W", "0.b", "2.W", "2.b"
    serial(Dense(4), serial(Dense(2), PRelu))
        -> "0.W", "0.b", "1.0.W", "1.0.b", "1.1.slope"
    a model state (BatchNorm at serial[1])  -> "state.1.mean", "state.1.var"

Params that are a single array are stored as ``"params"`` (state: ``"state"``). Two leaves
whose keys would collide (a dict key holding a ``.``) are refused when saving.

**Dtypes.** Every dtype safetensors stores: ``bool``, ``int8``–``int64``, ``uint8``–
``uint64``, ``float16``, ``bfloat16``, ``float32``, ``float64``, ``complex64`` and the
``float8`` types (``float8_e4m3fn``, ``float8_e5m2``, …). ``complex128`` and typed PRNG keys
are refused (store ``jax.random.key_data(key)``).

**Metadata** (safetensors keeps ``str → str``): the ``metadata=`` you pass (``str`` keys and
values, no key starting with ``funnet.``), plus::

    funnet.file            "params"     (marks a file written by save_params)
    funnet.format_version  "1"
    funnet.version         the funnet version that wrote it
    funnet.structure       JSON: the containers of params and state (tuples, lists, dicts
                           with str or int keys, None), each leaf by its key and its kind
                           (an array, a numpy scalar, or a Python bool / int / float)
    funnet.signature       JSON: funnet.model_signature(model, params, state=state), when
                           save_params was given model=
    funnet.sha256          the checksum below, in hex

**Checksum.** ``sha256`` over the canonical JSON of the metadata without ``funnet.sha256``
(``json.dumps(..., sort_keys=True, separators=(",", ":"))``, UTF-8), then for every key in
sorted order the JSON ``[key, dtype, shape]`` (the safetensors dtype code, e.g. ``"F32"``)
followed by the tensor's bytes (C order, little-endian). A flipped bit in the tensors, their
dtypes or shapes, or the metadata fails the check.

**Writes** are atomic and never clobber by accident: the file is written to a hidden
temporary file beside the target (created first, so an unwritable directory is found before
any work), fsynced, and moved into place; an existing file is replaced only with
``overwrite=True``, and only if it is a funnet params file (any other file, e.g. another
tool's weights, is refused even then: delete it yourself). Temporary files left by a
process that was killed while saving are removed by the next save into that directory.

**Reading it elsewhere.** The file is a plain safetensors file:
``safetensors.numpy.load_file(path)`` (or ``safetensors.torch.load_file``) gives a dict from
the keys above to arrays (numpy itself has no ``float8`` types: read those through torch or
``safetensors.safe_open``).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import pathlib
import re
import secrets
import socket
from collections.abc import Sequence
from typing import Any

import jax
import ml_dtypes
import numpy as np
import safetensors
import safetensors.numpy

from .contract import PyTree
from .signature import model_signature, signature_difference

__all__ = ["FORMAT_VERSION", "WeightsError", "load_metadata", "load_params", "save_params"]

#: The version of the layout written in ``funnet.structure`` and ``funnet.sha256``.
FORMAT_VERSION = 1

#: numpy / ml_dtypes dtype name -> safetensors dtype code.
_CODES = {
    "bool": "BOOL", "uint8": "U8", "int8": "I8", "uint16": "U16", "int16": "I16",
    "uint32": "U32", "int32": "I32", "uint64": "U64", "int64": "I64",
    "float16": "F16", "bfloat16": "BF16", "float32": "F32", "float64": "F64",
    "complex64": "C64",
    "float8_e4m3fn": "F8_E4M3", "float8_e5m2": "F8_E5M2",
}
_DTYPES = {code: (np.dtype(name) if name in np.sctypeDict else np.dtype(getattr(ml_dtypes, name)))
           for name, code in _CODES.items()}

_TMP = ".funnet-tmp-"  # .{target name}.funnet-tmp-{host}-{pid}-{token}
_TMP_NAME = re.compile(r"^\..*\.funnet-tmp-(?P<host>\w+)-(?P<pid>\d+)-[0-9a-f]+$")
_MAX_HEADER = 100_000_000  # safetensors' own limit on the header size
_LITTLE = np.little_endian


class WeightsError(ValueError):
    """A params file that cannot be loaded as asked; the message names the file.

    Raised for a file that is not safetensors or not funnet's, a truncated or corrupt file,
    and for params that do not match ``like=`` or ``model=``.
    """


# -- the pytree <-> keyed tensors --------------------------------------------------------------


def _leaf_kind(leaf: Any) -> str | None:
    """How a leaf comes back: ``"array"``, ``"scalar"`` (numpy) or a Python type's name."""
    if isinstance(leaf, np.generic):  # first: np.float64 is a subclass of float
        return "scalar"
    if isinstance(leaf, bool):
        return "bool"
    if isinstance(leaf, int):
        return "int"
    if isinstance(leaf, float):
        return "float"
    if isinstance(leaf, (np.ndarray, jax.Array)):
        return "array"
    return None


def _host_array(leaf: Any, kind: str, key: str) -> np.ndarray:
    """``leaf`` as a C-ordered little-endian numpy array of a dtype safetensors stores."""
    what = f"save_params: leaf {key}"
    if isinstance(leaf, jax.core.Tracer):
        raise TypeError(f"{what} is a traced value: save params outside jax.jit")
    dtype = getattr(leaf, "dtype", None)
    if dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
        raise TypeError(f"{what} is a typed PRNG key ({dtype}); store "
                        "jax.random.key_data(key) instead")
    try:
        arr = np.asarray(leaf) if kind != "int" else np.asarray(leaf, np.int64)
    except OverflowError:
        raise TypeError(f"{what} is the int {leaf}, outside int64") from None
    if arr.dtype.name not in _CODES:
        raise TypeError(f"{what} has dtype {arr.dtype}, which safetensors cannot store "
                        f"(it stores {', '.join(_CODES)})")
    if arr.dtype.byteorder == ">" or (arr.dtype.byteorder == "=" and not _LITTLE):
        arr = arr.astype(arr.dtype.newbyteorder("<"))
    return arr if arr.flags.c_contiguous else arr.copy(order="C")  # 0-d stays 0-d


def _dict_key(key: Any, where: str) -> str | int:
    if isinstance(key, str) or (isinstance(key, (int, np.integer)) and not isinstance(key, bool)):
        return key if isinstance(key, str) else int(key)
    raise TypeError(f"save_params: the dict at {where or '(root)'} has the key {key!r}; "
                    "keys must be str or int")


def _encode(tree: Any, parts: tuple, prefix: str, root: str, out: dict, paths: dict) -> dict:
    """The ``funnet.structure`` node of ``tree``; its leaves go into ``out`` by key."""
    where = ".".join(parts)
    if tree is None:
        return {"type": "none"}
    if type(tree) in (tuple, list):
        return {"type": type(tree).__name__,
                "items": [_encode(t, parts + (str(i),), prefix, root, out, paths)
                          for i, t in enumerate(tree)]}
    if isinstance(tree, dict):
        keys = [_dict_key(k, where) for k in tree]
        return {"type": "dict", "keys": keys,
                "items": [_encode(tree[k], parts + (str(k),), prefix, root, out, paths)
                          for k in tree]}
    kind = _leaf_kind(tree)
    key = prefix + where if parts else root
    if kind is None:
        node = "a NamedTuple" if isinstance(tree, tuple) else type(tree).__name__
        raise TypeError(f"save_params: {key} is {node}; params and state must be dicts, lists, "
                        "tuples and None holding arrays or Python scalars")
    if key in out:
        raise ValueError(f"save_params: two leaves would be stored under the key {key!r} "
                         f"({paths[key]} and {root} {where}); rename a dict key")
    out[key] = _host_array(tree, kind, key)
    paths[key] = f"{root} {where}" if parts else root
    return {"type": "leaf", "key": key, "kind": kind}


def _decode(node: Any, tensors: dict, path: pathlib.Path) -> Any:
    kind = node.get("type") if isinstance(node, dict) else None
    if kind == "none":
        return None
    if kind in ("tuple", "list"):
        items = [_decode(n, tensors, path) for n in node["items"]]
        return tuple(items) if kind == "tuple" else items
    if kind == "dict":
        return {k: _decode(n, tensors, path) for k, n in zip(node["keys"], node["items"])}
    if kind == "leaf" and node.get("key") in tensors:
        arr = tensors[node["key"]]
        if node.get("kind") == "array":
            return arr
        if node.get("kind") == "scalar":
            return arr[()]
        if node.get("kind") in ("bool", "int", "float"):
            return {"bool": bool, "int": int, "float": float}[node["kind"]](arr.item())
    raise WeightsError(f"{path} is corrupt: its funnet.structure names {node!r}, which the "
                       "file does not hold")


def _checksum(metadata: dict, tensors: dict) -> str:
    """sha256 over the metadata (less the checksum) and every tensor, in sorted key order."""
    digest = hashlib.sha256()
    rest = {k: v for k, v in metadata.items() if k != "funnet.sha256"}
    digest.update(json.dumps(rest, sort_keys=True, separators=(",", ":")).encode())
    for key in sorted(tensors):
        code, shape, data = tensors[key]
        digest.update(json.dumps([key, code, list(shape)], separators=(",", ":")).encode())
        digest.update(data)
    return digest.hexdigest()


# -- the file ------------------------------------------------------------------------------------


def _host_tag() -> str:
    return re.sub(r"\W", "_", socket.gethostname()) or "host"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _remove_stale_temporaries(directory: pathlib.Path) -> None:
    """Delete the temporary files of saves on this host whose process no longer exists."""
    host = _host_tag()
    for entry in directory.glob(f".*{_TMP}*"):
        match = _TMP_NAME.match(entry.name)
        if match and match["host"] == host and not _alive(int(match["pid"])):
            entry.unlink(missing_ok=True)


def _open_temporary(path: pathlib.Path) -> tuple[int, pathlib.Path]:
    """Create the temporary file beside ``path`` (the writability check), or a clear error."""
    directory = path.parent
    if not directory.exists():
        raise FileNotFoundError(f"save_params: the directory {directory} of {path} does not "
                                "exist")
    if not directory.is_dir():
        raise NotADirectoryError(f"save_params: {directory} (the directory of {path}) is not "
                                 "a directory")
    tmp = directory / f".{path.name}{_TMP}{_host_tag()}-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except OSError as e:
        raise type(e)(f"save_params: cannot write {path}: the directory {directory} is not "
                      f"writable ({e.strerror})") from None
    return fd, tmp


def _is_funnet_file(path: pathlib.Path) -> bool:
    try:
        return _read_metadata(path).get("funnet.file") == "params"
    except (OSError, WeightsError):
        return False


def _place(tmp: pathlib.Path, path: pathlib.Path, overwrite: bool) -> None:
    """Move the finished ``tmp`` onto ``path``; without ``overwrite`` never replace a file."""
    if overwrite:
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)  # atomic: fails if path exists, even if it appeared just now
    except FileExistsError:
        raise FileExistsError(f"save_params: {path} exists; pass overwrite=True to replace "
                              "it") from None
    except OSError as e:
        if e.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EXDEV,
                           errno.EMLINK, errno.ENOSYS):
            raise
        if path.exists():  # a filesystem without hard links: check, then replace
            raise FileExistsError(f"save_params: {path} exists; pass overwrite=True to "
                                  "replace it") from None
        os.replace(tmp, path)
        return
    tmp.unlink()


def _fsync_directory(directory: pathlib.Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _check_metadata(metadata: dict | None) -> dict[str, str]:
    if metadata is None:
        return {}
    if not isinstance(metadata, dict):
        raise TypeError(f"save_params: metadata must be a dict of str to str, got "
                        f"{type(metadata).__name__}")
    for k, v in metadata.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise TypeError(f"save_params: metadata must map str to str (safetensors stores "
                            f"text; use json.dumps for other values), got {k!r}: "
                            f"{type(v).__name__}")
        if k.startswith("funnet."):
            raise ValueError(f"save_params: metadata key {k!r}: keys starting with 'funnet.' "
                             "are funnet's own")
    return dict(metadata)


def save_params(path: str | os.PathLike, params: PyTree, *, model: Any = None,
                state: PyTree = (), input_shape: Sequence[int] | None = None,
                overwrite: bool = False,
                metadata: dict[str, str] | None = None) -> pathlib.Path:
    r"""Write params (and state) to one safetensors file, atomically; return its path.

    Args:
      path: the file to write (by convention ``*.safetensors``); its directory must exist
        and be writable (checked before anything else is done).
      params: a pytree of dicts, lists, tuples and ``None`` holding arrays (numpy or jax,
        any dtype safetensors stores) or Python scalars; see the module docstring for keys.
      model: the model the params belong to; when given, its signature
        (:func:`funnet.model_signature`) is stored, and ``load_params(..., model=)`` checks
        it.
      state: the model's state (``()`` when it has none), stored under ``state.`` keys.
      input_shape: the model's input shape (with ``model=``), e.g. ``(-1, 2)``. The params
        and state are then checked to be what ``model.init_with_state`` makes for it
        (containers and shapes; any dtype) before anything is written, and the shape is recorded
        in the signature.
      overwrite: replace an existing funnet params file at ``path``. A file that is not
        one is never replaced.
      metadata: your own ``str -> str`` entries (no key starting with ``funnet.``).

    Returns:
      ``path`` as a :class:`pathlib.Path`.

    Raises:
      FileExistsError: ``path`` exists (without ``overwrite``, or it is not a funnet file).
      FileNotFoundError, NotADirectoryError, PermissionError: the directory is missing, is
        not a directory, or cannot be written.
      TypeError: a leaf that safetensors cannot store, or bad ``metadata``.
      ValueError: ``input_shape`` without ``model``, or params that do not fit the model at
        that shape (the message names the first leaf that differs).

    >>> import pathlib, tempfile, jax, funnet
    >>> net = funnet.serial(funnet.Dense(3), funnet.Tanh, funnet.Dense(1))
    >>> _, params = net.init(jax.random.PRNGKey(0), (-1, 2))
    >>> folder = tempfile.TemporaryDirectory()
    >>> path = funnet.save_params(pathlib.Path(folder.name) / "net.safetensors", params,
    ...                           model=net, input_shape=(-1, 2), metadata={"epochs": "40"})
    >>> import safetensors.numpy
    >>> sorted(safetensors.numpy.load_file(path))
    ['0.W', '0.b', '2.W', '2.b']
    >>> folder.cleanup()
    """
    path = pathlib.Path(path)
    user = _check_metadata(metadata)
    if model is not None and getattr(model, "stateful", False) and not jax.tree.leaves(state):
        from .contract import StatefulModelError

        raise StatefulModelError(
            f"save_params: {model.stateful_path()} holds state (e.g. running statistics): "
            f"pass it, save_params(path, params, model=model, state=state), or {path} would "
            "hold a model that cannot be applied")
    signature = None if model is None else _checked_signature(model, params, state,
                                                                 input_shape)
    if model is None and input_shape is not None:
        raise ValueError("save_params: input_shape= describes the model's input; it needs "
                         "model= as well")
    if path.is_dir():
        raise IsADirectoryError(f"save_params: {path} is a directory; give a file name")
    fd, tmp = _open_temporary(path)
    try:
        if path.exists():
            if not overwrite:
                raise FileExistsError(f"save_params: {path} exists; pass overwrite=True to "
                                      "replace it")
            if not _is_funnet_file(path):
                raise FileExistsError(f"save_params: {path} exists and is not a funnet params "
                                      "file; it is not replaced even with overwrite=True "
                                      "(delete it yourself if you mean to)")
        _remove_stale_temporaries(path.parent)
        arrays, paths = {}, {}
        structure = {"params": _encode(params, (), "", "params", arrays, paths),
                     "state": _encode(state, (), "state.", "state", arrays, paths)}
        from . import __version__
        meta = {**user, "funnet.file": "params", "funnet.format_version": str(FORMAT_VERSION),
                "funnet.version": __version__,
                "funnet.structure": json.dumps(structure, separators=(",", ":"))}
        if model is not None:
            meta["funnet.signature"] = json.dumps(signature, separators=(",", ":"))
        meta["funnet.sha256"] = _checksum(meta, {
            k: (_CODES[a.dtype.name], a.shape, a.tobytes()) for k, a in arrays.items()})
        data = safetensors.numpy.save(arrays, metadata=meta)
        with os.fdopen(fd, "wb") as f:
            fd = None
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        _place(tmp, path, overwrite)
        _fsync_directory(path.parent)
    finally:
        if fd is not None:
            os.close(fd)
        tmp.unlink(missing_ok=True)
    return path


# -- reading -------------------------------------------------------------------------------------


def _check_readable(path: pathlib.Path, who: str) -> None:
    if not path.exists():
        raise FileNotFoundError(f"{who}: {path} does not exist")
    if path.is_dir():
        raise IsADirectoryError(f"{who}: {path} is a directory, not a params file")


def _header(prefix: bytes, path: pathlib.Path) -> dict:
    """The safetensors JSON header from the start of the file's bytes."""
    if len(prefix) < 8:
        raise WeightsError(f"{path} is not a safetensors file (only {len(prefix)} bytes)")
    n = int.from_bytes(prefix[:8], "little")
    if n > _MAX_HEADER or len(prefix) < 8 + n:
        raise WeightsError(f"{path} is not a safetensors file, or it is truncated (its header "
                           f"claims {n} bytes)")
    try:
        header = json.loads(bytes(prefix[8:8 + n]).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise WeightsError(f"{path} is not a safetensors file, or it is corrupt (its header is "
                           f"not JSON: {e})") from None
    if not isinstance(header, dict):
        raise WeightsError(f"{path} is not a safetensors file (its header is not a JSON object)")
    return header


def _read_metadata(path: pathlib.Path) -> dict:
    with open(path, "rb") as f:
        start = f.read(8)
        n = int.from_bytes(start, "little") if len(start) == 8 else 0
        prefix = start + (f.read(n) if n <= _MAX_HEADER else b"")
    metadata = _header(prefix, path).get("__metadata__") or {}
    return metadata if isinstance(metadata, dict) else {}


def _funnet_metadata(metadata: dict, path: pathlib.Path) -> None:
    if metadata.get("funnet.file") != "params":
        raise WeightsError(f"{path} is a safetensors file but not a funnet params file (no "
                           "funnet metadata); read it with safetensors.numpy.load_file")
    version = metadata.get("funnet.format_version")
    if version != str(FORMAT_VERSION):
        raise WeightsError(f"{path} has funnet format version {version!r}; this funnet reads "
                           f"version {FORMAT_VERSION} (a newer funnet wrote it?)")


def _read(path: pathlib.Path) -> tuple[dict, dict[str, np.ndarray]]:
    """The metadata and the tensors of a verified funnet params file."""
    data = path.read_bytes()
    try:
        views = safetensors.deserialize(data)
    except safetensors.SafetensorError as e:
        raise WeightsError(f"{path} is not a valid safetensors file (truncated, or another "
                           f"format): {e}") from None
    metadata = _header(data, path).get("__metadata__") or {}
    _funnet_metadata(metadata, path)
    raw = {k: (v["dtype"], tuple(v["shape"]), v["data"]) for k, v in views}
    if metadata.get("funnet.sha256") != _checksum(metadata, raw):
        raise WeightsError(f"{path} is corrupt: its contents do not match the sha256 checksum "
                           "recorded when it was saved")
    tensors = {}
    for key, (code, shape, buf) in raw.items():
        if code not in _DTYPES:
            raise WeightsError(f"{path}: tensor {key} has the safetensors dtype {code}, "
                               "which funnet does not read")
        tensors[key] = np.frombuffer(buf, _DTYPES[code].newbyteorder("<")).reshape(shape)
        if not _LITTLE:
            tensors[key] = tensors[key].astype(_DTYPES[code])
    return metadata, tensors


def _path_text(parts: tuple) -> str:
    return ".".join(parts) or "(root)"


def _like_spec(like: Any) -> tuple[tuple, np.dtype] | None:
    """(shape, dtype) of a ``like`` leaf, or ``None`` when it is not an array-like leaf."""
    if hasattr(like, "shape") and hasattr(like, "dtype"):
        return tuple(like.shape), like.dtype
    if isinstance(like, (bool, int, float)):
        return (), np.asarray(like).dtype
    return None


def _like_leaf(arr: Any, like: Any) -> Any:
    """The file's leaf as the kind of ``like``'s leaf (jax array, numpy, Python scalar)."""
    if isinstance(like, (jax.Array, jax.ShapeDtypeStruct)):
        sharding = getattr(like, "sharding", None)
        return jax.device_put(np.asarray(arr), sharding)
    if isinstance(like, np.generic):
        return np.asarray(arr)[()]
    if isinstance(like, (bool, int, float)):
        return type(like)(np.asarray(arr).item())
    return np.asarray(arr)


def _container(value: Any) -> str:
    if value is None:
        return "None"
    if type(value) in (tuple, list, dict):
        return f"a {type(value).__name__} of {len(value)}"
    return "an array" if _like_spec(value) is not None else type(value).__name__


def _match(tree: Any, like: Any, parts: tuple, path: pathlib.Path, where: str) -> Any:
    """``tree`` (from the file) checked leaf by leaf against ``like``; leaves as ``like``'s."""
    at = f"{path}: {where} {_path_text(parts)}"
    if isinstance(tree, dict) and isinstance(like, dict):
        missing = [k for k in tree if k not in like]
        if missing:
            raise WeightsError(f"{at}: the file has the key {missing[0]!r}, like= has keys "
                               f"{list(like)}")
        extra = [k for k in like if k not in tree]
        if extra:
            raise WeightsError(f"{at}: like= has the key {extra[0]!r}, the file has keys "
                               f"{list(tree)}")
        return {k: _match(v, like[k], parts + (str(k),), path, where) for k, v in tree.items()}
    if tree is None or type(tree) in (tuple, list, dict):
        if type(like) is not type(tree) or (tree is not None and len(like) != len(tree)):
            raise WeightsError(f"{at} is {_container(tree)} in the file, but like= has "
                               f"{_container(like)}")
        if tree is None:
            return None
        items = [_match(v, s, parts + (str(i),), path, where)
                 for i, (v, s) in enumerate(zip(tree, like))]
        return tuple(items) if isinstance(tree, tuple) else items
    spec = _like_spec(like)
    if spec is None:
        raise WeightsError(f"{at} is an array in the file, but like= has {_container(like)}")
    shape, dtype = np.shape(tree), np.asarray(tree).dtype
    if shape != spec[0] or dtype != spec[1]:
        raise WeightsError(f"{at} has shape {shape} {dtype} in the file, but like= expects "
                           f"{spec[0]} {np.dtype(spec[1])}")
    return _like_leaf(tree, like)


def _as_given(difference: str) -> str:
    """A signature difference worded for params about to be saved (not already saved)."""
    return (difference.replace(": saved ", ": given ").replace("the saved model", "the params")
            .replace(" saved ", " given "))


def _checked_signature(model: Any, params: PyTree, state: PyTree,
                       input_shape: Sequence[int] | None) -> dict:
    """The signature of ``params`` for ``model``; with ``input_shape``, checked against the
    params and state ``model.init_with_state`` makes for that shape."""
    given = model_signature(model, params, state=state, input_shape=input_shape)
    if input_shape is None:
        return given
    from .contract import as_layer

    layer = as_layer(model)
    try:
        _, *expected = jax.eval_shape(lambda k: layer.init_with_state(k, tuple(input_shape)),
                                      jax.random.PRNGKey(0))
    except (ValueError, TypeError) as e:  # the model's own check of the shape (LayerError)
        raise ValueError(f"save_params: {layer.name} cannot take input_shape "
                         f"{tuple(input_shape)}: {e}") from None
    try:  # dtypes are the user's choice (float16 for sharing, float64): compare shapes
        expected = jax.tree.map(lambda e, g: jax.ShapeDtypeStruct(
            e.shape, g.dtype if hasattr(g, "dtype") else np.result_type(g)),
                                tuple(expected), (params, state))
    except (ValueError, TypeError):
        pass  # another structure: the difference below names where
    made = model_signature(model, expected[0], state=expected[1], input_shape=input_shape)
    difference = signature_difference(given, made)
    if difference:
        raise ValueError(f"save_params: the params do not fit {layer.name} at input shape "
                         f"{tuple(input_shape)}: {_as_given(difference)}")
    return given


def load_params(path: str | os.PathLike, *, like: Any = None, model: Any = None,
                with_state: bool = False) -> Any:
    r"""Read params (and, with ``with_state``, the state) written by :func:`save_params`.

    The file is checked before anything is returned: that it is a complete safetensors file
    written by funnet, and that its sha256 checksum matches its contents.

    Args:
      path: the file.
      like: what you expect back, e.g. freshly initialised params or
        ``jax.eval_shape`` of them (``(params, state)`` with ``with_state``). Containers,
        keys, shapes and dtypes must match exactly (nothing is cast); each leaf comes back
        as the kind of ``like``'s leaf (a jax array on ``like``'s devices, a numpy array or
        scalar, a Python scalar). Without ``like``: numpy arrays and plain containers.
      model: the model the params are for. The file must record a signature (saved with
        ``model=``), and the two must agree (:func:`funnet.signature.signature_difference`:
        layer names with their options, nesting, params and state paths): loading a
        ``Tanh`` network's params into a ``Relu`` network is refused.
      with_state: return ``(params, state)`` instead of ``params``.

    Returns:
      ``params``, or ``(params, state)`` with ``with_state``.

    Raises:
      FileNotFoundError: no file at ``path``.
      WeightsError: not a safetensors file, not a funnet params file, truncated, corrupt
        (checksum), or not matching ``like`` / ``model``; the message names the file and
        the first leaf or layer that differs.

    >>> import pathlib, tempfile, jax, funnet
    >>> net = funnet.serial(funnet.Dense(3), funnet.Tanh, funnet.Dense(1))
    >>> _, params = net.init(jax.random.PRNGKey(0), (-1, 2))
    >>> folder = tempfile.TemporaryDirectory()
    >>> path = funnet.save_params(pathlib.Path(folder.name) / "net.safetensors", params,
    ...                           model=net)
    >>> again = funnet.load_params(path, like=params, model=net)
    >>> again[0]["W"].shape, again[1]
    ((2, 3), ())
    >>> relu_net = funnet.serial(funnet.Dense(3), funnet.Relu, funnet.Dense(1))
    >>> try:
    ...     funnet.load_params(path, model=relu_net)
    ... except funnet.weights.WeightsError as e:
    ...     print(str(e).replace(str(path), "net.safetensors"))
    net.safetensors holds params of another model: serial[1]: saved Tanh, this model has Relu
    >>> folder.cleanup()
    """
    path = pathlib.Path(path)
    _check_readable(path, "load_params")
    metadata, tensors = _read(path)
    try:
        structure = json.loads(metadata["funnet.structure"])
        params = _decode(structure["params"], tensors, path)
        state = _decode(structure["state"], tensors, path)
    except (KeyError, TypeError, json.JSONDecodeError) as e:
        raise WeightsError(f"{path} is corrupt: its funnet.structure cannot be read "
                           f"({type(e).__name__}: {e})") from None
    if model is not None:
        _check_model(metadata, model, params, state, path)
    if like is not None:
        if with_state:
            if not isinstance(like, tuple) or len(like) != 2:
                raise TypeError("load_params: with with_state=True, like= is a pair "
                                "(params, state)")
            params = _match(params, like[0], (), path, "params")
            state = _match(state, like[1], (), path, "state")
        else:
            params = _match(params, like, (), path, "params")
    return (params, state) if with_state else params


def _check_model(metadata: dict, model: Any, params: Any, state: Any,
                 path: pathlib.Path) -> None:
    if "funnet.signature" not in metadata:
        raise WeightsError(f"{path} records no model signature (it was saved without "
                           "model=), so it cannot be checked against a model; load it with "
                           "like= instead")
    try:
        saved = json.loads(metadata["funnet.signature"])
    except json.JSONDecodeError as e:
        raise WeightsError(f"{path} is corrupt: its funnet.signature is not JSON ({e})") from None
    input_shape = saved.get("input_shape") if isinstance(saved, dict) else None
    current = model_signature(model, params, state=state, input_shape=input_shape)
    difference = signature_difference(saved, current)
    if difference:
        raise WeightsError(f"{path} holds params of another model: {difference}")


def load_metadata(path: str | os.PathLike) -> dict[str, str]:
    r"""The metadata of a params file: yours and funnet's ``funnet.*`` entries.

    Only the header is read (the tensors are not, and the checksum is not verified: use
    :func:`load_params` for that).

    Args:
        path: the ``.safetensors`` file written by :func:`save_params`.

    >>> import pathlib, tempfile, numpy as np, funnet
    >>> folder = tempfile.TemporaryDirectory()
    >>> path = funnet.save_params(pathlib.Path(folder.name) / "w.safetensors",
    ...                           {"W": np.ones((2, 2))}, metadata={"epochs": "40"})
    >>> meta = funnet.weights.load_metadata(path)
    >>> meta["epochs"], meta["funnet.file"]
    ('40', 'params')
    >>> folder.cleanup()
    """
    path = pathlib.Path(path)
    _check_readable(path, "load_metadata")
    metadata = _read_metadata(path)
    _funnet_metadata(metadata, path)
    return dict(metadata)
