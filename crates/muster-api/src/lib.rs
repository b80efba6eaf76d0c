//! Wire types of muster's v1 HTTP API, shared by the server and every client.
//!
//! Everything here is plain data with serde derives; this crate does no I/O. Store rows and
//! server internals convert to and from these types at the HTTP edge.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;

/// Labels are free-form string pairs an operator filters and groups by.
pub type Labels = BTreeMap<String, String>;

/// The bounds of what clients send: lengths in characters (Unicode scalar values, which is what
/// JSON Schema's `maxLength` counts), counts of entries, ranges. The server refuses a request past
/// them (422, naming the field); the OpenAPI document states the same numbers (its attributes
/// must be literals, so `schema_tests` holds the two together).
pub mod limits {
    /// Longest agent id and instance id.
    pub const MAX_ID_CHARS: usize = 200;
    /// Longest task kind (a task's `kind`, an agent's `kinds[i]`).
    pub const MAX_KIND_CHARS: usize = 200;
    /// Most task kinds an agent may say it handles.
    pub const MAX_KINDS: usize = 100;
    /// Most capabilities an agent or a task may list, and the longest one.
    pub const MAX_CAPABILITIES: usize = 100;
    pub const MAX_CAPABILITY_CHARS: usize = 200;
    /// Most labels on an agent or a task; longest key and value.
    pub const MAX_LABELS: usize = 50;
    pub const MAX_LABEL_KEY_CHARS: usize = 100;
    pub const MAX_LABEL_VALUE_CHARS: usize = 500;
    /// Most MCP servers an agent may describe, and the largest description of one, in bytes of
    /// JSON (no schema keyword can say this; the document says it in words).
    pub const MAX_MCP_SERVERS: usize = 50;
    pub const MAX_MCP_SERVER_BYTES: usize = 16 * 1024;
    /// Longest `host` and `version` of a registration.
    pub const MAX_HOST_CHARS: usize = 255;
    pub const MAX_VERSION_CHARS: usize = 100;
    /// Longest `lock_key` and `idempotency_key`.
    pub const MAX_KEY_CHARS: usize = 500;
    /// Most tasks one agent may run at once (and so list in a heartbeat's `running`).
    pub const MAX_CONCURRENCY: u32 = 10_000;
    /// Most retries a task may ask for.
    pub const MAX_RETRIES: u32 = 1000;
    /// Longest long-poll a claim may ask for, in seconds.
    pub const MAX_WAIT_S: u64 = 120;
    /// Most tasks one batch claim (`GET /api/v1/agents/{id}/tasks/claim?max=`) may ask for.
    pub const MAX_CLAIM_BATCH: u32 = 100;
    /// Most reports one `POST /api/v1/agents/{id}/reports` may carry.
    pub const MAX_REPORT_BATCH: usize = 100;
    /// Most tasks one `POST /api/v1/tasks/batch` may carry (the body limit still applies).
    pub const MAX_SUBMIT_BATCH: usize = 1000;
    /// Most lines one log post may carry.
    pub const MAX_LINES: usize = 10_000;
    /// Longest error text of a failure report.
    pub const MAX_ERROR_CHARS: usize = 64 * 1024;
    /// Largest page of `GET /api/v1/tasks`, `GET /api/v1/tasks/{id}/logs`, `GET /api/v1/audit`.
    pub const MAX_TASK_PAGE: usize = 500;
    pub const MAX_LOG_PAGE: usize = 5000;
    pub const MAX_AUDIT_PAGE: usize = 1000;
    /// Notifications per page of `GET /api/v1/notifications`.
    pub const MAX_NOTIFICATION_PAGE: usize = 200;
    /// Most messages and tools one `POST /api/v1/llm/chat` carries: a session that needs more
    /// should summarise.
    pub const MAX_CHAT_MESSAGES: usize = 500;
    pub const MAX_CHAT_TOOLS: usize = 128;

    /// Text without control characters (Unicode category Cc, what Rust's `char::is_control`
    /// tests): U+0000–U+001F and U+007F–U+009F. Written with `\uXXXX` escapes, which ECMA 262,
    /// Python and Rust regexes read alike.
    pub const TEXT_PATTERN: &str = "^[^\\u0000-\\u001f\\u007f-\\u009f]*$";
    /// Text as [`TEXT_PATTERN`] with at least one character that is not white space (Unicode
    /// White_Space, what Rust's `str::trim` removes): not blank.
    pub const REQUIRED_TEXT_PATTERN: &str = "^[^\\u0000-\\u001f\\u007f-\\u009f]*[^\\u0000-\\u0020\\u007f-\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000][^\\u0000-\\u001f\\u007f-\\u009f]*$";
    /// An agent id: as [`REQUIRED_TEXT_PATTERN`], and no `/` (it is a path segment).
    pub const AGENT_ID_PATTERN: &str = "^[^/\\u0000-\\u001f\\u007f-\\u009f]*[^/\\u0000-\\u0020\\u007f-\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000][^/\\u0000-\\u001f\\u007f-\\u009f]*$";
}

/// Schemas that field attributes cannot say: the items of bounded string lists and the request
/// labels. Named, so the document says each once.
pub mod schema {
    use std::borrow::Cow;

    use utoipa::openapi::RefOr;
    use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};

    use crate::limits::*;

    fn required_text(max: usize, description: &str) -> ObjectBuilder {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .min_length(Some(1))
            .max_length(Some(max))
            .pattern(Some(REQUIRED_TEXT_PATTERN))
            .description(Some(description))
    }

    /// One capability: not blank, no control characters.
    pub struct Capability;

    impl utoipa::PartialSchema for Capability {
        fn schema() -> RefOr<Schema> {
            required_text(
                MAX_CAPABILITY_CHARS,
                "A capability: not blank, no control characters.",
            )
            .into()
        }
    }

    impl utoipa::ToSchema for Capability {
        fn name() -> Cow<'static, str> {
            "Capability".into()
        }
    }

    /// One task kind: not blank, no control characters.
    pub struct TaskKind;

    impl utoipa::PartialSchema for TaskKind {
        fn schema() -> RefOr<Schema> {
            required_text(
                MAX_KIND_CHARS,
                "A task kind: not blank, no control characters.",
            )
            .into()
        }
    }

    impl utoipa::ToSchema for TaskKind {
        fn name() -> Cow<'static, str> {
            "TaskKind".into()
        }
    }

    /// Labels as a client sends them: bounded count, keys not blank, no control characters.
    pub struct Labels;

    impl utoipa::PartialSchema for Labels {
        fn schema() -> RefOr<Schema> {
            ObjectBuilder::new()
                .schema_type(Type::Object)
                .max_properties(Some(MAX_LABELS))
                .property_names(Some(
                    ObjectBuilder::new()
                        .schema_type(Type::String)
                        .min_length(Some(1))
                        .max_length(Some(MAX_LABEL_KEY_CHARS))
                        .pattern(Some(REQUIRED_TEXT_PATTERN)),
                ))
                .additional_properties(Some(
                    ObjectBuilder::new()
                        .schema_type(Type::String)
                        .max_length(Some(MAX_LABEL_VALUE_CHARS))
                        .pattern(Some(TEXT_PATTERN)),
                ))
                .description(Some(
                    "Free-form string pairs to filter and group by: keys not blank, no control \
                     characters in keys or values.",
                ))
                .into()
        }
    }

    impl utoipa::ToSchema for Labels {
        fn name() -> Cow<'static, str> {
            "Labels".into()
        }
    }
}

/// Integers a client sends. JSON Schema's `integer` is any number without a fraction, so `3.0`
/// is one, and generators send it; serde's integer types refuse it. These read both forms and
/// refuse a fraction or a value out of range, naming the range.
mod whole {
    use std::marker::PhantomData;

    use serde::Deserialize;
    use serde::de::{self, Deserializer, Unexpected, Visitor};

    pub(crate) trait Whole: Sized + TryFrom<i128> {
        const MIN: i128;
        const MAX: i128;
    }

    macro_rules! whole {
        ($($t:ty),*) => {$(
            impl Whole for $t {
                const MIN: i128 = <$t>::MIN as i128;
                const MAX: i128 = <$t>::MAX as i128;
            }
        )*};
    }
    whole!(u16, u32, i32);

    struct Number<T>(PhantomData<T>);

    impl<T: Whole> Number<T> {
        fn fit<E: de::Error>(&self, n: i128, unexpected: Unexpected<'_>) -> Result<T, E> {
            T::try_from(n).map_err(|_| E::invalid_value(unexpected, self))
        }
    }

    impl<T: Whole> Visitor<'_> for Number<T> {
        type Value = T;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "an integer from {} to {}", T::MIN, T::MAX)
        }

        fn visit_i64<E: de::Error>(self, v: i64) -> Result<T, E> {
            self.fit(i128::from(v), Unexpected::Signed(v))
        }

        fn visit_u64<E: de::Error>(self, v: u64) -> Result<T, E> {
            self.fit(i128::from(v), Unexpected::Unsigned(v))
        }

        fn visit_f64<E: de::Error>(self, v: f64) -> Result<T, E> {
            // Within the range an f64 holds every integer exactly, so the cast is the value.
            if v.fract() == 0.0 && v >= T::MIN as f64 && v <= T::MAX as f64 {
                self.fit(v as i128, Unexpected::Float(v))
            } else {
                Err(E::invalid_value(Unexpected::Float(v), &self))
            }
        }
    }

    struct Required<T>(T);

    impl<'de, T: Whole> Deserialize<'de> for Required<T> {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            d.deserialize_any(Number(PhantomData)).map(Required)
        }
    }

    /// An integer, `3` or `3.0`.
    pub(crate) fn required<'de, D: Deserializer<'de>, T: Whole>(d: D) -> Result<T, D::Error> {
        Required::deserialize(d).map(|Required(n)| n)
    }

    /// An optional integer: absent or `null` is `None`.
    pub(crate) fn optional<'de, D: Deserializer<'de>, T: Whole>(
        d: D,
    ) -> Result<Option<T>, D::Error> {
        Ok(Option::<Required<T>>::deserialize(d)?.map(|Required(n)| n))
    }
}

/// Times a client sends, read as chrono reads them (RFC 3339) but refused with a message that
/// shows the form expected: serde's own says only "input contains invalid characters".
mod time {
    use chrono::{DateTime, FixedOffset, Utc};
    use serde::Deserialize;
    use serde::de::{self, Deserializer, Visitor};

    /// What a valid time looks like, for error messages.
    pub(crate) const EXPECTED: &str = "an RFC 3339 time such as 2026-11-27T09:00:00Z";

    struct Time;

    impl Visitor<'_> for Time {
        type Value = DateTime<Utc>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(EXPECTED)
        }

        fn visit_str<E: de::Error>(self, text: &str) -> Result<Self::Value, E> {
            text.parse::<DateTime<FixedOffset>>()
                .map(|t| t.with_timezone(&Utc))
                .map_err(|_| E::custom(format!("{text:?} is not a time: expected {EXPECTED}")))
        }
    }

    /// One time, as a string.
    struct Required(DateTime<Utc>);

    impl<'de> Deserialize<'de> for Required {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            d.deserialize_str(Time).map(Required)
        }
    }

    /// An optional time: absent or `null` is `None`.
    pub(crate) fn optional<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<DateTime<Utc>>, D::Error> {
        Ok(Option::<Required>::deserialize(d)?.map(|Required(t)| t))
    }
}

macro_rules! closed_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $($(#[$vmeta])* $variant),+ }

        impl $name {
            /// Every variant, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The stable name used on the wire and in the database.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }

            /// Parses a stable name; `None` for anything unknown.
            pub fn parse(text: &str) -> Option<Self> {
                match text { $($text => Some($name::$variant),)+ _ => None }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

closed_enum! {
    /// Where a task is in its lifecycle: `queued → assigned → running → completed`, or `failed`,
    /// or `cancelled`.
    TaskState {
        Queued => "queued",
        Assigned => "assigned",
        Running => "running",
        Completed => "completed",
        Failed => "failed",
        Cancelled => "cancelled",
    }
}

impl TaskState {
    /// A final state never changes again (except by an operator's retry).
    pub fn is_final(self) -> bool {
        matches!(
            self,
            TaskState::Completed | TaskState::Failed | TaskState::Cancelled
        )
    }
}

closed_enum! {
    /// How one attempt of a task ended.
    AttemptOutcome {
        Running => "running",
        Completed => "completed",
        Failed => "failed",
        /// The attempt ran past the task's `timeout_s`.
        TimedOut => "timed_out",
        /// The agent stopped heartbeating or its lease expired.
        Lost => "lost",
        Cancelled => "cancelled",
    }
}

closed_enum! {
    /// An agent's standing in the registry.
    AgentStatus {
        Online => "online",
        Offline => "offline",
        /// Online but takes no new tasks.
        Draining => "draining",
    }
}

closed_enum! {
    /// Which output a log line came from.
    LogStream {
        Stdout => "stdout",
        Stderr => "stderr",
        /// Lines the runtime itself writes (start, exit code, cancellation).
        System => "system",
    }
}

closed_enum! {
    /// Stable machine-readable error codes; the HTTP status follows from the code.
    ErrorCode {
        BadRequest => "bad_request",
        Unauthorized => "unauthorized",
        Forbidden => "forbidden",
        NotFound => "not_found",
        MethodNotAllowed => "method_not_allowed",
        Conflict => "conflict",
        PayloadTooLarge => "payload_too_large",
        UnsupportedMediaType => "unsupported_media_type",
        InvalidField => "invalid_field",
        TooManyRequests => "too_many_requests",
        /// A workflow's LLM budget is spent for its period and it has no fallback.
        BudgetExceeded => "budget_exceeded",
        /// An upstream service (a language model's API) failed or answered wrongly.
        BadGateway => "bad_gateway",
        Unavailable => "unavailable",
        Internal => "internal",
    }
}

impl ErrorCode {
    /// The HTTP status code that carries this error.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::BadRequest => 400,
            ErrorCode::Unauthorized => 401,
            ErrorCode::Forbidden => 403,
            ErrorCode::NotFound => 404,
            ErrorCode::MethodNotAllowed => 405,
            ErrorCode::Conflict => 409,
            ErrorCode::PayloadTooLarge => 413,
            ErrorCode::UnsupportedMediaType => 415,
            ErrorCode::InvalidField => 422,
            ErrorCode::TooManyRequests => 429,
            ErrorCode::BudgetExceeded => 429,
            ErrorCode::BadGateway => 502,
            ErrorCode::Unavailable => 503,
            ErrorCode::Internal => 500,
        }
    }
}

/// The body of every error response: `{"error": {"code", "message"}}`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    pub code: ErrorCode,
    pub message: String,
}

// ---------------------------------------------------------------------------------------------
// Agents

/// `POST /api/v1/agents/register`. The first five fields are the body the FastAPI command center
/// accepted, so existing agents need only a new URL; the rest are optional.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterAgent {
    /// Not blank, no `/`, no control characters.
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = "^[^/\\u0000-\\u001f\\u007f-\\u009f]*[^/\\u0000-\\u0020\\u007f-\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000][^/\\u0000-\\u001f\\u007f-\\u009f]*$"
    )]
    pub agent_id: String,
    #[serde(default)]
    #[schema(max_length = 255, pattern = "^[^\\u0000-\\u001f\\u007f-\\u009f]*$")]
    pub host: String,
    #[serde(default, deserialize_with = "whole::optional")]
    #[schema(minimum = 0, maximum = 65535)]
    pub port: Option<u16>,
    #[serde(default)]
    #[schema(value_type = Vec<schema::Capability>, max_items = 100)]
    pub capabilities: Vec<String>,
    /// MCP servers the agent offers, kept as the agent sent them: each at most 16 KiB as JSON.
    #[serde(default)]
    #[schema(max_items = 50)]
    pub mcp_servers: Vec<Value>,
    /// How many tasks it runs at once; default 1.
    #[serde(default, deserialize_with = "whole::optional")]
    #[schema(minimum = 1, maximum = 10000)]
    pub max_concurrency: Option<u32>,
    #[serde(default)]
    #[schema(value_type = schema::Labels)]
    pub labels: Labels,
    #[serde(default)]
    #[schema(max_length = 100, pattern = "^[^\\u0000-\\u001f\\u007f-\\u009f]*$")]
    pub version: Option<String>,
    /// A random id the agent process draws at start. A registration with a new one means a
    /// new process: the previous one's tasks are given back at once. An agent presents it to
    /// drain itself. Not blank, no control characters.
    #[serde(default)]
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = "^[^\\u0000-\\u001f\\u007f-\\u009f]*[^\\u0000-\\u0020\\u007f-\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000][^\\u0000-\\u001f\\u007f-\\u009f]*$"
    )]
    pub instance_id: Option<String>,
    /// The task kinds it handles; empty or absent: any kind (as the FastAPI command center's
    /// agents expect). Tasks of other kinds are never routed to it.
    #[serde(default)]
    #[schema(value_type = Vec<schema::TaskKind>, max_items = 100)]
    pub kinds: Vec<String>,
}

/// `POST /api/v1/agents/{id}/drain`. With the key of an agent, `instance_id` must name the
/// agent's current process (it drains itself, until it next starts); without one the drain is
/// an operator's and lasts until undrained.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DrainAgent {
    /// The agent's current `instance_id`. Not blank, no control characters.
    #[serde(default)]
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = "^[^\\u0000-\\u001f\\u007f-\\u009f]*[^\\u0000-\\u0020\\u007f-\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000][^\\u0000-\\u001f\\u007f-\\u009f]*$"
    )]
    pub instance_id: Option<String>,
}

/// One agent as the registry knows it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Agent {
    pub agent_id: String,
    pub host: String,
    pub port: Option<u16>,
    pub capabilities: Vec<String>,
    pub mcp_servers: Vec<Value>,
    pub max_concurrency: u32,
    pub labels: Labels,
    pub version: Option<String>,
    pub status: AgentStatus,
    /// The process that registered last, when the agent sends one.
    #[serde(default)]
    pub instance_id: Option<String>,
    /// The task kinds it handles; empty: any.
    #[serde(default)]
    pub kinds: Vec<String>,
    /// Who drained it, while it is drained: `operator` (until undrained, across restarts and
    /// registrations) or `agent` (it drained itself; a new process undoes it).
    #[serde(default)]
    pub drained_by: Option<String>,
    pub registered_at: DateTime<Utc>,
    pub last_heartbeat_at: Option<DateTime<Utc>>,
    pub cpu_percent: Option<f64>,
    pub memory_percent: Option<f64>,
    /// Tasks assigned to or running on this agent, by the server's own count.
    pub active_tasks: u32,
}

/// `GET /api/v1/agents`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AgentList {
    pub agents: Vec<Agent>,
}

/// A task the agent believes it is running, sent with heartbeats so the server can tell it which
/// of them to stop.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RunningTask {
    pub task_id: Uuid,
    #[serde(deserialize_with = "whole::required")]
    #[schema(format = Int64, maximum = 4294967295_i64)]
    pub attempt: u32,
}

/// `POST /api/v1/agents/{id}/heartbeat`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Heartbeat {
    #[serde(default)]
    #[schema(minimum = 0, maximum = 100)]
    pub cpu_percent: f64,
    #[serde(default)]
    #[schema(minimum = 0, maximum = 100)]
    pub memory_percent: f64,
    #[serde(default, deserialize_with = "whole::required")]
    #[schema(format = Int64, maximum = 4294967295_i64)]
    pub active_tasks: u32,
    /// Optional: the attempts the agent is running. When present, only these leases are
    /// extended (a task the agent forgot, say after a restart, is rescued when its lease lapses),
    /// and any attempt the server no longer considers current comes back in `cancel`. When
    /// absent, every running task of the agent is extended.
    #[serde(default)]
    #[schema(max_items = 10000)]
    pub running: Option<Vec<RunningTask>>,
}

/// The answer to a heartbeat.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct HeartbeatAck {
    pub status: AgentStatus,
    /// Tasks the agent must stop: cancelled by an operator, timed out, or given to another agent.
    pub cancel: Vec<Uuid>,
}

/// Header on claim answers (200 and 204) listing, comma-separated, the tasks to stop.
pub const CANCEL_HEADER: &str = "x-muster-cancel";

// ---------------------------------------------------------------------------------------------
// Tasks

/// `POST /api/v1/tasks`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubmitTask {
    /// What to do; the agent's handler for this kind runs it. Not blank, no control characters.
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = "^[^\\u0000-\\u001f\\u007f-\\u009f]*[^\\u0000-\\u0020\\u007f-\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000][^\\u0000-\\u001f\\u007f-\\u009f]*$"
    )]
    pub kind: String,
    /// Any JSON value, handed to the agent as it is; default `null`.
    #[serde(default)]
    pub payload: Value,
    /// Every one of these must be among an agent's capabilities for it to take the task.
    #[serde(default)]
    #[schema(value_type = Vec<schema::Capability>, max_items = 100)]
    pub capabilities: Vec<String>,
    /// Higher runs first; default 0, between -32768 and 32767.
    #[serde(default, deserialize_with = "whole::required")]
    #[schema(minimum = -32768, maximum = 32767)]
    pub priority: i32,
    /// Retries after the first attempt; the server's default when absent.
    #[serde(default, deserialize_with = "whole::optional")]
    #[schema(minimum = 0, maximum = 1000)]
    pub max_retries: Option<u32>,
    /// Upper bound of one attempt, in seconds.
    #[serde(default, deserialize_with = "whole::optional")]
    #[schema(format = Int64, minimum = 1, maximum = 4294967295_i64)]
    pub timeout_s: Option<u32>,
    /// At most one task per lock key is assigned or running at a time.
    #[serde(default)]
    #[schema(
        min_length = 1,
        max_length = 500,
        pattern = "^[^\\u0000-\\u001f\\u007f-\\u009f]*[^\\u0000-\\u0020\\u007f-\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000][^\\u0000-\\u001f\\u007f-\\u009f]*$"
    )]
    pub lock_key: Option<String>,
    /// A second submit with the same key returns the first task (200) instead of a new one.
    #[serde(default)]
    #[schema(
        min_length = 1,
        max_length = 500,
        pattern = "^[^\\u0000-\\u001f\\u007f-\\u009f]*[^\\u0000-\\u0020\\u007f-\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000][^\\u0000-\\u001f\\u007f-\\u009f]*$"
    )]
    pub idempotency_key: Option<String>,
    /// Not before this time (RFC 3339, e.g. `2026-11-27T09:00:00Z`).
    #[serde(default, deserialize_with = "time::optional")]
    pub run_after: Option<DateTime<Utc>>,
    #[serde(default)]
    #[schema(value_type = schema::Labels)]
    pub labels: Labels,
}

/// One scored candidate of an assignment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Candidate {
    pub agent_id: String,
    pub score: f64,
    pub active: u32,
    pub cpu_percent: f64,
    pub memory_percent: f64,
}

/// Why a task went to its agent: the eligible agents and their scores, best first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Assignment {
    pub agent_id: String,
    pub assigned_at: DateTime<Utc>,
    pub candidates: Vec<Candidate>,
}

/// One attempt at running a task.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Attempt {
    pub attempt: u32,
    pub agent_id: String,
    pub started_at: DateTime<Utc>,
    pub ended_at: Option<DateTime<Utc>>,
    pub outcome: AttemptOutcome,
    pub error: Option<String>,
    pub assignment: Option<Assignment>,
}

/// A task. `attempts` is filled by `GET /api/v1/tasks/{id}` and left empty in lists.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Task {
    pub id: Uuid,
    pub kind: String,
    pub state: TaskState,
    pub payload: Value,
    pub capabilities: Vec<String>,
    pub priority: i32,
    pub max_retries: u32,
    pub timeout_s: Option<u32>,
    pub lock_key: Option<String>,
    pub idempotency_key: Option<String>,
    pub run_after: Option<DateTime<Utc>>,
    pub labels: Labels,
    /// The current attempt's number (0 before the first claim); reports must carry it.
    pub attempt: u32,
    pub agent_id: Option<String>,
    pub cancel_requested: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub result: Option<Value>,
    pub usage: Option<Value>,
    pub error: Option<String>,
    pub assignment: Option<Assignment>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attempts: Vec<Attempt>,
    /// Why a queued task waits, in words (no capable agent online, all capable agents busy,
    /// its lock held by another task, `run_after` in the future). Only `GET
    /// /api/v1/tasks/{id}` fills it in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting: Option<String>,
}

/// `GET /api/v1/tasks`: newest first; pass `next_cursor` back as `cursor` for the next page.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TaskList {
    pub tasks: Vec<Task>,
    pub next_cursor: Option<String>,
}

/// One line of output, as an agent sends it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewLogLine {
    #[serde(default, deserialize_with = "time::optional")]
    pub ts: Option<DateTime<Utc>>,
    #[serde(default = "default_stream")]
    pub stream: LogStream,
    pub text: String,
}

fn default_stream() -> LogStream {
    LogStream::Stdout
}

/// `POST /api/v1/tasks/{id}/logs`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AppendLogs {
    #[serde(deserialize_with = "whole::required")]
    #[schema(format = Int64, maximum = 4294967295_i64)]
    pub attempt: u32,
    #[schema(max_items = 10000)]
    pub lines: Vec<NewLogLine>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct LogsAccepted {
    pub accepted: usize,
}

/// One stored log line; `id` orders lines and resumes a follower (`Last-Event-ID`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct LogLine {
    pub id: i64,
    pub attempt: u32,
    pub ts: DateTime<Utc>,
    pub stream: LogStream,
    pub text: String,
}

/// `GET /api/v1/tasks/{id}/logs` as JSON.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct LogPage {
    pub lines: Vec<LogLine>,
    /// Pass as `after` to read on; absent when the page reached the end.
    pub next_after: Option<i64>,
}

/// `POST /api/v1/tasks/{id}/complete`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CompleteTask {
    #[serde(deserialize_with = "whole::required")]
    #[schema(format = Int64, maximum = 4294967295_i64)]
    pub attempt: u32,
    /// Any JSON value; default `null`.
    #[serde(default)]
    pub result: Value,
    #[serde(default)]
    pub usage: Option<Value>,
}

/// `POST /api/v1/tasks/{id}/fail`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FailTask {
    #[serde(deserialize_with = "whole::required")]
    #[schema(format = Int64, maximum = 4294967295_i64)]
    pub attempt: u32,
    #[schema(max_length = 65536)]
    pub error: String,
    /// A retryable failure goes back to the queue while retries remain; default true.
    #[serde(default = "default_true")]
    pub retryable: bool,
}

fn default_true() -> bool {
    true
}

// ---------------------------------------------------------------------------------------------
// Batches: many claims, reports or submissions in one request (and one commit)

/// The answer to `GET /api/v1/agents/{id}/tasks/claim`: the tasks claimed (each now `running`
/// with its new `attempt`; empty when none came within `wait`), and running tasks to stop.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct ClaimedTasks {
    pub tasks: Vec<Task>,
    /// Running tasks of this agent that it must stop (the `x-muster-cancel` header of
    /// `tasks/next`).
    pub cancel: Vec<Uuid>,
}

closed_enum! {
    /// How the attempt a report speaks of ended.
    ReportOutcome {
        /// As `POST /api/v1/tasks/{id}/complete`.
        Completed => "completed",
        /// As `POST /api/v1/tasks/{id}/fail`.
        Failed => "failed",
    }
}

/// One report of a batch: the end of an attempt, as the single `complete` or `fail` route
/// takes it. A `completed` report may carry `result` and `usage`; a `failed` one must carry
/// `error` and may carry `retryable`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Report {
    pub task_id: Uuid,
    #[serde(deserialize_with = "whole::required")]
    #[schema(format = Int64, maximum = 4294967295_i64)]
    pub attempt: u32,
    pub outcome: ReportOutcome,
    /// `completed` only: any JSON value; default `null`.
    #[serde(default)]
    pub result: Value,
    /// `completed` only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Value>,
    /// `failed` only, and required there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(max_length = 65536)]
    pub error: Option<String>,
    /// `failed` only: a retryable failure goes back to the queue while retries remain;
    /// default true.
    #[serde(default = "default_true")]
    pub retryable: bool,
}

impl Report {
    /// A `completed` report.
    pub fn completed(task_id: Uuid, attempt: u32, result: Value, usage: Option<Value>) -> Self {
        Report {
            task_id,
            attempt,
            outcome: ReportOutcome::Completed,
            result,
            usage,
            error: None,
            retryable: true,
        }
    }

    /// A `failed` report.
    pub fn failed(task_id: Uuid, attempt: u32, error: String, retryable: bool) -> Self {
        Report {
            task_id,
            attempt,
            outcome: ReportOutcome::Failed,
            result: Value::Null,
            usage: None,
            error: Some(error),
            retryable,
        }
    }
}

/// `POST /api/v1/agents/{id}/reports`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReportBatch {
    /// Each judged alone, in order, in one commit.
    #[schema(max_items = 100)]
    pub reports: Vec<Report>,
}

/// How one report of a batch was judged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ReportResult {
    /// The report's task; absent when the report named none that could be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_id: Option<Uuid>,
    /// What the single route would have answered: 200 (applied), 404 (no such task), 409 (the
    /// attempt is not current; nothing changed), 422 (the report is invalid; nothing changed).
    pub status: u16,
    /// The error body's message, when `status` is not 200.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The answer to `POST /api/v1/agents/{id}/reports`: one result per report, in order.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ReportResults {
    pub results: Vec<ReportResult>,
}

/// `POST /api/v1/tasks/batch`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubmitBatch {
    /// Each validated alone, in order, each with its own idempotency key; all in one commit.
    #[schema(max_items = 1000)]
    pub tasks: Vec<SubmitTask>,
}

/// How one submission of a batch was judged.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SubmitResult {
    /// What the single route would have answered: 201 (queued), 200 (the idempotency key
    /// named an existing task), 422 (invalid; nothing stored).
    pub status: u16,
    /// The task queued, or the existing one its idempotency key named.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<Task>,
    /// The error body's message, when the submission was refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The answer to `POST /api/v1/tasks/batch`: one result per task, in order.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SubmitResults {
    pub results: Vec<SubmitResult>,
}

// ---------------------------------------------------------------------------------------------
// Audit

/// One entry of the hash-chained audit log. `hash` is SHA-256 over `prev_hash` and the entry's
/// canonical bytes (see the server's `audit` module); `muster audit verify` checks the chain.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AuditEntry {
    /// Its place in the chain: consecutive, never reused.
    pub seq: i64,
    /// When it happened.
    pub at: DateTime<Utc>,
    /// `operator:api`, `operator:ui`, `chat:telegram:<chat id>`, `agent:<id>` or `system`.
    pub actor: String,
    /// What happened, e.g. `task.cancel`, `agent.drain`, `login.failed`.
    pub action: String,
    /// What it happened to, e.g. `task:<id>`, `agent:<id>`, `client:<address>`.
    pub subject: String,
    pub detail: Value,
    /// The stable id (UUIDv7) of the outbox row that carried it.
    pub id: String,
    pub prev_hash: String,
    pub hash: String,
}

/// `GET /api/v1/audit`: oldest first after `after`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AuditPage {
    pub entries: Vec<AuditEntry>,
    /// Pass as `after` to read on; absent when the page reached the end.
    pub next_after: Option<i64>,
}

// ---------------------------------------------------------------------------------------------
// Notifications

closed_enum! {
    /// Where a notification stands: `pending` (waiting to be sent, or to be sent again),
    /// `delivered` (the service answered 2xx), `failed` (refused, or given up on).
    NotificationState {
        Pending => "pending",
        Delivered => "delivered",
        Failed => "failed",
    }
}

closed_enum! {
    /// How one attempt to send a notification ended.
    SendOutcome {
        /// Still waiting for the service's answer.
        InFlight => "in_flight",
        Delivered => "delivered",
        /// A timeout, a connection error, a 429 or a 5xx: tried again later.
        Retry => "retry",
        /// Another 4xx: the service refused the message itself.
        Refused => "refused",
    }
}

/// One attempt to send a notification.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NotificationAttempt {
    pub attempt: u32,
    pub started_at: DateTime<Utc>,
    pub ended_at: Option<DateTime<Utc>>,
    pub outcome: SendOutcome,
    /// The HTTP status the service answered, if it answered.
    pub status: Option<u16>,
    /// The start of the service's answer, or what went wrong.
    pub detail: Option<String>,
}

/// One message on its way to one channel (`[[notify.channels]]`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Notification {
    /// Stable across attempts: sent as the delivery id, so a receiver can de-duplicate.
    pub id: Uuid,
    pub channel: String,
    /// The event it reports (`task.failed`, `agent.offline`, …); for a digest, the last one.
    pub event: String,
    /// What it is about: `task:<id>`, `agent:<id>`.
    pub subject: String,
    pub title: String,
    pub message: String,
    /// The UI page of the thing, when `PUBLIC_URL` is set.
    pub link: Option<String>,
    /// How many events it reports: 1, or more for a digest of a quiet period.
    pub count: u32,
    /// Sent at the end of a quiet period, for the events that came during it.
    pub digest: bool,
    pub state: NotificationState,
    pub created_at: DateTime<Utc>,
    /// When the next attempt is due (pending only).
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// When it was delivered or given up on.
    pub finished_at: Option<DateTime<Utc>>,
    /// Why the last attempt did not deliver it, or why it was given up on.
    pub error: Option<String>,
    pub attempts: Vec<NotificationAttempt>,
}

/// `GET /api/v1/notifications`: newest first.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NotificationPage {
    pub notifications: Vec<Notification>,
    /// Pass as `before` to read older ones; absent at the end.
    pub next_before: Option<i64>,
}

/// A configured channel, without its secrets.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NotifyChannel {
    pub name: String,
    /// `home-assistant`, `ntfy`, `telegram`, `discord` or `webhook`.
    pub kind: String,
    /// Where it sends, with no secret in it.
    pub target: String,
    /// The events rules send to it.
    pub events: Vec<String>,
}

/// What `POST /api/v1/notify/channels/{name}/test` sent and what the service answered.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NotifyTestResult {
    pub channel: String,
    pub delivered: bool,
    pub outcome: SendOutcome,
    pub status: Option<u16>,
    /// The start of the service's answer, or what went wrong.
    pub detail: String,
    pub duration_ms: u64,
}

// ---------------------------------------------------------------------------------------------
// Events and health

/// What `GET /api/v1/events` streams; the SSE event name is `kind`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Event {
    /// A task changed state.
    Task {
        task_id: Uuid,
        state: TaskState,
        agent_id: Option<String>,
        attempt: u32,
    },
    /// An agent registered, changed status or was removed.
    Agent {
        agent_id: String,
        status: Option<AgentStatus>,
    },
    /// An incident was opened, took an alert, or moved on.
    Incident {
        incident_id: Uuid,
        state: IncidentState,
    },
    /// A canary's run started, or was judged or interrupted.
    Canary {
        canary: String,
        run: Uuid,
        outcome: CanaryOutcome,
    },
    /// The stream could not resume where asked (the server restarted or the id is too old):
    /// reload state, then go on from here.
    Resync,
}

/// `GET /health`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Health {
    pub status: String,
    pub db: String,
    pub version: String,
    pub uptime_s: u64,
}

#[cfg(test)]
mod time_tests {
    use super::*;

    #[test]
    fn a_time_that_is_not_rfc_3339_is_refused_with_an_example() {
        let ok: SubmitTask = serde_json::from_value(serde_json::json!(
            {"kind": "k", "run_after": "2026-11-27T10:00:00+01:00"}
        ))
        .unwrap();
        assert_eq!(
            ok.run_after.unwrap().to_rfc3339(),
            "2026-11-27T09:00:00+00:00"
        );
        let none: SubmitTask =
            serde_json::from_value(serde_json::json!({"kind": "k", "run_after": null})).unwrap();
        assert!(none.run_after.is_none());
        for bad in [serde_json::json!("tomorrow"), serde_json::json!(5)] {
            let err = serde_json::from_value::<SubmitTask>(
                serde_json::json!({"kind": "k", "run_after": bad}),
            )
            .unwrap_err()
            .to_string();
            assert!(
                err.contains("RFC 3339") && err.contains("2026-11-27T09:00:00Z"),
                "{err}"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_task_state_round_trips_through_its_name() {
        for state in TaskState::ALL {
            assert_eq!(TaskState::parse(state.as_str()), Some(*state));
            let json = serde_json::to_string(state).unwrap();
            assert_eq!(json, format!("\"{}\"", state.as_str()));
            assert_eq!(serde_json::from_str::<TaskState>(&json).unwrap(), *state);
        }
        assert_eq!(TaskState::parse("done"), None);
        assert!(serde_json::from_str::<TaskState>("\"done\"").is_err());
    }

    #[test]
    fn every_closed_enum_round_trips() {
        fn check<T: Copy + PartialEq + std::fmt::Debug + Serialize + for<'a> Deserialize<'a>>(
            all: &[T],
            name: fn(T) -> &'static str,
            parse: fn(&str) -> Option<T>,
        ) {
            for v in all {
                assert_eq!(parse(name(*v)), Some(*v));
                let json = serde_json::to_value(v).unwrap();
                assert_eq!(json, Value::String(name(*v).to_owned()));
            }
        }
        check(
            AttemptOutcome::ALL,
            AttemptOutcome::as_str,
            AttemptOutcome::parse,
        );
        check(AgentStatus::ALL, AgentStatus::as_str, AgentStatus::parse);
        check(LogStream::ALL, LogStream::as_str, LogStream::parse);
        check(ErrorCode::ALL, ErrorCode::as_str, ErrorCode::parse);
        check(
            ReportOutcome::ALL,
            ReportOutcome::as_str,
            ReportOutcome::parse,
        );
        check(
            CanaryOutcome::ALL,
            CanaryOutcome::as_str,
            CanaryOutcome::parse,
        );
        check(CanaryLeg::ALL, CanaryLeg::as_str, CanaryLeg::parse);
        check(
            CanaryTrigger::ALL,
            CanaryTrigger::as_str,
            CanaryTrigger::parse,
        );
    }

    #[test]
    fn the_command_center_register_body_is_accepted_as_is() {
        let body = r#"{"agent_id":"a1","host":"10.0.0.5","port":8080,
            "capabilities":["ansible"],"mcp_servers":[{"name":"fs"}]}"#;
        let reg: RegisterAgent = serde_json::from_str(body).unwrap();
        assert_eq!(reg.agent_id, "a1");
        assert_eq!(reg.max_concurrency, None);
    }
}

/// The document's numbers and patterns are literals in `#[schema(…)]` attributes; these tests
/// hold them to [`limits`], which the server checks against.
#[cfg(test)]
mod schema_tests {
    use serde_json::json;
    use utoipa::PartialSchema;

    use super::limits::*;
    use super::*;

    fn properties<T: PartialSchema>() -> Value {
        serde_json::to_value(T::schema()).unwrap()["properties"].clone()
    }

    #[test]
    fn the_llm_chat_schema_states_the_limits() {
        let chat = properties::<LlmChatRequest>();
        assert_eq!(chat["messages"]["maxItems"], json!(MAX_CHAT_MESSAGES));
        assert_eq!(chat["tools"]["maxItems"], json!(MAX_CHAT_TOOLS));
        assert_eq!(chat["model"]["maxLength"], json!(200));
        assert_eq!(chat["model"]["pattern"], json!(REQUIRED_TEXT_PATTERN));
        assert_eq!(chat["workflow"]["pattern"], json!(REQUIRED_TEXT_PATTERN));
    }

    #[test]
    fn the_request_schemas_state_the_limits() {
        let text = json!(TEXT_PATTERN);
        let required = json!(REQUIRED_TEXT_PATTERN);

        let reg = properties::<RegisterAgent>();
        assert_eq!(reg["agent_id"]["maxLength"], json!(MAX_ID_CHARS));
        assert_eq!(reg["agent_id"]["pattern"], json!(AGENT_ID_PATTERN));
        assert_eq!(reg["host"]["maxLength"], json!(MAX_HOST_CHARS));
        assert_eq!(reg["host"]["pattern"], text);
        assert_eq!(reg["version"]["maxLength"], json!(MAX_VERSION_CHARS));
        assert_eq!(reg["version"]["pattern"], text);
        assert_eq!(reg["instance_id"]["maxLength"], json!(MAX_ID_CHARS));
        assert_eq!(reg["instance_id"]["pattern"], required);
        assert_eq!(reg["capabilities"]["maxItems"], json!(MAX_CAPABILITIES));
        assert_eq!(reg["kinds"]["maxItems"], json!(MAX_KINDS));
        assert_eq!(reg["mcp_servers"]["maxItems"], json!(MAX_MCP_SERVERS));
        assert_eq!(reg["max_concurrency"]["minimum"], json!(1));
        assert_eq!(reg["max_concurrency"]["maximum"], json!(MAX_CONCURRENCY));
        assert_eq!(reg["port"]["maximum"], json!(u16::MAX));
        let drain = properties::<DrainAgent>();
        assert_eq!(drain["instance_id"]["maxLength"], json!(MAX_ID_CHARS));
        assert_eq!(drain["instance_id"]["pattern"], required);

        let beat = properties::<Heartbeat>();
        for field in ["cpu_percent", "memory_percent"] {
            assert_eq!(beat[field]["minimum"], json!(0), "{field}");
            assert_eq!(beat[field]["maximum"], json!(100), "{field}");
        }
        assert_eq!(beat["running"]["maxItems"], json!(MAX_CONCURRENCY));
        assert_eq!(beat["active_tasks"]["maximum"], json!(u32::MAX));
        assert_eq!(
            properties::<RunningTask>()["attempt"]["maximum"],
            json!(u32::MAX)
        );

        let submit = properties::<SubmitTask>();
        assert_eq!(submit["kind"]["maxLength"], json!(MAX_KIND_CHARS));
        assert_eq!(submit["kind"]["pattern"], required);
        assert_eq!(submit["capabilities"]["maxItems"], json!(MAX_CAPABILITIES));
        assert_eq!(submit["priority"]["minimum"], json!(i16::MIN));
        assert_eq!(submit["priority"]["maximum"], json!(i16::MAX));
        assert_eq!(submit["max_retries"]["maximum"], json!(MAX_RETRIES));
        assert_eq!(submit["timeout_s"]["minimum"], json!(1));
        assert_eq!(submit["timeout_s"]["maximum"], json!(u32::MAX));
        for field in ["lock_key", "idempotency_key"] {
            assert_eq!(submit[field]["maxLength"], json!(MAX_KEY_CHARS), "{field}");
            assert_eq!(submit[field]["pattern"], required, "{field}");
        }

        let logs = properties::<AppendLogs>();
        assert_eq!(logs["lines"]["maxItems"], json!(MAX_LINES));
        assert_eq!(logs["attempt"]["maximum"], json!(u32::MAX));
        let fail = properties::<FailTask>();
        assert_eq!(fail["error"]["maxLength"], json!(MAX_ERROR_CHARS));
        assert_eq!(fail["attempt"]["maximum"], json!(u32::MAX));
        assert_eq!(
            properties::<CompleteTask>()["attempt"]["maximum"],
            json!(u32::MAX)
        );

        assert_eq!(
            properties::<ReportBatch>()["reports"]["maxItems"],
            json!(MAX_REPORT_BATCH)
        );
        let report = properties::<Report>();
        assert_eq!(report["attempt"]["maximum"], json!(u32::MAX));
        assert_eq!(report["error"]["maxLength"], json!(MAX_ERROR_CHARS));
        assert_eq!(
            properties::<SubmitBatch>()["tasks"]["maxItems"],
            json!(MAX_SUBMIT_BATCH)
        );
    }

    #[test]
    fn the_named_request_schemas_state_the_limits() {
        let schema = |s: utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>| {
            serde_json::to_value(s).unwrap()
        };
        let capability = schema(schema::Capability::schema());
        assert_eq!(capability["maxLength"], json!(MAX_CAPABILITY_CHARS));
        assert_eq!(capability["pattern"], json!(REQUIRED_TEXT_PATTERN));
        let kind = schema(schema::TaskKind::schema());
        assert_eq!(kind["maxLength"], json!(MAX_KIND_CHARS));
        assert_eq!(kind["pattern"], json!(REQUIRED_TEXT_PATTERN));
        let labels = schema(schema::Labels::schema());
        assert_eq!(labels["maxProperties"], json!(MAX_LABELS));
        assert_eq!(
            labels["propertyNames"]["maxLength"],
            json!(MAX_LABEL_KEY_CHARS)
        );
        assert_eq!(
            labels["propertyNames"]["pattern"],
            json!(REQUIRED_TEXT_PATTERN)
        );
        assert_eq!(
            labels["additionalProperties"]["maxLength"],
            json!(MAX_LABEL_VALUE_CHARS)
        );
        assert_eq!(
            labels["additionalProperties"]["pattern"],
            json!(TEXT_PATTERN)
        );
    }

    #[test]
    fn integers_may_be_written_as_whole_floats() {
        let fail: FailTask = serde_json::from_value(json!({"attempt": 3.0, "error": "x"})).unwrap();
        assert_eq!(fail.attempt, 3);
        let task: SubmitTask = serde_json::from_value(
            json!({"kind": "k", "priority": -2.0, "timeout_s": 60.0, "max_retries": null}),
        )
        .unwrap();
        assert_eq!(
            (task.priority, task.timeout_s, task.max_retries),
            (-2, Some(60), None)
        );
        for bad in [
            json!(2.5),
            json!(-1),
            json!(4294967296_u64),
            json!(1e300),
            json!("3"),
        ] {
            let err = serde_json::from_value::<FailTask>(json!({"attempt": bad, "error": "x"}))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("an integer from 0 to 4294967295"),
                "{bad}: {err}"
            );
        }
    }
}

closed_enum! {
    /// Where a GitOps deployment stands, from its tasks: `pending` while none has started,
    /// `running` while any runs or waits, `paused` while a rule's tasks wait for its source or
    /// rule to be resumed, `succeeded` when every task completed, `failed` when any failed or
    /// was cancelled (a check that failed stops its rule's real run), `skipped` when no rule
    /// submitted a task.
    DeploymentState {
        Pending => "pending",
        Running => "running",
        Paused => "paused",
        Succeeded => "succeeded",
        Failed => "failed",
        Skipped => "skipped",
    }
}

closed_enum! {
    /// What a rule made of a push: `matched` (it deploys), `skipped` (it does not apply) or
    /// `refused` (it applies, but the push could not fill its template safely, or the server
    /// refused the task).
    RuleOutcome {
        Matched => "matched",
        Skipped => "skipped",
        Refused => "refused",
    }
}

closed_enum! {
    /// What a GitOps pause holds: every rule of a `[[git.sources]]` entry, or one
    /// `[[git.rules]]` entry.
    PauseScope {
        Source => "source",
        Rule => "rule",
    }
}

/// A changed file a rule took (or a negation left out), and the glob that decided.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct FileMatch {
    pub path: String,
    pub glob: String,
}

/// What one `[[git.rules]]` entry made of a push.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PlannedRule {
    pub rule: String,
    pub outcome: RuleOutcome,
    /// Why it was skipped or refused.
    pub why: Option<String>,
    pub matched: Vec<FileMatch>,
    pub excluded: Vec<FileMatch>,
    /// It runs because the list of changed files was incomplete (`fallback = "run"`).
    pub fallback: bool,
    pub kind: Option<String>,
    pub lock_key: Option<String>,
    /// The task a matched rule submits (its real run), with the push's values filled in.
    pub task: Option<SubmitTask>,
    /// With `check_first`: the same task in check mode (`ansible-playbook --check --diff`,
    /// `terraform plan`), run first; the real run is submitted only once it completed.
    pub check_task: Option<SubmitTask>,
    /// The rule or its source was paused when the push came (or still is): its tasks wait,
    /// unsubmitted, until it is resumed (deployments, not plans).
    #[serde(default)]
    pub held: bool,
    /// The check-mode task it submitted, with `check_first` (deployments, not plans).
    pub check_task_id: Option<Uuid>,
    pub check_task_state: Option<TaskState>,
    /// The task of the real run it submitted (deployments, not plans).
    pub task_id: Option<Uuid>,
    pub task_state: Option<TaskState>,
}

/// `POST /api/v1/gitops/plan`'s request: a push as its forge sent it, and the source it came
/// to.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PlanRequest {
    /// A `[[git.sources]]` entry's name.
    pub source: String,
    /// The forge's push payload (the webhook's JSON body). Give this or `delivery`.
    pub payload: Option<Value>,
    /// The delivery id of a push the source recorded: planned again against today's rules.
    pub delivery: Option<String>,
}

/// `POST /api/v1/gitops/plan`: what a push would deploy, and why.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct GitPlan {
    pub source: String,
    pub repo: String,
    pub git_ref: String,
    pub branch: Option<String>,
    pub sha: String,
    pub changed: Vec<String>,
    /// False when the forge cut the list of changed files.
    pub complete: bool,
    pub rules: Vec<PlannedRule>,
    /// No rule deploys anything for this push.
    pub nothing_to_do: bool,
}

/// A GitOps deployment: one push and the tasks its matched rules submitted.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Deployment {
    pub id: Uuid,
    pub source: String,
    /// The forge's delivery id: a redelivery answers this deployment again.
    pub delivery: String,
    pub repo: String,
    pub clone_url: Option<String>,
    pub git_ref: String,
    pub branch: Option<String>,
    pub before: String,
    pub sha: String,
    pub author: String,
    pub message: String,
    pub changed: Vec<String>,
    pub complete: bool,
    pub state: DeploymentState,
    pub created_at: DateTime<Utc>,
    pub rules: Vec<PlannedRule>,
    /// The deployment this one re-submitted (a redeploy).
    pub redeploy_of: Option<Uuid>,
    /// The commit status the forge was last given (`pending`, `success`, `failure`,
    /// `error`), once one was.
    pub forge_status: Option<String>,
    /// Why the forge's status API refused or could not be reached, when it last failed.
    pub forge_status_error: Option<String>,
}

/// A paused source or rule: its pushes are recorded and planned, and their tasks wait.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct GitPause {
    pub scope: PauseScope,
    /// The source's or rule's name.
    pub name: String,
    pub paused_at: DateTime<Utc>,
    /// Who paused it, as the audit log names them.
    pub paused_by: String,
}

/// `GET /api/v1/gitops/pauses`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct GitPauseList {
    pub pauses: Vec<GitPause>,
}

/// `POST /api/v1/gitops/pause` and `/resume`: which source or rule.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PauseRequest {
    pub scope: PauseScope,
    pub name: String,
}

/// The answer of a pause or resume.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PauseAnswer {
    pub scope: PauseScope,
    pub name: String,
    pub paused: bool,
    /// False when it already stood so (nothing changed, nothing audited).
    pub changed: bool,
    /// Tasks a resume submitted for held deployments, in push order.
    pub released_tasks: usize,
}

/// `GET /api/v1/deployments`: newest first.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DeploymentList {
    pub deployments: Vec<Deployment>,
}

/// `POST /hooks/git/{source}`'s answer.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct HookAnswer {
    /// `deployed` (new), `duplicate` (a redelivery: the first deployment), `nothing_to_do`,
    /// or `pong` (a ping or test event).
    pub status: String,
    pub message: String,
    pub deployment: Option<Deployment>,
}

closed_enum! {
    /// How an LLM call ended: `ok` (the model answered), `error` (it did not: unreachable,
    /// timed out, refused the request), `refused` (a budget stopped it before it was sent).
    LlmOutcome {
        Ok => "ok",
        Error => "error",
        Refused => "refused",
    }
}

closed_enum! {
    /// How `GET /api/v1/llm/usage` sums the ledger: per `workflow`, per provider and `model`,
    /// or per `day` and workflow.
    UsageGroup {
        Workflow => "workflow",
        Model => "model",
        Day => "day",
    }
}

/// One sum of the LLM ledger. Which of `day`, `workflow`, `provider` and `model` are set
/// depends on the grouping: `workflow`; `provider` and `model`; `day` and `workflow`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct UsageRow {
    /// `YYYY-MM-DD`, UTC.
    pub day: Option<String>,
    pub workflow: Option<String>,
    pub provider: Option<String>,
    pub model: Option<String>,
    pub calls: u64,
    /// Calls that failed or that a budget refused.
    pub errors: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// In the price table's currency.
    pub cost: f64,
}

/// The 95th percentile of the latency of one provider's model, over the calls still kept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct LatencyRow {
    pub provider: String,
    pub model: String,
    pub calls: u64,
    pub p95_ms: u64,
}

/// `GET /api/v1/llm/usage`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct LlmUsage {
    pub group_by: UsageGroup,
    /// The first day summed (UTC midnight).
    pub since: DateTime<Utc>,
    pub rows: Vec<UsageRow>,
    pub latency: Vec<LatencyRow>,
}

/// `POST /api/v1/llm/test`: one short prompt to a provider, to check its key and price table.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LlmTestRequest {
    /// A `[[llm.providers]]` entry.
    pub provider: String,
    /// The prompt, one line; a short greeting when absent.
    #[serde(default)]
    #[schema(
        min_length = 1,
        max_length = 4000,
        pattern = "^[^\\u0000-\\u001f\\u007f-\\u009f]*[^\\u0000-\\u0020\\u007f-\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000][^\\u0000-\\u001f\\u007f-\\u009f]*$"
    )]
    pub prompt: Option<String>,
}

/// What a test prompt came to. It is in the ledger under the workflow `test`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct LlmTestResult {
    /// The provider that answered (another one when the `test` budget fell back).
    pub provider: String,
    /// The model as the provider named it.
    pub model: String,
    pub answer: String,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub latency_ms: u64,
    /// In the price table's currency; 0 without a price.
    pub cost: f64,
}

/// A tool a model may call, as `POST /api/v1/llm/chat` takes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LlmTool {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// A JSON Schema object describing the arguments.
    #[schema(value_type = Object)]
    pub parameters: Value,
}

/// A tool call a model made. `arguments` is the JSON object it sent; when it sent something
/// that is not one, `arguments` is null and `bad_arguments` holds the text, for the caller to
/// answer with a tool error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LlmToolCall {
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub arguments: Value,
    #[serde(default)]
    pub bad_arguments: Option<String>,
}

/// One turn of a conversation. Fields a role does not have are ignored, not refused: the
/// document cannot say "no other field" of one variant of a tagged union, and a request the
/// document allows must not be refused.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "role", rename_all = "snake_case")]
pub enum LlmMessage {
    User {
        content: String,
    },
    /// The model's earlier answer, echoed back with its tool calls.
    Assistant {
        #[serde(default)]
        content: String,
        #[serde(default)]
        tool_calls: Vec<LlmToolCall>,
    },
    /// The result of one tool call.
    Tool {
        call_id: String,
        name: String,
        content: String,
        #[serde(default)]
        is_error: bool,
    },
}

/// `POST /api/v1/llm/chat`: one call to a model through the server, under a workflow's budget
/// and in the ledger (agents call models this way; the provider's key stays on the server).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LlmChatRequest {
    /// What the call is for: the ledger's and the budgets' name (`repair`, a schedule's name).
    #[schema(
        min_length = 1,
        max_length = 100,
        pattern = "^[^\\u0000-\\u001f\\u007f-\\u009f]*[^\\u0000-\\u0020\\u007f-\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000][^\\u0000-\\u001f\\u007f-\\u009f]*$"
    )]
    pub workflow: String,
    /// A `[[llm.providers]]` entry.
    pub provider: String,
    /// Another model of the provider than its configured one (an Ollama server's other
    /// model, say). Refused (422) for a provider with a price: its price table is its
    /// configured model's, so another model would be mispriced in the ledger. Not applied
    /// when a spent budget sends the call to its fallback provider.
    #[serde(default)]
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = "^[^\\u0000-\\u001f\\u007f-\\u009f]*[^\\u0000-\\u0020\\u007f-\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000][^\\u0000-\\u001f\\u007f-\\u009f]*$"
    )]
    pub model: Option<String>,
    /// The prompt's template before it was filled, so calls of one prompt group together in
    /// the ledger; the system prompt stands for it when absent.
    #[serde(default)]
    pub template: Option<String>,
    #[serde(default)]
    pub system: Option<String>,
    #[schema(min_items = 1, max_items = 500)]
    pub messages: Vec<LlmMessage>,
    #[serde(default)]
    #[schema(max_items = 128)]
    pub tools: Vec<LlmTool>,
    /// The longest answer, in tokens.
    #[serde(default, deserialize_with = "whole::optional")]
    #[schema(format = Int64, minimum = 1, maximum = 4294967295_i64)]
    pub max_tokens: Option<u32>,
    #[serde(default)]
    pub temperature: Option<f32>,
}

/// What the model answered, and what it cost.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct LlmChatAnswer {
    /// The provider that answered: the budget's fallback when the budget was spent.
    pub provider: String,
    pub model: String,
    pub text: String,
    pub tool_calls: Vec<LlmToolCall>,
    /// `done`, `tool_calls`, `length`, `refused`, or the provider's own word.
    pub stop: String,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cached_input_tokens: u64,
    pub latency_ms: u64,
    /// In the price table's currency.
    pub cost: f64,
    /// The workflow's budget was spent, so the call went to its fallback provider.
    pub fell_back: bool,
}

closed_enum! {
    /// Where an incident stands. `open`: an alert came and nothing is decided yet (or it waits
    /// out its target's cooldown); `deciding`: the model (or the runbook) is choosing an action;
    /// `awaiting_approval`: a risky action waits for an operator; `repairing`: the action's task
    /// runs; `verifying`: the task ended and muster waits for the monitor's recovery or its own
    /// probe; `resolved`: the thing is up again; `escalated`: a human must act (the reason says
    /// why: nothing allow-listed was chosen, the repairs did not heal it, a cap or pause held
    /// them, an approval was denied or expired).
    IncidentState {
        Open => "open",
        Deciding => "deciding",
        AwaitingApproval => "awaiting_approval",
        Repairing => "repairing",
        Verifying => "verifying",
        Resolved => "resolved",
        Escalated => "escalated",
    }
}

impl IncidentState {
    /// Resolved and escalated incidents are closed: muster does nothing more about them. An
    /// escalated one still takes its monitor's firing alerts (a storm after an escalation opens
    /// nothing new) until the monitor reports it up, which resolves it.
    pub fn is_closed(self) -> bool {
        matches!(self, IncidentState::Resolved | IncidentState::Escalated)
    }
}

closed_enum! {
    /// Who chose a repair: the target's `model`, or its static `runbook` (the model was
    /// unreachable, timed out or over budget, or the target has no provider).
    ChoiceBy {
        Model => "model",
        Runbook => "runbook",
    }
}

/// The action an incident's repair runs, once validated against the allow-list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RepairChoice {
    /// An `[[actions]]` entry the target allows.
    pub action: String,
    /// Its parameters, the target's fixed ones included.
    pub params: BTreeMap<String, String>,
    /// The action is marked risky: it waits for an operator's approval.
    pub risky: bool,
    pub by: ChoiceBy,
    /// What the model said of its choice (its text beside the tool call), as data.
    pub reasoning: Option<String>,
}

/// One step of an incident's story: an alert, a decision and its validation, an approval, a
/// repair task, a verification, a notice. Each is also in the audit log, as
/// `incident.<kind>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct IncidentEvent {
    pub at: DateTime<Utc>,
    /// `opened`, `alert`, `deciding`, `decided`, `refused`, `approval_requested`, `approved`, `denied`,
    /// `approval_expired`, `repair_started`, `repair_ended`, `verified`, `not_healed`,
    /// `held`, `resolved`, `escalated`.
    pub kind: String,
    /// Who: `system`, `operator:api`, `operator:ui`.
    pub actor: String,
    /// One line an operator reads.
    pub message: String,
    /// The details (the model's answer, the task, the probe's result).
    #[schema(value_type = Object)]
    pub data: Value,
}

/// An outage a monitor reported, and what muster did about it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Incident {
    pub id: Uuid,
    /// The `[[alerts.sources]]` entry the alerts came through.
    pub source: String,
    /// What fires and resolves together (Uptime Kuma's monitor id, Alertmanager's
    /// fingerprint): alerts of one key fold into one open incident.
    pub key: String,
    pub monitor: String,
    /// The `[[repair.targets]]` entry that matched, if any.
    pub target: Option<String>,
    pub state: IncidentState,
    /// Why it was resolved or escalated, or what it waits for.
    pub reason: Option<String>,
    /// What the first alert said.
    pub message: String,
    pub labels: BTreeMap<String, String>,
    /// A link back to the monitor.
    pub url: Option<String>,
    /// Alerts folded into it (a storm of firing alerts counts here, not as new incidents).
    pub alerts: u32,
    /// Repair steps taken, and the most it may take.
    pub steps: u32,
    pub max_steps: u32,
    /// The action chosen last: running, waiting for approval, or run.
    pub choice: Option<RepairChoice>,
    /// The last repair task.
    pub task_id: Option<Uuid>,
    /// When a waiting approval expires.
    pub approval_expires_at: Option<DateTime<Utc>>,
    /// When it is looked at next: the end of a cooldown or of a verification's time limit.
    pub due_at: Option<DateTime<Utc>>,
    /// Repairs its target started in the last hour, and its cap.
    pub repairs_last_hour: u32,
    pub max_repairs_per_hour: u32,
    pub opened_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub closed_at: Option<DateTime<Utc>>,
    /// The story, oldest first (`GET /api/v1/incidents/{id}` only; empty in lists).
    #[serde(default)]
    pub events: Vec<IncidentEvent>,
    /// The notifications sent about it, newest first (`GET /api/v1/incidents/{id}` only).
    #[serde(default)]
    pub notifications: Vec<Notification>,
}

/// `GET /api/v1/incidents`: newest first.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct IncidentList {
    pub incidents: Vec<Incident>,
}

/// `POST /api/v1/incidents/{id}/deny`'s optional body.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DenyRequest {
    /// Why, for the story and the audit log.
    #[serde(default)]
    #[schema(max_length = 500)]
    pub reason: Option<String>,
}

/// `POST /hooks/alerts/{source}`'s answer.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AlertAnswer {
    /// `recorded` (alerts opened, folded into or closed incidents), `test` (a monitor's test
    /// notification) or `ignored` (a state that opens and closes nothing).
    pub status: String,
    pub message: String,
    /// The incidents the alerts touched.
    pub incidents: Vec<Uuid>,
}

/// A pause of self-repair: everything (`target` none) or one `[[repair.targets]]` entry.
/// Incidents are still recorded and decided; nothing runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RepairPause {
    pub target: Option<String>,
    pub paused_at: DateTime<Utc>,
    pub paused_by: String,
}

/// A `[[repair.targets]]` entry and where it stands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RepairTargetStatus {
    pub name: String,
    pub actions: Vec<String>,
    pub provider: Option<String>,
    pub paused: bool,
    pub repairs_last_hour: u32,
    pub max_repairs_per_hour: u32,
}

/// `GET /api/v1/repair`: pauses and targets.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RepairStatus {
    /// Self-repair as a whole is paused.
    pub paused: bool,
    pub pauses: Vec<RepairPause>,
    pub targets: Vec<RepairTargetStatus>,
}

/// `POST /api/v1/repair/pause` and `/resume`: everything, or one target.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RepairPauseRequest {
    /// A `[[repair.targets]]` entry; none for all of self-repair.
    #[serde(default)]
    pub target: Option<String>,
}

/// The answer of a repair pause or resume.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RepairPauseAnswer {
    pub target: Option<String>,
    pub paused: bool,
    /// False when it already stood so (nothing changed, nothing audited).
    pub changed: bool,
}

/// The task a trigger submits, as written under `task = { … }` in a `[[git.rules]]` or
/// `[[schedules]]` entry, or sent to `POST /api/v1/schedules`: a submit without the keys the
/// trigger decides (`lock_key`, `idempotency_key`, `run_after`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TaskTemplate {
    /// What to do; checked as a submit's `kind` is.
    #[schema(min_length = 1, max_length = 200)]
    pub kind: String,
    #[serde(default)]
    #[schema(value_type = Vec<schema::Capability>, max_items = 100)]
    pub capabilities: Vec<String>,
    /// A JSON object; the trigger adds what it knows (a schedule: `schedule`, `fire_at`).
    #[serde(default)]
    #[schema(value_type = Object)]
    pub payload: serde_json::Map<String, Value>,
    #[serde(default, deserialize_with = "whole::required")]
    #[schema(minimum = -32768, maximum = 32767)]
    pub priority: i32,
    #[serde(default, deserialize_with = "whole::optional")]
    #[schema(minimum = 0, maximum = 1000)]
    pub max_retries: Option<u32>,
    #[serde(default, deserialize_with = "whole::optional")]
    #[schema(format = Int64, minimum = 1, maximum = 4294967295_i64)]
    pub timeout_s: Option<u32>,
    #[serde(default)]
    #[schema(value_type = schema::Labels)]
    pub labels: BTreeMap<String, String>,
}

impl TaskTemplate {
    /// The task to submit: this template with `payload` (the template's, filled or added to)
    /// and the keys the caller decides.
    pub fn submit(
        &self,
        payload: serde_json::Map<String, Value>,
        lock_key: Option<String>,
        idempotency_key: Option<String>,
    ) -> SubmitTask {
        SubmitTask {
            kind: self.kind.clone(),
            payload: Value::Object(payload),
            capabilities: self.capabilities.clone(),
            priority: self.priority,
            max_retries: self.max_retries,
            timeout_s: self.timeout_s,
            lock_key,
            idempotency_key,
            run_after: None,
            labels: self.labels.clone().into_iter().collect(),
        }
    }
}

/// Where a schedule is defined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ScheduleOrigin {
    /// A `[[schedules]]` entry of the config file: changed there, and by a reload.
    Config,
    /// Created with `POST /api/v1/schedules`; deleted with `DELETE`.
    Api,
}

/// How a firing came about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FiringTrigger {
    /// Its cron instant came.
    Cron,
    /// Its instant passed while the server was down, and the schedule's `missed = "run_once"`
    /// fired it once on the way back.
    Missed,
    /// Someone ran it now (`POST /api/v1/schedules/{name}/run`, the UI, the CLI or chat).
    Run,
}

impl ScheduleOrigin {
    pub fn as_str(self) -> &'static str {
        match self {
            ScheduleOrigin::Config => "config",
            ScheduleOrigin::Api => "api",
        }
    }
}

impl FiringTrigger {
    pub fn as_str(self) -> &'static str {
        match self {
            FiringTrigger::Cron => "cron",
            FiringTrigger::Missed => "missed",
            FiringTrigger::Run => "run",
        }
    }

    pub fn parse(text: &str) -> Option<FiringTrigger> {
        [
            FiringTrigger::Cron,
            FiringTrigger::Missed,
            FiringTrigger::Run,
        ]
        .into_iter()
        .find(|t| t.as_str() == text)
    }
}

/// One firing of a schedule and the task it submitted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ScheduleFiring {
    /// The cron instant it stands for (a run: the moment it was asked for).
    pub fire_at: DateTime<Utc>,
    pub trigger: FiringTrigger,
    pub task_id: Uuid,
    /// The task's state now; none once retention pruned the task.
    pub task_state: Option<TaskState>,
    /// When the task was submitted.
    pub fired_at: DateTime<Utc>,
    /// `system` for cron firings, else who ran it.
    pub actor: String,
}

/// A schedule: when it fires, what each firing submits, and where it stands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Schedule {
    pub name: String,
    pub origin: ScheduleOrigin,
    /// Five fields (minute hour day-of-month month day-of-week), or six with seconds first.
    pub cron: String,
    /// The IANA zone the expression's times are in.
    pub timezone: String,
    /// `skip` or `run_once`: what becomes of firings missed while the server was down.
    pub missed: String,
    pub task: TaskTemplate,
    pub lock_key: Option<String>,
    pub paused: bool,
    pub paused_at: Option<DateTime<Utc>>,
    pub paused_by: Option<String>,
    /// The next cron instant; none while paused.
    pub next_fire_at: Option<DateTime<Utc>>,
    pub last: Option<ScheduleFiring>,
}

/// `GET /api/v1/schedules`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ScheduleList {
    pub schedules: Vec<Schedule>,
}

/// `GET /api/v1/schedules/{name}`: the schedule and its latest firings, newest first.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ScheduleDetail {
    pub schedule: Schedule,
    pub firings: Vec<ScheduleFiring>,
}

/// `POST /api/v1/schedules`: a schedule kept in the database, beside the config file's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSchedule {
    /// 1 to 64 letters, digits, `-`, `_` and `.`; unique among all schedules, the config
    /// file's too.
    #[schema(min_length = 1, max_length = 64, pattern = "^[A-Za-z0-9_.-]+$")]
    pub name: String,
    /// Five fields (minute hour day-of-month month day-of-week), six with seconds first, or an
    /// alias such as `@daily`.
    #[schema(min_length = 1, max_length = 200)]
    pub cron: String,
    /// An IANA zone such as `Europe/Berlin`; UTC when absent.
    #[serde(default)]
    pub timezone: Option<String>,
    pub task: TaskTemplate,
    /// Firings run one at a time per key, in firing order.
    #[serde(default)]
    #[schema(min_length = 1, max_length = 500)]
    pub lock_key: Option<String>,
    /// `skip` (the default) or `run_once`.
    #[serde(default)]
    pub missed: Option<String>,
}

/// `POST /api/v1/schedules/{name}/run`: the firing and its task.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ScheduleRun {
    pub firing: ScheduleFiring,
    pub task: Task,
}

/// The answer of a schedule's pause or resume.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SchedulePauseAnswer {
    pub schedule: Schedule,
    /// False when it already stood so (nothing changed, nothing audited).
    pub changed: bool,
}

// ---------------------------------------------------------------------------------------------
// Canaries

closed_enum! {
    /// Where a canary run stands: `running` (in flight), `passed` (every leg got through
    /// within the canary's `within`), `failed` (a leg did not: `leg` and `reason` say which and
    /// why), `interrupted` (the server stopped during the run: neither a pass nor a failure).
    CanaryOutcome {
        Running => "running",
        Passed => "passed",
        Failed => "failed",
        Interrupted => "interrupted",
    }
}

closed_enum! {
    /// The leg of a canary's path where a run failed: `hook` (muster's own hook route refused
    /// the request or could not be reached in time), `agent` (no agent took the task in
    /// time), `task` (the task failed or was cancelled, or its agent did not answer in time),
    /// `answer` (the answer was malformed or did not echo the run's nonce), `notification`
    /// (the `canary.passed` message was not delivered in time).
    CanaryLeg {
        Hook => "hook",
        Agent => "agent",
        Task => "task",
        Answer => "answer",
        Notification => "notification",
    }
}

closed_enum! {
    /// What started a canary run: its `cron` expression, or an operator (`manual`).
    CanaryTrigger {
        Cron => "cron",
        Manual => "manual",
    }
}

/// One run of a canary: a signed request to muster's own hook, the task it submits, the
/// agent's answer and (with a channel) the delivered notification, each leg's time, and the
/// verdict.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CanaryRun {
    pub id: Uuid,
    pub canary: String,
    pub trigger: CanaryTrigger,
    pub outcome: CanaryOutcome,
    /// When it fired: the hook request went out.
    pub fired_at: DateTime<Utc>,
    /// Every leg must be done by then.
    pub deadline: DateTime<Utc>,
    /// When the hook accepted the request and submitted the task.
    pub hooked_at: Option<DateTime<Utc>>,
    /// When the task ended (completed, failed or cancelled).
    pub answered_at: Option<DateTime<Utc>>,
    /// When the `canary.passed` notification was delivered.
    pub delivered_at: Option<DateTime<Utc>>,
    /// When it was judged.
    pub finished_at: Option<DateTime<Utc>>,
    /// Passed: from the firing to the last leg (the agent's answer, or the notification's
    /// delivery). Failed: from the firing to the verdict.
    pub latency_ms: Option<u64>,
    /// Failed: the leg that did not get through.
    pub leg: Option<CanaryLeg>,
    /// Failed or interrupted: why.
    pub reason: Option<String>,
    pub task_id: Option<Uuid>,
    /// The agent that answered.
    pub agent_id: Option<String>,
    pub notification_id: Option<Uuid>,
}

/// A `[[canaries]]` entry and its last runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Canary {
    pub name: String,
    /// The cron expression and the IANA zone it is read in.
    pub cron: String,
    pub timezone: String,
    /// The kind and capabilities of the task each run submits.
    pub kind: String,
    pub capabilities: Vec<String>,
    /// Every leg must be done this long after the firing.
    pub within_s: u64,
    /// The notification channel a passing run's message must reach, if any.
    pub channel: Option<String>,
    /// The URL the runs send their hook request to.
    pub hook_url: String,
    /// The next firing of its cron.
    pub next_at: Option<DateTime<Utc>>,
    /// The last run judged (passed or failed).
    pub last: Option<CanaryRun>,
    /// The run in flight, if one is.
    pub running: Option<CanaryRun>,
    /// The newest runs, newest first (at most 10).
    pub recent: Vec<CanaryRun>,
}

/// `GET /api/v1/canaries`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CanaryList {
    pub canaries: Vec<Canary>,
}

/// The body a canary's run sends to `POST /hooks/canary/{name}`, signed by the server with a
/// key only it holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CanaryHook {
    #[schema(max_length = 64)]
    pub canary: String,
    pub run: Uuid,
    /// A random value the agent's answer must echo.
    #[schema(max_length = 64)]
    pub nonce: String,
}

/// `POST /hooks/canary/{name}`'s answer: the run's task was submitted.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CanaryHookAnswer {
    pub run: Uuid,
    pub task_id: Uuid,
}
