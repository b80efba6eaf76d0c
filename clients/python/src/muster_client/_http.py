"""A small HTTP/1.1 transport on `http.client`: one kept-alive connection per thread, JSON
bodies, errors turned into `MusterError`s, and channels (dedicated connections) that another
thread may abort, which is how an agent stops a long-poll at once."""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import threading
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from typing import Any, Dict, Mapping, Optional, Tuple, Union
from urllib.parse import quote, urlencode, urlsplit

from .errors import MusterConnectionError, MusterError, error_for
from .models import format_timestamp

Connection = Union[http.client.HTTPConnection, http.client.HTTPSConnection]

# Failures of a kept-alive connection that the server closed while it sat idle: the request
# never reached the server, so sending it again on a fresh connection is safe.
_STALE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return format_timestamp(value)
    if isinstance(value, Enum):
        return value.value
    if hasattr(value, "to_json"):
        return value.to_json()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), default=_json_default).encode("utf-8")


def segment(value: str) -> str:
    """Quotes one path segment (an agent id may hold spaces, `%`, `?` …)."""
    return quote(str(value), safe="")


@dataclass
class Response:
    status: int
    headers: Dict[str, str]
    body: bytes

    def json(self) -> Any:
        if not self.body:
            return None
        try:
            return json.loads(self.body.decode("utf-8"))
        except ValueError as exc:
            start = self.body[:200].decode("utf-8", "replace")
            raise MusterError(
                f"the answer is not JSON ({exc}); is this URL a muster server? It began: {start!r}",
                status=self.status,
            ) from exc


class Aborted(MusterConnectionError):
    """The request's channel was aborted by another thread."""


class Channel:
    """A dedicated connection whose in-flight request another thread can abort."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._conn: Optional[Connection] = None
        self._aborted = False

    @property
    def aborted(self) -> bool:
        return self._aborted

    def abort(self) -> None:
        """Ends the request in flight, if any, and refuses every later one. Never blocks long."""
        with self._lock:
            self._aborted = True
            conn = self._conn
            if conn is not None and conn.sock is not None:
                try:
                    conn.sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


class Transport:
    def __init__(
        self,
        url: str,
        *,
        api_key: Optional[str],
        timeout: float,
        user_agent: str,
        ssl_context: Optional[ssl.SSLContext] = None,
    ) -> None:
        parts = urlsplit(url if "://" in url else f"http://{url}")
        if parts.scheme not in ("http", "https"):
            raise ValueError(f"muster URL must be http:// or https://, got {url!r}")
        if not parts.hostname:
            raise ValueError(f"muster URL has no host: {url!r}")
        self.base_url = f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}"
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port
        self._prefix = parts.path.rstrip("/")
        self._ssl = ssl_context
        self.timeout = timeout
        self._headers = {"User-Agent": user_agent, "Accept": "application/json"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._local = threading.local()

    # -- connections --------------------------------------------------------------------------

    def new_connection(self, timeout: float) -> Connection:
        if self._https:
            return http.client.HTTPSConnection(
                self._host, self._port, timeout=timeout, context=self._ssl
            )
        return http.client.HTTPConnection(self._host, self._port, timeout=timeout)

    def _thread_conn(self) -> Tuple[Connection, bool]:
        """This thread's kept-alive connection, and whether it served a request before."""
        conn: Optional[Connection] = getattr(self._local, "conn", None)
        if conn is None or conn.sock is None:
            conn = self.new_connection(self.timeout)
            self._local.conn = conn
            return conn, False
        return conn, True

    def _drop_thread_conn(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def close(self) -> None:
        """Closes this thread's connection (others close when their threads end)."""
        self._drop_thread_conn()

    # -- requests -----------------------------------------------------------------------------

    def url_of(self, path: str, query: Optional[Mapping[str, Any]] = None) -> str:
        full = self._prefix + path
        if query:
            pairs = {k: _query_value(v) for k, v in query.items() if v is not None}
            if pairs:
                full += "?" + urlencode(pairs)
        return full

    def request(
        self,
        method: str,
        path: str,
        *,
        query: Optional[Mapping[str, Any]] = None,
        body: Any = None,
        timeout: Optional[float] = None,
        headers: Optional[Mapping[str, str]] = None,
        channel: Optional[Channel] = None,
    ) -> Response:
        """Sends one request and reads the whole answer. Raises the matching `MusterError`
        for any status of 400 and above, `MusterConnectionError` when there is no answer."""
        target = self.url_of(path, query)
        data = None if body is None else dumps(body)
        send_headers = dict(self._headers)
        if data is not None:
            send_headers["Content-Type"] = "application/json"
        if headers:
            send_headers.update(headers)
        wait = self.timeout if timeout is None else timeout

        if channel is not None:
            response = self._on_channel(channel, method, target, data, send_headers, wait)
        else:
            response = self._on_thread_conn(method, target, data, send_headers, wait)
        if response.status >= 400:
            raise self._error(response, method, target)
        return response

    def _on_channel(
        self,
        channel: Channel,
        method: str,
        target: str,
        data: Optional[bytes],
        headers: Dict[str, str],
        wait: float,
    ) -> Response:
        with channel._lock:
            if channel._aborted:
                raise Aborted("request aborted: the agent is stopping", method=method, url=target)
            if channel._conn is None or channel._conn.sock is None:
                channel._conn = self.new_connection(wait)
                try:
                    channel._conn.connect()
                except OSError as exc:
                    channel._conn = None
                    raise self._unreachable(exc, method, target, wait) from exc
            conn = channel._conn
            assert conn.sock is not None
            conn.sock.settimeout(wait)
        try:
            return self._exchange(conn, method, target, data, headers)
        except (OSError, http.client.HTTPException) as exc:
            channel.close()
            if channel._aborted:
                raise Aborted(
                    "request aborted: the agent is stopping", method=method, url=target
                ) from exc
            raise self._unreachable(exc, method, target, wait) from exc

    def _on_thread_conn(
        self,
        method: str,
        target: str,
        data: Optional[bytes],
        headers: Dict[str, str],
        wait: float,
    ) -> Response:
        for _ in range(2):
            conn, reused = self._thread_conn()
            try:
                if conn.sock is not None:
                    conn.sock.settimeout(wait)
                else:
                    conn.timeout = wait
                return self._exchange(conn, method, target, data, headers)
            except _STALE as exc:
                self._drop_thread_conn()
                if reused:
                    continue  # the server closed the idle connection: try once on a new one
                raise self._unreachable(exc, method, target, wait) from exc
            except (OSError, http.client.HTTPException) as exc:
                self._drop_thread_conn()
                raise self._unreachable(exc, method, target, wait) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    @staticmethod
    def _exchange(
        conn: Connection, method: str, target: str, data: Optional[bytes], headers: Dict[str, str]
    ) -> Response:
        conn.request(method, target, body=data, headers=headers)
        resp = conn.getresponse()
        body = resp.read()
        got = {k.lower(): v for k, v in resp.getheaders()}
        if resp.will_close:
            conn.close()
        return Response(status=resp.status, headers=got, body=body)

    def open_stream(
        self,
        path: str,
        *,
        query: Optional[Mapping[str, Any]] = None,
        headers: Optional[Mapping[str, str]] = None,
        timeout: Optional[float] = None,
    ) -> Tuple[Connection, http.client.HTTPResponse]:
        """Opens a streaming GET on its own connection (for SSE); the caller closes it."""
        target = self.url_of(path, query)
        send_headers = dict(self._headers)
        if headers:
            send_headers.update(headers)
        wait = self.timeout if timeout is None else timeout
        conn = self.new_connection(wait)
        try:
            conn.request("GET", target, headers=send_headers)
            resp = conn.getresponse()
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise self._unreachable(exc, "GET", target, wait) from exc
        if resp.status >= 400:
            body = resp.read()
            conn.close()
            raise self._error(
                Response(resp.status, {k.lower(): v for k, v in resp.getheaders()}, body),
                "GET",
                target,
            )
        return conn, resp

    # -- errors -------------------------------------------------------------------------------

    def _unreachable(
        self, exc: BaseException, method: str, target: str, wait: float
    ) -> MusterConnectionError:
        where = f"{self.base_url}"
        if isinstance(exc, (socket.timeout, TimeoutError)):
            text = f"muster at {where} did not answer {method} {target} within {wait:g}s"
        else:
            reason = str(exc) or type(exc).__name__
            text = f"cannot reach muster at {where} ({method} {target}): {reason}"
        return MusterConnectionError(text, method=method, url=target)

    @staticmethod
    def _error(response: Response, method: str, target: str) -> MusterError:
        code: Optional[str] = None
        message = ""
        try:
            detail = response.json()["error"]
            code = detail.get("code")
            message = detail.get("message") or ""
        except (ValueError, KeyError, TypeError, AttributeError):
            message = response.body.decode("utf-8", "replace").strip()[:500]
        if not message:
            message = http.client.responses.get(response.status, "error")
        return error_for(response.status, code, message, method=method, url=target)


def _query_value(value: Any) -> str:
    if isinstance(value, Enum):
        return str(value.value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        return format_timestamp(value)
    return str(value)
