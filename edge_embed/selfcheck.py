"""Self-check on load: re-embed the bundle's stored probe texts on this device.

At build time a bundle stores a handful of probe texts with their fp32 reference vectors
(``selfcheck.json``, listed in the manifest's ``files``) and a threshold in the manifest
key ``self_check``. Here those probes are embedded with the bundle on the machine at hand
and compared by cosine; below the threshold the check fails (or warns) naming the CPU and
the onnxruntime version. That catches a class of bug no build-side validation can: a
quantized kernel that computes wrong numbers on one particular CPU.

Deliberately does not compute the reference vectors (the build does, with the fp32
model), judge speed, or compare against anything but the stored vectors. Stdlib, numpy
and onnxruntime (for its version) only.
"""

from __future__ import annotations

import json
import math
import platform
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from .errors import BundleError, SelfCheckError

if TYPE_CHECKING:
    from .embedder import Embedder
    from .manifest import Manifest

__all__ = [
    "MANIFEST_KEY",
    "PROBE_TEXTS",
    "SELFCHECK_FILE",
    "SELFCHECK_FORMAT",
    "SelfCheckResult",
    "SelfCheckWarning",
    "describe_cpu",
    "probe_file",
    "run_self_check",
    "self_check",
    "write_probes",
]

SELFCHECK_FILE = "selfcheck.json"
SELFCHECK_FORMAT = "edge-embed.selfcheck/1"
MANIFEST_KEY = "self_check"

# Short and long, query and passage, digits, accents and code: a kernel bug that only shows
# on some shapes or token ranges gets more than one chance to surface. Kept few and short,
# and embedded one per batch (as a single query is), so the check costs ~150 tokens on load.
PROBE_TEXTS: tuple[str, ...] = (
    "how do I reset my router?",
    "The quick brown fox jumps over the lazy dog.",
    "Raspberry Pi 5 uses a quad-core Arm Cortex-A76 processor running at 2.4 GHz.",
    "Café crème brûlée: 3 œufs, 250 ml de crème, 60 g de sucre.",
    "def add(a, b):\n    return a + b  # returns the sum of two numbers",
    "Sentence embeddings map text to fixed-size vectors so that texts with similar meaning end "
    "up close together; 8-bit quantization makes the model smaller and faster on CPUs.",
)

_ARM_PARTS = {  # implementer 0x41 (Arm Ltd) part numbers, from the kernel's cputype.h
    "0xd03": "Cortex-A53", "0xd04": "Cortex-A35", "0xd05": "Cortex-A55", "0xd07": "Cortex-A57",
    "0xd08": "Cortex-A72", "0xd09": "Cortex-A73", "0xd0a": "Cortex-A75", "0xd0b": "Cortex-A76",
    "0xd0c": "Neoverse-N1", "0xd0d": "Cortex-A77", "0xd40": "Neoverse-V1", "0xd41": "Cortex-A78",
    "0xd44": "Cortex-X1", "0xd46": "Cortex-A510", "0xd47": "Cortex-A710", "0xd48": "Cortex-X2",
    "0xd49": "Neoverse-N2", "0xd4d": "Cortex-A715", "0xd4e": "Cortex-X3", "0xd4f": "Neoverse-V2",
    "0xd80": "Cortex-A520", "0xd81": "Cortex-A720",
}
# ISA extensions that decide which INT8 kernels onnxruntime picks
_INT8_FEATURES = ("asimddp", "i8mm", "sve", "avx2", "avx512_vnni", "avx_vnni", "amx_int8")


class SelfCheckWarning(UserWarning):
    """A self-check found wrong vectors and the caller asked for a warning, not an error."""


def _cpuinfo(path: str = "/proc/cpuinfo") -> dict[str, str]:
    """First value of each key in /proc/cpuinfo; empty where there is none (macOS, Windows)."""
    info: dict[str, str] = {}
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                key, sep, value = line.partition(":")
                if sep:
                    info.setdefault(key.strip().lower(), value.strip())
    except OSError:
        pass
    return info


def describe_cpu(cpuinfo_path: str = "/proc/cpuinfo") -> str:
    """One line naming this machine's CPU, e.g. 'aarch64 Cortex-A72 (CPU part 0xd08) [no asimddp]'."""
    machine = platform.machine() or "unknown-arch"
    info = _cpuinfo(cpuinfo_path)
    parts = [machine]
    if info.get("model name"):
        parts.append(info["model name"])
    elif info.get("cpu part"):
        part = info["cpu part"].lower()
        name = _ARM_PARTS.get(part, "") if info.get("cpu implementer", "").lower() == "0x41" else ""
        parts.append(f"{name} (CPU part {part})" if name else f"CPU implementer {info.get('cpu implementer', '?')} "
                     f"part {part}")
    elif platform.processor():
        parts.append(platform.processor())
    if info.get("model") and not info["model"].isdigit():  # a Raspberry Pi names its board here; x86 a number
        parts.append(f"on {info['model']}")
    flags = set((info.get("flags") or info.get("features") or "").split())
    if flags:
        have = [f for f in _INT8_FEATURES if f in flags]
        parts.append(f"[{' '.join(have) or 'no dot-product/VNNI extensions'}]")
    return " ".join(parts)


@dataclass(frozen=True)
class SelfCheckResult:
    """Per-probe cosine to the stored fp32 reference, and the verdict."""

    cosines: tuple[float, ...]
    texts: tuple[str, ...]
    min_cosine: float
    threshold: float
    cpu: str
    onnxruntime: str

    @property
    def passed(self) -> bool:
        # NaN compares False, so a NaN vector fails
        return all(c >= self.threshold for c in self.cosines)

    @property
    def worst(self) -> int:
        return int(np.argmin(np.nan_to_num(np.asarray(self.cosines), nan=-2.0)))

    def summary(self) -> str:
        verdict = "passed" if self.passed else "FAILED"
        return (f"self-check {verdict}: min cosine {self.min_cosine:.4f} over {len(self.cosines)} probes "
                f"(threshold {self.threshold}) on {self.cpu}, onnxruntime {self.onnxruntime}")


def probe_file(manifest: Manifest) -> str | None:
    """The probe file the manifest's self_check key names, if it names one 'files' lists."""
    spec = manifest.extra.get(MANIFEST_KEY)
    name = spec.get("file", SELFCHECK_FILE) if isinstance(spec, dict) else None
    return name if isinstance(name, str) and name in manifest.files else None


def _spec(emb: Embedder) -> tuple[str, float]:
    """The probe file and threshold named by the manifest; BundleError naming the key if absent."""
    where = emb.path / "manifest.json"
    spec = emb.manifest.extra.get(MANIFEST_KEY)
    if spec is None:
        raise BundleError(f"{where}: no '{MANIFEST_KEY}' key, so this bundle carries no self-check probes; "
                          "rebuild it with a current 'edge-embed build' or load without self_check")
    if not isinstance(spec, dict):
        raise BundleError(f"{where}: '{MANIFEST_KEY}' must be an object, got {type(spec).__name__}")
    name = spec.get("file", SELFCHECK_FILE)
    if not isinstance(name, str) or name not in emb.manifest.files:
        raise BundleError(f"{where}: '{MANIFEST_KEY}.file' is {name!r}, which 'files' does not list")
    threshold = spec.get("min_cosine")
    if (not isinstance(threshold, (int, float)) or isinstance(threshold, bool)
            or not math.isfinite(threshold) or not -1.0 <= threshold <= 1.0):
        raise BundleError(f"{where}: '{MANIFEST_KEY}.min_cosine' must be a number in [-1, 1], got {threshold!r}")
    return name, float(threshold)


def _read_probes(path: str, raw: bytes | None, dim: int) -> tuple[list[str], list[str | None],
                                                                   npt.NDArray[np.float32], int]:
    try:
        data = json.loads(raw.decode("utf-8") if raw is not None else Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BundleError(f"{path}: not a readable self-check file ({e}); rebuild the bundle") from None
    if not isinstance(data, dict) or data.get("format") != SELFCHECK_FORMAT:
        got = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise BundleError(f"{path}: 'format' must be {SELFCHECK_FORMAT!r}, got {got!r}; rebuild the bundle")
    probes = data.get("probes")
    if not isinstance(probes, list) or not probes:
        raise BundleError(f"{path}: 'probes' must be a non-empty list")
    texts: list[str] = []
    prompts: list[str | None] = []
    vecs: list[list[float]] = []
    for i, p in enumerate(probes):
        if not isinstance(p, dict) or not isinstance(p.get("text"), str):
            raise BundleError(f"{path}: 'probes[{i}].text' must be a string")
        prompt = p.get("prompt")
        if prompt is not None and not isinstance(prompt, str):
            raise BundleError(f"{path}: 'probes[{i}].prompt' must be a prompt name or null")
        v = p.get("vector")
        if not isinstance(v, list) or len(v) != dim or not all(
                isinstance(x, (int, float)) and not isinstance(x, bool) for x in v):
            raise BundleError(f"{path}: 'probes[{i}].vector' must be a list of {dim} numbers (the bundle's dim)")
        texts.append(p["text"])
        prompts.append(prompt)
        vecs.append(v)
    batch_size = data.get("batch_size", 1)
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise BundleError(f"{path}: 'batch_size' must be a positive integer, got {batch_size!r}")
    return texts, prompts, np.asarray(vecs, dtype=np.float32), batch_size


def _cosines(a: npt.NDArray[np.float32], b: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    den = np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        out: npt.NDArray[np.float64] = (a64 * b64).sum(axis=1) / den
    return np.where(den > 0, out, np.nan)


def run_self_check(emb: Embedder, data: bytes | None = None) -> SelfCheckResult:
    """Embed the stored probes with ``emb`` and measure cosine to the stored references.

    data: the probe file's bytes (for a packed bundle); by default it is read from the bundle
    directory. Raises BundleError if the bundle has no (or a malformed) self-check; never
    raises because of the verdict: see :meth:`SelfCheckResult.passed` and :func:`self_check`.
    """
    name, threshold = _spec(emb)
    texts, prompts, ref, batch_size = _read_probes(f"{emb.path}/{name}", data, emb.dim)
    got = np.empty_like(ref)
    for prompt in dict.fromkeys(prompts):  # one embed() per prompt, probes keep their order
        idx = [i for i, p in enumerate(prompts) if p == prompt]
        got[idx] = emb.embed_detailed([texts[i] for i in idx], prompt=prompt, batch_size=batch_size).vectors
    cos = _cosines(got, ref)
    finite = cos[np.isfinite(cos)]
    return SelfCheckResult(
        cosines=tuple(float(c) for c in cos), texts=tuple(texts),
        min_cosine=float(finite.min()) if finite.size == cos.size else float("nan"),
        threshold=threshold, cpu=describe_cpu(), onnxruntime=ort.__version__,
    )


def self_check(emb: Embedder, on_fail: str = "raise", data: bytes | None = None) -> SelfCheckResult:
    """Run the self-check; on failure raise SelfCheckError (on_fail='raise') or warn ('warn')."""
    if on_fail not in ("raise", "warn"):
        raise ValueError(f"on_fail: expected 'raise' or 'warn', got {on_fail!r}")
    res = run_self_check(emb, data)
    if not res.passed:
        w = res.worst
        text = res.texts[w] if len(res.texts[w]) <= 40 else res.texts[w][:37] + "..."
        msg = (f"{emb.path}: self-check failed on this device: probe {w} ({text!r}) has cosine "
               f"{res.cosines[w]:.4f} to the stored fp32 reference, below the manifest's "
               f"{MANIFEST_KEY}.min_cosine={res.threshold}; CPU: {res.cpu}; onnxruntime {res.onnxruntime}. "
               "This onnxruntime computes wrong vectors for this bundle on this CPU: try another "
               "onnxruntime version or an fp32 bundle, and report the CPU and version")
        if on_fail == "raise":
            raise SelfCheckError(msg)
        warnings.warn(msg, SelfCheckWarning, stacklevel=3)
    return res


def write_probes(bundle_dir: str | Path, texts: Sequence[str], vectors: Any, *, prompts: Sequence[str | None] | None
                 = None, batch_size: int | None = None, reference: str = "fp32") -> Path:
    """Write ``selfcheck.json`` (build side): probe texts with their reference vectors.

    The caller adds the file to the manifest's ``files`` and sets the manifest key
    ``self_check`` to ``{"file": "selfcheck.json", "min_cosine": ...}``.
    """
    vecs = np.asarray(vectors, dtype=np.float32)
    if vecs.ndim != 2 or vecs.shape[0] != len(texts):
        raise ValueError(f"vectors: expected shape ({len(texts)}, dim), got {vecs.shape}")
    prompt_list = list(prompts) if prompts is not None else [None] * len(texts)
    data = {
        "format": SELFCHECK_FORMAT,
        "reference": reference,
        "batch_size": batch_size or 1,
        # 8 significant digits: far finer than any threshold, and a readable, diffable file
        "probes": [{"text": t, "prompt": p, "vector": [float(f"{x:.8g}") for x in v]}
                   for t, p, v in zip(texts, prompt_list, vecs.tolist(), strict=True)],
    }
    path = Path(bundle_dir) / SELFCHECK_FILE
    path.write_text(json.dumps(data, ensure_ascii=False) + "\n", encoding="utf-8")
    return path
