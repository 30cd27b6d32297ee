"""Content-addressed on-disk cache of source requests and their responses.

Every network answer the concept builder uses is stored under the sha256 of its request
(service, endpoint, params; never credentials), so a rerun replays it without the network and an
interrupted build resumes where it stopped. Entries are written atomically.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from ...errors import GeoconceptError
from ...io.artifacts import atomic_path

Response = dict[str, Any]


def request_key(service: str, endpoint: str, params: Any) -> str:
    """The sha256 of a canonical JSON of the request: the same request always maps to one entry."""
    canonical = json.dumps(
        {"service": service, "endpoint": endpoint, "params": params},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


class ResponseCache:
    """Request -> response store under ``root``; ``offline`` forbids fetching what is missing."""

    def __init__(self, root: str | Path, *, offline: bool = False) -> None:
        self.root = Path(root)
        self.offline = offline
        self.hits = 0
        self.misses = 0

    def path(self, service: str, key: str) -> Path:
        """Where the entry for ``key`` lives (sharded by the key's first two hex digits)."""
        return self.root / service / key[:2] / f"{key}.json"

    def get(self, service: str, endpoint: str, params: Any) -> Response | None:
        """The stored response for this request, or None (an unreadable entry counts as none)."""
        path = self.path(service, request_key(service, endpoint, params))
        try:
            return cast(Response, json.loads(path.read_text(encoding="utf-8"))["response"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def put(self, service: str, endpoint: str, params: Any, response: Response) -> None:
        """Store a response atomically, with its request beside it for inspection."""
        path = self.path(service, request_key(service, endpoint, params))
        entry = {
            "request": {"service": service, "endpoint": endpoint, "params": params},
            "response": response,
        }
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(entry, ensure_ascii=False, indent=1), encoding="utf-8")

    def fetch(
        self,
        service: str,
        endpoint: str,
        params: Any,
        download: Callable[[], Response],
        *,
        what: str,
    ) -> Response:
        """The cached response, else ``download()`` stored then returned.

        ``what`` names the request in the offline error, e.g. "wikipedia article 'France'".
        """
        cached = self.get(service, endpoint, params)
        if cached is not None:
            self.hits += 1
            return cached
        if self.offline:
            raise GeoconceptError(
                f"offline: {what} is not in the cache {self.root}; "
                "run once without offline mode to fetch it"
            )
        response = download()
        self.put(service, endpoint, params, response)
        self.misses += 1
        return response
