"""The Client against the real server: every route round-trips, errors map to their types."""

from __future__ import annotations

import socket
import threading
import uuid
from datetime import datetime, timedelta, timezone

import pytest

from helpers import wait_for
from muster_client import (
    AgentInfo,
    AgentStatus,
    AttemptOutcome,
    Client,
    Conflict,
    ErrorCode,
    Forbidden,
    InvalidField,
    LogStream,
    MusterConnectionError,
    MusterError,
    NewLogLine,
    NotFound,
    PayloadTooLarge,
    Report,
    RunningTask,
    TaskState,
    Unauthorized,
)
from muster_client.models import parse_timestamp


def test_health_and_metrics(client: Client) -> None:
    health = client.health()
    assert health.status == "ok" and health.db == "ok"
    assert health.version and health.uptime_s >= 0
    assert "muster" in client.metrics()


def test_agent_registry_round_trip(client: Client) -> None:
    agent = client.register(
        "nas",
        host="10.0.0.5",
        port=8080,
        capabilities=["docker", "ansible"],
        mcp_servers=[{"name": "fs"}],
        max_concurrency=3,
        labels={"site": "home"},
        version="1.2.3",
    )
    assert isinstance(agent, AgentInfo)
    assert agent.agent_id == "nas" and agent.host == "10.0.0.5" and agent.port == 8080
    assert agent.capabilities == ["ansible", "docker"]
    assert agent.mcp_servers == [{"name": "fs"}]
    assert agent.max_concurrency == 3 and agent.labels == {"site": "home"}
    assert agent.status is AgentStatus.ONLINE
    assert agent.registered_at.tzinfo is not None

    ack = client.heartbeat("nas", cpu_percent=12.5, memory_percent=40, active_tasks=0, running=[])
    assert ack.status is AgentStatus.ONLINE and ack.cancel == []
    shown = client.get_agent("nas")
    assert shown.cpu_percent == 12.5 and shown.memory_percent == 40
    assert shown.last_heartbeat_at is not None

    # Re-registering updates.
    client.register("nas", host="10.0.0.6", capabilities=["docker"])
    assert client.get_agent("nas").host == "10.0.0.6"

    client.register("pi", capabilities=[])
    assert sorted(a.agent_id for a in client.list_agents()) == ["nas", "pi"]

    drained = client.drain_agent("nas")
    assert drained.status is AgentStatus.DRAINING and drained.drained_by == "operator"
    assert client.heartbeat("nas").status is AgentStatus.DRAINING
    # An operator's drain outlasts a registration; undrain ends it.
    client.register("nas", host="10.0.0.6", capabilities=["docker"], instance_id="p2")
    assert client.get_agent("nas").status is AgentStatus.DRAINING
    undrained = client.undrain_agent("nas")
    assert undrained.status is AgentStatus.ONLINE and undrained.drained_by is None
    assert undrained.instance_id == "p2"

    client.remove_agent("nas")
    with pytest.raises(NotFound) as err:
        client.get_agent("nas")
    assert err.value.status == 404 and err.value.code is ErrorCode.NOT_FOUND
    with pytest.raises(NotFound, match="register again"):
        client.heartbeat("nas")
    with pytest.raises(NotFound, match="register again"):
        client.claim("nas")
    with pytest.raises(NotFound):
        client.remove_agent("nas")
    assert [a.agent_id for a in client.list_agents()] == ["pi"]


def test_agent_id_is_quoted_in_paths(client: Client) -> None:
    client.register("rack 1?x=%", capabilities=[])
    assert client.get_agent("rack 1?x=%").agent_id == "rack 1?x=%"


def test_submit_list_get_and_paging(client: Client) -> None:
    later = datetime.now(timezone.utc) + timedelta(hours=1)
    task = client.submit(
        "deploy",
        {"playbook": "media.yml"},
        capabilities=["ansible"],
        priority=5,
        max_retries=2,
        timeout_s=60,
        lock_key="deploy:media",
        idempotency_key="delivery-1",
        run_after=later,
        labels={"repo": "infra"},
    )
    assert task.state is TaskState.QUEUED and task.attempt == 0
    assert task.kind == "deploy" and task.payload == {"playbook": "media.yml"}
    assert task.capabilities == ["ansible"] and task.priority == 5
    assert task.max_retries == 2 and task.timeout_s == 60
    assert task.lock_key == "deploy:media" and task.idempotency_key == "delivery-1"
    assert task.labels == {"repo": "infra"}
    assert task.run_after is not None and abs((task.run_after - later).total_seconds()) < 0.01
    assert task.created_at.tzinfo is not None and uuid.UUID(task.id)

    # The same idempotency key returns the first task.
    again = client.submit("deploy", {"other": True}, idempotency_key="delivery-1")
    assert again.id == task.id and again.payload == {"playbook": "media.yml"}

    others = [client.submit("probe", {"n": i}) for i in range(3)]
    client.cancel_task(others[0].id)

    assert client.get_task(task.id).id == task.id
    everything = client.list_tasks()
    assert [t.id for t in everything.tasks] == [o.id for o in reversed(others)] + [task.id]
    queued = client.list_tasks(state=TaskState.QUEUED)
    assert {t.id for t in queued.tasks} == {task.id, others[1].id, others[2].id}
    assert all(t.state is TaskState.QUEUED for t in queued.tasks)
    assert [t.id for t in client.list_tasks(state="cancelled").tasks] == [others[0].id]
    assert [t.id for t in client.list_tasks(kind="deploy").tasks] == [task.id]

    first = client.list_tasks(limit=2)
    assert len(first.tasks) == 2 and first.next_cursor
    second = client.list_tasks(limit=2, cursor=first.next_cursor)
    assert [t.id for t in first.tasks + second.tasks] == [t.id for t in everything.tasks]
    assert [t.id for t in client.iter_tasks(page_size=1)] == [t.id for t in everything.tasks]


def test_claim_logs_complete_and_stale_reports(client: Client) -> None:
    client.register("w1", capabilities=["py"], max_concurrency=2)
    task = client.submit("job", {"x": 1}, capabilities=["py"])
    claim = client.claim("w1", wait=5)
    assert claim.task is not None and claim.cancel == []
    running = claim.task
    assert running.id == task.id and running.state is TaskState.RUNNING and running.attempt == 1
    assert running.agent_id == "w1"
    assert running.assignment is not None and running.assignment.agent_id == "w1"
    assert [c.agent_id for c in running.assignment.candidates] == ["w1"]

    stamp = datetime(2030, 1, 2, 3, 4, 5, 678000, tzinfo=timezone.utc)
    accepted = client.append_logs(
        task.id,
        1,
        [
            "plain line",
            NewLogLine("to stderr", stream=LogStream.STDERR),
            NewLogLine("stamped", ts=stamp),
            {"text": "from a dict", "stream": "system"},
        ],
    )
    assert accepted == 4
    page = client.task_logs(task.id)
    assert [(line.stream, line.text) for line in page.lines] == [
        (LogStream.STDOUT, "plain line"),
        (LogStream.STDERR, "to stderr"),
        (LogStream.STDOUT, "stamped"),
        (LogStream.SYSTEM, "from a dict"),
    ]
    assert page.lines[2].ts == stamp and all(line.attempt == 1 for line in page.lines)
    assert page.next_after is None
    tail = client.task_logs(task.id, after=page.lines[1].id, limit=1)
    assert [line.text for line in tail.lines] == ["stamped"] and tail.next_after is not None
    assert [line.text for line in client.all_task_logs(task.id)] == [x.text for x in page.lines]

    done = client.complete(task.id, 1, {"ok": True}, usage={"tokens_in": 10})
    assert done.state is TaskState.COMPLETED and done.result == {"ok": True}
    assert done.usage == {"tokens_in": 10} and done.finished_at is not None

    shown = client.get_task(task.id)
    assert [(a.attempt, a.outcome, a.agent_id) for a in shown.attempts] == [
        (1, AttemptOutcome.COMPLETED, "w1")
    ]
    assert shown.attempts[0].ended_at is not None

    # Reports for an attempt that is not current change nothing.
    with pytest.raises(Conflict) as err:
        client.complete(task.id, 1, {"again": True})
    assert err.value.status == 409 and "not current" in err.value.message
    with pytest.raises(Conflict):
        client.fail(task.id, 1, "late")
    with pytest.raises(Conflict):
        client.append_logs(task.id, 7, ["stale"])
    assert client.get_task(task.id).result == {"ok": True}

    # Nothing to do: 204, no task.
    empty = client.claim("w1", wait=0)
    assert empty.task is None and empty.cancel == []


def test_fail_retry_and_final_failure(client: Client) -> None:
    client.register("w1", capabilities=[])
    task = client.submit("flaky", max_retries=1)
    first = client.claim("w1", wait=5).task
    assert first is not None
    requeued = client.fail(task.id, first.attempt, "boom", retryable=True)
    assert requeued.state is TaskState.QUEUED and requeued.error == "boom"
    second = wait_for(lambda: client.claim("w1", wait=1).task, what="the retry to be claimed")
    assert second.attempt == 2
    failed = client.fail(task.id, 2, "boom again")
    assert failed.state is TaskState.FAILED and failed.error == "boom again"
    outcomes = [a.outcome for a in client.get_task(task.id).attempts]
    assert outcomes == [AttemptOutcome.FAILED, AttemptOutcome.FAILED]

    # An operator's retry queues it again, with fresh retries.
    again = client.retry_task(task.id)
    assert again.state is TaskState.QUEUED and again.error is None
    third = wait_for(lambda: client.claim("w1", wait=1).task, what="the manual retry")
    final = client.fail(task.id, third.attempt, "not this way", retryable=False)
    assert final.state is TaskState.FAILED


def test_cancel_queued_and_running(client: Client) -> None:
    queued = client.submit("never-runs", capabilities=["nobody-has-this"])
    cancelled = client.cancel_task(queued.id)
    assert cancelled.state is TaskState.CANCELLED and cancelled.finished_at is not None
    with pytest.raises(Conflict, match="already cancelled"):
        client.cancel_task(queued.id)
    fresh = client.submit("fresh", capabilities=["nobody-has-this"])
    with pytest.raises(Conflict, match="only failed or cancelled"):
        client.retry_task(fresh.id)
    assert client.retry_task(queued.id).state is TaskState.QUEUED

    client.register("w1", capabilities=["c"], max_concurrency=2)
    task = client.submit("long", capabilities=["c"])
    running = client.claim("w1", wait=5).task
    assert running is not None and running.id == task.id
    asked = client.cancel_task(task.id)
    assert asked.state is TaskState.RUNNING and asked.cancel_requested
    # The agent hears it on its claim (header) and its heartbeat (cancel list).
    assert client.claim("w1", wait=0).cancel == [task.id]
    ack = client.heartbeat("w1", running=[RunningTask(task.id, running.attempt)])
    assert ack.cancel == [task.id]
    ended = client.fail(task.id, running.attempt, "stopped", retryable=False)
    assert ended.state is TaskState.CANCELLED
    assert client.get_task(task.id).attempts[0].outcome is AttemptOutcome.CANCELLED


def test_waiting_claim_is_woken_by_cancel(client: Client) -> None:
    client.register("w1", capabilities=[], max_concurrency=2)
    task = client.submit("long")
    running = client.claim("w1", wait=5).task
    assert running is not None
    got = {}

    def poll() -> None:
        got["claim"] = client.claim("w1", wait=20)

    waiter = threading.Thread(target=poll)
    waiter.start()
    wait_for(lambda: client.get_agent("w1").active_tasks == 1)
    client.cancel_task(task.id)
    waiter.join(10)
    assert not waiter.is_alive(), "the waiting claim was not woken by the cancel"
    assert got["claim"].task is None and got["claim"].cancel == [task.id]


def test_heartbeat_reports_stale_attempts(client: Client) -> None:
    client.register("w1", capabilities=[])
    ghost = str(uuid.uuid4())
    ack = client.heartbeat("w1", running=[(ghost, 1)])
    assert ack.cancel == [ghost]


def test_errors_are_typed(client: Client) -> None:
    with pytest.raises(NotFound) as err:
        client.get_task(str(uuid.uuid4()))
    assert err.value.status == 404

    with pytest.raises(InvalidField) as bad_id:
        client.get_task("not-a-uuid")
    assert bad_id.value.status == 422 and bad_id.value.field == "id"

    with pytest.raises(InvalidField) as empty_kind:
        client.submit("  ")
    assert empty_kind.value.code is ErrorCode.INVALID_FIELD
    assert empty_kind.value.field == "kind" and "kind" in empty_kind.value.message

    with pytest.raises(InvalidField) as bad_timeout:
        client.submit("x", timeout_s=0)
    assert bad_timeout.value.field == "timeout_s"

    with pytest.raises(InvalidField) as bad_state:
        client.list_tasks(state="done")
    assert bad_state.value.field == "state" and "queued" in bad_state.value.message

    with pytest.raises(InvalidField) as bad_limit:
        client.list_tasks(limit=0)
    assert bad_limit.value.field == "limit"

    with pytest.raises(InvalidField) as bad_load:
        client.register("w1")
        client.heartbeat("w1", cpu_percent=150)
    assert bad_load.value.field == "cpu_percent"

    with pytest.raises(InvalidField) as bad_wait:
        client.claim("w1", wait=500)
    assert bad_wait.value.field == "wait"

    with pytest.raises(InvalidField) as bad_agent:
        client.register("")
    assert bad_agent.value.field == "agent_id"

    # Every error is a MusterError carrying status, code and message.
    with pytest.raises(MusterError) as any_err:
        client.get_agent("nobody")
    assert (any_err.value.status, any_err.value.code) == (404, ErrorCode.NOT_FOUND)
    assert "nobody" in str(any_err.value)


def test_an_oversize_body_is_payload_too_large(start_server) -> None:
    client = Client(start_server(BODY_LIMIT="2000").url)
    with pytest.raises(PayloadTooLarge) as err:
        client.submit("big", {"blob": "x" * 5000})
    assert err.value.status == 413 and err.value.code is ErrorCode.PAYLOAD_TOO_LARGE
    assert client.list_tasks().tasks == []


def test_keys_are_required_when_configured(start_server) -> None:
    server = start_server(API_KEY="admin-key", AGENT_KEY="agent-key")
    with pytest.raises(Unauthorized) as missing:
        Client(server.url).list_tasks()
    assert missing.value.status == 401 and missing.value.code is ErrorCode.UNAUTHORIZED
    with pytest.raises(Unauthorized, match="not valid"):
        Client(server.url, api_key="wrong").list_tasks()

    agent = Client(server.url, api_key="agent-key")
    agent.register("w1")
    assert agent.heartbeat("w1").status is AgentStatus.ONLINE
    with pytest.raises(Forbidden) as forbidden:
        agent.list_agents()
    assert forbidden.value.status == 403

    admin = Client(server.url, api_key="admin-key")
    assert [a.agent_id for a in admin.list_agents()] == ["w1"]
    assert admin.submit("x").state is TaskState.QUEUED
    assert Client(server.url).health().status == "ok"  # health needs no key


def test_unreachable_server_names_the_url() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    with pytest.raises(MusterConnectionError) as err:
        Client(url, timeout=2).health()
    assert isinstance(err.value, ConnectionError) and isinstance(err.value, MusterError)
    assert url in str(err.value) and err.value.status is None
    assert err.value.transient


def test_a_server_that_does_not_answer_times_out() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        with pytest.raises(MusterConnectionError, match="did not answer"):
            Client(url, timeout=0.3).health()


def test_follow_logs_and_events(client: Client) -> None:
    client.register("w1", capabilities=[])
    task = client.submit("streamed")
    running = client.claim("w1", wait=5).task
    assert running is not None
    client.append_logs(task.id, 1, ["one", "two"])
    seen = []

    def follow() -> None:
        for line in client.follow_logs(task.id, timeout=10):
            seen.append(line.text)

    follower = threading.Thread(target=follow)
    follower.start()
    wait_for(lambda: seen == ["one", "two"], what="the first two lines")
    client.append_logs(task.id, 1, ["three"])
    client.complete(task.id, 1, None)
    follower.join(10)
    assert not follower.is_alive(), "follow_logs did not end with the task"
    assert seen == ["one", "two", "three"]

    events = client.events(timeout=10)
    client.submit("evented")
    first = next(events)
    assert first.kind in ("task", "resync")
    if first.kind == "resync":
        first = next(events)
    assert first.kind == "task" and first.state is TaskState.QUEUED and first.id


def test_timestamps_parse() -> None:
    assert parse_timestamp("2026-11-22T20:23:22.649Z") == datetime(
        2026, 11, 22, 20, 23, 22, 649000, tzinfo=timezone.utc
    )
    assert parse_timestamp("2026-11-22T20:23:22Z").microsecond == 0
    assert parse_timestamp("2026-11-22T21:23:22.123456789+01:00") == datetime(
        2026, 11, 22, 20, 23, 22, 123456, tzinfo=timezone.utc
    )
    with pytest.raises(ValueError):
        parse_timestamp("yesterday")
    with pytest.raises(ValueError, match="timezone-aware"):
        Client("http://127.0.0.1:1").submit("x", run_after=datetime(2030, 1, 1))


def test_a_restarted_server_is_reached_on_a_fresh_connection(start_server, tmp_path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    first = start_server(ADDR=f"127.0.0.1:{port}", DB_PATH=str(tmp_path / "kept.db"))
    client = Client(first.url, timeout=5)
    task = client.submit("survives")
    first.stop()
    # The kept-alive connection is dead now: the next call reconnects by itself.
    start_server(ADDR=f"127.0.0.1:{port}", DB_PATH=str(tmp_path / "kept.db"))
    assert client.get_task(task.id).state is TaskState.QUEUED


def test_an_answer_that_is_not_json_is_a_clear_error() -> None:
    body = b"<html>not muster</html>"
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"

        def answer() -> None:
            conn, _ = listener.accept()
            with conn:
                conn.recv(65536)
                head = (
                    f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
                )
                conn.sendall(head.encode() + body)

        thread = threading.Thread(target=answer)
        thread.start()
        with pytest.raises(MusterError, match="not JSON.*not muster"):
            Client(url, timeout=5).health()
        thread.join(5)


def test_wait_for_task(client: Client) -> None:
    client.register("w1")
    task = client.submit("quick")
    with pytest.raises(TimeoutError, match="still queued|still assigned"):
        client.wait_for_task(task.id, timeout=0.2, poll_interval=0.05)
    running = client.claim("w1", wait=5).task
    assert running is not None
    client.complete(task.id, running.attempt, [1, 2])
    assert client.wait_for_task(task.id, timeout=5).result == [1, 2]


def test_claim_many_report_many_and_submit_many(client: Client) -> None:
    client.register("w1", capabilities=["py"], max_concurrency=10)
    submitted = client.submit_many(
        [
            {"kind": "job", "payload": {"n": 0}, "capabilities": ["py"], "priority": 1},
            {"kind": "  "},
            {"kind": "job", "payload": {"n": 2}, "capabilities": ["py"], "max_retries": 0},
            {"kind": "job", "payload": {"n": 3}, "capabilities": ["py"], "idempotency_key": "k"},
            {"kind": "job", "payload": {"n": 4}, "idempotency_key": "k"},
        ]
    )
    assert [r.status for r in submitted] == [201, 422, 201, 201, 200]
    assert [r.created for r in submitted] == [True, False, True, True, False]
    assert submitted[1].task is None and submitted[1].error == "kind: must not be empty"
    assert submitted[4].task is not None and submitted[3].task is not None
    assert submitted[4].task.id == submitted[3].task.id, "the key names the first task"
    assert submitted[4].task.payload == {"n": 3}
    ids = [r.task.id for r in submitted if r.created and r.task is not None]

    batch = wait_for(
        lambda: (lambda b: b if len(b.tasks) == 3 else None)(
            client.claim_many("w1", max_tasks=3, wait=1)
        ),
        what="the three tasks claimed at once",
    )
    assert [t.id for t in batch.tasks] == ids, "the highest priority first, then the oldest"
    assert all(t.state is TaskState.RUNNING and t.attempt == 1 for t in batch.tasks)
    assert batch.cancel == []
    assert client.claim_many("w1", max_tasks=100, wait=0).tasks == []

    results = client.report_many(
        "w1",
        [
            Report.completed(ids[0], 1, {"ok": True}, usage={"tokens": 2}),
            Report.failed(ids[1], 1, "broken", retryable=False),
            Report.completed(ids[2], 2, "stale"),
            {"task_id": ids[2], "attempt": 1, "outcome": "failed"},
            Report.completed(ids[2], 1, [3]),
        ],
    )
    assert [r.status for r in results] == [200, 200, 409, 422, 200]
    assert [r.ok for r in results] == [True, True, False, False, True]
    assert [r.task_id for r in results] == [ids[0], ids[1], ids[2], ids[2], ids[2]]
    assert "not current" in (results[2].error or "")
    assert results[3].error == "error: a failed report must say what went wrong"
    done = client.get_task(ids[0])
    assert (done.state, done.result, done.usage) == (
        TaskState.COMPLETED,
        {"ok": True},
        {"tokens": 2},
    )
    assert client.get_task(ids[1]).state is TaskState.FAILED
    assert client.get_task(ids[2]).result == [3]

    with pytest.raises(InvalidField) as too_many:
        client.claim_many("w1", max_tasks=101)
    assert too_many.value.field == "max"
    with pytest.raises(InvalidField) as none:
        client.claim_many("w1", max_tasks=0)
    assert none.value.field == "max"
    with pytest.raises(InvalidField) as reports:
        client.report_many("w1", [Report.completed(ids[0], 1)] * 101)
    assert reports.value.field == "reports"
    with pytest.raises(InvalidField) as tasks:
        client.submit_many([{"kind": "x"}] * 1001)
    assert tasks.value.field == "tasks"
    with pytest.raises(NotFound):
        client.report_many("nobody", [])
