"""Fixtures that run the real `muster` binary: each test gets its own server on a free
loopback port with its own SQLite file, killed at the end."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List

import pytest

from muster_client import Agent, Client

REPO = Path(__file__).resolve().parents[3]

# Timings short enough for tests: retries after ~50–100 ms, sweeps every 100 ms.
FAST_ENV = {
    "RETRY_BACKOFF": "50ms",
    "RETRY_BACKOFF_MAX": "100ms",
    "SWEEP_INTERVAL": "100ms",
}


def _binary() -> Path:
    explicit = os.environ.get("MUSTER_BIN")
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            pytest.exit(f"MUSTER_BIN={explicit} does not exist", returncode=2)
        return path
    path = REPO / "target" / "debug" / "muster"
    if not path.is_file():
        build = subprocess.run(
            ["cargo", "build", "-p", "muster", "--bin", "muster"],
            cwd=REPO,
            capture_output=True,
            text=True,
        )
        if build.returncode != 0 or not path.is_file():
            pytest.exit(
                f"cannot build muster (set MUSTER_BIN to a built binary):\n{build.stderr[-3000:]}",
                returncode=2,
            )
    return path


@pytest.fixture(scope="session")
def muster_bin() -> Path:
    return _binary()


class Server:
    """A running `muster serve`."""

    def __init__(self, binary: Path, db: Path, env: Dict[str, str]) -> None:
        full_env = {k: v for k, v in os.environ.items() if k not in ("API_KEY", "AGENT_KEY")}
        full_env.update(
            {"DB_PATH": str(db), "ADDR": "127.0.0.1:0", "LOG_FORMAT": "json", "RUST_LOG": "info"}
        )
        full_env.update(FAST_ENV)
        full_env.update(env)
        self.proc = subprocess.Popen(
            [str(binary), "serve"],
            env=full_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.log: List[str] = []
        self.url = self._read_addr()
        # Keep draining the log so the server never blocks on a full pipe.
        threading.Thread(target=self._drain, daemon=True).start()

    def _read_addr(self) -> str:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            self.log.append(line)
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            addr = (entry.get("fields") or {}).get("addr")
            if addr:
                return f"http://{addr}"
        self.proc.kill()
        raise RuntimeError("muster did not report its address:\n" + "".join(self.log[-20:]))

    def _drain(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.log.append(line)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)


@pytest.fixture
def start_server(muster_bin: Path, tmp_path: Path) -> Iterator[Callable[..., Server]]:
    servers: List[Server] = []

    def start(**env: str) -> Server:
        server = Server(muster_bin, tmp_path / f"muster-{len(servers)}.db", env)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def server(start_server: Callable[..., Server]) -> Server:
    return start_server()


@pytest.fixture
def client(server: Server) -> Client:
    return Client(server.url, timeout=10)


@pytest.fixture
def make_agent(server: Server) -> Iterator[Callable[..., Agent]]:
    """Builds an Agent against the test server with quick timings; `start=True` (default)
    runs it on a thread and waits until it registered. Every agent is stopped at the end."""
    agents: List[Agent] = []

    def make(agent_id: str = "py-agent", start: bool = True, **kwargs: Any) -> Agent:
        options: Dict[str, Any] = {
            "capabilities": ["py"],
            "heartbeat_interval": 0.3,
            "log_flush_interval": 0.2,
            "shutdown_grace": 5.0,
            "backoff_cap": 0.5,
            "host": "test-host",
        }
        options.update(kwargs)
        agent = Agent(server.url, agent_id, **options)
        agents.append(agent)
        if start:
            agent.start()
            assert agent.registered.wait(10), "agent did not register"
        return agent

    yield make
    for agent in agents:
        agent.stop(grace=0)
    for agent in agents:
        if agent._started:
            agent.wait_stopped(10)


@pytest.fixture(autouse=True)
def _agent_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="muster_client")
