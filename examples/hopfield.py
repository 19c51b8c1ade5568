"""A Hopfield network stores digits and recalls them from corrupted cues (docs/math.md §9.5).

Patterns ``ξ ∈ {−1, 1}^N`` are stored by Hebb's rule ``W = (1/N) Σ ξ ξᵀ − (P/N) I``
(``funnet.hopfield.hebbian``) and recalled by asynchronous updates ``s_i ← sign(h_i)``, one
unit at a time (``funnet.hopfield.recall``), from a cue with 20 % of its bits flipped.

1. **Digits** (``N = 64``): the mean 8×8 image of each class of ``funnet.load_digits``,
   binarised at its median (half the pixels on, half off), is a prototype. The ``k``
   prototypes that overlap least are stored, each is recalled from 100 cues, and the energy
   ``E = −½ sᵀ W s`` is recorded after every single-unit update: it never increases.
   Digit prototypes are strongly correlated (mean overlap ≈ 0.6 between classes), so such
   a memory holds only two or three of them: with four, not even the stored prototypes
   are fixed points.
2. **Capacity** (``N = 100``, random patterns): the recall rate against the load
   ``k / N``. Random patterns are nearly orthogonal and recall works up to about
   ``0.138 N``; beyond it the network ends in spurious states.

Figures: ``hopfield_digits.png`` (the stored digits, a cue, what was recalled, and the
energy per update of several cues), ``hopfield_capacity.png`` (recall rate and final
overlap against ``k / N``).

Run: ``python examples/hopfield.py [--small] [--out DIR]``.
"""

from __future__ import annotations

import itertools

import jax
import numpy as np
from _plumbing import cli, plt, save_figure

import funnet
from funnet import hopfield

NOISE = 0.2  # the fraction of a cue's bits that are flipped
CAPACITY = 0.138  # Amit, Gutfreund and Sompolinsky (1985)


def prototypes() -> np.ndarray:
    """``[10, 64]``: each class's mean digit image binarised at its median, as ±1."""
    data = funnet.load_digits()
    means = np.stack([data.x[data.y == c].mean(axis=0) for c in range(10)])
    return np.where(means > np.median(means, axis=1, keepdims=True), 1.0, -1.0)


def least_overlapping(patterns: np.ndarray, k: int) -> tuple[int, ...]:
    """The ``k`` rows whose largest pairwise overlap ``|ξ^μ · ξ^ν| / N`` is smallest."""
    overlap = np.abs(patterns @ patterns.T) / patterns.shape[1]
    return min(itertools.combinations(range(len(patterns)), k),
               key=lambda c: max(overlap[i, j] for i, j in itertools.combinations(c, 2)))


def corrupt(rng: np.random.Generator, patterns: np.ndarray, fraction: float) -> np.ndarray:
    """Each row with exactly ``round(fraction · N)`` of its bits flipped, chosen at random."""
    rows, n = patterns.shape
    idx = np.argsort(rng.random((rows, n)), axis=1)[:, : round(fraction * n)]
    cues = patterns.copy()
    np.put_along_axis(cues, idx, -np.take_along_axis(cues, idx, axis=1), axis=1)
    return cues


def recall_from_cues(patterns: np.ndarray, targets: np.ndarray, *, rng, key) -> dict:
    """Store ``patterns``, recall each row of ``targets`` from a corrupted copy."""
    w = hopfield.hebbian(patterns)
    cues = corrupt(rng, targets, NOISE)
    out = hopfield.recall(w, cues, key, max_sweeps=50)
    states = np.asarray(out.states)
    return {
        "cues": cues,
        "states": states,
        "exact": np.all(states == targets, axis=1),
        "overlap": np.mean(states * targets, axis=1),  # m = ξ·s / N
        "converged": np.asarray(out.converged),
        "stored_fixed": np.asarray(hopfield.is_fixed_point(w, patterns)),
    }


def digits_part(k: int, *, ks: list[int], cues_per_digit: int, sweeps: int, rng,
                key) -> dict:
    """Store the ``k`` least-overlapping prototypes: their recall rates and energy
    trajectories; and the recall rate for each number of prototypes in ``ks``."""
    protos = prototypes()
    keys = jax.random.split(key, len(ks) + 1)
    by_k = {}
    for size, sub in zip(ks, keys[1:]):
        classes = least_overlapping(protos, size)
        xi = protos[list(classes)]
        r = recall_from_cues(xi, np.repeat(xi, cues_per_digit, axis=0), rng=rng, key=sub)
        by_k[size] = {"classes": classes,
                      "recall_rate": r["exact"].reshape(size, cues_per_digit).mean(axis=1),
                      "stored_fixed": r["stored_fixed"]}
    stored = by_k[k]
    xi = protos[list(stored["classes"])]
    # the energy after every single-unit update, for three cues per digit
    w = hopfield.hebbian(xi)
    shown = corrupt(rng, np.repeat(xi, 3, axis=0), NOISE)
    states, energies = hopfield.update(w, shown, keys[0], steps=sweeps * xi.shape[1],
                                       energies=True)
    energies = np.asarray(energies)
    overlaps = np.abs(protos @ protos.T)[~np.eye(10, dtype=bool)] / protos.shape[1]
    return {
        "classes": stored["classes"],
        "cues_per_digit": cues_per_digit,
        "patterns": xi,
        "mean_overlap": float(np.mean(overlaps)),
        "recall_rate": dict(zip(stored["classes"], stored["recall_rate"].tolist())),
        "example_cues": shown,
        "example_states": np.asarray(states),
        "energies": energies,
        "energy_nonincreasing": bool(np.all(np.diff(energies, axis=1) <= 0)),
        "by_k": {size: {"classes": v["classes"], "recall_rate": float(v["recall_rate"].mean()),
                        "stored_fixed": v["stored_fixed"].tolist()} for size, v in by_k.items()},
    }


def capacity_part(n: int, ks: list[int], *, sets: int, cues_per_set: int, rng, key) -> dict:
    """Recall rate of random patterns against the load ``k / N``.

    For each ``k``: ``sets`` independent sets of ``k`` random patterns, each recalled from
    ``cues_per_set`` cues (a stored pattern of the set picked at random, corrupted).
    """
    exact, overlap, stable = [], [], []
    for k, sub in zip(ks, jax.random.split(key, len(ks))):
        rows = []
        for one in jax.random.split(sub, sets):
            xi = rng.choice(np.array([-1.0, 1.0]), size=(k, n))
            rows.append(recall_from_cues(xi, xi[rng.integers(0, k, cues_per_set)], rng=rng,
                                         key=one))
        exact.append(float(np.mean([r["exact"] for r in rows])))
        overlap.append(float(np.mean([r["overlap"] for r in rows])))
        stable.append(float(np.mean([r["stored_fixed"] for r in rows])))
    return {"N": n, "k": ks, "load": [k / n for k in ks], "exact": exact, "overlap": overlap,
            "stored_fixed": stable, "cues": sets * cues_per_set}


def _plot_digits(d: dict, out_dir) -> None:
    k, shown = len(d["classes"]), 3
    fig = plt.figure(figsize=(12.5, 2 * k + 0.7))
    grid = fig.add_gridspec(k, 2 * shown + 2, width_ratios=[1] * (2 * shown + 1) + [6])

    def image(row, col, img, title, color="black"):
        ax = fig.add_subplot(grid[row, col])
        ax.imshow(img.reshape(8, 8), cmap="gray_r", vmin=-1, vmax=1)
        ax.set_title(title, fontsize=8, color=color)
        ax.set_xticks([])
        ax.set_yticks([])

    w = np.asarray(hopfield.hebbian(d["patterns"]))
    for row, c in enumerate(d["classes"]):
        xi = d["patterns"][row]
        image(row, 0, xi, f"stored {c}")
        ax = fig.add_subplot(grid[row, -1])
        for j in range(shown):
            i = shown * row + j
            ok = bool(np.all(d["example_states"][i] == xi))
            image(row, 1 + 2 * j, d["example_cues"][i], f"cue {j + 1}", f"C{j}")
            image(row, 2 + 2 * j, d["example_states"][i], "recalled" if ok else "spurious",
                  "tab:green" if ok else "tab:red")
            ax.plot(d["energies"][i], lw=1.3, color=f"C{j}")
        ax.axhline(-0.5 * xi @ w @ xi, color="gray", ls="--", lw=1, label=f"E(stored {c})")
        ax.legend(loc="upper right", fontsize=8)
        ax.set_ylabel("energy E")
        ax.set_title(f"digit {c}: recalled from {d['recall_rate'][c]:.0%} of "
                     f"{d['cues_per_digit']} cues", fontsize=9)
        if row == k - 1:
            ax.set_xlabel("single-unit updates (64 per sweep)")
    fig.suptitle(f"Hopfield network, N = 64: {k} digit prototypes stored by Hebb's rule, "
                 f"cues with {NOISE:.0%} of the bits flipped")
    save_figure(fig, out_dir, "hopfield_digits.png")


def _plot_capacity(c: dict, d: dict, out_dir) -> None:
    fig, ax = plt.subplots(figsize=(8.5, 4.8))
    ax.plot(c["load"], c["exact"], "o-", ms=4, label="exact recall (every bit right)")
    ax.plot(c["load"], c["overlap"], "s-", ms=4, label="mean final overlap ξ·s / N")
    ax.plot(c["load"], c["stored_fixed"], "^-", ms=4, label="stored pattern is a fixed point")
    sizes = sorted(d["by_k"])
    ax.plot([k / 64 for k in sizes], [d["by_k"][k]["recall_rate"] for k in sizes], "D-",
            color="tab:red", label="exact recall of digit prototypes (N = 64)")
    ax.axvline(CAPACITY, color="gray", ls="--", label=f"capacity ≈ {CAPACITY} N")
    ax.set_xlabel("load k / N")
    ax.set_ylim(-0.03, 1.03)
    ax.set_title(f"recall from {NOISE:.0%} flipped bits: random patterns (N = {c['N']}, "
                 f"{c['cues']} cues per k) and digits")
    ax.legend(loc="upper right", fontsize=9)
    save_figure(fig, out_dir, "hopfield_capacity.png")


def main(*, small: bool = False, out_dir: str = "examples/out", k: int = 3,
         seed: int = 0) -> dict:
    """Store and recall digits; measure capacity. Returns the numbers the claims rest on."""
    rng = np.random.default_rng(seed)
    keys = jax.random.split(jax.random.key(seed), 3)
    digits = digits_part(k, ks=sorted({2, 3, 4, 5, k}), cues_per_digit=30 if small else 100,
                         sweeps=3, rng=rng, key=keys[0])
    print(f"digits (N = 64): class prototypes overlap {digits['mean_overlap']:.2f} on "
          f"average; {NOISE:.0%} of the 64 bits of each cue flipped")
    for size, row in digits["by_k"].items():
        fixed = sum(row["stored_fixed"])
        print(f"  k = {size} {row['classes']}: exact recall {row['recall_rate']:.0%}, "
              f"{fixed} of {size} stored prototypes are fixed points")
    print(f"stored k = {k}: energy non-increasing along every trajectory: "
          f"{digits['energy_nonincreasing']}")

    n = 100
    ks = [2, 5, 10, 14, 20, 30, 40] if small else list(range(1, 41))
    cap = capacity_part(n, ks, sets=5 if small else 20, cues_per_set=10, rng=rng,
                        key=keys[1])
    print(f"\ncapacity, N = {n}, random patterns, {cap['cues']} cues per k:")
    print("   k   k/N   exact  overlap  stored fixed")
    for row in zip(cap["k"], cap["load"], cap["exact"], cap["overlap"], cap["stored_fixed"]):
        print("  {:2d}  {:.2f}  {:5.0%}  {:7.3f}  {:6.0%}".format(*row))
    _plot_digits(digits, out_dir)
    _plot_capacity(cap, digits, out_dir)
    return {"digits": digits, "capacity": cap}


if __name__ == "__main__":
    cli(main, __doc__)
