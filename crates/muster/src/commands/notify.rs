//! `muster notify …`: the notification channels as an operator checks them — list them, send a
//! test message and see what the service answered, and read what was sent.

use std::process::ExitCode;

use clap::Subcommand;
use muster_api::{ErrorCode, NotificationState, SendOutcome};
use muster_client::ClientError;

use super::connection::Session;
use crate::output;

#[derive(Subcommand)]
pub(crate) enum NotifyCommand {
    /// List the configured channels ([[notify.channels]]) and the events rules send to each.
    Channels,
    /// Send a test message over a channel now and print what its service answered; exits 1
    /// when it was not delivered.
    Test {
        /// The channel's name.
        name: String,
    },
    /// List notifications, newest first, with their state and last error.
    List {
        /// Only those for this channel.
        #[arg(long)]
        channel: Option<String>,
        /// Only those in this state: pending, delivered or failed.
        #[arg(long, value_parser = parse_state)]
        state: Option<NotificationState>,
        /// How many (1 to 200).
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
}

fn parse_state(text: &str) -> Result<NotificationState, String> {
    NotificationState::parse(text).ok_or_else(|| {
        let names: Vec<&str> = NotificationState::ALL.iter().map(|s| s.as_str()).collect();
        format!("expected one of {}", names.join(", "))
    })
}

pub(crate) async fn run(session: &Session, command: NotifyCommand) -> anyhow::Result<ExitCode> {
    match command {
        NotifyCommand::Channels => channels(session).await,
        NotifyCommand::Test { name } => test(session, &name).await,
        NotifyCommand::List {
            channel,
            state,
            limit,
        } => list(session, channel.as_deref(), state, limit).await,
    }
}

async fn channels(session: &Session) -> anyhow::Result<ExitCode> {
    let channels = session
        .client
        .notify_channels()
        .await
        .map_err(|err| session.explain(err, "list", "notification channels"))?;
    if session.json {
        output::emit_json(&channels)?;
        return Ok(ExitCode::SUCCESS);
    }
    if channels.is_empty() {
        output::note(
            "no channels configured: add [[notify.channels]] and [[notify.rules]] to the config \
             file and reload (SIGHUP)",
        );
        return Ok(ExitCode::SUCCESS);
    }
    let mut table = output::table(&["CHANNEL", "KIND", "SENDS TO", "EVENTS"]);
    for c in &channels {
        output::add_row(
            &mut table,
            vec![
                c.name.clone(),
                c.kind.clone(),
                c.target.clone(),
                output::list_or_dash(&c.events),
            ],
        );
    }
    output::emit(table)?;
    Ok(ExitCode::SUCCESS)
}

async fn test(session: &Session, name: &str) -> anyhow::Result<ExitCode> {
    let result = match session.client.notify_test(name).await {
        Ok(result) => result,
        // The server's answer names the channels there are.
        Err(ClientError::Api {
            code: ErrorCode::NotFound,
            message,
            ..
        }) => anyhow::bail!("{message}"),
        Err(err) => return Err(session.explain(err, "test", &format!("channel {name}"))),
    };
    if session.json {
        output::emit_json(&result)?;
    } else {
        let status = result
            .status
            .map(|s| format!("HTTP {s}"))
            .unwrap_or_else(|| "no answer".to_owned());
        let verdict = match result.outcome {
            SendOutcome::Delivered => "delivered",
            SendOutcome::Retry => "not delivered (unreachable, busy or slow; would be retried)",
            SendOutcome::Refused => "refused by the service",
            SendOutcome::InFlight => "in flight",
        };
        output::emit(format!(
            "{}: {verdict}: {status} in {} ms",
            result.channel, result.duration_ms
        ))?;
        if !result.detail.is_empty() {
            output::emit(format!("the service answered: {}", result.detail))?;
        }
    }
    Ok(if result.delivered {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

async fn list(
    session: &Session,
    channel: Option<&str>,
    state: Option<NotificationState>,
    limit: usize,
) -> anyhow::Result<ExitCode> {
    let page = session
        .client
        .notifications(channel, state, limit)
        .await
        .map_err(|err| session.explain(err, "list", "notifications"))?;
    if session.json {
        output::emit_json(&page)?;
        return Ok(ExitCode::SUCCESS);
    }
    if page.notifications.is_empty() {
        output::note("no notifications");
        return Ok(ExitCode::SUCCESS);
    }
    let mut table = output::table(&[
        "WHEN", "CHANNEL", "EVENT", "TITLE", "STATE", "ATTEMPTS", "ERROR",
    ]);
    for n in &page.notifications {
        let event = if n.digest {
            format!("{} (×{})", n.event, n.count)
        } else {
            n.event.clone()
        };
        output::add_row(
            &mut table,
            vec![
                output::ago(n.created_at),
                n.channel.clone(),
                event,
                n.title.clone(),
                n.state.to_string(),
                n.attempts.len().to_string(),
                output::or_dash(n.error.as_deref()),
            ],
        );
    }
    output::emit(table)?;
    Ok(ExitCode::SUCCESS)
}
