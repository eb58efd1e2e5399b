"""Each INT8 scheme of the build on one fp32 bundle: gate-set fidelity, batch independence, size, speed.

For every scheme named (quantize.schemes.SCHEMES), the fp32 bundle's model is quantized the
way a build would (same code, no search, no fp32 nodes), placed in a copy of the bundle, and
measured through edge_embed against the fp32 bundle on the probe set's gate part. Speed is
texts/s of Embedder.embed at batch 32 on short texts and on ~128-token and longer passages,
and at batch 1, in interleaved rounds (medians), fp32 in the same rounds, by wall time and by
this process's CPU time (the steadier of the two on a shared machine; use --threads 1 there).

    .venv/bin/python benchmarks/schemes.py FP32_BUNDLE --out DIR [--target avx2] [--rounds 9]

Prints one markdown table and writes DIR/schemes.json. Does not judge: the thresholds are
the build's business.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from edge_embed import Embedder
from edge_embed.manifest import RANGES_KEY, Manifest
from quantize.int8 import detect_target
from quantize.schemes import SCHEMES, bind
from quantize.validate import batch_independence, compare, default_probes, embed_with_progress, load_probes


def make_bundle(fp32: Path, out: Path, name: str, target: str) -> Path:
    dst = out / name
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(fp32, dst)
    work = out / f".{name}-work"
    work.mkdir(exist_ok=True)
    # a scheme that measures activation ranges does it on the search part, as a build would
    scheme = bind(SCHEMES[name], default_probes().search, Embedder.load(fp32))
    facts = scheme.quantize(fp32 / "model.onnx", dst / "model.onnx", work, target, True, [])
    shutil.rmtree(work)
    m = Manifest.read(fp32)
    extra = {k: v for k, v in m.extra.items() if k not in ("self_check", RANGES_KEY)}  # measured on fp32
    replace(m, name=name, quantization=facts, extra=extra,
            files={**m.files, **Manifest.describe_files(dst, [m.model_file])}).write(dst)
    return dst


def speed(embs: dict[str, Embedder], rounds: int) -> dict[str, dict[str, list[float]]]:
    """case -> [texts/s of wall time, texts/s of this process's CPU time] per bundle, medians
    of interleaved rounds. CPU time holds still on a shared machine where wall time does not
    (at --threads 1 it is the whole cost; with more threads it includes the pool's spinning)."""
    probes = load_probes()
    short = [t for t in probes if 4 <= len(t.split()) <= 14][:32]
    passages = [t for t in probes if len(t.split()) >= 100][:32]
    cases = {"b32_short": (short, 32), "b32_passages": (passages, 32), "b1_short": (short[:8], 1)}
    out: dict[str, dict[str, list[float]]] = {k: {} for k in embs}
    for case, (texts, bs) in cases.items():
        wall: dict[str, list[float]] = {k: [] for k in embs}
        cpu: dict[str, list[float]] = {k: [] for k in embs}
        for e in embs.values():
            e.embed_detailed(texts[:bs], batch_size=bs)  # warm-up
        for _ in range(rounds):
            for k, e in embs.items():
                t0, c0 = time.perf_counter(), time.process_time()
                e.embed_detailed(texts, batch_size=bs)
                wall[k].append(time.perf_counter() - t0)
                cpu[k].append(time.process_time() - c0)
        for k in embs:
            out[k][case] = [len(texts) / float(np.median(wall[k])), len(texts) / float(np.median(cpu[k]))]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("fp32", type=Path, help="an fp32 bundle (edge-embed build --method fp32, or --fp32-out)")
    ap.add_argument("--out", type=Path, required=True, help="where the scheme bundles and schemes.json go")
    ap.add_argument("--schemes", default=",".join(SCHEMES), help=f"comma-separated ({', '.join(SCHEMES)})")
    ap.add_argument("--target", default=None, help="CPU preset (default: this machine's)")
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    target = args.target or detect_target()
    names = [s for s in args.schemes.split(",") if s]
    unknown = [s for s in names if s not in SCHEMES]
    if unknown:
        print(f"--schemes: unknown {unknown}; known: {', '.join(SCHEMES)}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    gate = default_probes().gate
    ref = Embedder.load(args.fp32, threads=args.threads)
    ref_vecs = embed_with_progress(ref, gate, "fp32", progress=False)
    rows: dict[str, dict[str, float]] = {}
    embs = {"fp32": ref}
    for name in names:
        print(f"{name}: quantizing", file=sys.stderr, flush=True)
        b = make_bundle(args.fp32, args.out, name, target)
        e = Embedder.load(b, threads=args.threads)
        fig = compare(ref_vecs, embed_with_progress(e, gate, name, progress=False))
        fig["batch_independence"] = batch_independence(e, gate)
        fig["size_ratio"] = (b / "model.onnx").stat().st_size / (args.fp32 / "model.onnx").stat().st_size
        rows[name] = fig
        embs[name] = e
        print(f"{name}: {json.dumps({k: round(v, 5) for k, v in fig.items()})}", file=sys.stderr, flush=True)
    speeds = speed(embs, args.rounds)
    base = speeds["fp32"]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"target {target}; gate part {len(gate)} probes; {args.threads} threads; medians of {args.rounds} "
          f"interleaved rounds; load average {load:.1f} on {os.cpu_count()} CPUs\n")
    print("Speed cells: texts/s by wall time (x fp32) / by CPU time (x fp32).\n")
    print("| scheme | mean | p1 | min | batch indep. | size / fp32 | b32 short | b32 passages | b1 short |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, s in speeds.items():
        f = rows.get(name, {"cosine_mean": 1.0, "cosine_p1": 1.0, "cosine_min": 1.0, "batch_independence": 1.0,
                            "size_ratio": 1.0})
        cells = " | ".join(f"{s[c][0]:.1f} ({s[c][0] / base[c][0]:.2f}x) / {s[c][1]:.1f} ({s[c][1] / base[c][1]:.2f}x)"
                           for c in ("b32_short", "b32_passages", "b1_short"))
        print(f"| {name} | {f['cosine_mean']:.4f} | {f['cosine_p1']:.4f} | {f['cosine_min']:.4f} | "
              f"{f['batch_independence']:.5f} | {f['size_ratio']:.2f} | {cells} |")
    (args.out / "schemes.json").write_text(json.dumps({"target": target, "threads": args.threads, "load": load,
                                                       "fidelity": rows, "speed_wall_cpu": speeds},
                                                      indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
