"""The agent runtime: what a Python agent runs to take part in muster.

`Agent.run()` registers, starts a heartbeat thread (host load, the attempts it runs,
cancellations back), then long-polls for as many tasks as it has free slots in one batch claim
(at most `max_concurrency` run at once). Each task goes, on its own thread, to the handler
registered for its kind, with a `TaskContext`: log lines are batched to the server as they
come, the return value is reported with the task's attempt, an exception fails it (retryable
unless it is a `Permanent`). Reports go through one reporter thread: at once when no report is
in flight, and together (one request, one commit on the server) for those that finished while
one was. A cancel from the server (heartbeat answer or claim header) sets
`ctx.cancelled`. The loop registers again when the server forgot the agent, backs off with
jitter while the server is unreachable, and on `stop()` (or SIGTERM/SIGINT) drains: it stops
claiming, lets running handlers finish within `shutdown_grace`, hands the rest back as
retryable, then stops heartbeating and returns.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import queue
import random
import signal
import socket
import threading
import time
import uuid
import traceback
from datetime import datetime, timezone
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Tuple, TypeVar, Union

from . import __version__
from ._http import Channel
from .client import MAX_CLAIM_BATCH, MAX_REPORT_BATCH, Client
from .errors import (
    Conflict,
    Forbidden,
    MusterError,
    NotFound,
    PayloadTooLarge,
    Unauthorized,
)
from .load import LoadSampler
from .models import LogStream, Report, RunningTask, Task, format_timestamp

__all__ = ["Agent", "TaskContext", "Permanent", "NonRetryable", "TaskCancelled", "Handler"]

log = logging.getLogger("muster_client.agent")

Handler = Callable[["TaskContext"], Any]
H = TypeVar("H", bound=Callable[..., Any])

#: Longest log line sent; longer ones are cut (the server limits a whole post to 1 MiB).
MAX_LINE_CHARS = 64 * 1024
#: Lines kept per task while the server cannot take them; later ones are counted and dropped.
MAX_BUFFERED_LINES = 50_000
#: A task's buffer is sent early once it holds this many lines.
FLUSH_AT_LINES = 1_000
#: One log post carries at most this many lines and about this many bytes.
BATCH_LINES = 5_000
BATCH_BYTES = 512 * 1024
#: The server refuses a longer `error`.
MAX_ERROR_CHARS = 60_000


class Permanent(Exception):
    """Raise from a handler for a failure that another attempt would not fix: the task fails
    at once, without retries."""


#: Another name for `Permanent`.
NonRetryable = Permanent


class TaskCancelled(Exception):
    """Raised by `TaskContext.raise_if_cancelled()`; the runtime reports the task cancelled."""


class _Backoff:
    """Exponential delays with jitter, capped: 0.5 s, 1 s, 2 s … up to `cap`, each drawn
    from [d/2, d]."""

    def __init__(self, base: float = 0.5, cap: float = 30.0) -> None:
        self.base = base
        self.cap = cap
        self.failures = 0

    def next_delay(self) -> float:
        delay = min(self.cap, self.base * (2 ** min(self.failures, 30)))
        self.failures += 1
        return random.uniform(delay / 2, delay)

    def reset(self) -> None:
        self.failures = 0


def _now_ts() -> str:
    return format_timestamp(datetime.now(timezone.utc))


class TaskContext:
    """What a handler gets: the task, a log sink and its cancellation.

    - `ctx.task`: the `Task` (running, with its `attempt`); `ctx.payload` is its payload.
    - `ctx.log(text, stream="stdout")`: queues a line; lines reach the server in batches, and
      all of them before the result.
    - `ctx.cancelled`: a `threading.Event`, set when the server asks to stop the task
      (operator cancel, timeout, task given to another agent) or the agent shuts down. Long
      work should check it, or wait on it (`ctx.cancelled.wait(5)` sleeps 5 s unless
      cancelled), or call `ctx.raise_if_cancelled()`.
    - `ctx.usage`: set it to a JSON object (say LLM token counts) to report it with the result.
    """

    def __init__(self, agent: Agent, task: Task) -> None:
        self.task = task
        self.cancelled = threading.Event()
        self.cancel_reason: Optional[str] = None
        self.usage: Optional[Any] = None
        self._agent = agent
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._lines: List[Dict[str, Any]] = []
        self._dropped = 0
        self._stale = False
        self._reported = False
        self._cancelled_at: Optional[float] = None
        self._done = threading.Event()

    @property
    def task_id(self) -> str:
        return self.task.id

    @property
    def kind(self) -> str:
        return self.task.kind

    @property
    def payload(self) -> Any:
        return self.task.payload

    @property
    def attempt(self) -> int:
        return self.task.attempt

    @property
    def agent_id(self) -> str:
        return self._agent.agent_id

    def log(self, text: Any, stream: Union[LogStream, str] = LogStream.STDOUT) -> None:
        """Queues one line of output (`stream` is stdout, stderr or system)."""
        kind = LogStream(stream)
        line = str(text)
        if line.endswith("\n"):
            line = line[:-1]
        if len(line) > MAX_LINE_CHARS:
            line = line[:MAX_LINE_CHARS] + " …[cut]"
        with self._lock:
            if self._stale:
                return
            if len(self._lines) >= MAX_BUFFERED_LINES:
                self._dropped += 1
                return
            self._lines.append({"ts": _now_ts(), "stream": kind.value, "text": line})
            full = len(self._lines) >= FLUSH_AT_LINES
        if full:
            self._agent._wake_maintenance()

    def flush(self) -> None:
        """Sends the queued lines now (the runtime does so every `log_flush_interval`)."""
        self._agent._flush(self)

    def raise_if_cancelled(self) -> None:
        """Raises `TaskCancelled` once the task is cancelled."""
        if self.cancelled.is_set():
            raise TaskCancelled(self.cancel_reason or "cancelled")

    def _cancel(self, reason: str) -> bool:
        with self._lock:
            if self.cancelled.is_set():
                return False
            self.cancel_reason = reason
            self._cancelled_at = time.monotonic()
            self.cancelled.set()
        return True

    def _claim_report(self) -> bool:
        """True for the one caller that may report this attempt's end."""
        with self._lock:
            if self._reported:
                return False
            self._reported = True
            return True

    def __repr__(self) -> str:
        return f"TaskContext(task={self.task_id}, kind={self.kind!r}, attempt={self.attempt})"


class _Outcome:
    __slots__ = ("complete", "result", "error", "retryable")

    def __init__(self, complete: bool, result: Any = None, error: str = "", retryable: bool = True):
        self.complete = complete
        self.result = result
        self.error = error
        self.retryable = retryable

    @classmethod
    def failed(cls, error: str, retryable: bool) -> _Outcome:
        if len(error) > MAX_ERROR_CHARS:
            error = error[:MAX_ERROR_CHARS] + " …[cut]"
        return cls(False, error=error, retryable=retryable)


class _PendingReport:
    """An attempt's end waiting for the reporter; `done` is set once the server answered it
    (or it was given up on)."""

    __slots__ = ("ctx", "outcome", "done")

    def __init__(self, ctx: TaskContext, outcome: _Outcome) -> None:
        self.ctx = ctx
        self.outcome = outcome
        self.done = threading.Event()

    def report(self) -> Report:
        ctx, outcome = self.ctx, self.outcome
        if outcome.complete:
            return Report.completed(ctx.task_id, ctx.attempt, outcome.result, ctx.usage)
        return Report.failed(ctx.task_id, ctx.attempt, outcome.error, outcome.retryable)


class Agent:
    """A muster agent: registers, heartbeats, claims tasks and runs their handlers.

    ```python
    agent = Agent("http://muster.lan:8000", "gpu-box", capabilities=["llm"], max_concurrency=2)

    @agent.handler("prompt")
    def prompt(ctx):
        ctx.log("thinking…")
        return {"answer": ask_model(ctx.payload["prompt"])}

    agent.run()   # until stop(), SIGTERM or Ctrl-C
    ```

    `capabilities` route tasks to the agent (a task goes to agents having all of its
    capabilities); handlers are chosen by the task's `kind`; `handler("*")` catches every
    kind without its own. `shutdown_grace` bounds how long a drain waits for running
    handlers; `cancel_grace` how long a cancelled handler may keep running before its task is
    reported cancelled anyway (the thread itself cannot be killed and keeps its slot).
    """

    def __init__(
        self,
        url: str,
        agent_id: str,
        capabilities: Iterable[str] = (),
        max_concurrency: int = 1,
        api_key: Optional[str] = None,
        host: Optional[str] = None,
        labels: Optional[Mapping[str, str]] = None,
        heartbeat_interval: float = 10.0,
        *,
        port: Optional[int] = None,
        mcp_servers: Iterable[Any] = (),
        version: Optional[str] = None,
        poll_wait: int = 25,
        shutdown_grace: float = 60.0,
        cancel_grace: float = 30.0,
        log_flush_interval: float = 0.5,
        backoff_cap: float = 30.0,
        report_retry_for: float = 120.0,
        timeout: float = 30.0,
        drain_on_stop: bool = True,
        client: Optional[Client] = None,
    ) -> None:
        if max_concurrency < 1:
            raise ValueError("max_concurrency must be at least 1")
        if not 0 <= poll_wait <= 120:
            raise ValueError("poll_wait must be between 0 and 120 seconds")
        self.client = client or Client(url, api_key=api_key, timeout=timeout)
        self.agent_id = agent_id
        self.capabilities = list(capabilities)
        self.max_concurrency = int(max_concurrency)
        self.host = socket.gethostname() if host is None else host
        self.port = port
        self.labels = dict(labels or {})
        self.mcp_servers = list(mcp_servers)
        self.version = version or f"muster-client-python/{__version__}"
        self.heartbeat_interval = float(heartbeat_interval)
        self.poll_wait = int(poll_wait)
        self.shutdown_grace = float(shutdown_grace)
        self.cancel_grace = float(cancel_grace)
        self.log_flush_interval = float(log_flush_interval)
        self.backoff_cap = float(backoff_cap)
        self.report_retry_for = float(report_retry_for)
        self.drain_on_stop = drain_on_stop
        # Drawn once per process: the server tells a restart from a re-registration by it,
        # and only this process may drain the agent with the agent key.
        self.instance_id = uuid.uuid4().hex

        self._handlers: Dict[str, Handler] = {}
        self._load = LoadSampler()
        self._cond = threading.Condition()
        self._running: Dict[str, TaskContext] = {}
        self._claiming = 0
        self._stopping = threading.Event()
        self._stopped = threading.Event()
        self._hard_stop = threading.Event()
        self._beat_now = threading.Event()
        self._maintenance_now = threading.Event()
        self._background_stop = threading.Event()
        self._registered = threading.Event()
        self._register_lock = threading.Lock()
        self._channel = Channel()
        self._reports: queue.Queue[_PendingReport] = queue.Queue()
        self._reporter: Optional[threading.Thread] = None
        self._started = False
        self._grace_override: Optional[float] = None
        self._unreachable_since: Optional[float] = None
        self._fatal: Optional[BaseException] = None
        #: Attempts this agent has started (claims that brought a task).
        self.tasks_started = 0

    # -- handlers -----------------------------------------------------------------------------

    def handler(self, kind: str) -> Callable[[H], H]:
        """Decorator: `@agent.handler("kind")` registers the function for tasks of that kind.
        A handler takes a `TaskContext`; it may be a plain function or an `async def`."""

        def register(fn: H) -> H:
            self.handle(kind, fn)
            return fn

        return register

    def handle(self, kind: str, fn: Handler) -> Agent:
        """Registers `fn` for tasks of `kind` (`"*"`: every kind without its own handler)."""
        if not callable(fn):
            raise TypeError("a handler must be callable")
        self._handlers[kind] = fn
        return self

    def _routed_kinds(self) -> List[str]:
        """The kinds the server may route here: those with a handler, or any kind (an empty
        list) when a `"*"` handler takes the rest."""
        if "*" in self._handlers:
            return []
        return sorted(self._handlers)

    # -- lifecycle ----------------------------------------------------------------------------

    @property
    def registered(self) -> threading.Event:
        """Set once the agent has registered with the server."""
        return self._registered

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def running_tasks(self) -> List[TaskContext]:
        """The tasks this agent runs now."""
        with self._cond:
            return list(self._running.values())

    def start(self) -> threading.Thread:
        """Runs `run()` on a background thread and returns the thread."""
        thread = threading.Thread(
            target=self.run, name=f"muster-agent-{self.agent_id}", daemon=True
        )
        thread.start()
        return thread

    def stop(self, grace: Optional[float] = None) -> None:
        """Asks `run()` to drain and return: no task is claimed after this call; running
        handlers get `grace` seconds (default `shutdown_grace`) to finish. Never blocks."""
        if grace is not None:
            self._grace_override = float(grace)
        if self._stopping.is_set():
            return
        self._stopping.set()
        # Ends a waiting long-poll at once, so the server cannot hand it a new task.
        self._channel.abort()
        with self._cond:
            self._cond.notify_all()

    def wait_stopped(self, timeout: Optional[float] = None) -> bool:
        """Waits until `run()` has returned."""
        return self._stopped.wait(timeout)

    def run(self) -> None:
        """Runs the agent until `stop()`, SIGTERM or SIGINT (the signals only when called from
        the main thread), then drains and returns. Raises at once for a configuration the
        server refuses (a bad key, an invalid agent id)."""
        if self._started:
            raise RuntimeError("an Agent runs once; create a new one")
        self._started = True
        restore = self._install_signals()
        threads: List[threading.Thread] = []
        try:
            if not self._register_until_done():
                if self._fatal is not None:
                    raise self._fatal
                return
            for target, name in (
                (self._heartbeat_loop, "heartbeat"),
                (self._maintenance_loop, "logs"),
                (self._report_loop, "reports"),
                (self._claim_loop, "claim"),
            ):
                t = threading.Thread(
                    target=target, name=f"muster-{name}-{self.agent_id}", daemon=True
                )
                t.start()
                threads.append(t)
            self._reporter = threads[2]
            # The main thread only waits here, so signals are handled at once.
            while not self._stopping.wait(0.5):
                pass
            log.info("agent %s stopping: no new tasks; draining", self.agent_id)
            threads[3].join()
            if self.drain_on_stop:
                self._announce_drain()
            self._drain()
        finally:
            self._channel.abort()
            self._background_stop.set()
            self._beat_now.set()
            self._maintenance_now.set()
            for t in threads[:3]:
                t.join(timeout=self.client.timeout + 1)
            self._channel.close()
            restore()
            self._stopped.set()
            log.info("agent %s stopped", self.agent_id)

    def _install_signals(self) -> Callable[[], None]:
        if threading.current_thread() is not threading.main_thread():
            return lambda: None
        previous: Dict[int, Any] = {}

        def on_signal(signum: int, _frame: Any) -> None:
            if self._stopping.is_set():
                log.warning("second signal: abandoning running tasks now")
                self._grace_override = 0.0
                self._hard_stop.set()
                with self._cond:
                    self._cond.notify_all()
            else:
                log.info("signal %d: stopping", signum)
            self.stop()

        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                previous[sig] = signal.signal(sig, on_signal)
            except (ValueError, OSError):  # pragma: no cover - not the main interpreter
                pass

        def restore() -> None:
            for sig, old in previous.items():
                try:
                    signal.signal(sig, old)
                except (ValueError, OSError):  # pragma: no cover
                    pass

        return restore

    # -- registration -------------------------------------------------------------------------

    def _register(self) -> None:
        with self._register_lock:
            self.client.register(
                self.agent_id,
                host=self.host,
                port=self.port,
                capabilities=self.capabilities,
                mcp_servers=self.mcp_servers,
                max_concurrency=self.max_concurrency,
                labels=self.labels,
                version=self.version,
                instance_id=self.instance_id,
                kinds=self._routed_kinds(),
            )
            self._registered.set()
        self._beat_now.set()  # tell the server our load and running attempts right away

    def _register_until_done(self) -> bool:
        """Registers, retrying while the server is unreachable; False if stopped meanwhile."""
        backoff = _Backoff(cap=self.backoff_cap)
        while not self._stopping.is_set():
            try:
                self._register()
                log.info(
                    "agent %s registered with %s (capabilities %s, max_concurrency %d)",
                    self.agent_id,
                    self.client.url,
                    self.capabilities,
                    self.max_concurrency,
                )
                self._reachable()
                return True
            except MusterError as exc:
                if not exc.transient:
                    log.error("agent %s cannot register: %s", self.agent_id, exc)
                    self._fatal = exc
                    return False
                self._unreachable(exc)
                self._stopping.wait(backoff.next_delay())
        return False

    def _reregister(self, why: MusterError) -> None:
        log.warning(
            "the server does not know agent %s (%s); registering again", self.agent_id, why.message
        )
        try:
            self._register()
        except MusterError as exc:
            log.warning("registering again failed: %s", exc)
            raise

    def _unreachable(self, exc: MusterError) -> None:
        if self._unreachable_since is None:
            self._unreachable_since = time.monotonic()
            log.warning("%s; retrying with backoff", exc)
        else:
            log.debug("still failing: %s", exc)

    def _reachable(self) -> None:
        if self._unreachable_since is not None:
            log.info(
                "muster at %s answers again after %.1fs",
                self.client.url,
                time.monotonic() - self._unreachable_since,
            )
            self._unreachable_since = None

    # -- claiming -----------------------------------------------------------------------------

    def _free_slots(self) -> int:
        """Waits for a free slot, then takes every free one (at most a batch claim's worth);
        answers how many, 0 once stopping."""
        with self._cond:
            while len(self._running) + self._claiming >= self.max_concurrency:
                if self._stopping.is_set():
                    return 0
                self._cond.wait(0.5)
            if self._stopping.is_set():
                return 0
            free = self.max_concurrency - len(self._running) - self._claiming
            taken = min(free, MAX_CLAIM_BATCH)
            self._claiming += taken
            return taken

    def _claim_loop(self) -> None:
        backoff = _Backoff(cap=self.backoff_cap)
        while True:
            slots = self._free_slots()
            if not slots:
                return
            tasks: List[Task] = []
            started: List[TaskContext] = []
            try:
                claim = self.client.claim_many(
                    self.agent_id, max_tasks=slots, wait=self.poll_wait, _channel=self._channel
                )
                tasks = claim.tasks
                self._reachable()
                backoff.reset()
                self._apply_cancel(claim.cancel, "claim")
            except MusterError as exc:
                if self._stopping.is_set():
                    pass
                elif isinstance(exc, NotFound):
                    try:
                        self._reregister(exc)
                        backoff.reset()
                    except MusterError:
                        self._stopping.wait(backoff.next_delay())
                else:
                    if exc.transient:
                        self._unreachable(exc)
                    else:
                        log.error("claim refused: %s", exc)
                    self._stopping.wait(backoff.next_delay())
            except Exception:  # a bug here must not end the loop silently
                log.exception("claim loop error")
                self._stopping.wait(backoff.next_delay())
            finally:
                if len(tasks) > slots:
                    # Never from a server that keeps to `max`; their leases will lapse.
                    log.error(
                        "the server sent %d tasks for %d free slots; not running %s",
                        len(tasks),
                        slots,
                        ", ".join(t.id for t in tasks[slots:]),
                    )
                    tasks = tasks[:slots]
                with self._cond:
                    self._claiming -= slots
                    for task in tasks:
                        ctx = TaskContext(self, task)
                        self._running[task.id] = ctx
                        self.tasks_started += 1
                        started.append(ctx)
                    self._cond.notify_all()
            for ctx in started:
                threading.Thread(
                    target=self._execute,
                    args=(ctx,),
                    name=f"muster-task-{ctx.task_id}",
                    daemon=True,
                ).start()

    def _apply_cancel(self, task_ids: Iterable[str], source: str) -> None:
        wanted = set(task_ids)
        if not wanted:
            return
        with self._cond:
            hits = [c for c in self._running.values() if c.task_id in wanted]
        for ctx in hits:
            if ctx._cancel(f"the server asked to stop it ({source})"):
                log.info("task %s attempt %d: cancel requested", ctx.task_id, ctx.attempt)
                ctx.log("cancel requested by the server", LogStream.SYSTEM)

    # -- running a task -----------------------------------------------------------------------

    def _execute(self, ctx: TaskContext) -> None:
        try:
            outcome = self._invoke(ctx)
            self._finish(ctx, outcome)
        except Exception:
            log.exception("task %s: runtime error", ctx.task_id)
        finally:
            ctx._done.set()
            with self._cond:
                if self._running.get(ctx.task_id) is ctx:
                    del self._running[ctx.task_id]
                self._cond.notify_all()

    def _invoke(self, ctx: TaskContext) -> _Outcome:
        fn = self._handlers.get(ctx.kind) or self._handlers.get("*")
        if fn is None:
            known = ", ".join(sorted(self._handlers)) or "none"
            return _Outcome.failed(
                f"no handler for task kind {ctx.kind!r} on agent {self.agent_id} "
                f"(it handles: {known})",
                retryable=False,
            )
        try:
            result = _call(fn, ctx)
        except TaskCancelled as exc:
            return _Outcome.failed(f"cancelled: {exc}", retryable=False)
        except Permanent as exc:
            message = str(exc) or type(exc).__name__
            ctx.log(f"permanent failure: {message}", LogStream.STDERR)
            if ctx.cancelled.is_set():
                return _Outcome.failed(f"cancelled: {ctx.cancel_reason}", retryable=False)
            return _Outcome.failed(message, retryable=False)
        except BaseException as exc:  # SystemExit in a handler thread too: report, never vanish
            for line in traceback.format_exc().rstrip().splitlines():
                ctx.log(line, LogStream.STDERR)
            log.warning(
                "task %s (%s) raised %s: %s", ctx.task_id, ctx.kind, type(exc).__name__, exc
            )
            if ctx.cancelled.is_set():
                return _Outcome.failed(f"cancelled: {ctx.cancel_reason}", retryable=False)
            return _Outcome.failed(f"{type(exc).__name__}: {exc}", retryable=True)
        if ctx.cancelled.is_set():
            return _Outcome.failed(f"cancelled: {ctx.cancel_reason}", retryable=False)
        try:
            json.dumps(result)
        except (TypeError, ValueError) as exc:
            return _Outcome.failed(f"the handler's result is not JSON: {exc}", retryable=False)
        return _Outcome(True, result=result)

    def _finish(self, ctx: TaskContext, outcome: _Outcome) -> None:
        if not ctx._claim_report():
            return  # already handed back (shutdown or cancel grace ran out)
        self._report(ctx, outcome)

    def _report(self, ctx: TaskContext, outcome: _Outcome) -> None:
        """Reports the attempt's end and returns once the server has answered it (or it was
        given up on), so the attempt stays in the heartbeat's list and holds its slot until
        then."""
        self._report_all([(ctx, outcome)])

    def _report_all(self, ends: List[Tuple[TaskContext, _Outcome]]) -> None:
        """Reports attempts' ends through the reporter thread, all queued before any is
        waited for so they can travel together. Without a reporter (the agent is not
        running), they are sent from here."""
        batch = []
        for ctx, outcome in ends:
            self._flush(ctx)  # every log line before the result
            batch.append(_PendingReport(ctx, outcome))
        reporter = self._reporter
        if reporter is None or not reporter.is_alive():
            self._send_reports(batch)
            return
        for pending in batch:
            self._reports.put(pending)
        for pending in batch:
            while not pending.done.wait(0.5):
                if not reporter.is_alive() and not pending.done.is_set():
                    # The reporter is gone: send what it left from here.
                    self._send_reports([p for p in batch if not p.done.is_set()])
                    return

    def _report_loop(self) -> None:
        """The reporter: sends a report as soon as it comes when none is in flight, and
        together (up to a batch of 100) those that came while one was. A report never waits
        for others to gather, and a burst of endings costs one request and one commit. Runs
        until the agent has drained and nothing is left to send."""
        while True:
            try:
                first = self._reports.get(timeout=0.5)
            except queue.Empty:
                if self._background_stop.is_set():
                    return
                continue
            batch = [first]
            while len(batch) < MAX_REPORT_BATCH:
                try:
                    batch.append(self._reports.get_nowait())
                except queue.Empty:
                    break
            try:
                self._send_reports(batch)
            except Exception:  # a bug here must not strand the tasks waiting on it
                log.exception("reporting %d tasks failed", len(batch))
            finally:
                for pending in batch:
                    pending.done.set()

    def _send_reports(self, batch: List[_PendingReport]) -> None:
        """Sends one batch, retrying while the server is unreachable (the leases keep the
        tasks ours meanwhile) until `report_retry_for` passes; each report is judged alone."""
        deadline = time.monotonic() + self.report_retry_for
        backoff = _Backoff(base=0.25, cap=min(self.backoff_cap, 10.0))
        todo = list(batch)
        while todo:
            for pending in todo:
                self._flush(pending.ctx)  # lines a failed flush kept go first, retries too
            try:
                results = self.client.report_many(self.agent_id, [p.report() for p in todo])
                self._reachable()
            except PayloadTooLarge as exc:
                if len(todo) > 1:
                    # One oversize result must not cost the others their reports.
                    for pending in todo:
                        self._send_reports([pending])
                    return
                if not self._refused_result(todo[0], exc.message):
                    return
                continue
            except NotFound as exc:
                # The server forgot this agent: register again, then report.
                try:
                    self._reregister(exc)
                except MusterError:
                    pass
                if time.monotonic() >= deadline or self._hard_stop.is_set():
                    log.error("giving up reporting %d tasks: %s", len(todo), exc)
                    return
                self._hard_stop.wait(backoff.next_delay())
                continue
            except MusterError as exc:
                if not exc.transient or time.monotonic() >= deadline or self._hard_stop.is_set():
                    for pending in todo:
                        log.error(
                            "giving up reporting task %s attempt %d: %s",
                            pending.ctx.task_id,
                            pending.ctx.attempt,
                            exc,
                        )
                    return
                self._unreachable(exc)
                self._hard_stop.wait(backoff.next_delay())
                continue
            again: List[_PendingReport] = []
            for pending, result in zip(todo, results):
                if self._judged(pending, result.status, result.error or ""):
                    again.append(pending)
            todo = again
            if todo:
                self._hard_stop.wait(backoff.next_delay())

    def _judged(self, pending: _PendingReport, status: int, error: str) -> bool:
        """Logs how the server judged one report; True when it is worth sending again."""
        ctx, outcome = pending.ctx, pending.outcome
        if status == 200:
            if outcome.complete:
                log.info("task %s attempt %d completed", ctx.task_id, ctx.attempt)
            else:
                log.info(
                    "task %s attempt %d failed (%s): %s",
                    ctx.task_id,
                    ctx.attempt,
                    "retryable" if outcome.retryable else "final",
                    outcome.error,
                )
            return False
        if status in (404, 409):
            # The attempt is no longer ours (cancelled, timed out, retried elsewhere): the
            # server keeps what it has; sending again would not change that.
            log.warning(
                "report of task %s attempt %d refused: %s", ctx.task_id, ctx.attempt, error
            )
            return False
        if status in (413, 422):
            return self._refused_result(pending, error)
        if status in (429, 500, 503):
            return not self._hard_stop.is_set()
        log.error("report of task %s refused (%d): %s", ctx.task_id, status, error)
        return False

    def _refused_result(self, pending: _PendingReport, why: str) -> bool:
        """A result the server will not take ends the attempt as a failure that says so;
        True when that failure is to be sent."""
        if pending.outcome.complete:
            pending.outcome = _Outcome.failed(
                f"the server refused the handler's result: {why}", retryable=False
            )
            return True
        log.error("report of task %s refused: %s", pending.ctx.task_id, why)
        return False

    # -- logs ---------------------------------------------------------------------------------

    def _wake_maintenance(self) -> None:
        self._maintenance_now.set()

    def _flush(self, ctx: TaskContext) -> None:
        with ctx._flush_lock:
            while True:
                with ctx._lock:
                    if ctx._stale:
                        ctx._lines.clear()
                        return
                    if ctx._dropped and len(ctx._lines) < MAX_BUFFERED_LINES:
                        ctx._lines.append(
                            {
                                "ts": _now_ts(),
                                "stream": LogStream.SYSTEM.value,
                                "text": f"{ctx._dropped} log lines dropped: the server "
                                "could not take them in time",
                            }
                        )
                        ctx._dropped = 0
                    batch = _batch(ctx._lines)
                if not batch:
                    return
                try:
                    self.client.append_logs(ctx.task_id, ctx.attempt, batch)
                except (Conflict, NotFound) as exc:
                    with ctx._lock:
                        ctx._stale = True
                        ctx._lines.clear()
                    if ctx._cancel(f"the attempt is no longer current ({exc.message})"):
                        log.info(
                            "task %s attempt %d is no longer current", ctx.task_id, ctx.attempt
                        )
                    return
                except MusterError as exc:
                    if exc.transient:
                        log.debug("log flush of task %s deferred: %s", ctx.task_id, exc)
                        return
                    log.warning(
                        "server refused %d log lines of task %s: %s", len(batch), ctx.task_id, exc
                    )
                with ctx._lock:
                    del ctx._lines[: len(batch)]

    def _maintenance_loop(self) -> None:
        """Flushes every task's logs periodically and hands back cancelled tasks whose
        handlers ignore the cancel for longer than `cancel_grace`."""
        while not self._background_stop.is_set():
            self._maintenance_now.wait(self.log_flush_interval)
            self._maintenance_now.clear()
            for ctx in self.running_tasks():
                try:
                    self._flush(ctx)
                    self._check_cancel_grace(ctx)
                except Exception:
                    log.exception("log flush of task %s failed", ctx.task_id)

    def _check_cancel_grace(self, ctx: TaskContext) -> None:
        since = ctx._cancelled_at
        if since is None or ctx._done.is_set() or time.monotonic() - since < self.cancel_grace:
            return
        if not ctx._claim_report():
            return
        log.warning(
            "task %s: handler still running %.0fs after the cancel; reporting it cancelled",
            ctx.task_id,
            self.cancel_grace,
        )
        ctx.log(
            f"handler did not stop within {self.cancel_grace:g}s of the cancel", LogStream.SYSTEM
        )
        self._report(
            ctx,
            _Outcome.failed(
                f"cancelled: {ctx.cancel_reason}; the handler did not stop within "
                f"{self.cancel_grace:g}s",
                retryable=False,
            ),
        )

    # -- heartbeats ---------------------------------------------------------------------------

    def _heartbeat_loop(self) -> None:
        while not self._background_stop.is_set():
            self._beat_now.wait(self.heartbeat_interval)
            self._beat_now.clear()
            if self._background_stop.is_set():
                return
            try:
                self._beat()
            except Exception:
                log.exception("heartbeat error")

    def _beat(self) -> None:
        cpu, memory = self._load.sample()
        with self._cond:
            running = [RunningTask(c.task_id, c.attempt) for c in self._running.values()]
        try:
            ack = self.client.heartbeat(
                self.agent_id,
                cpu_percent=cpu,
                memory_percent=memory,
                active_tasks=len(running),
                running=running,
            )
        except NotFound as exc:
            try:
                self._reregister(exc)
            except MusterError:
                pass
            return
        except MusterError as exc:
            if exc.transient:
                self._unreachable(exc)
            else:
                log.error("heartbeat refused: %s", exc)
            return
        self._reachable()
        self._apply_cancel(ack.cancel, "heartbeat")

    # -- draining -----------------------------------------------------------------------------

    def _announce_drain(self) -> None:
        """Best effort: marks the agent draining, so the server stops assigning it tasks it
        would no longer claim (they would wait out ASSIGN_TIMEOUT, again and again until
        HEARTBEAT_TIMEOUT). The agent key may drain its own process, named by its instance id;
        its next process starts undrained. If the server refuses
        anyway, it learns of the departure when heartbeats stop."""
        try:
            self.client.drain_agent(self.agent_id, instance_id=self.instance_id)
        except (Forbidden, Unauthorized) as exc:
            log.debug("cannot mark agent %s draining with this key: %s", self.agent_id, exc)
        except MusterError as exc:
            log.debug("cannot mark agent %s draining: %s", self.agent_id, exc)

    def _drain(self) -> None:
        grace = self._grace_override if self._grace_override is not None else self.shutdown_grace
        deadline = time.monotonic() + grace
        with self._cond:
            while self._running and not self._hard_stop.is_set():
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(min(left, 0.5))
            leftover = [c for c in self._running.values() if not c._reported]
        handed_back = []
        for ctx in leftover:
            ctx._cancel("the agent is shutting down")
            if not ctx._claim_report():
                continue
            log.warning(
                "task %s attempt %d still running after %gs: handing it back",
                ctx.task_id,
                ctx.attempt,
                grace,
            )
            ctx.log("agent shutting down: handing the task back", LogStream.SYSTEM)
            handed_back.append((ctx, _Outcome.failed("agent shutting down", retryable=True)))
        if handed_back:
            self._report_all(handed_back)


def _call(fn: Handler, ctx: TaskContext) -> Any:
    if inspect.iscoroutinefunction(fn):
        return asyncio.run(fn(ctx))
    result = fn(ctx)
    if inspect.isawaitable(result):
        return asyncio.run(_await(result))
    return result


async def _await(awaitable: Any) -> Any:
    return await awaitable


def _batch(lines: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    size = 0
    out: List[Dict[str, Any]] = []
    for line in lines:
        cost = len(line["text"]) * 4 + 64
        if out and (len(out) >= BATCH_LINES or size + cost > BATCH_BYTES):
            break
        out.append(line)
        size += cost
    return out
