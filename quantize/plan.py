"""The build plan: everything a build will do, checked once before any slow work.

``BuildPlan`` holds the user's choices (what the CLI flags say) and, after construction,
what they resolve to: the recipe with its thresholds, where the weights load from, the
CPU preset, the calibration texts, the labelled evaluation sets and the probe texts. A
bad flag, a missing file or an unreadable recipe is a ``BuildError`` raised here, before
export or quantization start. This module does not export, quantize or validate.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from . import BuildError, FlagError
from .calibration import DEFAULT_SIZE, CalibrationSet, load_calibration
from .from_onnx import locate
from .int8 import CALIBRATION_METHODS, preset
from .recipe import Recipe, recipe_named, resolve_source
from .validate import LabelledChecks, ProbeSets, default_probes

__all__ = ["METHODS", "TUNERS", "BuildPlan"]

METHODS = ("auto", "dynamic", "static", "fp32")
TUNERS = ("ort", "inc")


@dataclass
class BuildPlan:
    """A validated build request. Construct it; a bad request raises BuildError at once."""

    out: Path
    source: str | None = None  # recipe name, HF directory or hub id
    from_onnx: Path | None = None  # ...or an existing fp32 ONNX export (with tokenizer)
    tokenizer: Path | None = None
    method: str = "auto"
    scheme: str | None = None  # one quantization scheme (schemes.SCHEMES) instead of auto's candidates
    target: str | None = None  # CPU preset; None: this machine's
    revision: str | None = None
    pooling: str | None = None
    max_length: int | None = None
    prompts: dict[str, str] = field(default_factory=dict)
    thresholds: dict[str, float] = field(default_factory=dict)  # overrides of the recipe's
    calibration: str | None = None
    calibration_method: str = "minmax"
    calibration_size: int = DEFAULT_SIZE
    eval_sts: str | None = None
    eval_beir: str | None = None
    tuner: str = "ort"
    tuner_trials: int = 20
    tuner_timeout: int = 600
    fp32_out: Path | None = None
    force: bool = False
    ort_format: bool = False
    progress: bool = True
    probes: str | None = None  # a probe file (same format as quantize/probes.txt); None: the shipped set

    # resolved by __post_init__
    recipe: Recipe = field(init=False)
    load_from: str = field(init=False)  # local directory, hub id or the ONNX file
    onnx_file: Path | None = field(init=False, default=None)  # --from-onnx resolved to its .onnx file
    calib: CalibrationSet | None = field(init=False, default=None)
    checks: LabelledChecks | None = field(init=False, default=None)
    probe_sets: ProbeSets = field(init=False)

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        self.fp32_out = Path(self.fp32_out) if self.fp32_out else None
        self.from_onnx = Path(self.from_onnx) if self.from_onnx else None
        self.tokenizer = Path(self.tokenizer) if self.tokenizer else None
        self._check_flags()
        self.target, _ = preset(self.target)
        if self.method == "static":
            self.calib = load_calibration(self.calibration or "", self.calibration_size)
        if self.method != "fp32":
            self.checks = LabelledChecks(self.eval_sts, self.eval_beir)
        for dest in (self.out, self.fp32_out):
            if dest is not None and dest.exists() and not self.force:
                raise BuildError(f"{dest}: already exists; pass --force to replace it")
        self.recipe, self.load_from = self._resolve_recipe()
        self.probe_sets = default_probes(self.probes)

    @property
    def label(self) -> str:
        """How messages name what is being built."""
        return self.source or str(self.from_onnx)

    def _check_flags(self) -> None:
        if self.method not in METHODS:
            raise FlagError(f"--method: {self.method!r} is not one of {', '.join(METHODS)}")
        if self.scheme is not None:
            from .schemes import SCHEMES

            if self.scheme not in SCHEMES:
                raise FlagError(f"--scheme: {self.scheme!r} is not one of {', '.join(SCHEMES)}")
            if self.method not in ("auto", "dynamic") or self.tuner != "ort":
                got = f"--method {self.method}" + (f" --tuner {self.tuner}" if self.tuner != "ort" else "")
                raise FlagError(f"--scheme: chooses the INT8 scheme of --method auto or dynamic (got {got})")
        if self.tuner not in TUNERS:
            raise FlagError(f"--tuner: {self.tuner!r} is not one of {', '.join(TUNERS)}")
        if self.tuner == "inc":
            if self.method != "auto":
                raise FlagError(f"--tuner inc: tunes --method auto only (got --method {self.method})")
            from .inc import require

            require()  # a missing extra is one clear line
        if self.method == "static":
            if not self.calibration:
                raise FlagError("--method static: needs --calibration FILE (texts from your own corpus, one per "
                                 "line or JSONL with a 'text' field); or use --method auto, which needs none")
            if self.calibration_method not in CALIBRATION_METHODS:
                raise FlagError(f"--calibration-method: {self.calibration_method!r} is not one of "
                                 f"{', '.join(CALIBRATION_METHODS)}")
        elif self.calibration:
            raise FlagError(f"--calibration: only --method static uses a calibration set "
                             f"(got --method {self.method})")
        if self.method == "fp32" and (self.eval_sts or self.eval_beir):
            raise FlagError("--eval-sts/--eval-beir: compare INT8 with fp32; --method fp32 has nothing to compare")
        if self.method == "fp32" and self.fp32_out:
            raise FlagError("--fp32-out: with --method fp32 the output already is the fp32 bundle; "
                             "drop --fp32-out")
        if self.source is None and self.from_onnx is None:
            raise FlagError("build: give a SOURCE (recipe, model directory or hub id) or --from-onnx PATH "
                             "(with a recipe name as SOURCE, or --pooling)")

    def _resolve_recipe(self) -> tuple[Recipe, str]:
        if self.from_onnx is not None:
            self.onnx_file, self.tokenizer = locate(self.from_onnx, self.tokenizer)
            if self.source is not None:
                # the recipe says what the graph cannot: pooling, prompts, max_length, thresholds
                recipe = recipe_named(self.source)
            elif self.pooling is None:
                raise BuildError(f"{self.from_onnx}: an ONNX file does not say how it pools; name its recipe "
                                 "(edge-embed build RECIPE --from-onnx ...) or pass --pooling cls or --pooling mean")
            else:
                recipe = Recipe(name=self.out.name)
            load_from = str(self.onnx_file)
        else:
            recipe, load_from = resolve_source(self.source or "", self.revision)
        recipe.prompts.update(self.prompts)
        if self.pooling:
            recipe.pooling = self.pooling
        if self.max_length:
            recipe.max_length = self.max_length
        recipe.thresholds.update(self.thresholds)
        return recipe, load_from
