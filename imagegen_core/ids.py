"""Random ids (request, attempt, storage key) without a system call per id.

``uuid.uuid4()`` reads 16 bytes with ``os.urandom``: one ``getrandom`` call that also releases and re-takes the
GIL, three or four times per request on the event loop. Under load the re-take waits behind the log writer and
the image threads. Here the same kernel randomness is read 4 KiB at a time (256 ids a call) and sliced; the ids
are exactly as unguessable as uuid4's. A forked child starts with an empty buffer, so it never repeats ids its
parent hands out.
"""

from __future__ import annotations

import os
import threading
import uuid

#: Bytes read from the kernel at a time.
_CHUNK = 4096

_lock = threading.Lock()
_buffer = bytearray()


def _forget_buffer() -> None:
    global _buffer
    _buffer = bytearray()


os.register_at_fork(after_in_child=_forget_buffer)


def random_uuid() -> uuid.UUID:
    """A version-4 UUID (random), as ``uuid.uuid4()`` gives."""
    global _buffer
    with _lock:
        if len(_buffer) < 16:
            _buffer = bytearray(os.urandom(_CHUNK))
        raw = bytes(_buffer[-16:])
        del _buffer[-16:]
    return uuid.UUID(bytes=raw, version=4)


def new_id() -> str:
    """32 lowercase hex digits of a random UUID: what ``uuid.uuid4().hex`` gives."""
    return random_uuid().hex
