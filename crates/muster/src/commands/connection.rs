//! Reaching the control plane from an operator command: the flags every such command shares,
//! and the client's errors turned into sentences that say what to do next.

use anyhow::anyhow;
use muster_api::ErrorCode;
use muster_client::{Client, ClientError};

/// Where the server is, how to authenticate, and how to print. `global` lets the flags stand
/// before or after the subcommand (`muster task --json list` and `muster task list --json`).
#[derive(clap::Args, Debug)]
#[command(next_help_heading = "Common options")]
pub(crate) struct ServerArgs {
    /// The control plane's base URL.
    #[arg(
        long,
        env = "MUSTER_URL",
        default_value = "http://127.0.0.1:8000",
        global = true
    )]
    url: String,
    /// The admin key, sent as a bearer token (the server's API_KEY).
    #[arg(long, env = "MUSTER_API_KEY", hide_env_values = true, global = true)]
    key: Option<String>,
    /// Print the API's JSON (one document) instead of tables.
    #[arg(long, global = true)]
    json: bool,
}

/// A connected operator command: the client, and what its errors should mention.
pub(crate) struct Session {
    pub(crate) client: Client,
    /// Machine output was asked for.
    pub(crate) json: bool,
    key_given: bool,
}

impl Session {
    pub(crate) fn connect(args: ServerArgs) -> anyhow::Result<Session> {
        // An empty variable (`MUSTER_API_KEY=`) means no key, as it does for the server.
        let key = args.key.filter(|k| !k.is_empty());
        let key_given = key.is_some();
        let client = Client::new(&args.url, key).map_err(|err| explain(err, key_given, None))?;
        Ok(Session {
            client,
            json: args.json,
            key_given,
        })
    }

    /// Turns a failed request about `subject` (say "task 0190…") into the message the operator
    /// sees; `action` is what was being done to it ("cancel"), for refusals.
    pub(crate) fn explain(&self, err: ClientError, action: &str, subject: &str) -> anyhow::Error {
        explain(err, self.key_given, Some((action, subject)))
    }
}

fn explain(err: ClientError, key_given: bool, doing: Option<(&str, &str)>) -> anyhow::Error {
    let key_hint = "set --key or MUSTER_API_KEY to the server's API_KEY";
    match (err, doing) {
        (ClientError::Unreachable { url, reason }, _) => anyhow!(
            "cannot reach muster at {url}: {reason} \
             (is `muster serve` running? set --url or MUSTER_URL)"
        ),
        (err @ ClientError::InvalidUrl(_), _) => anyhow!("{err} (set --url or MUSTER_URL)"),
        (err @ ClientError::Protocol { .. }, _) => {
            anyhow!("{err} (does --url point at a muster server?)")
        }
        (
            ClientError::Api {
                status,
                code: ErrorCode::Unauthorized | ErrorCode::Forbidden,
                message,
            },
            _,
        ) => {
            if key_given {
                anyhow!("the server refused the key ({status}: {message}); {key_hint}")
            } else {
                anyhow!("the server requires a key ({status}: {message}); {key_hint}")
            }
        }
        (
            ClientError::Api {
                code: ErrorCode::NotFound,
                ..
            },
            Some((_, subject)),
        ) => anyhow!("{subject} not found"),
        (
            ClientError::Api {
                status,
                code,
                message,
            },
            Some((action, subject)),
        ) => anyhow!("cannot {action} {subject}: {message} ({status} {code})"),
        (
            ClientError::Api {
                status,
                code,
                message,
            },
            None,
        ) => anyhow!("the server said: {message} ({status} {code})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(status: u16, code: ErrorCode, message: &str) -> ClientError {
        ClientError::Api {
            status,
            code,
            message: message.to_owned(),
        }
    }

    #[test]
    fn every_message_says_what_to_do_next() {
        let unreachable = ClientError::Unreachable {
            url: "http://127.0.0.1:9".into(),
            reason: "connection refused".into(),
        };
        let text = explain(unreachable, false, None).to_string();
        assert!(
            text.contains("http://127.0.0.1:9") && text.contains("MUSTER_URL"),
            "{text}"
        );

        let text = explain(api(401, ErrorCode::Unauthorized, "bad key"), true, None).to_string();
        assert!(
            text.contains("refused the key") && text.contains("MUSTER_API_KEY"),
            "{text}"
        );

        let missing = api(404, ErrorCode::NotFound, "no such task");
        let text = explain(missing, false, Some(("show", "task 42"))).to_string();
        assert_eq!(text, "task 42 not found");

        let conflict = api(409, ErrorCode::Conflict, "task is completed");
        let text = explain(conflict, false, Some(("cancel", "task 42"))).to_string();
        assert!(
            text.starts_with("cannot cancel task 42: task is completed"),
            "{text}"
        );
    }
}
