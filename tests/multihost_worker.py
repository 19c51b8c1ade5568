"""One process of tests/test_multihost.py: ``fit`` on the embedded digits, params to a file.

Several processes (each with one CPU device, gloo collectives)::

    python tests/multihost_worker.py OUT.npz --coordinator 127.0.0.1:PORT \\
        --num-processes 2 --process-id I

One process, the reference: ``fit`` on every device of the process (two under
``XLA_FLAGS=--xla_force_host_platform_device_count=2``) and on one device::

    python tests/multihost_worker.py OUT.npz --reference

``OUT.npz`` holds the params' leaves (``mesh_0, mesh_1, ...``; the reference also
``single_0, ...``); ``OUT.json`` the train-loss and validation-accuracy columns of the
history and, for the processes, the error of a batch size that does not divide.
``--heartbeat S`` is ``jax.distributed.initialize``'s ``heartbeat_timeout_seconds``.
``--shard`` adds the run with ``shard_params=True`` (``sharded_0, ...``, and with
``--checkpoint`` its checkpointed and resumed copy ``sharded_resumed_0, ...``) and the
layout of its first layer's ``W`` between the epochs (``OUT.json``'s ``"layout"``).
``--local`` adds the run with ``local_data=True`` (``local_0, ...``): each process passes
only its own rows, 700 and 558 of the 1258 training rows and half of the validation rows
(:func:`funnet.data.shard`); the reference passes all of them.
``--faults`` runs, instead of everything else, two runs with ``local_data=True`` whose
outcome the processes must agree on (after two refused at the start, ``OUT.json``'s
``"same_rows"`` and ``"bad_shard"``: all rows on every process, and a label out of range in
process 1's rows): early stopping (``patience=2`` against validation
labels that are shuffled, so the validation loss rises from the first epoch on) and a
learning rate growing 10⁶× per epoch (a ``NonFiniteLossError``); ``OUT.json``'s
``"early"`` and ``"non_finite"`` describe them, ``OUT.npz`` holds ``early_0, ...`` (the
best epoch's params) and ``last_good_0, ...``.
``--uneven`` runs, instead of everything else, with 2 devices a process, on a mesh of 3 of
the 4 (two of process 0, one of process 1): ``local_data=True`` with 58 rows (fewer than a
batch of 63) and 1200 (``uneven_local_0, ...``) and all rows everywhere (``uneven_full_0, ...``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--coordinator")
    parser.add_argument("--num-processes", type=int)
    parser.add_argument("--process-id", type=int)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--heartbeat", type=int, default=100)
    parser.add_argument("--reference", action="store_true")
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="also fit 2 epochs checkpointed in this directory (shared by "
                             "the processes), resume to --epochs, compare with the run")
    parser.add_argument("--disagree", action="store_true",
                        help="change one training pixel, the key's seed and shard_params "
                             "(then fit must refuse to start, naming the three)")
    parser.add_argument("--shard", action="store_true",
                        help="also fit with shard_params=True (checkpointed and resumed "
                             "too with --checkpoint)")
    parser.add_argument("--local", action="store_true",
                        help="also fit with local_data=True, each process its own rows")
    parser.add_argument("--uneven", action="store_true",
                        help="only the runs on 3 of the 4 devices of two processes of 2 "
                             "devices each, with local_data=True and with all rows")
    parser.add_argument("--one-fit", action="store_true",
                        help="only one fit of one epoch; its error (if any) in OUT.json")
    parser.add_argument("--faults", action="store_true",
                        help="only the early-stopping and non-finite runs (local_data)")
    parser.add_argument("--one-sided", action="store_true",
                        help="only fits whose arguments are wrong on process 1 alone (or "
                             "differ in a way the collectives see first): each must raise "
                             "a ValueError on both processes")
    parser.add_argument("--warm-up", action="store_true",
                        help="fit one epoch first and print 'warm' (the kill test then "
                             "kills a process that is training, not compiling)")
    args = parser.parse_args(argv)

    import jax  # connect before anything else touches JAX

    if not args.reference:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(coordinator_address=args.coordinator,
                                   num_processes=args.num_processes,
                                   process_id=args.process_id, initialization_timeout=60,
                                   heartbeat_timeout_seconds=args.heartbeat)
    import optax

    import funnet

    splits = funnet.data.split(funnet.load_digits(), seed=0)
    model = funnet.serial(funnet.Dense(32), funnet.Relu, funnet.Dense(10))
    _, params = model.init(jax.random.PRNGKey(0), (-1, 64))
    optimizer = optax.adam(1e-2)
    train, seed, shard = splits.train, 1, False
    if args.disagree:
        x = train.x.copy()
        x[5, 7] += 0.5
        train, seed, shard = funnet.data.Dataset(x, train.y), 2, True

    def run(devices, batch_size=64, epochs=args.epochs, data=None, **kw):
        return funnet.fit(model, params, train if data is None else data,
                          loss=funnet.softmax_cross_entropy, optimizer=optimizer, epochs=epochs, batch_size=batch_size,
                          key=jax.random.PRNGKey(seed), progress=True, devices=devices,
                          **{"shard_params": shard, "valid": splits.valid, **kw})

    layout: list = []  # W [64, 32] of a sharded run after each epoch: what this process
    if args.shard:     # holds of it (the epoch donates its input: look at once)
        from funnet.train import loop

        one_epoch = loop._one_epoch

        def spy(run_state, *rest):
            one_epoch(run_state, *rest)
            w = run_state.state.params[0]["W"]
            if not w.sharding.is_fully_replicated:  # the replicated runs: nothing to see
                layout.append({"spec": [str(p) for p in w.sharding.spec],
                               "local": [list(s.data.shape) for s in w.addressable_shards],
                               "global": list(w.shape)})

        loop._one_epoch = spy

    def own_rows(data, cut=None):
        """This process's rows: ``[:cut]`` or ``[cut:]``, else ``funnet.data.shard``'s."""
        if args.reference:
            return data
        if cut is None:
            return funnet.data.shard(data, jax.process_index(), jax.process_count())
        rows = slice(None, cut) if jax.process_index() == 0 else slice(cut, None)
        return funnet.data.Dataset(data.x[rows], data.y[rows])

    report: dict = {"process_count": jax.process_count(), "devices": len(jax.devices())}
    if args.faults:
        faults(args, model, params, splits, own_rows, report)
        return
    if args.one_fit:
        try:
            run(None, epochs=1)
        except ValueError as e:
            report["error"] = str(e)
        save(args.out, {}, report)
        return
    if args.one_sided:
        one_sided(args, model, params, splits, report)
        return
    if args.uneven:  # process 0's two devices and one of process 1's
        devices = jax.devices()[:3]
        report["owners"] = [d.process_index for d in devices]
        runs = {"uneven_local": run(devices, batch_size=63, local_data=True,
                                    data=own_rows(splits.train, cut=58),
                                    valid=own_rows(splits.valid)),
                "uneven_full": run(devices, batch_size=63)}
    elif args.reference:
        runs = {"mesh": run(jax.devices()), "single": run(None)}
        if args.shard:
            runs["sharded"] = run(jax.devices(), shard_params=True)
        if args.local:
            runs["local"] = run(jax.devices(), local_data=True)
    else:
        try:
            run(None, batch_size=63)
        except ValueError as e:
            report["divisibility"] = str(e)
        if args.warm_up:
            run(None, epochs=1)
            print("warm", flush=True)
        runs = {"mesh": run(None)}  # None: every device of every process
        if args.checkpoint is not None:
            run(None, epochs=args.epochs - 1, checkpoint=args.checkpoint)
            runs["resumed"] = run(None, checkpoint=args.checkpoint, resume=True)
        if args.shard:
            runs["sharded"] = run(None, shard_params=True)
            report["layout"] = list(layout)
            if args.checkpoint is not None:
                where = args.checkpoint.with_name(args.checkpoint.name + "-sharded")
                run(None, epochs=args.epochs - 1, checkpoint=where, shard_params=True)
                runs["sharded_resumed"] = run(None, checkpoint=where, resume=True,
                                              shard_params=True)
        if args.local:
            runs["local"] = run(None, data=own_rows(splits.train, cut=700),
                                local_data=True, valid=own_rows(splits.valid))
    leaves = {}
    for name, (trained, history) in runs.items():
        leaves.update(named_leaves(name, trained))
        report[name] = {"train_loss": history.column("train_loss"),
                        "valid_accuracy": history.column("valid_accuracy")}
    save(args.out, leaves, report)


def named_leaves(name: str, tree) -> dict:
    import jax
    import numpy as np

    return {f"{name}_{i}": np.asarray(leaf) for i, leaf in enumerate(jax.tree.leaves(tree))}


def save(out: Path, leaves: dict, report: dict) -> None:
    import numpy as np

    np.savez(out, **leaves)
    out.with_suffix(".json").write_text(json.dumps(report))


def faults(args, model, params, splits, own_rows, report: dict) -> None:
    """Early stopping and a non-finite loss with ``local_data=True`` (see ``--faults``)."""
    import jax
    import numpy as np
    import optax

    import funnet

    shuffled = funnet.data.Dataset(splits.valid.x,
                                   np.random.default_rng(0).permutation(splits.valid.y))
    devices = jax.devices() if args.reference else None
    steps = -(-len(splits.train) // 64)

    def run(optimizer, **kw):
        return funnet.fit(model, params, own_rows(splits.train, cut=700),
                          valid=own_rows(shuffled), loss=funnet.softmax_cross_entropy,
                          optimizer=optimizer, epochs=args.epochs, batch_size=64,
                          key=jax.random.PRNGKey(1), progress=False, devices=devices,
                          local_data=True, **kw)

    if not args.reference:  # refused before training, on both processes
        common = {"loss": funnet.softmax_cross_entropy, "optimizer": optax.adam(1e-2),
                  "epochs": 1, "batch_size": 64, "key": jax.random.PRNGKey(1),
                  "local_data": True}
        try:  # every process passes all rows: each would count twice
            funnet.fit(model, params, splits.train, **common)
        except ValueError as e:
            report["same_rows"] = str(e)
        mine = own_rows(splits.train, cut=700)
        if jax.process_index() == 1:  # a label out of range in process 1's rows only
            mine = funnet.data.Dataset(mine.x, mine.y.copy())
            mine.y[3] = 10
        try:
            funnet.fit(model, params, mine, **common)
        except ValueError as e:
            report["bad_shard"] = str(e)
    best, history = run(optax.adam(1e-2), patience=2)
    report["early"] = {"epochs": len(history), "stopped_early": history.stopped_early,
                       "best_epoch": history.best_epoch,
                       "valid_loss": history.column("valid_loss")}
    leaves = named_leaves("early", best)
    exploding = optax.sgd(optax.exponential_decay(1e-2, transition_steps=steps,
                                                  decay_rate=1e6))
    try:
        run(exploding)
    except funnet.NonFiniteLossError as e:
        report["non_finite"] = {"epoch": e.epoch, "step": e.step,
                                "global_step": e.global_step, "message": str(e),
                                "history": e.history.column("train_loss")}
        leaves.update(named_leaves("last_good", e.last_good_params))
    save(args.out, leaves, report)


def one_sided(args, model, params, splits, report: dict) -> None:
    """Fits that are wrong on process 1 only (a NaN pixel in its copy of the full data, its
    batch_size), or whose processes differ in ``local_data`` or ``resume``: each must raise
    a ValueError on both processes, not leave process 0 waiting in a collective."""
    import jax
    import numpy as np
    import optax

    import funnet

    one = jax.process_index() == 1
    common = {"loss": funnet.softmax_cross_entropy, "optimizer": optax.adam(1e-2),
              "epochs": 1, "batch_size": 64, "key": jax.random.PRNGKey(1),
              "progress": False}
    funnet.fit(model, params, splits.train, **common)  # the collectives are set up: warm
    x = splits.train.x.copy()
    if one:
        x[5, 3] = np.nan
    cases = {
        "nan_row": ((funnet.data.Dataset(x, splits.train.y),), {}),
        "batch_size": ((splits.train,), {"batch_size": 63 if one else 64}),
        "local_data": ((funnet.data.shard(splits.train, jax.process_index(), 2),),
                       {"local_data": not one}),
        "resume": ((splits.train,), {"checkpoint": args.checkpoint, "resume": not one}),
    }
    for name, (data, kw) in cases.items():
        try:
            funnet.fit(model, params, *data, **{**common, **kw})
            report[name] = None
        except ValueError as e:
            report[name] = str(e)
    save(args.out, {}, report)


if __name__ == "__main__":
    main(sys.argv[1:])
