"""Manual check: unmodified LangChain and LlamaIndex OpenAI embedders against `edge-embed serve`.

Usage: python benchmarks/clients_check.py BUNDLE
Needs langchain-openai and llama-index-embeddings-openai (not project dependencies). Loopback only.
"""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
bundle = sys.argv[1]
with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
cmd = [sys.executable, "-m", "edge_embed.cli", "serve", "-m", bundle, "--port", str(port), "--no-warmup"]
srv = subprocess.Popen(cmd, env={**os.environ, "PYTHONPATH": str(REPO)}, stderr=subprocess.DEVNULL)  # noqa: S603
for _ in range(100):
    try:
        socket.create_connection(("127.0.0.1", port), 0.2).close()
        break
    except OSError:
        time.sleep(0.2)
base = f"http://127.0.0.1:{port}/v1"
try:
    from langchain_openai import OpenAIEmbeddings
    lc = OpenAIEmbeddings(base_url=base, api_key="unused", model="all-minilm-l6-v2", check_embedding_ctx_length=False)
    v1 = np.array(lc.embed_documents(["hello world", "second doc"]))
    q1 = np.array(lc.embed_query("hello world"))
    print("langchain", v1.shape, round(float(np.linalg.norm(v1[0])), 4), round(float(v1[0] @ q1), 4))
    from llama_index.embeddings.openai import OpenAIEmbedding
    li = OpenAIEmbedding(api_base=base, api_key="unused")
    v2 = np.array(li.get_text_embedding_batch(["hello world", "second doc"]))
    q2 = np.array(li.get_query_embedding("hello world"))
    # LangChain's default (check_embedding_ctx_length=True) first downloads tiktoken's encoding
    # from the internet and then sends token ids, which the server refuses with a 400 naming the flag
    print("llamaindex", v2.shape, round(float(v2[0] @ v1[0]), 4), round(float(q2 @ q1), 4))
finally:
    srv.terminate()
    srv.wait(10)
