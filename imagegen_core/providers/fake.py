"""A fake provider for tests, benchmarks and notebooks: configurable latency, failures and hangs.

Everything comes from ``providers.<name>.options`` in the runtime config (or constructor keywords)::

    {"type": "fake", "options": {"latencyMs": 800}}                       # fixed latency
    {"type": "fake", "options": {"latencyMs": {"lognormal": {"medianMs": 900, "sigma": 0.5}},
                                 "failureRate": 0.05, "failureClass": "transient", "seed": 7}}
    {"type": "fake", "options": {"hang": true}}                           # never answers

It sleeps with ``ctx.sleep`` (virtual time under a fake clock) and returns a small real PNG, so the
verification and normalisation steps run for real.
"""

from __future__ import annotations

import asyncio
import functools
import io
import math
import random
from collections.abc import Mapping
from typing import Any, ClassVar

from ..errors import FailureClass, ProviderError
from .base import ProviderBase, ProviderContext, ProviderJob, ProviderOutput

#: The HTTP status a real provider answers with for each failure class (fake and chaos errors carry it).
STATUS_FOR_CLASS = {
    FailureClass.AUTH: 401,
    FailureClass.BILLING: 402,
    FailureClass.RATE_LIMITED: 429,
    FailureClass.INVALID_REQUEST: 422,
    FailureClass.CONTENT_REJECTED: 422,
    FailureClass.TRANSIENT: 503,
    FailureClass.TIMEOUT: 504,
}


@functools.lru_cache(maxsize=16)
def _png(width: int, height: int) -> bytes:
    from PIL import Image  # lazy: keeps `import imagegen_core` light

    buf = io.BytesIO()
    Image.new("RGB", (width, height), (90, 120, 160)).save(buf, format="PNG")
    return buf.getvalue()


def _option(options: Mapping[str, Any], *names: str, default: Any = None) -> Any:
    for name in names:
        if name in options:
            return options[name]
    return default


class FakeProvider(ProviderBase):
    """A provider whose behaviour is scripted by its options; no network."""

    kind: ClassVar[str] = "fake"
    requires_key: ClassVar[bool] = False

    def __init__(self, *, options: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.options: dict[str, Any] = dict(options or {})
        self._rng = random.Random(_option(self.options, "seed", default=None))
        #: Every job this instance received, in order (tests inspect it).
        self.calls: list[ProviderJob] = []
        self.cancelled = 0

    def _opts(self, job: ProviderJob) -> dict[str, Any]:
        return {**self.options, **dict(job.options)}

    def sample_latency_s(self, options: Mapping[str, Any] | None = None) -> float:
        """Draw one latency (seconds) from the configured distribution."""
        spec = _option(options or self.options, "latencyMs", "latency_ms", default=0)
        if isinstance(spec, int | float):
            return float(spec) / 1000
        if isinstance(spec, list):  # a cycle of fixed latencies, one per call
            return float(spec[(len(self.calls) - 1) % len(spec)]) / 1000
        if isinstance(spec, Mapping) and "lognormal" in spec:
            params = spec["lognormal"]
            median = float(params["medianMs"]) / 1000
            return median * math.exp(self._rng.gauss(0.0, float(params.get("sigma", 0.5))))
        if isinstance(spec, Mapping) and "uniform" in spec:
            low, high = spec["uniform"]
            return self._rng.uniform(float(low), float(high)) / 1000
        raise ValueError(f"fake provider {self.name}: unsupported latencyMs {spec!r}")

    async def generate(self, job: ProviderJob, ctx: ProviderContext) -> ProviderOutput:
        self.calls.append(job)
        opts = self._opts(job)
        try:
            if _option(opts, "hang", default=False):
                await asyncio.Event().wait()  # never set: only cancellation ends it
            await ctx.sleep(self.sample_latency_s(opts))
            fail_rate = float(_option(opts, "failureRate", "failure_rate", default=0.0))
            fail_first = int(_option(opts, "failFirst", default=0))
            if len(self.calls) <= fail_first or (fail_rate and self._rng.random() < fail_rate):
                cls = FailureClass(_option(opts, "failureClass", "failure_class", default="transient"))
                retry_after = _option(opts, "retryAfterS", default=None)
                raise ProviderError(
                    f"{self.name}: injected {cls.value} failure",
                    failure_class=cls,
                    http_status=STATUS_FOR_CLASS[cls],
                    retry_after_s=float(retry_after) if retry_after is not None else None,
                )
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        if _option(opts, "corrupt", default=False):
            return ProviderOutput(data=b"this is not an image", content_type="image/png", model="fake")
        return ProviderOutput(data=_png(64, 64), content_type="image/png", model="fake", seed=job.seed)
