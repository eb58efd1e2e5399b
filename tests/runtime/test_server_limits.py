"""The server under a careless or hostile client: slow and idle connections, oversized and
malformed requests, empty keys, shutdown with a queue, a long request next to a short one.

Timeouts are set to fractions of a second here so that each case ends quickly; nothing
asserts how fast the server is, only what it answers and that it closes.
"""

from __future__ import annotations

import json
import signal
import socket
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

for _mod in ("fastapi", "uvicorn", "prometheus_client", "httpx"):
    pytest.importorskip(_mod, reason="needs the serve extra: pip install 'edge-embed[serve]' (and httpx)")

from edge_embed import Embedder  # noqa: E402
from edge_embed.cli import build_parser, main  # noqa: E402
from edge_embed.errors import InputError  # noqa: E402
from edge_embed.server import ServerConfig, config_from_args  # noqa: E402

from .server_util import HTTP, Gated, LiveServer, wait_for  # noqa: E402

QUICK = ServerConfig(header_timeout=0.5, body_timeout=0.5, keep_alive_timeout=1, max_body_bytes=64 * 1024,
                     warmup=False)


@pytest.fixture(scope="module")
def quick(int8: Embedder) -> Iterator[LiveServer]:
    s = LiveServer(int8, QUICK)
    yield s
    s.close()


def _connect(server: LiveServer) -> socket.socket:
    host, port = server.url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=15)
    return sock


def _read_all(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes (a socket timeout fails the test: it never closed)."""
    out = b""
    while chunk := sock.recv(65536):
        out += chunk
    return out


def _status_and_json(raw: bytes) -> tuple[int, Any]:
    head, _, body = raw.partition(b"\r\n\r\n")
    assert b"application/json" in head.lower(), head
    return int(head.split(b" ", 2)[1]), json.loads(body)


# ------------------------------------------------------------------ slow and idle connections
def test_idle_connection_gets_408_and_is_closed(quick: LiveServer) -> None:
    with _connect(quick) as sock:
        status, body = _status_and_json(_read_all(sock))
    assert status == 408 and "--header-timeout" in body["error"]


def test_dripped_headers_get_408_and_are_closed(quick: LiveServer) -> None:
    with _connect(quick) as sock:
        sock.sendall(b"POST /embed HTTP/1.1\r\nHost: x\r\n")
        sock.sendall(b"X-Slow: 1\r\n")  # no blank line: the head never completes
        status, _ = _status_and_json(_read_all(sock))
    assert status == 408


def test_content_length_larger_than_the_body_does_not_wait_forever(quick: LiveServer) -> None:
    with _connect(quick) as sock:
        sock.sendall(b"POST /embed HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 1000\r\n\r\n{\"inputs\": \"a")
        status, body = _status_and_json(_read_all(sock))
    assert status == 408 and "--body-timeout" in body["error"]


def test_idle_keep_alive_connection_is_closed(quick: LiveServer) -> None:
    with _connect(quick) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        raw = _read_all(sock)  # the answer, then the close after keep_alive_timeout
    assert raw.startswith(b"HTTP/1.1 200") and raw.count(b"HTTP/1.1") == 1


def test_framing_errors_are_json(quick: LiveServer) -> None:
    with _connect(quick) as sock:
        sock.sendall(b"NOT HTTP AT ALL\r\n\r\n")
        status, body = _status_and_json(_read_all(sock))
    assert status == 400 and "malformed HTTP" in body["error"]


def test_connections_over_the_limit_get_503(int8: Embedder) -> None:
    s = LiveServer(int8, ServerConfig(max_connections=3, header_timeout=30, warmup=False))
    held = [_connect(s) for _ in range(3)]
    try:
        wait_for(lambda: len(s.server.server_state.connections) == 3)
        with _connect(s) as extra:
            status, body = _status_and_json(_read_all(extra))
        assert status == 503 and "--max-connections" in body["error"]
        held.pop().close()  # a slot frees: requests are served again
        wait_for(lambda: len(s.server.server_state.connections) == 2)
        assert HTTP.get(s.url + "/health").status_code == 200
    finally:
        for sock in held:
            sock.close()
        s.close()


# ------------------------------------------------------------------ oversized bodies
def test_openai_client_reads_the_413_of_a_20_mb_body(quick: LiveServer) -> None:
    openai = pytest.importorskip("openai", reason="the official openai client is not installed")
    client = openai.OpenAI(base_url=quick.url + "/v1", api_key="unused", max_retries=0, timeout=60)
    with pytest.raises(openai.APIStatusError) as caught:
        client.embeddings.create(model="m", input="word " * 4_000_000)  # 20 MB of JSON
    assert caught.value.status_code == 413
    assert "--max-body-bytes" in str(caught.value)


# ------------------------------------------------------------------ the event loop stays free
class SlowTokenizer(Gated):
    """An Embedder whose tokenize() blocks until the gate opens, as a huge text's tokenizing does."""

    def __init__(self, emb: Embedder) -> None:
        super().__init__(emb)
        self.gate.set()  # embed_detailed runs freely
        self.tokenizing = threading.Event()
        self.tok_gate = threading.Event()

    def tokenize(self, texts: list[str], prompt: str | None = None) -> Any:
        self.tokenizing.set()
        if not self.tok_gate.wait(30):
            raise RuntimeError("tokenize gate never opened")
        return self._emb.tokenize(texts, prompt)


def test_health_answers_while_a_request_is_tokenized(int8: Embedder) -> None:
    slow = SlowTokenizer(int8)
    s = LiveServer(slow, ServerConfig(warmup=False))
    try:
        with ThreadPoolExecutor(1) as pool:
            big = pool.submit(HTTP.post, s.url + "/embed", json={"inputs": ["a long text"]}, timeout=60)
            assert slow.tokenizing.wait(30)
            for _ in range(3):
                assert HTTP.get(s.url + "/health", timeout=10).status_code == 200
            assert not big.done()
            slow.tok_gate.set()
            assert big.result().status_code == 200
    finally:
        slow.tok_gate.set()
        s.close()


class Recording(Gated):
    """Records the texts of every embed_detailed call; the first call waits for the gate."""

    def __init__(self, emb: Embedder) -> None:
        super().__init__(emb)
        self.texts: list[list[str]] = []

    def embed_detailed(self, texts: list[str], **kw: Any) -> Any:
        self.texts.append(list(texts))
        return super().embed_detailed(texts, **kw)


def test_short_request_rides_the_next_micro_batch_of_a_long_one(fp32: Embedder) -> None:
    """Without the express lane, a 1-text request queued behind a 96-text one is in the very next
    micro-batch, and both get exactly their own vectors, in order, though the long one is split
    and reordered (fp32)."""
    rec = Recording(fp32)
    s = LiveServer(rec, ServerConfig(max_batch_tokens=160, warmup=False, express_tokens=0))
    # varied lengths: a request's texts are handed out longest first, and must come back in order
    long_texts = [f"passage {i} " + "about quantized sentence embeddings " * (i % 7 + 1) for i in range(96)]
    try:
        with ThreadPoolExecutor(2) as pool:
            long = pool.submit(HTTP.post, s.url + "/embed", json={"inputs": long_texts}, timeout=120)
            wait_for(lambda: len(rec.texts) == 1)  # the first micro-batch is held
            short = pool.submit(HTTP.post, s.url + "/embed", json={"inputs": ["just one question"]}, timeout=120)
            wait_for(lambda: len(s.scheduler.jobs) == 2)
            rec.gate.set()
            long_r, short_r = long.result(), short.result()
        assert rec.texts[1] == ["just one question"]  # the request it completes runs first, on its own
        assert len(rec.texts) > 4 and max(len(t) for t in rec.texts) < len(long_texts)
        assert long_r.status_code == short_r.status_code == 200
        np.testing.assert_allclose(np.array(long_r.json()), fp32.embed(long_texts), atol=1e-5)
        np.testing.assert_allclose(np.array(short_r.json()), fp32.embed(["just one question"]), atol=1e-5)
    finally:
        rec.gate.set()
        s.close()


class MainThreadGated(Recording):
    """Records every call; only the calls in the main inference thread wait for the gate."""

    def embed_detailed(self, texts: list[str], **kw: Any) -> Any:
        if threading.current_thread().name.startswith("edge-embed-infer"):
            return super().embed_detailed(texts, **kw)
        self.texts.append(list(texts))
        return self._emb.embed_detailed(texts, **kw)


def test_short_request_is_answered_while_a_long_ones_run_is_held(fp32: Embedder) -> None:
    """The express lane: with the long request's first run held, the 1-text request is answered
    meanwhile, from the second inference thread, with its own vector."""
    rec = MainThreadGated(fp32)
    s = LiveServer(rec, ServerConfig(max_batch_tokens=160, warmup=False))
    long_texts = [f"passage {i} " + "about quantized sentence embeddings " * (i % 7 + 1) for i in range(96)]
    try:
        with ThreadPoolExecutor(2) as pool:
            long = pool.submit(HTTP.post, s.url + "/embed", json={"inputs": long_texts}, timeout=120)
            wait_for(lambda: len(rec.texts) == 1)  # the first micro-batch is held
            short_r = HTTP.post(s.url + "/embed", json={"inputs": ["just one question"]}, timeout=60)
            assert not long.done()
            rec.gate.set()
            long_r = long.result()
        assert rec.texts[1] == ["just one question"]
        assert short_r.status_code == long_r.status_code == 200
        np.testing.assert_allclose(np.array(short_r.json()), fp32.embed(["just one question"]), atol=1e-5)
        np.testing.assert_allclose(np.array(long_r.json()), fp32.embed(long_texts), atol=1e-5)
    finally:
        rec.gate.set()
        s.close()


# ------------------------------------------------------------------ shutdown
def test_requests_not_done_at_the_shutdown_cap_get_503_with_retry_after(int8: Embedder) -> None:
    gated = Gated(int8)
    s = LiveServer(gated, ServerConfig(graceful_timeout=1, warmup=False))
    try:
        with ThreadPoolExecutor(2) as pool:
            running = pool.submit(HTTP.post, s.url + "/embed", json={"inputs": ["in the model"]}, timeout=60)
            wait_for(lambda: gated.calls == [1])
            queued = pool.submit(HTTP.post, s.url + "/v1/embeddings", json={"input": ["queued"]}, timeout=60)
            wait_for(lambda: s.scheduler.queued_texts == 1)
            s.server.handle_exit(signal.SIGTERM, None)  # what uvicorn's signal handler calls
            answers = [running.result(), queued.result()]  # the gate is still closed: the cut answers both
        for r in answers:
            assert r.status_code == 503 and r.headers["retry-after"] == "1"
            assert "shutting down" in json.dumps(r.json())
    finally:
        gated.gate.set()
        s.close()


# ------------------------------------------------------------------ API keys
@pytest.mark.parametrize("how", ["flag", "env"])
def test_empty_api_key_is_an_error_at_start(how: str, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["serve", "-m", "no-such-bundle"]
    if how == "flag":
        argv += ["--api-key", ""]
    else:
        monkeypatch.setenv("EDGE_EMBED_API_KEY", "")
    with pytest.raises(InputError, match="empty"):
        config_from_args(build_parser().parse_args(argv))
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "--api-key: empty" in err and len(err.strip().splitlines()) == 1


def test_api_key_file(tmp_path: Path, int8: Embedder, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EDGE_EMBED_API_KEY", raising=False)
    key = tmp_path / "key"
    key.write_text("s3cret from a file\n")
    cfg = config_from_args(build_parser().parse_args(["serve", "-m", "x", "--api-key-file", str(key)]))
    assert cfg.api_key == "s3cret from a file"
    for content, fragment in (("\n", "is empty"), ("a\nb\n", "more than one line")):
        key.write_text(content)
        with pytest.raises(InputError, match=fragment):
            config_from_args(build_parser().parse_args(["serve", "-m", "x", "--api-key-file", str(key)]))
    with pytest.raises(InputError, match="cannot read"):
        config_from_args(build_parser().parse_args(["serve", "-m", "x", "--api-key-file", str(tmp_path / "no")]))
    with pytest.raises(InputError, match="pass one of them"):
        config_from_args(build_parser().parse_args(["serve", "-m", "x", "--api-key", "k",
                                                    "--api-key-file", str(key)]))


# ------------------------------------------------------------------ /info
def test_info_shows_no_machine_paths(quick: LiveServer, int8: Embedder) -> None:
    r = HTTP.get(quick.url + "/info")
    assert r.status_code == 200
    assert int8.manifest.source["model_id"] == r.json()["source"]["model_id"]

    def strings(v: Any) -> Iterator[str]:
        if isinstance(v, dict):
            for k, x in v.items():
                yield k
                yield from strings(x)
        elif isinstance(v, list):
            for x in v:
                yield from strings(x)
        elif isinstance(v, str):
            yield v

    paths = [s for s in strings(r.json()) if s.startswith("/") or str(Path.home()) in s]
    assert not paths
    assert str(int8.path) not in r.text and str(Path(__file__).parents[2]) not in r.text


class Panicking(Gated):
    """An Embedder whose model run raises a BaseException, as pyo3's PanicException is."""

    class PanicException(BaseException):
        pass

    def embed_detailed(self, texts: list[str], **kw: Any) -> Any:
        raise self.PanicException("the tokenizer panicked")


def test_a_panic_in_the_model_is_a_json_500_and_the_server_lives_on(int8: Embedder) -> None:
    s = LiveServer(Panicking(int8), ServerConfig(warmup=False))
    try:
        for _ in range(2):
            r = HTTP.post(s.url + "/embed", json={"inputs": ["x"]})
            assert r.status_code == 500 and r.json()["error_type"] == "Backend"
            assert "Traceback" not in r.text and "panicked" not in r.text
        assert HTTP.get(s.url + "/health").status_code == 200
    finally:
        s.close()


# ------------------------------------------------------------------ the runtime's load and long-text options
def test_serve_refuses_a_bundle_with_another_digest(minilm_int8: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "-m", str(minilm_int8), "--digest", "sha256:" + "0" * 64, "--port", "0"]) == 1
    err = capsys.readouterr().err
    assert "digest" in err and len(err.strip().splitlines()) == 1


def test_info_shows_the_bundle_digest(quick: LiveServer, minilm_int8: Path) -> None:
    from edge_embed.manifest import manifest_digest

    digest = manifest_digest((minilm_int8 / "manifest.json").read_bytes())
    assert HTTP.get(quick.url + "/info").json()["digest"] == digest


def test_long_text_window_mode(int8: Embedder) -> None:
    s = LiveServer(int8, ServerConfig(long_text="window", warmup=False))
    long = " ".join(f"sentence {i} about edge devices and quantized embeddings." for i in range(120))
    try:
        r = HTTP.post(s.url + "/embed", json={"inputs": [long]})
        assert r.status_code == 200
        np.testing.assert_allclose(np.array(r.json()), int8.embed([long], long_text="window"), atol=1e-5)
        cut = HTTP.post(s.url + "/embed", json={"inputs": [long], "truncate": True})  # the request overrides
        np.testing.assert_allclose(np.array(cut.json()), int8.embed([long]), atol=1e-5)
        assert HTTP.post(s.url + "/embed", json={"inputs": [long], "truncate": False}).status_code == 422
    finally:
        s.close()
