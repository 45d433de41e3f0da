"""JSON text that people and programs hand to imagegen (a config file, the console's config editor, an HTTP
request's body), parsed one way everywhere: the same refusals, each a one-line reason the caller prefixes with
what the text was ("config file x.json: …", "body: …").

Python's parser is lenient where a document should not be: it takes ``NaN`` and ``Infinity`` (not JSON), keeps
the last of a key given twice without a word, and fails in its own words (a RecursionError, a message naming
``sys.set_int_max_str_digits``) on what is merely too deep or too long.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from .errors import MAX_JSON_DEPTH, clip, nested_over


class JsonTextError(ValueError):
    """Text that is not a JSON document imagegen takes; the message is the reason, in one line."""


class DuplicateKeyError(JsonTextError):
    """An object that gives one key more than once (refused in every document: see :func:`unique_keys`)."""


def unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``object_pairs_hook``: the object as a dict, DuplicateKeyError naming each key given more than once.
    JSON parsers keep the last silently (QA: ``{"fal": {"enabled": false}, "fal": {...}}`` dropped the first
    without a word, the provider racing that the operator had turned off; a CMS sending two ``prompt`` keys got
    an image of the second). Comparing sizes keeps the usual case, no key twice, as cheap as a plain dict."""
    result = dict(pairs)
    if len(result) < len(pairs):
        raise DuplicateKeyError(_repeated_keys_reason(pairs))
    return result


#: How many repeated keys a refusal names (the rest are counted): the reason stays one short line.
_NAMED_KEYS_MAX = 5


def _repeated_keys_reason(pairs: list[tuple[str, Any]]) -> str:
    counts = Counter(key for key, _ in pairs)
    repeated = [key for key, count in counts.items() if count > 1]
    if len(repeated) == 1:
        key = repeated[0]
        times = "twice" if counts[key] == 2 else f"{counts[key]} times"
        return f"the key {clip(key, 60)!r} is given {times} in one object (JSON keeps only the last one): remove one"
    names = ", ".join(repr(clip(key, 60)) for key in repeated[:_NAMED_KEYS_MAX])
    if len(repeated) > _NAMED_KEYS_MAX:
        names += f" and {len(repeated) - _NAMED_KEYS_MAX} more"
    return (
        f"the keys {names} are each given more than once in one object (JSON keeps only the last of each): "
        "keep one of each"
    )


def parse_json_text(text: str | bytes) -> Any:
    """The JSON document in ``text`` (bytes are decoded as ``json.loads`` does: UTF-8, or the UTF-16/32 they
    are written in). Raises JsonTextError for text that is not JSON (its line and column), not UTF-8,
    ``NaN``/``Infinity``, a key given more than once in one object, objects and arrays nested more than
    :data:`~.errors.MAX_JSON_DEPTH` levels, and an integer of thousands of digits."""
    try:
        document = _DECODER.decode(_as_text(text))
    except json.JSONDecodeError as exc:
        raise JsonTextError(f"not valid JSON: line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    except UnicodeDecodeError:
        raise JsonTextError("not valid UTF-8") from None
    except RecursionError:  # "[[[[…" thousands deep: the decoder's own recursion gives up
        raise JsonTextError(TOO_DEEP) from None
    except JsonTextError:
        raise
    except ValueError:  # an integer past Python's 4300-digit conversion limit (its message names sys functions)
        raise JsonTextError("a number in the document has too many digits") from None
    if nested_over(document):  # past this, what reads the document (a deep merge, pydantic) runs out of stack
        raise JsonTextError(TOO_DEEP)
    return document


#: The reason given for a document nested too deeply, by the parser or by the check after it alike.
TOO_DEEP = f"the JSON document is nested too deeply (over {MAX_JSON_DEPTH} levels)"


def _as_text(text: str | bytes) -> str:
    """``text`` as ``json.loads`` reads it (its checks, its errors): :data:`_DECODER` takes only ``str``."""
    if isinstance(text, str):
        if text.startswith("\ufeff"):
            raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", text, 0)
        return text
    return text.decode(json.detect_encoding(text), "surrogatepass")


def _refuse_constant(name: str) -> Any:
    raise JsonTextError(f"{name} is not a JSON number")


#: One decoder for every parse (the hot path: every generate body): ``json.loads`` given any option builds a new
#: decoder and scanner on each call, about 1.5 µs, three times what the hook refusing repeated keys costs (about
#: 0.5 µs of a typical generate body's 3 µs decode). So the hook is always on, and no cheaper pre-check is needed.
_DECODER = json.JSONDecoder(parse_constant=_refuse_constant, object_pairs_hook=unique_keys)
