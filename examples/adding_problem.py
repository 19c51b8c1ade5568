"""The adding problem: gradients vanishing through time, measured (docs/math.md §9.2, §9.3).

Hochreiter & Schmidhuber's (1997) adding problem, generated: a sequence has ``T`` steps of
two features, a value drawn uniformly from ``[0, 1]`` and a marker that is 1 at exactly two
steps, one in the first half and one in the second, and 0 elsewhere; the target is the sum
of the two marked values. Always predicting the mean, 1, gives the mean squared error
``Var(u₁ + u₂) = 2/12 ≈ 0.167``; to do better a model must spot the first marker, up to
``T - 1`` steps before the end, and carry its value to the end.

Two models of the same form, ``serial(RNN(32) or LSTM(32), return_sequences=False;
Dense(1))`` (a tanh RNN and an LSTM, funnet's default initialisation), are trained by
``funnet.fit`` with hand-derived backpropagation through time (``grad="hand"``): Adam at
``1e-2`` with the global gradient norm clipped at 1, on the squared error. Before and after
training, ``funnet.backprop.value_and_grad(model, mse, return_deltas=True)`` gives
``∂L/∂h_t`` at every step from the recurrent layer's own backward scan
(``TimeDeltas.h``, docs/recurrent.md); the figure plots its norm against ``t`` (for each
sequence the gradient of its own loss ``½ (ŷ - y)²``, averaged over 256 test sequences).

Measured at full size (``T = 100``, 10 000 training sequences, 20 epochs of batches of 64;
``python examples/adding_problem.py --out examples/out/gallery``, 60 s of CPU):

* the LSTM solves it: test MSE 0.0003 on 1000 sequences (below 0.01 from epoch 8 on);
  the tanh RNN does not: 0.149, about what always predicting 1 gets (0.167);
* the tanh RNN's gradient vanishes through time: ``‖∂L/∂h_1‖ / ‖∂L/∂h_T‖ = 2.7e-3`` at
  initialisation, and after training its gradient falls from 0.18 at ``t = 100`` to
  1.3e-21 at ``t = 52`` and is exactly 0 (below float32's range) for every
  ``t ≤ 51``: the ratio is 0;
* the LSTM starts out worse (``1.4e-8`` at initialisation: its forget gates start at
  ``σ(1) ≈ 0.73``, and ``0.73⁹⁹ ≈ 3e-14``) but learns to carry the gradient: trained,
  ``‖∂L/∂h_t‖`` is nearly flat from ``t = 1`` to 95, ``‖∂L/∂h_1‖ / ‖∂L/∂h_T‖ = 7.7e-2``.

``--small`` (``T = 50``, 1600 sequences, 16 epochs of batches of 32) is what the test runs:
the LSTM reaches 0.0012, the RNN 0.161; ``‖∂L/∂h_1‖ / ‖∂L/∂h_T‖`` is 4.1e-2 (RNN) and
2.9e-5 (LSTM) at initialisation, 3.8e-7 and 0.14 after training. The test asserts the
LSTM's MSE below 0.01, the RNN's above 0.1, the trained LSTM's ratio above 1e-2 and 100×
its initial one, and, at ``T = 100``, the untrained RNN's ratio below 1e-2.

Figure: ``adding_problem.png``: ``‖∂L/∂h_t‖`` against ``t`` for both models at
initialisation and after training, and the test MSE per epoch.

Run: ``python examples/adding_problem.py [--small] [--out DIR]``.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from _plumbing import cli, plt, save_figure

import funnet

TRIVIAL_MSE = 1 / 6  # Var(u₁ + u₂) for u ~ U(0, 1): the MSE of always predicting 1
KINDS = {"rnn": funnet.RNN, "lstm": funnet.LSTM}
LABELS = {"rnn": "tanh RNN", "lstm": "LSTM"}


def adding(rng: np.random.Generator, n: int, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` sequences ``x [n, steps, 2]`` (value, marker) and targets ``y [n, 1]`` (float32).

    The markers sit at one step drawn from the first half, ``[0, steps // 2)``, and one
    from the second; the target is the sum of the two marked values.
    """
    rows = np.arange(n)
    x = np.zeros((n, steps, 2), np.float32)
    x[:, :, 0] = rng.uniform(0.0, 1.0, (n, steps))
    first = rng.integers(0, steps // 2, n)
    second = rng.integers(steps // 2, steps, n)
    x[rows, first, 1] = x[rows, second, 1] = 1.0
    y = x[rows, first, 0] + x[rows, second, 0]
    return x, y[:, None].astype(np.float32)


def model_for(kind: str, hidden: int) -> funnet.Layer:
    """``x [B, T, 2] → ŷ [B, 1]``: the last state of a tanh RNN or an LSTM, then ``Dense(1)``."""
    return funnet.serial(KINDS[kind](hidden, return_sequences=False), funnet.Dense(1))


def gradient_norms(model: funnet.Layer):
    """``(params, x, y) -> ‖∂ℓ/∂h_t‖`` for ``t = 1 … T`` (compiled): per sequence, of its own
    loss ``ℓ = ½ (ŷ - y)²``, averaged over the sequences. From ``return_deltas=True``: the
    recurrent layer's ``TimeDeltas.h``, the gradient of the batch's mean loss, times the
    batch size."""
    value_and_grad = funnet.backprop.value_and_grad(model, funnet.mse, return_deltas=True)

    def norms(params, x, y):
        _, _, deltas = value_and_grad(params, x, y)
        h = deltas[0].h * x.shape[0]  # [B, T, H]
        return jnp.mean(jnp.linalg.norm(h, axis=-1), axis=0)

    return jax.jit(norms)


def test_mse(model: funnet.Layer, params, x: np.ndarray, y: np.ndarray) -> float:
    """``mean((ŷ - y)²)`` (funnet's ``mse`` is half of it)."""
    return float(jnp.mean((jax.jit(model.apply)(params, x) - y) ** 2))


def train(kind: str, data: dict, *, hidden: int, epochs: int, batch_size: int,
          seed: int) -> dict:
    """Gradient norms at initialisation, ``fit`` (hand BPTT), norms and test MSE after."""
    (x, y), (x_test, y_test) = data["train"], data["test"]
    model = model_for(kind, hidden)
    _, params = model.init(jax.random.PRNGKey(seed), (-1, x.shape[1], 2))
    probe, norms = (x_test[:256], y_test[:256]), gradient_norms(model)
    before = np.asarray(norms(params, *probe))
    optimizer = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-2))
    start = time.process_time()
    params, history = funnet.fit(
        model, params, (x, y), loss=funnet.mse, optimizer=optimizer, epochs=epochs,
        batch_size=batch_size, key=jax.random.key(seed), valid=(x_test, y_test), progress=False,
        grad="hand")
    seconds = time.process_time() - start
    after = np.asarray(norms(params, *probe))
    mse = test_mse(model, params, x_test, y_test)
    curve = [2 * r["valid_loss"] for r in history]  # mse's ½ undone: the plain MSE
    half = x.shape[1] // 2 - 1  # t = T/2, the earliest step of the second marker
    zeros = np.flatnonzero(after == 0)  # below float32's range: exactly 0
    last_zero = int(zeros[-1]) + 1 if zeros.size else 0
    print(f"{LABELS[kind]}: test MSE per epoch", " ".join(f"{v:.4f}" for v in curve))
    if last_zero:
        print(f"{LABELS[kind]}: trained, ‖∂L/∂h_t‖ = 0 for t ≤ {last_zero}; at t = "
              f"{last_zero + 1} it is {after[last_zero]:.1e}, at t = T {after[-1]:.1e}")
    print(f"{LABELS[kind]:9s} test MSE {mse:.4f} (trivial {TRIVIAL_MSE:.3f}); "
          f"‖∂L/∂h_1‖ / ‖∂L/∂h_T‖ = {before[0] / before[-1]:.1e} at init, "
          f"{after[0] / after[-1]:.1e} trained (at t = T/2: {after[half] / after[-1]:.1e}"
          f"{f'; exactly 0 up to t = {last_zero}' if last_zero else ''}); "
          f"fit took {seconds:.0f} s of CPU")
    return {"test_mse": mse, "valid_mse": curve, "norms_init": before, "norms_trained": after,
            "ratio_init": float(before[0] / before[-1]),
            "ratio_trained": float(after[0] / after[-1]),
            "ratio_half_trained": float(after[half] / after[-1]), "last_zero": last_zero,
            "cpu_seconds": seconds}


def _plot(results: dict, steps: int, out_dir) -> None:
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    t = np.arange(1, steps + 1)
    colors = {"rnn": "tab:red", "lstm": "tab:blue"}
    for kind, r in results.items():
        left.semilogy(t, r["norms_init"], ls="--", color=colors[kind],
                      label=f"{LABELS[kind]}, at init")
        zeros = f" (0 for t ≤ {r['last_zero']})" if r["last_zero"] else ""  # not drawn
        left.semilogy(t, r["norms_trained"], ls="-", color=colors[kind],
                      label=f"{LABELS[kind]}, trained{zeros}")
        epochs = np.arange(1, len(r["valid_mse"]) + 1)
        right.semilogy(epochs, r["valid_mse"], "o-", ms=3, color=colors[kind],
                       label=LABELS[kind])
    left.set_xlabel("step t")
    left.set_ylabel("‖∂L/∂h_t‖ (mean over 256 sequences)")
    left.set_title(f"gradient through time, T = {steps}")
    left.legend(fontsize=8)
    right.axhline(TRIVIAL_MSE, color="gray", ls=":", label="always 1 (0.167)")
    right.axhline(0.01, color="black", ls="--", lw=0.8, label="0.01")
    right.set_xlabel("epoch")
    right.set_ylabel("test MSE")
    right.set_title("adding problem, trained by fit (hand BPTT)")
    right.legend(fontsize=8)
    save_figure(fig, out_dir, "adding_problem.png")


def main(*, small: bool = False, out_dir: str = "examples/out", seed: int = 0) -> dict:
    """Train a tanh RNN and an LSTM on the adding problem; gradient norms through time."""
    steps, hidden, n_train, epochs, batch = ((50, 32, 1600, 16, 32) if small else
                                             (100, 32, 10000, 20, 64))
    rng = np.random.default_rng(seed)
    data = {"train": adding(rng, n_train, steps), "test": adding(rng, 1000, steps)}
    print(f"adding problem, T = {steps}: {n_train} training sequences, {epochs} epochs of "
          f"batches of {batch}")
    results = {kind: train(kind, data, hidden=hidden, epochs=epochs, batch_size=batch,
                           seed=seed) for kind in KINDS}
    _plot(results, steps, out_dir)
    return {"steps": steps, **results}


if __name__ == "__main__":
    cli(main, __doc__)
