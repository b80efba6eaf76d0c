//! The notifications page: the configured channels (with a button that sends a test message
//! and shows what the service answered), and every message, newest first, with its channel,
//! state, attempts and last error.

use axum::Extension;
use axum::extract::{Path, State};
use maud::{Markup, html};
use muster_api::{Notification, NotificationState, NotifyTestResult, SendOutcome};

use super::layout::{self, Live, Section};
use super::{UiError, page_for};
use crate::app::AppState;
use crate::audit::Via;
use crate::extract::{QueryPairs, notification_filter_from_query};
use crate::operator;
use crate::sessions::Session;

/// `GET /notifications?channel=&state=&before=`.
pub(super) async fn page(
    State(app): State<AppState>,
    Extension(session): Extension<Session>,
    query: QueryPairs,
) -> Result<Markup, UiError> {
    render(&app, &session, &query, None).await
}

/// `POST /notifications/channels/{name}/test`: sends, then shows the page with the answer.
pub(super) async fn test(
    State(app): State<AppState>,
    Extension(session): Extension<Session>,
    Path(name): Path<String>,
) -> Result<Markup, UiError> {
    let result = operator::test_channel(&app, &name, Via::Ui).await?;
    render(
        &app,
        &session,
        &QueryPairs(Default::default()),
        Some(result),
    )
    .await
}

async fn render(
    app: &AppState,
    session: &Session,
    query: &QueryPairs,
    tested: Option<NotifyTestResult>,
) -> Result<Markup, UiError> {
    let filter = notification_filter_from_query(query)?;
    let (channel, state) = (filter.channel.clone(), filter.state);
    let page = app.store.notifications(filter).await?;
    let channels = operator::notify_channels(app);
    let filtered = channel.is_some() || state.is_some();
    let content = html! {
        div.title-row { h1 { "Notifications" } }
        @if let Some(result) = &tested { (test_result(result)) }
        h2 { "Channels" }
        @if channels.is_empty() {
            p.empty {
                "No channels configured. Add " code { "[[notify.channels]]" } " and "
                code { "[[notify.rules]]" } " to the config file (see the README's "
                "Notifications section) and reload with SIGHUP."
            }
        } @else {
            div.table-scroll {
                table {
                    thead { tr { th { "Name" } th { "Kind" } th { "Sends to" } th { "Events" } th {} } }
                    tbody {
                        @for c in &channels {
                            tr {
                                td { a href={ "/notifications?channel=" (urlencode(&c.name)) } { (c.name) } }
                                td { (c.kind) }
                                td { (c.target) }
                                td {
                                    @if c.events.is_empty() { span.muted { "no rule sends here" } }
                                    @else { (layout::chips(&c.events)) }
                                }
                                td { (layout::post_button(session,
                                    &format!("/notifications/channels/{}/test", urlencode(&c.name)),
                                    "Send test", "", None)) }
                            }
                        }
                    }
                }
            }
        }
        h2 { "Messages" }
        nav.filters aria-label="Filter" {
            a href="/notifications" aria-current=[(!filtered).then_some("page")] { "All" }
            @for s in NotificationState::ALL {
                a href={ "/notifications?state=" (s.as_str()) }
                    aria-current=[(state == Some(*s)).then_some("page")] { (s.as_str()) }
            }
            @if let Some(c) = &channel { span.muted { "channel " code { (c) } } }
        }
        @if page.notifications.is_empty() {
            p.empty { "No notifications" @if filtered { " match" } "." }
        } @else {
            div.table-scroll {
                table.notifications {
                    thead { tr {
                        th { "When" } th { "Channel" } th { "Event" } th { "Message" }
                        th { "State" } th { "Attempts" }
                    } }
                    tbody { @for n in &page.notifications { (row(n)) } }
                }
            }
        }
        nav.pager aria-label="Pages" {
            @if let Some(before) = page.next_before {
                a href={ "/notifications?before=" (before)
                    @if let Some(c) = &channel { "&channel=" (urlencode(c)) }
                    @if let Some(s) = state { "&state=" (s.as_str()) } } { "Older →" }
            }
        }
    };
    let shell = page_for(
        app,
        session,
        "Notifications",
        Some(Section::Notifications),
        Live::Off,
    );
    Ok(layout::shell(&shell, content))
}

fn row(n: &Notification) -> Markup {
    html! {
        tr {
            td { (layout::time(n.created_at)) }
            td { (n.channel) }
            td {
                code { (n.event) }
                @if n.digest { " " span.badge title="sent at the end of a quiet period" { "digest ×" (n.count) } }
            }
            td {
                details {
                    summary { (n.title) }
                    p.message { (n.message) }
                    @if let Some(link) = &n.link { p { a href=(link) { (link) } } }
                    p.muted { "id " code.id { (n.id) } " · about " (n.subject) }
                }
            }
            td {
                (state_badge(n.state))
                @if let Some(at) = n.next_attempt_at { br; span.muted { "next " (layout::time(at)) } }
                @if let Some(error) = &n.error { br; span.error-text { (error) } }
            }
            td {
                @if n.attempts.is_empty() { span.muted { "none yet" } }
                @else {
                    details {
                        summary { (n.attempts.len()) }
                        ol.attempts {
                            @for a in &n.attempts {
                                li {
                                    (layout::time(a.started_at)) " "
                                    span class={ "badge send-" (a.outcome.as_str()) } { (a.outcome.as_str()) }
                                    @if let Some(status) = a.status { " HTTP " (status) }
                                    @if let Some(detail) = &a.detail { " " span.muted { (detail) } }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn state_badge(state: NotificationState) -> Markup {
    html! { span class={ "badge notification-" (state.as_str()) } { (state.as_str()) } }
}

fn test_result(result: &NotifyTestResult) -> Markup {
    let class = if result.delivered {
        "notice good"
    } else {
        "notice error"
    };
    html! {
        div class=(class) role="status" {
            p {
                strong { "Test message to " (result.channel) ": " }
                @match result.outcome {
                    SendOutcome::Delivered => "delivered",
                    SendOutcome::Retry => "not delivered (the service is unreachable or busy)",
                    SendOutcome::Refused => "refused by the service",
                    SendOutcome::InFlight => "in flight",
                }
                @if let Some(status) = result.status { " (HTTP " (status) ")" }
                " in " (result.duration_ms) " ms."
            }
            @if !result.detail.is_empty() {
                p { @if result.delivered { "The service answered:" } @else { "What went wrong:" } }
                pre class=(if result.delivered { "json" } else { "error-text" }) { (result.detail) }
            }
        }
    }
}

fn urlencode(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes()).collect()
}
