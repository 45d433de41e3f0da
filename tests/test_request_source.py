"""The ``source`` a request is logged under (``generate(source=...)``, ``compare(source=...)``, and the
ImageGen's own default) is a short line of text, refused otherwise before anything is logged or called (QA: a
list or a lone surrogate as ``source`` lost the request's log rows, "log write failed … FOREIGN KEY constraint
failed", while the caller got a successful answer; 100,000 characters were stored whole)."""

from __future__ import annotations

from typing import Any

import pytest

from imagegen_core import ConfigError, ImageGen, InvalidRequestError
from tests.faults.harness import db_file, read_db

BAD = [5, ["cms"], "", "cms\ud800", "cms\nimport", "x" * 65]
REQUEST = {"prompt": "a lighthouse", "width": 64, "height": 64}


@pytest.mark.parametrize("source", BAD, ids=repr)
def test_a_bad_source_is_refused_naming_it_and_nothing_is_logged(settings_factory: Any, source: Any) -> None:
    with ImageGen.from_settings(settings_factory()) as gen:
        with pytest.raises(InvalidRequestError, match=r"^source: must be 1 to 64 printable characters") as refused:
            gen.generate_sync(REQUEST, source=source)
        assert refused.value.field == "source"
        with pytest.raises(InvalidRequestError, match=r"^source: "):
            gen.compare_sync(REQUEST, source=source)
        path = db_file(gen)
    assert read_db(path, "SELECT count(*) FROM requests") == [(0,)]


@pytest.mark.parametrize("source", BAD, ids=repr)
def test_a_bad_default_source_is_a_config_error(settings_factory: Any, source: Any) -> None:
    with pytest.raises(ConfigError, match=r"^source: must be 1 to 64 printable characters"):
        ImageGen.from_settings(settings_factory(), source=source)


def test_a_good_source_names_the_rows(settings_factory: Any) -> None:
    with ImageGen.from_settings(settings_factory(), source="newsroom-cms") as gen:
        gen.generate_sync(REQUEST)
        gen.generate_sync(REQUEST, source="batch job 7")
        path = db_file(gen)
    assert sorted(read_db(path, "SELECT source FROM requests")) == [("batch job 7",), ("newsroom-cms",)]
