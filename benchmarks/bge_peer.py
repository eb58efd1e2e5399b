"""bge-small-en-v1.5: an edge-embed bundle against the peer INT8 file and the fp32 file, same run.

The peer file (onnx/model_quantized.onnx: the dynamic INT8 that transformers.js and langchain4j
ship) and the fp32 file are wrapped, unchanged, as bundles with the same tokenizer and CLS
pooling, so all three go through the same runner: edge_embed.Embedder, length-sorted batches,
the same ONNX Runtime session options and thread count. Not a test: it asserts nothing.

    python benchmarks/bge_peer.py speed --bundle models/bge-small-int8 \\
        --model-dir ../shared/models/bge-small-en-v1.5 --stsb ../shared/data/stsb/test.tsv \\
        --beir ../shared/data/msmarco-5k --out benchmarks/results/bge
    python benchmarks/bge_peer.py profile --bundle models/bge-small-int8 --model-dir ... --out ...
    python benchmarks/bge_peer.py fidelity --bundle models/bge-small-int8 --model-dir ... --out ...

speed: texts/s at batch 32 on short texts (STS-B test sentences), ~128-token and 512-token
msmarco passages, and batch-1 latency; rounds rotate the order of the models and the table
quotes medians (and the median of per-round ratios). profile: onnxruntime's per-operator
profile (SessionOptions.enable_profiling) at batch 32 x 128 tokens, as milliseconds per batch
by operator type as the session runs them (after ORT's own graph rewrites). fidelity:
cosine to the fp32 file (mean / p1 / min) on STS-B test sentences, passages and the probe
gate set. Each writes OUT/<mode>.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from edge_embed import Embedder, Manifest  # noqa: E402
from edge_embed.bench import cpu_info  # noqa: E402
from edge_embed.evaluate import read_beir, read_sts  # noqa: E402
from edge_embed.manifest import FORMAT  # noqa: E402


def log(msg: str) -> None:
    sys.stderr.write(f"bge_peer: {msg}\n")
    sys.stderr.flush()


def wrap(model: Path, like: Manifest, tokenizer: Path, out: Path, method: str) -> Path:
    """A bundle around an ONNX file as it is (no fusion, no re-quantization), pooling from `like`."""
    import shutil

    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(model, out / "model.onnx")
    shutil.copyfile(tokenizer, out / "tokenizer.json")
    m = Manifest(format=FORMAT, name=out.name, source={"model_id": str(model)}, dim=like.dim,
                 max_length=like.max_length, pooling=like.pooling, normalize=like.normalize,
                 prompts=dict(like.prompts), files=Manifest.describe_files(out, ["model.onnx", "tokenizer.json"]),
                 quantization={"method": method}, validation={}, built_with={})
    m.write(out)
    return out


def models(args: argparse.Namespace, work: Path) -> dict[str, Path]:
    """name -> bundle directory: ours, the peer INT8 file, the fp32 file (both wrapped as they are)."""
    ours = Path(args.bundle)
    like = Manifest.read(ours)
    d = Path(args.model_dir)
    # the bundle's tokenizer.json: the shared one with truncation at max_length, no padding
    tok = ours / like.tokenizer_file
    out = {"edge-embed bundle": ours,
           "peer INT8 file": wrap(d / "onnx" / "model_quantized.onnx", like, tok, work / "peer", "peer dynamic"),
           "fp32 file": wrap(d / "onnx" / "model.onnx", like, tok, work / "fp32", "fp32")}
    for extra in args.also or []:
        name, _, path = extra.partition("=")
        out[name] = Path(path)
    return out


# ---------------------------------------------------------------------- texts
def short_texts(stsb: Path, n: int) -> list[str]:
    _, a, b = read_sts(stsb)
    seen = list(dict.fromkeys(a + b))
    return seen[:n]


def passages(beir: Path, emb: Embedder, lo: int, hi: int, n: int) -> list[str]:
    """n msmarco passages of lo..hi tokens; for lengths past the corpus' own, runs of consecutive passages."""
    corpus, _, _ = read_beir(beir, "test")
    docs = list(corpus.values())
    out: list[str] = []
    if hi <= 256:
        counts = emb.token_count(docs)
        out = [t for t, c in zip(docs, counts, strict=True) if lo <= c <= hi]
    else:
        i = 0
        while len(out) < n and i < len(docs):
            run = []
            while i < len(docs) and emb.token_count([" ".join(run)])[0] < lo:
                run.append(docs[i])
                i += 1
            out.append(" ".join(run))
    return out[:n]


def workloads(args: argparse.Namespace, emb: Embedder) -> dict[str, list[str]]:
    n = args.texts
    return {"short": short_texts(Path(args.stsb), n),
            "128": passages(Path(args.beir), emb, 110, 150, n),
            "512": passages(Path(args.beir), emb, 512, 10**9, max(n // 4, 32))}


# ---------------------------------------------------------------------- speed
def timed(emb: Embedder, texts: list[str], batch: int, clock: str = "wall") -> float:
    """Seconds of wall time, or of this process's CPU time (steadier on a shared machine; with
    --threads 1 it is the whole cost)."""
    now = time.process_time if clock == "cpu" else time.perf_counter
    t0 = now()
    emb.embed_detailed(texts, batch_size=batch)
    return now() - t0


def cmd_speed(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    paths = models(args, work)
    embs = {k: Embedder.load(p, threads=args.threads) for k, p in paths.items()}
    first = next(iter(embs.values()))
    loads = workloads(args, first)
    for name, texts in loads.items():
        counts = first.token_count(texts)
        log(f"workload {name}: {len(texts)} texts, tokens median {int(np.median(counts))} "
            f"(min {min(counts)}, max {max(counts)})")
    cases = [(w, 32) for w in loads] + [("short", 1), ("128", 1)]
    rates: dict[tuple[str, int], dict[str, list[float]]] = {c: defaultdict(list) for c in cases}
    for emb in embs.values():  # warm-up: first runs allocate
        emb.embed(loads["128"][:32])
    names = list(embs)
    for r in range(args.rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for w, batch in cases:
            texts = loads[w] if batch > 1 else loads[w][:args.latency_texts]
            for name in order:
                rates[(w, batch)][name].append(len(texts) / timed(embs[name], texts, batch, args.clock))
        log(f"round {r + 1}/{args.rounds} done")
    rows = []
    for (w, batch), per in rates.items():
        row: dict[str, Any] = {"texts": w, "batch": batch}
        for name in names:
            row[name] = statistics.median(per[name])
        for name in names[1:]:
            ratio = [a / b for a, b in zip(per[names[0]], per[name], strict=True)]
            row[f"ratio vs {name}"] = statistics.median(ratio)
        rows.append(row)
    cold = {name: cold_start(p, args.threads) for name, p in paths.items()}
    return {"cpu": cpu_info(), "threads": args.threads, "rounds": args.rounds, "clock": args.clock,
            "load_average": os.getloadavg()[0] if hasattr(os, "getloadavg") else None, "rows": rows,
            "cold_start_s": cold,
            "model_mb": {k: Manifest.read(p).files["model.onnx"].bytes / 1e6 for k, p in paths.items()}}


def cold_start(bundle: Path, threads: int) -> float:
    from edge_embed.bench import cold_start as one

    return statistics.median(one(str(bundle), threads)[0] for _ in range(3))


def speed_table(rep: dict[str, Any]) -> str:
    rows = rep["rows"]
    names = [k for k in rows[0] if k not in ("texts", "batch") and not k.startswith("ratio")]
    ratios = [k for k in rows[0] if k.startswith("ratio")]
    head = ["texts", "batch", *[f"{n}, texts/s" for n in names], *ratios]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["texts"], str(r["batch"]), *[f"{r[n]:.1f}" for n in names], *[f"{r[k]:.2f}x" for k in ratios]]
        out.append("| " + " | ".join(cells) + " |")
    out.append("")
    out.append("cold start (s, median of 3): " + ", ".join(f"{k} {v:.2f}" for k, v in rep["cold_start_s"].items()))
    out.append("model.onnx MB: " + ", ".join(f"{k} {v:.1f}" for k, v in rep["model_mb"].items()))
    return "\n".join(out)


# ---------------------------------------------------------------------- profile
def _profiled(bundle: Path, threads: int, work: Path) -> tuple[Any, Embedder]:
    import onnxruntime as ort

    m = Manifest.read(bundle)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.enable_profiling = True
    so.profile_file_prefix = str(work / f"profile-{bundle.name}")
    sess = ort.InferenceSession(str(bundle / m.model_file), sess_options=so, providers=["CPUExecutionProvider"])
    return sess, Embedder.load(bundle, threads=threads).with_session(sess)


def _per_op(profile: Path, runs: int) -> dict[str, float]:
    """Milliseconds per batch by operator type, the first (warm-up) run left out."""
    events = json.loads(profile.read_text())
    run_ends = sorted(e["ts"] + e["dur"] for e in events if e.get("name") == "model_run")
    per_op: dict[str, float] = defaultdict(float)
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] > run_ends[0]:
            per_op[e["args"]["op_name"]] += e["dur"] / 1e3 / runs
    per_op["(whole run)"] = statistics.median([e["dur"] / 1e3 for e in events if e.get("name") == "model_run"][1:])
    return dict(per_op)


def cmd_profile(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    paths = models(args, work)
    first = Embedder.load(next(iter(paths.values())))
    texts = passages(Path(args.beir), first, 120, 136, 32)
    log(f"profiling batch {len(texts)} x ~128 tokens, {args.runs} runs each, interleaved")
    sessions = {name: _profiled(p, args.threads, work) for name, p in paths.items()}
    for _ in range(args.runs + 1):  # one batch of each model in turn, so load changes hit all alike
        for _sess, emb in sessions.values():
            emb.embed(texts, batch_size=len(texts))
    prof = {name: _per_op(Path(sess.end_profiling()), args.runs) for name, (sess, _) in sessions.items()}
    return {"cpu": cpu_info(), "threads": args.threads, "batch": len(texts),
            "tokens": int(max(first.token_count(texts))), "ms_per_batch": prof}


def profile_table(rep: dict[str, Any]) -> str:
    prof = rep["ms_per_batch"]
    names = list(prof)
    ops = sorted({op for p in prof.values() for op in p if op != "(whole run)"},
                 key=lambda op: -max(p.get(op, 0.0) for p in prof.values()))
    out = ["| operator | " + " | ".join(f"{n}, ms" for n in names) + " |", "|---|" + "---:|" * len(names)]
    for op in [*ops, "(whole run)"]:
        out.append(f"| {op} | " + " | ".join(f"{prof[n][op]:.1f}" if op in prof[n] else "-" for n in names) + " |")
    return "\n".join(out)


# ---------------------------------------------------------------------- fidelity
def cos_stats(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    c = (a * b).sum(axis=1)
    return {"mean": float(c.mean()), "p1": float(np.percentile(c, 1)), "min": float(c.min()), "n": len(c)}


def cmd_fidelity(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    paths = models(args, work)
    ref = Embedder.load(paths["fp32 file"], threads=args.threads)
    _, a, b = read_sts(Path(args.stsb))
    sets = {"STS-B test sentences": list(dict.fromkeys(a + b)),
            f"msmarco passages (first {args.passages})": list(read_beir(Path(args.beir), "test")[0].values())[
                :args.passages]}
    if args.probes:
        sets["probe texts"] = [ln for ln in Path(args.probes).read_text().splitlines()
                               if ln.strip() and not ln.startswith("#")]
    out: dict[str, Any] = {}
    for label, texts in sets.items():
        log(f"fidelity on {label}: {len(texts)} texts")
        want = ref.embed(texts)
        out[label] = {name: cos_stats(Embedder.load(p, threads=args.threads).embed(texts), want)
                      for name, p in paths.items() if name != "fp32 file"}
    return {"cpu": cpu_info(), "sets": out}


def fidelity_table(rep: dict[str, Any]) -> str:
    out = ["| texts | model | cosine to fp32 mean / p1 / min |", "|---|---|---|"]
    for label, per in rep["sets"].items():
        for name, s in per.items():
            out.append(f"| {label} ({s['n']}) | {name} | {s['mean']:.4f} / {s['p1']:.4f} / {s['min']:.4f} |")
    return "\n".join(out)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", choices=("speed", "profile", "fidelity"))
    p.add_argument("--bundle", required=True, help="the edge-embed bundle to compare")
    p.add_argument("--model-dir", required=True, help="folder with onnx/model.onnx and onnx/model_quantized.onnx")
    p.add_argument("--also", action="append", metavar="NAME=BUNDLE", help="another bundle in the comparison")
    p.add_argument("--stsb", default=str(REPO.parent / "shared/data/stsb/test.tsv"))
    p.add_argument("--beir", default=str(REPO.parent / "shared/data/msmarco-5k"))
    p.add_argument("--probes", help="fidelity: also a probe file (one text per line)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                   help="speed: time by wall clock (default) or by this process's CPU time")
    p.add_argument("--runs", type=int, default=5, help="profile: batches profiled per model")
    p.add_argument("--texts", type=int, default=256, help="speed: texts per workload")
    p.add_argument("--latency-texts", type=int, default=32, help="speed: texts timed one at a time")
    p.add_argument("--passages", type=int, default=1000, help="fidelity: msmarco passages compared")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bge-peer-") as tmp:
        mode = {"speed": (cmd_speed, speed_table), "profile": (cmd_profile, profile_table),
                "fidelity": (cmd_fidelity, fidelity_table)}[args.mode]
        rep = mode[0](args, Path(tmp))
    rep["command"] = " ".join(sys.argv)
    (out / f"{args.mode}.json").write_text(json.dumps(rep, indent=2) + "\n")
    table = mode[1](rep)
    (out / f"{args.mode}.md").write_text(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
