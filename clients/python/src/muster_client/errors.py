"""Errors raised by the client, one class per API error code.

Every error the server answers is `{"error": {"code", "message"}}`; the client raises the
subclass of `MusterError` that matches the code (or, for an answer without that envelope,
the HTTP status). A server that cannot be reached raises `MusterConnectionError`, which is
also a builtin `ConnectionError`.
"""

from __future__ import annotations

from typing import Dict, Optional, Type, Union

from .models import ErrorCode

__all__ = [
    "MusterError",
    "BadRequest",
    "Unauthorized",
    "Forbidden",
    "NotFound",
    "MethodNotAllowed",
    "Conflict",
    "PayloadTooLarge",
    "UnsupportedMediaType",
    "InvalidField",
    "TooManyRequests",
    "Unavailable",
    "InternalError",
    "MusterConnectionError",
    "error_for",
]


class MusterError(Exception):
    """An error answered by muster (or, for `MusterConnectionError`, the lack of an answer).

    `status` is the HTTP status (None when no answer came), `code` the API's `ErrorCode` (a
    plain string if this client does not know it, None without an error envelope), `message`
    the server's explanation, meant for a person.
    """

    #: The code this class stands for; None on the base class.
    error_code: Optional[ErrorCode] = None

    def __init__(
        self,
        message: str,
        *,
        status: Optional[int] = None,
        code: Union[ErrorCode, str, None] = None,
        method: Optional[str] = None,
        url: Optional[str] = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code if code is not None else self.error_code
        self.method = method
        self.url = url

    def __str__(self) -> str:
        parts = []
        if self.status is not None:
            parts.append(str(self.status))
        if self.code is not None:
            parts.append(str(self.code))
        head = " ".join(parts)
        where = f" ({self.method} {self.url})" if self.method and self.url else ""
        return f"{head}: {self.message}{where}" if head else f"{self.message}{where}"

    def __repr__(self) -> str:
        code = self.code.value if isinstance(self.code, ErrorCode) else self.code
        name = type(self).__name__
        return f"{name}(status={self.status!r}, code={code!r}, message={self.message!r})"

    @property
    def transient(self) -> bool:
        """True when the same request may succeed later (unreachable, 429, 500, 503)."""
        return False


class BadRequest(MusterError):
    """400: the body is not valid JSON or the request is malformed."""

    error_code = ErrorCode.BAD_REQUEST


class Unauthorized(MusterError):
    """401: no key, or a key the server does not accept."""

    error_code = ErrorCode.UNAUTHORIZED


class Forbidden(MusterError):
    """403: a valid key that may not use this route (the agent key on an admin route)."""

    error_code = ErrorCode.FORBIDDEN


class NotFound(MusterError):
    """404: no such task or agent. From heartbeat or claim it means: register again."""

    error_code = ErrorCode.NOT_FOUND


class MethodNotAllowed(MusterError):
    """405."""

    error_code = ErrorCode.METHOD_NOT_ALLOWED


class Conflict(MusterError):
    """409: a stale attempt or an illegal transition; nothing changed."""

    error_code = ErrorCode.CONFLICT


class PayloadTooLarge(MusterError):
    """413: the body is larger than the server accepts."""

    error_code = ErrorCode.PAYLOAD_TOO_LARGE


class UnsupportedMediaType(MusterError):
    """415."""

    error_code = ErrorCode.UNSUPPORTED_MEDIA_TYPE


class InvalidField(MusterError):
    """422: a field is invalid; the message starts with the field's name."""

    error_code = ErrorCode.INVALID_FIELD

    @property
    def field(self) -> Optional[str]:
        """The field at fault, as the server's message names it (`"kind: must not be empty"`)."""
        name, sep, _ = self.message.partition(":")
        return name.strip() if sep and " " not in name.strip() else None


class TooManyRequests(MusterError):
    """429."""

    error_code = ErrorCode.TOO_MANY_REQUESTS

    @property
    def transient(self) -> bool:
        return True


class BudgetExceeded(MusterError):
    """429: a workflow's LLM budget is spent for its period; nothing was sent to the model."""

    error_code = ErrorCode.BUDGET_EXCEEDED


class BadGateway(MusterError):
    """502: a language model's API failed; the message names the provider."""

    error_code = ErrorCode.BAD_GATEWAY

    @property
    def transient(self) -> bool:
        return True


class Unavailable(MusterError):
    """503: the store is unavailable; retry later."""

    error_code = ErrorCode.UNAVAILABLE

    @property
    def transient(self) -> bool:
        return True


class InternalError(MusterError):
    """500."""

    error_code = ErrorCode.INTERNAL

    @property
    def transient(self) -> bool:
        return True


class MusterConnectionError(MusterError, ConnectionError):
    """The server could not be reached, or did not answer in time. The message names the URL."""

    def __init__(self, message: str, *, method: Optional[str] = None, url: Optional[str] = None):
        MusterError.__init__(self, message, method=method, url=url)

    def __str__(self) -> str:
        return self.message

    @property
    def transient(self) -> bool:
        return True


_BY_CODE: Dict[str, Type[MusterError]] = {
    cls.error_code.value: cls
    for cls in (
        BadRequest,
        Unauthorized,
        Forbidden,
        NotFound,
        MethodNotAllowed,
        Conflict,
        PayloadTooLarge,
        UnsupportedMediaType,
        InvalidField,
        # Before TooManyRequests, which a bare 429 without a code maps to.
        BudgetExceeded,
        TooManyRequests,
        BadGateway,
        Unavailable,
        InternalError,
    )
    if cls.error_code is not None
}

_BY_STATUS: Dict[int, Type[MusterError]] = {
    cls.error_code.http_status: cls for cls in _BY_CODE.values() if cls.error_code is not None
}


def error_for(
    status: int,
    code: Optional[str],
    message: str,
    *,
    method: Optional[str] = None,
    url: Optional[str] = None,
) -> MusterError:
    """The exception for an error answer: by its code, else by its HTTP status."""
    cls = _BY_CODE.get(code or "") or _BY_STATUS.get(status)
    if cls is None:
        cls = InternalError if status >= 500 else MusterError
    known: Union[ErrorCode, str, None]
    try:
        known = ErrorCode(code) if code is not None else None
    except ValueError:
        known = code
    return cls(message, status=status, code=known, method=method, url=url)
