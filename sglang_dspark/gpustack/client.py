"""A small JSON client for GPUStack's REST API (stdlib only).

Credentials live in :class:`Credentials` and go only into the Authorization
header: no message, exception or ``repr`` this module builds contains them.
"""

from __future__ import annotations

import base64
import json
import socket
import ssl
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from typing import Any


class GPUStackError(RuntimeError):
    """A request to GPUStack failed; the message says why and what to do."""


@dataclass(frozen=True)
class Credentials:
    """Either an API key (bearer) or a user name and password (HTTP Basic)."""

    api_key: str | None = field(default=None, repr=False)
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if bool(self.api_key) == bool(self.username and self.password):
            raise ValueError("give either an API key, or a user name and a password")

    def header(self) -> str:
        """The Authorization header value."""
        if self.api_key:
            return f"Bearer {self.api_key}"
        raw = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(raw).decode()


@dataclass(frozen=True)
class ServerConfig:
    """Where GPUStack is and how to talk to it."""

    url: str
    credentials: Credentials
    insecure: bool = False
    timeout_s: float = 30.0


class GPUStackClient:
    """JSON requests against one GPUStack server."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.base = config.url.rstrip("/")
        parsed = urllib.parse.urlparse(self.base)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise GPUStackError(f"--server {config.url!r}: give a URL such as https://gpustack.example:443")
        self._ssl = ssl.create_default_context()
        if config.insecure:
            # Only on explicit --insecure: self-signed test servers.
            self._ssl.check_hostname = False
            self._ssl.verify_mode = ssl.CERT_NONE

    def request(self, method: str, path: str, body: Any = None, *, missing_ok: bool = False) -> Any:
        """Send one request; return the decoded JSON body (None for 404 when ``missing_ok``).

        Raises:
            GPUStackError: unreachable server, TLS failure, 401/403, 404 on an
                API this server lacks, or any other non-2xx answer.
        """
        url = self.base + path
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(url, data=data, method=method)
        req.add_header("Authorization", self.config.credentials.header())
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=self.config.timeout_s, context=self._ssl) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as e:
            detail = _error_detail(e)
            if e.code == 401:
                raise GPUStackError(
                    f"GPUStack at {self.base} refused the credentials (401 Unauthorized): "
                    "check the user name and password file, or the API key."
                ) from None
            if e.code == 403:
                raise GPUStackError(
                    f"GPUStack at {self.base}: this account may not {method} {path} (403 Forbidden); "
                    "use an administrator's credentials."
                ) from None
            if e.code == 404 and missing_ok:
                return None
            if e.code in (404, 405):
                raise GPUStackError(
                    f"GPUStack at {self.base} has no {method} {path} ({e.code}): this needs "
                    "GPUStack 2.x with inference backends (2.3.0 was tested); "
                    f"upgrade the server. Server said: {detail}"
                ) from None
            raise GPUStackError(f"GPUStack {method} {path} failed ({e.code}): {detail}") from None
        except urllib.error.URLError as e:
            reason = e.reason
            if isinstance(reason, ssl.SSLCertVerificationError):
                raise GPUStackError(
                    f"TLS verification of {self.base} failed ({reason.verify_message}); "
                    "give the server a trusted certificate, or pass --insecure for a test server."
                ) from None
            raise GPUStackError(f"cannot reach GPUStack at {self.base}: {reason}") from None
        except (socket.timeout, TimeoutError):
            raise GPUStackError(
                f"GPUStack at {self.base} did not answer {method} {path} within {self.config.timeout_s:g} s"
            ) from None
        if not raw:
            return None
        try:
            return json.loads(raw)
        except json.JSONDecodeError:
            raise GPUStackError(
                f"{self.base}{path} did not answer JSON: is --server the GPUStack server's URL?"
            ) from None

    def get(self, path: str, *, missing_ok: bool = False) -> Any:
        """GET ``path``."""
        return self.request("GET", path, missing_ok=missing_ok)

    def put(self, path: str, body: Any) -> Any:
        """PUT ``body`` to ``path``."""
        return self.request("PUT", path, body)

    def post(self, path: str, body: Any) -> Any:
        """POST ``body`` to ``path``."""
        return self.request("POST", path, body)


def _error_detail(e: urllib.error.HTTPError) -> str:
    try:
        raw = e.read().decode(errors="replace")
    except Exception:  # noqa: BLE001 - the status code is still worth reporting
        return e.reason or ""
    try:
        body = json.loads(raw)
    except json.JSONDecodeError:
        return raw[:300]
    if isinstance(body, dict):
        return str(body.get("message") or body.get("detail") or body)[:300]
    return str(body)[:300]
