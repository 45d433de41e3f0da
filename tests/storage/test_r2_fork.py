"""The R2 store in a forked child, against a real S3-compatible server (SeaweedFS, see tests/s3server.py)."""

from __future__ import annotations

import os
import traceback
from typing import Any

import pytest

from imagegen_core import ImageGen
from imagegen_core.storage.r2 import R2Store
from tests.children import child_exit_code
from tests.s3server import WeedServer, weed
from tests.storage.test_r2_weed import keys, r2_env

__all__ = ["weed"]  # the module-scoped server fixture

#: The child's exit codes: what went wrong there.
CHILD_FAILED, CHILD_NOT_STORED, CHILD_SAME_CLIENT = 1, 2, 3


def _store_in_child(gen: ImageGen, parents_client: object) -> None:
    """The forked child's body: generate (an upload to R2), then report through the exit code."""
    code = CHILD_FAILED
    try:
        result = gen.generate_sync({"prompt": "child", "width": 64, "height": 64})
        assert isinstance(gen.store, R2Store)
        renewed = gen.store.client is not parents_client
        gen.close()
        code = (0 if result.success and result.key else CHILD_NOT_STORED) if renewed else CHILD_SAME_CLIENT
    except BaseException:
        traceback.print_exc()
    finally:
        os._exit(code)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this platform")
def test_a_forked_child_uploads_to_r2_with_a_client_of_its_own(weed: WeedServer, settings_factory: Any) -> None:
    """boto3 clients and their urllib3 pools are not fork-safe (the connections are the parent's sockets, their
    locks may have been held by a thread that is gone): a child forked from a process that used the R2 store
    builds a client of its own, and its upload lands in the bucket."""
    bucket = weed.create_bucket()
    gen = ImageGen.from_settings(settings_factory(**r2_env(weed, bucket)))
    parent = gen.generate_sync({"prompt": "parent", "width": 64, "height": 64})
    assert parent.success and parent.key, parent.error
    assert isinstance(gen.store, R2Store)
    parents_client = gen.store.client
    pid = os.fork()
    if pid == 0:
        _store_in_child(gen, parents_client)
    code = child_exit_code(pid, timeout_s=60, what="the forked child hung")
    assert gen.store.client is parents_client  # the parent keeps its own
    gen.close()
    assert code == 0
    stored = keys(weed, bucket)
    assert len(stored) == 2 and parent.key in stored
