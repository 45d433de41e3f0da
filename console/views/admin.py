"""Admin: circuit breakers (reset one or all), the runtime config as a validated JSON document, and
storage usage. Nothing here shows a secret: keys live in the environment, never in the config."""

from __future__ import annotations

import json

import streamlit as st

from console.common import get_gen, utc_time
from imagegen_core import ConfigConflictError, ConfigError, ImageGenError
from imagegen_core.config import changed_keys
from imagegen_core.console_data import (
    breaker_rows,
    config_error_parts,
    editable_config,
    human_bytes,
    save_config_text,
    storage_summary,
)
from imagegen_core.console_data import markdown_literal as md

gen = get_gen()
state = st.session_state

st.title("Admin")
if kept := gen.log_spill.waiting():  # rows of a log-database outage, kept on this machine until it answers
    st.warning(
        f"{kept} log row(s) were kept on this machine while the log database did not answer, and wait to be "
        "written to it: the console writes them within seconds of the database answering again (so does any "
        "`imagegen` command started here). Until then, History and Provider stats do not show them.",
        icon=":material/database:",
    )

# -- circuit breakers -----------------------------------------------------------------------------------


def break_caption(row: dict[str, object]) -> str:
    """An open breaker's break as admission treats it: until when it denies (to the second: a first break lasts
    30 s), or that it is over and the next call probes (its end passed, or the clock went back since it began,
    when its stored end, still ahead, would read as a break running for that long)."""
    until = row["openedUntil"]
    at = utc_time(until, seconds=True) if isinstance(until, float | int) else None
    if not row["breakOver"]:
        return f" until {at}" if at else ""
    return f" · {f'its break ended at {at}' if at else 'its break is over'}: the next call probes"


st.header("Circuit breakers")
for row in breaker_rows(gen):
    name, status, reason, action = st.columns([3, 2, 5, 2], vertical_alignment="center")
    name.markdown(f"**{md(row['provider'])}**" + ("" if row["racing"] else " · not racing"))
    closed = row["state"] == "closed"
    status.markdown(f":{'green' if closed else 'red'}-badge[{row['state']}]")
    until = break_caption(row)
    # A reason quotes a provider's error body (an auth failure's 401): literal text, as the History page's errors.
    reason.caption(f"{md(row['reason'], limit=500) or 'no transition yet'}{until}")
    if action.button("Reset", key=f"admin_reset_{row['provider']}", disabled=closed):
        gen.log_call_sync(lambda: gen.breakers.reset(row["provider"], reason="reset from the console"))  # noqa: B023
        st.rerun()
if st.button("Reset all", key="admin_reset_all", icon=":material/restart_alt:"):
    gen.log_call_sync(lambda: gen.breakers.reset_all(reason="reset from the console"))
    st.rerun()

# -- runtime config ---------------------------------------------------------------------------------------
st.header("Runtime config")
st.caption("The whole document: validated before it is stored; an invalid one changes nothing.")
if standing_in := [row["name"] for row in gen.provider_status() if row["racing"] and not row["enabled"]]:
    # Otherwise the document below ("enabled": false) contradicts the sidebar ("Racing: offline").
    st.info(
        f"{md(', '.join(standing_in))} races although its `enabled` is false below: no other provider has its "
        "key, so the offline renderer stands in. Set a provider's key (see the README) to race that provider.",
        icon=":material/info:",
    )


def loaded(version: int) -> str:
    """What the editor's text came from, in words."""
    return f"version {version}" if version else "the built-in defaults (no version stored)"


def load() -> None:
    """The config in force into the editor, with the version it is (edits are saved based on that one)."""
    text, version = editable_config(gen)
    state.update(admin_config=text, admin_config_loaded=text, admin_config_base=version, admin_config_error=None)


def save() -> None:
    """Button callback: it runs before the page is drawn again, so it may replace the editor's text.

    Stored only if no other version was stored since the text was loaded (the CLI, the API or another
    editor may have saved meanwhile): otherwise the save would silently undo their change."""
    try:
        version = save_config_text(gen, state.admin_config, based_on=state.admin_config_base)
    except ConfigConflictError as exc:
        state.admin_config_error = (
            None,
            f"Not saved: config version {exc.current} was stored after this editor loaded "
            f"{loaded(exc.expected or 0)}, and saving would undo that change. Your edits are still in the editor.",
        )
    except ConfigError as exc:
        state.admin_config_error = config_error_parts(exc)
    except ImageGenError as exc:  # the log database away or hung: one line, and the edits stay in the editor
        state.admin_config_error = (
            None,
            f"Maybe not saved: {exc}. Your edits are still in the editor; once the database answers, the page "
            "shows which version is in force.",
        )
    else:
        changed = changed_keys(json.loads(state.admin_config_loaded), gen.config.to_document())
        stored = version != state.admin_config_base  # a document already in force stores no version
        load()
        what = f"changed: {md(', '.join(changed[:6]))}" + (f" and {len(changed) - 6} more" if len(changed) > 6 else "")
        state.admin_config_saved = (
            f"Config version {version} stored ({what if changed else 'the same settings as before'}); every "
            "process uses it from its next request."
            if stored
            # QA: it said "Config version 1 stored (the same settings as before)", though none was stored
            else f"Nothing to save: the document is the config in force (version {version} kept), as the CLI says."
        )


newest_text, newest = editable_config(gen)
if "admin_config_base" not in state or "admin_config" not in state:
    load()
elif state.admin_config_base != newest and state.admin_config == state.get("admin_config_loaded"):
    load()  # nothing edited: show the newest version (the editor's text is kept while it holds edits)

# The text area keeps unsaved edits for the session (until saved or discarded), across page switches.
st.text_area("Config document (JSON)", key="admin_config", height=420, persist_state="session")
if error := state.get("admin_config_error"):
    field, message = error
    st.error(f"**{md(field)}** — {md(message)}" if field else md(message), icon=":material/error:")
if saved := state.pop("admin_config_saved", None):
    st.success(saved)
if (base := state.admin_config_base) != newest:  # only while the editor holds edits (see above)
    stored = {version: (stored_at, source) for version, stored_at, source in gen.log.config_history(50)}
    stored_at, source = stored.get(newest, (None, "?"))
    with st.container(border=True, key="admin_config_stale"):
        st.warning(
            f"Config version {newest} was stored (by {md(source)}, {utc_time(stored_at)}) after this editor "
            f"loaded {loaded(base)}: your edits are based on an older document, so saving them is refused. "
            f"Load version {newest} and make your edits again.",
            icon=":material/sync_problem:",
        )
        with st.expander(f"Version {newest} as stored"):
            st.code(newest_text, language="json")
        st.button(f"Load version {newest} (drops your edits)", key="admin_config_load_newest", on_click=load)
with st.container(horizontal=True):  # buttons as wide as their labels, side by side, at any window width
    st.button("Validate and save", key="admin_config_save", on_click=save, type="primary")
    st.button("Discard edits", key="admin_config_reload", on_click=load)
with st.expander("Config history"):
    st.dataframe(
        [
            {"version": version, "stored": utc_time(at), "source": source}
            for version, at, source in gen.log.config_history(20)
        ],
        hide_index=True,
    )

# -- storage ------------------------------------------------------------------------------------------------
st.header("Storage")
try:
    usage = storage_summary(gen)
except ImageGenError as exc:
    st.error(f"Cannot read the store: {md(str(exc).splitlines()[0])}")
else:
    columns = st.columns(4)
    columns[0].metric("Store", usage["backend"])
    columns[1].metric("Images", usage["totalObjects"])
    columns[2].metric("Size", human_bytes(usage["totalBytes"]))
    columns[3].metric("Waiting in spool", usage["spool"]["objects"], help=human_bytes(usage["spool"]["bytes"]))
    st.caption(f"{md(usage['location'])}, key prefix {md(usage['prefix'])}/")
    for destination, count in usage["spool"]["otherStores"].items():
        # Not this console's to upload (QA: counted as waiting, with no word of where they were meant to go).
        st.caption(
            f"The spool also holds {count} image{'s' if count != 1 else ''} kept for another store "
            f"({md(destination)}): a process configured for that store uploads {'them' if count != 1 else 'it'}."
        )
    months = [{"month": m["month"], "images": m["objects"], "size": human_bytes(m["bytes"])} for m in usage["months"]]
    defaults = usage["defaults"]
    months.append({"month": "default images", "images": defaults["objects"], "size": human_bytes(defaults["bytes"])})
    st.dataframe(months, hide_index=True)
