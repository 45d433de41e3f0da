"""Image stores: the :class:`Store` protocol, object keys, and the local-folder store.

The R2 store lives in ``storage/r2.py`` and is imported only where configured (boto3 is heavy).
"""

from .base import MAX_KEY_BYTES, Store, StoredObject, default_image_key, make_key, safe_key
from .local import LocalStore

__all__ = [
    "MAX_KEY_BYTES",
    "LocalStore",
    "Store",
    "StoredObject",
    "default_image_key",
    "make_key",
    "safe_key",
]
