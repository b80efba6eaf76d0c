"""Polling helpers: every wait in the tests has a deadline, none is a fixed sleep."""

from __future__ import annotations

import time
from typing import Any, Callable

from muster_client import Client, Task


def wait_for(
    predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05, what: str = ""
) -> Any:
    """Polls `predicate` until it returns something truthy (returned) or the deadline passes."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(
        f"timed out after {timeout}s waiting for {what or predicate}; last: {last!r}"
    )


def final_task(client: Client, task_id: str, timeout: float = 10.0) -> Task:
    """Waits for a task to reach a final state and returns it."""
    return wait_for(
        lambda: (lambda t: t if t.state.is_final else None)(client.get_task(task_id)),
        timeout=timeout,
        what=f"task {task_id} to finish",
    )
