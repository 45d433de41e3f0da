"""What ``imagegen console`` serves: ``console/app.py`` as a Streamlit ``st.App`` behind :class:`HostGuard`.

Streamlit checks no ``Host`` header by default, so a page whose host name rebinds to 127.0.0.1 could open a
session (DNS rebinding). Every HTTP request and websocket upgrade here passes the guard first: loopback or
``localhost``, plus the host names in ``IMAGEGEN_CONSOLE_HOSTS``. ``streamlit run console/server.py`` serves the
same; ``streamlit run console/app.py`` has no guard (fine for development on a machine of one's own).
"""

from __future__ import annotations

import sys
from pathlib import Path

import streamlit as st
from starlette.middleware import Middleware

from imagegen_core import Settings
from imagegen_core.errors import ConfigError
from imagegen_core.web_hosts import HOSTS_VARIABLE, HostGuard


def extra_hosts() -> list[str]:
    """``IMAGEGEN_CONSOLE_HOSTS`` from the settings; none when the settings do not load (the page then says
    why, as ever, and only loopback reaches it)."""
    try:
        return Settings().console_hosts
    except ConfigError as exc:
        print(f"imagegen console: {exc}; {HOSTS_VARIABLE} not read: loopback only", file=sys.stderr)
        return []


app = st.App(Path(__file__).with_name("app.py"), middleware=[Middleware(HostGuard, extra_hosts=extra_hosts())])
