"""Fault injection built into the product, for drills: per provider, extra latency, errors of a chosen failure
class, hangs and corrupt payloads, each with a rate (the runtime config's ``chaos`` section, off by default).

Polly's chaos strategies (Simmy) are the model: a fault is injected *around* the real provider by
:class:`ChaosProvider`, a :class:`~imagegen_core.providers.base.Provider` that delegates to the real one, so
the race, the breakers and the log see injected faults exactly like real ones (an injected ``rate_limited``
error is logged, retried and counted by the breaker as a real 429 would be). Messages start with
``<name>: chaos:`` so an operator can tell them apart in the log.

Faults are rolled in a fixed order on every call: hang, latency, error, corrupt payload. A hang, an error
and a corrupt payload never reach the real provider: a drill against paid providers must not pay for images
it throws away. ``chaos.seed`` makes the rolls reproducible (one generator per provider entry).
"""

from __future__ import annotations

import asyncio
import random
from typing import Any, ClassVar

from .config import ChaosConfig, ChaosFault, RuntimeConfig
from .errors import ProviderError
from .providers.base import DownloadPolicy, Provider, ProviderContext, ProviderJob, ProviderOutput
from .providers.fake import STATUS_FOR_CLASS

#: What a corrupt payload carries: declared as PNG, decodes as nothing.
CORRUPT_PAYLOAD = b"\x89PNG\r\n\x1a\nchaos: corrupt payload"


def fault_is_active(fault: ChaosFault) -> bool:
    """Whether ``fault`` can inject anything at all."""
    delays = fault.latency_ms > 0 and fault.latency_rate > 0
    return delays or fault.error_rate > 0 or fault.hang_rate > 0 or fault.corrupt_rate > 0


def chaos_active(config: RuntimeConfig) -> bool:
    """True when chaos is switched on and at least one provider entry has a fault that can fire."""
    chaos = config.chaos
    return chaos.enabled and any(fault_is_active(f) for f in chaos.providers.values())


def chaos_status(config: RuntimeConfig) -> dict[str, Any]:
    """The ``chaos`` part of ``/admin/status`` (and what the console shows): the switch, whether any fault
    can fire, the seed, and the faults per provider entry in wire (camelCase) keys."""
    chaos = config.chaos
    return {
        "enabled": chaos.enabled,
        "active": chaos_active(config),
        "seed": chaos.seed,
        "providers": {
            name: fault.model_dump(mode="json", by_alias=True)
            for name, fault in sorted(chaos.providers.items())
            if fault_is_active(fault)
        },
    }


class ChaosProvider:
    """Wraps a real provider and injects ``fault`` into its calls; everything else is delegated."""

    kind: ClassVar[str] = "chaos"
    requires_key: ClassVar[bool] = False

    def __init__(self, inner: Provider, fault: ChaosFault, *, rng: random.Random) -> None:
        self.inner = inner
        self.fault = fault
        self.name = inner.name
        self._rng = rng

    def __repr__(self) -> str:
        return f"ChaosProvider({self.inner!r})"

    @property
    def configured(self) -> bool:
        return self.inner.configured

    @property
    def download_policy(self) -> DownloadPolicy:
        return self.inner.download_policy

    def _roll(self, rate: float) -> bool:
        # Always draw, even at rate 0, so changing one rate does not shift the other faults' sequence.
        return self._rng.random() < rate

    async def generate(self, job: ProviderJob, ctx: ProviderContext) -> ProviderOutput:
        """Inject the configured faults, then (if none ended the call) ask the real provider."""
        fault = self.fault
        hang, delay = self._roll(fault.hang_rate), self._roll(fault.latency_rate)
        error, corrupt = self._roll(fault.error_rate), self._roll(fault.corrupt_rate)
        if hang:
            await asyncio.Event().wait()  # never set: only the race's timeout or cancellation ends it
        if delay and fault.latency_ms:
            await ctx.sleep(fault.latency_ms / 1000)
        if error:
            cls = fault.error_class
            raise ProviderError(
                f"{self.name}: chaos: injected {cls.value} failure",
                failure_class=cls,
                http_status=STATUS_FOR_CLASS[cls],
                retry_after_s=fault.retry_after_ms / 1000 if fault.retry_after_ms is not None else None,
            )
        if corrupt:
            return ProviderOutput(data=CORRUPT_PAYLOAD, content_type="image/png", model="chaos", billed=False)
        return await self.inner.generate(job, ctx)

    async def confirm_use(self, output: ProviderOutput, ctx: ProviderContext) -> None:
        await self.inner.confirm_use(output, ctx)


class ChaosWrappers:
    """The chaos wrappers of one process, kept across requests so each provider's random sequence (and a
    seeded drill) continues from request to request instead of restarting."""

    def __init__(self) -> None:
        self._made: dict[str, tuple[tuple[int, ChaosFault, int | None], ChaosProvider]] = {}

    def wrap(self, name: str, provider: Provider, chaos: ChaosConfig) -> Provider:
        """``provider`` itself, or its chaos wrapper when chaos is on and ``providers.<name>`` has a fault."""
        fault = chaos.providers.get(name)
        if not chaos.enabled or fault is None or not fault_is_active(fault):
            return provider
        identity = (id(provider), fault, chaos.seed)
        made = self._made.get(name)
        if made is None or made[0] != identity:
            rng = random.Random(f"{chaos.seed}:{name}") if chaos.seed is not None else random.Random()
            made = self._made[name] = (identity, ChaosProvider(provider, fault, rng=rng))
        return made[1]
