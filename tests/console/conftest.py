"""Every console test already has its own IMAGEGEN_HOME and no keys (tests/conftest.py); here Streamlit's
caches are cleared around each test, so each one builds (and closes) its own ImageGen."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import streamlit as st


@pytest.fixture(autouse=True)
def fresh_streamlit_caches() -> Iterator[None]:
    """No ImageGen (nor thumbnail) from an earlier test's IMAGEGEN_HOME; the cached ImageGen is closed."""
    st.cache_resource.clear()
    st.cache_data.clear()
    yield
    st.cache_resource.clear()
    st.cache_data.clear()
