"""Local fake services for the concept-builder tests, spoken to by the real client libraries.

One threaded HTTP server on 127.0.0.1 answers like the MediaWiki action API (from real
Wikipedia summaries), a SPARQL 1.1 endpoint (rdflib runs the query over the real WorldKG
ontology plus test-given instances) and OpenAI chat completions (scripted replies). Faults
(timeout, 429, 500) can be injected per service, and every request is counted.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.parse
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import rdflib

from geoconcept_cli.concepts.mining.http import RetryPolicy

DATA_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data"
WIKI_RECORDS = DATA_DIR / "concept_sources" / "wikipedia" / "vital_level4_summaries_geo_en.json"
WORLDKG_TTL = DATA_DIR / "concept_sources" / "worldkg" / "WorldKG_Ontolgy.ttl"
WKGS = rdflib.Namespace("http://www.worldkg.org/schema/")
SERVICES = ("wikipedia", "worldkg", "llm")


def require_data() -> None:
    """Skip the calling test when ../shared/data (real source records) is not there."""
    if not (WIKI_RECORDS.is_file() and WORLDKG_TTL.is_file()):
        pytest.skip(f"real concept-source data not found under {DATA_DIR} (a fresh clone has none)")


@lru_cache(maxsize=1)
def wiki_records() -> dict[str, dict[str, str]]:
    """The real Wikipedia summaries, by title."""
    return json.loads(WIKI_RECORDS.read_text(encoding="utf-8"))


@lru_cache(maxsize=1)
def ontology() -> rdflib.Graph:
    """The real WorldKG ontology (parsed once per test session)."""
    graph = rdflib.Graph()
    graph.parse(WORLDKG_TTL, format="turtle")
    return graph


def wiki_extracts(titles: list[str]) -> dict[str, str]:
    """Plain-text extracts for the titles that have a real summary record."""
    records = wiki_records()
    return {t: records[t]["extract"] for t in titles if t in records}


# The client deadline of the timeout tests. A real answer must arrive within it on a loaded
# 2-core CI machine (rdflib's first query alone takes 0.2 s idle), and a "timeout" fault outlasts
# it by a second. 0.3-0.5 s made those tests flaky.
CLIENT_TIMEOUT = 2.0


@dataclass
class Fault:
    """``times`` requests of a service, after the first ``after`` ones, get this fault."""

    kind: str  # "timeout" | "429" | "500"
    times: int
    after: int = 0
    retry_after: str | None = None
    sleep: float = CLIENT_TIMEOUT + 1.0


class FakeServices:
    """The three fake services on one local port; use as a context manager."""

    def __init__(
        self,
        *,
        articles: dict[str, str] | None = None,
        instances: list[tuple[str, str, str, int]] | None = None,
        llm_replies: dict[str, list[str]] | None = None,
        api_key: str = "",
    ) -> None:
        self.articles = dict(articles or {})
        self.pageids = {t: 1000 + i for i, t in enumerate(sorted(self.articles))}
        self.graph = rdflib.Graph()
        if instances is not None:
            self.graph += ontology()
            n = 0
            for cls, prop, value, count in instances:
                for _ in range(count):
                    entity = rdflib.URIRef(f"http://www.worldkg.org/resource/e{n}")
                    self.graph.add((entity, rdflib.RDF.type, WKGS[cls]))
                    self.graph.add((entity, WKGS[prop], rdflib.Literal(value)))
                    n += 1
        self.llm_replies = dict(llm_replies or {})
        self.api_key = api_key
        self.requests: Counter[str] = Counter()
        self.served_ok: Counter[str] = Counter()
        self.sparql_queries: list[str] = []
        self.llm_bodies: list[dict[str, Any]] = []
        self.faults: dict[str, list[Fault]] = {s: [] for s in SERVICES}
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def base(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def wiki_api_url(self) -> str:
        return f"{self.base}/w/api.php"

    @property
    def sparql_url(self) -> str:
        return f"{self.base}/sparql"

    @property
    def llm_base_url(self) -> str:
        return f"{self.base}/v1"

    def __enter__(self) -> FakeServices:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def inject(self, service: str, kind: str, times: int = 1, **kw: Any) -> None:
        """Make the next ``times`` requests of ``service`` (after ``after``) fail with ``kind``."""
        self.faults[service].append(Fault(kind, times, **kw))

    def clear_faults(self) -> None:
        for faults in self.faults.values():
            faults.clear()

    def total(self) -> int:
        """Requests received, all services."""
        return sum(self.requests.values())

    def _take_fault(self, service: str) -> Fault | None:
        with self._lock:
            seen = self.requests[service]
            self.requests[service] += 1
            for fault in self.faults[service]:
                if fault.times > 0 and seen >= fault.after:
                    fault.times -= 1
                    return fault
        return None

    # -- service answers: (status, content type, body) --------------------------------------

    def mediawiki(self, params: dict[str, str]) -> tuple[int, str, str]:
        title = params.get("titles", "")
        if params.get("action") != "query" or params.get("format") != "json":
            return 400, "application/json", json.dumps({"error": {"code": "badparams"}})
        if title not in self.articles:
            page: dict[str, Any] = {"ns": 0, "title": title, "missing": ""}
            return 200, "application/json", _query_reply({"-1": page})
        pageid = self.pageids[title]
        text = self.articles[title]
        page = {"pageid": pageid, "ns": 0, "title": title}
        if params.get("prop") == "extracts":
            page["extract"] = text
        elif params.get("prop") == "info":
            url = "https://en.wikipedia.org/wiki/" + urllib.parse.quote(title.replace(" ", "_"))
            page |= {
                "contentmodel": "wikitext",
                "pagelanguage": "en",
                "pagelanguagehtmlcode": "en",
                "pagelanguagedir": "ltr",
                "touched": "2025-01-01T00:00:00Z",
                "lastrevid": pageid * 7,
                "length": len(text),
                "fullurl": url,
                "editurl": url.replace("/wiki/", "/w/index.php?title=") + "&action=edit",
                "canonicalurl": url,
                "displaytitle": title,
            }
        else:
            return 400, "application/json", json.dumps({"error": {"code": "badprop"}})
        return 200, "application/json", _query_reply({str(pageid): page})

    def sparql(self, query: str) -> tuple[int, str, str]:
        with self._lock:
            self.sparql_queries.append(query)
            try:
                result = self.graph.query(query)
            except Exception as err:  # a parse error is the endpoint's 400
                return 400, "text/plain", f"bad query: {err}"
            body = result.serialize(format="json")
        return 200, "application/sparql-results+json", body.decode("utf-8")

    def chat(self, headers: Any, body: dict[str, Any]) -> tuple[int, str, str]:
        auth = headers.get("Authorization", "")
        if auth != f"Bearer {self.api_key}":
            # Real servers echo (part of) a wrong key; the client must not pass this on.
            message = f"Incorrect API key provided: {auth.removeprefix('Bearer ')}"
            error = {"message": message, "type": "invalid_request_error", "code": "invalid_api_key"}
            return 401, "application/json", json.dumps({"error": error})
        with self._lock:
            self.llm_bodies.append(body)
        messages = body["messages"]
        first_user = next(m["content"] for m in messages if m["role"] == "user")
        turn = sum(m["role"] == "assistant" for m in messages)
        content = '{"concepts": []}'
        for needle, replies in self.llm_replies.items():
            if needle in first_user:
                content = replies[min(turn, len(replies) - 1)]
                break
        reply = {
            "id": f"chatcmpl-fake{len(self.llm_bodies)}",
            "object": "chat.completion",
            "created": 1735689600,
            "model": body["model"],
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content, "refusal": None},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 100, "completion_tokens": 50, "total_tokens": 150},
        }
        return 200, "application/json", json.dumps(reply)


def _query_reply(pages: dict[str, Any]) -> str:
    return json.dumps({"batchcomplete": "", "query": {"pages": pages}})


def _make_handler(fake: FakeServices) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:  # keep test output clean
            pass

        def _service(self) -> str | None:
            path = urllib.parse.urlsplit(self.path).path
            return {
                "/w/api.php": "wikipedia",
                "/sparql": "worldkg",
                "/v1/chat/completions": "llm",
            }.get(path)

        def _send(self, status: int, ctype: str, body: str, headers: dict | None = None) -> None:
            data = body.encode("utf-8")
            try:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (timeout fault)

        def _handle(self, body: bytes) -> None:
            service = self._service()
            if service is None:
                self._send(404, "text/plain", "not found")
                return
            fault = fake._take_fault(service)
            if fault is not None and fault.kind == "429":
                headers = {"Retry-After": fault.retry_after} if fault.retry_after else {}
                self._send(429, "application/json", '{"error": "rate limited"}', headers)
                return
            if fault is not None and fault.kind == "500":
                self._send(500, "application/json", '{"error": "internal error"}')
                return
            if fault is not None and fault.kind == "timeout":
                time.sleep(fault.sleep)
            query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(self.path).query))
            if service == "wikipedia":
                status, ctype, text = fake.mediawiki(query)
            elif service == "worldkg":
                if self.command == "POST":
                    query |= dict(urllib.parse.parse_qsl(body.decode("utf-8")))
                status, ctype, text = fake.sparql(query.get("query", ""))
            else:
                status, ctype, text = fake.chat(self.headers, json.loads(body or b"{}"))
            if status == 200 and fault is None:
                with fake._lock:
                    fake.served_ok[service] += 1
            self._send(status, ctype, text)

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            self._handle(b"")

        def do_POST(self) -> None:  # noqa: N802
            length = int(self.headers.get("Content-Length") or 0)
            self._handle(self.rfile.read(length))

    return Handler


class Sleeps(list):
    """A RetryPolicy ``sleep`` that records the waits instead of sleeping."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def fast_policy(attempts: int = 3, **kw: Any) -> tuple[RetryPolicy, Sleeps]:
    """A retry policy that does not really wait, and the list of waits it asked for."""
    sleeps = Sleeps()
    return RetryPolicy(attempts=attempts, base_delay=0.5, sleep=sleeps, **kw), sleeps
