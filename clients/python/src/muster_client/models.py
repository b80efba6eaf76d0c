"""Wire types of muster's v1 HTTP API, mirroring the `muster-api` crate.

Enums are `str` enums whose values are the names used on the wire, so `TaskState.QUEUED ==
"queued"`. Dataclasses are built from the server's JSON by their `from_json` class methods;
fields the server adds later are ignored, and an enum value this version does not know is
kept as the plain string rather than refused, so an older client keeps working against a
newer server.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from enum import Enum
from typing import Any, Dict, List, Mapping, Optional, Type, TypeVar, Union

__all__ = [
    "TaskState",
    "AttemptOutcome",
    "AgentStatus",
    "LogStream",
    "ErrorCode",
    "Labels",
    "Candidate",
    "Assignment",
    "Attempt",
    "Task",
    "TaskList",
    "Agent",
    "RunningTask",
    "HeartbeatAck",
    "Claim",
    "ClaimBatch",
    "ReportOutcome",
    "Report",
    "ReportResult",
    "SubmitResult",
    "NewLogLine",
    "LogLine",
    "LogPage",
    "Event",
    "Health",
    "CANCEL_HEADER",
    "parse_timestamp",
    "format_timestamp",
]

Labels = Dict[str, str]

#: Header on claim answers (200 and 204) listing, comma-separated, the tasks to stop.
CANCEL_HEADER = "x-muster-cancel"


class _WireEnum(str, Enum):
    """A closed set of names; `str(member)` is the wire name."""

    def __str__(self) -> str:
        return str(self.value)


class TaskState(_WireEnum):
    """Where a task is: `queued → assigned → running → completed`, or `failed`, or `cancelled`."""

    QUEUED = "queued"
    ASSIGNED = "assigned"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_final(self) -> bool:
        """A final state never changes again (except by an operator's retry)."""
        return self in (TaskState.COMPLETED, TaskState.FAILED, TaskState.CANCELLED)


class AttemptOutcome(_WireEnum):
    """How one attempt of a task ended."""

    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    #: The attempt ran past the task's `timeout_s`.
    TIMED_OUT = "timed_out"
    #: The agent stopped heartbeating, its lease expired, or it was removed.
    LOST = "lost"
    CANCELLED = "cancelled"


class AgentStatus(_WireEnum):
    """An agent's standing in the registry."""

    ONLINE = "online"
    OFFLINE = "offline"
    #: Online but takes no new tasks.
    DRAINING = "draining"


class LogStream(_WireEnum):
    """Which output a log line came from."""

    STDOUT = "stdout"
    STDERR = "stderr"
    #: Lines the runtime itself writes (start, exit, cancellation).
    SYSTEM = "system"


class ErrorCode(_WireEnum):
    """Stable machine-readable error codes; the HTTP status follows from the code."""

    BAD_REQUEST = "bad_request"
    UNAUTHORIZED = "unauthorized"
    FORBIDDEN = "forbidden"
    NOT_FOUND = "not_found"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    CONFLICT = "conflict"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    INVALID_FIELD = "invalid_field"
    TOO_MANY_REQUESTS = "too_many_requests"
    BUDGET_EXCEEDED = "budget_exceeded"
    BAD_GATEWAY = "bad_gateway"
    UNAVAILABLE = "unavailable"
    INTERNAL = "internal"

    @property
    def http_status(self) -> int:
        """The HTTP status code that carries this error."""
        return _ERROR_STATUS[self]


_ERROR_STATUS = {
    ErrorCode.BAD_REQUEST: 400,
    ErrorCode.UNAUTHORIZED: 401,
    ErrorCode.FORBIDDEN: 403,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.METHOD_NOT_ALLOWED: 405,
    ErrorCode.CONFLICT: 409,
    ErrorCode.PAYLOAD_TOO_LARGE: 413,
    ErrorCode.UNSUPPORTED_MEDIA_TYPE: 415,
    ErrorCode.INVALID_FIELD: 422,
    ErrorCode.TOO_MANY_REQUESTS: 429,
    ErrorCode.BUDGET_EXCEEDED: 429,
    ErrorCode.BAD_GATEWAY: 502,
    ErrorCode.UNAVAILABLE: 503,
    ErrorCode.INTERNAL: 500,
}

E = TypeVar("E", bound=_WireEnum)


def _enum(cls: Type[E], value: Any) -> E:
    try:
        return cls(value)
    except ValueError:
        # A name from a newer server: keep it readable instead of failing the whole response.
        return value  # type: ignore[no-any-return]


def _opt_enum(cls: Type[E], value: Any) -> Optional[E]:
    return None if value is None else _enum(cls, value)


# ---------------------------------------------------------------------------------------------
# Timestamps

_TS = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:[.,](\d+))?"
    r"(?:([Zz])|([+-])(\d{2}):?(\d{2}))$"
)


def parse_timestamp(text: str) -> datetime:
    """Parses an RFC 3339 timestamp into an aware `datetime` (any number of fraction digits,
    `Z` or an offset), which `datetime.fromisoformat` before Python 3.11 cannot do."""
    m = _TS.match(text.strip())
    if not m:
        raise ValueError(f"not an RFC 3339 timestamp: {text!r}")
    year, month, day, hour, minute, second = (int(m.group(i)) for i in range(1, 7))
    micros = int((m.group(7) or "0")[:6].ljust(6, "0"))
    if m.group(8):
        tz = timezone.utc
    else:
        offset = timedelta(hours=int(m.group(10)), minutes=int(m.group(11)))
        tz = timezone(-offset if m.group(9) == "-" else offset)
    return datetime(year, month, day, hour, minute, second, micros, tzinfo=tz)


def _opt_ts(value: Optional[str]) -> Optional[datetime]:
    return None if value is None else parse_timestamp(value)


def format_timestamp(when: datetime) -> str:
    """Formats an aware `datetime` as RFC 3339 UTC with milliseconds (`...T12:00:00.000Z`)."""
    if when.tzinfo is None or when.tzinfo.utcoffset(when) is None:
        raise ValueError(
            "timestamps must be timezone-aware, e.g. datetime.now(timezone.utc); "
            f"got the naive {when.isoformat()}"
        )
    utc = when.astimezone(timezone.utc)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


# ---------------------------------------------------------------------------------------------
# Tasks


@dataclass
class Candidate:
    """One scored candidate of an assignment."""

    agent_id: str
    score: float
    active: int
    cpu_percent: float
    memory_percent: float

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Candidate:
        return cls(
            agent_id=d["agent_id"],
            score=float(d["score"]),
            active=int(d["active"]),
            cpu_percent=float(d["cpu_percent"]),
            memory_percent=float(d["memory_percent"]),
        )


@dataclass
class Assignment:
    """Why a task went to its agent: the eligible agents and their scores, best first."""

    agent_id: str
    assigned_at: datetime
    candidates: List[Candidate]

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Assignment:
        return cls(
            agent_id=d["agent_id"],
            assigned_at=parse_timestamp(d["assigned_at"]),
            candidates=[Candidate.from_json(c) for c in d.get("candidates") or []],
        )


def _opt_assignment(d: Optional[Mapping[str, Any]]) -> Optional[Assignment]:
    return None if d is None else Assignment.from_json(d)


@dataclass
class Attempt:
    """One attempt at running a task."""

    attempt: int
    agent_id: str
    started_at: datetime
    ended_at: Optional[datetime]
    outcome: AttemptOutcome
    error: Optional[str]
    assignment: Optional[Assignment]

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Attempt:
        return cls(
            attempt=int(d["attempt"]),
            agent_id=d["agent_id"],
            started_at=parse_timestamp(d["started_at"]),
            ended_at=_opt_ts(d.get("ended_at")),
            outcome=_enum(AttemptOutcome, d["outcome"]),
            error=d.get("error"),
            assignment=_opt_assignment(d.get("assignment")),
        )


@dataclass
class Task:
    """A task. `attempts` is filled by `Client.get_task` and left empty in lists."""

    id: str
    kind: str
    state: TaskState
    payload: Any
    capabilities: List[str]
    priority: int
    max_retries: int
    timeout_s: Optional[int]
    lock_key: Optional[str]
    idempotency_key: Optional[str]
    run_after: Optional[datetime]
    labels: Labels
    #: The current attempt's number (0 before the first claim); reports must carry it.
    attempt: int
    agent_id: Optional[str]
    cancel_requested: bool
    created_at: datetime
    updated_at: datetime
    finished_at: Optional[datetime]
    result: Any
    usage: Any
    error: Optional[str]
    assignment: Optional[Assignment]
    attempts: List[Attempt] = field(default_factory=list)

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Task:
        return cls(
            id=d["id"],
            kind=d["kind"],
            state=_enum(TaskState, d["state"]),
            payload=d.get("payload"),
            capabilities=list(d.get("capabilities") or []),
            priority=int(d.get("priority", 0)),
            max_retries=int(d.get("max_retries", 0)),
            timeout_s=d.get("timeout_s"),
            lock_key=d.get("lock_key"),
            idempotency_key=d.get("idempotency_key"),
            run_after=_opt_ts(d.get("run_after")),
            labels=dict(d.get("labels") or {}),
            attempt=int(d.get("attempt", 0)),
            agent_id=d.get("agent_id"),
            cancel_requested=bool(d.get("cancel_requested", False)),
            created_at=parse_timestamp(d["created_at"]),
            updated_at=parse_timestamp(d["updated_at"]),
            finished_at=_opt_ts(d.get("finished_at")),
            result=d.get("result"),
            usage=d.get("usage"),
            error=d.get("error"),
            assignment=_opt_assignment(d.get("assignment")),
            attempts=[Attempt.from_json(a) for a in d.get("attempts") or []],
        )


@dataclass
class TaskList:
    """A page of `GET /api/v1/tasks`, newest first; pass `next_cursor` back for the next."""

    tasks: List[Task]
    next_cursor: Optional[str]

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> TaskList:
        return cls(
            tasks=[Task.from_json(t) for t in d.get("tasks") or []],
            next_cursor=d.get("next_cursor"),
        )


# ---------------------------------------------------------------------------------------------
# Agents


@dataclass
class Agent:
    """One agent as the registry knows it."""

    agent_id: str
    host: str
    port: Optional[int]
    capabilities: List[str]
    mcp_servers: List[Any]
    max_concurrency: int
    labels: Labels
    version: Optional[str]
    status: AgentStatus
    registered_at: datetime
    last_heartbeat_at: Optional[datetime]
    cpu_percent: Optional[float]
    memory_percent: Optional[float]
    #: Tasks assigned to or running on this agent, by the server's own count.
    active_tasks: int
    #: The process that registered last, when the agent sends one.
    instance_id: Optional[str] = None
    #: The task kinds it handles; empty: any.
    kinds: List[str] = field(default_factory=list)
    #: While drained: "operator" (until undrained) or "agent" (its own, until it restarts).
    drained_by: Optional[str] = None

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Agent:
        return cls(
            agent_id=d["agent_id"],
            host=d.get("host", ""),
            port=d.get("port"),
            capabilities=list(d.get("capabilities") or []),
            mcp_servers=list(d.get("mcp_servers") or []),
            max_concurrency=int(d.get("max_concurrency", 1)),
            labels=dict(d.get("labels") or {}),
            version=d.get("version"),
            status=_enum(AgentStatus, d["status"]),
            registered_at=parse_timestamp(d["registered_at"]),
            last_heartbeat_at=_opt_ts(d.get("last_heartbeat_at")),
            cpu_percent=d.get("cpu_percent"),
            memory_percent=d.get("memory_percent"),
            active_tasks=int(d.get("active_tasks", 0)),
            instance_id=d.get("instance_id"),
            kinds=list(d.get("kinds") or []),
            drained_by=d.get("drained_by"),
        )


@dataclass(frozen=True)
class RunningTask:
    """A task the agent believes it is running, sent with heartbeats."""

    task_id: str
    attempt: int

    def to_json(self) -> Dict[str, Any]:
        return {"task_id": self.task_id, "attempt": self.attempt}


@dataclass
class HeartbeatAck:
    """The answer to a heartbeat: the agent's status and the tasks it must stop."""

    status: AgentStatus
    cancel: List[str]

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> HeartbeatAck:
        return cls(status=_enum(AgentStatus, d["status"]), cancel=list(d.get("cancel") or []))


@dataclass
class Claim:
    """The answer to a claim: a task (now `running`, with its `attempt`) or none, and the
    running tasks the server wants stopped (the `x-muster-cancel` header)."""

    task: Optional[Task]
    cancel: List[str]


@dataclass
class ClaimBatch:
    """The answer to a batch claim: the tasks claimed (each now `running` with its `attempt`;
    empty when none came within the wait) and the running tasks the server wants stopped."""

    tasks: List[Task]
    cancel: List[str]

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> ClaimBatch:
        return cls(
            tasks=[Task.from_json(t) for t in d.get("tasks") or []],
            cancel=list(d.get("cancel") or []),
        )


class ReportOutcome(_WireEnum):
    """How the attempt a report speaks of ended."""

    COMPLETED = "completed"
    FAILED = "failed"


@dataclass
class Report:
    """One report of a batch: the end of one attempt, as `complete` or `fail` take it. Build
    one with `Report.completed(...)` or `Report.failed(...)`."""

    task_id: str
    attempt: int
    outcome: ReportOutcome
    result: Any = None
    usage: Any = None
    error: Optional[str] = None
    retryable: bool = True

    @classmethod
    def completed(cls, task_id: str, attempt: int, result: Any = None, usage: Any = None) -> Report:
        return cls(task_id, attempt, ReportOutcome.COMPLETED, result=result, usage=usage)

    @classmethod
    def failed(cls, task_id: str, attempt: int, error: str, retryable: bool = True) -> Report:
        return cls(task_id, attempt, ReportOutcome.FAILED, error=error, retryable=retryable)

    def to_json(self) -> Dict[str, Any]:
        body: Dict[str, Any] = {
            "task_id": str(self.task_id),
            "attempt": int(self.attempt),
            "outcome": str(ReportOutcome(self.outcome)),
        }
        if self.outcome == ReportOutcome.COMPLETED:
            body["result"] = self.result
            if self.usage is not None:
                body["usage"] = self.usage
        else:
            body["error"] = self.error if self.error is not None else ""
            body["retryable"] = bool(self.retryable)
        return body


@dataclass
class ReportResult:
    """How one report of a batch was judged: `status` is what the single route would have
    answered (200 applied, 404 no such task, 409 a stale attempt, 422 invalid), `error` the
    server's message when it is not 200."""

    task_id: Optional[str]
    status: int
    error: Optional[str] = None

    @property
    def ok(self) -> bool:
        return self.status == 200

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> ReportResult:
        return cls(task_id=d.get("task_id"), status=int(d["status"]), error=d.get("error"))


@dataclass
class SubmitResult:
    """How one submission of a batch was judged: `status` 201 (queued), 200 (its idempotency
    key named an existing task, which is `task`) or 422 (refused: `error` says why)."""

    status: int
    task: Optional[Task] = None
    error: Optional[str] = None

    @property
    def created(self) -> bool:
        return self.status == 201

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> SubmitResult:
        task = d.get("task")
        return cls(
            status=int(d["status"]),
            task=Task.from_json(task) if task else None,
            error=d.get("error"),
        )


# ---------------------------------------------------------------------------------------------
# Logs


@dataclass
class NewLogLine:
    """One line of output, as an agent sends it; `ts` defaults to the server's receipt time."""

    text: str
    stream: LogStream = LogStream.STDOUT
    ts: Optional[datetime] = None

    def to_json(self) -> Dict[str, Any]:
        body: Dict[str, Any] = {"stream": str(LogStream(self.stream)), "text": self.text}
        if self.ts is not None:
            body["ts"] = format_timestamp(self.ts)
        return body


@dataclass
class LogLine:
    """One stored log line; `id` orders lines and resumes a follower."""

    id: int
    attempt: int
    ts: datetime
    stream: LogStream
    text: str

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> LogLine:
        return cls(
            id=int(d["id"]),
            attempt=int(d["attempt"]),
            ts=parse_timestamp(d["ts"]),
            stream=_enum(LogStream, d["stream"]),
            text=d["text"],
        )


@dataclass
class LogPage:
    """A page of a task's logs; pass `next_after` as `after` to read on (None at the end)."""

    lines: List[LogLine]
    next_after: Optional[int]

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> LogPage:
        return cls(
            lines=[LogLine.from_json(line) for line in d.get("lines") or []],
            next_after=d.get("next_after"),
        )


# ---------------------------------------------------------------------------------------------
# Events and health


@dataclass
class Event:
    """One event of `GET /api/v1/events`: `kind` is `task`, `agent`, `incident`, `canary` or
    `resync` (reload state, then go on). `id` resumes the stream (`last_event_id`); a resync has
    none. An incident event's `state` is the incident's (`open`, `deciding`, …), kept as text;
    a canary event names the `canary`, its `run` and the run's `outcome` (`running`, `passed`,
    `failed`, `interrupted`), as text."""

    kind: str
    id: Optional[str] = None
    task_id: Optional[str] = None
    #: A task's state; an incident event's state as text.
    state: Optional[Union[TaskState, str]] = None
    agent_id: Optional[str] = None
    attempt: Optional[int] = None
    status: Optional[AgentStatus] = None
    incident_id: Optional[str] = None
    canary: Optional[str] = None
    run: Optional[str] = None
    outcome: Optional[str] = None

    @classmethod
    def from_json(cls, d: Mapping[str, Any], event_id: Optional[str] = None) -> Event:
        kind = d.get("kind", "")
        return cls(
            kind=kind,
            id=event_id,
            task_id=d.get("task_id"),
            state=d.get("state") if kind == "incident" else _opt_enum(TaskState, d.get("state")),
            agent_id=d.get("agent_id"),
            attempt=d.get("attempt"),
            status=_opt_enum(AgentStatus, d.get("status")),
            incident_id=d.get("incident_id"),
            canary=d.get("canary"),
            run=d.get("run"),
            outcome=d.get("outcome"),
        )


@dataclass
class Health:
    """`GET /health`."""

    status: str
    db: str
    version: str
    uptime_s: int

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Health:
        return cls(
            status=d["status"], db=d["db"], version=d["version"], uptime_s=int(d["uptime_s"])
        )


LogLineInput = Union[NewLogLine, str, Mapping[str, Any]]
