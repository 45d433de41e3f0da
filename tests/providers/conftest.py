"""Fixtures shared by the provider tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.providers.fixtures import Harness, harness


@pytest.fixture
async def h() -> AsyncIterator[Harness]:
    """A respx-backed client and a recording ProviderContext (see :class:`Harness`)."""
    async with harness() as value:
        yield value
