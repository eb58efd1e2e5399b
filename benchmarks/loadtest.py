"""Load test for ``edge-embed serve``: loopback only, bounded in requests and time.

Starts the server on a free loopback port (or uses --url with --server-pid), runs N
concurrent clients that POST /v1/embeddings requests of 1-8 texts (base64, as the
official OpenAI client sends by default) over keep-alive connections, and reports
throughput, p50/p95/p99 latency, errors, and the server's RSS after the first 1,000 and
after all requests. Then, with the server stopped, it embeds the same texts directly with
``Embedder.embed`` (same request lists, then the same lists coalesced 64 requests at a
time) so the HTTP path can be compared with calling the library.

The client is a minimal HTTP/1.1 client on asyncio streams rather than httpx: on a 2-core
machine the load generator shares the CPU with the server, and a heavy client would
measure itself.

    python benchmarks/loadtest.py -m models/all-minilm-l6-v2-int8 --runs 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT))
DEFAULT_TEXTS = ROOT.parent / "shared" / "data" / "stsb" / "train.tsv"
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def load_texts(path: Path | None) -> list[str]:
    if path is not None and path.is_file():
        lines = path.read_text(encoding="utf-8").splitlines()
        if path.suffix == ".tsv":  # STS-B: score<TAB>sentence1<TAB>sentence2, header line
            out = [c for line in lines[1:] for c in line.split("\t")[1:3]]
        elif path.suffix == ".jsonl":  # BEIR corpus
            out = [json.loads(line)["text"] for line in lines if line.strip()]
        else:
            out = lines
        out = list(dict.fromkeys(t.strip() for t in out if t.strip()))
        if out:
            return out
    rng = random.Random(1)
    words = ("edge embedding model quantized runtime vector search query passage onnx token battery "
             "device offline sentence similarity cosine batch server latency memory").split()
    return [" ".join(rng.choice(words) for _ in range(rng.randint(4, 40))) for _ in range(5000)]


def make_requests(texts: list[str], n: int, lo: int, hi: int, seed: int) -> list[list[str]]:
    rng = random.Random(seed)
    return [rng.sample(texts, rng.randint(lo, hi)) for _ in range(n)]


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/{pid}/status: no VmRSS")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))]


async def _post(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str, path: str,
                body: bytes, headers: str) -> tuple[int, bytes]:
    writer.write(
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n{headers}\r\n".encode() + body
    )
    status_line = await reader.readline()
    if not status_line:
        raise ConnectionError("server closed the connection")
    status = int(status_line.split()[1])
    length = 0
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        if name.lower() == "content-length":
            length = int(value)
    return status, await reader.readexactly(length)


async def run_load(host: str, port: int, requests: list[list[str]], clients: int, pid: int | None,
                   deadline: float, api_key: str | None, checkpoint: int) -> dict[str, object]:
    latencies: list[float] = []
    errors: dict[str, int] = {}
    rss: dict[str, int] = {}
    next_index = 0
    done = 0
    texts_done = 0
    auth = f"Authorization: Bearer {api_key}\r\n" if api_key else ""

    async def client() -> None:
        nonlocal next_index, done, texts_done
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while next_index < len(requests) and time.monotonic() < deadline:
                batch = requests[next_index]
                next_index += 1
                body = json.dumps({"model": "x", "input": batch, "encoding_format": "base64"}).encode()
                t0 = time.perf_counter()
                try:
                    status, payload = await _post(reader, writer, host, "/v1/embeddings", body, auth)
                    if status != 200:
                        key = f"HTTP {status}"
                    elif len(json.loads(payload)["data"]) != len(batch):
                        key = "wrong number of vectors"
                    else:
                        key = ""
                except (OSError, ValueError, asyncio.IncompleteReadError) as e:
                    key = type(e).__name__
                    writer.close()
                    reader, writer = await asyncio.open_connection(host, port)
                latencies.append(time.perf_counter() - t0)
                if key:
                    errors[key] = errors.get(key, 0) + 1
                done += 1
                texts_done += len(batch)
                if pid is not None and done == checkpoint:
                    rss["after_first"] = rss_kib(pid)
        finally:
            writer.close()

    cpu0 = cpu_seconds(pid) if pid is not None else 0.0
    t0 = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    wall = time.perf_counter() - t0
    cpu = cpu_seconds(pid) - cpu0 if pid is not None else float("nan")
    if pid is not None:
        rss["after_all"] = rss_kib(pid)
    return {
        "requests": done, "texts": texts_done, "seconds": wall, "req_per_s": done / wall,
        "texts_per_s": texts_done / wall, "p50_ms": 1000 * pct(latencies, 50),
        "p95_ms": 1000 * pct(latencies, 95), "p99_ms": 1000 * pct(latencies, 99),
        "errors": sum(errors.values()), "error_kinds": errors, "rss_kib": rss,
        "server_cpu_s": cpu, "texts_per_cpu_s": texts_done / cpu if cpu else float("nan"),
    }


def start_server(args: argparse.Namespace) -> tuple[subprocess.Popen[bytes], int]:
    cmd = [sys.executable, "-m", "edge_embed.cli", "serve", "-m", str(Path(args.model).resolve()),
           "--host", "127.0.0.1", "--port", "0", "--log-level", "warning", *args.server_args]
    if args.api_key:
        cmd += ["--api-key", args.api_key]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, cwd=ROOT)
    assert proc.stderr is not None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stderr.readline().decode()
        if not line and proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}")
        m = re.search(r"on http://127\.0\.0\.1:(\d+)", line)
        if m:
            # keep draining the server's log so a chatty server never blocks on a full pipe
            threading.Thread(target=proc.stderr.read, daemon=True).start()
            return proc, int(m.group(1))
    proc.kill()
    raise SystemExit("server did not start within 60 s")


def baseline(model: str, requests: list[list[str]], threads: int | None) -> dict[str, float]:
    """Embedder.embed called directly: per request list, and 64 request lists at a time."""
    from edge_embed import Embedder

    emb = Embedder.load(model, threads=threads)
    emb.embed(requests[0])  # warm-up
    n = sum(len(r) for r in requests)
    t0, c0 = time.perf_counter(), time.process_time()
    for r in requests:
        emb.embed(r)
    per_request = n / (time.perf_counter() - t0)
    per_request_cpu = n / (time.process_time() - c0)
    t0, c0 = time.perf_counter(), time.process_time()
    for i in range(0, len(requests), 64):
        emb.embed([t for r in requests[i:i + 64] for t in r])
    coalesced = n / (time.perf_counter() - t0)
    coalesced_cpu = n / (time.process_time() - c0)
    return {"per_request_texts_per_s": per_request, "coalesced64_texts_per_s": coalesced,
            "per_request_texts_per_cpu_s": per_request_cpu, "coalesced64_texts_per_cpu_s": coalesced_cpu}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-m", "--model", help="bundle directory: start a server for it on a free loopback port")
    ap.add_argument("--url", help="use a running server instead (loopback only), e.g. http://127.0.0.1:8080")
    ap.add_argument("--server-pid", type=int, help="pid of the --url server, to read its RSS")
    ap.add_argument("--api-key", default=None)
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--requests", type=int, default=10_000, help="requests per run (capped at 100,000)")
    ap.add_argument("--checkpoint", type=int, default=1_000, help="read the server RSS after this many requests")
    ap.add_argument("--min-texts", type=int, default=1)
    ap.add_argument("--max-texts", type=int, default=8)
    ap.add_argument("--texts", type=Path, default=DEFAULT_TEXTS, help="text source (.tsv STS-B, .jsonl BEIR, .txt)")
    ap.add_argument("--runs", type=int, default=1, help="repeat and report the median of each figure")
    ap.add_argument("--max-seconds", type=float, default=600, help="stop a run after this long")
    ap.add_argument("--no-baseline", action="store_true", help="skip the direct Embedder.embed comparison")
    ap.add_argument("--baseline-requests", type=int, default=3_000,
                    help="how many of the run's request lists the direct baseline embeds")
    ap.add_argument("--threads", type=int, default=None, help="ONNX Runtime threads for the direct baseline")
    ap.add_argument("--json", action="store_true", help="print the report as JSON")
    ap.add_argument("server_args", nargs="*",
                    help="extra flags for the server after --, e.g. -- --max-batch-tokens 4096")
    args = ap.parse_args()
    if bool(args.model) == bool(args.url):
        ap.error("pass exactly one of -m BUNDLE or --url URL")
    args.requests = min(args.requests, 100_000)
    # a SIGTERM to the load test stops its server too (the finally below runs)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    texts = load_texts(args.texts)
    results = []
    for run in range(args.runs):
        requests = make_requests(texts, args.requests, args.min_texts, args.max_texts, seed=run)
        proc = None
        if args.model:
            proc, port = start_server(args)
            host, pid = "127.0.0.1", proc.pid
        else:
            m = re.match(r"https?://([^/:]+|\[[^\]]+\]):(\d+)", args.url)
            if not m or m.group(1).strip("[]") not in LOOPBACK:
                ap.error("--url must be a loopback http://127.0.0.1:PORT address")
            host, port, pid = m.group(1).strip("[]"), int(m.group(2)), args.server_pid
        try:
            deadline = time.monotonic() + args.max_seconds
            res = asyncio.run(run_load(host, port, requests, args.clients, pid, deadline, args.api_key,
                                       args.checkpoint))
        finally:
            if proc is not None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=60)
        if not args.json:
            print(f"run {run + 1} (server): " + summary(res), file=sys.stderr, flush=True)
        if args.model and not args.no_baseline:
            res["baseline"] = baseline(args.model, requests[:args.baseline_requests], args.threads)
        results.append(res)
        if not args.json:
            print(f"run {run + 1}: " + summary(res), file=sys.stderr)

    report = median_report(results)
    print(json.dumps(report, indent=2) if args.json else "median: " + summary(report))
    return 0 if report["errors"] == 0 else 1


def median_report(results: list[dict]) -> dict:
    med = {k: statistics.median(r[k] for r in results)
           for k in ("req_per_s", "texts_per_s", "p50_ms", "p95_ms", "p99_ms", "seconds", "texts_per_cpu_s")}
    med.update(runs=len(results), requests=results[0]["requests"], clients=None,
               errors=sum(r["errors"] for r in results),
               error_kinds=[r["error_kinds"] for r in results],
               rss_kib=[r["rss_kib"] for r in results])
    if all("baseline" in r for r in results):
        med["baseline"] = {k: statistics.median(r["baseline"][k] for r in results) for k in results[0]["baseline"]}
    return med


def summary(r: dict) -> str:
    out = (f"{r['requests']} requests, {r['texts_per_s']:.0f} texts/s ({r['req_per_s']:.0f} req/s), "
           f"latency p50 {r['p50_ms']:.0f} ms p95 {r['p95_ms']:.0f} ms p99 {r['p99_ms']:.0f} ms, "
           f"errors {r['errors']}")
    rss = r["rss_kib"]
    for one in (rss if isinstance(rss, list) else [rss]):
        if "after_first" in one and "after_all" in one:
            growth = 100 * (one["after_all"] - one["after_first"]) / one["after_first"]
            out += f"; RSS {one['after_first'] / 1024:.0f} -> {one['after_all'] / 1024:.0f} MiB ({growth:+.1f}%)"
    out += f"; server {r['texts_per_cpu_s']:.0f} texts per CPU-second"
    if "baseline" in r:
        b = r["baseline"]
        out += (f"\n  direct Embedder.embed: {b['per_request_texts_per_s']:.0f} texts/s per request list, "
                f"{b['coalesced64_texts_per_s']:.0f} texts/s 64 lists at a time "
                f"(server wall throughput = {100 * r['texts_per_s'] / b['per_request_texts_per_s']:.0f}% / "
                f"{100 * r['texts_per_s'] / b['coalesced64_texts_per_s']:.0f}% of these)"
                f"\n  per CPU-second: {b['per_request_texts_per_cpu_s']:.0f} / {b['coalesced64_texts_per_cpu_s']:.0f} "
                f"texts (server = {100 * r['texts_per_cpu_s'] / b['per_request_texts_per_cpu_s']:.0f}% / "
                f"{100 * r['texts_per_cpu_s'] / b['coalesced64_texts_per_cpu_s']:.0f}%)")
    return out


if __name__ == "__main__":
    sys.exit(main())
