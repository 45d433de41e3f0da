"""From runtime config to a race plan: which provider instances exist, which may race, in what order,
and the breaker gate the race consults."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .base_urls import BASE_URL_VARIABLE, base_url_key, variable_name
from .chaos import ChaosWrappers
from .config import RuntimeConfig
from .errors import ConfigError, FieldProblem, clip, redact
from .hedging import HedgeSettings
from .profiles import offline_only_problem
from .provider_keys import KEY_VARIABLE, key_variable
from .providers import load_provider_classes, provider_names
from .providers.base import Provider
from .race import Entrant, RacePlan
from .settings import PROVIDER_KEY_FIELDS, Settings, encoded_forms, known_variables
from .unknown_settings import UnknownVariables

_log = logging.getLogger("imagegen")

#: What a provider entry's name may be: it names the entry's ``IMAGEGEN_<NAME>_BASE_URL`` (matched without
#: regard to case, as the request's ``provider`` field is).
ENTRY_NAME = re.compile(r"[A-Za-z0-9_]{1,64}")

#: The implementation that joins a race when no networked provider can.
OFFLINE_TYPE = "offline"


def given_provider_keys(providers: Mapping[str, object]) -> list[str]:
    """The keys of provider instances given in code (``ImageGen(providers=...)``; ``api_key``, as
    :class:`~.providers.base.ProviderBase` holds it), with their encoded forms (``encoded_forms``): secrets the
    settings do not hold, to be redacted like theirs (QA: a plugin built with its key in code had it in results,
    the log and breaker reasons whenever its API echoed it)."""
    keys = []
    for instance in providers.values():
        try:
            key = getattr(instance, "api_key", None)
        except Exception:  # a property of someone else's class: no key to hide, then
            continue
        if isinstance(key, str) and key:
            keys += [key, *encoded_forms(key)]
    return keys


class ProviderSet:
    """Provider instances for the entries of the runtime config, built lazily and rebuilt only when an
    entry's type changes. ``overrides`` maps entry names to ready instances (tests, embedding)."""

    def __init__(self, settings: Settings, *, overrides: Mapping[str, Provider]) -> None:
        for name, instance in overrides.items():
            if not isinstance(instance, Provider):  # QA: object() was taken, and then every generate raised
                raise ConfigError(
                    f"providers[{name!r}] ({type(instance).__name__}) is not a Provider (it needs name, kind, "
                    "configured, download_policy, generate and confirm_use; see imagegen_core.Provider)",
                    field=f"providers.{name}",
                )
        self._settings = settings
        self._overrides = dict(overrides)
        self._classes: dict[str, Any] | None = None
        #: Why a registered type failed to load, and why an entry (name, type) could not be built: a third
        #: party's plugin that does not import, or whose constructor refuses imagegen's arguments.
        self._unloadable: dict[str, str] = {}
        self._unbuildable: dict[tuple[str, str], str] = {}
        self._instances: dict[tuple[str, str], Provider] = {}
        self._chaos = ChaosWrappers()
        self._unknown_variables = UnknownVariables()
        # The entrants of the last config asked for, and the production refusal of offline-only (None): a pure
        # function of it, and the config object only changes when a new version is loaded, so most requests reuse
        # them.
        self._last_entrants: tuple[RuntimeConfig, tuple[Entrant, ...], str | None] | None = None
        #: Instances given without a config entry, said once each (see :meth:`_build_entrants`).
        self._said_without_entry: set[str] = set()

    def classes(self) -> dict[str, Any]:
        """Registered provider classes by type (loaded once)."""
        if self._classes is None:
            self._classes, self._unloadable = load_provider_classes()
        return self._classes

    def known_types(self) -> set[str]:
        """Types a config entry may name: registered ones (those that failed to load included: a stored config
        naming one stays valid, and that entry says why it does not race) plus the override entries."""
        return set(self.classes()) | set(self._unloadable) | set(self._overrides)

    def check(self, config: RuntimeConfig) -> None:
        """Refuse (:class:`ConfigError` naming the field) an entry's ``model`` or ``options`` that its
        implementation can never use, disabled entries included: enabling one later must not break every
        call. Implementations without ``check_settings`` (a third party's, say) accept anything, and so do
        entries served by an instance given in code (``overrides``): that instance is the embedder's choice,
        made for options written for the entry's configured type. Entry names must be able to name their
        ``IMAGEGEN_<NAME>_BASE_URL`` (QA: ``""`` and ``"a/b"`` were stored; the answers then named provider ``""``).
        A check raising anything else than :class:`FieldProblem` (a plugin's ValueError) refuses the same way,
        its message clipped and without secrets (QA: it made PATCH /admin/config a 500 and ``config set`` a
        traceback)."""
        for name, entry in config.providers.items():
            if not ENTRY_NAME.fullmatch(name):
                raise ConfigError(
                    f"invalid config: providers.{name}: an entry name is 1 to 64 letters, digits or _ (it names "
                    "IMAGEGEN_<NAME>_BASE_URL)",
                    field=f"providers.{name}",
                )
            if name in self._overrides:
                continue
            check_settings = getattr(self.classes().get(config.provider_type(name)), "check_settings", None)
            if check_settings is None:
                continue
            try:
                check_settings(entry.model, entry.options)
            except FieldProblem as exc:
                field = f"providers.{name}.{exc.field}"
                raise ConfigError(f"invalid config: {field}: {exc.message}", field=field) from None
            except Exception as exc:  # a third party's check raising ValueError, KeyError, …: still a refusal
                field = f"providers.{name}.{_faulty_part(check_settings, entry.model, entry.options)}"
                why = clip(redact(str(exc) or type(exc).__name__, self._settings.secret_values()), 300)
                raise ConfigError(f"invalid config: {field}: {why}", field=field) from None

    def needs_credit(self, name: str, config: RuntimeConfig) -> bool:
        """Whether the images of provider ``name`` (as a log row names it) are stock photos that must be
        published with their credit. A name the config no longer holds is read as a type: rows outlive config
        entries (one renamed since). Read from the class: nothing is built."""
        if name in self._overrides:
            return bool(getattr(self._overrides[name], "needs_credit", False))
        kind = config.provider_type(name) if name in config.providers else name
        return bool(getattr(self.classes().get(kind), "needs_credit", False))

    def get(self, name: str, config: RuntimeConfig) -> Provider | None:
        """The instance serving ``providers.<name>``, or None if its type is unknown."""
        if name in self._overrides:
            return self._overrides[name]
        kind = config.provider_type(name)
        instance = self._instances.get((name, kind))
        if instance is None:
            cls = self.classes().get(kind)
            if cls is None or (name, kind) in self._unbuildable:
                return None
            try:
                instance = cls(
                    name=name,
                    api_key=self._settings.provider_key(kind, variable=self._declared_key_variable(kind)),
                    base_url=(
                        self._settings.base_url(name)
                        or self._settings.base_url(name.lower())  # IMAGEGEN_PHOTODESK_BASE_URL for "PhotoDesk"
                        or self._settings.base_url(kind)
                    ),
                    app_name=self._settings.app_name,
                )
            except Exception as exc:  # a third party's constructor: that entry cannot race, the others can (QA)
                self._unusable(name, kind, f"could not be built: {type(exc).__name__}: {exc}")
                return None
            problem = _provider_problem(instance)
            if problem:  # QA: a class without `configured`, or whose `configured` raises, failed every request
                self._unusable(name, kind, problem)
                return None
            self._instances[(name, kind)] = instance
        return instance

    def _unusable(self, name: str, kind: str, problem: str) -> None:
        """Note why entry ``name`` of type ``kind`` cannot race (said by :meth:`why_not_racing`), warn once."""
        why = f"its provider type {kind!r} {problem}"
        self._unbuildable[(name, kind)] = why
        _log.warning("providers.%s: %s", name, why)

    def why_not_racing(self, name: str, config: RuntimeConfig) -> str:
        """Why ``providers.<name>`` is not among the entrants of ``config``, in words for the caller."""
        pc = config.providers[name]
        provider = self.get(name, config)
        if provider is None:
            kind = config.provider_type(name)
            why = self._unbuildable.get((name, kind)) or self._unloadable.get(kind)
            return why or f"its type {kind!r} is not installed"
        if not pc.enabled:
            disabled = f"it is disabled (providers.{name}.enabled)"
            if config.provider_type(name) == OFFLINE_TYPE:
                return f"{disabled}, so it races only when no enabled provider is configured"
            return disabled
        if not provider.configured:
            kind = config.provider_type(name)
            field = PROVIDER_KEY_FIELDS.get(kind)
            if field:
                return f"its key is not set ({field.upper()})"
            if name in self._overrides or not getattr(provider, "requires_key", False):
                return "it is not configured"
            return f"its key is not set ({key_variable(kind, self._declared_key_variable(kind))})"
        return "it is not among the racing providers"

    def _declared_key_variable(self, kind: str) -> str | None:
        """A plugin class's ``key_variable`` (None: the default name); refused when it does not have the form
        the settings read (``IMAGEGEN_<NAME>_API_KEY``): its key would be neither found nor redacted."""
        declared = getattr(self.classes().get(kind), "key_variable", None)
        if declared is not None and not (isinstance(declared, str) and KEY_VARIABLE.fullmatch(declared)):
            raise ValueError(f"its key_variable must be IMAGEGEN_<NAME>_API_KEY, got {declared!r}")
        return declared

    def entrants(self, config: RuntimeConfig) -> list[Entrant]:
        """Enabled, configured providers by priority. When there is none (no provider has its key), the
        offline entries race instead, enabled or not, so a machine with no keys still does real work."""
        return list(self._planned(config)[0])

    def offline_refusal(self, config: RuntimeConfig) -> str | None:
        """Why no provider races with ``config`` in production when only the offline one could (else None)."""
        return self._planned(config)[1]

    def _planned(self, config: RuntimeConfig) -> tuple[tuple[Entrant, ...], str | None]:
        """:meth:`_build_entrants` of ``config``, kept for the next call with the same config."""
        last = self._last_entrants
        if last is None or last[0] is not config:
            entrants, refusal = self._build_entrants(config)
            last = self._last_entrants = (config, tuple(entrants), refusal)
        return last[1], last[2]

    def _build_entrants(self, config: RuntimeConfig) -> tuple[list[Entrant], str | None]:
        """The entrants of ``config``, and in production why none races when only the offline one could."""
        self._warn_unknown_variables(config)
        for name in self._overrides.keys() - config.providers.keys() - self._said_without_entry:
            # QA: given to from_settings(providers=...) without an entry, it was ignored without a word.
            self._said_without_entry.add(name)
            # The hint names no type: the instance is the entry's type (its own class's kind is not a registered
            # type, and was refused when filled in, QA).
            _log.warning(
                "providers[%r] given to ImageGen has no entry in the runtime config: it does not race until one is"
                " added, e.g. set_config({'providers': {%r: {'priority': 1}}}, merge=True)",
                name,
                name,
            )
        chosen: list[tuple[int, Entrant]] = []
        offline: list[tuple[int, Entrant]] = []
        for name, pc in config.providers.items():
            provider = self.get(name, config)
            if provider is None:
                continue
            # Chaos (drills) wraps the racing instance only: status pages keep showing the real provider.
            provider = self._chaos.wrap(name, provider, config.chaos)
            entrant = Entrant(
                name=name,
                provider=provider,
                timeout_s=pc.timeout / 1000,
                retries=pc.retries,
                hedge_delay_s=(pc.hedge_delay if pc.hedge_delay is not None else config.race.hedge_delay) / 1000,
                cost_per_image=pc.cost_per_image,
                model=pc.model,
                options=pc.options,
            )
            if pc.enabled and provider.configured:
                chosen.append((pc.priority, entrant))
            elif config.provider_type(name) == OFFLINE_TYPE:
                offline.append((pc.priority, entrant))
        if not chosen:  # e.g. a fresh machine without keys: draw locally rather than fail every request
            chosen = offline
        racing = [e for _, e in sorted(chosen, key=lambda pe: pe[0])]
        # In production a local drawing must not pass for an article image: `serve` refuses to start so, and a
        # config edited while it runs (every networked provider disabled) must not get there either (QA: a
        # PATCH made the API answer offline drawings with success: true). The default image answers instead.
        refusal = (
            offline_only_problem(self._settings, [config.provider_type(e.name) for e in racing]) if racing else None
        )
        return ([] if refusal else racing), refusal

    def _warn_unknown_variables(self, config: RuntimeConfig) -> None:
        """One warning line (once) for each ``IMAGEGEN_*`` variable that nothing reads: not a setting, an
        ``IMAGEGEN_<X>_BASE_URL`` whose ``X`` is neither a provider type nor an entry of ``config``, or an
        ``IMAGEGEN_<KIND>_API_KEY`` no installed plugin reads; each with the closest known name (QA: a mistyped
        ``IMAGEGEN_OPENIA_BASE_URL`` sent the real key to the real API, silently). Said when ``config`` is
        first planned: the providers and entries are known then, and nothing has been called yet."""
        settings, say = self._settings, self._unknown_variables.warn
        seen = settings.imagegen_variables
        kinds = {kind.lower() for kind in (*provider_names(), *self.known_types())}
        targets = {base_url_key(target) for target in (*kinds, *config.providers)}
        for target in settings.provider_base_urls:
            if target not in targets:
                name = variable_name(target)
                known = [variable_name(t) for t in sorted(targets)]
                say(name, seen.get(name, "settings"), "names no provider type nor config entry", known)
        plugin_keys = {}
        for kind in kinds - set(PROVIDER_KEY_FIELDS):
            if not getattr(self.classes().get(kind), "requires_key", kind in self._unloadable):
                continue  # keyless (offline, fake): IMAGEGEN_OFFLINE_API_KEY is read by nothing
            try:
                plugin_keys[key_variable(kind, self._declared_key_variable(kind))] = kind
            except ValueError:  # a malformed key_variable: that entry says so when it is built
                continue
        for name in settings.provider_api_keys:
            if name not in plugin_keys:
                known = [*plugin_keys, *(field.upper() for field in PROVIDER_KEY_FIELDS.values())]
                say(name, seen.get(name, "settings"), "is the key of no installed provider", known)
        settings_names = known_variables()
        # A suggestion may be any name that is read: a base URL or plugin key mistyped out of its own form
        # (QA: IMAGEGEN_FAL_BASEURL was told "did you mean IMAGEGEN_DATABASE_URL?", not IMAGEGEN_FAL_BASE_URL).
        readable = settings_names | {variable_name(target) for target in targets} | set(plugin_keys)
        for name, where in seen.items():
            if not (name in settings_names or KEY_VARIABLE.fullmatch(name) or BASE_URL_VARIABLE.fullmatch(name)):
                say(name, where, "is not a setting of imagegen", readable)

    def plan(
        self,
        config: RuntimeConfig,
        *,
        deadline_s: float,
        fastest_first: Callable[[Sequence[Entrant]], list[Entrant]] | None = None,
        preferred: str | None = None,
    ) -> RacePlan:
        """The race plan for one request whose overall deadline is ``deadline_s`` from now; the race
        itself gets that minus ``race.finalizeReserve`` (kept for storing the winner; an image delivered in time may
        still be normalised in its first half). Entrants come by
        priority, or re-ordered by ``fastest_first`` when ``race.order`` is ``fastest``; the request's
        ``preferred`` provider, if it races at all, goes first either way."""
        race = config.race
        reserve_s = min(race.finalize_reserve / 1000, deadline_s / 2)
        entrants = self.entrants(config)
        if race.order == "fastest" and fastest_first is not None:
            entrants = fastest_first(entrants)
        if preferred is not None:
            entrants.sort(key=lambda e: e.name != preferred)  # stable: the others keep their order
        return RacePlan(
            entrants=entrants,
            mode=race.mode,
            deadline_s=max(0.0, deadline_s - reserve_s),
            backoff_initial_s=race.backoff_initial / 1000,
            backoff_max_s=race.backoff_max / 1000,
            # Half the reserve: an image delivered in time may be normalised into it, the other half stays for
            # storing it (QA: a 2048x2048 image delivered at 900 ms of a 1 s race was thrown away, 1 s left).
            finish_extension_s=reserve_s / 2,
        )


def _faulty_part(check: Callable[[str | None, Mapping[str, Any]], None], model: str | None, options: Any) -> str:
    """Which of an entry's ``model`` and ``options`` a check that raised something other than
    :class:`FieldProblem` refused: ``model`` when it refuses that model with no options and accepts the options
    with the default model, else ``options``."""

    def refuses(model: str | None, options: Mapping[str, Any]) -> bool:
        try:
            check(model, options)
        except Exception:  # any refusal counts: the check is a third party's
            return True
        return False

    return "model" if model is not None and refuses(model, {}) and not refuses(None, options) else "options"


def hedge_settings(config: RuntimeConfig) -> HedgeSettings:
    """The hedging knobs of ``race.*`` in seconds."""
    race = config.race
    return HedgeSettings(
        adaptive=race.adaptive_hedge,
        quantile=race.hedge_quantile,
        min_samples=race.hedge_min_samples,
        window=race.hedge_window,
        min_delay_s=race.hedge_min_delay / 1000,
        budget_share=race.hedge_budget_share,
        budget_burst=race.hedge_budget_burst,
        budget_reserve=race.hedge_budget_reserve,
        max_extra_cost=race.max_extra_cost_per_request,
    )


def _provider_problem(instance: object) -> str | None:
    """Why a third party's freshly built provider cannot race, or None: not a :class:`Provider` (a member
    missing), or its ``configured`` raising or not a bool (read at every plan: raising there failed every
    request of every process on the log, the CLI's included)."""
    try:
        configured = getattr(instance, "configured", None)  # first: the Provider check reads it too
    except Exception as exc:
        return f"is broken: its `configured` raised {type(exc).__name__}: {clip(str(exc), 200)}"
    if not isinstance(instance, Provider):
        return (
            f"built a {type(instance).__name__}, which is not a Provider (it needs name, kind, configured,"
            " download_policy, generate and confirm_use; subclass imagegen_core.ProviderBase)"
        )
    if not isinstance(configured, bool):
        return f"is broken: its `configured` must be True or False, got {type(configured).__name__}"
    return None
