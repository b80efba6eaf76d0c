"""`Client`: one typed method per route of muster's v1 HTTP API."""

from __future__ import annotations

import json
import ssl
import time
from datetime import datetime
from typing import Any, Dict, Iterable, Iterator, List, Mapping, Optional, Tuple, TypeVar, Union

from . import __version__
from ._http import Channel, Transport, segment
from .errors import MusterError
from .models import (
    CANCEL_HEADER,
    Agent,
    Claim,
    ClaimBatch,
    Event,
    Health,
    HeartbeatAck,
    LogLine,
    LogLineInput,
    LogPage,
    LogStream,
    NewLogLine,
    Report,
    ReportResult,
    RunningTask,
    SubmitResult,
    Task,
    TaskList,
    TaskState,
)

__all__ = ["Client"]

RunningInput = Union[RunningTask, Tuple[str, int], Mapping[str, Any]]
ReportInput = Union[Report, Mapping[str, Any]]

#: Most tasks one batch claim may ask for, reports one request may carry, and tasks one bulk
#: submit may carry (the server's `muster_api::limits`).
MAX_CLAIM_BATCH = 100
MAX_REPORT_BATCH = 100
MAX_SUBMIT_BATCH = 1000


class Client:
    """A typed, thread-safe client of muster's v1 HTTP API.

    `url` is the server's base URL (`http://muster.lan:8000`); `api_key` is sent as
    `Authorization: Bearer <key>` (the admin key, or the agent key for agent routes);
    `timeout` bounds each request in seconds (a long-poll claim adds its wait to it).

    Every method raises a `MusterError` subclass named after the API's error code
    (`NotFound`, `Conflict`, `InvalidField` …), or `MusterConnectionError` when the server
    cannot be reached. Each thread keeps one connection alive, so a client may be shared.
    """

    def __init__(
        self,
        url: str,
        api_key: Optional[str] = None,
        timeout: float = 30.0,
        *,
        ssl_context: Optional[ssl.SSLContext] = None,
        user_agent: Optional[str] = None,
    ) -> None:
        self._http = Transport(
            url,
            api_key=api_key,
            timeout=timeout,
            user_agent=user_agent or f"muster-client-python/{__version__}",
            ssl_context=ssl_context,
        )

    @property
    def url(self) -> str:
        """The base URL every route is relative to."""
        return self._http.base_url

    @property
    def timeout(self) -> float:
        return self._http.timeout

    def close(self) -> None:
        """Closes the calling thread's kept-alive connection."""
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Client({self.url!r})"

    # -- operations ---------------------------------------------------------------------------

    def health(self) -> Health:
        """`GET /health`. A store that is down answers 503, raised as `Unavailable`."""
        return Health.from_json(self._http.request("GET", "/health").json())

    def metrics(self) -> str:
        """`GET /metrics`: the Prometheus text format."""
        return self._http.request("GET", "/metrics").body.decode("utf-8")

    def openapi(self) -> Dict[str, Any]:
        """`GET /api/v1/openapi.json`: the OpenAPI document of the whole contract."""
        doc: Dict[str, Any] = self._http.request("GET", "/api/v1/openapi.json").json()
        return doc

    # -- agent routes -------------------------------------------------------------------------

    def register(
        self,
        agent_id: str,
        *,
        host: str = "",
        port: Optional[int] = None,
        capabilities: Iterable[str] = (),
        mcp_servers: Iterable[Any] = (),
        max_concurrency: Optional[int] = None,
        labels: Optional[Mapping[str, str]] = None,
        version: Optional[str] = None,
        instance_id: Optional[str] = None,
        kinds: Iterable[str] = (),
    ) -> Agent:
        """`POST /api/v1/agents/register`; registering again updates the agent. `instance_id`
        is a random id drawn once per agent process: a registration with a new one tells the
        server the agent restarted, so its earlier tasks go back to the queue at once. `kinds`
        lists the task kinds it handles (none: any); others are never routed to it."""
        body: Dict[str, Any] = {
            "agent_id": agent_id,
            "host": host,
            "capabilities": list(capabilities),
            "mcp_servers": list(mcp_servers),
            "labels": dict(labels or {}),
        }
        if port is not None:
            body["port"] = port
        if max_concurrency is not None:
            body["max_concurrency"] = max_concurrency
        if version is not None:
            body["version"] = version
        if instance_id is not None:
            body["instance_id"] = instance_id
        kinds = list(kinds)
        if kinds:
            body["kinds"] = kinds
        return Agent.from_json(
            self._http.request("POST", "/api/v1/agents/register", body=body).json()
        )

    def heartbeat(
        self,
        agent_id: str,
        *,
        cpu_percent: float = 0.0,
        memory_percent: float = 0.0,
        active_tasks: int = 0,
        running: Optional[Iterable[RunningInput]] = None,
    ) -> HeartbeatAck:
        """`POST /api/v1/agents/{id}/heartbeat`. With `running` (the attempts the agent runs),
        only those leases are extended and any that is no longer current comes back in
        `cancel`. Raises `NotFound` when the agent must register again."""
        body: Dict[str, Any] = {
            "cpu_percent": float(cpu_percent),
            "memory_percent": float(memory_percent),
            "active_tasks": int(active_tasks),
        }
        if running is not None:
            body["running"] = [_running(r) for r in running]
        path = f"/api/v1/agents/{segment(agent_id)}/heartbeat"
        return HeartbeatAck.from_json(self._http.request("POST", path, body=body).json())

    def claim(self, agent_id: str, wait: float = 0, *, _channel: Optional[Channel] = None) -> Claim:
        """`GET /api/v1/agents/{id}/tasks/next?wait=S`: long-polls up to `wait` seconds (at most
        120) for a task assigned to the agent. The claimed task comes back `running` with its
        `attempt`; `Claim.cancel` lists running tasks the server wants stopped. Raises
        `NotFound` when the agent must register again."""
        seconds = max(0, int(wait))
        path = f"/api/v1/agents/{segment(agent_id)}/tasks/next"
        resp = self._http.request(
            "GET",
            path,
            query={"wait": seconds},
            timeout=self.timeout + seconds,
            channel=_channel,
        )
        cancel = [x.strip() for x in resp.headers.get(CANCEL_HEADER, "").split(",") if x.strip()]
        task = Task.from_json(resp.json()) if resp.status == 200 and resp.body else None
        return Claim(task=task, cancel=cancel)

    next_task = claim

    def claim_many(
        self,
        agent_id: str,
        max_tasks: int = 1,
        wait: float = 0,
        *,
        _channel: Optional[Channel] = None,
    ) -> ClaimBatch:
        """`GET /api/v1/agents/{id}/tasks/claim?wait=S&max=N`: long-polls up to `wait` seconds
        (at most 120) for up to `max_tasks` (1 to 100) tasks assigned to the agent, answering as
        soon as one is claimed. Each comes back `running` with its `attempt`; `cancel` lists
        running tasks the server wants stopped. Raises `NotFound` when the agent must register
        again."""
        seconds = max(0, int(wait))
        path = f"/api/v1/agents/{segment(agent_id)}/tasks/claim"
        resp = self._http.request(
            "GET",
            path,
            query={"wait": seconds, "max": int(max_tasks)},
            timeout=self.timeout + seconds,
            channel=_channel,
        )
        return ClaimBatch.from_json(resp.json())

    def report_many(self, agent_id: str, reports: Iterable[ReportInput]) -> List[ReportResult]:
        """`POST /api/v1/agents/{id}/reports`: the ends of many attempts (at most 100, each a
        `Report` or its JSON) in one request and one commit. Each is judged alone: the results,
        in order, carry the status the single route would have answered (a stale attempt is
        409 and changes nothing; the others are applied). Raises `NotFound` when the agent
        must register again."""
        body = {"reports": [r.to_json() if isinstance(r, Report) else dict(r) for r in reports]}
        path = f"/api/v1/agents/{segment(agent_id)}/reports"
        data = self._http.request("POST", path, body=body).json()
        return _one_each(
            [ReportResult.from_json(r) for r in data.get("results") or []], len(body["reports"])
        )

    def append_logs(self, task_id: str, attempt: int, lines: Iterable[LogLineInput]) -> int:
        """`POST /api/v1/tasks/{id}/logs`; returns how many lines were stored. Lines are
        `NewLogLine`s, plain strings (stdout) or dicts. Raises `Conflict` for a stale attempt."""
        body = {"attempt": attempt, "lines": [_log_line(line) for line in lines]}
        resp = self._http.request("POST", f"/api/v1/tasks/{segment(task_id)}/logs", body=body)
        return int(resp.json().get("accepted", 0))

    def complete(self, task_id: str, attempt: int, result: Any = None, usage: Any = None) -> Task:
        """`POST /api/v1/tasks/{id}/complete`. Raises `Conflict` for a stale attempt."""
        body: Dict[str, Any] = {"attempt": attempt, "result": result}
        if usage is not None:
            body["usage"] = usage
        path = f"/api/v1/tasks/{segment(task_id)}/complete"
        return Task.from_json(self._http.request("POST", path, body=body).json())

    def fail(self, task_id: str, attempt: int, error: str, retryable: bool = True) -> Task:
        """`POST /api/v1/tasks/{id}/fail`: a retryable failure is queued again while retries
        remain. Raises `Conflict` for a stale attempt."""
        body = {"attempt": attempt, "error": error, "retryable": retryable}
        path = f"/api/v1/tasks/{segment(task_id)}/fail"
        return Task.from_json(self._http.request("POST", path, body=body).json())

    # -- registry (admin) ---------------------------------------------------------------------

    def list_agents(self) -> List[Agent]:
        """`GET /api/v1/agents`."""
        data = self._http.request("GET", "/api/v1/agents").json()
        return [Agent.from_json(a) for a in data.get("agents") or []]

    def get_agent(self, agent_id: str) -> Agent:
        """`GET /api/v1/agents/{id}`."""
        return Agent.from_json(
            self._http.request("GET", f"/api/v1/agents/{segment(agent_id)}").json()
        )

    def drain_agent(self, agent_id: str, *, instance_id: Optional[str] = None) -> Agent:
        """`POST /api/v1/agents/{id}/drain`: the agent keeps its tasks but takes no new ones.
        Without `instance_id` it is an operator's drain (admin key), lasting until undrained;
        an agent process drains itself by naming its own `instance_id` (agent key)."""
        path = f"/api/v1/agents/{segment(agent_id)}/drain"
        body = {"instance_id": instance_id} if instance_id is not None else None
        return Agent.from_json(self._http.request("POST", path, body=body).json())

    def undrain_agent(self, agent_id: str) -> Agent:
        """`POST /api/v1/agents/{id}/undrain`: a drained agent takes tasks again."""
        path = f"/api/v1/agents/{segment(agent_id)}/undrain"
        return Agent.from_json(self._http.request("POST", path).json())

    def remove_agent(self, agent_id: str) -> None:
        """`DELETE /api/v1/agents/{id}`: its tasks go back to the queue."""
        self._http.request("DELETE", f"/api/v1/agents/{segment(agent_id)}")

    # -- tasks (admin) ------------------------------------------------------------------------

    def submit(
        self,
        kind: str,
        payload: Any = None,
        *,
        capabilities: Iterable[str] = (),
        priority: int = 0,
        max_retries: Optional[int] = None,
        timeout_s: Optional[int] = None,
        lock_key: Optional[str] = None,
        idempotency_key: Optional[str] = None,
        run_after: Optional[datetime] = None,
        labels: Optional[Mapping[str, str]] = None,
    ) -> Task:
        """`POST /api/v1/tasks`: queues a task once it is on disk. With an `idempotency_key`
        already used, the first task comes back instead of a new one."""
        body = _task_body(
            kind,
            payload,
            capabilities=capabilities,
            priority=priority,
            max_retries=max_retries,
            timeout_s=timeout_s,
            lock_key=lock_key,
            idempotency_key=idempotency_key,
            run_after=run_after,
            labels=labels,
        )
        return Task.from_json(self._http.request("POST", "/api/v1/tasks", body=body).json())

    def submit_many(self, tasks: Iterable[Mapping[str, Any]]) -> List[SubmitResult]:
        """`POST /api/v1/tasks/batch`: many tasks (at most 1000) in one request and one commit.
        Each is a mapping of `submit`'s arguments (`{"kind": "backup", "payload": {...},
        "idempotency_key": "nightly"}`) and is judged alone: the results, in order, are 201
        (queued), 200 (its idempotency key named an existing task) or 422 (refused, with the
        server's message); a refused one does not stop the others."""
        body = {"tasks": [_task_body(**dict(t)) for t in tasks]}
        data = self._http.request("POST", "/api/v1/tasks/batch", body=body).json()
        return _one_each(
            [SubmitResult.from_json(r) for r in data.get("results") or []], len(body["tasks"])
        )

    def list_tasks(
        self,
        *,
        state: Union[TaskState, str, None] = None,
        kind: Optional[str] = None,
        agent_id: Optional[str] = None,
        limit: Optional[int] = None,
        cursor: Optional[str] = None,
    ) -> TaskList:
        """`GET /api/v1/tasks`: one page, newest first; `next_cursor` reads the next."""
        query = {
            "state": state,
            "kind": kind,
            "agent_id": agent_id,
            "limit": limit,
            "cursor": cursor,
        }
        return TaskList.from_json(self._http.request("GET", "/api/v1/tasks", query=query).json())

    def iter_tasks(
        self,
        *,
        state: Union[TaskState, str, None] = None,
        kind: Optional[str] = None,
        agent_id: Optional[str] = None,
        page_size: int = 100,
    ) -> Iterator[Task]:
        """Every matching task, newest first, following the cursor page by page."""
        cursor: Optional[str] = None
        while True:
            page = self.list_tasks(
                state=state, kind=kind, agent_id=agent_id, limit=page_size, cursor=cursor
            )
            yield from page.tasks
            if not page.next_cursor:
                return
            cursor = page.next_cursor

    def get_task(self, task_id: str) -> Task:
        """`GET /api/v1/tasks/{id}`: the task with every attempt."""
        return Task.from_json(self._http.request("GET", f"/api/v1/tasks/{segment(task_id)}").json())

    def cancel_task(self, task_id: str) -> Task:
        """`POST /api/v1/tasks/{id}/cancel`: a queued task is cancelled at once; a running
        one's agent is told to stop. Raises `Conflict` when the task already finished."""
        path = f"/api/v1/tasks/{segment(task_id)}/cancel"
        return Task.from_json(self._http.request("POST", path).json())

    def retry_task(self, task_id: str) -> Task:
        """`POST /api/v1/tasks/{id}/retry`: queues a failed or cancelled task again."""
        path = f"/api/v1/tasks/{segment(task_id)}/retry"
        return Task.from_json(self._http.request("POST", path).json())

    def wait_for_task(
        self, task_id: str, timeout: Optional[float] = None, poll_interval: float = 0.5
    ) -> Task:
        """Polls a task until it is final (completed, failed or cancelled) and returns it.
        Raises `TimeoutError` when `timeout` seconds pass first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            task = self.get_task(task_id)
            if task.state in (TaskState.COMPLETED, TaskState.FAILED, TaskState.CANCELLED):
                return task
            pause = poll_interval
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"task {task_id} is still {task.state} after {timeout:g}s")
                pause = min(pause, left)
            time.sleep(pause)

    def task_logs(
        self, task_id: str, *, after: Optional[int] = None, limit: Optional[int] = None
    ) -> LogPage:
        """`GET /api/v1/tasks/{id}/logs` as JSON: lines with an id above `after`."""
        resp = self._http.request(
            "GET",
            f"/api/v1/tasks/{segment(task_id)}/logs",
            query={"after": after, "limit": limit},
        )
        return LogPage.from_json(resp.json())

    def all_task_logs(self, task_id: str) -> List[LogLine]:
        """Every stored line of a task, reading page after page."""
        lines: List[LogLine] = []
        after: Optional[int] = None
        while True:
            page = self.task_logs(task_id, after=after, limit=5000)
            lines.extend(page.lines)
            if page.next_after is None:
                return lines
            after = page.next_after

    def follow_logs(
        self, task_id: str, *, after: Optional[int] = None, timeout: Optional[float] = 60.0
    ) -> Iterator[LogLine]:
        """Follows a task's logs live (SSE) and ends when the task ends. `after` resumes
        after a line id. `timeout` bounds the silence between two events (the server sends a
        keep-alive every 15 s); None waits for ever. The stream is open when this returns."""
        headers = {"Accept": "text/event-stream"}
        if after is not None:
            headers["Last-Event-ID"] = str(after)
        stream = self._sse(f"/api/v1/tasks/{segment(task_id)}/logs", headers, timeout)

        def lines() -> Iterator[LogLine]:
            with stream:
                for name, _id, data in stream:
                    if name == "line":
                        yield LogLine.from_json(json.loads(data))
                    elif name == "end":
                        return

        return lines()

    def events(
        self, *, last_event_id: Optional[str] = None, timeout: Optional[float] = None
    ) -> Iterator[Event]:
        """Follows `GET /api/v1/events` (SSE): task and agent events as they happen; the
        stream is open (subscribed) when this returns. Pass the last seen `Event.id` as
        `last_event_id` to resume; a `resync` event means: reload state, then go on."""
        headers = {"Accept": "text/event-stream"}
        if last_event_id is not None:
            headers["Last-Event-ID"] = last_event_id
        stream = self._sse("/api/v1/events", headers, timeout)

        def events() -> Iterator[Event]:
            with stream:
                for name, event_id, data in stream:
                    payload = json.loads(data) if data else {}
                    payload.setdefault("kind", name)
                    yield Event.from_json(payload, event_id)

        return events()

    def _sse(self, path: str, headers: Dict[str, str], timeout: Optional[float]) -> _SseStream:
        conn, resp = self._http.open_stream(path, headers=headers, timeout=timeout)
        return _SseStream(conn, resp)


class _SseStream:
    """Server-sent events of one open response, as (event name, id, data) triples."""

    def __init__(self, conn: Any, resp: Any) -> None:
        self._conn = conn
        self._resp = resp

    def __enter__(self) -> _SseStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self._conn.close()

    def __iter__(self) -> Iterator[Tuple[str, Optional[str], str]]:
        name = "message"
        event_id: Optional[str] = None
        data: List[str] = []
        while True:
            raw = self._resp.readline()
            if not raw:
                return
            line = raw.decode("utf-8").rstrip("\r\n")
            if not line:
                if data or name != "message":
                    yield name, event_id, "\n".join(data)
                name, event_id, data = "message", None, []
                continue
            if line.startswith(":"):
                continue
            key, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if key == "event":
                name = value
            elif key == "data":
                data.append(value)
            elif key == "id":
                event_id = value


def _task_body(
    kind: str,
    payload: Any = None,
    *,
    capabilities: Iterable[str] = (),
    priority: int = 0,
    max_retries: Optional[int] = None,
    timeout_s: Optional[int] = None,
    lock_key: Optional[str] = None,
    idempotency_key: Optional[str] = None,
    run_after: Optional[datetime] = None,
    labels: Optional[Mapping[str, str]] = None,
) -> Dict[str, Any]:
    """A submission as the server takes it, for `submit` and each task of `submit_many`."""
    body: Dict[str, Any] = {
        "kind": kind,
        "capabilities": list(capabilities),
        "priority": priority,
        "labels": dict(labels or {}),
    }
    optional = {
        "payload": payload,
        "max_retries": max_retries,
        "timeout_s": timeout_s,
        "lock_key": lock_key,
        "idempotency_key": idempotency_key,
        "run_after": run_after,
    }
    body.update({k: v for k, v in optional.items() if v is not None})
    return body


R = TypeVar("R")


def _one_each(results: List[R], sent: int) -> List[R]:
    """A batch answer has one result per item, or the caller would pair them wrongly."""
    if len(results) != sent:
        raise MusterError(f"the server answered {len(results)} results for {sent} items")
    return results


def _running(r: RunningInput) -> Dict[str, Any]:
    if isinstance(r, RunningTask):
        return r.to_json()
    if isinstance(r, tuple):
        return {"task_id": str(r[0]), "attempt": int(r[1])}
    return {"task_id": str(r["task_id"]), "attempt": int(r["attempt"])}


def _log_line(line: LogLineInput) -> Dict[str, Any]:
    if isinstance(line, NewLogLine):
        return line.to_json()
    if isinstance(line, str):
        return {"stream": LogStream.STDOUT.value, "text": line}
    out = dict(line)
    if isinstance(out.get("ts"), datetime):
        out["ts"] = NewLogLine(text="", ts=out["ts"]).to_json()["ts"]
    if isinstance(out.get("stream"), LogStream):
        out["stream"] = out["stream"].value
    return out
