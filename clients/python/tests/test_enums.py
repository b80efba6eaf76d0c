"""The Python enums must be exactly the server's: compared with its OpenAPI document."""

from __future__ import annotations

from enum import Enum
from typing import Type

import pytest

import muster_client
from muster_client import (
    AgentStatus,
    AttemptOutcome,
    Client,
    ErrorCode,
    LogStream,
    ReportOutcome,
    TaskState,
)
from muster_client.errors import MusterError, error_for

ENUMS = [TaskState, AttemptOutcome, AgentStatus, LogStream, ErrorCode, ReportOutcome]


@pytest.mark.parametrize("enum", ENUMS, ids=lambda e: e.__name__)
def test_enum_matches_the_servers_openapi(client: Client, enum: Type[Enum]) -> None:
    schemas = client.openapi()["components"]["schemas"]
    assert enum.__name__ in schemas, f"the server no longer publishes {enum.__name__}"
    server_values = schemas[enum.__name__]["enum"]
    python_values = [member.value for member in enum]
    assert python_values == server_values, (
        f"{enum.__name__} differs from the server's: only in Python "
        f"{sorted(set(python_values) - set(server_values))}, only on the server "
        f"{sorted(set(server_values) - set(python_values))}"
    )


def test_every_error_code_has_its_exception_and_status() -> None:
    for code in ErrorCode:
        err = error_for(code.http_status, code.value, "x")
        assert type(err) is not MusterError, f"no exception class for {code.value}"
        assert err.code is code and err.status == code.http_status
        assert type(err).error_code is code
        assert type(err).__name__ in muster_client.__all__
    # Without the envelope (a proxy's page), the status decides.
    assert isinstance(error_for(404, None, "Not Found"), muster_client.NotFound)
    assert isinstance(error_for(502, None, "Bad Gateway"), muster_client.BadGateway)
    assert error_for(502, None, "Bad Gateway").transient
    assert isinstance(error_for(500, None, "Server Error"), muster_client.InternalError)
    # A bare 429 is a rate limit; only the code says a budget is spent.
    assert isinstance(error_for(429, None, "Slow down"), muster_client.TooManyRequests)
    # A code from a newer server is kept as text.
    assert error_for(418, "teapot", "short and stout").code == "teapot"


def test_enum_members_are_their_wire_names() -> None:
    assert TaskState.QUEUED == "queued" and str(AttemptOutcome.TIMED_OUT) == "timed_out"
    assert f"{LogStream.SYSTEM}" == "system"
    assert [s for s in TaskState if s.is_final] == [
        TaskState.COMPLETED,
        TaskState.FAILED,
        TaskState.CANCELLED,
    ]
