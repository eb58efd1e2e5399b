"""Calibration sampling and the labelled metrics, on hand-made files (no model needed)."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import HAS_BUILD

pytestmark = [pytest.mark.build, pytest.mark.skipif(not HAS_BUILD, reason="needs the build extra")]


def _write(p: Path, text: str) -> Path:
    p.write_text(text, encoding="utf-8")
    return p


def test_calibration_sample_is_seeded_and_reproducible(tmp_path: Path) -> None:
    from quantize.calibration import load_calibration

    f = _write(tmp_path / "c.txt", "".join(f"text number {i}\n" for i in range(100)) + "\n   \ntext number 3\n")
    a, b = load_calibration(f, size=10), load_calibration(f, size=10)
    assert a.texts == b.texts and len(a.texts) == 10
    assert a.available == 100  # blank lines and the duplicate are not texts of their own
    assert load_calibration(f, size=10, seed=1).texts != a.texts
    d = a.describe()
    assert d["file_sha256"] == hashlib.sha256(f.read_bytes()).hexdigest()
    assert d["texts_used"] == 10 and d["seed"] == 0
    assert load_calibration(f, size=500).texts == [f"text number {i}" for i in range(100)]


def test_calibration_reads_jsonl_text_field(tmp_path: Path) -> None:
    from quantize.calibration import load_calibration

    f = _write(tmp_path / "c.jsonl", "\n".join(json.dumps({"id": i, "text": f"t{i}"}) for i in range(5)))
    assert load_calibration(f).texts == [f"t{i}" for i in range(5)]


@pytest.mark.parametrize("content, needle", [
    ("", "holds no text"),
    ("\n  \n", "holds no text"),
    ('{"text": "a"}\n{"body": "b"}\n', "'text' field"),
])
def test_calibration_bad_files_are_clear_errors(tmp_path: Path, content: str, needle: str) -> None:
    from quantize import BuildError
    from quantize.calibration import load_calibration

    with pytest.raises(BuildError, match=needle):
        load_calibration(_write(tmp_path / "c.txt", content))
    with pytest.raises(BuildError, match="cannot read the calibration file"):
        load_calibration(tmp_path / "missing.txt")


def test_calibration_reader_lengths(tmp_path: Path, tiny_cls: Path) -> None:
    from quantize.calibration import TextCalibrationReader

    texts = ["hello", "hello world the cat is on the house"]
    names = ["input_ids", "attention_mask", "token_type_ids"]
    real = TextCalibrationReader(texts, tiny_cls / "tokenizer.json", names)
    shapes = [b["input_ids"].shape for b in iter(real.get_next, None)]
    assert shapes[0][1] < shapes[1][1]  # one text per batch, each at its real length
    fixed = TextCalibrationReader(texts, tiny_cls / "tokenizer.json", names, fixed_length=True, batch_size=1)
    batches = list(iter(fixed.get_next, None))
    assert {b["input_ids"].shape for b in batches} == {shapes[1]}
    assert batches[0]["attention_mask"].sum() == shapes[0][1]  # padding is masked out
    fixed.rewind()
    assert fixed.get_next() is not None


def test_sts_spearman_on_a_hand_made_file(tmp_path: Path) -> None:
    from quantize.metrics import load_sts, sts_spearman

    f = _write(tmp_path / "sts.tsv", "score\tsentence1\tsentence2\n"
               "5.0\ta\tb\n1.0\tc\td\n3.0\te\tf\n4.0\tg\th\n")
    sts = load_sts(f)
    assert list(sts.scores) == [5.0, 1.0, 3.0, 4.0] and sts.first[2] == "e"
    # pair cosines 1, cos(60deg)=0.5, 0, cos(30deg): ranks 4,2,1,3 against gold ranks 4,1,2,3
    angles = np.radians([0.0, 60.0, 90.0, 30.0])
    first = np.tile([[1.0, 0.0]], (4, 1))
    second = np.stack([np.cos(angles), np.sin(angles)], axis=1) * 3.0  # length must not matter
    d2 = (4 - 4) ** 2 + (2 - 1) ** 2 + (1 - 2) ** 2 + (3 - 3) ** 2
    assert sts_spearman(sts, first, second) == pytest.approx(1 - 6 * d2 / (4 * (4 ** 2 - 1)))


def test_sts_file_errors_name_the_line(tmp_path: Path) -> None:
    from quantize import BuildError
    from quantize.metrics import load_sts

    f = _write(tmp_path / "sts.tsv", "score\ts1\ts2\n5\ta\tb\nnot-a-score\tc\td\n1\te\tf\n")
    with pytest.raises(BuildError, match=r"sts.tsv:3: expected score"):
        load_sts(f)


def test_ndcg_at_10_on_a_hand_made_beir_folder(tmp_path: Path) -> None:
    from quantize.metrics import load_beir, ndcg_at_k

    (tmp_path / "qrels").mkdir()
    _write(tmp_path / "corpus.jsonl", "\n".join(json.dumps({"_id": f"d{i}", "title": "", "text": f"doc {i}"})
                                                for i in range(3)))
    _write(tmp_path / "queries.jsonl", json.dumps({"_id": "q1", "text": "query"}) + "\n"
           + json.dumps({"_id": "q2", "text": "unjudged"}))
    _write(tmp_path / "qrels" / "test.tsv", "query-id\tcorpus-id\tscore\nq1\td1\t2\nq1\td2\t1\n")
    beir = load_beir(tmp_path)
    assert beir.query_ids == ["q1"] and beir.docs[1] == "doc 1"
    docs = np.array([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]])
    # query nearest d0 (rel 0), then d1 (rel 2), then d2 (rel 1)
    got = ndcg_at_k(beir, np.array([[0.95, 0.31]]), docs)
    dcg = 3 / math.log2(3) + 1 / math.log2(4)
    assert got == pytest.approx(dcg / (3 / math.log2(2) + 1 / math.log2(3)))
    assert ndcg_at_k(beir, np.array([[0.6, 0.8]]), docs) == pytest.approx(1.0)


def test_cpu_presets() -> None:
    from quantize import BuildError
    from quantize.int8 import TARGETS, detect_target, preset

    assert detect_target() in TARGETS
    assert preset("avx2")[1]["reduce_range"] is True  # no VNNI: 7-bit weights avoid saturation
    assert preset("avx512-vnni")[1] == {"weight_type": "int8", "activation_type": "uint8", "reduce_range": False}
    assert preset("arm64")[1]["activation_type"] == "int8"
    assert preset(None)[0] == detect_target()
    with pytest.raises(BuildError, match="--target: 'sse2' is not one of"):
        preset("sse2")
