"""A small CNN against the MLP of ``funnet train`` on the embedded 8×8 digits (docs/conv.md).

The 1797 digits are split 70/15/15 (``funnet.data.split``, one split per seed) and fed to a
convolutional network as images ``[N, 8, 8, 1]``: two blocks ``Conv 3×3 (SAME) →
BatchNorm → ReLU → MaxPool 2×2`` with 16 and 32 channels (8×8 → 4×4 → 2×2), then
``Flatten → Dense(10)``; 6 186 params, against the 26 122 of the 64-128-128-10 ReLU MLP.
Both are built and trained by the very code of ``funnet train`` (``funnet.cli.train_args``,
``setup_training``, ``fit_training``): Adam, learning rate 0.001 with cosine decay, L2 1e-4,
batches of 32, the same number of epochs (the CLI's default 40), gradients by the
hand-derived δ-recursion (``fit(grad="hand")``), on the same split for each seed. So row
``seed S`` of the table is what ``funnet train --model M --grad hand --seed S`` prints.

Figures: the 16 learned 3×3 filters of the first convolution, the test-set confusion
matrix of the CNN and the learning curves of both models (mean over the seeds), all of
seed 0's split for the first two.

Run: ``python examples/cnn_digits.py [--small] [--out DIR]``.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from _plumbing import cli, confusion_matrix, plot_confusion, plt, save_figure

import funnet
from funnet import cli as funnet_cli
from funnet.data import Dataset, Splits

MODELS = ("mlp", "cnn")
LABELS = {"mlp": "MLP 128-128 (funnet train)", "cnn": "CNN 16-32 (funnet train --model cnn)"}


def as_images(splits: Splits) -> Splits:
    """Rows of 64 pixels (row-major 8×8) → images ``[N, 8, 8, 1]``, channels last."""
    return Splits(*(Dataset(p.x.reshape(len(p.x), 8, 8, 1), p.y) for p in splits))


def run(kind: str, seed: int, epochs: int, splits: Splits, extra: tuple[str, ...] = ()) -> dict:
    """Train ``funnet train --model KIND --grad hand --seed SEED --epochs EPOCHS`` on
    ``splits``; return its test accuracy, history, params, state and the model."""
    argv = ["--model", kind, "--grad", "hand", "--seed", str(seed), "--epochs", str(epochs),
            "--no-progress", *extra]
    args = funnet_cli.train_args(argv)
    t0 = time.perf_counter()
    training = funnet_cli.setup_training(args, splits)
    params, state, history = funnet_cli.fit_training(args, training)
    test = training.splits.test  # evaluation mode: BatchNorm uses its running statistics
    pred = np.asarray(funnet.predict(training.model, params, test.x, state=state)).argmax(1)
    return {"accuracy": float(np.mean(pred == test.y)), "history": history,
            "params": params, "state": state, "model": training.model, "pred": pred,
            "y": test.y,
            "seconds": time.perf_counter() - t0, "command": "funnet train " + " ".join(argv[:-1]),
            "n_params": funnet.param_count(params)}


def _plot_filters(W: np.ndarray, out_dir) -> Path:
    """The first convolution's kernels ``W [3, 3, 1, C]``, one 3×3 image per channel."""
    c = W.shape[-1]
    cols = 8
    rows = -(-c // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.2, rows * 1.35 + 0.5), squeeze=False)
    lim = float(np.abs(W).max())
    for k, ax in enumerate(axes.ravel()):
        ax.set_xticks([])
        ax.set_yticks([])
        if k < c:
            ax.imshow(W[:, :, 0, k], cmap="RdBu_r", vmin=-lim, vmax=lim)
            ax.set_title(f"{k}", fontsize=8)
        else:
            ax.axis("off")
    fig.suptitle("learned first-layer 3×3 filters (red +, blue −), seed 0")
    return save_figure(fig, out_dir, "cnn_digits_filters.png")


def _plot_curves(results: dict, out_dir) -> Path:
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for kind, color in zip(MODELS, ("tab:gray", "tab:blue")):
        histories = [r["history"] for r in results[kind]]
        epochs = np.asarray(histories[0].column("epoch"))
        for ax, key in ((left, "loss"), (right, "accuracy")):
            for part, style in (("train", ":"), ("valid", "-")):
                values = np.array([h.column(f"{part}_{key}") for h in histories], float)
                ax.plot(epochs, values.mean(axis=0), style, color=color,
                        label=f"{LABELS[kind].split(' (')[0]}, {part}")
    left.set_yscale("log")
    left.set_ylabel("softmax cross-entropy")
    right.set_ylabel("accuracy")
    right.set_ylim(0.8, 1.0)
    for ax in (left, right):
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    right.legend(loc="lower right", fontsize=8)
    n = len(results[MODELS[0]])
    fig.suptitle(f"learning curves, mean over {n} seeds (split, init, shuffles)")
    return save_figure(fig, out_dir, "cnn_digits_learning_curves.png")


def main(*, small: bool = False, out_dir: str = "examples/out", seeds: int | None = None,
         epochs: int | None = None) -> dict:
    """Train both models on every seed's split; print the tables; draw the three figures.

    Returns per model the test accuracies (one per seed), their mean and sample std, the
    params count and the seconds per run; plus the CNN's seed-0 confusion matrix and filters.
    """
    seeds = seeds if seeds is not None else (2 if small else 5)
    epochs = epochs if epochs is not None else (3 if small else funnet_cli.train_args().epochs)
    digits = funnet.load_digits()
    results: dict[str, list[dict]] = {kind: [] for kind in MODELS}
    for seed in range(seeds):
        rows = funnet.data.split(digits, seed=seed)
        images = as_images(rows)
        for kind in MODELS:
            r = run(kind, seed, epochs, images if kind == "cnn" else rows)
            results[kind].append(r)
            print(f"seed {seed}: {kind} test accuracy {r['accuracy']:.4f} "
                  f"({r['seconds']:.1f} s)  [{r['command']}]")

    print(f"\ntest accuracy per seed ({epochs} epochs, 270 test digits per split)")
    print("seed     " + "  ".join(f"{kind:>7}" for kind in MODELS))
    for seed in range(seeds):
        print(f"{seed:4d}     " + "  ".join(f"{results[k][seed]['accuracy']:7.4f}"
                                             for k in MODELS))
    summary = {}
    print(f"\n{'test accuracy':38} {'params':>7} {'mean':>7} {'std':>7} {'min':>7} "
          f"{'max':>7} {'train':>7} {'s/run':>6}")
    for kind in MODELS:
        acc = np.array([r["accuracy"] for r in results[kind]])
        std = float(acc.std(ddof=1)) if len(acc) > 1 else 0.0
        seconds = float(np.mean([r["seconds"] for r in results[kind]]))
        fitted = float(np.mean([r["history"][-1]["train_accuracy"] for r in results[kind]]))
        summary[kind] = {"accuracies": acc.tolist(), "mean": float(acc.mean()), "std": std,
                         "n_params": results[kind][0]["n_params"], "seconds": seconds,
                         "train_accuracy": fitted}
        print(f"{LABELS[kind]:38} {summary[kind]['n_params']:7d} {acc.mean():7.4f} {std:7.4f} "
              f"{acc.min():7.4f} {acc.max():7.4f} {fitted:7.4f} {seconds:6.1f}")
    print("(train: the last epoch's training accuracy, mean over the seeds)")
    gap = summary["cnn"]["mean"] - summary["mlp"]["mean"]
    print(f"CNN − MLP: {gap:+.4f} mean test accuracy over {seeds} seeds (std: sample, ddof 1)")

    first = results["cnn"][0]
    c = confusion_matrix(first["y"], first["pred"])
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    W = np.asarray(first["params"][0]["W"])
    _plot_filters(W, out_dir)
    plot_confusion(c, f"CNN, seed 0: test confusion matrix (accuracy {first['accuracy']:.1%})",
                   out_dir, "cnn_digits_confusion.png")
    _plot_curves(results, out_dir)
    return {**summary, "epochs": epochs, "seeds": seeds, "confusion": c, "filters": W,
            "cnn_seed0_accuracy": first["accuracy"], "bn_state": first["state"]}


if __name__ == "__main__":
    cli(main, __doc__)
