//! A typed async client for every v1 route. Errors carry the API's error code, so callers
//! decide on variants, never on message text.

use std::time::Duration;

use futures::{Stream, StreamExt};
use muster_api::{
    Agent, AgentList, AppendLogs, CANCEL_HEADER, ClaimedTasks, CompleteTask, CreateSchedule,
    DenyRequest, Deployment, DeploymentList, DeploymentState, DrainAgent, ErrorBody, ErrorCode,
    FailTask, GitPauseList, GitPlan, Health, Heartbeat, HeartbeatAck, Incident, IncidentList,
    IncidentState, LlmChatAnswer, LlmChatRequest, LlmTestRequest, LlmTestResult, LlmUsage, LogLine,
    LogPage, LogsAccepted, NotificationPage, NotificationState, NotifyChannel, NotifyTestResult,
    PauseAnswer, PauseRequest, PauseScope, PlanRequest, RegisterAgent, RepairPauseAnswer,
    RepairPauseRequest, RepairStatus, Report, ReportBatch, ReportResult, ReportResults, Schedule,
    ScheduleDetail, ScheduleList, SchedulePauseAnswer, ScheduleRun, SubmitBatch, SubmitResult,
    SubmitResults, SubmitTask, Task, TaskList, TaskState, UsageGroup,
};
use reqwest::{Method, RequestBuilder, StatusCode};
use serde::de::DeserializeOwned;
use uuid::Uuid;

/// What went wrong talking to the server.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server answered with an error body.
    #[error("{message} ({status} {code})")]
    Api {
        status: u16,
        code: ErrorCode,
        message: String,
    },
    /// No answer: the server is down, unreachable or too slow.
    #[error("cannot reach muster at {url}: {reason}")]
    Unreachable { url: String, reason: String },
    /// An answer that is not what the API promises.
    #[error("unexpected answer from {url}: {reason}")]
    Protocol { url: String, reason: String },
    #[error("invalid server URL {0:?}: expected http://host:port or https://…")]
    InvalidUrl(String),
}

impl ClientError {
    /// The API's error code, when the server answered with one.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Api { code, .. } => Some(*code),
            _ => None,
        }
    }

    pub fn is_not_found(&self) -> bool {
        self.code() == Some(ErrorCode::NotFound)
    }

    pub fn is_conflict(&self) -> bool {
        self.code() == Some(ErrorCode::Conflict)
    }

    pub fn is_too_large(&self) -> bool {
        self.code() == Some(ErrorCode::PayloadTooLarge)
    }

    /// Worth retrying later: the server could not be reached or said it is unavailable.
    pub fn is_transient(&self) -> bool {
        matches!(self, ClientError::Unreachable { .. })
            || matches!(
                self.code(),
                Some(ErrorCode::Unavailable | ErrorCode::TooManyRequests | ErrorCode::Internal)
            )
    }
}

/// The answer to a claim.
#[derive(Debug, Clone, Default)]
pub struct Claim {
    pub task: Option<Task>,
    /// Running tasks this agent must stop.
    pub cancel: Vec<Uuid>,
}

/// Filters of a task listing.
#[derive(Debug, Clone, Default)]
pub struct TaskQuery {
    pub state: Option<TaskState>,
    pub kind: Option<String>,
    pub agent_id: Option<String>,
    pub limit: Option<usize>,
    pub cursor: Option<String>,
}

/// One item of a followed log stream.
#[derive(Debug, Clone)]
pub enum LogEvent {
    Line(LogLine),
    /// The task ended in this state; the stream is over.
    End(TaskState),
}

#[derive(Clone, Debug)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    key: Option<String>,
}

/// `text` percent-encoded as one path segment, so a name holding `/`, `?` or `#` stays one.
fn segment(text: &str) -> String {
    // The form encoding writes a space as `+`, which a path reads as a plus; a real plus comes
    // out as `%2B`, so every `+` left stands for a space.
    url::form_urlencoded::byte_serialize(text.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

/// Added to a long-poll's wait for the request timeout.
const POLL_SLACK: Duration = Duration::from_secs(10);

/// The longest [`Client::llm_chat`] waits for the server's answer.
pub const LLM_CHAT_TIMEOUT: Duration = Duration::from_secs(600);

impl Client {
    /// A client of the server at `base` (e.g. `http://127.0.0.1:8000`), sending `key` as bearer.
    pub fn new(base: &str, key: Option<String>) -> Result<Client, ClientError> {
        let base = base.trim_end_matches('/').to_owned();
        if !(base.starts_with("http://") || base.starts_with("https://")) || base.len() < 10 {
            return Err(ClientError::InvalidUrl(base));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(30))
            .user_agent(concat!("muster-client/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ClientError::Protocol {
                url: base.clone(),
                reason: format!("cannot build the HTTP client: {e}"),
            })?;
        Ok(Client { http, base, key })
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let req = self.http.request(method, format!("{}{path}", self.base));
        match &self.key {
            Some(key) => req.bearer_auth(key),
            None => req,
        }
    }

    async fn send(&self, req: RequestBuilder) -> Result<reqwest::Response, ClientError> {
        let resp = req.send().await.map_err(|e| self.unreachable(&e))?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        Err(self.api_error(resp).await)
    }

    fn unreachable(&self, err: &reqwest::Error) -> ClientError {
        let reason = if err.is_timeout() {
            "timed out".to_owned()
        } else if err.is_connect() {
            "connection refused or host unreachable".to_owned()
        } else {
            err.to_string()
        };
        ClientError::Unreachable {
            url: self.base.clone(),
            reason,
        }
    }

    async fn api_error(&self, resp: reqwest::Response) -> ClientError {
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        match serde_json::from_str::<ErrorBody>(&text) {
            Ok(body) => ClientError::Api {
                status: status.as_u16(),
                code: body.error.code,
                message: body.error.message,
            },
            Err(_) => ClientError::Protocol {
                url: self.base.clone(),
                reason: format!(
                    "{status} without an error body: {}",
                    text.chars().take(200).collect::<String>()
                ),
            },
        }
    }

    async fn json<T: DeserializeOwned>(&self, req: RequestBuilder) -> Result<T, ClientError> {
        let resp = self.send(req).await?;
        resp.json::<T>().await.map_err(|e| ClientError::Protocol {
            url: self.base.clone(),
            reason: format!("cannot decode the body: {e}"),
        })
    }

    // --- operations

    pub async fn health(&self) -> Result<Health, ClientError> {
        self.json(self.request(Method::GET, "/health")).await
    }

    // --- agents

    /// Registers (or re-registers) an agent.
    pub async fn register(&self, reg: &RegisterAgent) -> Result<Agent, ClientError> {
        self.json(
            self.request(Method::POST, "/api/v1/agents/register")
                .json(reg),
        )
        .await
    }

    pub async fn heartbeat(
        &self,
        agent_id: &str,
        beat: &Heartbeat,
    ) -> Result<HeartbeatAck, ClientError> {
        let path = format!("/api/v1/agents/{agent_id}/heartbeat");
        self.json(self.request(Method::POST, &path).json(beat))
            .await
    }

    /// Long-polls for the agent's next task, waiting up to `wait` (whole seconds).
    pub async fn next_task(&self, agent_id: &str, wait: Duration) -> Result<Claim, ClientError> {
        let path = format!(
            "/api/v1/agents/{agent_id}/tasks/next?wait={}",
            wait.as_secs()
        );
        let req = self.request(Method::GET, &path).timeout(wait + POLL_SLACK);
        let resp = self.send(req).await?;
        let cancel = resp
            .headers()
            .get(CANCEL_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(|v| {
                v.split(',')
                    .filter_map(|id| Uuid::parse_str(id.trim()).ok())
                    .collect()
            })
            .unwrap_or_default();
        if resp.status() == StatusCode::NO_CONTENT {
            return Ok(Claim { task: None, cancel });
        }
        let task = resp
            .json::<Task>()
            .await
            .map_err(|e| ClientError::Protocol {
                url: self.base.clone(),
                reason: format!("cannot decode the claimed task: {e}"),
            })?;
        Ok(Claim {
            task: Some(task),
            cancel,
        })
    }

    /// Long-polls for up to `max` of the agent's tasks (1 to 100), waiting up to `wait` (whole
    /// seconds); answers as soon as one is claimed, each now running with its attempt.
    pub async fn claim_many(
        &self,
        agent_id: &str,
        wait: Duration,
        max: u32,
    ) -> Result<ClaimedTasks, ClientError> {
        let path = format!(
            "/api/v1/agents/{agent_id}/tasks/claim?wait={}&max={max}",
            wait.as_secs()
        );
        self.json(self.request(Method::GET, &path).timeout(wait + POLL_SLACK))
            .await
    }

    /// Reports the ends of many attempts in one request (at most 100): one result per report,
    /// in order, each with the status the single route would have answered.
    pub async fn report_many(
        &self,
        agent_id: &str,
        reports: &[Report],
    ) -> Result<Vec<ReportResult>, ClientError> {
        let path = format!("/api/v1/agents/{agent_id}/reports");
        let body = ReportBatch {
            reports: reports.to_vec(),
        };
        let answer: ReportResults = self
            .json(self.request(Method::POST, &path).json(&body))
            .await?;
        self.one_each(answer.results, reports.len())
    }

    /// A batch answer must have one result per item, or the caller would pair them wrongly.
    fn one_each<T>(&self, results: Vec<T>, sent: usize) -> Result<Vec<T>, ClientError> {
        if results.len() != sent {
            return Err(ClientError::Protocol {
                url: self.base.clone(),
                reason: format!("{} results for {sent} items", results.len()),
            });
        }
        Ok(results)
    }

    pub async fn append_logs(
        &self,
        task_id: Uuid,
        logs: &AppendLogs,
    ) -> Result<LogsAccepted, ClientError> {
        let path = format!("/api/v1/tasks/{task_id}/logs");
        self.json(self.request(Method::POST, &path).json(logs))
            .await
    }

    pub async fn complete(
        &self,
        task_id: Uuid,
        report: &CompleteTask,
    ) -> Result<Task, ClientError> {
        let path = format!("/api/v1/tasks/{task_id}/complete");
        self.json(self.request(Method::POST, &path).json(report))
            .await
    }

    pub async fn fail(&self, task_id: Uuid, report: &FailTask) -> Result<Task, ClientError> {
        let path = format!("/api/v1/tasks/{task_id}/fail");
        self.json(self.request(Method::POST, &path).json(report))
            .await
    }

    pub async fn agents(&self) -> Result<AgentList, ClientError> {
        self.json(self.request(Method::GET, "/api/v1/agents")).await
    }

    pub async fn agent(&self, agent_id: &str) -> Result<Agent, ClientError> {
        self.json(self.request(Method::GET, &format!("/api/v1/agents/{agent_id}")))
            .await
    }

    /// An operator's drain: the agent takes no new tasks until undrained (admin key).
    pub async fn drain(&self, agent_id: &str) -> Result<Agent, ClientError> {
        self.json(self.request(Method::POST, &format!("/api/v1/agents/{agent_id}/drain")))
            .await
    }

    /// An agent process drains itself, proving it is the agent's current process; the drain
    /// ends when the agent next starts.
    pub async fn drain_self(
        &self,
        agent_id: &str,
        instance_id: &str,
    ) -> Result<Agent, ClientError> {
        let body = DrainAgent {
            instance_id: Some(instance_id.to_owned()),
        };
        self.json(
            self.request(Method::POST, &format!("/api/v1/agents/{agent_id}/drain"))
                .json(&body),
        )
        .await
    }

    /// Ends an operator's drain: the agent takes tasks again.
    pub async fn undrain(&self, agent_id: &str) -> Result<Agent, ClientError> {
        self.json(self.request(Method::POST, &format!("/api/v1/agents/{agent_id}/undrain")))
            .await
    }

    pub async fn remove_agent(&self, agent_id: &str) -> Result<(), ClientError> {
        self.send(self.request(Method::DELETE, &format!("/api/v1/agents/{agent_id}")))
            .await?;
        Ok(())
    }

    // --- notifications

    /// Notifications, newest first (admin key).
    pub async fn notifications(
        &self,
        channel: Option<&str>,
        state: Option<NotificationState>,
        limit: usize,
    ) -> Result<NotificationPage, ClientError> {
        let mut query: Vec<(&str, String)> = vec![("limit", limit.to_string())];
        query.extend(channel.map(|c| ("channel", c.to_owned())));
        query.extend(state.map(|s| ("state", s.as_str().to_owned())));
        self.json(
            self.request(Method::GET, "/api/v1/notifications")
                .query(&query),
        )
        .await
    }

    /// What a forge's push would deploy through the source `source`, rule by rule, and why;
    /// nothing is deployed (admin key).
    pub async fn gitops_plan(
        &self,
        source: &str,
        payload: serde_json::Value,
    ) -> Result<GitPlan, ClientError> {
        let body = PlanRequest {
            source: source.to_owned(),
            payload: Some(payload),
            delivery: None,
        };
        self.json(
            self.request(Method::POST, "/api/v1/gitops/plan")
                .json(&body),
        )
        .await
    }

    /// What a push the source recorded (by its delivery id) would deploy under today's rules
    /// (admin key).
    pub async fn gitops_replan(
        &self,
        source: &str,
        delivery: &str,
    ) -> Result<GitPlan, ClientError> {
        let body = PlanRequest {
            source: source.to_owned(),
            payload: None,
            delivery: Some(delivery.to_owned()),
        };
        self.json(
            self.request(Method::POST, "/api/v1/gitops/plan")
                .json(&body),
        )
        .await
    }

    /// Runs a past deployment's tasks again as a new deployment (admin key).
    pub async fn redeploy(&self, id: Uuid) -> Result<Deployment, ClientError> {
        self.json(self.request(Method::POST, &format!("/api/v1/deployments/{id}/redeploy")))
            .await
    }

    /// Pauses (`paused`) or resumes a GitOps source or rule (admin key).
    pub async fn gitops_set_paused(
        &self,
        scope: PauseScope,
        name: &str,
        paused: bool,
    ) -> Result<PauseAnswer, ClientError> {
        let body = PauseRequest {
            scope,
            name: name.to_owned(),
        };
        let path = if paused {
            "/api/v1/gitops/pause"
        } else {
            "/api/v1/gitops/resume"
        };
        self.json(self.request(Method::POST, path).json(&body))
            .await
    }

    /// The paused GitOps sources and rules (admin key).
    pub async fn gitops_pauses(&self) -> Result<GitPauseList, ClientError> {
        self.json(self.request(Method::GET, "/api/v1/gitops/pauses"))
            .await
    }

    /// GitOps deployments, newest first, optionally only those of one repository, matched by
    /// one rule, or in one state (admin key).
    pub async fn deployments(
        &self,
        repo: Option<&str>,
        rule: Option<&str>,
        state: Option<DeploymentState>,
        limit: usize,
    ) -> Result<DeploymentList, ClientError> {
        let mut query: Vec<(&str, String)> = vec![("limit", limit.to_string())];
        query.extend(repo.map(|r| ("repo", r.to_owned())));
        query.extend(rule.map(|r| ("rule", r.to_owned())));
        query.extend(state.map(|s| ("state", s.as_str().to_owned())));
        self.json(
            self.request(Method::GET, "/api/v1/deployments")
                .query(&query),
        )
        .await
    }

    // --- self-repair

    /// Incidents, newest first, optionally only those in one state, not yet closed (`open`:
    /// neither resolved nor escalated), or of one `[[repair.targets]]` entry (admin key).
    pub async fn incidents(
        &self,
        state: Option<IncidentState>,
        open: bool,
        target: Option<&str>,
        limit: usize,
    ) -> Result<IncidentList, ClientError> {
        let mut query: Vec<(&str, String)> = vec![("limit", limit.to_string())];
        query.extend(state.map(|s| ("state", s.as_str().to_owned())));
        if open {
            query.push(("open", "true".to_owned()));
        }
        query.extend(target.map(|t| ("target", t.to_owned())));
        self.json(self.request(Method::GET, "/api/v1/incidents").query(&query))
            .await
    }

    /// One incident with its story, oldest event first (admin key).
    pub async fn incident(&self, id: Uuid) -> Result<Incident, ClientError> {
        self.json(self.request(Method::GET, &format!("/api/v1/incidents/{id}")))
            .await
    }

    /// Approves the risky action an incident waits with: its task is submitted unless a pause,
    /// the cap or the cooldown holds it (admin key). A conflict when nothing waits, or the
    /// approval expired.
    pub async fn approve_incident(&self, id: Uuid) -> Result<Incident, ClientError> {
        let path = format!("/api/v1/incidents/{id}/approve");
        self.json(self.request(Method::POST, &path)).await
    }

    /// Denies the risky action an incident waits with, saying why: nothing runs, and the
    /// incident escalates (admin key).
    pub async fn deny_incident(
        &self,
        id: Uuid,
        reason: Option<&str>,
    ) -> Result<Incident, ClientError> {
        let path = format!("/api/v1/incidents/{id}/deny");
        let body = DenyRequest {
            reason: reason.map(str::to_owned),
        };
        self.json(self.request(Method::POST, &path).json(&body))
            .await
    }

    /// Self-repair's pauses, and each target's repairs in the last hour against its cap
    /// (admin key).
    pub async fn repair_status(&self) -> Result<RepairStatus, ClientError> {
        self.json(self.request(Method::GET, "/api/v1/repair")).await
    }

    /// Pauses (`paused`) or resumes self-repair: for one `[[repair.targets]]` entry, or with
    /// `target` none for everything (admin key).
    pub async fn repair_set_paused(
        &self,
        target: Option<&str>,
        paused: bool,
    ) -> Result<RepairPauseAnswer, ClientError> {
        let body = RepairPauseRequest {
            target: target.map(str::to_owned),
        };
        let path = if paused {
            "/api/v1/repair/pause"
        } else {
            "/api/v1/repair/resume"
        };
        self.json(self.request(Method::POST, path).json(&body))
            .await
    }

    /// Sends one short prompt to an LLM provider through the server; answers what it said,
    /// the tokens, the latency and the cost (admin key).
    pub async fn llm_test(
        &self,
        provider: &str,
        prompt: Option<&str>,
    ) -> Result<LlmTestResult, ClientError> {
        let body = LlmTestRequest {
            provider: provider.to_owned(),
            prompt: prompt.map(str::to_owned),
        };
        self.json(self.request(Method::POST, "/api/v1/llm/test").json(&body))
            .await
    }

    /// One call to a model through the server, under the workflow's budget and in the ledger
    /// (agent key): the provider's key stays on the server. It may take as long as
    /// [`LLM_CHAT_TIMEOUT`], not the 30 s of other calls: a local model may first load, and the
    /// server retries a provider's 429s and 5xx.
    pub async fn llm_chat(&self, request: &LlmChatRequest) -> Result<LlmChatAnswer, ClientError> {
        self.json(
            self.request(Method::POST, "/api/v1/llm/chat")
                .timeout(LLM_CHAT_TIMEOUT)
                .json(request),
        )
        .await
    }

    /// The LLM ledger summed over the last `days` days (admin key).
    pub async fn llm_usage(&self, group: UsageGroup, days: u32) -> Result<LlmUsage, ClientError> {
        let query = [
            ("group_by", group.as_str().to_owned()),
            ("days", days.to_string()),
        ];
        self.json(self.request(Method::GET, "/api/v1/llm/usage").query(&query))
            .await
    }

    /// The configured notification channels, without their secrets (admin key).
    pub async fn notify_channels(&self) -> Result<Vec<NotifyChannel>, ClientError> {
        self.json(self.request(Method::GET, "/api/v1/notify/channels"))
            .await
    }

    /// Sends a test message over a channel; answers what its service said (admin key).
    pub async fn notify_test(&self, channel: &str) -> Result<NotifyTestResult, ClientError> {
        let path = format!("/api/v1/notify/channels/{}/test", segment(channel));
        self.json(self.request(Method::POST, &path)).await
    }

    // --- schedules

    /// Every schedule, the config file's first, each with its last and next firing (admin key).
    pub async fn schedules(&self) -> Result<ScheduleList, ClientError> {
        self.json(self.request(Method::GET, "/api/v1/schedules"))
            .await
    }

    /// One schedule and its latest firings, newest first (admin key).
    pub async fn schedule(&self, name: &str) -> Result<ScheduleDetail, ClientError> {
        let path = format!("/api/v1/schedules/{}", segment(name));
        self.json(self.request(Method::GET, &path)).await
    }

    /// Creates a schedule kept in the database; it first fires at its first instant after now
    /// (admin key). A conflict when a schedule, the config file's too, has its name.
    pub async fn create_schedule(&self, spec: &CreateSchedule) -> Result<Schedule, ClientError> {
        self.json(self.request(Method::POST, "/api/v1/schedules").json(spec))
            .await
    }

    /// Deletes a schedule created through the API, with its firings; their tasks stay (admin
    /// key). A conflict for one of the config file's.
    pub async fn delete_schedule(&self, name: &str) -> Result<(), ClientError> {
        let path = format!("/api/v1/schedules/{}", segment(name));
        self.send(self.request(Method::DELETE, &path)).await?;
        Ok(())
    }

    /// Fires a schedule now, even while it is paused: the firing and its task (admin key).
    pub async fn run_schedule(&self, name: &str) -> Result<ScheduleRun, ClientError> {
        let path = format!("/api/v1/schedules/{}/run", segment(name));
        self.json(self.request(Method::POST, &path)).await
    }

    /// Pauses (`paused`) or resumes a schedule (admin key).
    pub async fn schedule_set_paused(
        &self,
        name: &str,
        paused: bool,
    ) -> Result<SchedulePauseAnswer, ClientError> {
        let verb = if paused { "pause" } else { "resume" };
        let path = format!("/api/v1/schedules/{}/{verb}", segment(name));
        self.json(self.request(Method::POST, &path)).await
    }

    // --- tasks

    /// Submits a task; the flag is false when its idempotency key named an existing task.
    pub async fn submit(&self, task: &SubmitTask) -> Result<(Task, bool), ClientError> {
        let resp = self
            .send(self.request(Method::POST, "/api/v1/tasks").json(task))
            .await?;
        let created = resp.status() == StatusCode::CREATED;
        let task = resp
            .json::<Task>()
            .await
            .map_err(|e| ClientError::Protocol {
                url: self.base.clone(),
                reason: format!("cannot decode the task: {e}"),
            })?;
        Ok((task, created))
    }

    /// Submits many tasks in one request and one commit (at most 1000): one result per task,
    /// in order (201 queued, 200 its idempotency key named an existing task, 422 refused).
    pub async fn submit_many(
        &self,
        tasks: &[SubmitTask],
    ) -> Result<Vec<SubmitResult>, ClientError> {
        let body = SubmitBatch {
            tasks: tasks.to_vec(),
        };
        let answer: SubmitResults = self
            .json(
                self.request(Method::POST, "/api/v1/tasks/batch")
                    .json(&body),
            )
            .await?;
        self.one_each(answer.results, tasks.len())
    }

    pub async fn tasks(&self, query: &TaskQuery) -> Result<TaskList, ClientError> {
        let mut params: Vec<(&str, String)> = Vec::new();
        if let Some(state) = query.state {
            params.push(("state", state.as_str().to_owned()));
        }
        if let Some(kind) = &query.kind {
            params.push(("kind", kind.clone()));
        }
        if let Some(agent) = &query.agent_id {
            params.push(("agent_id", agent.clone()));
        }
        if let Some(limit) = query.limit {
            params.push(("limit", limit.to_string()));
        }
        if let Some(cursor) = &query.cursor {
            params.push(("cursor", cursor.clone()));
        }
        self.json(self.request(Method::GET, "/api/v1/tasks").query(&params))
            .await
    }

    pub async fn task(&self, task_id: Uuid) -> Result<Task, ClientError> {
        self.json(self.request(Method::GET, &format!("/api/v1/tasks/{task_id}")))
            .await
    }

    pub async fn cancel(&self, task_id: Uuid) -> Result<Task, ClientError> {
        self.json(self.request(Method::POST, &format!("/api/v1/tasks/{task_id}/cancel")))
            .await
    }

    pub async fn retry(&self, task_id: Uuid) -> Result<Task, ClientError> {
        self.json(self.request(Method::POST, &format!("/api/v1/tasks/{task_id}/retry")))
            .await
    }

    pub async fn logs(
        &self,
        task_id: Uuid,
        after: i64,
        limit: usize,
    ) -> Result<LogPage, ClientError> {
        let path = format!("/api/v1/tasks/{task_id}/logs");
        let params = [("after", after.to_string()), ("limit", limit.to_string())];
        self.json(self.request(Method::GET, &path).query(&params))
            .await
    }

    /// Follows a task's logs live from after line `after`; the stream ends with
    /// [`LogEvent::End`] when the task ends.
    pub async fn follow_logs(
        &self,
        task_id: Uuid,
        after: i64,
    ) -> Result<impl Stream<Item = Result<LogEvent, ClientError>> + use<>, ClientError> {
        let path = format!("/api/v1/tasks/{task_id}/logs");
        // No overall timeout: the stream lives as long as the task runs.
        let req = self
            .request(Method::GET, &path)
            .header(reqwest::header::ACCEPT, "text/event-stream")
            .header("last-event-id", after.to_string())
            .timeout(Duration::from_secs(365 * 24 * 3600));
        let resp = self.send(req).await?;
        let base = self.base.clone();
        let events = eventsource_stream::EventStream::new(resp.bytes_stream());
        Ok(events.filter_map(move |event| {
            let base = base.clone();
            async move {
                let protocol = |reason: String| ClientError::Protocol {
                    url: base.clone(),
                    reason,
                };
                match event {
                    Err(e) => Some(Err(ClientError::Unreachable {
                        url: base.clone(),
                        reason: e.to_string(),
                    })),
                    Ok(e) if e.event == "line" => Some(
                        serde_json::from_str::<LogLine>(&e.data)
                            .map(LogEvent::Line)
                            .map_err(|err| protocol(format!("bad log line: {err}"))),
                    ),
                    Ok(e) if e.event == "end" => Some(
                        serde_json::from_str::<serde_json::Value>(&e.data)
                            .ok()
                            .and_then(|v| {
                                serde_json::from_value::<TaskState>(v["state"].clone()).ok()
                            })
                            .map(LogEvent::End)
                            .ok_or_else(|| protocol(format!("bad end event: {}", e.data))),
                    ),
                    Ok(_) => None,
                }
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::segment;

    #[test]
    fn a_name_stays_one_path_segment() {
        assert_eq!(segment("nightly-backup_v2.1"), "nightly-backup_v2.1");
        assert_eq!(segment("a b/c+d?#"), "a%20b%2Fc%2Bd%3F%23");
    }
}
