"""Image stores: the :class:`Store` protocol, object keys, the local-folder store, store selection, the
spool of images waiting for upload, and usage statistics.

The R2 store lives in ``storage/r2.py``; :func:`make_store` imports it only when R2 is configured, and
it imports boto3 only on first use (boto3 is heavy).
"""

from .base import MAX_KEY_BYTES, Store, StoredObject, default_image_key, make_key, safe_key
from .local import LocalStore
from .select import make_spool, make_store, r2_missing
from .spool import FlushReport, Spool, SpoolBacklog, SpoolEntry
from .stats import MonthUsage, StorageStats, Usage

__all__ = [
    "MAX_KEY_BYTES",
    "FlushReport",
    "LocalStore",
    "MonthUsage",
    "Spool",
    "SpoolBacklog",
    "SpoolEntry",
    "StorageStats",
    "Store",
    "StoredObject",
    "Usage",
    "default_image_key",
    "make_key",
    "make_spool",
    "make_store",
    "r2_missing",
    "safe_key",
]
