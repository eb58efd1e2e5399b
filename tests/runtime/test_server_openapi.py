"""/openapi.json is the API: it validates, and requests generated from it (schemathesis,
valid and invalid ones) never get a 5xx, and every documented answer matches its schema."""

from __future__ import annotations

import pytest

for _mod in ("fastapi", "uvicorn", "prometheus_client", "httpx", "schemathesis", "hypothesis"):
    pytest.importorskip(_mod, reason="needs the serve and dev extras: pip install 'edge-embed[serve,dev]'")

from collections.abc import Iterator  # noqa: E402

import schemathesis  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import response_schema_conformance  # noqa: E402

from edge_embed import Embedder  # noqa: E402
from edge_embed.server import ServerConfig  # noqa: E402

from .server_util import HTTP, LiveServer  # noqa: E402

# small limits, so generated lists and bodies also hit the 413s
CONFIG = ServerConfig(max_inputs=8, max_body_bytes=16 * 1024, warmup=False)


@pytest.fixture(scope="module")
def server(int8: Embedder) -> Iterator[LiveServer]:
    s = LiveServer(int8, CONFIG)
    yield s
    s.close()


def test_openapi_document_names_every_route(server: LiveServer) -> None:
    doc = HTTP.get(server.url + "/openapi.json").json()
    assert doc["openapi"].startswith("3.")
    assert set(doc["paths"]) == {"/v1/embeddings", "/embed", "/health", "/info", "/metrics"}
    body = doc["paths"]["/v1/embeddings"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert {"input", "encoding_format", "dimensions"} <= set(body["properties"]) and body["required"] == ["input"]


def test_generated_requests_get_no_server_error(server: LiveServer) -> None:
    schema = schemathesis.openapi.from_url(server.url + "/openapi.json")
    cases = st.one_of(schema.as_strategy(GenerationMode.POSITIVE), schema.as_strategy(GenerationMode.NEGATIVE))

    @settings(max_examples=60, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(case=cases)
    def check(case: schemathesis.Case) -> None:
        case.call_and_validate(base_url=server.url, checks=[not_a_server_error, response_schema_conformance],
                               timeout=60)

    check()
