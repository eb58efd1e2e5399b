"""build on the command line: threshold keys, and output free of third-party warning noise."""

from __future__ import annotations

from pathlib import Path

import pytest
import tomllib

from edge_embed.cli import main
from quantize.recipe import models_dir
from quantize.validate import THRESHOLD_KEYS

NOISE = ("Warning", "warning", "deprecated", "consider", "pre-processing", "accelerate", "Traceback")


def test_unknown_threshold_key_is_a_usage_error_listing_the_known(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["build", "all-minilm-l6-v2", "-o", "unused", "--threshold", "cosine_avg=0.99"]) == 2
    err = capsys.readouterr().err
    assert "--threshold: unknown key 'cosine_avg'; known: cosine_mean, cosine_p1, cosine_min" in err
    assert len(err.strip().splitlines()) == 1
    assert main(["build", "all-minilm-l6-v2", "-o", "unused", "--threshold", "cosine_mean"]) == 2
    assert "expected KEY=NUMBER" in capsys.readouterr().err


def test_every_recipe_threshold_is_a_known_key() -> None:
    for recipe in sorted(models_dir().glob("*.toml")):
        keys = tomllib.loads(recipe.read_text()).get("thresholds", {})
        assert set(keys) <= set(THRESHOLD_KEYS), (recipe.name, set(keys) - set(THRESHOLD_KEYS))


def test_build_output_has_no_third_party_noise(minilm_int8: Path, bundle_root: Path) -> None:
    log = bundle_root / "minilm-int8.build-stderr.txt"
    if not log.is_file():
        pytest.skip("the MiniLM bundles came from a reused cache (EDGE_EMBED_TEST_CACHE) without their build log")
    text = log.read_text(encoding="utf-8")
    assert "edge-embed build: [1/5]" in text and "done in" in text
    noisy = [line for line in text.splitlines() if any(n in line for n in NOISE)]
    assert not noisy, noisy
