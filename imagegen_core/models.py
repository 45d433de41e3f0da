"""Request, result and attempt types. Python names are snake_case; the HTTP wire names are the
camelCase aliases the Cloudflare Worker used (``articleId``, ``elapsedMs``) — both are accepted on input."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, computed_field, field_validator, model_validator
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticCustomError

from .errors import FailureClass, InvalidRequestError, clip, non_unicode_at


class WireModel(BaseModel):
    """Base for types that cross the HTTP boundary: camelCase out, either case in."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, frozen=True)

    def to_wire(self) -> dict[str, Any]:
        """The JSON-ready dict with wire (camelCase) names."""
        return self.model_dump(mode="json", by_alias=True)


IMAGE_URL_KEYS = ("imageUrl", "image_url")


#: pydantic's own message for a text that is not an integer, for texts it would have read anyway.
_NOT_DIGITS = "Input should be a valid integer, unable to parse string as an integer"


def _empty(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


class GenerateRequest(WireModel):
    """What an editor or CMS asks for. Sizes left out come from the runtime config's defaults."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, frozen=True, extra="forbid")

    # Descriptions, not comments: they reach help(), model_fields and the HTTP API's OpenAPI schema.
    prompt: str = Field(description="What the picture shows (the style's template wraps it).")
    keyword: str | None = Field(default=None, description="Search term for stock photos (Unsplash).")
    article_id: str | None = Field(
        default=None,
        description='The article the image is for; a JSON integer is kept as its decimal text ("42").',
        json_schema_extra={"anyOf": [{"type": "string"}, {"type": "integer"}, {"type": "null"}]},
    )
    width: int | None = Field(default=None, description="Pixels; default the config's defaults.width.")
    height: int | None = Field(default=None, description="Pixels; default the config's defaults.height.")
    style: str | None = Field(default=None, description="A key of the config's styles (a prompt template).")
    provider: str | None = Field(
        default=None,
        description="The Worker's provider: this entry of providers starts first; the others still back it up.",
    )

    @model_validator(mode="before")
    @classmethod
    def _no_image_url(cls, data: Any) -> Any:
        # The Worker re-hosted a picture given as imageUrl; imagegen only makes new ones. Say so, rather than
        # "extra inputs are not permitted" (fetching arbitrary URLs for callers would also be an SSRF risk).
        # An empty one (null, "") asks for nothing: typed CMS clients send absent optional fields so, and the
        # Worker took them as absent.
        if not isinstance(data, Mapping):
            return data
        # Any mapping, as ``generate`` takes (QA: a MappingProxyType's empty imageUrl was refused as an extra
        # input, and a set one with pydantic's "extra inputs are not permitted" rather than this message).
        data = {key: value for key, value in data.items() if key not in IMAGE_URL_KEYS or not _empty(value)}
        if any(key in data for key in IMAGE_URL_KEYS):
            raise InvalidRequestError(
                "imageUrl", "is not supported: imagegen makes a new image from the prompt (send prompt instead)"
            )
        return data

    @field_validator("width", "height", mode="before")
    @classmethod
    def _not_a_boolean(cls, value: Any) -> Any:
        # pydantic would read true as 1 pixel; "800" and 800.0 stay accepted (CMSes send both).
        if isinstance(value, bool):
            raise PydanticCustomError("int_type", "Input should be a valid integer, got a boolean")
        # pydantic's parsing also reads "1_28" and " 128 " (QA): a size sent as text is ASCII digits only.
        if isinstance(value, str) and not (value.isascii() and value.isdigit()):
            raise PydanticCustomError(
                "int_parsing", "Input should be a valid integer, unable to parse string as an integer"
            )
        return value

    @field_validator("article_id", mode="before")
    @classmethod
    def _integer_id_as_text(cls, value: Any) -> Any:
        # CMSes often send their numeric ids as JSON numbers: 42 is kept as "42" (its decimal text). true (an id
        # is no flag), 4.2 and 4.0 (which text would 4.0 stand for?) are refused, saying what is accepted.
        if value is None or isinstance(value, str):
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            try:
                return str(value)
            except ValueError:  # past Python's 4300-digit conversion limit (reachable from Python code only)
                raise PydanticCustomError("string_too_long", "the integer has too many digits") from None
        raise PydanticCustomError("string_type", "Input should be a string or an integer")

    @field_validator("prompt", "keyword", "article_id", "style", "provider")
    @classmethod
    def _text_is_unicode(cls, value: str | None) -> str | None:
        # JSON's "\ud800" and the CLI's undecodable bytes arrive as lone surrogates: no provider, no log row
        # and no file name can hold them. Refused here, they cannot fail every provider (and trip its breaker).
        position = non_unicode_at(value) if value is not None else None
        if position is not None:
            raise PydanticCustomError(
                "unicode",
                "character {position} is not valid Unicode (a lone surrogate, or bytes that were not UTF-8)",
                {"position": position},
            )
        return value

    if not TYPE_CHECKING:  # type checkers keep pydantic's typed signature (prompt: str, width: int | None, ...)

        def __init__(self, **data: Any) -> None:
            """Keyword construction, as from Python code: a bad value raises InvalidRequestError naming it."""
            try:
                super().__init__(**data)
            except ValidationError as exc:
                raise _first_invalid(exc) from None

    @classmethod
    def parse(cls, data: Any) -> GenerateRequest:
        """Validate a wire document, or a GenerateRequest again; a bad one raises InvalidRequestError naming the
        first bad field. An instance may hold anything: pydantic's ``model_copy(update=...)`` and
        ``model_construct`` skip validation (QA: ``prompt=5`` raised AttributeError deep in the service)."""
        if isinstance(data, GenerateRequest):
            # Its values as they are (serialising warns of a wrong type), under the wire names errors use.
            data = {
                (cls.model_fields[name].alias or name) if name in cls.model_fields else name: value
                for name, value in data
            }
        if isinstance(data, Mapping):
            # pydantic raises a bare TypeError ("keywords must be strings") for one (QA: generate_sync({1: 2})).
            bad = [key for key in data if not isinstance(key, str)]
            if bad:
                raise InvalidRequestError("body", f"field names must be strings, got {clip(repr(bad[0]), 60)}")
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise _first_invalid(exc) from None


def _first_invalid(exc: ValidationError) -> InvalidRequestError:
    err = exc.errors()[0]
    # The name of a field that should not be there is the client's text, of any length (QA: 5000 characters
    # in the error and in the field): shortened as other outside texts are.
    return InvalidRequestError(clip(".".join(str(part) for part in err["loc"]), 60) or "body", err["msg"])


class AttemptOutcome(enum.StrEnum):
    """How one provider attempt ended."""

    RUNNING = "running"
    SUCCESS = "success"
    FAILED = "failed"
    CANCELLED = "cancelled"  # lost the race, or the deadline ended it
    SKIPPED = "skipped"  # the breaker refused the call; the provider was never contacted


class Attribution(WireModel):
    """Credit for a stock photo, with the UTM-tagged links Unsplash's guidelines require."""

    photographer_name: str
    photographer_url: str
    source_name: str
    source_url: str
    photo_url: str | None = None

    @property
    def text(self) -> str:
        """Plain-text credit line, e.g. ``Photo by Ada Lens on Unsplash``."""
        return f"Photo by {self.photographer_name} on {self.source_name}"

    def to_wire(self) -> dict[str, Any]:
        return {**super().to_wire(), "text": self.text}

    def to_log(self) -> str:
        """The JSON text the log keeps (``requests.attribution``): the wire names, without the derived text."""
        return self.model_dump_json(by_alias=True)

    @classmethod
    def from_log(cls, text: object) -> Attribution | None:
        """The credit a log row keeps, or None: for a row without one (not a stock photo, or logged before
        credits were), and for one that is not a credit (a row written by hand or by another tool), which
        must not break the History page that shows it."""
        if not isinstance(text, str) or not text:
            return None
        try:
            return cls.model_validate_json(text)
        except ValueError:  # pydantic's ValidationError is one
            return None


class AttemptSummary(WireModel):
    """One provider attempt as reported in a result (the full row lives in the log)."""

    provider: str
    attempt: int
    outcome: AttemptOutcome
    elapsed_ms: int
    hedged: bool = False
    failure_class: FailureClass | None = None
    http_status: int | None = None
    error: str | None = None


class GenerateResult(WireModel):
    """The answer. The first five fields are the Worker's contract; the rest are additions.

    ``store_failed``, ``image_kept``, ``image_keeping`` and ``default_inline`` are for this process only (the
    CLI's exit code, the console's words): no JSON form carries them, the HTTP API's included, so a result read
    back from JSON has them False. A program that keeps results as JSON keeps them itself if it needs them."""

    url: str = Field(description="The stored image's permanent URL (the default image's when success is false).")
    provider: str = Field(description='The provider that made the image; "default" when none did.')
    elapsed_ms: int = Field(description="From the request's arrival to the answer, in milliseconds.")
    success: bool = Field(description="Whether a provider made the image.")
    error: str | None = Field(default=None, description="Why no provider made it, in one sentence.")
    request_id: str = Field(description="The request's row in the log (and the HTTP API's X-Request-ID).")
    width: int = Field(description="The image's width in pixels.")
    height: int = Field(description="The image's height in pixels.")
    key: str | None = Field(default=None, description="The object key in the store (none for a hotlinked photo).")
    content_type: str = "image/webp"
    model: str | None = Field(default=None, description="The provider's model, when it names one.")
    cost_usd: float = Field(default=0.0, description="Estimated cost of every attempt, in US dollars.")
    attribution: Attribution | None = Field(default=None, description="Credit to publish with a stock photo.")
    attempts: list[AttemptSummary] = Field(default_factory=list, description="Each provider attempt, in start order.")
    notes: list[str] = Field(
        default_factory=list,
        description="What the caller should know about how the request was served, one sentence each, e.g. "
        "that the provider it asked for did not race and why.",
    )
    #: A provider made the image but the store refused it (it waits in the spool). ``error`` then names the
    #: store, its endpoint and the object key: for operators and embedders, not for the HTTP API's callers.
    store_failed: bool = Field(default=False, exclude=True)
    image_kept: bool = Field(
        default=False,
        exclude=True,
        description="With store_failed: whether the spool keeps the image for a later upload (else it is lost).",
    )
    image_keeping: bool = Field(
        default=False,
        exclude=True,
        description="With store_failed: keeping the image in the spool was still under way at the deadline.",
    )
    default_inline: bool = Field(
        default=False,
        exclude=True,
        description="The default image could not be stored: url is the image itself, a data: URI.",
    )

    @computed_field(  # type: ignore[prop-decorator]
        description='The Worker\'s field: the provider that made the image, or "emergency-fallback" for the default '
        "image (CMSes written for the Worker test it)."
    )
    @property
    def source(self) -> str:
        """The Worker's field: the provider that made the image, or ``"emergency-fallback"`` for the default image."""
        return self.provider if self.success else "emergency-fallback"

    @computed_field(  # type: ignore[prop-decorator]
        description="The Worker's field: whether this request's image was stored under key (in R2 or the local "
        "store); false for a hotlinked stock photo and for the default image."
    )
    @property
    def r2_stored(self) -> bool:
        """The Worker's field: whether this request's image was stored under :attr:`key` (false for a hotlinked
        stock photo and for the default image)."""
        return self.success and self.key is not None

    def to_wire(self) -> dict[str, Any]:
        data = super().to_wire()
        if self.attribution is not None:
            data["attribution"] = self.attribution.to_wire()
        return data
