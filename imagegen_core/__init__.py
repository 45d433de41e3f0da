"""imagegen_core: race image providers under deadlines, retries and circuit breakers; store the first
good image; log every request and attempt.

    from imagegen_core import ImageGen, GenerateRequest, Settings
    with ImageGen.from_settings(Settings()) as gen:  # closing it ends its threads and writes its last rows
        result = gen.generate_sync(GenerateRequest(prompt="a lighthouse at dusk", width=1200, height=630))

Heavy modules load on first use, so ``import imagegen_core`` stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .lazy import lazy_attributes

__all__ = [
    "AnalysisError",
    "AnalysisTypeError",
    "AttemptEvent",
    "AttemptOutcome",
    "AttemptSummary",
    "Attribution",
    "BreakerOpenError",
    "Candidate",
    "CandidateStatus",
    "Comparison",
    "ConfigConflictError",
    "ConfigError",
    "ConfigVersionError",
    "ConfigVersionInfo",
    "DownloadPolicy",
    "DuplicateRequestIdError",
    "Entrant",
    "FailureClass",
    "FieldProblem",
    "GenerateRequest",
    "GenerateResult",
    "ImageError",
    "ImageGen",
    "ImageGenError",
    "ImageTooLargeError",
    "InvalidRequestError",
    "LogDB",
    "LogDatabaseBusy",
    "LogDatabaseError",
    "MissingExtraError",
    "Provider",
    "ProviderBase",
    "ProviderContext",
    "ProviderError",
    "ProviderJob",
    "ProviderOutput",
    "RuntimeConfig",
    "Settings",
    "Spool",
    "StatsWindowError",
    "StorageError",
    "StorageStats",
    "Store",
    "StoreSetupError",
    "StoredObject",
    "UploadFailedError",
    "WriteFailure",
    "parse_config",
]

_WHERE = {
    "Attribution": "models",
    "AttemptOutcome": "models",
    "AttemptSummary": "models",
    "GenerateRequest": "models",
    "GenerateResult": "models",
    "BreakerOpenError": "errors",
    "ConfigConflictError": "errors",
    "ConfigVersionError": "errors",
    "ConfigError": "errors",
    "AnalysisError": "errors",
    "AnalysisTypeError": "errors",
    "DuplicateRequestIdError": "errors",
    "FailureClass": "errors",
    "FieldProblem": "errors",
    "ImageError": "errors",
    "ImageGenError": "errors",
    "ImageTooLargeError": "errors",
    "LogDatabaseBusy": "errors",
    "LogDatabaseError": "errors",
    "MissingExtraError": "errors",
    "InvalidRequestError": "errors",
    "ProviderError": "errors",
    "StatsWindowError": "errors",
    "StorageError": "errors",
    "StoreSetupError": "errors",
    "UploadFailedError": "errors",
    "RuntimeConfig": "config",
    "ConfigVersionInfo": "config_history",
    "parse_config": "config",
    "Settings": "settings",
    "ImageGen": "service",
    "AttemptEvent": "race",
    "Entrant": "race",
    "Candidate": "compare",
    "CandidateStatus": "compare",
    "Comparison": "compare",
    "Provider": "providers.base",
    "ProviderBase": "providers.base",
    "ProviderContext": "providers.base",
    "ProviderJob": "providers.base",
    "ProviderOutput": "providers.base",
    "DownloadPolicy": "providers.base",
    "StoredObject": "storage.base",
    "StorageStats": "storage.stats",
    "LogDB": "log.db",
    "Spool": "storage.spool",
    "Store": "storage.base",
    "WriteFailure": "log.writer",
}

if TYPE_CHECKING:
    from .compare import Candidate, CandidateStatus, Comparison
    from .config import RuntimeConfig, parse_config
    from .config_history import ConfigVersionInfo
    from .errors import (
        AnalysisError,
        AnalysisTypeError,
        BreakerOpenError,
        ConfigConflictError,
        ConfigError,
        ConfigVersionError,
        DuplicateRequestIdError,
        FailureClass,
        FieldProblem,
        ImageError,
        ImageGenError,
        ImageTooLargeError,
        InvalidRequestError,
        LogDatabaseBusy,
        LogDatabaseError,
        MissingExtraError,
        ProviderError,
        StatsWindowError,
        StorageError,
        StoreSetupError,
        UploadFailedError,
    )
    from .log.db import LogDB
    from .log.writer import WriteFailure
    from .models import AttemptOutcome, AttemptSummary, Attribution, GenerateRequest, GenerateResult
    from .providers.base import DownloadPolicy, Provider, ProviderBase, ProviderContext, ProviderJob, ProviderOutput
    from .race import AttemptEvent, Entrant
    from .service import ImageGen
    from .settings import Settings
    from .storage.base import Store, StoredObject
    from .storage.spool import Spool
    from .storage.stats import StorageStats


__getattr__ = lazy_attributes(__name__, _WHERE)


def __dir__() -> list[str]:
    return sorted(__all__)
