"""Emulated Raspberry Pi check: the project's runtime on aarch64 Cortex-A72 (Pi 4) and A76 (Pi 5).

Runs ``scripts/arm_guest.py`` under ``qemu-aarch64-static -cpu <cpu>`` against a sysroot
made by ``scripts/arm_sysroot.sh`` (Debian arm64 python3.11 + aarch64 wheels of numpy,
onnxruntime and tokenizers at the host's versions), with PYTHONPATH pointing at this
checkout, so the code under test is the repository's own ``edge_embed``. The guest embeds
a fixed set of texts with an INT8 bundle and its fp32 reference; the host embeds the same
texts here and compares:

- fp32 on ARM vs fp32 on x86: max abs difference <= 1e-4 (gate);
- INT8 on ARM vs the fp32 reference: every text at or above the bundle's own cosine_min
  (gate; mean and p1 are reported, their thresholds belong to the 160-text validation set),
  and the bundle's self-check on the emulated CPU (gate);
- INT8 on ARM vs INT8 on x86: cosine reported, not gated (kernels differ by design).

Emulation is 40-200x slower than a device: this checks correctness, never speed.
Always names a CPU model: qemu 7.2's default ``-cpu max`` makes signed-INT8 kernels return
garbage. Exit codes: 0 pass, 1 a gate failed, 3 the check cannot run here (no qemu,
no sysroot), 2 usage.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
CPUS = ("cortex-a72", "cortex-a76")
FP32_MAX_ABS = 1e-4
BATCH = 4
UNAVAILABLE = 3

# A fixed set: queries and passages, short and longer, digits, accents and code. Embedded in
# batches of BATCH (sorted by length, as embed() does): emulated MiniLM runs at roughly
# 25 tokens/s, so padding everything to the longest text would double the check's time.
TEXTS: tuple[str, ...] = (
    "what is the capital of France?",
    "Paris is the capital and most populous city of France.",
    "how many cores does a Raspberry Pi 4 have",
    "The Raspberry Pi 4 Model B has a quad-core Cortex-A72 processor at 1.5 GHz.",
    "ONNX Runtime executes machine learning models on CPUs, GPUs and accelerators.",
    "I left my umbrella on the train this morning.",
    "Quantization maps 32-bit floating point weights to 8-bit integers with a scale and a zero point.",
    "Le chat dort sur le canapé près de la fenêtre.",
    "Der schnelle braune Fuchs springt über den faulen Hund.",
    "for i in range(10): print(i * i)",
    "Error 404: the page you requested could not be found.",
    "Sentence embeddings are dense vectors that capture the meaning of a text, so that semantic "
    "search can rank documents by cosine similarity to a query instead of by shared keywords.",
)


class Unavailable(Exception):
    """The check cannot run on this machine (no qemu, no apt, no network for the sysroot)."""


@dataclass
class Int8Result:
    """One INT8 bundle on one emulated CPU."""

    vs_fp32: list[float]  # per-text cosine to the fp32 reference (gated by the bundle's thresholds)
    x86_vs_arm: list[float]  # per-text cosine to the same bundle on x86 (reported only)
    self_check: dict[str, Any] | None


@dataclass
class CpuResult:
    cpu: str
    seconds: float
    info: dict[str, Any]
    fp32_max_abs: float
    int8: dict[str, Int8Result]
    failures: list[str] = field(default_factory=list)


@dataclass
class Report:
    cpus: list[CpuResult]
    x86_int8_vs_fp32: dict[str, list[float]]
    thresholds: dict[str, dict[str, float]]
    setup_s: float
    total_s: float
    bundles: dict[str, str]

    @property
    def passed(self) -> bool:
        return all(not c.failures for c in self.cpus)

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed, "setup_s": self.setup_s, "total_s": self.total_s,
            "bundles": self.bundles, "thresholds": self.thresholds, "texts": len(TEXTS), "batch_size": BATCH,
            "x86": {"cpu": _host_cpu(), **{k: _stats(v) for k, v in self.x86_int8_vs_fp32.items()}},
            "cpus": {c.cpu: {
                "seconds": c.seconds, "fp32_max_abs_diff": c.fp32_max_abs, "failures": c.failures,
                "int8": {k: {"vs_fp32": _stats(r.vs_fp32), "x86_vs_arm": _stats(r.x86_vs_arm),
                             "self_check": r.self_check} for k, r in c.int8.items()},
                "guest": c.info,
            } for c in self.cpus},
        }

    def text(self) -> str:
        lines = [f"ARM check: {len(TEXTS)} texts, batches of {BATCH}; fp32 reference {self.bundles['fp32']}"]
        for k, cos in self.x86_int8_vs_fp32.items():
            x = _stats(cos)
            lines += [f"  {k}: {self.bundles[k]}, thresholds vs fp32 {self.thresholds[k]}",
                      f"    x86 ({_host_cpu()}): vs fp32 cosine min {x['min']:.4f} mean {x['mean']:.4f}"]
        for c in self.cpus:
            lines += [
                f"  {c.cpu} ({c.info.get('cpu', '?')}, onnxruntime {c.info.get('onnxruntime', '?')}, "
                f"{c.seconds:.0f} s):",
                f"    fp32 ARM vs x86 max abs diff {c.fp32_max_abs:.2e} (gate <= {FP32_MAX_ABS:g})",
            ]
            for k, r in c.int8.items():
                a, b = _stats(r.vs_fp32), _stats(r.x86_vs_arm)
                sc = r.self_check["summary"] if r.self_check else "bundle has no self-check"
                lines += [
                    f"    {k}: vs fp32 cosine min {a['min']:.4f} (gated) mean {a['mean']:.4f}; "
                    f"vs {k} on x86 min {b['min']:.6f} mean {b['mean']:.6f} (reported only)",
                    f"    {k}: {sc}",
                ]
            lines += [f"    FAIL: {f}" for f in c.failures]
        lines.append(f"  {'PASS' if self.passed else 'FAIL'}: setup {self.setup_s:.0f} s, total {self.total_s:.0f} s")
        return "\n".join(lines)


def _stats(c: list[float]) -> dict[str, float]:
    a = np.asarray(c, dtype=np.float64)
    return {"min": float(a.min()), "p1": float(np.percentile(a, 1)), "mean": float(a.mean()), "n": int(a.size)}


def _cos(a: np.ndarray, b: np.ndarray) -> list[float]:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return [float(x) for x in (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))]


def _host_cpu() -> str:
    from edge_embed.selfcheck import describe_cpu
    return describe_cpu()


def fidelity_thresholds(bundle: Path) -> dict[str, float]:
    """The INT8 bundle's own cosine thresholds vs fp32, as {'min': .., 'mean': .., 'p1': ..}.

    Read from the manifest's validation thresholds; the self-check threshold is the floor
    when the bundle states no per-text minimum.
    """
    from edge_embed import Manifest
    m = Manifest.read(bundle)
    # the thresholds only: validation also holds the measured figures under the same names
    held = m.validation.get("thresholds")
    raw = {k: v for k, v in (held if isinstance(held, dict) else {}).items()
           if isinstance(v, (int, float)) and not isinstance(v, bool)}
    out: dict[str, float] = {}
    for key in ("min", "p1", "mean"):
        if f"cosine_{key}" in raw:
            out[key] = float(raw[f"cosine_{key}"])
    sc = m.extra.get("self_check")
    if "min" not in out and isinstance(sc, dict) and isinstance(sc.get("min_cosine"), (int, float)):
        out["min"] = float(sc["min_cosine"])
    if not out:
        raise RuntimeError(f"{bundle / 'manifest.json'}: no cosine thresholds in 'validation' or 'self_check'; "
                         "the ARM check gates on the bundle's own thresholds")
    return out


def ensure_sysroot(sysroot: Path) -> Path:
    """Build or reuse the sysroot; Unavailable (with the reason) where it cannot be had."""
    script = ROOT / "scripts" / "arm_sysroot.sh"
    env = dict(os.environ, PYTHON=sys.executable)
    proc = subprocess.run(["bash", str(script), str(sysroot)], env=env, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-5:])
        raise Unavailable(f"aarch64 sysroot could not be built ({script.name} exit {proc.returncode}): {tail}")
    if not shutil.which("qemu-aarch64-static"):
        raise Unavailable("qemu-aarch64-static not found; install it: apt-get install qemu-user-static")
    return sysroot


def _guest_env(sysroot: Path, home: Path) -> dict[str, str]:
    return {
        "PATH": "/usr/bin:/bin",
        "HOME": str(home),
        "LANG": "C.UTF-8",
        # sysroot wheels first, then the checkout: the code under test is the repo's own
        "PYTHONPATH": f"{sysroot / 'site'}:{ROOT}",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONNOUSERSITE": "1",
        "OMP_NUM_THREADS": "1",
        "EDGE_EMBED_THREADS": "1",
    }


def guest_info_self_check(bundle: Path, qemu_cpu: str, sysroot: Path, cpuinfo_of: str = "cortex-a76",
                          timeout: float = 240.0) -> subprocess.CompletedProcess[str]:
    """``edge-embed info BUNDLE --self-check`` in the guest, on any qemu CPU model.

    Used as a negative control: under qemu 7.2 every CPU model with SVE (``max``, which is
    also qemu's default) makes onnxruntime's INT8 kernels return wrong vectors, which the
    self-check must catch. ``cpuinfo_of`` picks which /proc/cpuinfo the guest sees.
    """
    cmd = ["qemu-aarch64-static", "-cpu", qemu_cpu, "-L", str(sysroot / "cpu" / cpuinfo_of),
           str(sysroot / "usr/bin/python3.11"), "-m", "edge_embed.cli", "info", str(bundle), "--self-check"]
    return subprocess.run(cmd, env=_guest_env(sysroot, sysroot), capture_output=True, text=True, timeout=timeout)


def _launch(cpu: str, sysroot: Path, job: dict[str, Any], work: Path) -> tuple[subprocess.Popen[str], Path, float]:
    out = work / cpu
    out.mkdir(parents=True, exist_ok=True)
    job = dict(job, out=str(out))
    job_file = work / f"{cpu}.job.json"
    job_file.write_text(json.dumps(job), encoding="utf-8")
    root = sysroot / "cpu" / cpu  # symlinks into the sysroot + this CPU's /proc/cpuinfo
    env = _guest_env(sysroot, work)
    cmd = ["qemu-aarch64-static", "-cpu", cpu, "-L", str(root), str(sysroot / "usr/bin/python3.11"),
           str(ROOT / "scripts" / "arm_guest.py"), str(job_file)]
    log = open(work / f"{cpu}.log", "w")  # noqa: SIM115 - closed with the process
    return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, text=True), out, time.perf_counter()


def _wait(running: list[tuple[subprocess.Popen[str], Path, float]], timeout: float) -> dict[int, float]:
    """Wait for every guest; kill those past `timeout` s. Returns each process's end time."""
    ended: dict[int, float] = {}
    while len(ended) < len(running):
        now = time.perf_counter()
        for proc, _, started in running:
            if id(proc) in ended:
                continue
            if proc.poll() is not None:
                ended[id(proc)] = now
            elif now - started > timeout:
                proc.kill()
                proc.wait()
                ended[id(proc)] = now
        time.sleep(0.2)
    return ended


def run_check(int8: Path | dict[str, Path], fp32: Path, *, cpus: tuple[str, ...] = CPUS,
              sysroot: Path | None = None, work: Path | None = None, timeout: float = 240.0,
              parallel: bool = True) -> Report:
    """Run the check; ``int8`` is one INT8 bundle or several by name (one guest run covers all)."""
    t0 = time.perf_counter()
    sysroot = ensure_sysroot(sysroot or ROOT / ".ci" / "cache" / "arm-sysroot")
    setup_s = time.perf_counter() - t0
    work = work or ROOT / ".ci" / "cache" / "arm-work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    int8s = {"int8": int8} if isinstance(int8, Path) else dict(int8)
    if "fp32" in int8s:
        raise ValueError("int8: 'fp32' names the reference bundle; pick another name")
    thresholds = {k: fidelity_thresholds(p) for k, p in int8s.items()}
    bundles = {**{k: str(p.resolve()) for k, p in int8s.items()}, "fp32": str(fp32.resolve())}
    job = {"bundles": bundles, "texts": list(TEXTS), "threads": 1, "batch_size": BATCH,
           "self_check": list(int8s)}

    running = []
    if parallel:  # one guest thread each; the two emulated CPUs share the host's cores
        running = [_launch(cpu, sysroot, job, work) for cpu in cpus]

    from edge_embed import Embedder  # host side, while the guests run
    host = {k: Embedder.load(p, threads=1).embed(list(TEXTS), batch_size=BATCH) for k, p in bundles.items()}
    x86_int8 = {k: _cos(host[k], host["fp32"]) for k in int8s}

    if parallel:
        ended = _wait(running, timeout)
    else:
        ended = {}
        for cpu in cpus:  # one at a time: wait for each before starting the next
            running.append(_launch(cpu, sysroot, job, work))
            ended.update(_wait([running[-1]], timeout))

    results = []
    for cpu, (proc, out, started) in zip(cpus, running, strict=True):
        rc = proc.returncode if proc.returncode is not None else "timeout"
        seconds = ended[id(proc)] - started
        log_tail = "\n".join((work / f"{cpu}.log").read_text(errors="replace").splitlines()[-15:])
        if rc != 0:
            raise RuntimeError(f"{cpu}: guest failed ({rc}) after {seconds:.0f} s; "
                               f"log {work / f'{cpu}.log'}:\n{log_tail}")
        info = json.loads((out / "info.json").read_text())
        arm = {k: np.load(out / f"{k}.npy") for k in bundles}
        fp32_diff = float(np.abs(arm["fp32"] - host["fp32"]).max())
        res = CpuResult(cpu, seconds, info, fp32_diff, {})
        if not fp32_diff <= FP32_MAX_ABS:
            res.failures.append(f"fp32 max abs diff {fp32_diff:.2e} > {FP32_MAX_ABS:g}")
        for k in int8s:
            r = Int8Result(_cos(arm[k], host["fp32"]), _cos(arm[k], host[k]), info["bundles"][k].get("self_check"))
            res.int8[k] = r
            # gate the per-text floor, as the self-check does; the bundle's mean/p1 thresholds
            # were set over its 160-text validation probes, and 12 texts cannot estimate those
            s = _stats(r.vs_fp32)
            if "min" in thresholds[k] and not s["min"] >= thresholds[k]["min"]:
                res.failures.append(f"{k}: cosine min vs fp32 {s['min']:.4f} < the bundle's cosine_min "
                                    f"{thresholds[k]['min']}")
            if r.self_check is None:
                res.failures.append(f"{k}: the bundle has no self-check probes; rebuild it")
            elif not r.self_check["passed"]:
                res.failures.append(f"{k}: {r.self_check['summary']}")
        results.append(res)
    return Report(results, x86_int8, thresholds, setup_s, time.perf_counter() - t0, bundles)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--int8", required=True, action="append", metavar="[NAME=]DIR",
                    help="INT8 bundle directory (repeatable, NAME=DIR to label several)")
    ap.add_argument("--fp32", required=True, type=Path, help="its fp32 reference bundle directory")
    ap.add_argument("--cpu", action="append", choices=CPUS, help="emulated CPU (repeatable; default both)")
    ap.add_argument("--sysroot", type=Path, default=ROOT / ".ci" / "cache" / "arm-sysroot")
    ap.add_argument("--work", type=Path, default=ROOT / ".ci" / "cache" / "arm-work")
    ap.add_argument("--timeout", type=float, default=240.0, help="seconds per emulated CPU")
    ap.add_argument("--serial", action="store_true", help="run the CPUs one after the other")
    ap.add_argument("--json", type=Path, help="also write the report here")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    try:
        int8s = {}
        for i, item in enumerate(args.int8):
            name, sep, path = item.partition("=")
            int8s[name if sep else ("int8" if i == 0 else f"int8-{i}")] = Path(path if sep else item)
        report = run_check(int8s, args.fp32, cpus=tuple(args.cpu or CPUS), sysroot=args.sysroot,
                           work=args.work, timeout=args.timeout, parallel=not args.serial)
    except Unavailable as e:
        print(f"arm check: cannot run here: {e}", file=sys.stderr)
        return UNAVAILABLE
    except (RuntimeError, ValueError) as e:
        print(f"arm check: {e}", file=sys.stderr)
        return 1
    print(report.text())
    if args.json:
        args.json.write_text(json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8")
    return 0 if report.passed else 1


if __name__ == "__main__":
    sys.exit(main())
