"""Sorting and reversing digit sequences with one attention layer; the attention maps (§11).

Two generated tasks on sequences of ``T`` random digits ``0 … 9``: *sort* (the target at
step ``t`` is the ``t``-th smallest digit) and *reverse* (the digit at step ``T − 1 − t``).
Each output step must gather the right input digits from the other steps, which is what
attention does; the model is the same for both::

    serial(Embedding(10, D), Positions(T, D), MultiHeadAttention(2, D), Dense(10))

``Positions`` adds a learned table ``P [T, D]`` to the embeddings (``y = x + P``: the
positional information; without it self-attention cannot tell the steps apart, it is
equivariant to permuting them, and could not reverse). It is written here with
``funnet.layer`` and its own hand backward (``dP = Σ_batch dy``, ``dx = dy``), so the whole
model trains by ``funnet.fit(..., grad="hand")``: every gradient is the hand-derived one,
the attention's of docs/math.md §11.2. Loss and accuracy are per token
(``softmax_cross_entropy`` and ``accuracy`` average over the ``[batch, T]`` positions).

The claims: per-token test accuracy above 95 % on both tasks; for *reverse* the attention
of the trained model sits on the mirrored step ``T − 1 − t`` (the anti-diagonal); for
*sort* each output step attends, by content, more to the input steps that hold its target
digit than uniform attention would (it need not point at one step: the heads' mixture of
values is decoded by the Dense layer).

Figure: ``attention_sort.png``: per task, accuracy per epoch and each head's attention map
``P [T, T]`` for one test sequence (keys labelled by the input digits, queries by the
target digits).

Run: ``python examples/attention_sort.py [--small] [--out DIR]``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from _plumbing import cli, plt, save_figure

import funnet

DIGITS, HEADS = 10, 2


def positions(steps: int, dim: int) -> funnet.Layer:
    """``y = x + P`` with a learned ``P [steps, dim]`` (normal, σ = 0.5); hand backward."""

    def init(key, input_shape):
        return input_shape, {"table": 0.5 * jax.random.normal(key, (steps, dim))}

    def forward(params, x):
        return x + params["table"][None], None  # y = x + P, broadcast over the batch

    def backward(params, res, dy):
        return {"table": jnp.sum(dy, axis=0)}, dy  # dP = Σ_batch dy, dx = dy

    return funnet.layer(init, forward, backward, name=f"Positions({steps}, {dim})")


def model_for(steps: int, dim: int) -> funnet.Layer:
    """``ids [B, T] → logits [B, T, 10]``."""
    return funnet.serial(funnet.Embedding(DIGITS, dim), positions(steps, dim),
                         funnet.MultiHeadAttention(HEADS, dim), funnet.Dense(DIGITS))


TASKS = {"sort": lambda ids: np.sort(ids, axis=1), "reverse": lambda ids: ids[:, ::-1]}


def digits(rng: np.random.Generator, n: int, steps: int, task: str):
    """``n`` digit sequences ``[n, T]`` (int32) and their targets under ``task``."""
    ids = rng.integers(0, DIGITS, (n, steps)).astype(np.int32)
    return ids, np.ascontiguousarray(TASKS[task](ids)).astype(np.int32)


def attention_maps(params, ids: np.ndarray) -> np.ndarray:
    """The trained attention weights ``P [B, heads, T, T]`` of the model's attention layer.

    Recomputed from its params: the layer's input ``x = E[ids] + P_pos``, then
    ``Q = x W_q + b_q``, ``K = x W_k + b_k`` split into heads, and
    :func:`funnet.attention_weights`.
    """
    embed, pos, att, _ = params
    x = embed["table"][jnp.asarray(ids)] + pos["table"][None]
    b, t, dim = x.shape

    def heads(w, bias):
        return (x @ att[w] + att[bias][None, None]).reshape(b, t, HEADS, dim // HEADS)

    return np.asarray(funnet.attention_weights(heads("W_q", "b_q"), heads("W_k", "b_k")))


def focus(maps: np.ndarray, ids: np.ndarray, targets: np.ndarray) -> tuple[float, float]:
    """``(trained, uniform)``: the attention weight the best head puts, per query step, on
    the key steps holding the target digit, averaged; and what uniform attention puts."""
    holds = ids[:, None, :] == targets[:, :, None]  # [B, T query, T key]
    trained = (maps * holds[:, None]).sum(-1).max(axis=1)  # [B, T]
    return float(trained.mean()), float(holds.mean())


def train_task(task: str, *, steps: int, dim: int, n_train: int, epochs: int,
               rng: np.random.Generator, seed: int) -> dict:
    """Train the model by ``fit`` with hand gradients on ``task``; test it."""
    train, valid, test = (digits(rng, n, steps, task) for n in (n_train, 500, 2000))
    model = model_for(steps, dim)
    _, params = model.init(jax.random.PRNGKey(seed), (-1, steps))
    params, history = funnet.fit(
        model, params, train, loss=funnet.softmax_cross_entropy, optimizer=optax.adam(3e-3),
        epochs=epochs, batch_size=64, key=jax.random.key(seed), valid=valid, progress=False,
        grad="hand")
    print(f"\n{task}:")
    print(history.table())
    accuracy = float(funnet.evaluate(model, params, test,
                                     loss=funnet.softmax_cross_entropy)["accuracy"])
    maps = attention_maps(params, test[0])
    trained, uniform = focus(maps, *test)
    mirror = maps[:, :, np.arange(steps), np.arange(steps)[::-1]].max(axis=1).mean()
    print(f"{task}: per-token test accuracy {accuracy:.2%} (chance {1 / DIGITS:.0%}); "
          f"attention on the keys holding the target digit {trained:.2f} (uniform: "
          f"{uniform:.2f}); on the mirrored step T − 1 − t {mirror:.2f}")
    return {"test_accuracy": accuracy, "history": list(history), "focus": trained,
            "uniform_focus": uniform, "on_mirror": float(mirror), "maps": maps,
            "example": (test[0][0], test[1][0])}


def _plot(results: dict, steps: int, out_dir) -> None:
    fig, axes = plt.subplots(len(results), 1 + HEADS,
                             figsize=(4.4 * (1 + HEADS), 4.2 * len(results)))
    for row, (task, r) in zip(axes, results.items()):
        epochs = np.arange(1, len(r["history"]) + 1)
        row[0].plot(epochs, [h["train_accuracy"] for h in r["history"]], "o-", label="train")
        row[0].plot(epochs, [h["valid_accuracy"] for h in r["history"]], "s-",
                    label="validation")
        row[0].axhline(1 / DIGITS, color="gray", ls=":", label="chance")
        row[0].set_ylim(0, 1.02)
        row[0].set_xlabel("epoch")
        row[0].set_ylabel("per-token accuracy")
        row[0].set_title(f"{task}, T = {steps}: test {r['test_accuracy']:.1%}")
        row[0].legend()
        ids, target = r["example"]
        for h in range(HEADS):
            ax = row[1 + h]
            ax.imshow(r["maps"][0, h], cmap="viridis", vmin=0, vmax=1)
            ax.set_xticks(range(steps), [str(d) for d in ids])
            ax.set_yticks(range(steps), [str(d) for d in target])
            ax.set_xlabel("key: input digit at step j")
            ax.set_ylabel("query: target digit at step i")
            ax.set_title(f"{task}, head {h + 1}: attention P[i, j]")
    save_figure(fig, out_dir, "attention_sort.png")


def main(*, small: bool = False, out_dir: str = "examples/out", seed: int = 0) -> dict:
    """Train on both tasks by ``fit`` with hand gradients; accuracy and attention maps."""
    steps, dim, n_train, epochs = (6, 32, 2000, 15) if small else (10, 32, 8000, 20)
    rng = np.random.default_rng(seed)
    funnet.summary(model_for(steps, dim), (-1, steps))
    results = {task: train_task(task, steps=steps, dim=dim, n_train=n_train, epochs=epochs,
                                rng=rng, seed=seed) for task in TASKS}
    _plot(results, steps, out_dir)
    return {"steps": steps, **{task: {k: v for k, v in r.items() if k != "example"}
                               for task, r in results.items()}}


if __name__ == "__main__":
    cli(main, __doc__)
