"""An HTTP proxy that injects faults between a rollout and a backend (fault-injection tests, ``make faults``).

Every request is forwarded to ``target`` unless a :class:`FaultRule` matches it first; a rule answers with an
error status, drops the connection, delays, or rewrites the body before forwarding (e.g. a router that applies
other weights than it was given). Rules are armed by count (``times``) or by an outage window (``for_s``,
counted from the first request they match). The proxy keeps a log of what it did, with monotonic times, so a
test can measure the time from a fault to the safe state.

It runs in a thread of the test process: the rollout under test (``airflow dags test``, a subprocess) reaches
the backend through its port.
"""

from __future__ import annotations

import http.client
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

#: Headers not forwarded (hop-by-hop, or recomputed).
_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host"}


@dataclass
class FaultRule:
    """What to do to the requests this rule matches (``method`` and a ``path`` regex; ``body`` a predicate).

    :param action: ``status`` (answer ``status`` without forwarding), ``respond`` (answer ``status`` with
        ``response`` as a JSON body, without forwarding: e.g. a metrics store that says it has no data),
        ``drop`` (close the connection without an answer), ``delay`` (wait ``delay_s``, then forward) or
        ``rewrite`` (forward ``rewrite(body)``).
    :param times: how many matching requests the rule applies to (None: every one while armed).
    :param for_s: apply for this many seconds from the first match (an outage), then stop (None: no limit).
    """

    name: str
    method: str | None = None
    path: str = ".*"
    body: Callable[[bytes], bool] | None = None
    action: str = "status"
    status: int = 503
    delay_s: float = 0.0
    rewrite: Callable[[bytes], bytes] | None = None
    response: bytes = b""
    times: int | None = None
    for_s: float | None = None
    applied: int = 0
    first_at_s: float | None = None

    def __post_init__(self) -> None:
        if self.action not in ("status", "respond", "drop", "delay", "rewrite"):
            raise ValueError(f"fault rule {self.name!r}: action must be status, respond, drop, delay or rewrite, "
                             f"got {self.action!r}")
        if self.action == "rewrite" and self.rewrite is None:
            raise ValueError(f"fault rule {self.name!r}: action rewrite needs rewrite=")

    def matches(self, method: str, path: str, body: bytes, now_s: float) -> bool:
        if self.method is not None and method != self.method:
            return False
        if not re.search(self.path, path) or (self.body is not None and not self.body(body)):
            return False
        if self.times is not None and self.applied >= self.times:
            return False
        return not (self.for_s is not None and self.first_at_s is not None and now_s - self.first_at_s > self.for_s)


@dataclass(frozen=True)
class ProxyEvent:
    """One request through the proxy: when (monotonic seconds), what, the answer, and the rule that acted."""

    at_s: float
    method: str
    path: str
    status: int | None
    rule: str | None
    body: bytes = b""
    forwarded: bool = False  # the backend answered (possibly after a delay or a rewrite)


@dataclass
class FaultProxy:
    """Forward to ``target`` (``http://host:port``), applying :attr:`rules` in order (the first match acts)."""

    target: str
    rules: list[FaultRule] = field(default_factory=list)
    events: list[ProxyEvent] = field(default_factory=list)
    port: int = 0

    def __post_init__(self) -> None:
        url = urlsplit(self.target)
        if url.scheme != "http" or not url.hostname or not url.port:
            raise ValueError(f"fault proxy: target must be http://host:port, got {self.target!r}")
        self._address = (url.hostname, url.port)
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def add(self, rule: FaultRule) -> FaultRule:
        with self._lock:
            self.rules.append(rule)
        return rule

    def clear(self) -> None:
        with self._lock:
            self.rules.clear()

    def injected(self, rule: str | None = None) -> list[ProxyEvent]:
        """Return the requests a rule acted on (``rule``: that one only)."""
        with self._lock:
            return [e for e in self.events if e.rule is not None and (rule is None or e.rule == rule)]

    def forwarded(self, method: str, path_pattern: str) -> list[ProxyEvent]:
        """Return the requests forwarded (with the backend's answer) whose path matches ``path_pattern``."""
        with self._lock:
            return [e for e in self.events if e.forwarded and e.method == method and re.search(path_pattern, e.path)]

    def _choose(self, method: str, path: str, body: bytes) -> FaultRule | None:
        now_s = time.monotonic()
        with self._lock:
            for rule in self.rules:
                if rule.matches(method, path, body, now_s):
                    rule.applied += 1
                    if rule.first_at_s is None:
                        rule.first_at_s = now_s
                    return rule
        return None

    def _record(self, event: ProxyEvent) -> None:
        with self._lock:
            self.events.append(event)

    @contextmanager
    def running(self) -> Iterator[FaultProxy]:
        """Serve on a free loopback port (``port``) until the block ends."""
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_args: object) -> None:  # the proxy's own log is ProxyEvent
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                rule = proxy._choose(self.command, self.path, body)
                at_s = time.monotonic()
                if rule is not None and rule.action == "drop":
                    proxy._record(ProxyEvent(at_s, self.command, self.path, None, rule.name, body))
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                if rule is not None and rule.action in ("status", "respond"):
                    payload = rule.response if rule.action == "respond" else \
                        b'{"detail": "fault injected by the test proxy: ' + rule.name.encode() + b'"}'
                    self.send_response(rule.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    proxy._record(ProxyEvent(at_s, self.command, self.path, rule.status, rule.name, body))
                    return
                if rule is not None and rule.action == "delay":
                    time.sleep(rule.delay_s)
                if rule is not None and rule.action == "rewrite" and rule.rewrite is not None:
                    body = rule.rewrite(body)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
                conn = http.client.HTTPConnection(*proxy._address, timeout=30)
                try:
                    conn.request(self.command, self.path, body=body or None, headers=headers)
                    upstream = conn.getresponse()
                    payload = upstream.read()
                    self.send_response(upstream.status)
                    for key, value in upstream.getheaders():
                        if key.lower() not in _HOP:
                            self.send_header(key, value)
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    proxy._record(ProxyEvent(at_s, self.command, self.path, upstream.status,
                                             rule.name if rule else None, body, forwarded=True))
                finally:
                    conn.close()

            do_GET = do_PUT = do_POST = do_DELETE = _handle

        server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        server.daemon_threads = True
        self.port = server.server_address[1]
        thread = threading.Thread(target=server.serve_forever, name="fault-proxy", daemon=True)
        thread.start()
        try:
            yield self
        finally:
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)


__all__ = ["FaultProxy", "FaultRule", "ProxyEvent"]
