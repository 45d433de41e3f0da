"""Which store the settings describe: R2 when its settings are complete, else the local folder.

A half-configured R2 is a startup error naming every missing variable — never a silent fallback to the
local folder, which would quietly keep production images on one machine.
"""

from __future__ import annotations

import logging

from pydantic import SecretStr

from ..errors import ConfigError
from ..settings import R2_REQUIRED, R2_VARIABLES, Settings
from .base import Store, bucket_destination, folder_destination
from .local import LocalStore
from .spool import Spool

_log = logging.getLogger("imagegen.storage")


def r2_values(settings: Settings) -> dict[str, str]:
    """The R2 variables that are set (non-empty), by environment name, secrets revealed."""
    values: dict[str, str] = {}
    for name in R2_VARIABLES:
        value = getattr(settings, name.lower())
        text = value.get_secret_value() if isinstance(value, SecretStr) else value
        if text and text.strip():
            values[name] = text.strip()
    return values


def r2_missing(settings: Settings) -> list[str]:
    """What a partly configured R2 still needs (empty when complete or when no R2 variable is set)."""
    values = r2_values(settings)
    if not values:
        return []
    missing = [name for name in R2_REQUIRED if name not in values]
    if "R2_ACCOUNT_ID" not in values and "R2_ENDPOINT_URL" not in values:
        missing.append("R2_ACCOUNT_ID or R2_ENDPOINT_URL")
    return missing


def make_store(settings: Settings) -> Store:
    """The store ``settings`` describe: :class:`~imagegen_core.storage.r2.R2Store` when every R2 variable it
    needs is set, :class:`LocalStore` under ``<IMAGEGEN_HOME>/images`` when none is; ConfigError otherwise."""
    values = r2_values(settings)
    if not values:
        return LocalStore(settings.home / "images", public_base_url=settings.public_base_url)
    missing = r2_missing(settings)
    if missing:
        raise ConfigError(
            f"R2 is partly configured; missing: {', '.join(missing)}. Set them, or unset every R2_* variable "
            "to store images in the local folder",
            field=missing[0].split()[0],
        )
    if settings.public_base_url:  # QA: set as well, it was ignored without a word
        _log.warning(
            "IMAGEGEN_PUBLIC_BASE_URL is not used: images go to R2, and their URLs are R2_PUBLIC_BASE_URL + key"
            " (unset IMAGEGEN_PUBLIC_BASE_URL, or set R2_PUBLIC_BASE_URL to it)"
        )
    # R2_PUBLIC_BASE_URL and R2_ENDPOINT_URL are checked as URLs by Settings, when they are read.
    from .r2 import R2Store  # boto3 itself loads on the first upload, in a worker thread

    return R2Store(
        bucket=values["R2_BUCKET"],
        access_key_id=values["R2_ACCESS_KEY_ID"],
        secret_access_key=values["R2_SECRET_ACCESS_KEY"],
        public_base_url=values["R2_PUBLIC_BASE_URL"],
        account_id=values.get("R2_ACCOUNT_ID"),
        endpoint_url=values.get("R2_ENDPOINT_URL"),
    )


def settings_destination(settings: Settings) -> str | None:
    """The destination (:func:`~.base.store_destination`) of the store :func:`make_store` builds from ``settings``,
    without building it; None when R2 is partly configured. An ImageGen given another store is told apart by it:
    ``imagegen serve`` and ``imagegen storage flush`` build this one, and upload nothing kept for another."""
    values = r2_values(settings)
    if not values:
        return folder_destination(settings.home / "images")
    if r2_missing(settings):
        return None
    from .r2 import r2_endpoint  # (the module imports no boto3)

    endpoint = r2_endpoint(values.get("R2_ACCOUNT_ID"), values.get("R2_ENDPOINT_URL"))
    return bucket_destination(values["R2_BUCKET"], endpoint)


def make_spool(settings: Settings) -> Spool:
    """The spool of images waiting for upload, ``<IMAGEGEN_HOME>/spool``."""
    return Spool(settings.home / "spool")
