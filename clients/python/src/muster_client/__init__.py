"""muster-client: the Python client and agent runtime of muster, the control plane for homelab
automation and AI agents.

- `Client`: one typed method per route of the v1 HTTP API.
- `Agent`: the agent loop (register, heartbeat, long-poll claim, handlers per task kind,
  logs, results, cancellation, graceful drain).

Wire types mirror the `muster-api` crate and live in `muster_client.models`; the registry's
record of an agent is `muster_client.models.Agent`, exported here as `AgentInfo` because
`Agent` is the runtime.
"""

__version__ = "0.1.0"

from .agent import Agent, NonRetryable, Permanent, TaskCancelled, TaskContext  # noqa: E402
from .client import Client  # noqa: E402
from .errors import (  # noqa: E402
    BadGateway,
    BadRequest,
    BudgetExceeded,
    Conflict,
    Forbidden,
    InternalError,
    InvalidField,
    MethodNotAllowed,
    MusterConnectionError,
    MusterError,
    NotFound,
    PayloadTooLarge,
    TooManyRequests,
    Unauthorized,
    Unavailable,
    UnsupportedMediaType,
)
from .models import (  # noqa: E402
    CANCEL_HEADER,
    AgentStatus,
    Assignment,
    Attempt,
    AttemptOutcome,
    Candidate,
    Claim,
    ClaimBatch,
    ErrorCode,
    Event,
    Health,
    HeartbeatAck,
    LogLine,
    LogPage,
    LogStream,
    NewLogLine,
    Report,
    ReportOutcome,
    ReportResult,
    RunningTask,
    SubmitResult,
    Task,
    TaskList,
    TaskState,
)
from .models import Agent as AgentInfo  # noqa: E402

__all__ = [
    "__version__",
    "Client",
    "Agent",
    "TaskContext",
    "Permanent",
    "NonRetryable",
    "TaskCancelled",
    "AgentInfo",
    "AgentStatus",
    "Assignment",
    "Attempt",
    "AttemptOutcome",
    "Candidate",
    "Claim",
    "ClaimBatch",
    "ErrorCode",
    "Event",
    "Health",
    "HeartbeatAck",
    "LogLine",
    "LogPage",
    "LogStream",
    "NewLogLine",
    "Report",
    "ReportOutcome",
    "ReportResult",
    "RunningTask",
    "SubmitResult",
    "Task",
    "TaskList",
    "TaskState",
    "CANCEL_HEADER",
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
    "BudgetExceeded",
    "BadGateway",
    "Unavailable",
    "InternalError",
    "MusterConnectionError",
]
