"""Speed, latency, cold start, memory and size of bundles on this machine, runtime only.

Throughput is texts/s at batch 1 and 32 for texts of about 16, 128 and 512 tokens (cut
from a fixed word pool with the bundle's own tokenizer, clipped at its max_length);
latency p50/p95 is per call at batch 1; cold start is a fresh Python process from spawn to
its first vector, and peak RSS is that process's ru_maxrss. When several bundles are
measured, each measurement alternates between them so drift in machine load hits all.

Deliberately does not import torch or compare against other tools (benchmarks/compare.py
does that) and does not judge the figures: it records them with the CPU's name, ISA flags
and the onnxruntime version, because INT8 speed depends on those.
"""

from __future__ import annotations

import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from .embedder import Embedder
from .errors import InputError
from .progress import Progress

__all__ = ["LENGTHS", "BATCHES", "cpu_info", "cold_start", "make_texts", "run_bench", "format_report"]

LENGTHS = (16, 128, 512)
BATCHES = (1, 32)
_ISA = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "asimd", "asimddp", "i8mm", "sve")
# ordinary English words: realistic WordPiece splits without shipping a corpus
_WORDS = (
    "the of and to in is was for on that with as by at from his her an were are which this be or has had not "
    "first new one their also after who its two but been they more other year time city people when into "
    "during world school state used only between most over such where many some these while would later "
    "system part government number company university national water music history season team known "
    "including could under three several made early since population family called area based group work "
    "river film series game around before found public north south west east began members another both "
    "small large local european american english international development research building language "
    "station village county district court service record album party league church military power "
    "program information design science children health market model energy network support process"
).split()


def cpu_info() -> dict[str, Any]:
    """CPU name, the ISA flags that decide INT8 speed, cores; from /proc/cpuinfo where there is one."""
    name, flags = platform.processor() or platform.machine(), set()
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        text = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "hardware", "cpu model") and value.strip():
            name = value.strip()
        elif key in ("flags", "features"):
            flags.update(value.split())
    return {
        "name": name, "machine": platform.machine(), "logical_cpus": os.cpu_count(),
        "isa": [f for f in _ISA if f in flags], "python": platform.python_version(),
        "onnxruntime": ort.__version__, "numpy": np.__version__,
    }


def make_texts(tokenizer_file: str | Path, tokens: int, n: int, seed: int = 0) -> list[str]:
    """n different texts of `tokens` tokens each (special tokens included) under this tokenizer."""
    tok = Tokenizer.from_file(str(tokenizer_file))
    tok.no_truncation()
    tok.no_padding()
    specials = len(tok.encode("").ids)
    want = max(tokens - specials, 1)
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        words = rng.choice(_WORDS, size=want + 8)  # a word is at least one token
        text = " ".join(words)
        enc = tok.encode(text)
        content = [i for i, s in enumerate(enc.special_tokens_mask) if not s]
        end = enc.offsets[content[min(want, len(content)) - 1]][1]
        out.append(text[:end])
    return out


_CHILD = (
    "import sys\n"
    "from edge_embed import Embedder\n"
    "t = int(sys.argv[2]) if sys.argv[2] != '-' else None\n"
    "v = Embedder.load(sys.argv[1], threads=t).embed(['a first vector to time a cold start'])\n"
    "sys.stdout.write(str(v.shape[1]) + '\\n'); sys.stdout.flush()\n"
    # VmHWM is this process image's own peak; ru_maxrss would carry the parent's pages over exec
    "hwm = [ln.split()[1] for ln in open('/proc/self/status') if ln.startswith('VmHWM:')] "
    "if sys.platform.startswith('linux') else []\n"
    "import resource\n"
    "r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
    "sys.stdout.write(str(int(hwm[0]) if hwm else (r // 1024 if sys.platform == 'darwin' else r)) + '\\n')\n"
)


def cold_start(bundle: str | Path, threads: int | None = None) -> tuple[float, float, float]:
    """(wall seconds from spawn to the first vector, CPU seconds it used, peak RSS in MiB) of a fresh process.

    The CPU seconds (user + system, all threads) do not grow when other processes share the
    cores, so they are the figure to compare on a busy machine.
    """
    src = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")]))}
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", _CHILD, str(bundle), str(threads) if threads else "-"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    line = proc.stdout.readline() if proc.stdout else b""
    elapsed = time.perf_counter() - t0
    rest = proc.stdout.read() if proc.stdout else b""
    err = proc.stderr.read() if proc.stderr else b""
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0 or not line.strip() or not rest.strip():
        raise InputError(f"{bundle}: cold start in a fresh process failed: "
                         f"{err.decode(errors='replace').strip()[-300:]}")
    return elapsed, usage.ru_utime + usage.ru_stime, int(rest.split()[0]) / 1024


def _time_calls(emb: Embedder, batches: Sequence[list[str]], seconds: float) -> list[float]:
    """Per-call times, cycling through batches until `seconds` passed (at least one pass)."""
    emb.embed(batches[0], batch_size=len(batches[0]))  # warm-up: first run allocates
    times: list[float] = []
    start = time.perf_counter()
    i = 0
    while i < len(batches) or time.perf_counter() - start < seconds:
        b = batches[i % len(batches)]
        t0 = time.perf_counter()
        emb.embed(b, batch_size=len(b))
        times.append(time.perf_counter() - t0)
        i += 1
    return times


def run_bench(bundles: Sequence[str | Path], threads: int | None = None, seconds: float = 2.0,
              cold_runs: int = 3, lengths: Sequence[int] = LENGTHS, batches: Sequence[int] = BATCHES,
              progress: bool = True) -> dict[str, Any]:
    """Measure every bundle, alternating between them per measurement; a JSON-ready report."""
    embs = [Embedder.load(b, threads=threads) for b in bundles]
    results: list[dict[str, Any]] = []
    for b, emb in zip(bundles, embs, strict=True):
        m = emb.manifest
        results.append({
            "bundle": str(b), "name": m.name, "method": m.quantization.get("method", "?"),
            "source": m.source.get("model_id", "?"), "dim": m.dim, "max_length": m.max_length,
            "model_mb": m.files[m.model_file].bytes / 1e6,
            "bundle_mb": sum(f.bytes for f in m.files.values()) / 1e6,
            "throughput": [], "latency_ms": [], "notes": [],
        })
    shown = Progress("bench", len(embs) * (len(lengths) * len(batches) + 1), unit="measurements", enabled=progress)
    for length in lengths:
        pools = []
        for emb, res in zip(embs, results, strict=True):
            eff = min(length, emb.max_length)
            if eff < length:
                res["notes"].append(f"{length}-token texts clipped at max_length={emb.max_length}")
            pools.append((eff, make_texts(emb.path / emb.manifest.tokenizer_file, eff, max(max(batches), 8),
                                          seed=length)))
        for bs in batches:
            for emb, res, (eff, texts) in zip(embs, results, pools, strict=True):
                groups = [texts[i:i + bs] for i in range(0, len(texts) - bs + 1, bs)]
                times = np.array(_time_calls(emb, groups, seconds))
                res["throughput"].append({"length": length, "tokens": eff, "batch": bs,
                                          "texts_per_s": bs * len(times) / float(times.sum()), "calls": len(times)})
                if bs == 1:
                    res["latency_ms"].append({"length": length, "tokens": eff,
                                              "p50": 1e3 * float(np.percentile(times, 50)),
                                              "p95": 1e3 * float(np.percentile(times, 95))})
                shown.update(1, f"{res['name'] or res['bundle']}: {eff} tokens, batch {bs}")
    for res in results:
        runs = [cold_start(res["bundle"], threads) for _ in range(max(cold_runs, 1))]
        shown.update(1, f"{res['name'] or res['bundle']}: cold start x{cold_runs}")
        res["cold_start_s"] = float(np.median([r[0] for r in runs]))
        res["cold_start_cpu_s"] = float(np.median([r[1] for r in runs]))
        res["peak_rss_mb"] = float(max(r[2] for r in runs))
    shown.close()
    self_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "cpu": cpu_info(), "threads": threads or "onnxruntime default", "seconds_per_measurement": seconds,
        "bench_process_peak_rss_mb": self_rss / (1 << 20) if sys.platform == "darwin" else self_rss / 1024,
        "bundles": results,
    }


def format_report(report: dict[str, Any]) -> str:
    """The report as an aligned text table, one column per bundle."""
    res = report["bundles"]
    cpu = report["cpu"]
    rows: list[tuple[str, list[str]]] = [("bundle", [r["name"] or Path(r["bundle"]).name for r in res]),
                                         ("method", [r["method"] for r in res])]
    for i, t in enumerate(res[0]["throughput"]):
        label = f"texts/s {t['length']} tok, batch {t['batch']}"
        rows.append((label, [_fmt_tp(r["throughput"][i]) for r in res]))
    for i, lat in enumerate(res[0]["latency_ms"]):
        rows.append((f"latency p50/p95 ms, {lat['length']} tok",
                     [f"{r['latency_ms'][i]['p50']:.1f}/{r['latency_ms'][i]['p95']:.1f}" for r in res]))
    rows += [
        ("cold start to 1st vector s", [f"{r['cold_start_s']:.2f}" for r in res]),
        ("cold start CPU s (user+sys)", [f"{r['cold_start_cpu_s']:.2f}" for r in res]),
        ("peak RSS of that process MiB", [f"{r['peak_rss_mb']:.0f}" for r in res]),
        ("model file MB", [f"{r['model_mb']:.1f}" for r in res]),
        ("bundle MB", [f"{r['bundle_mb']:.1f}" for r in res]),
    ]
    w0 = max(len(k) for k, _ in rows)
    widths = [max(len(v[j]) for _, v in rows) for j in range(len(res))]
    lines = [f"{k:<{w0}}  " + "  ".join(f"{v:>{widths[j]}}" for j, v in enumerate(vals)) for k, vals in rows]
    notes = sorted({n for r in res for n in r["notes"]})
    lines.append("")
    lines.append(f"cpu: {cpu['name']} ({cpu['machine']}, {cpu['logical_cpus']} logical CPUs), "
                 f"ISA: {', '.join(cpu['isa']) or 'none detected'}")
    lines.append(f"onnxruntime {cpu['onnxruntime']}, threads: {report['threads']}, "
                 f"{report['seconds_per_measurement']} s per measurement")
    lines += [f"note: {n} (marked *)" for n in notes]
    return "\n".join(lines)


def _fmt_tp(t: dict[str, Any]) -> str:
    star = "*" if t["tokens"] < t["length"] else ""
    return f"{t['texts_per_s']:.1f}{star}"

