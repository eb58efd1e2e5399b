"""Record a bundle's per-dimension value ranges for int8/uint8 output precision.

``Embedder.encode(..., precision="int8")`` maps each dimension's [min, max] onto 256 steps
(sentence-transformers' scalar quantization). A runtime encoding one query has no range of
its own, so the build measures it once: the finished bundle embeds the probe set (plain,
and the short texts with each prompt, as queries are served) and the per-dimension min and
max go into the manifest key ``int8_ranges``. Does not decide the output layout (see
``edge_embed.precision``) and does not touch any file but manifest.json.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edge_embed import Embedder, Manifest
from edge_embed.manifest import RANGES_KEY

from .validate import load_probes

__all__ = ["add_int8_ranges"]

# short texts (queries) are embedded with each prompt too, as drift_report does
_SHORT_WORDS = 12


def add_int8_ranges(bundle: Path) -> dict[str, object]:
    """Embed the probe set with the bundle at ``bundle`` and write its ranges into the manifest."""
    emb = Embedder.load(bundle)
    probes = load_probes()
    parts = [emb.embed_detailed(probes).vectors]
    short = [t for t in probes if len(t.split()) <= _SHORT_WORDS]
    parts += [emb.embed_detailed(short, prompt=name).vectors for name in sorted(emb.prompts)]
    vecs = np.concatenate(parts)
    entry: dict[str, object] = {
        # rounded outward to 6 decimals: the recorded range still holds every probe vector
        "min": [float(np.floor(x * 1e6) / 1e6) for x in vecs.min(axis=0)],
        "max": [float(np.ceil(x * 1e6) / 1e6) for x in vecs.max(axis=0)],
        "texts": len(vecs),
        "from": "this bundle's vectors of the build's probe set (plain, and short texts with each prompt)",
    }
    m = Manifest.read(bundle)
    m.extra[RANGES_KEY] = entry
    m.write(bundle)
    return entry
