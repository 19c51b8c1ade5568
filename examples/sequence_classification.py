"""Sequence classification with an embedding and a GRU: which marker came first? (§9.1, §9.4)

A generated task: a sequence of ``T`` symbols from a vocabulary of ``V = 10`` holds the two
markers ``A`` (id 1) and ``B`` (id 2) once each, at random positions, among random
distractors (ids 3 … 9); the label is ``1`` when ``B`` comes before ``A``, else ``0``.
Nothing but order decides it, so a model must remember which marker it saw first across up
to ``T − 1`` distractors: no bag-of-symbols model can do better than chance (each marker
occurs once in every sequence). A baseline shows it: the mean of the embeddings over time
(``GlobalAvgPool``) and a small MLP, trained the same way, stays at 50 %.

The model is ``serial(Embedding(V, 8), GRU(32, return_sequences=False), Dense(2))``,
trained by ``funnet.fit`` with Adam on a softmax cross-entropy (backpropagation through
time, docs/math.md §9), on sequences of one length ``T``; ids stay integers (``fit``
passes integer inputs through unchanged).

Then variable lengths, with the same params: the model rebuilt to take ``(ids, mask)``
(``parallel(Embedding, Identity)`` in front, see docs/recurrent.md) classifies sequences
of lengths 5 … T padded to ``T``; the padded steps are skipped, and the outputs equal those
of each sequence run alone at its own length.

Figure: ``sequence_classification.png``: accuracy per epoch, and test accuracy against
the sequence length.

Run: ``python examples/sequence_classification.py [--small] [--out DIR]``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from _plumbing import cli, plt, save_figure

import funnet

V, A, B = 10, 1, 2  # vocabulary size, the two markers; 0 is padding, 3 … V−1 distractors
EMBED, HIDDEN = 8, 32


def first_marker(rng: np.random.Generator, n: int, steps: int,
                 lengths: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``n`` sequences ``ids [n, steps]`` (int32) and labels ``[n]``: 1 when ``B`` is first.

    With ``lengths``, sequence ``r`` is real up to ``lengths[r]`` and padded with 0 after.
    """
    lengths = np.full(n, steps) if lengths is None else np.asarray(lengths)
    ids = rng.integers(3, V, (n, steps))
    labels = np.zeros(n, np.int32)
    for r, length in enumerate(lengths):
        a, b = rng.choice(length, 2, replace=False)
        ids[r, a], ids[r, b] = A, B
        ids[r, length:] = 0
        labels[r] = int(b < a)
    return ids.astype(np.int32), labels


def model_for(*, masked: bool = False) -> funnet.Layer:
    """``ids [B, T] → logits [B, 2]``; with ``masked``, ``(ids, mask) → logits``."""
    embed = funnet.Embedding(V, EMBED)
    if masked:
        embed = funnet.parallel(embed, funnet.Identity)
    return funnet.serial(embed, funnet.GRU(HIDDEN, return_sequences=False), funnet.Dense(2))


def bag_of_symbols() -> funnet.Layer:
    """The baseline: the mean embedding over time, then an MLP; blind to order."""
    return funnet.serial(funnet.Embedding(V, EMBED), funnet.GlobalAvgPool,
                         funnet.Dense(HIDDEN), funnet.Relu, funnet.Dense(2))


def train_and_test(model: funnet.Layer, train, valid, test, *, steps: int, epochs: int,
                   seed: int):
    """``funnet.fit`` with Adam, then the test accuracy: ``(params, history, accuracy)``."""
    _, params = model.init(jax.random.PRNGKey(seed), (-1, steps))
    params, history = funnet.fit(
        model, params, train, loss=funnet.softmax_cross_entropy, optimizer=optax.adam(3e-3),
        epochs=epochs, batch_size=64, key=jax.random.key(seed), valid=valid, progress=False)
    result = funnet.evaluate(model, params, test, loss=funnet.softmax_cross_entropy)
    return params, history, result["accuracy"]


def masked_params(params):
    """The trained params in the layout of ``model_for(masked=True)``."""
    return ((params[0], ()),) + tuple(params[1:])


def _plot(history: list[dict], lengths: np.ndarray, by_length: np.ndarray, steps: int,
          baseline: float, out_dir) -> None:
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    epochs = np.arange(1, len(history) + 1)
    left.plot(epochs, [r["train_accuracy"] for r in history], "o-", label="train")
    left.plot(epochs, [r["valid_accuracy"] for r in history], "s-", label="validation")
    left.axhline(0.5, color="gray", ls=":", label="chance")
    left.axhline(baseline, color="tab:red", ls="--", label="bag of symbols (test)")
    left.set_xlabel("epoch")
    left.set_ylabel("accuracy")
    left.set_title(f"Embedding + GRU({HIDDEN}) trained by fit, T = {steps}")
    left.legend()
    right.plot(lengths, by_length, "o-")
    right.axhline(0.5, color="gray", ls=":")
    right.set_ylim(0.4, 1.02)
    right.set_xlabel("sequence length (padded to T, masked)")
    right.set_ylabel("test accuracy")
    right.set_title("the same params on variable lengths, (ids, mask)")
    save_figure(fig, out_dir, "sequence_classification.png")


def main(*, small: bool = False, out_dir: str = "examples/out", seed: int = 0) -> dict:
    """Train on fixed-length sequences, test at that length and at every shorter one."""
    steps, n_train, epochs = (20, 1000, 8) if small else (40, 4000, 12)
    rng = np.random.default_rng(seed)
    train = first_marker(rng, n_train, steps)
    valid = first_marker(rng, 500, steps)
    test = first_marker(rng, 2000, steps)
    model = model_for()
    funnet.summary(model, (-1, steps))
    params, history, accuracy = train_and_test(model, train, valid, test, steps=steps,
                                               epochs=epochs, seed=seed)
    print(history.table())
    print(f"\ntest accuracy at T = {steps}: {accuracy:.2%} (chance 50 %)")
    _, _, baseline = train_and_test(bag_of_symbols(), train, valid, test, steps=steps,
                                    epochs=epochs, seed=seed)
    print(f"bag-of-symbols baseline (mean embedding + MLP): {baseline:.2%}")

    # variable lengths through the sequence mask, with the same params
    masked, mparams = model_for(masked=True), masked_params(params)
    lengths = np.arange(5, steps + 1)
    per_length = 100 if small else 200
    ids, labels = first_marker(rng, len(lengths) * per_length, steps,
                               np.repeat(lengths, per_length))
    mask = (np.arange(steps)[None, :] < np.repeat(lengths, per_length)[:, None])
    logits = np.asarray(funnet.predict(masked, mparams, (ids, mask)))
    hits = (logits.argmax(axis=1) == labels).reshape(len(lengths), per_length)
    by_length = hits.mean(axis=1)
    # padding changes nothing: the shortest, a middle and the longest length run alone
    alone_diff = 0.0
    for i in (0, len(lengths) // 2, len(lengths) - 1):
        r, n = i * per_length, lengths[i]
        alone = np.asarray(model.apply(params, jnp.asarray(ids[r:r + 1, :n])))[0]
        alone_diff = max(alone_diff, float(np.max(np.abs(alone - logits[r]))))
    print(f"variable lengths 5 … {steps} (masked): accuracy {hits.mean():.2%}, lowest at "
          f"length {lengths[by_length.argmin()]} ({by_length.min():.2%}); padded vs alone: "
          f"max |Δ logit| = {alone_diff:.1e}")
    _plot(list(history), lengths, by_length, steps, baseline, out_dir)
    return {
        "steps": steps,
        "test_accuracy": accuracy,
        "baseline_accuracy": baseline,
        "history": list(history),
        "lengths": lengths,
        "accuracy_by_length": by_length,
        "variable_length_accuracy": float(hits.mean()),
        "padded_vs_alone": alone_diff,
    }


if __name__ == "__main__":
    cli(main, __doc__)
