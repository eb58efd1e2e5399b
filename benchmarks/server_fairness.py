"""Fairness benchmark for ``edge-embed serve``: does a short request wait behind a long one?

Starts the server on a free loopback port and reports, in one run:

1. latency of 1-text requests sent one after another to an idle server (p50/p99);
2. the same while 512-text requests are in flight back to back on another connection
   (only samples sent and answered while a 512-text request was in flight count); the
   goal is p99 within 2x the idle p99 plus one micro-batch, the mean wall time of one
   micro-batch of passages, read from the server's /metrics around one 128-text request
   sent alone just before (the micro-batches of the phase itself include the 1-text
   requests' own short runs, so their mean is also reported, not used);
3. ``/health`` latency while one 8 MB text is being embedded;
4. the time to embed one 5 MB text against one max_length-token text.

The client is loadtest.py's minimal asyncio HTTP/1.1 client (on a 2-core machine the
load generator shares the CPU with the server). Texts: msmarco-5k passages and queries
from ../shared/data when present, else generated sentences.

    .venv/bin/python benchmarks/server_fairness.py -m models/minilm-int8
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loadtest import ROOT, _post, load_texts, pct, start_server  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "msmarco-5k"


async def _get(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str, path: str) -> tuple[int, bytes]:
    writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    status_line = await reader.readline()
    if not status_line:
        raise ConnectionError("server closed the connection")
    length = 0
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        if name.lower() == "content-length":
            length = int(value)
    return int(status_line.split()[1]), await reader.readexactly(length)


def _jsonl_texts(path: Path) -> list[str]:
    """The "text" of each line of a BEIR .jsonl (split on \\n only: passages hold U+2028), else generated ones."""
    if not path.is_file():
        return load_texts(None)
    return [json.loads(line)["text"] for line in path.read_text(encoding="utf-8").split("\n") if line.strip()]


def _inference(metrics: bytes) -> tuple[float, float, dict[float, float]]:
    """(sum, count, cumulative count per bucket bound) of edge_embed_inference_seconds in a /metrics page."""
    total = count = 0.0
    buckets: dict[float, float] = {}
    for line in metrics.decode().splitlines():
        if line.startswith("edge_embed_inference_seconds_sum"):
            total = float(line.split()[-1])
        elif line.startswith("edge_embed_inference_seconds_count"):
            count = float(line.split()[-1])
        elif line.startswith("edge_embed_inference_seconds_bucket"):
            bound = line.split('le="', 1)[1].split('"', 1)[0]
            buckets[float("inf") if bound == "+Inf" else float(bound)] = float(line.split()[-1])
    return total, count, buckets


def _bucket_p99(before: dict[float, float], after: dict[float, float]) -> float:
    """The histogram bound under which 99 % of the micro-batches between two /metrics reads fell."""
    diff = {b: after[b] - before.get(b, 0.0) for b in sorted(after)}
    n = diff.get(float("inf"), 0.0)
    return next((b for b, c in diff.items() if n and c >= 0.99 * n), float("nan"))


def _summary(values: list[float]) -> dict[str, float]:
    return {"n": len(values), "p50_ms": 1000 * pct(values, 50), "p99_ms": 1000 * pct(values, 99),
            "max_ms": 1000 * max(values)}


async def _one_text(host: str, port: int, queries: list[str], n: int, busy: asyncio.Event | None,
                    stop: asyncio.Event | None = None) -> list[float]:
    """n sequential 1-text requests; with ``busy``, only those sent and answered while it was set."""
    reader, writer = await asyncio.open_connection(host, port)
    out: list[float] = []
    i = 0
    try:
        while len(out) < n and not (stop and stop.is_set()):
            if busy is not None and not busy.is_set():
                await asyncio.sleep(0.002)
                continue
            body = json.dumps({"input": [queries[i % len(queries)]], "encoding_format": "base64"}).encode()
            i += 1
            t0 = time.perf_counter()
            status, _ = await _post(reader, writer, host, "/v1/embeddings", body, "")
            dt = time.perf_counter() - t0
            if status != 200:
                raise SystemExit(f"1-text request answered {status}")
            if busy is None or busy.is_set():
                out.append(dt)
    finally:
        writer.close()
    return out


async def _long_requests(host: str, port: int, passages: list[str], busy: asyncio.Event, stop: asyncio.Event,
                         seconds: list[float]) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    k = 0
    try:
        while not stop.is_set():
            texts = [passages[(k + j) % len(passages)] for j in range(512)]
            k += 512
            body = json.dumps({"input": texts, "encoding_format": "base64"}).encode()
            busy.set()
            t0 = time.perf_counter()
            status, _ = await _post(reader, writer, host, "/v1/embeddings", body, "")
            busy.clear()
            seconds.append(time.perf_counter() - t0)
            if status != 200:
                raise SystemExit(f"512-text request answered {status}")
    finally:
        writer.close()


async def _health_during(host: str, port: int, text: str) -> tuple[list[float], float]:
    """/health latencies while one request embeds ``text``; and that request's own seconds."""
    reader, writer = await asyncio.open_connection(host, port)
    body = json.dumps({"inputs": [text]}).encode()
    t0 = time.perf_counter()
    task = asyncio.create_task(_post(reader, writer, host, "/embed", body, ""))
    hr, hw = await asyncio.open_connection(host, port)
    latencies: list[float] = []
    while not task.done():
        h0 = time.perf_counter()
        status, _ = await _get(hr, hw, host, "/health")
        if status != 200:
            raise SystemExit(f"/health answered {status}")
        if not task.done():
            latencies.append(time.perf_counter() - h0)
        await asyncio.sleep(0.005)
    status, _ = await task
    took = time.perf_counter() - t0
    hw.close()
    writer.close()
    if status != 200:
        raise SystemExit(f"the {len(body) >> 20} MB request answered {status}")
    return latencies, took


async def _time_texts(host: str, port: int, texts: list[str]) -> float:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        t0 = time.perf_counter()
        status, _ = await _post(reader, writer, host, "/embed", json.dumps({"inputs": texts}).encode(), "")
        if status != 200:
            raise SystemExit(f"a request of {len(texts)} texts ({sum(map(len, texts))} characters) answered {status}")
        return time.perf_counter() - t0
    finally:
        writer.close()


def _big_text(passages: list[str], size: int) -> str:
    parts, n, i = [], 0, 0
    while n < size:
        parts.append(passages[i % len(passages)])
        n += len(parts[-1]) + 1
        i += 1
    return " ".join(parts)[:size]


def progress(stage: str) -> None:
    print(f"server_fairness: {stage}", file=sys.stderr, flush=True)


async def run(args: argparse.Namespace, port: int) -> dict[str, object]:
    host = "127.0.0.1"
    passages = _jsonl_texts(DATA / "corpus.jsonl")
    queries = _jsonl_texts(DATA / "queries.jsonl")
    await _one_text(host, port, queries, 20, None)  # warm the connection path

    progress("1-text requests, idle server")
    alone = await _one_text(host, port, queries, args.samples, None)

    async def inference() -> tuple[float, float, dict[float, float]]:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            return _inference((await _get(reader, writer, host, "/metrics"))[1])
        finally:
            writer.close()

    progress("one 128-text request alone (its micro-batches' mean time)")
    before = await inference()
    await _time_texts(host, port, passages[-128:])
    after = await inference()
    long_batch_s = (after[0] - before[0]) / max(1.0, after[1] - before[1])

    progress("1-text requests while 512-text requests are in flight")
    before = await inference()
    busy, stop = asyncio.Event(), asyncio.Event()
    long_seconds: list[float] = []
    long_task = asyncio.create_task(_long_requests(host, port, passages, busy, stop, long_seconds))
    during = await _one_text(host, port, queries[len(queries) // 2:], args.samples, busy)
    stop.set()
    await long_task
    after = await inference()
    batch_s = (after[0] - before[0]) / max(1.0, after[1] - before[1])
    batch_p99_s = _bucket_p99(before[2], after[2])

    progress("/health while an 8 MB text is embedded")
    health, took_8mb = await _health_during(host, port, _big_text(passages, 8 << 20))

    progress("a 5 MB text against a max_length text")
    huge = _big_text(passages, 5 << 20)
    one_window = " ".join(passages)[: 4 * args.max_length_chars]  # well over max_length tokens, cut there
    pairs = [(await _time_texts(host, port, [huge]), await _time_texts(host, port, [one_window])) for _ in range(3)]

    a, d = _summary(alone), _summary(during)
    goal_ms = 2 * a["p99_ms"] + 1000 * long_batch_s
    return {
        "one_text_alone": a,
        "one_text_during_512": d,
        "long_micro_batch_mean_ms": 1000 * long_batch_s,
        "micro_batch_mean_ms": 1000 * batch_s,
        "micro_batch_p99_at_most_s": batch_p99_s,
        "micro_batches": after[1] - before[1],
        "goal_p99_ms": goal_ms,
        "goal_met": d["p99_ms"] <= goal_ms,
        "request_512_median_s": statistics.median(long_seconds) if long_seconds else float("nan"),
        "requests_512": len(long_seconds),
        "health_during_8mb": _summary(health) if health else {"n": 0},
        "request_8mb_s": took_8mb,
        "text_5mb_median_s": statistics.median(p[0] for p in pairs),
        "text_max_length_median_s": statistics.median(p[1] for p in pairs),
        "ratio_5mb_to_max_length": statistics.median(p[0] / p[1] for p in pairs),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-m", "--model", required=True, help="bundle directory")
    ap.add_argument("--samples", type=int, default=200, help="1-text requests per phase (200)")
    ap.add_argument("--max-length-chars", type=int, default=2000, help="characters of the max_length-token text")
    ap.add_argument("--json", action="store_true", help="print the report as JSON")
    ap.add_argument("server_args", nargs="*", help="extra 'edge-embed serve' flags (after --)")
    args = ap.parse_args()
    args.api_key = None
    args.server_args = ["--max-body-bytes", str(16 << 20), *args.server_args]
    proc, port = start_server(args)
    try:
        report = asyncio.run(run(args, port))
    finally:
        proc.terminate()
        proc.wait(60)
    if args.json:
        print(json.dumps(report, indent=1))
        return 0
    a, d, h = report["one_text_alone"], report["one_text_during_512"], report["health_during_8mb"]
    print(f"1-text requests, idle server:       p50 {a['p50_ms']:7.1f} ms  p99 {a['p99_ms']:7.1f} ms  (n={a['n']})")
    print(f"1-text requests, 512-text in flight: p50 {d['p50_ms']:7.1f} ms  p99 {d['p99_ms']:7.1f} ms  (n={d['n']})")
    print(f"  one micro-batch of passages (a 128-text request alone): {report['long_micro_batch_mean_ms']:.1f} ms; "
          f"goal p99 <= 2 x idle p99 + one batch = {report['goal_p99_ms']:.1f} ms: "
          f"{'met' if report['goal_met'] else 'NOT met'}")
    print(f"  micro-batches in this phase, the 1-text runs included: mean {report['micro_batch_mean_ms']:.1f} ms "
          f"over {report['micro_batches']:.0f}; 99 % took <= {report['micro_batch_p99_at_most_s']:g} s")
    print(f"  512-text request: median {report['request_512_median_s']:.2f} s over {report['requests_512']}")
    if h["n"]:
        print(f"/health while an 8 MB text is embedded: p50 {h['p50_ms']:.1f} ms  p99 {h['p99_ms']:.1f} ms  "
              f"max {h['max_ms']:.1f} ms  (n={h['n']}; the 8 MB request took {report['request_8mb_s']:.2f} s)")
    else:
        print(f"/health while an 8 MB text is embedded: no sample (the request took {report['request_8mb_s']:.2f} s)")
    print(f"one 5 MB text {report['text_5mb_median_s']:.3f} s vs one max_length text "
          f"{report['text_max_length_median_s']:.3f} s: {report['ratio_5mb_to_max_length']:.1f}x (median of 3)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
