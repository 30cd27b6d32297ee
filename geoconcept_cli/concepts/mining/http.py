"""Bounded retries with exponential backoff, and an httpx transport that caches and retries.

Timeouts, connection errors, HTTP 429 (honouring Retry-After, capped) and 5xx are retried; after
the last try the caller gets one GeoconceptError line. Everything already fetched stays cached.
"""

from __future__ import annotations

import email.utils
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TypeVar, cast

import httpx

from ...errors import GeoconceptError
from .cache import Response, ResponseCache

T = TypeVar("T")


class TransientError(Exception):
    """A failure worth retrying; ``retry_after`` is the server's requested wait, if it sent one."""

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently to retry: ``attempts`` tries in all, waits doubling each time."""

    attempts: int = 5
    base_delay: float = 1.0
    max_delay: float = 30.0
    max_retry_after: float = 120.0
    sleep: Callable[[float], None] = field(default=time.sleep, compare=False)

    def delay(self, attempt: int, retry_after: float | None) -> float:
        """Seconds to wait after failed try number ``attempt`` (1-based)."""
        if retry_after is not None:
            return max(0.0, min(retry_after, self.max_retry_after))
        # int ** int is typed Any (a negative exponent makes a float); attempt >= 1: an int
        return cast(float, min(self.base_delay * 2 ** (attempt - 1), self.max_delay))


def with_retries(fn: Callable[[], T], *, what: str, policy: RetryPolicy) -> T:
    """Call ``fn`` until it stops raising TransientError, at most ``policy.attempts`` times."""
    attempt = 1
    while True:
        try:
            return fn()
        except TransientError as err:
            if attempt >= policy.attempts:
                raise GeoconceptError(
                    f"{what}: {err} (gave up after {attempt} tries; what was fetched before "
                    "is cached, so a rerun resumes from here)"
                ) from err
            policy.sleep(policy.delay(attempt, err.retry_after))
            attempt += 1


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date); None if absent/bad."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def check_status(status: int, retry_after: str | None, what: str) -> None:
    """Raise TransientError for 429/5xx and GeoconceptError for any other non-200 status."""
    if status == 429:
        raise TransientError("HTTP 429 (rate limited)", parse_retry_after(retry_after))
    if status >= 500:
        raise TransientError(f"HTTP {status}")
    if status != 200:
        raise GeoconceptError(f"{what}: HTTP {status}")


class CachingTransport(httpx.BaseTransport):
    """httpx transport answering JSON GETs from a ResponseCache, else fetching them with retries.

    Injected into clients that speak httpx (wikipedia-api); ``base_url`` redirects every request
    to another server (a mirror, or a local fake in tests) keeping the query string;
    ``describe`` names a request in errors (default: the service and the URL).
    """

    def __init__(
        self,
        service: str,
        cache: ResponseCache,
        policy: RetryPolicy,
        *,
        base_url: str | None = None,
        inner: httpx.BaseTransport | None = None,
        describe: Callable[[httpx.URL], str] | None = None,
    ) -> None:
        self.service = service
        self.describe = describe or (lambda url: f"{service} request {url}")
        self.cache = cache
        self.policy = policy
        self.base_url = httpx.URL(base_url) if base_url else None
        self.inner = inner or httpx.HTTPTransport()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        if self.base_url is not None:
            url = self.base_url.copy_with(query=url.query or None)
        endpoint = str(url.copy_with(query=None))
        params = sorted([k, v] for k, v in url.params.multi_items())
        what = self.describe(url)

        def download() -> Response:
            headers = [(k, v) for k, v in request.headers.multi_items() if k.lower() != "host"]
            forwarded = httpx.Request(
                request.method, url, headers=headers, extensions=request.extensions
            )
            try:
                response = self.inner.handle_request(forwarded)
                try:
                    response.read()
                finally:
                    response.close()
            except httpx.TimeoutException as err:
                raise TransientError("timed out") from err
            except httpx.TransportError as err:
                raise TransientError(f"connection failed ({type(err).__name__})") from err
            check_status(response.status_code, response.headers.get("Retry-After"), what)
            try:
                json.loads(response.text)
            except ValueError as err:
                raise TransientError("the reply is not JSON") from err
            return {
                "status": response.status_code,
                "content_type": response.headers.get("content-type", ""),
                "body": response.text,
            }

        stored = self.cache.fetch(
            self.service,
            endpoint,
            params,
            lambda: with_retries(download, what=what, policy=self.policy),
            what=what,
        )
        return httpx.Response(
            stored["status"],
            headers={"content-type": stored["content_type"]},
            content=stored["body"].encode("utf-8"),
            request=request,
        )

    def close(self) -> None:
        self.inner.close()
