"""Unsplash: a stock photo matching the keyword (or the prompt), served as a hotlink.

Wire format: providers.md §3. Unsplash's guidelines require hotlinking ``images.unsplash.com`` and
crediting the photographer with UTM-tagged links (§3.6), so the result is the resized imgix URL plus an
:class:`~imagegen_core.models.Attribution`, never a copy; ``download_location`` is pinged through
:meth:`UnsplashProvider.confirm_use` once the photo is actually used.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Mapping
from typing import Any, ClassVar
from urllib.parse import quote, urlencode, urlsplit

from ..errors import FailureClass, ProviderError, one_line
from ..models import Attribution
from .base import (
    ProviderBase,
    ProviderContext,
    ProviderJob,
    ProviderOutput,
    check_known_options,
    expect_mapping,
    json_object,
    missing_key,
    origin,
    send,
)

#: Longer queries rarely match anything; prompts are cut to this many characters at a word boundary.
MAX_QUERY_CHARS = 100
_PING_TIMEOUT_S = 5.0
#: Where credit links may lead (providers.md §3.6: the photographer's Unsplash profile and Unsplash itself).
UNSPLASH_WEB = "https://unsplash.com"
#: The path of a link we publish as it came: plain segments, nothing that could end a Markdown or HTML link.
_LINK_PATH = re.compile(r"(/[A-Za-z0-9._~@%-]+)*/?")


def search_query(text: str) -> str:
    """``text`` trimmed to at most :data:`MAX_QUERY_CHARS`, without cutting a word in half."""
    text = " ".join(text.split())
    if len(text) <= MAX_QUERY_CHARS:
        return text
    cut = text[: MAX_QUERY_CHARS + 1]
    return (cut.rsplit(" ", 1)[0] if " " in cut else cut[:MAX_QUERY_CHARS]).strip()


def orientation(width: int, height: int) -> str:
    """Unsplash's ``orientation`` filter for a target size (ratios near 1 count as squarish)."""
    ratio = width / height
    if ratio > 1.2:
        return "landscape"
    if ratio < 0.83:
        return "portrait"
    return "squarish"


def _with_params(url: str, params: Mapping[str, str | int]) -> str:
    # urls.raw and profile links may already carry a query (ixid, ixlib): extend it, don't replace it.
    return f"{url}{'&' if '?' in url else '?'}{urlencode(params)}"


class UnsplashProvider(ProviderBase):
    """Stock photos from Unsplash search; the first (most relevant) hit wins, so results are stable."""

    kind: ClassVar[str] = "unsplash"
    requires_key: ClassVar[bool] = True
    needs_credit: ClassVar[bool] = True
    output_hosts: ClassVar[tuple[str, ...]] = ("images.unsplash.com",)
    default_base_url: ClassVar[str] = "https://api.unsplash.com"

    @classmethod
    def check_settings(cls, model: str | None, options: Mapping[str, Any]) -> None:
        """No options: a search has nothing to set (a name there would be ignored at every call)."""
        check_known_options(options, cls.kind, ())

    async def generate(self, job: ProviderJob, ctx: ProviderContext) -> ProviderOutput:
        """Search for a photo and return its resized hotlink with attribution."""
        query = search_query(job.keyword or job.prompt)
        if not query:
            raise ProviderError(f"{self.name}: empty search query", failure_class=FailureClass.INVALID_REQUEST)
        params = {
            "query": query,
            "per_page": 10,
            "orientation": orientation(job.width, job.height),
            "content_filter": "high",
            "order_by": "relevant",
        }
        response = await send(
            self.name, ctx.client, "GET", f"{self.base_url}/search/photos", headers=self._headers(), params=params
        )
        body = json_object(self.name, response, "search answer")
        results = body.get("results")
        if not isinstance(results, list):
            raise ProviderError(f"{self.name}: search answer has no results list", failure_class=FailureClass.TRANSIENT)
        if not results:
            # Nobody's fault (no breaker hit) and retrying the same query cannot help.
            raise ProviderError(f"{self.name}: no photo matches {query!r}", failure_class=FailureClass.INVALID_REQUEST)
        photo = expect_mapping(self.name, results[0], "photo")
        return self._output(photo, job)

    async def confirm_use(self, output: ProviderOutput, ctx: ProviderContext) -> None:
        """Ping ``download_location`` (required by Unsplash when a photo is used). A failed ping is
        logged nowhere and never fails the request; cancellation still propagates."""
        url = output.use_ping_url
        # The ping carries our key: only ever send it to the API host.
        if not url or origin(url) != origin(self.base_url):
            return
        with contextlib.suppress(ProviderError):
            await send(
                self.name,
                ctx.client,
                "GET",
                url,
                headers=self._headers(),
                timeout=_PING_TIMEOUT_S,
                total_s=_PING_TIMEOUT_S,
            )

    def _headers(self) -> dict[str, str]:
        if not self._api_key:
            raise missing_key(self.name, "UNSPLASH_ACCESS_KEY", what="access key")
        return {"Authorization": f"Client-ID {self._api_key}", "Accept-Version": "v1"}

    def _output(self, photo: Mapping[str, Any], job: ProviderJob) -> ProviderOutput:
        urls, links, user = (_mapping(photo.get(key)) for key in ("urls", "links", "user"))
        raw = urls.get("raw")
        if not isinstance(raw, str) or not raw:
            raise ProviderError(f"{self.name}: photo has no urls.raw", failure_class=FailureClass.TRANSIENT)
        hotlink = _with_params(
            raw, {"w": job.width, "h": job.height, "fit": "crop", "crop": "entropy", "fm": "webp", "q": 80}
        )
        utm = {"utm_source": self.app_name, "utm_medium": "referral"}
        username = str(user.get("username") or "")
        photo_id = photo.get("id")
        # The credit is published next to the image (rendered as links): an answer's links are used only when
        # they lead to unsplash.com, else the documented ones are rebuilt from the username and photo id.
        profile = _unsplash_link(_mapping(user.get("links")).get("html")) or _unsplash_page("@", username)
        photo_page = _unsplash_link(links.get("html")) or _unsplash_page("photos/", photo_id)
        attribution = Attribution(
            photographer_name=one_line(str(user.get("name") or username or "Unknown photographer")),
            photographer_url=_with_params(profile or f"{UNSPLASH_WEB}/", utm),
            source_name="Unsplash",
            source_url=_with_params(f"{UNSPLASH_WEB}/", utm),
            photo_url=_with_params(photo_page, utm) if photo_page else None,
        )
        ping = links.get("download_location")
        return ProviderOutput(
            url=hotlink,
            hotlink=True,
            content_type="image/webp",
            attribution=attribution,
            use_ping_url=ping if isinstance(ping, str) and ping else None,
            provider_ref=str(photo_id) if photo_id else None,
        )


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _unsplash_link(value: Any) -> str | None:
    """``value`` if it is a plain https link on unsplash.com (no query, fragment, userinfo or port), else None."""
    if not isinstance(value, str):
        return None
    try:
        parts = urlsplit(value)
    except ValueError:
        return None
    plain = parts.scheme == "https" and parts.netloc == "unsplash.com" and not parts.query and not parts.fragment
    return value if plain and _LINK_PATH.fullmatch(parts.path) else None


def _unsplash_page(prefix: str, name: Any) -> str | None:
    """``https://unsplash.com/<prefix><name>`` with ``name`` as one encoded path segment; None without a name."""
    if not isinstance(name, str) or not name:
        return None
    return f"{UNSPLASH_WEB}/{prefix}{quote(name, safe='')}"
