"""Corpus job throughput and memory: 1 process, --workers 2, and Ray with 2 actors, same corpus, same run.

Each configuration runs `edge-embed embed-corpus` as a fresh command into a new output directory,
interleaved over --repeat rounds. It reports texts/s over the whole command (start-up included, what
a user waits for) and over the job's own embedding phase (as the job prints it), and the peak RSS of
the command's whole process tree (the job, its workers; for Ray also raylet, GCS and the actors),
sampled every 0.1 s with psutil. Medians over the rounds.

Each round also runs every configuration on the corpus's first --startup-texts texts (one shard):
that command's wall time is the configuration's start-up cost (Python, imports, worker processes
or Ray's daemons and actors, bundle loads, shutdown), which a corpus pays once. The rate after
start-up is rows / (wall - start-up wall), and the table says from how many texts on one
configuration's whole command takes less time than another's.

    .venv/bin/python benchmarks/corpus_bench.py models/minilm-int8 ../shared/data/msmarco-5k/corpus.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

CONFIGS = {
    "1 process x 2 threads": ["--workers", "1", "--threads", "2"],
    "--workers 2 (x 1 thread)": ["--workers", "2", "--threads", "1"],
    "Ray, 2 actors x 1 thread": ["--engine", "ray", "--workers", "2", "--threads", "1"],
}
RATE = re.compile(r"\((\d+) embedded now(?: on Ray)? in ([\d.]+) s")


def tree_rss(proc: psutil.Process) -> int:
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def run_once(cmd: list[str]) -> dict[str, float]:
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    ps = psutil.Process(proc.pid)
    peak = 0
    while proc.poll() is None:
        try:
            peak = max(peak, tree_rss(ps))
        except psutil.Error:
            pass
        time.sleep(0.1)
    wall = time.perf_counter() - t0
    err = proc.stderr.read() if proc.stderr else ""
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{err[-3000:]}")
    m = RATE.search(err)
    if not m:
        raise SystemExit(f"no summary line in the job's stderr:\n{err[-2000:]}")
    rows, seconds = int(m.group(1)), float(m.group(2))
    return {"wall_s": wall, "job_s": seconds, "rows": rows, "peak_rss_mb": peak / 1e6}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle")
    ap.add_argument("corpus", help="JSONL with text (and _id/id) fields")
    ap.add_argument("--limit", type=int, default=0, help="use the first N lines only")
    ap.add_argument("--shard-size", type=int, default=500)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--only", action="append", choices=list(CONFIGS), help="run only these configurations")
    ap.add_argument("--startup-texts", type=int, default=8,
                    help="also time each configuration on this many texts (its start-up cost); 0: skip")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="corpus-bench-"))
    corpus = head(Path(args.corpus), args.limit, work / "corpus.jsonl") if args.limit else Path(args.corpus)
    small = head(Path(args.corpus), args.startup_texts, work / "startup.jsonl") if args.startup_texts else None

    def exe(src: Path) -> list[str]:
        return [sys.executable, "-m", "edge_embed.cli", "embed-corpus", str(src), "-m", args.bundle,
                "--shard-size", str(args.shard_size), "--progress"]

    configs = {k: v for k, v in CONFIGS.items() if not args.only or k in args.only}
    runs: dict[str, list[dict[str, float]]] = {k: [] for k in configs}
    startup: dict[str, list[float]] = {k: [] for k in configs}
    try:
        for r in range(args.repeat):
            for name, flags in configs.items():
                out = work / f"out-{r}-{len(runs[name])}-{abs(hash(name))}"
                if small is not None:
                    start = run_once([*exe(small), "-o", str(out), *flags])
                    startup[name].append(start["wall_s"])
                    shutil.rmtree(out, ignore_errors=True)
                res = run_once([*exe(corpus), "-o", str(out), *flags])
                runs[name].append(res)
                shutil.rmtree(out, ignore_errors=True)
                started = f", start-up {startup[name][-1]:.1f} s" if small is not None else ""
                print(f"round {r + 1}: {name}: {res['rows'] / res['wall_s']:.1f} texts/s overall, "
                      f"{res['rows'] / res['job_s']:.1f} in the job, peak RSS {res['peak_rss_mb']:.0f} MB{started}",
                      file=sys.stderr)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    flags = sorted({f for f in open("/proc/cpuinfo").read().split() if f in ("avx2", "avx512f", "avx512_vnni")}) \
        if os.path.exists("/proc/cpuinfo") else []
    report = {
        "bundle": args.bundle, "corpus": args.corpus, "rows": runs[next(iter(runs))][0]["rows"],
        "shard_size": args.shard_size, "repeat": args.repeat, "cpu": platform.processor() or platform.machine(),
        "cpu_flags": flags, "cores": psutil.cpu_count(logical=False), "load_avg_at_end": os.getloadavg(),
        "startup_texts": args.startup_texts,
        "results": {
            name: {
                "texts_per_s_overall": statistics.median(x["rows"] / x["wall_s"] for x in rs),
                "texts_per_s_job": statistics.median(x["rows"] / x["job_s"] for x in rs),
                "wall_s": statistics.median(x["wall_s"] for x in rs),
                "peak_rss_mb": statistics.median(x["peak_rss_mb"] for x in rs),
                **({"startup_s": statistics.median(startup[name]),
                    "texts_per_s_after_startup": statistics.median(
                        x["rows"] / (x["wall_s"] - s) for x, s in zip(rs, startup[name], strict=True)
                        if x["wall_s"] > s)} if small is not None and len(rs) else {}),
            } for name, rs in runs.items()
        },
    }
    if small is not None:
        report["break_even_texts"] = break_even(report["results"])
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"{report['rows']} texts, shard size {args.shard_size}, median of {args.repeat} interleaved rounds; "
          f"CPU flags {', '.join(flags)}, load average at the end {report['load_avg_at_end'][0]:.1f}")
    print(f"{'configuration':<28} {'texts/s (command)':>18} {'texts/s (job)':>14} {'wall s':>8} {'peak RSS MB':>12}"
          + (f" {'start-up s':>11} {'texts/s after':>14}" if small is not None else ""))
    for name, r in report["results"].items():
        extra = f" {r['startup_s']:>11.1f} {r['texts_per_s_after_startup']:>14.1f}" if "startup_s" in r else ""
        print(f"{name:<28} {r['texts_per_s_overall']:>18.1f} {r['texts_per_s_job']:>14.1f} {r['wall_s']:>8.1f} "
              f"{r['peak_rss_mb']:>12.0f}{extra}")
    for line in report.get("break_even_texts", []):
        print(line)
    return 0


def head(src: Path, n: int, dst: Path) -> Path:
    """The first n lines of src, written to dst."""
    with open(src, encoding="utf-8") as f, open(dst, "w", encoding="utf-8") as g:
        for i, line in enumerate(f):
            if i >= n:
                break
            g.write(line)
    return dst


def break_even(results: dict[str, dict[str, float]]) -> list[str]:
    """For each pair, the corpus size from which the slower starter's whole command is the quicker:
    start-up a + N / rate a = start-up b + N / rate b, from the measured start-ups and rates."""
    out = []
    names = [n for n in results if "startup_s" in results[n]]
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            ra, rb = results[a], results[b]
            fast, slow = (a, b) if ra["startup_s"] <= rb["startup_s"] else (b, a)
            f, s = results[fast], results[slow]
            gain = 1 / f["texts_per_s_after_startup"] - 1 / s["texts_per_s_after_startup"]  # s per text saved
            if gain <= 0:
                out.append(f"{slow} starts {s['startup_s'] - f['startup_s']:.1f} s later than {fast} and is not "
                           "faster after start-up: it never catches up on this machine")
            else:
                n = (s["startup_s"] - f["startup_s"]) / gain
                out.append(f"{slow} starts {s['startup_s'] - f['startup_s']:.1f} s later than {fast} and catches "
                           f"up from about {n:,.0f} texts")
    return out


if __name__ == "__main__":
    sys.exit(main())
