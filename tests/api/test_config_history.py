"""``GET /admin/config/history`` and ``POST /admin/config/rollback``: the stored config versions, and an old
one stored again as the newest, validated like a PUT; a PUT of the document in force stores no version.

Regression (QA): every version was kept in ``config_versions``, but nothing listed or restored one.
"""

from __future__ import annotations

import concurrent.futures
import threading
from collections.abc import Callable

from imagegen_core.service import ImageGen

from .conftest import ADMIN, api_client, fakes


async def test_history_lists_the_versions_and_rollback_restores_one(
    make_gen: Callable[..., ImageGen], db_url: str
) -> None:
    gen = make_gen(fakes(a={}, b={}), IMAGEGEN_DATABASE_URL=db_url)  # version 1
    async with api_client(gen) as client:
        patched = await client.patch("/admin/config", json={"providers": {"a": {"enabled": False}}}, headers=ADMIN)
        assert patched.json()["version"] == 2
        history = await client.get("/admin/config/history", headers=ADMIN)
        assert (await client.get("/admin/config/history")).status_code == 401  # admin only, as every admin route

        rolled = await client.post("/admin/config/rollback", json={"version": 1}, headers=ADMIN)
        answer = await client.post("/images/generate", json={"prompt": "x", "width": 64, "height": 64})
        again = await client.post("/admin/config/rollback", json={"version": 3}, headers=ADMIN)
        after = (await client.get("/admin/config/history?limit=1", headers=ADMIN)).json()

    assert history.status_code == 200, history.text
    newest, first = history.json()["versions"]
    assert (newest["version"], newest["source"], newest["inForce"], newest["valid"]) == (2, "api", True, True)
    assert newest["changes"] == ["providers.a.enabled"] and newest["summary"] == "providers.a.enabled"
    assert newest["storedAt"].endswith("+00:00")
    assert (first["version"], first["changes"], first["summary"], first["inForce"]) == (1, None, "first version", False)
    assert rolled.status_code == 200, rolled.text
    assert (rolled.json()["version"], rolled.json()["inForceVersion"]) == (3, 3)
    assert rolled.json()["config"]["providers"]["a"]["enabled"] is True
    assert answer.json()["provider"] == "a"  # the next request uses it
    assert again.status_code == 200 and again.json()["version"] == 3  # the document in force: nothing stored
    (latest,) = after["versions"]
    assert (latest["version"], latest["source"], latest["changes"]) == (
        3,
        "api (rollback to 1)",
        ["providers.a.enabled"],
    )


async def test_a_rollback_to_a_version_unknown_or_invalid_now_is_422_and_changes_nothing(
    make_gen: Callable[..., ImageGen],
) -> None:
    gen = make_gen(fakes(a={}))  # version 1
    gen.log.save_config({"providers": {"a": {"warpSpeed": True}}}, source="newer")  # version 2, refused here
    async with api_client(gen) as client:
        unknown = await client.post("/admin/config/rollback", json={"version": 7}, headers=ADMIN)
        # no database can hold these ids (fuzzed: 10**21 was a 500, the database refusing the query)
        beyond = [
            await client.post("/admin/config/rollback", json={"version": v}, headers=ADMIN)
            for v in (0, -1, 2**63, 10**21)
        ]
        invalid = await client.post("/admin/config/rollback", json={"version": 2}, headers=ADMIN)
        malformed = [
            await client.post("/admin/config/rollback", json=body, headers=ADMIN)
            for body in ({"version": "1"}, {"version": True}, {}, {"version": 1, "extra": 1}, [1])
        ]
        listed = (await client.get("/admin/config/history", headers=ADMIN)).json()["versions"]

    assert unknown.status_code == 422 and unknown.json()["field"] == "version", unknown.text
    assert "7 does not exist (the latest is 2)" in unknown.json()["error"]
    assert [(r.status_code, r.json()["field"]) for r in beyond] == [(422, "version")] * 4, [r.text for r in beyond]
    assert invalid.status_code == 422 and invalid.json()["field"] == "version", invalid.text
    assert "2 is not valid now" in invalid.json()["error"] and "warpSpeed" in invalid.json()["error"]
    assert [r.status_code for r in malformed] == [400] * 5
    assert len(gen.log.config_history()) == 2 and gen.config_in_force_version == 1
    assert (listed[0]["valid"], listed[1]["inForce"]) == (False, True)
    assert "warpSpeed" in listed[0]["error"]


async def test_a_put_of_the_document_in_force_stores_no_version(make_gen: Callable[..., ImageGen]) -> None:
    """As an identical PATCH: ``config set`` of the same file stored a new version every time."""
    gen = make_gen(fakes(a={}))
    async with api_client(gen) as client:
        same = await client.put("/admin/config", json=fakes(a={}), headers=ADMIN)
        other = await client.put("/admin/config", json=fakes(b={}), headers=ADMIN)
    assert same.status_code == 200 and same.json()["version"] == 1, same.text
    assert other.json()["version"] == 2 and len(gen.log.config_history()) == 2


def test_rollbacks_at_once_store_one_version(make_gen: Callable[..., ImageGen], db_url: str) -> None:
    """QA: ten concurrent rollbacks to the same version stored four versions (three of them changing nothing):
    each found the document not yet in force before another stored it. Stored only over the version it was
    judged against, as a PATCH is, the others find it in force and store nothing."""
    gen = make_gen(fakes(a={}, b={}), IMAGEGEN_DATABASE_URL=db_url)  # version 1
    gen.set_config({**fakes(a={}, b={}), "race": {"mode": "parallel"}}, source="test")  # version 2
    start = threading.Barrier(10)

    def roll_back() -> int | None:
        start.wait()
        gen.rollback_config(1, source="test")
        return gen.config_version

    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        versions = list(pool.map(lambda _: roll_back(), range(10)))
    assert versions == [3] * 10
    assert [v.version for v in gen.config_history()] == [3, 2, 1]
