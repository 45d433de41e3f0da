"""The ``imagegen`` command. Exit 0 only when a provider produced the image; otherwise non-zero with a
one-line reason on stderr (1: answered with the default image, 2: bad input or configuration)."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from .cli_common import (
    EXIT_INTERRUPTED,
    EXIT_NO_IMAGE,
    JsonRefusalCommand,
    fail,
    missing_log_line,
    open_imagegen,
    racing_types,
    sigterm_as_interrupt,
)
from .errors import MissingExtraError, clip, one_line, redact

if TYPE_CHECKING:
    from .breaker import BreakView, ResetKind
    from .models import GenerateResult
    from .race import AttemptEvent
    from .service import ImageGen

# The engine (pydantic, httpx, tenacity) is imported inside the commands that run it, so that `--help`
# and mistyped arguments answer in a fraction of a second instead of after a second of imports.


def _progress_printer() -> Callable[[AttemptEvent], None]:
    """Live per-provider progress lines on stderr (only used when stderr is a terminal)."""
    from .models import AttemptOutcome

    t0 = time.monotonic()

    def show(event: AttemptEvent) -> None:
        at = f"{(time.monotonic() - t0) * 1000:6.0f} ms"
        tag = " (hedge)" if event.hedged else ""
        if event.outcome is AttemptOutcome.RUNNING:
            text = f"started{tag}" + (f", attempt {event.attempt}" if event.attempt > 1 else "")
        elif event.outcome is AttemptOutcome.SUCCESS:
            text = f"done in {event.duration_ms} ms"
        elif event.outcome is AttemptOutcome.FAILED:
            text = f"failed ({event.failure_class}) after {event.duration_ms} ms"
        else:
            text = event.outcome.value
        click.echo(f"{at}  {event.provider:<10} {text}", err=True)

    return show


#: Exit status when stdout's reader went away (128 + SIGPIPE, what a process killed by it ends with). QA: 1,
#: which `generate` uses for "answered with the default image", after `imagegen generate x | head -0` had
#: stored the image.
EXIT_BROKEN_PIPE = 141


class _Commands(click.Group):
    """Click's group, except that an interrupt ends with one line and status 130. Click's own ending,
    "Aborted!" with status 1, would read as "answered with the default image" (EXIT_NO_IMAGE)."""

    def main(  # type: ignore[override]
        self, args: Sequence[str] | None = None, prog_name: str | None = None, **kwargs: Any
    ) -> Any:
        if kwargs.pop("standalone_mode", True) is False:
            return super().main(args, prog_name, standalone_mode=False, **kwargs)
        _closed_streams_to_devnull()
        try:
            status = super().main(args, prog_name, standalone_mode=False, **kwargs)
            sys.stdout.flush()  # a full disk or a closed pipe behind stdout fails here, not at interpreter exit
        except click.Abort:  # click's translation of KeyboardInterrupt (SIGINT, or SIGTERM in generate)
            click.echo("imagegen: interrupted", err=True)
            sys.exit(EXIT_INTERRUPTED)
        except click.ClickException as exc:  # usage errors: click's own message and status 2
            exc.show()
            sys.exit(exc.exit_code)
        except MissingExtraError as exc:  # a feature of an extra this install lacks (`serve` without `api`)
            fail(str(exc))
        except _ReaderGone:  # `imagegen history | head`: the reader has all it wanted
            sys.exit(EXIT_BROKEN_PIPE)
        except BrokenPipeError:  # the same, met by the flush above
            _stdout_to_devnull()
            sys.exit(EXIT_BROKEN_PIPE)
        except OSError as exc:  # the commands name their own files: what is left is stdout (`> /dev/full`)
            _stdout_to_devnull()
            where = f" {exc.filename}" if exc.filename else " the output"
            click.echo(f"imagegen: cannot write{where}: {exc.strerror or exc}", err=True)
            sys.exit(1)
        sys.exit(status if isinstance(status, int) else 0)  # an int is ctx.exit()'s status (--help: 0)

    def invoke(self, ctx: click.Context) -> Any:
        """Click's, except that a closed pipe behind stdout leaves as :class:`_ReaderGone`: Click's main takes an
        EPIPE itself and exits 1, the status of "answered with the default image"."""
        try:
            return super().invoke(ctx)
        except BrokenPipeError:
            _stdout_to_devnull()
            raise _ReaderGone from None


class _ReaderGone(Exception):
    """stdout's reader went away (a closed pipe): no OSError, which Click's main would end with status 1."""


def _closed_streams_to_devnull() -> None:
    """A process started with stdout or stderr closed (``2>&-``, a supervisor's setting) has None there: the
    first message, or click's final flush, then failed, and ``generate`` did nothing and exited 1 ("answered
    with the default image"), or printed a traceback after storing the image. What would go there is lost,
    as the caller chose; the command runs."""
    import os

    for name in ("stdout", "stderr"):
        if getattr(sys, name) is None:
            setattr(sys, name, open(os.devnull, "w", encoding="utf-8"))  # noqa: SIM115 (for the process's life)


def _stdout_to_devnull() -> None:
    """Point stdout at /dev/null, so that the interpreter's last flush of what could not be written does not
    print a second error (Python's advice for a closed pipe)."""
    import os

    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="imagegen", prog_name="imagegen")
def main() -> None:
    """imagegen: one-click article images raced across several providers."""


@main.command(cls=JsonRefusalCommand)
@click.argument("prompt")
@click.option("--keyword", help="Search keyword for stock photos.")
@click.option("--article-id", help="Article the image is for.")
@click.option("--width", type=int, help="Width in pixels (default from config).")
@click.option("--height", type=int, help="Height in pixels (default from config).")
@click.option("--style", help="Style preset (see `imagegen config show`, key styles).")
@click.option("--provider", help="Start with this provider; the others still back it up.")
@click.option(
    "--deadline",
    type=click.FloatRange(0.1, 600),
    callback=lambda _ctx, _param, value: _finite(value),
    metavar="SECONDS",
    help="Answer within this many seconds (default: the config's defaults.timeout).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
def generate(
    prompt: str,
    keyword: str | None,
    article_id: str | None,
    width: int | None,
    height: int | None,
    style: str | None,
    provider: str | None,
    deadline: float | None,
    as_json: bool,
) -> None:
    """Generate one image for PROMPT and print its URL."""
    # Validated by generate itself, so that a refused request is logged as `rejected` like any other.
    request = {
        "prompt": prompt,
        "keyword": keyword,
        "article_id": article_id,
        "width": width,
        "height": height,
        "style": style,
        "provider": provider,
    }
    progress = _progress_printer() if sys.stderr.isatty() else None
    from .profiles import offline_only_problem

    # SIGTERM interrupts like Ctrl-C until the command has closed: while closing waits to write the log (QA: a
    # SIGTERM there found its default handler back, and the process died with the request's rows unwritten).
    with sigterm_as_interrupt(), open_imagegen(without_log=True) as gen:
        offline_only = offline_only_problem(gen.settings, racing_types(gen))
        if offline_only:  # as `serve` refuses to start: an offline drawing must not pass for an article image
            fail(f"refusing to generate in production: {offline_only}")
        # An InvalidRequestError is one line on stderr and exit 2 (open_imagegen), and with --json the HTTP API's
        # error shape on stdout too (JsonRefusalCommand).
        result = gen.generate_sync(request, on_event=progress, deadline_s=deadline)
        # Answered before closing: closing waits until the log has the request, which another process holding
        # the database's write lock may delay; the editor need not wait for that to see the URL.
        _print_result(result, as_json)
    for note in result.notes:  # e.g. the provider asked for did not race: another's image must not pass for its
        click.echo(f"note: {note}", err=True)
    if result.store_failed:  # a provider made it: the store is what failed, and the image waits in the spool
        fail(f"the image was made but not stored: {result.error}", EXIT_NO_IMAGE)
    if not result.success:
        fail(f"no provider produced an image: {result.error}", EXIT_NO_IMAGE)


def _finite(value: float | None) -> float | None:
    """Refuse NaN, which passes click's range check (every comparison with it is false)."""
    if value is not None and value != value:
        raise click.BadParameter(f"{value} is not a number of seconds")
    return value


def _print_result(result: GenerateResult, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(result.to_wire(), indent=2))
        return
    click.echo(result.url)
    if result.success:
        click.echo(f"{result.provider} · {result.elapsed_ms} ms · ${result.cost_usd:.4f}", err=True)
    if result.attribution is not None:
        click.echo(result.attribution.text, err=True)


@main.command()
def providers() -> None:
    """List providers: enabled, configured, racing, timeout, retries and breaker state."""
    with open_imagegen(no_log_shows="showing the built-in config, every breaker closed") as gen:
        rows = gen.provider_status()
        refused = gen.no_provider_races()
    click.echo(
        f"{'name':<12}{'type':<11}{'enabled':<9}{'configured':<12}{'racing':<8}{'prio':<6}"
        f"{'timeout':<9}{'retries':<9}breaker"
    )
    for r in rows:
        click.echo(
            f"{r['name']:<12}{r['type']:<11}{_yn(r['enabled']):<9}{_yn(r['configured']):<12}{_yn(r['racing']):<8}"
            f"{r['priority']:<6}{r['timeoutMs']:<9}{r['retries']:<9}{r['breaker']}"
        )
    # On stderr, so that scripts reading the table see only rows.
    for r in rows:
        why = r["notRacing"]
        if r["enabled"] and why and not why.startswith("its key is not set"):  # a missing key shows as "no"
            click.echo(f"note: {r['name']} does not race: {why}", err=True)
        if r["fallback"]:
            click.echo(
                f"note: {r['name']} races as the last resort, though not enabled: no enabled provider is "
                "configured (set a provider's key, e.g. FAL_KEY; production refuses this unless "
                "IMAGEGEN_ALLOW_OFFLINE_ONLY=1)",
                err=True,
            )
        if r["racing"] and not r["hedgeable"] and gen.config.race.mode == "hedged":
            click.echo(
                f"note: {r['name']} never starts as a hedge (costPerImage {r['costPerImage']:g} is over "
                f"race.maxExtraCostPerRequest {gen.config.race.max_extra_cost_per_request:g}): only when it comes "
                "first or the providers before it have failed",
                err=True,
            )
    if refused:  # QA: in production with no key every row said "racing no", and nothing said why
        click.echo(f"note: no provider races, and generate and serve refuse to run: {refused}", err=True)


def _echo_reset_all(summary: dict[ResetKind, list[str]]) -> None:
    """Say what ``breakers reset --all`` did, before the table: which breakers it reset, which were closed and
    only had their counted calls cleared, which were clean already."""
    from .breaker import ResetKind

    for kind, label in (
        (ResetKind.RESET, "reset"),
        (ResetKind.CLEARED, "closed, counted calls cleared"),
        (ResetKind.CLEAN, "already clean"),
    ):
        click.echo(f"{label}: {', '.join(summary[kind]) or 'none'}")


def _provider_named(name: str, names: list[str]) -> str:
    """The listed provider ``name`` designates (as the API matches it), or a one-line refusal."""
    from .validation import entry_named

    found = entry_named(name, names)
    if found is None:
        fail(f"unknown provider {clip(name, 60)!r}; known: {', '.join(names)}")  # clipped as the API does
    return found


def _admin_breaker(gen: ImageGen, action: str, provider: str) -> None:
    """``reset`` or ``force-open`` one breaker: the calls ``POST /admin/circuit-breaker`` makes, with the
    CLI's reason in the transition log."""
    if action == "reset":
        gen.log_call_sync(lambda: gen.breakers.reset(provider, reason="reset from the CLI"))
    else:  # denies every call until reset, in every process (the state lives in the log DB)
        gen.log_call_sync(lambda: gen.breakers.force_open(provider, reason="forced open from the CLI"))


def _yn(flag: bool) -> str:
    return "yes" if flag else "no"


@main.command()
@click.argument("action", required=False, type=click.Choice(["reset", "force-open"]))
@click.argument("name", required=False)
@click.option("--all", "reset_all", is_flag=True, help="With `reset`: reset every breaker.")
def breakers(action: str | None, name: str | None, reset_all: bool) -> None:
    """Show circuit breakers, or `reset NAME` / `reset --all` / `force-open NAME`."""
    if action is None and (reset_all or name):
        fail("to reset, say so: `imagegen breakers reset NAME` or `imagegen breakers reset --all`")
    if reset_all and name:
        fail("give a provider NAME or --all, not both")
    if action == "force-open" and (reset_all or not name):
        fail("breakers force-open needs one provider NAME (--all is for reset)")
    # Only showing them creates no log (an empty log's breakers are all closed, its providers the built-in ones).
    no_log_shows = "showing every breaker closed, for the built-in config's providers" if action is None else None
    with open_imagegen(no_log_shows=no_log_shows) as gen:
        # Also breakers of providers no longer in the config: they are listed, so they can be reset.
        names = sorted(set(gen.config.providers) | set(gen.breakers.snapshot()))
        if action == "reset" and reset_all:
            from .breaker import reset_summary

            outcomes = gen.log_call_sync(lambda: gen.breakers.reset_all(reason="reset from the CLI"))
            _echo_reset_all(reset_summary(outcomes, names))
        elif action is not None:
            if not name:
                fail("breakers reset needs a provider NAME or --all")
            _admin_breaker(gen, action, _provider_named(name, names))
        for provider in names:
            rec = gen.breakers.state(provider)
            until = _break_text(gen.breakers.open_break(rec))
            gone = "" if provider in gen.config.providers else " (not in the config)"
            # Redacted and on one line, as the admin API and the console show it: whoever stored the reason (an
            # embedding app's force_open, another process of a shared log) may have put a key or ESC codes in it.
            shown = one_line(redact(rec.last_reason, gen.secret_values())) if rec.last_reason else ""
            reason = f" — {shown}" if shown else ""
            click.echo(f"{provider:<12}{rec.state}{until}{gone}{reason}")


def _break_text(view: BreakView | None) -> str:
    """An open breaker's break as ``imagegen breakers`` says it: until when it denies calls, or that it is over
    and the next call probes. QA: "open until 09:12:04" read at 10:30, its break long over; and after a clock
    step back, "open until" an hour ahead while admission already let probes through."""
    if view is None:
        return ""
    if view.until is None:
        return f" ({view.reason}; the next call probes)" if view.over else ""
    at = time.strftime("%H:%M:%S", time.localtime(view.until))
    return f" (its break ended at {at}: the next call probes)" if view.over else f" until {at}"


@main.command()
@click.argument("action", required=False, default="show", type=click.Choice(["show", "set", "history", "rollback"]))
@click.argument("target", metavar="[FILE|VERSION]", required=False)
@click.option(
    "--limit", type=click.IntRange(1, 1000), default=20, show_default=True, help="With `history`: versions listed."
)
def config(action: str, target: str | None, limit: int) -> None:
    """Show the runtime config (JSON), or `set FILE` to validate and store a new version; `history` lists the
    stored versions, `rollback VERSION` stores an old one again as the newest.

    `set` replaces the config in force (a partial document merges over the defaults, not over the config in
    force) and names the custom providers and styles it removes; there is no merge option here: to change one
    part, use the admin API's PATCH /admin/config."""
    if action in ("show", "history") and target is not None:
        what = "FILE" if action == "show" else "argument"
        hint = "to store one: imagegen config set FILE"
        if action == "history" and str(target).isdigit():  # QA: `config history 5` meant a count
            hint = f"to list {target} versions: imagegen config history --limit {target}"
        fail(f"config {action} takes no {what} (got {target!r}); {hint}")
    if action == "set" and target is None:
        fail("config set needs a FILE (a JSON document; partial documents merge over the defaults)")
    if action == "rollback" and target is None:
        fail("config rollback needs a VERSION (imagegen config history lists them)")
    if action == "rollback" and not str(target).isdigit():
        fail(f"config rollback: VERSION must be a version number (imagegen config history lists them), got {target!r}")
    if action == "history" and (missing := missing_log_line()) is not None:  # nothing stored, and nothing created
        click.echo(f"note: {missing}; {_NO_VERSION_STORED}", err=True)
        return
    with open_imagegen(no_log_shows="showing the built-in config" if action == "show" else None) as gen:
        if action == "set":
            _config_set(gen, Path(str(target)))
        elif action == "rollback":
            _config_rollback(gen, int(str(target)))
        elif action == "history":
            _config_history(gen, limit)
        else:
            click.echo(json.dumps(gen.reload_config().to_document(), indent=2))


#: Why ``config set`` dropped entries, and what to do instead: ``imagegen config`` has no merge option.
_SET_REPLACES = (
    "config set replaces the config in force over the defaults; imagegen config has no merge option:"
    " to change one part, use the admin API's PATCH /admin/config"
)


def _config_set(gen: ImageGen, file: Path) -> None:
    from .config import load_document_file, unwrap_edited

    # A saved GET /admin/config answer is stored only if its version is still the newest.
    document, based_on = unwrap_edited(load_document_file(file))
    before = _newest_version(gen)
    in_force = gen.config.to_document()
    stored = gen.set_config(document, source="cli", based_on=based_on)
    _say_stored(gen, before)
    _say_removed(in_force, stored.to_document())


def _say_removed(in_force: dict[str, Any], stored: dict[str, Any]) -> None:
    """One line on stderr per top-level section that lost entries (QA: a partial document such as
    ``{"race": {"mode": "parallel"}}`` is documented to replace the config over the defaults, and silently
    dropped the custom providers and styles in force). The semantics stay; the operator sees the loss."""
    from .config import removed_entries

    for section, names in removed_entries(in_force, stored).items():
        click.echo(f"removed {section}: {', '.join(names)} ({_SET_REPLACES})", err=True)


def _config_rollback(gen: ImageGen, version: int) -> None:
    before = _newest_version(gen)
    gen.rollback_config(version, source="cli")
    _say_stored(gen, before, f" (the document of version {version})")


def _newest_version(gen: ImageGen) -> int | None:
    """The newest stored version, read now: unchanged after a set, nothing was stored."""
    gen.log_call_sync(gen.reload_config)
    return gen.config_version


def _say_stored(gen: ImageGen, before: int | None, what: str = "") -> None:
    """One line on stderr: the version stored, or that the document was the one in force (nothing stored)."""
    if gen.config_version == before:
        click.echo(f"config unchanged, version {before} kept", err=True)
    else:
        click.echo(f"config version {gen.config_version}{what} stored and in force", err=True)


#: What ``config history`` says when no version is stored.
_NO_VERSION_STORED = "no config version stored: the built-in defaults are in force"


def _config_history(gen: ImageGen, limit: int) -> None:
    """The stored versions, newest first: number, time (UTC), source, what changed; the one in force marked."""
    versions = gen.log_call_sync(lambda: gen.config_history(limit))
    if not versions:
        click.echo(_NO_VERSION_STORED, err=True)
        return
    click.echo(f"{'version':>7}  {'stored at (UTC)':<19}  {'source':<24}  changes")
    for v in versions:
        stored = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(v.stored_at))
        notes = "  [in force]" if v.in_force else ""
        if v.error:
            notes += f"  [invalid now: {v.error}]"
        click.echo(f"{v.version:>7}  {stored:<19}  {v.source:<24}  {v.summary()}{notes}")


def _register_subcommands() -> None:
    # Defined in their own modules (each imports this one for `_imagegen`), registered once cli is complete.
    from .cli_console import console
    from .cli_db import db
    from .cli_drill import drill
    from .cli_serve import alerts, serve
    from .cli_stats import stats
    from .cli_storage import storage

    for command in (serve, alerts, stats, storage, console, drill, db):
        main.add_command(command)


_register_subcommands()


if __name__ == "__main__":  # pragma: no cover
    main()
