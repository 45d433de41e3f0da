"""JSON text that people and programs hand to imagegen (a config file, the console's config editor, an HTTP
request's body), parsed one way everywhere: the same refusals, each a one-line reason the caller prefixes with
what the text was ("config file x.json: …", "body: …").

Python's parser is lenient where a document should not be: it takes ``NaN`` and ``Infinity`` (not JSON), keeps
the last of a key given twice without a word, and fails in its own words (a RecursionError, a message naming
``sys.set_int_max_str_digits``) on what is merely too deep or too long.
"""

from __future__ import annotations

import json
from typing import Any

from .errors import MAX_JSON_DEPTH, clip, nested_over


class JsonTextError(ValueError):
    """Text that is not a JSON document imagegen takes; the message is the reason, in one line."""


class DuplicateKeyError(JsonTextError):
    """An object that gives one key twice (refused in config documents: see :func:`unique_keys`)."""


def unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``object_pairs_hook`` for config documents: the object as a dict, DuplicateKeyError for a key given twice.
    JSON parsers keep the last silently (QA: ``{"fal": {"enabled": false}, "fal": {...}}`` dropped the first
    without a word, the provider racing that the operator had turned off)."""
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise DuplicateKeyError(
                f"the key {clip(key, 60)!r} is given twice in one object (JSON keeps only the last one): remove one"
            )
        result[key] = value
    return result


def parse_json_text(text: str | bytes, *, refuse_duplicate_keys: bool = False) -> Any:
    """The JSON document in ``text`` (bytes are decoded as UTF-8). Raises JsonTextError for text that is not
    JSON (its line and column), not UTF-8, ``NaN``/``Infinity``, objects and arrays nested more than
    :data:`~.errors.MAX_JSON_DEPTH` levels, an integer of thousands of digits and, with
    ``refuse_duplicate_keys`` (config documents), a key given twice in one object."""
    hook = unique_keys if refuse_duplicate_keys else None
    try:
        document = json.loads(text, parse_constant=_refuse_constant, object_pairs_hook=hook)
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


def _refuse_constant(name: str) -> Any:
    raise JsonTextError(f"{name} is not a JSON number")
