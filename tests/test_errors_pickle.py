"""imagegen's errors cross process boundaries intact: a worker pool (``concurrent.futures.ProcessPoolExecutor``,
multiprocessing, a Celery-like worker) pickles the exception its task raised and the caller unpickles it; ``copy``
does the same (QA: ``InvalidRequestError`` and ``ProviderError``, and every other error whose constructor takes
other arguments than its message, raised ``TypeError: __init__() missing … argument`` when unpickled or copied, so
the caller got a broken pool instead of the refusal naming the field)."""

from __future__ import annotations

import copy
import pickle
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor

import pytest

import imagegen_core
from imagegen_core import errors

SAMPLES: dict[str, Callable[[], BaseException]] = {
    "InvalidRequestError": lambda: errors.InvalidRequestError("width", "must be between 64 and 4096 pixels, got 10"),
    "ConfigError": lambda: errors.ConfigError("invalid config: race.mode: no", field="race.mode"),
    "ConfigConflictError": lambda: errors.ConfigConflictError(3, 4),
    "ConfigVersionError": lambda: errors.ConfigVersionError(9, 4),
    "MissingExtraError": lambda: errors.MissingExtraError("install the api extra", extra="api", module="fastapi"),
    "FieldProblem": lambda: errors.FieldProblem("options.mode", "must be queue or sync"),
    "DuplicateRequestIdError": lambda: errors.DuplicateRequestIdError("0" * 32),
    "ProviderError": lambda: errors.ProviderError(
        "fal: HTTP 429", failure_class=errors.FailureClass.RATE_LIMITED, http_status=429, retry_after_s=2.0
    ),
    "BreakerOpenError": lambda: errors.BreakerOpenError("fal", "open"),
    "UploadFailedError": lambda: errors.UploadFailedError("the store refused it", kept=True, key="ai/x.webp"),
    "LogDatabaseBusy": lambda: errors.LogDatabaseBusy("log database locked"),
    "AnalysisTypeError": lambda: errors.AnalysisTypeError("providers must be a list"),
    "StatsWindowError": lambda: errors.StatsWindowError("--since: expected a date or date-time", field="since"),
    "ImageTooLargeError": lambda: errors.ImageTooLargeError("not an image: 60000x60000 exceeds 50000000 pixels"),
}


def test_every_error_of_the_public_api_has_a_sample() -> None:
    public = {name for name in imagegen_core.__all__ if isinstance(getattr(imagegen_core, name), type)}
    public = {name for name in public if issubclass(getattr(imagegen_core, name), BaseException)}
    simple = {"ImageGenError", "AnalysisError", "ImageError", "StorageError", "StoreSetupError", "LogDatabaseError"}
    assert public - simple <= SAMPLES.keys()


def _same(original: BaseException, restored: BaseException) -> None:
    assert type(restored) is type(original)
    assert str(restored) == str(original) and restored.args == original.args
    assert vars(restored) == vars(original)


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_an_error_survives_pickle_and_copy(name: str) -> None:
    original = SAMPLES[name]()
    if isinstance(original, errors.InvalidRequestError):
        original.request_id = "f" * 32  # set by the service once the rejected row is logged
    _same(original, pickle.loads(pickle.dumps(original)))
    _same(original, copy.copy(original))
    _same(original, copy.deepcopy(original))


def _refuse() -> None:
    raise errors.InvalidRequestError("prompt", "must not be empty")


def test_a_worker_process_s_refusal_reaches_the_caller_as_itself() -> None:
    with ProcessPoolExecutor(max_workers=1) as pool, pytest.raises(errors.InvalidRequestError) as caught:
        pool.submit(_refuse).result(timeout=60)
    assert caught.value.field == "prompt" and str(caught.value) == "prompt: must not be empty"
