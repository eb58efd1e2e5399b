"""Metrics and the eval verb on hand-made STS and BEIR data whose answers are worked out here."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from edge_embed import Embedder, InputError
from edge_embed.cli import main
from edge_embed.evaluate import eval_beir, eval_sts, ndcg_at_k, rankdata, read_beir, recall_at_k, search, spearman
from tests.conftest import run_cli


def test_rankdata_averages_ties() -> None:
    np.testing.assert_array_equal(rankdata([10, 20, 20, 5, 20]), [2, 4, 4, 1, 4])
    np.testing.assert_array_equal(rankdata([3.0, 1.0, 2.0]), [3, 1, 2])


def test_spearman_by_hand() -> None:
    # ranks 1,2,3,4 against 1,3,2,4: d^2 sums to 2, rho = 1 - 6*2 / (4*(16-1)) = 0.8
    assert spearman([1, 2, 3, 4], [0.1, 0.3, 0.2, 0.9]) == pytest.approx(0.8)
    # with ties the formula above does not hold; Pearson on average ranks does:
    # x ranks (1.5, 1.5, 3, 4), y ranks (1, 2, 3, 4): centred (-1, -1, .5, 1.5) and (-1.5, -.5, .5, 1.5)
    num = 1.5 + 0.5 + 0.25 + 2.25
    den = math.sqrt((1 + 1 + 0.25 + 2.25) * (2.25 + 0.25 + 0.25 + 2.25))
    assert spearman([1, 1, 2, 3], [1, 2, 3, 4]) == pytest.approx(num / den)
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    with pytest.raises(InputError, match="pairs"):
        spearman([1], [1])


def test_ndcg_and_recall_by_hand() -> None:
    rel = {"d1": 2, "d2": 1, "d9": 0}
    ranked = ["d3", "d1", "d4", "d2"]
    dcg = (2**2 - 1) / math.log2(3) + (2**1 - 1) / math.log2(5)
    idcg = (2**2 - 1) / math.log2(2) + (2**1 - 1) / math.log2(3)
    assert ndcg_at_k(ranked, rel, 10) == pytest.approx(dcg / idcg)
    assert ndcg_at_k(ranked, rel, 1) == 0.0
    assert ndcg_at_k(["d1", "d2"], rel, 10) == pytest.approx(1.0)
    assert recall_at_k(ranked, rel, 2) == pytest.approx(0.5)
    assert recall_at_k(ranked, rel, 4) == pytest.approx(1.0)


def test_search_is_exact_and_chunk_independent() -> None:
    rng = np.random.default_rng(1)
    q, c = rng.normal(size=(5, 8)).astype(np.float32), rng.normal(size=(40, 8)).astype(np.float32)
    cos = (q / np.linalg.norm(q, axis=1, keepdims=True)) @ (c / np.linalg.norm(c, axis=1, keepdims=True)).T
    expect = np.argsort(-cos, axis=1)[:, :7]
    np.testing.assert_array_equal(search(q, c, 7), expect)
    np.testing.assert_array_equal(search(q, c, 7, chunk=6), expect)


def _angle_embed(table: dict[str, float]):  # type: ignore[no-untyped-def]
    """Fake model: text -> unit 2-d vector at the given angle (radians); prompts marked by a flag."""
    calls: list[str | None] = []

    def embed(texts: list[str], prompt: str | None) -> np.ndarray:
        calls.append(prompt)
        return np.array([[math.cos(table[t]), math.sin(table[t])] for t in texts], dtype=np.float32)

    return embed, calls


def test_eval_sts_on_hand_made_file(tmp_path: Path) -> None:
    f = tmp_path / "sts.tsv"
    # cosines of the pairs: cos(0.2)=.98, cos(1.2)=.36, cos(0.7)=.76, cos(1.5)=.07
    f.write_text("score\tsentence1\tsentence2\n5.0\ta\tb\n1.0\tc\td\n3.0\te\tf\n0.5\tg\th\n", encoding="utf-8")
    embed, _ = _angle_embed({"a": 0.0, "b": 0.2, "c": 0.0, "d": 1.2, "e": 0.3, "f": 1.0, "g": 0.0, "h": 1.5})
    res = eval_sts(embed, f)
    assert res["pairs"] == 4
    assert res["cosine_spearman"] == pytest.approx(100.0)  # same order as the gold scores
    f.write_text("score\ts1\ts2\n5.0\ta\tb\n1.0\tc\td\n0.5\te\tf\n3.0\tg\th\n", encoding="utf-8")
    # gold ranks (4, 2, 1, 3), cosine ranks (4, 2, 3, 1): d^2 = 0+0+4+4, rho = 1 - 48/60 = 0.2
    assert eval_sts(embed, f)["cosine_spearman"] == pytest.approx(20.0)


def _beir(root: Path, header: bool = True) -> Path:
    (root / "qrels").mkdir(parents=True)
    docs = {"d1": 0.1, "d2": 1.3, "d3": 0.0, "d4": 0.6}
    (root / "corpus.jsonl").write_text(
        "".join(json.dumps({"_id": d, "title": "", "text": d}) + "\n" for d in docs), encoding="utf-8")
    (root / "queries.jsonl").write_text(
        json.dumps({"_id": "q1", "text": "q1"}) + "\n" + json.dumps({"_id": "q2", "text": "q2"}) + "\n"
        + json.dumps({"_id": "q3", "text": "q3"}) + "\n", encoding="utf-8")
    rows = ["q1\td1\t2", "q1\td2\t1", "q2\td4\t1", "q3\td2\t0"]  # q3 has no relevant doc: not scored
    (root / "qrels" / "test.tsv").write_text(
        ("query-id\tcorpus-id\tscore\n" if header else "") + "\n".join(rows) + "\n", encoding="utf-8")
    return root


def test_eval_beir_on_hand_made_folder(tmp_path: Path) -> None:
    root = _beir(tmp_path / "beir")
    embed, calls = _angle_embed({"d1": 0.1, "d2": 1.3, "d3": 0.0, "d4": 0.6, "q1": 0.0, "q2": 0.5, "q3": 1.0})
    res = eval_beir(embed, root, query_prompt="query", k_recall=2)
    # q1 at angle 0 ranks d3, d1, d4, d2; q2 at 0.5 ranks d4, d1, d3, d2
    dcg1 = 3 / math.log2(3) + 1 / math.log2(5)
    idcg1 = 3 + 1 / math.log2(3)
    assert res["ndcg@10"] == pytest.approx(100 * (dcg1 / idcg1 + 1.0) / 2)
    assert res["recall@2"] == pytest.approx(100 * (0.5 + 1.0) / 2)
    assert res["queries"] == 2 and res["corpus"] == 4
    assert calls == [None, "query"]  # the prompt goes on queries only
    _, _, qrels = read_beir(_beir(tmp_path / "noheader", header=False))
    assert qrels["q1"] == {"d1": 2, "d2": 1}


def test_readers_reject_bad_input(tmp_path: Path) -> None:
    bad = tmp_path / "bad.tsv"
    bad.write_text("score\ts1\ts2\nfive\ta\tb\n1\tc\td\n", encoding="utf-8")
    embed, _ = _angle_embed({})
    with pytest.raises(InputError, match=r"bad.tsv:2: score 'five' is not a number"):
        eval_sts(embed, bad)
    with pytest.raises(InputError, match="no such STS file"):
        eval_sts(embed, tmp_path / "nope.tsv")
    root = _beir(tmp_path / "beir")
    with pytest.raises(InputError, match=r"qrels/dev.tsv: missing; choose --split from \['test'\]"):
        read_beir(root, "dev")


def test_eval_cli_matches_the_functions(tiny_cls: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sts = tmp_path / "sts.tsv"
    sts.write_text("score\ts1\ts2\n4.5\tthe cat\tthe cat is here\n0.5\tfast car\twater river music\n"
                   "3.0\thello world\thello data\n1.0\tsmall house\tcity music book\n", encoding="utf-8")
    root = tmp_path / "beir"
    (root / "qrels").mkdir(parents=True)
    docs = ["the cat and the dog", "a fast car in the city", "music and a book", "water in the river"]
    (root / "corpus.jsonl").write_text("".join(json.dumps({"_id": f"d{i}", "text": t}) + "\n"
                                               for i, t in enumerate(docs)), encoding="utf-8")
    (root / "queries.jsonl").write_text(json.dumps({"_id": "q", "text": "what is the cat"}) + "\n", encoding="utf-8")
    (root / "qrels" / "test.tsv").write_text("q\td0\t1\n", encoding="utf-8")
    assert main(["eval", "-m", str(tiny_cls), "--sts", str(sts), "--beir", str(root), "--reference", str(tiny_cls),
                 "--json", "-q"]) == 0
    out = json.loads(capsys.readouterr().out)
    emb = Embedder.load(tiny_cls)

    def embed(texts: list[str], prompt: str | None) -> np.ndarray:
        return emb.embed(texts, prompt=prompt)

    want_sts = eval_sts(embed, sts)["cosine_spearman"]
    # the tiny bundle has no 'query' prompt, so queries go in as they are
    want_ndcg = eval_beir(embed, root, query_prompt=None)["ndcg@10"]
    rows = {r["metric"]: r for r in out["rows"]}
    assert rows["cosine_spearman"]["bundle"] == pytest.approx(want_sts)
    assert rows["ndcg@10"]["bundle"] == pytest.approx(want_ndcg)
    assert rows["ndcg@10"]["retained_pct"] == pytest.approx(100.0)  # the bundle against itself
    assert out["details"][1]["query_prompt"] is None


def test_eval_cli_errors_are_one_line() -> None:
    r = run_cli("eval", "-m", "/nonexistent/bundle", "--sts", "x.tsv")
    assert r.returncode == 1
    assert r.stderr.count("\n") == 1 and "no such bundle" in r.stderr
    r = run_cli("eval", "-m", "/nonexistent/bundle")
    assert r.returncode == 2 and "give --sts FILE and/or --beir DIR" in r.stderr  # a usage error
