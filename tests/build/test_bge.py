"""bge-small-en-v1.5 on its real weights: the recipe applied to the hub's ONNX export, without torch.

Uses the shared copy at ../shared/models/bge-small-en-v1.5 (fp32 ONNX in the hub layout, its
tokenizer); skips where it is absent. The build validates on a reduced probe set (--probes)
to keep CI time down; the full default build is measured in docs/bge.md.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tomllib

from edge_embed import Embedder, Manifest
from tests.build.torch_free import run_torch_free, torch_free_site
from tests.conftest import REPO, run_cli

BGE = REPO.parent / "shared" / "models" / "bge-small-en-v1.5"
# the sha256 the shared copy's README gives for the files
ONNX_SHA256 = "828e1496d7fabb79cfa4dcd84fa38625c0d3d21da474a00f08db0f559940cf35"
TOKENIZER_SHA256 = "d241a60d5e8f04cc1b2b3e9ef7a4921b27bf526d9f6050ab90f9267a1f9e5c66"
QUERY_PROMPT = "Represent this sentence for searching relevant passages: "

pytestmark = pytest.mark.skipif(
    not (BGE / "onnx" / "model.onnx").is_file() or not (BGE / "tokenizer.json").is_file(),
    reason=f"needs the real bge-small-en-v1.5 ONNX export at {BGE} (../shared/models/bge-small-en-v1.5 "
           "from the project root)",
)


@pytest.fixture(scope="module")
def bge(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    """(INT8, fp32) bundles built from the hub-layout folder by the recipe, torch-free; and the build's stderr."""
    from quantize.validate import load_probes

    root = tmp_path_factory.mktemp("bge")
    probes = root / "probes.txt"
    # every 8th shipped probe: queries, sentences, paragraphs and two long passages
    probes.write_text("\n".join(load_probes()[::8]) + "\n", encoding="utf-8")
    site = torch_free_site(root)
    r = run_torch_free(site, "build", "bge-small-en-v1.5", "--from-onnx", str(BGE), "--probes", str(probes),
                       "-o", str(root / "bge-int8"), "--fp32-out", str(root / "bge-fp32"))
    assert r.returncode == 0, r.stderr[-4000:]
    return root / "bge-int8", root / "bge-fp32", r.stderr


def _raw_cls(texts: list[str]) -> np.ndarray:
    """The published recipe by hand: onnxruntime + tokenizers, CLS token of last_hidden_state, L2 norm."""
    import onnxruntime as ort
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(BGE / "tokenizer.json"))
    sess = ort.InferenceSession(str(BGE / "onnx" / "model.onnx"), providers=["CPUExecutionProvider"])
    out = []
    for t in texts:
        e = tok.encode(t)
        feed = {"input_ids": np.array([e.ids], np.int64), "attention_mask": np.ones((1, len(e.ids)), np.int64),
                "token_type_ids": np.zeros((1, len(e.ids)), np.int64)}
        cls = sess.run(["last_hidden_state"], feed)[0][0, 0]
        out.append(cls / np.linalg.norm(cls))
    return np.array(out)


def test_recipe_build_records_the_recipe_and_the_files(bge: tuple[Path, Path, str]) -> None:
    int8, fp32, log = bge
    recipe = tomllib.loads((REPO / "models" / "bge-small-en-v1.5.toml").read_text())
    for bundle in (int8, fp32):
        m = Manifest.read(bundle)
        m.verify(bundle)
        assert (m.pooling, m.dim, m.max_length, m.normalize) == ("cls", 384, 512, True)
        assert m.prompts == {"query": QUERY_PROMPT}
        assert m.source["model_id"] == "BAAI/bge-small-en-v1.5" and m.source["recipe"] == "bge-small-en-v1.5"
        assert (m.source["onnx_sha256"], m.source["tokenizer_sha256"]) == (ONNX_SHA256, TOKENIZER_SHA256)
    m = Manifest.read(int8)
    fusion = m.quantization["graph_fusion"]
    assert fusion["Attention"] == 12 and fusion["attention_heads"] == 12
    # the hub export is opset 11; per-token activation scales need 13
    assert (fusion["opset_converted_from"], fusion["opset"]) == (11, 14)
    # the recipe's thresholds, untouched by the command line, judged the build
    v = json.loads((int8 / "validation.json").read_text())
    from quantize.validate import default_probes

    # the verdict is on the given probe file's gate part
    probes = default_probes(str(int8.parent / "probes.txt"))
    assert v["passed"] is True and v["probes"]["count"] == len(probes.gate)
    assert {k: v["thresholds"][k] for k in recipe["thresholds"]} == recipe["thresholds"]
    assert "for recipe bge-small-en-v1.5" in log and "\r" not in log  # a log, not a terminal: whole lines


def test_cls_pooling_matches_the_published_recipe(bge: tuple[Path, Path, str]) -> None:
    texts = ["what is onnx?", "The cat sat on the mat while the dog slept by the fire.", "a" * 40]
    want = _raw_cls(texts)
    got = Embedder.load(bge[1]).embed(texts)
    assert (got * want).sum(axis=1).min() > 0.9999  # the fused fp32 graph is the same model, CLS-pooled
    emb = Embedder.load(bge[0])
    cos = (emb.embed(texts) * want).sum(axis=1)
    assert cos.min() > 0.98, cos


def test_query_prompt_goes_on_queries_only(bge: tuple[Path, Path, str], tmp_path: Path) -> None:
    from edge_embed.evaluate import eval_beir

    fp32 = Embedder.load(bge[1])
    q = "how do vaccines train the immune system"
    plain, prompted = _raw_cls([q, QUERY_PROMPT + q])
    np.testing.assert_allclose(fp32.embed([q])[0], plain, atol=1e-4)
    np.testing.assert_allclose(fp32.embed([q], prompt="query")[0], prompted, atol=1e-4)
    assert float(plain @ prompted) < 0.99  # the prompt changes the vector: applying it matters

    # the evaluation (and the build's retrieval check) prompts the queries and never the passages
    beir = tmp_path / "beir"
    (beir / "qrels").mkdir(parents=True)
    (beir / "corpus.jsonl").write_text("".join(json.dumps({"_id": f"d{i}", "title": "", "text": t}) + "\n" for i, t in
                                               enumerate(["Vaccines expose the immune system to an antigen.",
                                                          "The recipe needs two eggs and flour."])))
    (beir / "queries.jsonl").write_text(json.dumps({"_id": "q1", "text": q}) + "\n")
    (beir / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td0\t1\n")
    calls: list[tuple[str, str | None]] = []

    def embed(texts: list[str], prompt: str | None) -> np.ndarray:
        calls.extend((t, prompt) for t in texts)
        return fp32.embed(texts, prompt=prompt)

    res = eval_beir(embed, beir, "test", query_prompt="query")
    assert res["ndcg@10"] == 100.0
    assert sorted(calls) == sorted([(q, "query"), ("Vaccines expose the immune system to an antigen.", None),
                                    ("The recipe needs two eggs and flour.", None)])


@pytest.fixture(scope="module")
def altered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The real graph with its output renamed, with attention_mask renamed, and a tokenizer with extra tokens."""
    import onnx
    from tokenizers import Tokenizer

    root = tmp_path_factory.mktemp("altered")
    out: dict[str, Path] = {}
    for what, old, new in (("output", "last_hidden_state", "token_embeddings"),
                           ("input", "attention_mask", "mask")):
        model = onnx.load(str(BGE / "onnx" / "model.onnx"))
        for v in [*model.graph.input, *model.graph.output]:
            if v.name == old:
                v.name = new
        for node in model.graph.node:
            node.input[:] = [new if i == old else i for i in node.input]
            node.output[:] = [new if o == old else o for o in node.output]
        out[what] = root / f"{what}.onnx"
        onnx.save(model, str(out[what]))
    tok = Tokenizer.from_file(str(BGE / "tokenizer.json"))
    tok.add_tokens([f"newtoken{i}" for i in range(8)])
    out["tokenizer"] = root / "tokenizer.json"
    tok.save(str(out["tokenizer"]))
    return out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["bge-base-en-v1.5", "--from-onnx", "{bge}"],
         "last_hidden_state is 384-d but recipe 'bge-base-en-v1.5' is for a 768-d model"),
        (["bge-small-en-v1.5", "--from-onnx", "{output}", "--tokenizer", "{bge}/tokenizer.json"],
         "no 'last_hidden_state' output (outputs: ['token_embeddings'])"),
        (["bge-small-en-v1.5", "--from-onnx", "{input}", "--tokenizer", "{bge}/tokenizer.json"],
         "graph inputs ['mask'] are not ones edge-embed feeds"),
        (["bge-small-en-v1.5", "--from-onnx", "{bge}", "--tokenizer", "{tokenizer}"],
         "the tokenizer emits 30530 token ids but the graph's word embedding has 30522 rows"),
        (["bge-small-en-v1.5", "--from-onnx", "{bge}", "--max-length", "1024"],
         "max_length 1024 is more than the graph's 512 positions"),
        (["bge-small-en-v1.5", "--from-onnx", "{bge}/onnx/model.onnx"], "--from-onnx needs --tokenizer"),
    ],
)
def test_recipe_graph_mismatch_is_a_clear_error_before_slow_work(altered: dict[str, Path], tmp_path: Path,
                                                                 args: list[str], message: str) -> None:
    args = [a.format(bge=BGE, **altered) for a in args]
    r = run_cli("build", *args, "-o", str(tmp_path / "x"))
    assert r.returncode == 1, r.stderr[-2000:]
    assert message in r.stderr, r.stderr[-2000:]
    assert "Traceback" not in r.stderr and "[3/5]" not in r.stderr and not (tmp_path / "x").exists()
