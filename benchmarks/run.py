"""Run the funnet benchmark suite in one process: ``python -m benchmarks.run``.

Options: ``--quick`` (short, < 2 min on a 2-core CPU), ``--only digits,wide``,
``--out DIR`` (default ``benchmarks/out``), ``--host-devices N`` (split the CPU into N
XLA devices for the multi-device case; must be set before jax starts, so this module
imports jax only after parsing arguments).

Writes ``DIR/results.json`` (everything, including per-round times) and
``DIR/results.md`` (the tables), after every case.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from benchmarks.cases import CASES

DEFAULT_OUT = Path(__file__).resolve().parent / "out"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="short run (fewer rounds, sizes)")
    p.add_argument("--only", default="", metavar="NAME[,NAME]",
                   help=f"cases to run, comma-separated, from: {', '.join(CASES)}")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, metavar="DIR",
                   help="output folder (default: benchmarks/out)")
    p.add_argument("--host-devices", type=int, default=0, metavar="N",
                   help="emulate N CPU devices (XLA_FLAGS) for the multidevice case")
    args = p.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()] or list(CASES)
    unknown = [n for n in names if n not in CASES]
    if unknown:
        p.error(f"unknown case(s) {unknown}; choose from {list(CASES)}")
    args.cases = [n for n in CASES if n in names]
    return args


def _json_default(obj: Any) -> Any:
    try:
        import numpy as np

        if isinstance(obj, np.generic):
            return obj.item()
        if isinstance(obj, np.ndarray):
            return obj.tolist()
    except ImportError:
        pass
    if isinstance(obj, Path):
        return str(obj)
    return repr(obj)


def header_lines(meta: dict[str, Any]) -> list[str]:
    m, v = meta["machine"], meta["versions"]
    return [
        (f"machine: {m['platform']}, {m['cpu_model']}, {m['cpu_count']} CPUs "
        f"(affinity {m['cpu_affinity']}), python {m['python']}"),
        (f"jax backend: {m['jax_backend']}, device kind: {m['device_kind']} "
        f"× {m['device_count']}"),
        "versions: " + ", ".join(f"{k} {val}" for k, val in v.items()),
        f"funnet: {meta['funnet']}",
        f"mode: {'quick' if meta['quick'] else 'full'}; started {m['time_utc']}",
    ]


def write_outputs(out_dir: Path, meta: dict[str, Any], cases: dict[str, Any]) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    payload = {"meta": meta, "cases": cases}
    (out_dir / "results.json").write_text(
        json.dumps(payload, indent=1, default=_json_default) + "\n", encoding="utf-8")
    md = ["# funnet benchmark results", ""]
    md += [f"- {line}" for line in header_lines(meta)]
    for name, case in cases.items():
        md += ["", f"## {name}", ""]
        if case.get("error"):
            md += [f"**error**: `{case['error']}`"]
        for table in case.get("tables", []):
            from benchmarks._common import Table

            md += [Table(**table).to_markdown(), ""]
        md += [f"- {n}" for n in case.get("notes", [])]
        if case.get("failures"):
            md += [f"- **FAILED**: {f}" for f in case["failures"]]
        md.append(f"\n_{case.get('seconds', 0):.1f} s_")
    (out_dir / "results.md").write_text("\n".join(md) + "\n", encoding="utf-8")


def warm_jax() -> None:
    """Pay jax's one-off first-compile cost before any case measures anything."""
    import jax
    import jax.numpy as jnp

    jax.block_until_ready(jax.jit(lambda a: (a @ a.T).sum())(jnp.ones((8, 8))))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.host_devices > 1:
        flag = f"--xla_force_host_platform_device_count={args.host_devices}"
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + flag).strip()

    from benchmarks._common import Ctx, library_versions, load_funnet, machine_info

    fn, fn_error = load_funnet()
    meta = {
        "machine": machine_info(),
        "versions": library_versions(),
        "funnet": ("importable (missing pieces are marked in the tables)" if fn is not None
                   else fn_error),
        "quick": args.quick,
        "argv": sys.argv[1:] if argv is None else argv,
    }
    for line in header_lines(meta):
        print(line)
    warm_jax()
    ctx = Ctx(quick=args.quick, out_dir=args.out, fn=fn, fn_error=fn_error)
    args.out.mkdir(parents=True, exist_ok=True)

    results: dict[str, Any] = {}
    failed = False
    t_all = time.perf_counter()
    for name in args.cases:
        print(f"\n== {name} ==", flush=True)
        t0 = time.perf_counter()
        try:
            module = importlib.import_module(f"benchmarks.cases.{name}")
            res = module.run(ctx)
            entry = {"tables": [t.to_dict() for t in res.tables], "notes": res.notes,
                     "failures": res.failures, "data": res.data}
            for table in res.tables:
                print(table.to_text(), end="\n\n")
            for note in res.notes:
                print(f"note: {note}")
            for failure in res.failures:
                print(f"FAILED: {failure}")
            failed |= bool(res.failures)
        except Exception as exc:  # noqa: BLE001 - record it, run the other cases
            traceback.print_exc()
            entry = {"error": f"{type(exc).__name__}: {exc}",
                     "traceback": traceback.format_exc()}
            failed = True
        entry["seconds"] = time.perf_counter() - t0
        print(f"[{name}: {entry['seconds']:.1f} s]", flush=True)
        results[name] = entry
        meta["total_seconds"] = time.perf_counter() - t_all
        write_outputs(args.out, meta, results)
    print(f"\ntotal {time.perf_counter() - t_all:.1f} s; wrote {args.out / 'results.json'} "
          f"and {args.out / 'results.md'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
