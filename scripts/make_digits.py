"""Regenerate ``funnet/_data/digits.npz`` from scikit-learn's bundled copy of the UCI digits.

Only this script needs scikit-learn; funnet itself never imports it.

    python scripts/make_digits.py [OUT]

Writes ``images`` (uint8, 0..16, shape (1797, 64)) and ``labels`` (uint8, shape (1797,)) with
``np.savez_compressed``. Attribution and format: ``funnet/_data/DIGITS_README.txt``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "funnet" / "_data" / "digits.npz"


def main(out: Path = DEFAULT_OUT) -> None:
    """Read ``sklearn.datasets.load_digits`` and write it, exactly, as uint8 arrays to ``out``."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = digits.data.astype(np.uint8)
    labels = digits.target.astype(np.uint8)
    # The cast must be lossless: pixel counts 0..16, labels 0..9.
    if not (np.array_equal(images, digits.data) and np.array_equal(labels, digits.target)):
        raise ValueError("load_digits returned values that do not fit uint8 exactly")
    if images.shape != (1797, 64) or images.max() > 16 or labels.max() > 9:
        raise ValueError(f"unexpected digits data: images {images.shape}, max {images.max()}")
    np.savez_compressed(out, images=images, labels=labels)
    print(f"wrote {out}: images {images.shape}, class counts {np.bincount(labels).tolist()}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_OUT)
