"""What verified loading costs: Embedder.load with and without the sha256 check, interleaved.

    .venv/bin/python benchmarks/verify_cost.py BUNDLE [BUNDLE ...] [--runs 7]

Each run loads the bundle in this process (the files are in the page cache after the first
load, so this is the hashing cost, not the disk's). Prints the median of each and the difference.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from edge_embed import Embedder
from edge_embed.manifest import Manifest


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundles", nargs="+")
    ap.add_argument("--runs", type=int, default=7)
    args = ap.parse_args()
    for b in args.bundles:
        m = Manifest.read(b) if Path(b).is_dir() else None
        size = sum(f.bytes for f in m.files.values()) if m else Path(b).stat().st_size
        Embedder.load(b)  # warm the page cache
        times: dict[bool, list[float]] = {True: [], False: []}
        for _ in range(args.runs):
            for verify in (False, True):
                t0 = time.perf_counter()
                Embedder.load(b, verify=verify)
                times[verify].append(time.perf_counter() - t0)
        on, off = statistics.median(times[True]), statistics.median(times[False])
        print(f"{b}: {size / 1e6:.1f} MB; load median {off * 1e3:.0f} ms unverified, {on * 1e3:.0f} ms verified: "
              f"+{(on - off) * 1e3:.0f} ms ({args.runs} interleaved runs)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
