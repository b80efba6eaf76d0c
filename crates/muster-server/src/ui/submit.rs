//! The form that submits a task. The form's text fields become a [`SubmitTask`] here; from
//! then on it takes the API's path ([`operator::submit`]). An error is shown next to the field
//! it names, with everything typed kept.

use std::collections::BTreeMap;

use axum::Extension;
use axum::extract::{Form, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use maud::{Markup, html};
use muster_api::SubmitTask;
use serde::Deserialize;

use super::auth::see_other;
use super::layout::{self, Live, Section};
use super::{UiError, page_for};
use crate::app::AppState;
use crate::error::ApiError;
use crate::operator;
use crate::sessions::Session;

/// The form as typed; every field is text so that nothing is lost when one is wrong.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct SubmitForm {
    kind: String,
    capabilities: String,
    payload: String,
    priority: String,
    max_retries: String,
    timeout_s: String,
    lock_key: String,
    idempotency_key: String,
    run_after: String,
    labels: String,
}

/// A problem with one field of the form.
struct FieldError {
    field: String,
    message: String,
}

impl FieldError {
    fn new(field: &str, message: impl Into<String>) -> Self {
        FieldError {
            field: field.to_owned(),
            message: message.into(),
        }
    }
}

fn optional(text: &str) -> Option<String> {
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_owned())
}

fn number<T: std::str::FromStr>(field: &str, text: &str) -> Result<Option<T>, FieldError> {
    match optional(text) {
        None => Ok(None),
        Some(raw) => raw.parse().map(Some).map_err(|_| {
            FieldError::new(
                field,
                format!("{field}: {raw:?} is not a whole number in range"),
            )
        }),
    }
}

impl SubmitForm {
    fn to_request(&self) -> Result<SubmitTask, FieldError> {
        let payload = match optional(&self.payload) {
            None => serde_json::Value::Object(Default::default()),
            Some(text) => serde_json::from_str(&text)
                .map_err(|e| FieldError::new("payload", format!("payload: not valid JSON: {e}")))?,
        };
        let capabilities = self
            .capabilities
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|c| !c.is_empty())
            .map(str::to_owned)
            .collect();
        let run_after = match optional(&self.run_after) {
            None => None,
            Some(text) => Some(
                chrono::DateTime::parse_from_rfc3339(&text)
                    .map_err(|e| {
                        FieldError::new(
                            "run_after",
                            format!("run_after: {text:?} is not an RFC 3339 time ({e}), e.g. 2030-01-31T18:00:00Z"),
                        )
                    })?
                    .to_utc(),
            ),
        };
        let mut labels = BTreeMap::new();
        for line in self.labels.lines().map(str::trim).filter(|l| !l.is_empty()) {
            let Some((key, value)) = line.split_once('=') else {
                return Err(FieldError::new(
                    "labels",
                    format!("labels: {line:?} is not key=value"),
                ));
            };
            labels.insert(key.trim().to_owned(), value.trim().to_owned());
        }
        Ok(SubmitTask {
            kind: self.kind.trim().to_owned(),
            payload,
            capabilities,
            priority: number("priority", &self.priority)?.unwrap_or(0),
            max_retries: number("max_retries", &self.max_retries)?,
            timeout_s: number("timeout_s", &self.timeout_s)?,
            lock_key: optional(&self.lock_key),
            idempotency_key: optional(&self.idempotency_key),
            run_after,
            labels,
        })
    }
}

/// Maps a field named by the API's validation (`capabilities[2]`) to the form's input.
fn form_field(api_field: &str) -> &str {
    api_field.split('[').next().unwrap_or(api_field)
}

/// `GET /tasks/new`.
pub(super) async fn form(
    State(app): State<AppState>,
    Extension(session): Extension<Session>,
) -> Markup {
    let blank = SubmitForm {
        payload: "{}".into(),
        priority: "0".into(),
        ..SubmitForm::default()
    };
    render(&app, &session, &blank, None)
}

/// `POST /tasks`: on success, the new task's page; otherwise the form again, 422, with the
/// field at fault marked.
pub(super) async fn submit(
    State(app): State<AppState>,
    Extension(session): Extension<Session>,
    Form(form): Form<SubmitForm>,
) -> Result<Response, UiError> {
    let request = match form.to_request() {
        Ok(request) => request,
        Err(error) => return Ok(rejected(&app, &session, &form, error)),
    };
    match operator::submit(&app, request).await {
        Ok(submitted) => Ok(see_other(&format!("/tasks/{}", submitted.task.id))),
        Err(ApiError {
            field: Some(field),
            message,
            ..
        }) => Ok(rejected(
            &app,
            &session,
            &form,
            FieldError::new(form_field(&field), message),
        )),
        Err(other) => Err(other.into()),
    }
}

fn rejected(app: &AppState, session: &Session, form: &SubmitForm, error: FieldError) -> Response {
    (
        StatusCode::UNPROCESSABLE_ENTITY,
        render(app, session, form, Some(&error)),
    )
        .into_response()
}

fn render(
    app: &AppState,
    session: &Session,
    form: &SubmitForm,
    error: Option<&FieldError>,
) -> Markup {
    let default_retries = app.settings().default_max_retries;
    let invalid = |field: &str| error.is_some_and(|e| e.field == field);
    let message = |field: &str| -> Markup {
        html! {
            @if let Some(e) = error.filter(|e| e.field == field) {
                p.field-error #{ (field) "-error" } role="alert" { (e.message) }
            }
        }
    };
    let described = |field: &str| invalid(field).then(|| format!("{field}-error"));
    let aria_invalid = |field: &str| invalid(field).then_some("true");
    let content = html! {
        h1 { "Submit a task" }
        @if let Some(e) = error {
            p.notice.error role="alert" { "The task was not submitted: " (e.message) }
        }
        form.submit-form method="post" action="/tasks" novalidate {
            (layout::csrf_field(session))
            div.field {
                label for="kind" { "Kind" }
                input #kind name="kind" type="text" required value=(form.kind) placeholder="restart"
                    aria-invalid=[aria_invalid("kind")] aria-describedby=[described("kind")];
                p.hint { "The handler agents run it with." }
                (message("kind"))
            }
            div.field {
                label for="capabilities" { "Capabilities" }
                input #capabilities name="capabilities" type="text" value=(form.capabilities) placeholder="docker ansible"
                    aria-invalid=[aria_invalid("capabilities")] aria-describedby=[described("capabilities")];
                p.hint { "Separated by spaces or commas; an agent needs all of them." }
                (message("capabilities"))
            }
            div.field {
                label for="payload" { "Payload (JSON)" }
                textarea #payload name="payload" rows="8" spellcheck="false"
                    aria-invalid=[aria_invalid("payload")] aria-describedby=[described("payload")] { (form.payload) }
                (message("payload"))
            }
            div.field-row {
                div.field {
                    label for="priority" { "Priority" }
                    input #priority name="priority" type="number" min="-32768" max="32767" value=(form.priority)
                        aria-invalid=[aria_invalid("priority")] aria-describedby=[described("priority")];
                    p.hint { "Higher runs first." }
                    (message("priority"))
                }
                div.field {
                    label for="max_retries" { "Max retries" }
                    input #max_retries name="max_retries" type="number" min="0" max="1000" value=(form.max_retries)
                        placeholder=(default_retries)
                        aria-invalid=[aria_invalid("max_retries")] aria-describedby=[described("max_retries")];
                    (message("max_retries"))
                }
                div.field {
                    label for="timeout_s" { "Timeout (s)" }
                    input #timeout_s name="timeout_s" type="number" min="1" value=(form.timeout_s) placeholder="none"
                        aria-invalid=[aria_invalid("timeout_s")] aria-describedby=[described("timeout_s")];
                    (message("timeout_s"))
                }
            }
            details.more open[has_advanced(form) || error.is_some()] {
                summary { "More options" }
                div.field {
                    label for="lock_key" { "Lock key" }
                    input #lock_key name="lock_key" type="text" value=(form.lock_key)
                        aria-invalid=[aria_invalid("lock_key")] aria-describedby=[described("lock_key")];
                    p.hint { "At most one task per lock key runs at a time." }
                    (message("lock_key"))
                }
                div.field {
                    label for="idempotency_key" { "Idempotency key" }
                    input #idempotency_key name="idempotency_key" type="text" value=(form.idempotency_key)
                        aria-invalid=[aria_invalid("idempotency_key")] aria-describedby=[described("idempotency_key")];
                    p.hint { "Submitting the same key again returns the first task." }
                    (message("idempotency_key"))
                }
                div.field {
                    label for="run_after" { "Not before (UTC, RFC 3339)" }
                    input #run_after name="run_after" type="text" value=(form.run_after) placeholder="2030-01-31T18:00:00Z"
                        aria-invalid=[aria_invalid("run_after")] aria-describedby=[described("run_after")];
                    (message("run_after"))
                }
                div.field {
                    label for="labels" { "Labels" }
                    textarea #labels name="labels" rows="3" spellcheck="false" placeholder="env=prod"
                        aria-invalid=[aria_invalid("labels")] aria-describedby=[described("labels")] { (form.labels) }
                    p.hint { "One key=value per line." }
                    (message("labels"))
                }
            }
            div.form-actions {
                button.primary type="submit" { "Submit" }
                a href="/tasks" { "Cancel" }
            }
        }
    };
    let page = page_for(
        app,
        session,
        "Submit a task",
        Some(Section::Submit),
        Live::Off,
    );
    layout::shell(&page, content)
}

fn has_advanced(form: &SubmitForm) -> bool {
    [
        &form.lock_key,
        &form.idempotency_key,
        &form.run_after,
        &form.labels,
    ]
    .iter()
    .any(|f| !f.trim().is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(fields: &[(&str, &str)]) -> SubmitForm {
        let body: String = fields
            .iter()
            .map(|(k, v)| format!("{k}={}", super::super::percent_encode(v)))
            .collect::<Vec<_>>()
            .join("&");
        let uri: axum::http::Uri = format!("/?{body}").parse().unwrap();
        axum::extract::Query::<SubmitForm>::try_from_uri(&uri)
            .unwrap()
            .0
    }

    #[test]
    fn the_form_becomes_a_submission() {
        let req = form(&[
            ("kind", " restart "),
            ("capabilities", "docker, ansible  gpu"),
            ("payload", r#"{"container": "jellyfin"}"#),
            ("priority", "5"),
            ("max_retries", ""),
            ("labels", "env=prod\n\nteam = media"),
        ])
        .to_request()
        .map_err(|e| e.message)
        .unwrap();
        assert_eq!(req.kind, "restart");
        assert_eq!(req.capabilities, ["docker", "ansible", "gpu"]);
        assert_eq!(req.payload["container"], "jellyfin");
        assert_eq!(req.priority, 5);
        assert_eq!(req.max_retries, None);
        assert_eq!(req.labels["team"], "media");
    }

    #[test]
    fn each_bad_field_is_named() {
        for (field, value) in [
            ("payload", "{not json"),
            ("priority", "high"),
            ("timeout_s", "-1"),
            ("run_after", "tomorrow"),
            ("labels", "no equals sign"),
        ] {
            let err = form(&[("kind", "k"), (field, value)])
                .to_request()
                .err()
                .unwrap();
            assert_eq!(err.field, field);
            assert!(err.message.starts_with(field), "{}", err.message);
        }
        assert_eq!(form_field("capabilities[3]"), "capabilities");
    }
}
