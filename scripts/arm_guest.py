"""Guest side of the ARM check: runs under qemu-aarch64 with the project's own edge_embed.

Reads a job file written by scripts/arm_check.py, loads each bundle with
``edge_embed.Embedder``, embeds the job's texts in one call, runs the bundle's self-check
where it has one, and writes ``<name>.npy`` per bundle plus ``info.json`` into the job's
output directory. It judges nothing: the host compares. Uses only what a device has: the
runtime and its three dependencies.
"""

from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path


def main(argv: list[str]) -> int:
    job = json.loads(Path(argv[1]).read_text(encoding="utf-8"))
    out = Path(job["out"])
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    import numpy as np
    import onnxruntime as ort

    import edge_embed
    from edge_embed.selfcheck import MANIFEST_KEY, describe_cpu, run_self_check

    info: dict = {
        "machine": platform.machine(),
        "cpu": describe_cpu(),
        "python": platform.python_version(),
        "onnxruntime": ort.__version__,
        "numpy": np.__version__,
        "edge_embed": edge_embed.__file__,
        "import_s": round(time.perf_counter() - t0, 2),
        "bundles": {},
    }
    for name, path in job["bundles"].items():
        t = time.perf_counter()
        emb = edge_embed.Embedder.load(path, threads=job.get("threads", 1))
        vecs = emb.embed(job["texts"], batch_size=job.get("batch_size", 32))
        np.save(out / f"{name}.npy", vecs)
        entry: dict = {"shape": list(vecs.shape), "embed_s": round(time.perf_counter() - t, 2)}
        if name in job.get("self_check", ()) and MANIFEST_KEY in emb.manifest.extra:
            res = run_self_check(emb)
            entry["self_check"] = {"passed": res.passed, "min_cosine": res.min_cosine,
                                   "threshold": res.threshold, "cosines": list(res.cosines),
                                   "summary": res.summary()}
        info["bundles"][name] = entry
    info["total_s"] = round(time.perf_counter() - t0, 2)
    (out / "info.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
