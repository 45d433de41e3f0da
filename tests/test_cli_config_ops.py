"""Operator tooling of the CLI: ``config history``, ``config rollback VERSION``, ``config set`` of the document
in force (no new version), ``breakers force-open NAME``.

Regressions (QA): every version was kept in ``config_versions`` but no command listed or restored one; ``config
set`` of the document in force stored a new version each time (an identical PATCH stored none); DESIGN says
admin can force a breaker open, which the API did and the CLI could not.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from imagegen_core.log import LogDB
from tests.test_cli import run

FAST = {"providers": {"fal": {"timeout": 8000}}}
SLOW = {"providers": {"fal": {"timeout": 12000}}, "race": {"mode": "sequential"}}


def _file(tmp_path: Path, name: str, document: dict[str, Any]) -> str:
    path = tmp_path / name
    path.write_text(json.dumps(document))
    return str(path)


def _last_line(text: str) -> str:
    return text.splitlines()[-1] + "\n"


def _versions(home: Path) -> int:
    with LogDB(home / "imagegen.db") as db:
        return len(db.config_history(limit=1000))


def test_config_set_of_the_document_in_force_stores_no_new_version(tmp_path: Path) -> None:
    fast = _file(tmp_path, "fast.json", FAST)
    assert run("config", "set", fast, home=tmp_path).stderr == "config version 1 stored and in force\n"

    again = run("config", "set", fast, home=tmp_path)

    assert (again.returncode, again.stderr) == (0, "config unchanged, version 1 kept\n")
    assert _versions(tmp_path) == 1
    changed = run("config", "set", _file(tmp_path, "slow.json", SLOW), home=tmp_path)
    assert changed.stderr == "config version 2 stored and in force\n"


def test_config_history_lists_the_versions_and_rollback_stores_an_old_one_again(tmp_path: Path) -> None:
    run("config", "set", _file(tmp_path, "fast.json", FAST), home=tmp_path)
    run("config", "set", _file(tmp_path, "slow.json", SLOW), home=tmp_path)
    shown_fast = run("config", "show", home=tmp_path)  # what version 1 was, for comparison below

    listed = run("config", "history", home=tmp_path)

    assert listed.returncode == 0, listed.stderr
    header, newest, oldest = listed.stdout.splitlines()
    assert header.split() == ["version", "stored", "at", "(UTC)", "source", "changes"]
    assert newest.split()[0] == "2" and newest.endswith("providers.fal.timeout, race.mode  [in force]"), newest
    assert oldest.split()[0] == "1" and oldest.split()[3] == "cli" and oldest.endswith("first version"), oldest

    rolled = run("config", "rollback", "1", home=tmp_path)

    assert (rolled.returncode, rolled.stderr) == (
        0,
        "config version 3 (the document of version 1) stored and in force\n",
    )
    shown = json.loads(run("config", "show", home=tmp_path).stdout)
    assert shown["providers"]["fal"]["timeout"] == 8000 and shown["race"]["mode"] == "hedged"
    assert json.loads(shown_fast.stdout) != shown  # (show above ran after version 2)
    newest = run("config", "history", home=tmp_path).stdout.splitlines()[1]
    assert newest.split()[:1] == ["3"] and "cli (rollback to 1)" in newest and newest.endswith("[in force]")
    same = run("config", "rollback", "3", home=tmp_path)  # the document in force: nothing to store
    assert (same.returncode, same.stderr) == (0, "config unchanged, version 3 kept\n")


def test_rollback_refuses_in_one_line_a_version_unknown_or_invalid_now(tmp_path: Path) -> None:
    run("config", "set", _file(tmp_path, "fast.json", FAST), home=tmp_path)
    with LogDB(tmp_path / "imagegen.db") as db:  # e.g. stored by a newer imagegen sharing the log
        bad = {"providers": {"fal": {"timeout": 8000, "warpSpeed": True}}}
        db.save_config(bad, source="newer")

    cases = [
        ("9", "imagegen: version: 9 does not exist (the latest is 2)\n"),
        (
            "two",
            "imagegen: config rollback: VERSION must be a version number (imagegen config history lists them),"
            " got 'two'\n",
        ),
    ]
    for version, message in cases:
        refused = run("config", "rollback", version, home=tmp_path)
        # (Every command first says, as before, that the newest stored version is invalid and ignored.)
        assert (refused.returncode, _last_line(refused.stderr)) == (2, message)
    invalid = run("config", "rollback", "2", home=tmp_path)
    assert invalid.returncode == 2, invalid.stderr
    assert _last_line(invalid.stderr).startswith(
        "imagegen: version: 2 is not valid now (invalid config: providers.fal.warpSpeed"
    )
    assert "Traceback" not in invalid.stderr and _versions(tmp_path) == 2
    listed = run("config", "history", home=tmp_path).stdout.splitlines()
    assert "[invalid now: invalid config: providers.fal.warpSpeed" in listed[1] and listed[2].endswith("[in force]")


def test_breakers_force_open_denies_the_provider_until_reset(tmp_path: Path) -> None:
    forced = run("breakers", "force-open", "FAL", home=tmp_path)  # names read as generate reads them

    assert forced.returncode == 0, forced.stderr
    assert "fal         forced_open — forced open from the CLI" in forced.stdout.splitlines()
    assert "forced_open" in run("breakers", home=tmp_path).stdout  # stored: another process sees it
    assert run("breakers", "reset", "fal", home=tmp_path).returncode == 0
    for args, message in (
        (["force-open", "nosuch"], "imagegen: unknown provider 'nosuch'; known: "),
        (["force-open"], "imagegen: breakers force-open needs one provider NAME (--all is for reset)"),
        (["force-open", "--all"], "imagegen: breakers force-open needs one provider NAME (--all is for reset)"),
    ):
        refused = run("breakers", *args, home=tmp_path)
        assert refused.returncode == 2 and refused.stderr.startswith(message), refused.stderr
    long = run("breakers", "force-open", "x" * 300, home=tmp_path)  # QA: echoed back in full
    assert long.returncode == 2 and "x" * 61 not in long.stderr and len(long.stderr.splitlines()) == 1


def test_config_set_of_a_partial_document_names_the_entries_it_removes(tmp_path: Path) -> None:
    """QA: `config set` of ``{"race": {"mode": "parallel"}}`` replaces the config over the defaults (documented,
    kept), and silently dropped the custom providers and styles in force. It says, one line per kind, what it
    removed, and that `imagegen config` has no merge option, so one part changes through PATCH /admin/config."""
    custom = {
        "providers": {"fal_eu": {"type": "fal"}, "fal_us": {"type": "fal"}},
        "styles": {"noir": "film noir still, {prompt}"},
    }
    assert run("config", "set", _file(tmp_path, "custom.json", custom), home=tmp_path).returncode == 0
    kept = run("config", "set", _file(tmp_path, "kept.json", {**custom, "race": {"mode": "sequential"}}), home=tmp_path)
    assert kept.stderr == "config version 2 stored and in force\n"  # nothing removed: nothing more said

    partial = run("config", "set", _file(tmp_path, "race.json", {"race": {"mode": "parallel"}}), home=tmp_path)

    assert (partial.returncode, partial.stdout) == (0, ""), partial.stderr
    why = (
        "config set replaces the config in force over the defaults; imagegen config has no merge option:"
        " to change one part, use the admin API's PATCH /admin/config"
    )
    assert partial.stderr.splitlines() == [
        "config version 3 stored and in force",
        f"removed providers: fal_eu, fal_us ({why})",
        f"removed styles: noir ({why})",
    ]
    shown = json.loads(run("config", "show", home=tmp_path).stdout)  # the semantics are unchanged
    assert shown["race"]["mode"] == "parallel" and "fal_eu" not in shown["providers"] and "noir" not in shown["styles"]


def test_config_set_refuses_a_non_finite_number_in_one_line_and_stores_nothing(tmp_path: Path) -> None:
    """Regression (QA): ``wait_s`` 1e400 (or NaN) in a file given to ``config set`` was stored as null, and every
    generate then failed; the file is refused naming the field."""
    path = tmp_path / "bad.json"
    for number, said in (
        ("1e400", "providers.replicate.options.wait_s: must be a finite number, got inf\n"),
        ("NaN", f"config file {path}: NaN is not a JSON number\n"),  # not JSON: refused as the API refuses it
    ):
        path.write_text('{"providers": {"replicate": {"options": {"wait_s": NUMBER}}}}'.replace("NUMBER", number))
        proc = run("config", "set", str(path), home=tmp_path)
        assert proc.returncode != 0
        assert proc.stderr.endswith(said), proc.stderr
        assert len(proc.stderr.splitlines()) == 1, proc.stderr
    assert not (tmp_path / "imagegen.db").exists() or _versions(tmp_path) == 0


def test_config_set_refuses_a_document_over_the_api_body_limit_and_stores_nothing(tmp_path: Path) -> None:
    """QA: 5,000 styles (50 MB) were stored; every process then loaded them (300 MB a generate), and the API,
    whose bodies are at most 64 KiB, could never take the document back."""
    styles = {f"s{i}": "{prompt}, " + "x" * 100 for i in range(1000)}  # about 110 KB
    proc = run("config", "set", _file(tmp_path, "big.json", {"styles": styles}), home=tmp_path)
    assert proc.returncode == 2, proc.stderr
    (line,) = proc.stderr.splitlines()
    assert line.startswith("imagegen: the config document is 1") and line.endswith(
        "bytes: at most 65,536 are stored (the HTTP API's body limit, IMAGEGEN_MAX_BODY_BYTES, so that it can be "
        "sent back through the API)"
    ), line
    assert not (tmp_path / "imagegen.db").exists() or _versions(tmp_path) == 0
    raised = run("config", "set", _file(tmp_path, "big.json", {"styles": styles}), home=tmp_path,
                 env={"IMAGEGEN_MAX_BODY_BYTES": "262144"})  # fmt: skip
    assert raised.returncode == 0, raised.stderr


def test_config_history_with_a_number_points_to_limit(tmp_path: Path) -> None:
    """QA: `config history 5` (meaning five versions) answered "…; to store one: imagegen config set FILE"."""
    proc = run("config", "history", "5", home=tmp_path)
    assert (proc.returncode, proc.stderr) == (
        2,
        "imagegen: config history takes no argument (got '5'); to list 5 versions: imagegen config history --limit 5\n",
    )


def test_a_version_stored_with_the_old_max_size_bound_stays_in_force_after_an_upgrade(tmp_path: Path) -> None:
    """Regression (QA, upgrade from 1acde24): imagegen before 2026-11-30 accepted ``limits.maxSize`` up to 16384;
    now WebP's 16383 is the bound. Every version an operator had stored with 16384 became invalid, and the config
    in force fell back to an older version or to the defaults, dropping custom providers and styles. A stored
    version with it is read with 16383 (history, in force, rollback); a new document with it is still refused."""
    from imagegen_core.config import parse_config
    from imagegen_core.images import WEBP_MAX_SIDE

    old = parse_config().to_document()  # stored whole, as every imagegen stores a version
    old["limits"]["maxSize"] = 16_384
    old["providers"]["slow"] = {**old["providers"]["offline"], "type": "fake", "enabled": True}
    old["styles"]["noir"] = "{prompt}, film noir"
    with LogDB(tmp_path / "imagegen.db") as db:
        db.save_config(old, source="cli")

    shown = run("config", "show", home=tmp_path)

    assert (shown.returncode, shown.stderr) == (0, ""), shown.stderr
    in_force = json.loads(shown.stdout)
    assert in_force["limits"]["maxSize"] == WEBP_MAX_SIDE and "slow" in in_force["providers"]
    assert "noir" in in_force["styles"]
    assert run("config", "history", home=tmp_path).stdout.splitlines()[1].endswith("[in force]")
    run("config", "set", _file(tmp_path, "fast.json", FAST), home=tmp_path)
    rolled = run("config", "rollback", "1", home=tmp_path)
    assert (rolled.returncode, rolled.stderr) == (
        0,
        "config version 3 (the document of version 1) stored and in force\n",
    )
    refused = run("config", "set", _file(tmp_path, "big.json", {"limits": {"maxSize": 16_384}}), home=tmp_path)
    assert refused.returncode == 2 and "limits.maxSize" in refused.stderr and _versions(tmp_path) == 3


def test_a_version_stored_with_a_long_style_name_stays_in_force_after_the_names_limit(tmp_path: Path) -> None:
    """Regression (QA, upgrade from e911f98): style names were limited to 64 printable characters on 2026-12-01;
    a version stored before with an 80-character name became "invalid now", and the version before it came back
    in force, with a provider the operator had removed racing again. A stored version is read without that
    limit (in force, history, /admin/status); saving a new document with such a name is still refused."""
    from imagegen_core.config import parse_config

    long_name = "a" * 80
    older = parse_config().to_document()
    older["providers"]["slow"] = {**older["providers"]["offline"], "type": "fake", "enabled": True}
    newest = parse_config().to_document()  # "slow" removed, a long style name added
    newest["styles"][long_name] = "{prompt}, long"
    with LogDB(tmp_path / "imagegen.db") as db:
        db.save_config(older, source="cli")
        db.save_config(newest, source="cli")

    shown = run("config", "show", home=tmp_path)

    assert (shown.returncode, shown.stderr) == (0, ""), shown.stderr
    in_force = json.loads(shown.stdout)
    assert long_name in in_force["styles"] and "slow" not in in_force["providers"]
    assert run("config", "history", home=tmp_path).stdout.splitlines()[1].endswith("[in force]")
    refused = run("config", "set", _file(tmp_path, "long.json", {"styles": {long_name: "{prompt}"}}), home=tmp_path)
    assert refused.returncode == 2 and "a style name is 1 to 64 printable characters" in refused.stderr
