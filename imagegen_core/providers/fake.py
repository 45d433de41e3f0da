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

from ..errors import FailureClass, FieldProblem, ProviderError, is_finite, shown_number
from .base import ProviderBase, ProviderContext, ProviderJob, ProviderOutput, check_known_options

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


_KNOWN_OPTIONS = (
    "latencyMs",
    "latency_ms",
    "failureRate",
    "failure_rate",
    "failFirst",
    "failureClass",
    "failure_class",
    "retryAfterS",
    "hang",
    "corrupt",
    "seed",
)


def _latency_problem(spec: Any) -> str | None:
    """Why ``latencyMs`` cannot be used, or None: a number, a list of numbers, ``{"lognormal": {"medianMs",
    "sigma"?}}`` or ``{"uniform": [low, high]}`` (milliseconds, not negative)."""

    def ms(value: Any) -> bool:
        return isinstance(value, int | float) and not isinstance(value, bool) and is_finite(value) and value >= 0

    if ms(spec) or (isinstance(spec, list) and spec and all(ms(v) for v in spec)):
        return None
    if isinstance(spec, Mapping) and set(spec) == {"lognormal"} and isinstance(spec["lognormal"], Mapping):
        params = spec["lognormal"]
        if ms(params.get("medianMs")) and set(params) <= {"medianMs", "sigma"} and ms(params.get("sigma", 0.5)):
            return None
    if isinstance(spec, Mapping) and set(spec) == {"uniform"} and isinstance(spec["uniform"], list):
        bounds = spec["uniform"]
        if len(bounds) == 2 and all(ms(v) for v in bounds) and bounds[0] <= bounds[1]:
            return None
    return (
        'must be milliseconds: a number, a list of numbers, {"lognormal": {"medianMs": M, "sigma": S}} '
        f'or {{"uniform": [LOW, HIGH]}}, got {shown_number(spec)}'
    )


class FakeProvider(ProviderBase):
    """A provider whose behaviour is scripted by its options; no network."""

    kind: ClassVar[str] = "fake"
    requires_key: ClassVar[bool] = False

    @classmethod
    def check_settings(cls, model: str | None, options: Mapping[str, Any]) -> None:
        """Known option names only (a typo such as ``failRate`` would silently do nothing), each of its type."""
        check_known_options(options, cls.kind, _KNOWN_OPTIONS)
        for key in ("latencyMs", "latency_ms"):
            if key in options and (problem := _latency_problem(options[key])):
                raise FieldProblem(f"options.{key}", problem)
        for key in ("failureRate", "failure_rate"):
            value = options.get(key, 0)
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
                raise FieldProblem(f"options.{key}", f"must be a share between 0 and 1, got {value!r}")
        for key in ("failureClass", "failure_class"):
            if key in options and options[key] not in {c.value for c in FailureClass}:
                known = ", ".join(c.value for c in FailureClass)
                raise FieldProblem(f"options.{key}", f"must be one of {known}, got {options[key]!r}")
        for key, kind, allowed in (
            ("failFirst", int, "a whole number of calls"),
            ("seed", int, "a whole number, not negative"),
            ("retryAfterS", int | float, "seconds"),
            ("hang", bool, "true or false"),
            ("corrupt", bool, "true or false"),
        ):
            value = options.get(key)
            wrong_bool = kind is not bool and isinstance(value, bool)
            not_finite = isinstance(value, int | float) and not is_finite(value)
            if value is not None and (
                wrong_bool or not_finite or not isinstance(value, kind) or (kind is not bool and value < 0)
            ):
                raise FieldProblem(f"options.{key}", f"must be {allowed}, got {shown_number(value)}")

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
