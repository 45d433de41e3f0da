"""Random ids: uuid4-shaped, unique, one kernel read per 256 ids, and never repeated by a forked child."""

from __future__ import annotations

import os
import uuid

import pytest

from imagegen_core import ids


def test_ids_are_random_version_4_uuids_in_hex() -> None:
    made = [ids.new_id() for _ in range(10_000)]  # many buffer refills
    assert len(set(made)) == len(made)
    for text in made[:50]:
        parsed = uuid.UUID(hex=text)
        assert text == parsed.hex and parsed.version == 4 and parsed.variant == uuid.RFC_4122


def test_the_kernel_is_asked_once_per_256_ids(monkeypatch: pytest.MonkeyPatch) -> None:
    reads: list[int] = []
    real = os.urandom

    def counting(n: int) -> bytes:
        reads.append(n)
        return real(n)

    monkeypatch.setattr(ids, "_buffer", bytearray())
    monkeypatch.setattr(os, "urandom", counting)
    for _ in range(512):
        ids.new_id()
    assert reads == [4096, 4096]


def test_a_forked_child_does_not_repeat_the_parents_ids() -> None:
    ids.new_id()  # the buffer now holds 255 more ids, which the child inherits
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its next id and leave at once
        os.write(write_end, ids.new_id().encode())
        os._exit(0)
    os.close(write_end)
    child_id = os.read(read_end, 64).decode()
    os.close(read_end)
    os.waitpid(pid, 0)
    assert len(child_id) == 32 and child_id != ids.new_id()
