"""Tests for funnet.data: embedded digits, splits, MNIST readers, check_arrays."""

from __future__ import annotations

import doctest
import gzip
import hashlib
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import funnet.data
from funnet.data import Dataset, check_arrays, load_digits, load_mnist, load_mnist_idx, split

ROOT = Path(__file__).resolve().parents[1]


def test_doctests():
    result = doctest.testmod(funnet.data)
    assert result.attempted > 0 and result.failed == 0


# --- digits -------------------------------------------------------------------------------


def test_digits_shape_dtype_range():
    data = load_digits()
    assert data.x.shape == (1797, 64) and data.x.dtype == np.float32
    assert data.y.shape == (1797,) and data.y.dtype == np.int32
    assert data.x.min() == 0.0 and data.x.max() == 1.0
    np.testing.assert_array_equal(data.x * 16, np.round(data.x * 16))  # 17 grey levels


def test_digits_are_the_uci_digits():
    data = load_digits()
    # Per-class counts and first image of sklearn's load_digits (UCI optdigits.tes).
    assert np.bincount(data.y).tolist() == [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]
    assert data.y[:20].tolist() == list(range(10)) * 2
    first = [
        [0, 0, 5, 13, 9, 1, 0, 0],
        [0, 0, 13, 15, 10, 15, 5, 0],
        [0, 3, 15, 2, 0, 11, 8, 0],
        [0, 4, 12, 0, 0, 8, 8, 0],
        [0, 5, 8, 0, 0, 9, 8, 0],
        [0, 4, 11, 0, 1, 12, 7, 0],
        [0, 2, 14, 5, 10, 12, 0, 0],
        [0, 0, 6, 13, 10, 0, 0, 0],
    ]
    np.testing.assert_array_equal(data.x[0].reshape(8, 8) * 16, first)
    # Digest of the whole file content, as written by scripts/make_digits.py.
    images, labels = (data.x * 16).astype(np.uint8), data.y.astype(np.uint8)
    digest = hashlib.sha256(images.tobytes() + labels.tobytes()).hexdigest()
    assert digest == "87ff0c9e40dc7e2c0e34e7257799c2e3f3aec1a016363bb11cad869ec428a826"


def test_digits_do_not_import_sklearn():
    code = "import sys, funnet.data; funnet.data.load_digits(); print('sklearn' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "False"


def test_dataset_len_unpack_replace():
    data = Dataset(np.zeros((5, 3), np.float32), np.arange(5, dtype=np.int32))
    assert len(data) == 5
    x, y = data
    assert x is data.x and y is data.y
    assert len(data._replace(y=y[:2]).y) == 2
    with pytest.raises(TypeError, match="2 fields"):
        Dataset._make([x])


# --- split --------------------------------------------------------------------------------


def _indexed(n: int) -> Dataset:
    """Row i has x = [i, i] and y = 2 i, so rows can be traced through a split."""
    ids = np.arange(n)
    return Dataset(np.stack([ids, ids], axis=1).astype(np.float32), (2 * ids).astype(np.int32))


def test_split_sizes_disjoint_and_complete():
    parts = split(_indexed(1797), seed=3)
    assert [len(p) for p in parts] == [1258, 269, 270]
    ids = np.concatenate([p.x[:, 0] for p in parts]).astype(int)
    np.testing.assert_array_equal(np.sort(ids), np.arange(1797))  # each row exactly once
    for part in parts:  # x and y stay paired
        np.testing.assert_array_equal(part.y, 2 * part.x[:, 0])
    assert not np.array_equal(parts.train.x[:, 0], np.sort(parts.train.x[:, 0]))  # shuffled


def test_split_custom_fractions():
    assert [len(p) for p in split(_indexed(100), fractions=(0.5, 0.25, 0.25))] == [50, 25, 25]


def test_split_is_deterministic_by_seed():
    data = _indexed(200)
    a, b, c = split(data, seed=7), split(data, seed=7), split(data, seed=8)
    for pa, pb in zip(a, b):
        np.testing.assert_array_equal(pa.x, pb.x)
        np.testing.assert_array_equal(pa.y, pb.y)
    assert not np.array_equal(a.train.x, c.train.x)


@pytest.mark.parametrize(
    "fractions",
    [(0.5, 0.5, 0.0), (0.7, 0.2, 0.2), (1.2, -0.1, -0.1), (0.5, 0.5), (np.nan, 0.5, 0.5)],
)
def test_split_rejects_bad_fractions(fractions):
    with pytest.raises(ValueError, match="fractions must be three positive numbers summing to 1"):
        split(_indexed(100), fractions=fractions)


def test_split_rejects_empty_part_and_length_mismatch():
    with pytest.raises(ValueError, match="2 samples with fractions .* leave test empty"):
        split(_indexed(2))
    with pytest.raises(ValueError, match="data.x has 3 samples but data.y has 2"):
        split(Dataset(np.zeros((3, 1)), np.zeros(2)))


# --- shard --------------------------------------------------------------------------------


@pytest.mark.parametrize("n, count", [(7, 3), (6, 3), (5, 5), (1258, 2), (11, 4)])
def test_shard_cuts_where_array_split_does_and_the_parts_make_the_data(n, count):
    # found by the mutation review (h-mut16): nothing failed with count == n refused, or
    # with the cut points of np.array_split moved (the larger parts last)
    data = _indexed(n)
    parts = [funnet.data.shard(data, i, count) for i in range(count)]
    assert [len(p.y) for p in parts] == [len(a) for a in np.array_split(np.arange(n), count)]
    np.testing.assert_array_equal(np.concatenate([p.x for p in parts]), data.x)
    np.testing.assert_array_equal(np.concatenate([p.y for p in parts]), data.y)
    assert isinstance(parts[0], Dataset)


def test_shard_takes_the_rows_of_every_input_and_keeps_none_and_named_tuples():
    # found by the mutation review (h-mut16): nothing failed when None inputs, named tuples
    # of inputs or inputs of another length than y were mishandled
    from collections import namedtuple

    Inputs = namedtuple("Inputs", "ids mask")
    ids, mask = np.arange(10).reshape(5, 2), np.arange(5) % 2 == 0
    part = funnet.data.shard(((ids, None, Inputs(ids, mask)), np.arange(5)), 1, 2)
    first, none, named = part.x
    assert none is None and type(named) is Inputs and type(part.x) is tuple
    np.testing.assert_array_equal(first, ids[3:])
    np.testing.assert_array_equal(named.mask, mask[3:])
    np.testing.assert_array_equal(part.y, [3, 4])
    with pytest.raises(ValueError, match="shard: an input array has 4 rows but y has 5"):
        funnet.data.shard((np.zeros((4, 2)), np.arange(5)), 0, 2)
    with pytest.raises(ValueError, match="5 rows cannot make 6 parts"):
        funnet.data.shard((np.zeros((5, 2)), np.arange(5)), 0, 6)


@pytest.mark.parametrize("index, count, message", [
    (0, 0, "count must be a positive integer, got 0"),
    (0, True, "count must be a positive integer, got True"),
    (0, 2.0, "count must be a positive integer, got 2.0"),
    (-1, 2, "index -1 must lie in 0..1"),
    (True, 2, "index True must lie in 0..1"),
])
def test_shard_rejects_bad_index_and_count(index, count, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        funnet.data.shard(_indexed(5), index, count)
    assert len(funnet.data.shard(_indexed(5), np.int64(1), np.int64(2)).y) == 2


# --- MNIST --------------------------------------------------------------------------------

IMAGES = (np.arange(30).reshape(5, 3, 2) * 8).astype(np.uint8)  # 5 images of 3x2 pixels
LABELS = np.array([3, 1, 4, 1, 5], np.uint8)
IMG, LAB = "train-images-idx3-ubyte", "train-labels-idx1-ubyte"


def _idx(arr: np.ndarray, magic: int) -> bytes:
    dims = b"".join(d.to_bytes(4, "big") for d in arr.shape)
    return magic.to_bytes(4, "big") + dims + arr.astype(np.uint8).tobytes()


def _write_mnist(d: Path, *, prefix: str = "train", gz: bool = False, labels=LABELS) -> None:
    for name, raw in (
        (f"{prefix}-images-idx3-ubyte", _idx(IMAGES, 0x803)),
        (f"{prefix}-labels-idx1-ubyte", _idx(labels, 0x801)),
    ):
        if gz:
            (d / f"{name}.gz").write_bytes(gzip.compress(raw))
        else:
            (d / name).write_bytes(raw)


def _assert_is_tiny_mnist(data: Dataset) -> None:
    assert data.x.shape == (5, 6) and data.x.dtype == np.float32
    assert data.y.dtype == np.int32
    np.testing.assert_array_equal(data.x, IMAGES.reshape(5, 6).astype(np.float32) / 255)
    np.testing.assert_array_equal(np.round(data.x * 255).reshape(5, 3, 2), IMAGES)
    np.testing.assert_array_equal(data.y, LABELS)


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzip"])
@pytest.mark.parametrize("which, prefix", [("train", "train"), ("test", "t10k")])
def test_load_mnist_directory_round_trip(tmp_path, gz, which, prefix):
    _write_mnist(tmp_path, prefix=prefix, gz=gz)
    _assert_is_tiny_mnist(load_mnist(tmp_path, split=which))


def test_load_mnist_idx_pair_and_gzip_sniffing(tmp_path):
    (tmp_path / "img.bin").write_bytes(gzip.compress(_idx(IMAGES, 0x803)))  # gzip, no .gz
    (tmp_path / "lab.bin").write_bytes(_idx(LABELS, 0x801))
    _assert_is_tiny_mnist(load_mnist_idx(tmp_path / "img.bin", tmp_path / "lab.bin"))


def test_truncated_message_matches_header(tmp_path):
    header = b"".join(v.to_bytes(4, "big") for v in (0x803, 60000, 28, 28))
    (tmp_path / f"{IMG}.gz").write_bytes(gzip.compress(header + bytes(1000)))
    (tmp_path / LAB).write_bytes(_idx(LABELS, 0x801))
    msg = f"{IMG}.gz: truncated: header says 60000x28x28 = 47040000 bytes of pixels, file has 1000"
    with pytest.raises(ValueError, match=re.escape(msg)):
        load_mnist(tmp_path)


def _rewrite(name: str, change):
    """A corruption: replace file `name` in the directory by `change(its bytes)`."""

    def corrupt(d: Path) -> None:
        (d / name).write_bytes(change((d / name).read_bytes()))

    return corrupt


def _as_gz(name: str, change):
    """A corruption: replace file `name` by `name.gz` holding `change(gzip of its bytes)`."""

    def corrupt(d: Path) -> None:
        raw = (d / name).read_bytes()
        (d / name).unlink()
        (d / f"{name}.gz").write_bytes(change(gzip.compress(raw)))

    return corrupt


def _flip_middle(b: bytes) -> bytes:
    mid = len(b) // 2
    return b[: mid - 4] + bytes(x ^ 0xFF for x in b[mid - 4 : mid + 4]) + b[mid + 4 :]


CORRUPTIONS = [
    # (corrupt(dir), error type, fragments the message must contain)
    pytest.param(lambda d: (d / IMG).unlink(), FileNotFoundError, [IMG], id="missing-images"),
    pytest.param(lambda d: (d / LAB).unlink(), FileNotFoundError, [LAB], id="missing-labels"),
    pytest.param(
        _rewrite(IMG, lambda b: b[:-3]),
        ValueError,
        [IMG, "truncated: header says 5x3x2 = 30 bytes of pixels, file has 27"],
        id="truncated-pixels",
    ),
    pytest.param(
        _rewrite(LAB, lambda b: b[:-1]),
        ValueError,
        [LAB, "truncated: header says 5 = 5 bytes of labels, file has 4"],
        id="truncated-labels",
    ),
    pytest.param(
        _rewrite(IMG, lambda b: b[:10]),
        ValueError,
        [IMG, "truncated: 10 bytes, header needs 16"],
        id="truncated-header",
    ),
    pytest.param(_rewrite(IMG, lambda b: b""), ValueError, [IMG, "truncated"], id="empty-file"),
    pytest.param(
        _rewrite(IMG, lambda b: b + b"\0"), ValueError, [IMG, "trailing bytes"], id="trailing"
    ),
    pytest.param(
        _rewrite(LAB, lambda b: b"\0\0\x08\x02" + b[4:]),
        ValueError,
        [LAB, "bad magic 0x00000802, expected 0x00000801"],
        id="bad-magic",
    ),
    pytest.param(
        _rewrite(IMG, lambda b: _idx(LABELS, 0x801)),
        ValueError,
        [IMG, "bad magic 0x00000801, expected 0x00000803"],
        id="labels-as-images",
    ),
    pytest.param(
        _as_gz(IMG, lambda b: b[:-10]), ValueError, [f"{IMG}.gz", "corrupt gzip"], id="gz-cut"
    ),
    pytest.param(
        _as_gz(IMG, _flip_middle), ValueError, [f"{IMG}.gz", "corrupt gzip"], id="gz-garbled"
    ),
    pytest.param(
        _as_gz(LAB, lambda b: _idx(LABELS, 0x801)),  # named .gz, not gzip
        ValueError,
        [f"{LAB}.gz", "corrupt gzip"],
        id="gz-not-gzip",
    ),
    pytest.param(
        _rewrite(LAB, lambda b: _idx(LABELS[:4], 0x801)),
        ValueError,
        [IMG, "has 5 images but", LAB, "has 4 labels"],
        id="count-mismatch",
    ),
]


@pytest.mark.parametrize("corrupt, error, fragments", CORRUPTIONS)
def test_load_mnist_corrupt(tmp_path, corrupt, error, fragments):
    _write_mnist(tmp_path)
    corrupt(tmp_path)
    with pytest.raises(error) as info:
        load_mnist(tmp_path)
    for fragment in fragments:
        assert fragment in str(info.value)


def test_load_mnist_bad_path_and_split(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.npz"):
        load_mnist(tmp_path / "nope.npz")
    (tmp_path / "data.csv").write_text("1,2\n")
    with pytest.raises(ValueError, match=r"data\.csv: expected a directory of IDX files or"):
        load_mnist(tmp_path / "data.csv")
    with pytest.raises(ValueError, match="split must be 'train' or 'test', got 'valid'"):
        load_mnist(tmp_path, split="valid")


@pytest.mark.parametrize(
    "kx, ky, which",
    [("x", "y", "train"), ("images", "labels", "train"), ("x_test", "y_test", "test")],
)
def test_load_mnist_npz(tmp_path, kx, ky, which):
    np.savez(tmp_path / "mnist.npz", **{kx: IMAGES, ky: LABELS})
    _assert_is_tiny_mnist(load_mnist(tmp_path / "mnist.npz", split=which))


def test_load_mnist_npz_float_pixels_kept(tmp_path):
    x = np.array([[0.25, 0.5]], np.float64)
    np.savez(tmp_path / "f.npz", x=x, y=np.array([2]))
    data = load_mnist(tmp_path / "f.npz")
    assert data.x.dtype == np.float32 and data.x.tolist() == [[0.25, 0.5]]


@pytest.mark.parametrize(
    "arrays, fragment",
    [
        ({"a": IMAGES, "b": LABELS},
         "no train arrays: expected x_train/y_train or x/y or images/labels, found ['a', 'b']"),
        ({"x": IMAGES, "y": LABELS[:4]}, "x has 5 rows but y has 4"),
        ({"x": IMAGES, "y": LABELS + 0.5}, "y must be integer labels, got dtype float64"),
    ],
    ids=["no-keys", "length-mismatch", "float-labels"],
)
def test_load_mnist_npz_errors(tmp_path, arrays, fragment):
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ValueError, match=re.escape(f"bad.npz: {fragment}")):
        load_mnist(tmp_path / "bad.npz")


# --- check_arrays -------------------------------------------------------------------------

X = np.arange(12, dtype=np.float32).reshape(4, 3)
X_BAD = X.copy()
X_BAD[2, 1], X_BAD[3, 0] = np.nan, np.inf


@pytest.mark.parametrize(
    "x, y, kwargs",
    [
        (X, np.array([0, 1, 2, 0]), {"num_classes": 3}),
        (X, np.array([0.0, 1.0, 2.0, 0.0]), {"num_classes": 3}),  # integer-valued floats
        (X, np.array([True, False, True, True]), {"num_classes": 2}),
        (X, np.eye(4, 2), {}),  # 2-D targets: no label checks
        (X.astype(np.uint8), np.array([-5, 1, 2, 9]), {}),  # no num_classes: no range check
    ],
)
def test_check_arrays_accepts(x, y, kwargs):
    check_arrays(x, y, **kwargs)


@pytest.mark.parametrize(
    "x, y, kwargs, message",
    [
        (X_BAD, np.zeros(4, int), {},
         "train.x: 2 non-finite values (NaN or inf), first at index (2, 1)"),
        (X, np.array([0, 1, 5, 1]), {"num_classes": 3},
         "train.y: 1 label outside [0, 3), first at index 2 (value 5)"),
        (X, np.array([0, -1, 3, 1]), {"num_classes": 3, "name": "valid"},
         "valid.y: 2 labels outside [0, 3), first at index 1 (value -1)"),
        (X, np.array([0.0, 1.5, 2.0, 1.0]), {"num_classes": 3},
         "train.y: 1 non-integer label, first at index 1 (value 1.5)"),
        (X, np.array([0.0, np.nan, 2.0, 1.0]), {},
         "train.y: 1 non-finite value (NaN or inf), first at index 1"),
        (X, np.zeros(3, int), {},
         "train.x has 4 samples but train.y has 3 (shapes (4, 3) and (3,))"),
        (np.zeros((0, 3)), np.zeros(0, int), {"name": "test"}, "test.x is empty (shape (0, 3))"),
        (np.array([["a"]] * 4), np.zeros(4, int), {}, "train.x must be numeric, got dtype <U1"),
    ],
    ids=["nan-x", "label-high", "label-negative", "non-integer", "nan-y", "lengths", "empty",
         "strings"],
)  # fmt: skip
def test_check_arrays_rejects(x, y, kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        check_arrays(x, y, **kwargs)


def test_load_mnist_npz_test_split_never_falls_back_to_the_training_arrays(tmp_path):
    np.savez(tmp_path / "both.npz", x=IMAGES, y=LABELS, x_test=IMAGES[:2], y_test=LABELS[:2])
    assert len(load_mnist(tmp_path / "both.npz", split="train")) == 5
    test = load_mnist(tmp_path / "both.npz", split="test")
    assert len(test) == 2 and test.y.tolist() == LABELS[:2].tolist()
    np.savez(tmp_path / "train_only.npz", x=IMAGES, y=LABELS)
    with pytest.raises(ValueError, match=r"train_only.npz: no test arrays: expected "
                                         r"x_test/y_test, found \['x', 'y'\]"):
        load_mnist(tmp_path / "train_only.npz", split="test")


@pytest.mark.parametrize("damage, fragment", [
    (lambda raw: raw[: len(raw) // 2], "not a readable .npz archive"),  # partial download
    (lambda raw: b"hello, not a zip file at all", "not a .npz archive of plain arrays"),
], ids=["truncated", "not-a-zip"])
def test_load_mnist_npz_unreadable_file_names_it(tmp_path, damage, fragment):
    np.savez(tmp_path / "good.npz", x=IMAGES, y=LABELS)
    (tmp_path / "bad.npz").write_bytes(damage((tmp_path / "good.npz").read_bytes()))
    with pytest.raises(ValueError, match=re.escape(f"bad.npz: {fragment}")) as info:
        load_mnist(tmp_path / "bad.npz")
    assert "allow_pickle" not in str(info.value)
