"""Load time of a bundle directory vs the same bundle packed into one .edgeembed file.

Usage: python scripts/bench_packed_load.py BUNDLE_DIR [RUNS]
Packs BUNDLE_DIR into a temporary file, then loads both alternately in one process (one
intra-op thread) and prints median load times and their ratio. Timings on a shared
machine are noisy: compare the ratio, not the absolute figures, and quote medians.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

from edge_embed import Embedder
from edge_embed.archive import pack


def main() -> None:
    bundle = Path(sys.argv[1])
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 21
    with tempfile.TemporaryDirectory() as tmp:
        packed = pack(bundle, Path(tmp) / f"{bundle.name}.edgeembed")
        Embedder.load(bundle)  # warm the page cache for both
        Embedder.load(packed)
        times: dict[str, list[float]] = {"directory": [], "packed": []}
        for _ in range(runs):
            for label, src in (("directory", bundle), ("packed", packed)):
                t = time.perf_counter()
                emb = Embedder.load(src, threads=1)
                times[label].append(time.perf_counter() - t)
                del emb
        d, p = statistics.median(times["directory"]), statistics.median(times["packed"])
        print(f"{bundle}: directory {d * 1000:.1f} ms, packed {p * 1000:.1f} ms (median of {runs}), "
              f"ratio {p / d:.3f}; packed file {packed.stat().st_size / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
