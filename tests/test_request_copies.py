"""A ``GenerateRequest`` made without validation (pydantic's ``model_copy(update=...)``, the usual "same request,
another size" idiom, or ``model_construct``) is validated by ``generate`` like any other: a bad value is an
InvalidRequestError naming its field, logged as ``rejected`` (QA: ``prompt=5`` raised AttributeError from deep
inside the service, and a prompt with a lone surrogate failed every provider and lost the request's log rows)."""

from __future__ import annotations

from typing import Any

import pytest

from imagegen_core import GenerateRequest, ImageGen, InvalidRequestError
from tests.faults.harness import db_file, read_db

BASE = GenerateRequest(prompt="a lighthouse", width=64, height=64)


@pytest.mark.parametrize(
    ("update", "field"),
    [
        ({"prompt": 5}, "prompt"),
        ({"prompt": None}, "prompt"),
        ({"prompt": "a \ud800 lighthouse"}, "prompt"),
        ({"width": "abc"}, "width"),
        ({"style": 7}, "style"),
        ({"article_id": 4.2}, "articleId"),
    ],
)
def test_a_copy_with_a_bad_value_is_refused_naming_the_field(
    settings_factory: Any, update: dict[str, Any], field: str
) -> None:
    with ImageGen.from_settings(settings_factory()) as gen:
        with pytest.raises(InvalidRequestError) as refused:
            gen.generate_sync(BASE.model_copy(update=update))
        path = db_file(gen)
    assert refused.value.field == field, refused.value
    assert read_db(path, "SELECT status FROM requests") == [("rejected",)]
    assert read_db(path, "SELECT count(*) FROM attempts") == [(0,)]


def test_a_good_copy_and_a_constructed_request_are_served(settings_factory: Any) -> None:
    with ImageGen.from_settings(settings_factory()) as gen:
        copied = gen.generate_sync(BASE.model_copy(update={"width": 96, "article_id": 42}))
        built = gen.generate_sync(GenerateRequest.model_construct(prompt="a lighthouse", width=80, height=64))
    assert copied.success and (copied.width, copied.height) == (96, 64)
    assert built.success and (built.width, built.height) == (80, 64)
