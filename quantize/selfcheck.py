"""Build side of the self-check: store probe texts and their fp32 vectors in a bundle.

The runtime side (``edge_embed.selfcheck``) re-embeds these probes on the device and
compares by cosine against ``manifest.self_check.min_cosine``. Here the probes are
embedded by the fp32 reference bundle through the runtime's own Embedder, written to
``selfcheck.json``, listed in the manifest's ``files``, and the finished bundle is checked
once on the build machine, so a bundle that would fail its own self-check is never
written. Does not pick the threshold policy beyond a default: the caller passes it.
"""

from __future__ import annotations

from pathlib import Path

from edge_embed import Embedder, Manifest
from edge_embed.selfcheck import MANIFEST_KEY, PROBE_TEXTS, SELFCHECK_FILE, run_self_check, write_probes

from . import DriftError

__all__ = ["FP32_MIN_COSINE", "add_self_check"]

# an fp32 bundle against its own vectors: anything below this is a broken kernel, not rounding
FP32_MIN_COSINE = 0.999


def add_self_check(bundle: Path, reference: Embedder, min_cosine: float,
                   texts: tuple[str, ...] = PROBE_TEXTS) -> float:
    """Write probes + fp32 vectors into ``bundle`` and its manifest; returns the build machine's min cosine.

    Queries are also stored with each of the bundle's prompts (that is how they are served).
    Raises DriftError if the bundle fails its own self-check here.
    """
    items: list[tuple[str, str | None]] = [(t, None) for t in texts]
    items += [(texts[0], name) for name in sorted(reference.prompts)]
    vectors = []
    for text, prompt in items:
        # one text per batch: the fp32 reference does not depend on batching, and the device
        # embeds probes one at a time too (see write_probes' batch_size)
        vectors.append(reference.embed_detailed([text], prompt=prompt).vectors[0])
    write_probes(bundle, [t for t, _ in items], vectors, prompts=[p for _, p in items], batch_size=1,
                 reference=f"fp32 bundle {reference.path.name}, run through edge_embed.Embedder")
    m = Manifest.read(bundle)
    m.files = Manifest.describe_files(bundle, sorted(set(m.files) | {SELFCHECK_FILE}))
    m.extra[MANIFEST_KEY] = {"file": SELFCHECK_FILE, "min_cosine": float(min_cosine), "probes": len(items)}
    m.write(bundle)
    res = run_self_check(Embedder.load(bundle))
    if not res.passed:
        raise DriftError(f"{bundle}: the bundle fails its own self-check on the build machine: {res.summary()}")
    m.extra[MANIFEST_KEY]["build_min_cosine"] = round(res.min_cosine, 6)
    m.write(bundle)
    return res.min_cosine
