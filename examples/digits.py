"""The whole training story on the embedded 8×8 digits (docs/math.md §4–§6).

1797 handwritten digits (``funnet.load_digits``) are split 70/15/15 into train, validation
and test sets (``funnet.data.split``). A 64-64-10 ReLU network with a softmax cross-entropy
loss and a little L2 weight decay is trained with mini-batch Adam by ``funnet.fit``, which
stops early once the validation loss has not improved for ``patience`` epochs and returns
the params of the best epoch. Then, on the test set, which training never saw: the
accuracy, the confusion matrix, and the misclassified images.

Figures: learning curves (``History.plot``), the confusion matrix, a grid of the
misclassified test images with their true and predicted labels.

Run: ``python examples/digits.py [--small] [--out DIR]``.
"""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np
import optax
from _plumbing import cli, confusion_matrix, init_params, plot_confusion, plt, save_figure

import funnet
from funnet.train import evaluate, fit, predict


def _plot_mistakes(x: np.ndarray, y: np.ndarray, pred: np.ndarray, out_dir) -> Path:
    wrong = np.flatnonzero(pred != y)[:24]
    cols = 8
    rows = max(1, -(-len(wrong) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.3, max(2.4, rows * 1.6)),
                             squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, i in zip(axes.ravel(), wrong):
        ax.imshow(x[i].reshape(8, 8), cmap="gray_r")
        ax.set_title(f"{y[i]} → {pred[i]}", fontsize=9, color="tab:red")
    if not len(wrong):
        axes[0, 0].set_title("no mistakes")
    fig.suptitle(f"misclassified test digits (true → predicted), {np.sum(pred != y)} in all")
    return save_figure(fig, out_dir, "digits_misclassified.png")


def main(*, small: bool = False, out_dir: str = "examples/out", hidden: int = 64,
         lr: float = 3e-3, l2: float = 1e-4, seed: int = 0) -> dict:
    """Train with early stopping, evaluate on the test set, draw the three figures.

    Returns the test accuracy and loss, the epochs run, the best epoch, and the history.
    """
    epochs, patience = (15, 5) if small else (200, 15)
    train, valid, test = funnet.data.split(funnet.load_digits(), seed=seed)
    print(f"digits: {len(train)} train, {len(valid)} validation, {len(test)} test")
    model = funnet.serial(funnet.Dense(hidden), funnet.Relu, funnet.Dense(10))
    funnet.summary(model, (-1, 64))
    params = init_params(model, (-1, 64), seed=seed)

    params, history = fit(
        model, params, train, loss=funnet.softmax_cross_entropy, optimizer=optax.adam(lr),
        epochs=epochs, batch_size=32, key=jax.random.PRNGKey(seed), valid=valid, l2=l2,
        patience=patience, progress=False,
    )
    print()
    print(history.table())
    result = evaluate(model, params, test, loss=funnet.softmax_cross_entropy)
    pred = np.asarray(predict(model, params, test.x)).argmax(axis=1)
    c = confusion_matrix(test.y, pred)
    print(f"\ntest accuracy {result['accuracy']:.2%}, loss {result['loss']:.4f}"
          f" (params of epoch {history.best_epoch} of {len(history)})")
    print("confusion matrix (rows: true, columns: predicted)")
    for i, row in enumerate(c):
        print(f"  {i}: " + " ".join(f"{v:3d}" for v in row))

    Path(out_dir).mkdir(parents=True, exist_ok=True)
    curves = history.plot(Path(out_dir) / "digits_learning_curves.png")
    print(f"wrote {curves}")
    plot_confusion(c, f"test set confusion matrix (accuracy {result['accuracy']:.1%})",
                   out_dir, "digits_confusion.png")
    _plot_mistakes(test.x, test.y, pred, out_dir)
    return {
        "test_accuracy": result["accuracy"],
        "test_loss": result["loss"],
        "epochs_run": len(history),
        "best_epoch": history.best_epoch,
        "stopped_early": history.stopped_early,
        "confusion": c,
        "history": list(history),
    }


if __name__ == "__main__":
    cli(main, __doc__)
