"""Settings no field can declare, read by variable-name pattern: ``IMAGEGEN_<PROVIDER>_BASE_URL`` and the plugins'
``IMAGEGEN_<KIND>_API_KEY`` (:mod:`.base_urls`, :mod:`.provider_keys`). They come from the same places, with the
same priority, as every other setting: :class:`VariablesByPattern` follows each of pydantic-settings' sources
(the environment, then the env files) and picks its variables from what that source read."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, EnvSettingsSource, PydanticBaseSettingsSource


class VariablesByPattern(PydanticBaseSettingsSource):
    """``{field: pick(variables)}``, ``variables`` being those the source ``source`` read (name → value), or
    nothing when ``pick`` finds none."""

    def __init__(
        self,
        settings_cls: type[BaseSettings],
        source: PydanticBaseSettingsSource,
        *,
        field: str,
        pick: Callable[[Mapping[str, Any]], dict[str, Any]],
    ) -> None:
        super().__init__(settings_cls)
        # Both the environment's source and the env files' are EnvSettingsSource (the files' a subclass).
        self._variables = source.env_vars if isinstance(source, EnvSettingsSource) else {}
        self._field = field
        self._pick = pick

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        """Not used: :meth:`__call__` reads the variables by pattern, not field by field."""
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        picked = self._pick(self._variables)
        return {self._field: picked} if picked else {}
