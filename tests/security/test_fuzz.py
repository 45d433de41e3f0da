"""The HTTP API fuzzed with schemathesis against its own OpenAPI schema, in process (ASGI), with the admin token:
whatever the generated path, query, headers and body, no route answers a 5xx server error.

The ImageGen races one instant fake provider and caps image sizes small, so generate calls stay cheap; the
runtime config is put back before each generate (a fuzzed ``PUT /admin/config`` may have replaced it)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error

from imagegen_core import ImageGen
from imagegen_core.api import create_app
from tests.api.conftest import ADMIN, ADMIN_TOKEN, fakes

DOCUMENT = fakes(painter={"latencyMs": 1}) | {
    "limits": {"minSize": 16, "maxSize": 256},
    "defaults": {"timeout": 2000, "width": 128, "height": 96},
}
#: Hypothesis examples per operation and mode: ~1,100 calls in all, ~12 s.
EXAMPLES = 50


@pytest.fixture
def fuzz_gen(settings_factory: Any) -> Iterator[ImageGen]:
    gen = ImageGen.from_settings(settings_factory(IMAGEGEN_ADMIN_TOKEN=ADMIN_TOKEN), source="api")
    gen.set_config(DOCUMENT, source="test")
    yield gen
    gen.close()  # the app's lifespan already closed it on schemathesis's loop; this is a no-op then


def test_no_request_makes_the_api_fail_with_a_server_error(fuzz_gen: ImageGen) -> None:
    """Every operation, with valid (positive) and invalid (negative) inputs. The Python API rather than
    ``schema.parametrize()``: its lazy pytest integration needs a pytest internal that pytest 9 dropped."""
    schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(fuzz_gen, close_gen=True))
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 15  # public, files and admin routes, all documented
    calls: list[str] = []
    for operation in operations:
        for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(
                max_examples=EXAMPLES,
                deadline=None,
                database=None,  # no .hypothesis folder in the project
                suppress_health_check=list(HealthCheck),
                phases=[Phase.explicit, Phase.generate],  # a failure is reported as found, unshrunk: faster
            )
            def fuzz(case: Any) -> None:
                if case.path == "/images/generate":
                    fuzz_gen.set_config(DOCUMENT, source="test")  # a fuzzed PUT /admin/config may have replaced it
                case.call_and_validate(headers=ADMIN, checks=[not_a_server_error])
                calls.append(case.operation.label)

            try:
                fuzz()
            except Unsatisfiable:
                assert mode is schemathesis.GenerationMode.NEGATIVE  # nothing in it can be made invalid
    assert set(calls) == {op.label for op in operations}  # every operation was really called
