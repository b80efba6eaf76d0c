"""The Python Agent against the real server, end to end."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, List

import pytest

from helpers import final_task, wait_for
from muster_client import (
    Agent,
    AgentStatus,
    AttemptOutcome,
    Client,
    LogStream,
    NonRetryable,
    Permanent,
    TaskContext,
    TaskState,
    Unauthorized,
)
from muster_client.load import LoadSampler

MakeAgent = Callable[..., Agent]


def test_agent_completes_tasks_end_to_end(client: Client, make_agent: MakeAgent) -> None:
    agent = make_agent("worker", max_concurrency=2, labels={"gpu": "none"})

    @agent.handler("double")
    def double(ctx: TaskContext) -> Dict[str, Any]:
        ctx.log(f"doubling {ctx.payload['n']}")
        ctx.log("on stderr", stream="stderr")
        ctx.usage = {"tokens_in": ctx.payload["n"]}
        return {"double": ctx.payload["n"] * 2, "attempt": ctx.attempt, "agent": ctx.agent_id}

    tasks = [client.submit("double", {"n": n}, capabilities=["py"]) for n in range(5)]
    for n, task in enumerate(tasks):
        done = final_task(client, task.id)
        assert done.state is TaskState.COMPLETED, done.error
        assert done.result == {"double": n * 2, "attempt": 1, "agent": "worker"}
        assert done.usage == {"tokens_in": n}
        assert done.agent_id == "worker"
        lines = client.task_logs(task.id).lines
        assert [(line.stream, line.text) for line in lines] == [
            (LogStream.STDOUT, f"doubling {n}"),
            (LogStream.STDERR, "on stderr"),
        ]

    info = client.get_agent("worker")
    assert info.capabilities == ["py"] and info.max_concurrency == 2
    assert info.labels == {"gpu": "none"} and info.host == "test-host"
    assert info.status is AgentStatus.ONLINE
    # Heartbeats carry the host's real load (/proc on Linux).
    wait_for(lambda: client.get_agent("worker").last_heartbeat_at is not None)
    if Path("/proc/meminfo").exists():
        assert (client.get_agent("worker").memory_percent or 0) > 0


def test_async_handlers_and_every_log_line_before_the_result(
    client: Client, make_agent: MakeAgent
) -> None:
    agent = make_agent()

    @agent.handler("chatty")
    async def chatty(ctx: TaskContext) -> str:
        for i in range(3000):
            ctx.log(f"line {i}")
        return "said it all"

    task = client.submit("chatty", capabilities=["py"])
    done = final_task(client, task.id)
    assert done.state is TaskState.COMPLETED and done.result == "said it all"
    # Logs are flushed before the report, so they are all there the moment it completes.
    lines = client.all_task_logs(task.id)
    assert [line.text for line in lines] == [f"line {i}" for i in range(3000)]


def test_a_raising_handler_is_retried_then_fails(client: Client, make_agent: MakeAgent) -> None:
    agent = make_agent()
    calls: List[int] = []

    @agent.handler("flaky")
    def flaky(ctx: TaskContext) -> None:
        calls.append(ctx.attempt)
        raise RuntimeError(f"boom on attempt {ctx.attempt}")

    task = client.submit("flaky", capabilities=["py"], max_retries=1)
    done = final_task(client, task.id)
    assert done.state is TaskState.FAILED
    assert done.error == "RuntimeError: boom on attempt 2"
    assert calls == [1, 2]
    assert [(a.attempt, a.outcome) for a in done.attempts] == [
        (1, AttemptOutcome.FAILED),
        (2, AttemptOutcome.FAILED),
    ]
    stderr = [
        line.text for line in client.task_logs(task.id).lines if line.stream is LogStream.STDERR
    ]
    assert any("Traceback" in text for text in stderr)
    assert any("RuntimeError: boom on attempt 1" in text for text in stderr)


@pytest.mark.parametrize("error", [Permanent, NonRetryable])
def test_a_permanent_error_fails_at_once(
    client: Client, make_agent: MakeAgent, error: type
) -> None:
    agent = make_agent()
    calls: List[int] = []

    @agent.handler("bad-input")
    def bad_input(ctx: TaskContext) -> None:
        calls.append(ctx.attempt)
        raise error("the payload names no host")

    task = client.submit("bad-input", capabilities=["py"], max_retries=3)
    done = final_task(client, task.id)
    assert done.state is TaskState.FAILED and done.error == "the payload names no host"
    assert calls == [1] and len(done.attempts) == 1


def test_an_unknown_kind_fails_at_once_naming_it(client: Client, make_agent: MakeAgent) -> None:
    agent = make_agent()
    agent.handle("known", lambda ctx: "ok")
    task = client.submit("mystery", capabilities=["py"], max_retries=3)
    done = final_task(client, task.id)
    assert done.state is TaskState.FAILED and len(done.attempts) == 1
    assert done.error is not None and "'mystery'" in done.error and "known" in done.error


def test_results_that_are_not_json_fail_without_retry(
    client: Client, make_agent: MakeAgent
) -> None:
    agent = make_agent()
    agent.handle("weird", lambda ctx: {"when": object()})
    done = final_task(client, client.submit("weird", capabilities=["py"], max_retries=3).id)
    assert done.state is TaskState.FAILED and "not JSON" in (done.error or "")
    assert len(done.attempts) == 1


def test_an_agent_with_the_agent_key(start_server: Any) -> None:
    server = start_server(API_KEY="admin-key", AGENT_KEY="agent-key")
    admin = Client(server.url, api_key="admin-key")
    agent = Agent(
        server.url, "keyed", capabilities=["py"], api_key="agent-key", heartbeat_interval=0.3
    )

    @agent.handler("echo")
    def echo(ctx: TaskContext) -> Any:
        ctx.log("with a key")
        return ctx.payload

    agent.start()
    try:
        assert agent.registered.wait(10)
        done = final_task(admin, admin.submit("echo", {"k": 1}, capabilities=["py"]).id)
        assert done.state is TaskState.COMPLETED and done.result == {"k": 1}
        assert [line.text for line in admin.task_logs(done.id).lines] == ["with a key"]
    finally:
        agent.stop()
        assert agent.wait_stopped(10)
    # Leaving, the agent drained itself with its own key, so nothing more is assigned to it.
    leaving = admin.get_agent("keyed")
    assert leaving.status is AgentStatus.DRAINING and leaving.drained_by == "agent"
    assert leaving.instance_id == agent.instance_id
    # It registered the kinds it has handlers for, and only those are routed to it.
    assert leaving.kinds == ["echo"]


def test_a_key_the_server_refuses_makes_run_raise(start_server: Any) -> None:
    server = start_server(API_KEY="admin-key")
    agent = Agent(server.url, "intruder", api_key="guess")
    with pytest.raises(Unauthorized):
        agent.run()
    assert agent.wait_stopped(0)


def test_a_result_the_server_refuses_fails_the_task(start_server: Any) -> None:
    server = start_server(BODY_LIMIT="2000")
    client = Client(server.url)
    agent = Agent(server.url, "big", capabilities=["py"], heartbeat_interval=0.3)
    agent.handle("big", lambda ctx: "x" * 5000)
    agent.start()
    try:
        done = final_task(client, client.submit("big", capabilities=["py"], max_retries=3).id)
        assert done.state is TaskState.FAILED and len(done.attempts) == 1
        assert "refused the handler's result" in (done.error or "")
    finally:
        agent.stop(grace=0)
        assert agent.wait_stopped(10)


@pytest.mark.parametrize(
    "max_concurrency,heartbeat_interval",
    [(1, 0.3), (2, 60.0)],
    ids=["via-heartbeat", "via-claim-header"],
)
def test_cancel_reaches_a_running_handler(
    client: Client, make_agent: MakeAgent, max_concurrency: int, heartbeat_interval: float
) -> None:
    # With one slot busy the agent does not poll, so the cancel comes with a heartbeat; with
    # a free slot (and heartbeats a minute apart) it comes on the waiting claim's header.
    agent = make_agent(max_concurrency=max_concurrency, heartbeat_interval=heartbeat_interval)
    started = threading.Event()
    seen: Dict[str, Any] = {}

    @agent.handler("long")
    def long_job(ctx: TaskContext) -> str:
        started.set()
        seen["cancelled"] = ctx.cancelled.wait(15)
        seen["at"] = time.monotonic()
        ctx.raise_if_cancelled()
        return "finished anyway"

    task = client.submit("long", capabilities=["py"])
    assert started.wait(10), "the handler did not start"
    wait_for(lambda: client.get_task(task.id).state is TaskState.RUNNING)
    asked = time.monotonic()
    client.cancel_task(task.id)
    done = final_task(client, task.id)
    assert seen["cancelled"] is True, "ctx.cancelled was never set"
    assert seen["at"] - asked < 5
    assert done.state is TaskState.CANCELLED
    assert done.attempts[0].outcome is AttemptOutcome.CANCELLED


def test_a_handler_returning_after_cancel_still_ends_cancelled(
    client: Client, make_agent: MakeAgent
) -> None:
    agent = make_agent()
    started = threading.Event()

    @agent.handler("long")
    def long_job(ctx: TaskContext) -> str:
        started.set()
        ctx.cancelled.wait(15)
        return "partial"

    task = client.submit("long", capabilities=["py"])
    assert started.wait(10)
    wait_for(lambda: client.get_task(task.id).state is TaskState.RUNNING)
    client.cancel_task(task.id)
    assert final_task(client, task.id).state is TaskState.CANCELLED


def test_a_handler_ignoring_cancel_is_reported_after_cancel_grace(
    client: Client, make_agent: MakeAgent
) -> None:
    agent = make_agent(cancel_grace=0.5)
    started, release = threading.Event(), threading.Event()

    @agent.handler("stubborn")
    def stubborn(ctx: TaskContext) -> str:
        started.set()
        release.wait(15)
        return "too late"

    task = client.submit("stubborn", capabilities=["py"])
    assert started.wait(10)
    wait_for(lambda: client.get_task(task.id).state is TaskState.RUNNING)
    client.cancel_task(task.id)
    done = final_task(client, task.id)
    assert done.state is TaskState.CANCELLED and "did not stop" in (done.error or "")
    release.set()


def test_max_concurrency_holds_even_when_the_server_offers_more(
    client: Client, make_agent: MakeAgent
) -> None:
    agent = make_agent("bounded", max_concurrency=3)
    assert client.get_agent("bounded").max_concurrency == 3
    # Tell the server the agent takes 10 at once: it will assign up to 10, and only the
    # agent's own bound keeps it at 3.
    client.register("bounded", host="test-host", capabilities=["py"], max_concurrency=10)
    lock = threading.Lock()
    gate = threading.Event()
    state = {"now": 0, "peak": 0, "done": 0}

    @agent.handler("hold")
    def hold(ctx: TaskContext) -> int:
        with lock:
            state["now"] += 1
            state["peak"] = max(state["peak"], state["now"])
        try:
            gate.wait(15)
        finally:
            with lock:
                state["now"] -= 1
                state["done"] += 1
        return ctx.payload

    tasks = [client.submit("hold", i, capabilities=["py"]) for i in range(8)]
    wait_for(lambda: state["now"] == 3, what="three handlers running")
    # Every task is assigned to the agent by now, yet only three are claimed.
    wait_for(
        lambda: len(client.list_tasks(state=TaskState.ASSIGNED).tasks) == 5,
        what="the other five assigned",
    )
    running = client.list_tasks(state=TaskState.RUNNING).tasks
    assert len(running) == 3 and state["peak"] == 3
    gate.set()
    for i, task in enumerate(tasks):
        done = final_task(client, task.id)
        assert done.state is TaskState.COMPLETED and done.result == i
    assert state["peak"] == 3 and state["done"] == 8


def test_stop_drains_running_tasks_and_claims_nothing_new(
    client: Client, make_agent: MakeAgent
) -> None:
    agent = make_agent(max_concurrency=2)
    started, release = threading.Event(), threading.Event()
    calls: List[str] = []

    @agent.handler("work")
    def work(ctx: TaskContext) -> str:
        calls.append(ctx.task_id)
        started.set()
        release.wait(15)
        return "drained"

    first = client.submit("work", capabilities=["py"])
    assert started.wait(10)
    # One slot is free, so the agent is waiting in a long-poll right now.
    wait_for(lambda: client.get_task(first.id).state is TaskState.RUNNING)
    agent.stop()
    second = client.submit("work", capabilities=["py"])
    assert not agent.wait_stopped(0.3), "run() returned while a task was still running"
    release.set()
    assert agent.wait_stopped(10), "run() did not return after the drain"
    assert final_task(client, first.id).state is TaskState.COMPLETED
    later = client.get_task(second.id)
    assert later.state in (TaskState.QUEUED, TaskState.ASSIGNED) and later.attempt == 0
    assert calls == [first.id]
    # The agent marked itself draining on its way out (no key configured here).
    assert client.get_agent(agent.agent_id).status is AgentStatus.DRAINING


def test_a_task_still_running_after_the_grace_is_handed_back(
    client: Client, make_agent: MakeAgent
) -> None:
    agent = make_agent()
    started, release = threading.Event(), threading.Event()
    seen: Dict[str, bool] = {}

    @agent.handler("slow")
    def slow(ctx: TaskContext) -> str:
        started.set()
        seen["cancelled"] = ctx.cancelled.wait(15)
        release.wait(15)
        return "late"

    task = client.submit("slow", capabilities=["py"], max_retries=3)
    assert started.wait(10)
    wait_for(lambda: client.get_task(task.id).state is TaskState.RUNNING)
    agent.stop(grace=0.3)
    assert agent.wait_stopped(10)
    handed_back = client.get_task(task.id)
    assert handed_back.state is TaskState.QUEUED, handed_back
    assert handed_back.attempts[0].outcome is AttemptOutcome.FAILED
    assert handed_back.attempts[0].error == "agent shutting down"
    assert seen.get("cancelled") is True
    release.set()


def test_reregisters_after_being_removed(client: Client, make_agent: MakeAgent) -> None:
    agent = make_agent("phoenix", max_concurrency=1)
    started = threading.Event()

    @agent.handler("job")
    def job(ctx: TaskContext) -> str:
        if not started.is_set():
            started.set()
            # The server gives up on this attempt when the agent is removed; the agent
            # hears that in its next heartbeat after registering again.
            assert ctx.cancelled.wait(10), "the lost attempt was never cancelled"
            return "from the lost attempt"
        return f"attempt {ctx.attempt}"

    task = client.submit("job", capabilities=["py"], max_retries=3)
    assert started.wait(10)
    wait_for(lambda: client.get_task(task.id).state is TaskState.RUNNING)
    client.remove_agent("phoenix")
    back = wait_for(
        lambda: next((a for a in client.list_agents() if a.agent_id == "phoenix"), None),
        what="the agent to register again",
    )
    assert back.capabilities == ["py"] and back.max_concurrency == 1
    done = final_task(client, task.id)
    assert done.state is TaskState.COMPLETED and done.result == "attempt 2"
    assert [a.outcome for a in done.attempts] == [AttemptOutcome.LOST, AttemptOutcome.COMPLETED]
    # And it keeps working.
    other = client.submit("job", capabilities=["py"])
    assert final_task(client, other.id).result == "attempt 1"


def test_a_stale_report_is_logged_and_not_retried(
    client: Client, make_agent: MakeAgent, caplog: pytest.LogCaptureFixture
) -> None:
    agent = make_agent(heartbeat_interval=60.0)
    started, release = threading.Event(), threading.Event()

    @agent.handler("job")
    def job(ctx: TaskContext) -> str:
        started.set()
        release.wait(15)
        return "stale"

    task = client.submit("job", capabilities=["py"], max_retries=0)
    assert started.wait(10)
    wait_for(lambda: client.get_task(task.id).state is TaskState.RUNNING)
    # An operator's report in the agent's place ends the attempt; the agent's own report is
    # then stale.
    client.fail(task.id, 1, "ended by the operator", retryable=False)
    release.set()
    wait_for(lambda: not agent.running_tasks(), what="the handler to finish")
    assert any("refused" in r.getMessage() and task.id in r.getMessage() for r in caplog.records)
    done = client.get_task(task.id)
    assert done.state is TaskState.FAILED and done.error == "ended by the operator"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_waits_for_an_unreachable_server_then_joins(start_server: Any) -> None:
    port = _free_port()
    agent = Agent(
        f"http://127.0.0.1:{port}",
        "patient",
        capabilities=["py"],
        heartbeat_interval=0.3,
        backoff_cap=0.3,
        timeout=2,
    )
    agent.handle("ping", lambda ctx: "pong")
    agent.start()
    try:
        assert not agent.registered.wait(0.5)
        server = start_server(ADDR=f"127.0.0.1:{port}")
        client = Client(server.url)
        assert agent.registered.wait(10), "the agent did not register once the server was up"
        done = final_task(client, client.submit("ping", capabilities=["py"]).id)
        assert done.result == "pong"
    finally:
        agent.stop(grace=0)
        assert agent.wait_stopped(10)


def test_stop_while_unreachable_returns_promptly() -> None:
    agent = Agent(f"http://127.0.0.1:{_free_port()}", "lonely", backoff_cap=5.0, timeout=1)
    thread = agent.start()
    agent.stop()
    thread.join(5)
    assert not thread.is_alive()


def test_run_stops_on_sigterm_in_the_main_thread(client: Client, server: Any) -> None:
    script = textwrap.dedent(
        """
        import sys
        from muster_client import Agent
        agent = Agent(sys.argv[1], "signalled", capabilities=["py"], heartbeat_interval=0.3)
        agent.handle("noop", lambda ctx: None)
        agent.run()
        print("drained", flush=True)
        """
    )
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = dict(os.environ, PYTHONPATH=src + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen(
        [sys.executable, "-c", script, server.url],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(
            lambda: any(a.agent_id == "signalled" for a in client.list_agents()),
            what="the subprocess agent to register",
        )
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "drained" in out
    assert client.get_agent("signalled").status is AgentStatus.DRAINING


def test_load_sampler_reads_proc(tmp_path: Path) -> None:
    stat = tmp_path / "stat"
    meminfo = tmp_path / "meminfo"
    stat.write_text("cpu  100 0 100 800 0 0 0 0 0 0\ncpu0 1 2 3 4\n")
    meminfo.write_text("MemTotal:       1000 kB\nMemFree:  100 kB\nMemAvailable:   250 kB\n")
    sampler = LoadSampler(str(stat), str(meminfo))
    # 300 more busy jiffies of 1000 more in all: 30 %.
    stat.write_text("cpu  250 0 250 1500 0 0 0 0 0 0\n")
    assert sampler.sample() == (30.0, 75.0)
    missing = LoadSampler(str(tmp_path / "nope"), str(tmp_path / "nope"))
    assert missing.sample() == (0.0, 0.0)


def test_the_agent_claims_and_reports_through_the_batch_routes(
    client: Client, make_agent: MakeAgent
) -> None:
    agent = make_agent("batcher", max_concurrency=3)

    @agent.handler("echo")
    def echo(ctx: TaskContext) -> Any:
        return ctx.payload

    @agent.handler("flaky")
    def flaky(ctx: TaskContext) -> Any:
        raise RuntimeError("not today")

    tasks = [client.submit("echo", n, capabilities=["py"]) for n in range(5)]
    broken = client.submit("flaky", capabilities=["py"], max_retries=0)
    for n, task in enumerate(tasks):
        done = final_task(client, task.id)
        assert done.state is TaskState.COMPLETED and done.result == n
    failed = final_task(client, broken.id)
    assert failed.state is TaskState.FAILED and "not today" in (failed.error or "")

    def requests_on(method: str, route: str) -> int:
        labels = f'method="{method}",route="{route}"'
        return sum(
            int(float(line.rsplit(" ", 1)[1]))
            for line in client.metrics().splitlines()
            if line.startswith("muster_http_request_seconds_count{") and labels in line
        )

    assert requests_on("GET", "/api/v1/agents/{id}/tasks/claim") > 0
    assert requests_on("POST", "/api/v1/agents/{id}/reports") > 0
    for method, route in [
        ("GET", "/api/v1/agents/{id}/tasks/next"),
        ("POST", "/api/v1/tasks/{id}/complete"),
        ("POST", "/api/v1/tasks/{id}/fail"),
    ]:
        assert requests_on(method, route) == 0, f"{route} is left to plain-HTTP agents"


def test_a_claim_asks_for_every_free_slot(client: Client, make_agent: MakeAgent) -> None:
    agent = make_agent("slots", max_concurrency=3, start=False)
    calls: List[Any] = []
    claim_many = agent.client.claim_many

    def recording(agent_id: str, max_tasks: int = 1, wait: float = 0, **kw: Any) -> Any:
        with agent._cond:
            calls.append((max_tasks, len(agent._running)))
        return claim_many(agent_id, max_tasks=max_tasks, wait=min(wait, 1), **kw)

    agent.client.claim_many = recording  # type: ignore[method-assign]
    release = threading.Event()

    @agent.handler("hold")
    def hold(ctx: TaskContext) -> str:
        release.wait(15)
        return "held"

    agent.start()
    assert agent.registered.wait(10)
    tasks = [client.submit("hold", capabilities=["py"]) for _ in range(2)]
    wait_for(lambda: len(agent.running_tasks()) == 2, what="two handlers running")
    wait_for(lambda: (1, 2) in calls, what="a claim for the one slot left")
    assert calls[0] == (3, 0), "three free slots: three asked for"
    assert all(asked == 3 - running for asked, running in calls), calls
    release.set()
    for task in tasks:
        assert final_task(client, task.id).state is TaskState.COMPLETED


def test_reports_go_at_once_when_idle_and_together_while_one_is_in_flight(
    client: Client, make_agent: MakeAgent
) -> None:
    agent = make_agent("reporter", max_concurrency=4, start=False)
    batches: List[List[str]] = []
    in_flight, release = threading.Event(), threading.Event()
    report_many = agent.client.report_many

    def held(agent_id: str, reports: Any) -> Any:
        reports = list(reports)
        batches.append([r.task_id for r in reports])
        if len(batches) == 1:
            in_flight.set()
            release.wait(15)  # the server holds the first request
        return report_many(agent_id, reports)

    agent.client.report_many = held  # type: ignore[method-assign]
    gates: Dict[str, threading.Event] = {}

    @agent.handler("gated")
    def gated(ctx: TaskContext) -> str:
        gates[ctx.payload].wait(15)
        return ctx.payload

    names = ["a", "b", "c", "d"]
    for name in names:
        gates[name] = threading.Event()
    agent.start()
    assert agent.registered.wait(10)
    ids = {name: client.submit("gated", name, capabilities=["py"]).id for name in names}
    wait_for(lambda: len(agent.running_tasks()) == 4, what="four handlers running")

    # Nothing in flight: the first report goes alone, at once.
    gates["a"].set()
    assert in_flight.wait(10)
    assert batches == [[ids["a"]]]
    # While it is in flight, three more finish and queue up: they go together.
    for name in names[1:]:
        gates[name].set()
    wait_for(lambda: agent._reports.qsize() == 3, what="three reports queued")
    release.set()
    for name in names:
        assert final_task(client, ids[name]).result == name
    assert len(batches) == 2 and sorted(batches[1]) == sorted(ids[n] for n in names[1:])
