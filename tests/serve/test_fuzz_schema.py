"""schemathesis against a live server, from its own /openapi.json: cases that fit the schema
(positive) and cases that break it (negative) on every route. No answer may be a 5xx or take
longer than the per-request timeout; negative cases must be refused (4xx); answers must match
their documented statuses, content types and schemas; afterwards the engine is alive and its KV
pool intact.

The cases come from schemathesis' Hypothesis strategies, run here under @given (its pytest
loader for a schema from a fixture does not work under this pytest)."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from tests.serve.conftest import auth
from tests.serve.fuzz_support import (
    REQUEST_TIMEOUT_S,
    assert_engine_alive_and_kv_intact,
    num_examples,
)

pytestmark = pytest.mark.slow

CHECKS = [
    not_a_server_error,
    negative_data_rejection,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
# (method, path, examples per mode in the suite): the routes with a body get the most.
ROUTES = [
    ("POST", "/v1/completions", 40),
    ("POST", "/v1/chat/completions", 40),
    ("POST", "/tokenize", 20),
    ("POST", "/detokenize", 20),
    ("GET", "/v1/models", 2),
    ("GET", "/health", 2),
    ("GET", "/version", 2),
    ("GET", "/metrics", 2),
    ("GET", "/debug/kv", 2),
]


def _broken(case) -> str:
    """positive, or negative-<the parts that break the schema>: body and/or header (the bearer
    header, missing or malformed; a malformed one is replaced by the valid key when sent)."""
    components = case.meta.components if case.meta else {}
    broken = [place.value for place, info in components.items() if not info.mode.is_positive]
    return f"negative-{'+'.join(sorted(broken))}" if broken else "positive"


@pytest.fixture(scope="module")
def served_schema(fuzz_server):
    return schemathesis.openapi.from_url(
        fuzz_server.base_url + "/openapi.json", headers=auth(), timeout=30
    )


def test_every_route_is_fuzzed(served_schema):
    operations = [result.ok() for result in served_schema.get_all_operations()]
    assert {(op.method.upper(), op.path) for op in operations} == {r[:2] for r in ROUTES}


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
@pytest.mark.parametrize("method, path, in_suite", ROUTES)
def test_schema_cases(served_schema, fuzz_tally, method, path, in_suite, mode):
    operation = served_schema[path][method]
    if mode is GenerationMode.NEGATIVE and not operation.body:
        pytest.skip("no body or parameter to break")
    route = f"{method} {path}"

    @settings(
        max_examples=num_examples(in_suite) if method == "POST" else in_suite,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        database=None,
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case) -> None:
        try:
            response = case.call_and_validate(
                headers=auth(), checks=CHECKS, timeout=REQUEST_TIMEOUT_S
            )
        except Exception as error:
            fuzz_tally.failures.append(f"{route} {mode.value}: {str(error)[:3000]}")
            raise
        fuzz_tally.count(f"schemathesis-{_broken(case)}", route, response.status_code)

    run()


def test_engine_alive_and_kv_intact_after_the_schema_cases(fuzz_server):
    assert_engine_alive_and_kv_intact(fuzz_server)
