//! The batch routes: bulk submit (`POST /api/v1/tasks/batch`), the batch claim
//! (`GET /api/v1/agents/{id}/tasks/claim?wait=&max=`) and batch reports
//! (`POST /api/v1/agents/{id}/reports`). They are called with reqwest directly rather than
//! through `muster-client`, so the bench can tell a server without them (404, or 405 where
//! `/api/v1/tasks/{id}` takes only GET) from one that refuses a request.

use std::time::Duration;

use muster_api::SubmitTask;
use reqwest::{Method, RequestBuilder, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::BenchError;

/// A server's answer, or word that it has no such route.
#[derive(Debug)]
pub enum Answer<T> {
    Done(T),
    NoRoute(StatusCode),
}

/// What the bench needs of a claimed task.
#[derive(Debug, Clone, Deserialize)]
pub struct ClaimedTask {
    pub id: Uuid,
    pub attempt: u32,
    #[serde(default)]
    pub payload: Value,
}

#[derive(Deserialize)]
struct ClaimBody {
    #[serde(default)]
    tasks: Vec<ClaimedTask>,
}

/// One completion in a batch of reports.
#[derive(Debug, Clone, Serialize)]
pub struct Completion {
    pub task_id: Uuid,
    pub attempt: u32,
    pub outcome: &'static str,
    pub result: Value,
}

#[derive(Serialize)]
struct ReportsBody<'a> {
    reports: &'a [Completion],
}

#[derive(Serialize)]
struct SubmitBody<'a> {
    tasks: &'a [SubmitTask],
}

/// One item of `{results: […]}`, the answer of both bulk routes: an item went through
/// unless it names an error.
#[derive(Deserialize)]
struct ItemResult {
    #[serde(default)]
    error: Option<Value>,
}

#[derive(Deserialize)]
struct ResultsBody {
    results: Vec<ItemResult>,
}

impl ResultsBody {
    /// Items of `sent` that went through; an item the answer leaves out did not.
    fn accepted(&self, sent: usize) -> usize {
        let ok = self
            .results
            .iter()
            .filter(|r| r.error.as_ref().is_none_or(Value::is_null))
            .count();
        ok.min(sent)
    }
}

/// Added to a long-poll's wait for the request timeout.
const POLL_SLACK: Duration = Duration::from_secs(10);

#[derive(Clone)]
pub struct BatchRoutes {
    http: reqwest::Client,
    base: String,
    key: Option<String>,
}

impl BatchRoutes {
    pub fn new(base: &str, key: Option<String>) -> Result<BatchRoutes, BenchError> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| BenchError::Setup(format!("cannot build the HTTP client: {e}")))?;
        Ok(BatchRoutes {
            http,
            base: base.trim_end_matches('/').to_owned(),
            key,
        })
    }

    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let req = self.http.request(method, format!("{}{path}", self.base));
        match &self.key {
            Some(key) => req.bearer_auth(key),
            None => req,
        }
    }

    /// Sends and decodes, mapping 404 and 405 to [`Answer::NoRoute`].
    async fn call<T: for<'de> Deserialize<'de>>(
        &self,
        req: RequestBuilder,
    ) -> Result<Answer<T>, String> {
        let resp = req.send().await.map_err(|e| e.to_string())?;
        let status = resp.status();
        if matches!(
            status,
            StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED
        ) {
            return Ok(Answer::NoRoute(status));
        }
        if !status.is_success() {
            let text = resp.text().await.unwrap_or_default();
            return Err(format!(
                "{status}: {}",
                text.chars().take(200).collect::<String>()
            ));
        }
        resp.json::<T>()
            .await
            .map(Answer::Done)
            .map_err(|e| format!("cannot decode the answer: {e}"))
    }

    /// Long-polls for up to `max` of the agent's tasks.
    pub async fn claim(
        &self,
        agent_id: &str,
        wait: Duration,
        max: u32,
    ) -> Result<Answer<Vec<ClaimedTask>>, String> {
        let path = format!(
            "/api/v1/agents/{agent_id}/tasks/claim?wait={}&max={max}",
            wait.as_secs()
        );
        let req = self.request(Method::GET, &path).timeout(wait + POLL_SLACK);
        Ok(match self.call::<ClaimBody>(req).await? {
            Answer::Done(body) => Answer::Done(body.tasks),
            Answer::NoRoute(s) => Answer::NoRoute(s),
        })
    }

    /// Reports completions in one call; how many the server took.
    pub async fn report(
        &self,
        agent_id: &str,
        reports: &[Completion],
    ) -> Result<Answer<usize>, String> {
        let path = format!("/api/v1/agents/{agent_id}/reports");
        let req = self
            .request(Method::POST, &path)
            .json(&ReportsBody { reports });
        Ok(match self.call::<ResultsBody>(req).await? {
            Answer::Done(body) => Answer::Done(body.accepted(reports.len())),
            Answer::NoRoute(s) => Answer::NoRoute(s),
        })
    }

    /// Submits tasks in one call; how many the server accepted.
    pub async fn submit(&self, tasks: &[SubmitTask]) -> Result<Answer<usize>, String> {
        let req = self
            .request(Method::POST, "/api/v1/tasks/batch")
            .json(&SubmitBody { tasks });
        Ok(match self.call::<ResultsBody>(req).await? {
            Answer::Done(body) => Answer::Done(body.accepted(tasks.len())),
            Answer::NoRoute(s) => Answer::NoRoute(s),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_item_went_through_unless_it_names_an_error() {
        let body: ResultsBody = serde_json::from_str(
            r#"{"results": [
                {"status": 201, "task": {"id": "x"}},
                {"status": 200, "task": {"id": "y"}, "error": null},
                {"status": 400, "error": {"code": "invalid", "message": "no kind"}},
                {"task_id": "z", "status": "completed", "error": null},
                {"task_id": "w", "status": "conflict", "error": "attempt 2 is over"}
            ]}"#,
        )
        .unwrap();
        assert_eq!(body.accepted(5), 3);
        // An answer with more items than were sent counts no more than were sent.
        assert_eq!(body.accepted(2), 2);
    }

    #[test]
    fn a_claim_keeps_what_the_bench_needs() {
        let body: ClaimBody = serde_json::from_str(
            r#"{"tasks": [{"id": "0190a2b4-0000-7000-8000-000000000001", "attempt": 1,
                           "kind": "bench", "payload": {"t": 12, "phase": "load"}}],
                "cancel": []}"#,
        )
        .unwrap();
        assert_eq!(body.tasks.len(), 1);
        assert_eq!(body.tasks[0].attempt, 1);
        assert_eq!(body.tasks[0].payload["t"], 12);
    }
}
