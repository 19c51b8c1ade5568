"""Data sets and input checks: the embedded 8x8 digits, MNIST readers, splits, `check_arrays`.

Everything here is NumPy (no JAX): data is loaded and checked once, before training.
Inputs are rows: `x` has shape `[N, D]`, `y` has shape `[N]` (class labels) or `[N, K]`.
"""

from __future__ import annotations

import contextlib
import gzip
import zipfile
import zlib
from collections.abc import Iterator
from importlib import resources
from os import PathLike
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from numpy.typing import ArrayLike

__all__ = [
    "Dataset",
    "Splits",
    "check_arrays",
    "check_finite",
    "load_digits",
    "load_mnist",
    "load_mnist_idx",
    "shard",
    "split",
]

_IDX_IMAGES = 0x00000803  # unsigned byte, 3 dims: [N, rows, cols]
_IDX_LABELS = 0x00000801  # unsigned byte, 1 dim: [N]


class Dataset(NamedTuple):
    """Inputs `x` `[N, D]` float32 and targets `y` `[N]` int32; `len()` is N, not 2.

    It still unpacks as a pair.

    >>> data = Dataset(np.zeros((5, 3), np.float32), np.arange(5, dtype=np.int32))
    >>> len(data)
    5
    >>> x, y = data
    >>> x.shape, y.tolist()
    ((5, 3), [0, 1, 2, 3, 4])
    """

    x: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return len(self.x)


def _make_dataset(cls: type[Dataset], iterable: object) -> Dataset:
    result = tuple.__new__(cls, iterable)
    if tuple.__len__(result) != 2:
        raise TypeError(f"Dataset takes 2 fields (x, y), got {tuple.__len__(result)}")
    return result


# NamedTuple's own _make (used by _replace) checks len(result) == 2, which __len__ redefines.
Dataset._make = classmethod(_make_dataset)  # type: ignore[method-assign,assignment]


class Splits(NamedTuple):
    """The three disjoint parts returned by `split`."""

    train: Dataset
    valid: Dataset
    test: Dataset


def load_digits() -> Dataset:
    """The 1797 8x8 handwritten digits (UCI optdigits test set, CC BY 4.0), embedded.

    `x = pixels / 16`: float32 `[1797, 64]` in [0, 1], rows are 8x8 images in row-major
    order; `y`: int32 `[1797]` in 0..9. Source and license: `funnet/_data/DIGITS_README.txt`.

    >>> data = load_digits()
    >>> data.x.shape, data.x.dtype, data.y.dtype
    ((1797, 64), dtype('float32'), dtype('int32'))
    >>> float(data.x.max()), np.bincount(data.y).tolist()
    (1.0, [178, 182, 177, 183, 181, 182, 181, 179, 174, 180])
    """
    resource = resources.files("funnet") / "_data" / "digits.npz"
    with resource.open("rb") as f, np.load(f, allow_pickle=False) as npz:
        images, labels = npz["images"], npz["labels"]
    return Dataset(images.astype(np.float32) / 16, labels.astype(np.int32))


def split(
    data: Dataset,
    *,
    seed: int = 0,
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
) -> Splits:
    """Shuffle with `np.random.default_rng(seed)` and cut into train/valid/test by `fractions`.

    Cut points are `round(n * f_train)` and `round(n * (f_train + f_valid))`; the parts are
    disjoint and together hold every sample once. Same seed, same split.

    Args:
        data: the `Dataset` to split (anything with arrays `.x` and `.y` of the same length).
        seed: the seed of the shuffle.
        fractions: `(f_train, f_valid, f_test)`, three positive numbers summing to 1; each
            part must get at least one sample (else `ValueError`).

    >>> parts = split(load_digits(), seed=0)
    >>> [len(p) for p in parts]
    [1258, 269, 270]
    >>> split(load_digits(), fractions=(0.5, 0.5, 0.0))
    Traceback (most recent call last):
    ...
    ValueError: fractions must be three positive numbers summing to 1, got (0.5, 0.5, 0.0)
    """
    f = np.asarray(fractions, dtype=np.float64)
    if f.shape != (3,) or not np.all(f > 0) or not np.isclose(f.sum(), 1.0):
        raise ValueError(
            f"fractions must be three positive numbers summing to 1, got {fractions!r}"
        )
    n = len(data.x)
    if len(data.y) != n:
        raise ValueError(f"data.x has {n} samples but data.y has {len(data.y)}")
    perm = np.random.default_rng(seed).permutation(n)
    cuts = np.round(np.cumsum(f[:2]) * n).astype(int)
    parts = np.split(perm, cuts)
    for name, idx in zip(Splits._fields, parts):
        if len(idx) == 0:
            raise ValueError(f"{n} samples with fractions {fractions!r} leave {name} empty")
    return Splits(*(Dataset(data.x[idx], data.y[idx]) for idx in parts))


def shard(data: Any, index: int, count: int) -> Dataset:
    """Part `index` of `count` contiguous parts of `data`'s rows: one process's own rows
    for `fit(..., local_data=True)`.

    The parts are cut as `np.array_split` cuts (sizes differ by at most one, the larger
    ones first), so together, in order, they are `data` again, and a run over
    `count` processes trains on what one process would.

    Args:
        data: a `Dataset` or an `(x, y)` pair; `x` may be a tuple of arrays with one row
            per sample each (`None` entries stay).
        index: the part to take, in `0..count-1` (a process: `jax.process_index()`).
        count: the number of parts (`jax.process_count()`); at most the number of rows.

    >>> data = Dataset(np.arange(10.0).reshape(5, 2), np.arange(5))
    >>> [shard(data, i, 2).y.tolist() for i in range(2)]
    [[0, 1, 2], [3, 4]]
    >>> shard(data, 2, 2)
    Traceback (most recent call last):
    ...
    ValueError: shard: index 2 must lie in 0..1 (count 2)
    """
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 1:
        raise ValueError(f"shard: count must be a positive integer, got {count!r}")
    if (isinstance(index, bool) or not isinstance(index, (int, np.integer))
            or not 0 <= index < count):
        raise ValueError(f"shard: index {index!r} must lie in 0..{count - 1} (count {count})")
    try:
        x, y = data
    except (TypeError, ValueError):
        raise TypeError("shard: data must be an (x, y) pair or a funnet.data.Dataset") from None
    n = len(y)
    if count > n:
        raise ValueError(f"shard: {n} rows cannot make {count} parts of at least one row")
    start = index * (n // count) + min(index, n % count)  # np.array_split's cut points
    rows = slice(start, start + n // count + (index < n % count))

    def take(a: Any) -> Any:
        if a is None:
            return None
        if isinstance(a, tuple):
            parts = [take(part) for part in a]
            return type(a)(*parts) if hasattr(a, "_fields") else tuple(parts)
        if len(a) != n:
            raise ValueError(f"shard: an input array has {len(a)} rows but y has {n}")
        return a[rows]

    return Dataset(take(x), take(y))


def load_mnist(path: str | PathLike[str], *, split: str = "train") -> Dataset:
    """Load MNIST (or any IDX / npz data shaped like it) from `path`.

    `path` is either
    - a directory holding `{prefix}-images-idx3-ubyte` and `{prefix}-labels-idx1-ubyte`
      (each optionally `.gz`), prefix `train` for `split="train"`, `t10k` for `"test"`; or
    - a `.npz` file with Keras' `x_train`/`y_train`, or `x`/`y`, or `images`/`labels`
      (tried in that order) for `split="train"`, and `x_test`/`y_test` for `split="test"`.

    Returns `x` float32 `[N, rows*cols]` (integer pixels divided by 255; float pixels kept
    as they are) and `y` int32 `[N]`. For an explicit pair of IDX files use `load_mnist_idx`.

    Args:
        path: the directory of IDX files or the ``.npz`` file, as above.
        split: ``"train"`` or ``"test"``.

    >>> load_mnist("no/such/dir")
    Traceback (most recent call last):
    ...
    FileNotFoundError: no/such/dir: no such file or directory
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    path = Path(path)
    if path.is_dir():
        prefix = "train" if split == "train" else "t10k"
        return load_mnist_idx(
            _find(path, f"{prefix}-images-idx3-ubyte"), _find(path, f"{prefix}-labels-idx1-ubyte")
        )
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or directory")
    if path.suffix == ".npz":
        return _load_npz(path, split=split)
    raise ValueError(f"{path}: expected a directory of IDX files or a .npz file")


def load_mnist_idx(images_path: str | PathLike[str], labels_path: str | PathLike[str]) -> Dataset:
    """Load one IDX image file (magic 0x00000803) and its IDX label file (magic 0x00000801).

    IDX: big-endian int32 magic, one big-endian int32 per dimension, then the uint8 payload,
    which must hold exactly the product of the dimensions. Files ending in `.gz` (or starting
    with the gzip magic) are decompressed. Returns `x` float32 `[N, rows*cols]` = pixels / 255
    and `y` int32 `[N]`.

    Args:
        images_path: the IDX image file, `[N, rows, cols]` unsigned bytes.
        labels_path: the IDX label file, `[N]` unsigned bytes: as many labels as images.

    >>> import pathlib, tempfile
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (d / "img").write_bytes(bytes([0, 0, 8, 3, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 2, 0, 255]))
    >>> _ = (d / "lab").write_bytes(bytes([0, 0, 8, 1, 0, 0, 0, 1, 7]))
    >>> data = load_mnist_idx(d / "img", d / "lab")
    >>> data.x.tolist(), data.y.tolist()
    ([[0.0, 1.0]], [7])
    """
    images = _read_idx(Path(images_path), magic=_IDX_IMAGES)
    labels = _read_idx(Path(labels_path), magic=_IDX_LABELS)
    if len(images) != len(labels):
        raise ValueError(
            f"{images_path} has {len(images)} images but {labels_path} has {len(labels)} labels"
        )
    return Dataset(_scale_pixels(images.reshape(len(images), -1)), labels.astype(np.int32))


def check_arrays(
    x: ArrayLike, y: ArrayLike, *, num_classes: int | None = None, name: str = "train"
) -> None:
    """Raise `ValueError` naming `{name}.x` / `{name}.y` if the data cannot be trained on.

    Checks: non-empty; same number of rows; `x` and `y` numeric (or bool) and finite; 1-D `y`
    are class labels: integer-valued and, when `num_classes` is given, in [0, num_classes).

    Args:
        x: the inputs, one row per sample.
        y: the targets, as many rows: class labels `[N]` or rows `[N, ...]`.
        num_classes: the number of classes a 1-D `y` ranges over; `None` (the default):
            the range is not checked.
        name: what the data is called in the messages (`"train"`, `"valid"`).

    >>> check_arrays(np.ones((3, 2)), np.array([0, 1, 2]), num_classes=3)
    >>> check_arrays(np.array([[0.0], [np.nan]]), np.array([0, 1]))
    Traceback (most recent call last):
    ...
    ValueError: train.x: 1 non-finite value (NaN or inf), first at index (1, 0)
    >>> check_arrays(np.ones((2, 2)), np.array([0, 3]), num_classes=3, name="valid")
    Traceback (most recent call last):
    ...
    ValueError: valid.y: 1 label outside [0, 3), first at index 1 (value 3)
    """
    x, y = np.asarray(x), np.asarray(y)
    if x.ndim == 0 or len(x) == 0:
        raise ValueError(f"{name}.x is empty (shape {x.shape})")
    if y.ndim == 0 or len(y) != len(x):
        raise ValueError(
            f"{name}.x has {len(x)} samples but {name}.y has {len(y) if y.ndim else 0} "
            f"(shapes {x.shape} and {y.shape})"
        )
    for arr, label in ((x, f"{name}.x"), (y, f"{name}.y")):
        check_finite(arr, label)
    if y.ndim == 1:
        if np.issubdtype(y.dtype, np.inexact):
            _first_bad(f"{name}.y", y != np.round(y), "non-integer label", "", values=y)
        if num_classes is not None:
            out = (y < 0) | (y >= num_classes)
            _first_bad(f"{name}.y", out, "label", f"outside [0, {num_classes})", values=y)


def check_finite(arr: ArrayLike, label: str) -> None:
    """Raise `ValueError` naming `label` unless `arr` is numeric (or bool) and finite.

    Args:
        arr: the array to check (anything `np.asarray` takes).
        label: what `arr` is called in the message, e.g. `"train.x"`.

    >>> check_finite(np.array([1.0, np.inf]), "train.x[1]")
    Traceback (most recent call last):
    ...
    ValueError: train.x[1]: 1 non-finite value (NaN or inf), first at index 1
    """
    arr = np.asarray(arr)
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
        raise ValueError(f"{label} must be numeric, got dtype {arr.dtype}")
    if np.issubdtype(arr.dtype, np.inexact):
        _first_bad(label, ~np.isfinite(arr), "non-finite value", "(NaN or inf)")


def _first_bad(
    label: str, bad: np.ndarray, what: str, why: str, *, values: np.ndarray | None = None
) -> None:
    """Raise `label: <count> <what>(s) <why>, first at index i [(value v)]` if any `bad`."""
    count = int(np.count_nonzero(bad))
    if count == 0:
        return
    first = tuple(int(i) for i in np.argwhere(bad)[0])
    where = first[0] if len(first) == 1 else first
    msg = f"{label}: {count} {what}{'s' if count > 1 else ''} {why}".rstrip()
    msg += f", first at index {where}"
    if values is not None:
        msg += f" (value {values[first]})"
    raise ValueError(msg)


def _find(directory: Path, name: str) -> Path:
    """`directory/name`, or `directory/name.gz` if only that exists."""
    for candidate in (directory / name, directory / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"{directory}: neither {name} nor {name}.gz found")


def _read_idx(path: Path, *, magic: int) -> np.ndarray:
    """Parse an IDX file of unsigned bytes, checking magic and payload length."""
    raw = path.read_bytes()  # FileNotFoundError names the path
    if path.suffix == ".gz" or raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise ValueError(f"{path}: corrupt gzip: {e}") from e
    if len(raw) < 4:
        raise ValueError(f"{path}: truncated: {len(raw)} bytes, too short for an IDX header")
    found = int.from_bytes(raw[:4], "big")
    if found != magic:
        raise ValueError(f"{path}: bad magic 0x{found:08x}, expected 0x{magic:08x}")
    header = 4 + 4 * (magic & 0xFF)
    if len(raw) < header:
        raise ValueError(f"{path}: truncated: {len(raw)} bytes, header needs {header}")
    dims = [int(d) for d in np.frombuffer(raw, ">u4", count=magic & 0xFF, offset=4)]
    expected, payload = int(np.prod(dims)), len(raw) - header
    if payload != expected:
        problem = "truncated" if payload < expected else "trailing bytes"
        shape = "x".join(map(str, dims))
        kind = "pixels" if magic == _IDX_IMAGES else "labels"
        raise ValueError(
            f"{path}: {problem}: header says {shape} = {expected} bytes of {kind}, "
            f"file has {payload}"
        )
    return np.frombuffer(raw, np.uint8, offset=header).reshape(dims)


_NPZ_KEYS = {"train": (("x_train", "y_train"), ("x", "y"), ("images", "labels")),
             "test": (("x_test", "y_test"),)}


@contextlib.contextmanager
def _npz(path: Path) -> Iterator[Any]:
    """``np.load(path)`` (no pickle) whose read errors name the file and what is wrong."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            yield npz
    except (zipfile.BadZipFile, EOFError, OSError) as e:  # truncated, corrupt, unreadable
        raise ValueError(f"{path}: not a readable .npz archive ({type(e).__name__}: {e})") from None
    except ValueError as e:
        if "pickle" not in str(e):
            raise
        raise ValueError(f"{path}: not a .npz archive of plain arrays (numpy would need "
                         "pickle to read it, which funnet never does)") from None


def _npz_has_split(path: Path, split: str) -> bool:
    with _npz(path) as npz:
        return any(kx in npz.files and ky in npz.files for kx, ky in _NPZ_KEYS[split])


def _load_npz(path: Path, *, split: str) -> Dataset:
    """``x_train``/``y_train``, ``x``/``y`` or ``images``/``labels`` (``split="train"``), or
    ``x_test``/``y_test`` (``split="test"``) from an npz file."""
    with _npz(path) as npz:
        for kx, ky in _NPZ_KEYS[split]:
            if kx in npz.files and ky in npz.files:
                images, labels = npz[kx], npz[ky]
                break
        else:
            wanted = " or ".join(f"{kx}/{ky}" for kx, ky in _NPZ_KEYS[split])
            raise ValueError(
                f"{path}: no {split} arrays: expected {wanted}, found {sorted(npz.files)}"
            )
    if len(images) != len(labels):
        raise ValueError(f"{path}: {kx} has {len(images)} rows but {ky} has {len(labels)}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{path}: {ky} must be integer labels, got dtype {labels.dtype}")
    return Dataset(_scale_pixels(images.reshape(len(images), -1)), labels.astype(np.int32))


def _scale_pixels(images: np.ndarray) -> np.ndarray:
    """Integer pixels 0..255 -> float32 in [0, 1]; float pixels are kept (as float32)."""
    if np.issubdtype(images.dtype, np.integer):
        return images.astype(np.float32) / 255
    return images.astype(np.float32)
