"""Local receivers for notifier tests: an HTTP server and an SMTP server on loopback ports, and the
Airflow connections that reach them (importable as ``notify_receivers`` from any test)."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class HttpReceived:
    method: str
    path: str
    headers: dict[str, str]
    body: Any


@dataclass
class HttpReceiver:
    url: str
    port: int
    received: list[HttpReceived] = field(default_factory=list)
    status: int = 200

    def connection(self, *, login: str | None = None, password: str | None = None) -> str:
        """Return an Airflow HTTP connection (JSON) that reaches this receiver."""
        return json.dumps({"conn_type": "http", "host": "127.0.0.1", "port": self.port, "schema": "http",
                           "login": login, "password": password})


@contextlib.contextmanager
def http_receiver() -> Iterator[HttpReceiver]:
    """Run a ThreadingHTTPServer on a free loopback port that records every request (JSON bodies parsed)."""
    receiver: HttpReceiver

    class Handler(BaseHTTPRequestHandler):
        def _record(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            try:
                body: Any = json.loads(raw) if raw else None
            except ValueError:
                body = raw.decode("utf-8", "replace")
            receiver.received.append(HttpReceived(self.command, self.path, dict(self.headers), body))
            self.send_response(receiver.status)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        do_POST = do_PUT = do_PATCH = _record

        def log_message(self, *args: Any) -> None:  # quiet
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    port = server.server_address[1]
    receiver = HttpReceiver(url=f"http://127.0.0.1:{port}", port=port)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()


def free_port() -> int:
    """Return a loopback port nothing listens on (for a receiver that is down)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class SmtpReceived:
    mail_from: str
    rcpt_tos: list[str]
    message: Message


@dataclass
class SmtpReceiver:
    port: int
    received: list[SmtpReceived] = field(default_factory=list)

    def connection(self, *, from_email: str | None = None) -> str:
        """Return an Airflow SMTP connection (JSON), plain SMTP without TLS, no retries."""
        extra = {"disable_tls": True, "disable_ssl": True, "retry_limit": 0, "timeout": 5}
        if from_email:
            extra["from_email"] = from_email
        return json.dumps({"conn_type": "smtp", "host": "127.0.0.1", "port": self.port, "extra": extra})


@contextlib.contextmanager
def smtp_receiver() -> Iterator[SmtpReceiver]:
    """Run an aiosmtpd server on a free loopback port that records every message."""
    from aiosmtpd.controller import Controller

    receiver = SmtpReceiver(port=free_port())

    class Handler:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # aiosmtpd calls handle_DATA
            receiver.received.append(SmtpReceived(envelope.mail_from, list(envelope.rcpt_tos),
                                                  message_from_bytes(envelope.original_content)))
            return "250 OK"

    controller = Controller(Handler(), hostname="127.0.0.1", port=receiver.port)
    controller.start()
    try:
        yield receiver
    finally:
        controller.stop()
