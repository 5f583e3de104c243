"""Schemathesis against the OpenAPI schema with a valid token: at least 1,000 generated requests,
no 5xx, no response outside the schema (status codes, content types and bodies)."""

from __future__ import annotations

from pathlib import Path

import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from service.app import create_app
from tests.conftest import make_settings
from tests.helpers import bearer, make_token

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]
EXAMPLES_PER_OPERATION = 150


def test_generated_requests_never_fail_the_schema(tmp_path: Path, app_db_url: str) -> None:
    cfg = make_settings(app_db_url, tmp_path, requests_per_minute=1_000_000)
    app = create_app(cfg)
    auth = bearer(make_token(app_db_url))
    with TestClient(app, headers=auth) as client:  # some real ids for the generator to hit too
        client.post("/v1/datasets", json={"builtin": "mnist"})
    schema = schemathesis.openapi.from_asgi("/openapi.json", app, headers=auth)
    sent: dict[str, int] = {}
    for result in schema.get_all_operations():
        operation = result.ok()

        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        def check(case: schemathesis.Case) -> None:
            case.call_and_validate(headers=auth, checks=CHECKS)
            sent[case.operation.label] = sent.get(case.operation.label, 0) + 1

        check()
    total = sum(sent.values())
    print(f"schemathesis: {total} requests over {len(sent)} operations: {sent}")
    assert len(sent) >= 12 and total >= 1000, sent
