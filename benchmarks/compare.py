"""Side-by-side: edge-embed INT8 bundle, the fp32 bundle (ONNX Runtime) and PyTorch via sentence-transformers.

One run, alternating: every round times each engine on the same texts in a rotating order,
so a change in machine load hits all engines alike; the table quotes the median round.
Quality retained is measured with edge_embed.evaluate (MTEB protocol): STS-B cosine
Spearman and BEIR nDCG@10, INT8 against the fp32 bundle of the same graph.

    python benchmarks/compare.py --model all-MiniLM-L6-v2=HF_DIR \\
        --speed-only bge-base-config-random=HF_DIR --sts ../shared/data/stsb/test.tsv \\
        --beir ../shared/data/msmarco-5k --work /tmp/bench-bundles --out bench-out

Writes OUT/compare.md (Markdown table), OUT/compare.png (speed-up against quality
retained) and OUT/compare.json (every figure). Bundles are built into --work with
`edge-embed build` when missing. Needs the `bench` extra (sentence-transformers,
matplotlib) and the `build` extra. Not a test: it asserts nothing about speed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from edge_embed import Embedder  # noqa: E402
from edge_embed.bench import cpu_info, make_texts  # noqa: E402
from edge_embed.evaluate import eval_beir, eval_sts, read_sts  # noqa: E402

ENGINES = ("edge-embed INT8", "ORT fp32", "PyTorch (sentence-transformers)")


def log(msg: str) -> None:
    sys.stderr.write(f"compare: {msg}\n")
    sys.stderr.flush()


def build_bundles(label: str, hf_dir: Path, work: Path, speed_only: bool,
                  thresholds: list[str]) -> tuple[Path, Path]:
    int8, fp32 = work / f"{label}-int8", work / f"{label}-fp32"
    if (int8 / "manifest.json").is_file() and (fp32 / "manifest.json").is_file():
        return int8, fp32
    cmd = [sys.executable, "-m", "edge_embed.cli", "build", str(hf_dir), "-o", str(int8), "--fp32-out", str(fp32),
           "--force"]
    if not (hf_dir / "modules.json").is_file():
        cmd += ["--pooling", "cls"]  # a bare HF model (bge-style): CLS pooling
    if speed_only:
        # random weights: fidelity figures mean nothing, the build must not stop on them
        cmd += [f"--threshold={k}=-1" for k in ("cosine_mean", "cosine_p1", "cosine_min", "top10_overlap")]
        # nor on the INT8 size ceiling: a tiny speed-only model is mostly graph overhead
        cmd += ["--threshold=model_size_ratio=1e9"]
    cmd += [f"--threshold={t}" for t in thresholds]
    log(f"building {label} bundles from {hf_dir}")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"compare: building {label} failed:\n{r.stderr[-3000:]}")
    return int8, fp32


class Engines:
    """The three ways to embed, behind one call: embed(engine, texts, batch_size)."""

    def __init__(self, hf_dir: Path, int8: Path, fp32: Path, threads: int) -> None:
        import torch
        from sentence_transformers import SentenceTransformer

        torch.set_num_threads(threads)
        self.int8 = Embedder.load(int8, threads=threads)
        self.fp32 = Embedder.load(fp32, threads=threads)
        # the way sentence-transformers users run it: the model directory, CPU, defaults
        self.st = SentenceTransformer(str(hf_dir), device="cpu")
        self.st.max_seq_length = min(self.st.max_seq_length or self.int8.max_length, self.int8.max_length)
        self.torch = torch

    def embed(self, engine: str, texts: list[str], batch_size: int, prompt: str | None = None) -> Any:
        if engine == ENGINES[0]:
            return self.int8.embed(texts, prompt=prompt, batch_size=batch_size)
        if engine == ENGINES[1]:
            return self.fp32.embed(texts, prompt=prompt, batch_size=batch_size)
        prefix = self.int8.prompts.get(prompt, "") if prompt else ""
        with self.torch.inference_mode():
            return self.st.encode([prefix + t for t in texts], batch_size=batch_size, convert_to_numpy=True,
                                  show_progress_bar=False)


def speed(eng: Engines, cells: dict[str, tuple[list[str], int]], rounds: int) -> dict[str, dict[str, float]]:
    """Median texts/s per engine and cell over `rounds` rounds, engines alternating in rotating order."""
    times: dict[str, dict[str, list[float]]] = {e: {c: [] for c in cells} for e in ENGINES}
    for e in ENGINES:  # warm-up: first calls allocate and pick kernels
        for texts, bs in cells.values():
            eng.embed(e, texts[:bs], bs)
    for r in range(rounds):
        order = ENGINES[r % 3:] + ENGINES[:r % 3]
        for cell, (texts, bs) in cells.items():
            for e in order:
                t0 = time.perf_counter()
                eng.embed(e, texts, bs)
                times[e][cell].append(len(texts) / (time.perf_counter() - t0))
        log(f"round {r + 1}/{rounds} done")
    return {e: {c: statistics.median(v) for c, v in cs.items()} for e, cs in times.items()}


def quality(eng: Engines, sts: str | None, beir: str | None, engines: tuple[str, ...]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    query = "query" if "query" in eng.int8.prompts else None
    for e in engines:
        def fn(texts: list[str], prompt: str | None, e: str = e) -> Any:
            return eng.embed(e, texts, 32, prompt)

        res: dict[str, float] = {}
        if sts:
            log(f"{e}: STS {sts}")
            res["sts_spearman"] = eval_sts(fn, sts)["cosine_spearman"]
        if beir:
            log(f"{e}: BEIR {beir}")
            res["ndcg@10"] = eval_beir(fn, beir, query_prompt=query)["ndcg@10"]
        out[e] = res
    return out


def texts_for(eng: Engines, sts: str | None, beir: str | None, n_short: int, n_long: int) -> dict[str, list[str]]:
    tok = eng.int8.path / eng.int8.manifest.tokenizer_file
    if sts:
        _, s1, s2 = read_sts(sts)
        short = (s1 + s2)[:n_short]  # real sentences: about 16 tokens on average
    else:
        short = make_texts(tok, 16, n_short)
    long_len = min(128, eng.int8.max_length)
    return {"short": short, "128": make_texts(tok, long_len, n_long, seed=128)}


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Every model in turn; the report so far is written after each one, so a long run keeps its figures."""
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    models = [(s, False) for s in args.model or []] + [(s, True) for s in args.speed_only or []]
    if not models:
        raise SystemExit("compare: give --model LABEL=HF_DIR and/or --speed-only LABEL=HF_DIR")
    rows = []
    for spec, speed_only in models:
        label, _, path = spec.partition("=")
        hf_dir = Path(path)
        if not (hf_dir / "config.json").is_file():
            raise SystemExit(f"compare: {hf_dir}: not a Hugging Face model directory (no config.json)")
        int8, fp32 = build_bundles(label, hf_dir, work, speed_only, args.threshold or [])
        eng = Engines(hf_dir, int8, fp32, args.threads)
        texts = texts_for(eng, args.sts, args.beir, args.n_short, args.n_long)
        cells = {"short b32": (texts["short"], 32), "128 b32": (texts["128"], 32), "short b1": (texts["short"][:32], 1)}
        log(f"{label}: timing {', '.join(cells)} x {args.rounds} rounds")
        tps = speed(eng, cells, args.rounds)
        q = {} if speed_only else quality(eng, args.sts, args.beir, ENGINES if args.st_quality else ENGINES[:2])
        for e in ENGINES:
            row: dict[str, Any] = {"model": label, "speed_only": speed_only, "engine": e,
                                   "texts_per_s": tps[e], "quality": q.get(e, {})}
            base = tps[ENGINES[2]]
            row["speedup_vs_pytorch"] = {c: tps[e][c] / base[c] for c in cells}
            ref = q.get(ENGINES[1], {})
            row["retained_pct"] = {k: 100.0 * v / ref[k] for k, v in q.get(e, {}).items() if ref.get(k)}
            rows.append(row)
        del eng
        write(report(args, rows), Path(args.out), chart_too=False)
    return report(args, rows)


def report(args: argparse.Namespace, rows: list[dict[str, Any]]) -> dict[str, Any]:
    return {"cpu": cpu_info(), "threads": args.threads, "rounds": args.rounds, "rows": rows,
            "command": " ".join(["python", "benchmarks/compare.py", *sys.argv[1:]])}


def write(rep: dict[str, Any], out: Path, chart_too: bool = True) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.json").write_text(json.dumps(rep, indent=2) + "\n", encoding="utf-8")
    (out / "compare.md").write_text(markdown(rep), encoding="utf-8")
    if chart_too:
        chart(rep, out / "compare.png")


def markdown(report: dict[str, Any]) -> str:
    cpu = report["cpu"]
    lines = [
        f"CPU: {cpu['name']} ({cpu['machine']}, {cpu['logical_cpus']} logical CPUs; ISA: {', '.join(cpu['isa'])}); "
        f"onnxruntime {cpu['onnxruntime']}; {report['threads']} threads; median of {report['rounds']} alternating "
        "rounds.",
        "",
        "| model | engine | texts/s short b32 | texts/s 128-tok b32 | texts/s short b1 | speed-up vs PyTorch "
        "(short / 128) | STS-B Spearman | retained | nDCG@10 | retained |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["rows"]:
        t, s, q, k = r["texts_per_s"], r["speedup_vs_pytorch"], r["quality"], r["retained_pct"]
        model = r["model"] + (" (random weights, speed only)" if r["speed_only"] else "")

        def fig(d: dict[str, float], key: str, fmt: str = "{:.2f}", suffix: str = "") -> str:
            return fmt.format(d[key]) + suffix if key in d else "-"

        lines.append(
            f"| {model} | {r['engine']} | {t['short b32']:.0f} | {t['128 b32']:.1f} | {t['short b1']:.0f} | "
            f"{s['short b32']:.2f}x / {s['128 b32']:.2f}x | {fig(q, 'sts_spearman')} | "
            f"{fig(k, 'sts_spearman', suffix=' %')} | {fig(q, 'ndcg@10')} | {fig(k, 'ndcg@10', suffix=' %')} |"
        )
    lines += ["", f"Command: `{report['command']}`"]
    return "\n".join(lines) + "\n"


def chart(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), sharey=False)
    markers = {ENGINES[0]: "o", ENGINES[1]: "s", ENGINES[2]: "^"}
    for ax, cell, title in ((axes[0], "short b32", "short texts, batch 32"),
                            (axes[1], "128 b32", "128-token texts, batch 32")):
        for r in report["rows"]:
            k = r["retained_pct"]
            if r["speed_only"]:
                continue
            x = min(k.values()) if k else 100.0  # the worse of STS-B and nDCG@10 retained
            y = r["speedup_vs_pytorch"][cell]
            ax.scatter([x], [y], marker=markers[r["engine"]], s=70)
            ax.annotate(f"{r['model']}\n{r['engine'].split(' (')[0]}", (x, y), fontsize=7,
                        xytext=(4, 4), textcoords="offset points")
        ax.axhline(1.0, color="grey", lw=0.6, ls="--")
        ax.set_title(title)
        ax.set_xlabel("quality retained vs fp32, % (worse of STS-B, nDCG@10)")
        ax.set_ylabel("speed-up vs PyTorch fp32 (sentence-transformers)")
        ax.grid(alpha=0.3)
    fig.suptitle(f"edge-embed on {report['cpu']['name']}, {report['threads']} threads")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", action="append", metavar="LABEL=HF_DIR", help="real model: speed and quality")
    p.add_argument("--speed-only", action="append", metavar="LABEL=HF_DIR", help="random weights: speed only")
    p.add_argument("--sts", help="STS file for quality (e.g. stsb/test.tsv)")
    p.add_argument("--beir", help="BEIR folder for quality (e.g. msmarco-5k)")
    p.add_argument("--work", default="models/bench", help="where bundles are built (kept for the next run)")
    p.add_argument("--out", default="models/bench/out", help="folder for compare.md, compare.png, compare.json")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--n-short", type=int, default=256, help="short texts per timing")
    p.add_argument("--n-long", type=int, default=64, help="128-token texts per timing")
    p.add_argument("--threshold", action="append", metavar="KEY=VALUE", help="passed to edge-embed build")
    p.add_argument("--st-quality", action="store_true", help="also evaluate PyTorch quality (slow)")
    args = p.parse_args(argv)
    rep = run(args)
    out = Path(args.out)
    write(rep, out)
    sys.stdout.write(markdown(rep))
    log(f"wrote {out / 'compare.md'}, {out / 'compare.png'}, {out / 'compare.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
