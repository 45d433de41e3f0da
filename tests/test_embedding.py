"""imagegen_core as a developer embeds it: its types reach their type checker, wrong arguments get the
documented errors (and a log row), and a closed ImageGen says so instead of failing somewhere inside."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from imagegen_core import ConfigError, ImageGen, ImageGenError, InvalidRequestError
from imagegen_core.log import recent_requests

EMBEDDING_PROGRAM = """\
from imagegen_core import GenerateRequest, ImageGen


def url_of(gen: ImageGen) -> str:
    return gen.generate_sync(GenerateRequest(prompt="a lighthouse", width=320, height=200)).url


def wrong(gen: ImageGen) -> int:
    return gen.generate_sync({"prompt": "x"}).url
"""


def test_the_package_ships_its_types_to_the_developer_s_type_checker(tmp_path: Path) -> None:
    """``mypy --strict`` on a program outside the project sees imagegen_core's hints (py.typed): it finds
    the one deliberate mistake, and nothing about missing stubs."""
    (tmp_path / "program.py").write_text(EMBEDDING_PROGRAM)
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--cache-dir", str(tmp_path / "cache"), "program.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    errors = [line for line in proc.stdout.splitlines() if ": error:" in line]
    assert errors == [
        'program.py:9: error: Incompatible return value type (got "str", expected "int")  [return-value]'
    ], proc.stdout


@pytest.mark.parametrize("body", [[1, 2], "a lighthouse", None, 5])
def test_a_request_that_is_not_an_object_is_refused_and_logged(settings_factory: Any, body: Any) -> None:
    with (
        ImageGen.from_settings(settings_factory()) as gen,
        pytest.raises(InvalidRequestError, match=r"^body: Input should be a valid dictionary"),
    ):
        gen.generate_sync(body)
    with ImageGen.from_settings(settings_factory()) as gen:
        rows = recent_requests(gen.log)
    assert [(r["status"], r["error"].split(":")[0]) for r in rows] == [("rejected", "body")]


def test_a_closed_imagegen_says_so_and_starts_nothing_again(settings_factory: Any) -> None:
    gen = ImageGen.from_settings(settings_factory())
    assert gen.generate_sync({"prompt": "before", "width": 320, "height": 200}).success
    gen.close()
    gen.close()  # twice is fine
    threads = {t.name for t in threading.enumerate()}
    for use in (
        lambda: gen.generate_sync({"prompt": "after"}),
        lambda: gen.compare_sync({"prompt": "after"}),
        lambda: gen.set_config({"defaults": {"width": 640}}),
    ):
        with pytest.raises(ImageGenError, match="this ImageGen is closed: make a new one"):
            use()
    assert {t.name for t in threading.enumerate()} == threads  # no portal thread started again
    with ImageGen.from_settings(settings_factory()) as fresh:
        assert len(fresh.log.config_history()) == 0  # set_config after close stored nothing


async def test_aclose_twice_and_generate_after_aclose(settings_factory: Any) -> None:
    async with ImageGen.from_settings(settings_factory()) as gen:
        await gen.generate({"prompt": "p", "width": 320, "height": 200})
    await gen.aclose()  # after the `async with` closed it already
    with pytest.raises(ImageGenError, match="closed"):
        await gen.generate({"prompt": "p"})


def test_set_config_none_is_refused_instead_of_resetting_everything(settings_factory: Any) -> None:
    with ImageGen.from_settings(settings_factory()) as gen:
        gen.set_config({"defaults": {"width": 640}}, source="test")
        with pytest.raises(ConfigError, match="config document must be a JSON object"):
            gen.set_config(None)  # type: ignore[arg-type]
        assert gen.reload_config().defaults.width == 640 and len(gen.log.config_history()) == 1


def test_from_settings_names_what_it_takes() -> None:
    with pytest.raises(TypeError, match=r"from_settings\(\) takes a Settings, not dict"):
        ImageGen.from_settings({"IMAGEGEN_HOME": "/tmp/x"})  # type: ignore[arg-type]
