"""Write a tiny random BERT (2 layers, 32-d) with a real WordPiece tokenizer to a directory.

Used by the tests as a fast, deterministic stand-in for a Hugging Face model directory.
"""

import string
import sys
from pathlib import Path

import torch
from transformers import BertConfig, BertModel, BertTokenizerFast

out = Path(sys.argv[1])
out.mkdir(parents=True, exist_ok=True)
words = ("the a an of to and in is it that for on with as was by this be are from at or not have "
         "hello world onnx model text query passage search what how why where when who data fast small "
         "edge embed vector cat dog house car tree water fire city river mountain music book").split()
chars = list(string.ascii_lowercase + string.digits + string.punctuation)
vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + words + chars + ["##" + c for c in string.ascii_lowercase]
(out / "vocab.txt").write_text("\n".join(dict.fromkeys(vocab)) + "\n")
tok = BertTokenizerFast(vocab_file=str(out / "vocab.txt"), do_lower_case=True, model_max_length=64)
tok.save_pretrained(out)
torch.manual_seed(0)
cfg = BertConfig(vocab_size=len(dict.fromkeys(vocab)), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                 intermediate_size=64, max_position_embeddings=64)
BertModel(cfg).eval().save_pretrained(out)
print(out)
