//! What an allow-listed chat wrote, read as a command: `/status`, `/tasks`, `/approve <id>`,
//! `/deny <id> [reason]`, `/ask <prompt>`, `/help` (and `/start`, Telegram's first message),
//! or something unknown, which is answered with the list. Pure; [`crate::chatter`] carries
//! each out.

use uuid::Uuid;

/// The longest message taken as a command, in characters: room for a long prompt, and a
/// bound on what one message can make muster store and send on.
pub const MAX_COMMAND_CHARS: usize = 2000;

/// The fewest hex characters of an incident id that are looked up as a prefix: the short id
/// the pages and `/status` show.
pub const MIN_PREFIX_HEX: usize = 8;

/// A command as the help lists it.
#[derive(Debug, Clone, Copy)]
pub struct Spec {
    /// Its name without the `/`, also its `command` label in the metrics and the audit log.
    pub name: &'static str,
    pub usage: &'static str,
    pub help: &'static str,
}

/// Every command, in the help's order. A new command is a row here, a variant of
/// [`Command`] with its arm in [`parse`], and its arm in the chatter's dispatch.
pub const COMMANDS: &[Spec] = &[
    Spec {
        name: "status",
        usage: "/status",
        help: "agents, the queue and the open incidents",
    },
    Spec {
        name: "tasks",
        usage: "/tasks",
        help: "the latest tasks",
    },
    Spec {
        name: "approve",
        usage: "/approve <incident>",
        help: "run the risky action an incident waits with",
    },
    Spec {
        name: "deny",
        usage: "/deny <incident> [reason]",
        help: "refuse it: nothing runs, the incident escalates",
    },
    Spec {
        name: "run",
        usage: "/run <schedule>",
        help: "fire a schedule now, as its cron would",
    },
    Spec {
        name: "ask",
        usage: "/ask <prompt>",
        help: "ask the model through an agent; its answer comes here",
    },
    Spec {
        name: "help",
        usage: "/help",
        help: "this list",
    },
];

/// An incident as a chat names it: its whole id, or the start of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IncidentRef {
    Id(Uuid),
    /// At least [`MIN_PREFIX_HEX`] hex characters, lowercase, without hyphens.
    Prefix(String),
}

impl IncidentRef {
    /// Whether `id` is the incident this names.
    pub fn matches(&self, id: Uuid) -> bool {
        match self {
            IncidentRef::Id(whole) => *whole == id,
            IncidentRef::Prefix(prefix) => id.simple().to_string().starts_with(prefix.as_str()),
        }
    }
}

impl std::fmt::Display for IncidentRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            IncidentRef::Id(id) => write!(f, "{id}"),
            IncidentRef::Prefix(prefix) => f.write_str(prefix),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Status,
    Tasks,
    Approve(IncidentRef),
    Deny(IncidentRef, Option<String>),
    /// A schedule's name.
    Run(String),
    Ask(String),
    /// `/help` and `/start`.
    Help,
    /// A command muster does not know (its name as written, without the `/`), or plain text
    /// (an empty name).
    Unknown(String),
}

impl Command {
    /// The command's name in the metrics and the audit log; `unknown` for the rest.
    pub fn label(&self) -> &'static str {
        match self {
            Command::Status => "status",
            Command::Tasks => "tasks",
            Command::Approve(_) => "approve",
            Command::Deny(..) => "deny",
            Command::Run(_) => "run",
            Command::Ask(_) => "ask",
            Command::Help => "help",
            Command::Unknown(_) => "unknown",
        }
    }
}

/// A command that cannot be carried out as written: its label and what is wrong, for the
/// reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub label: &'static str,
    pub message: String,
}

/// Reads a message's text. `/name@SomeBot` (how Telegram writes a command picked from the
/// menu in a group) reads as `/name`; names are matched without regard to case.
pub fn parse(text: &str) -> Result<Command, Refusal> {
    let text = text.trim();
    let (word, args) = match text.split_once(char::is_whitespace) {
        Some((word, args)) => (word, args.trim()),
        None => (text, ""),
    };
    // Plain text has no name, and is answered like an unknown command.
    let name = word
        .strip_prefix('/')
        .and_then(|w| w.split('@').next())
        .unwrap_or_default()
        .to_lowercase();
    let label = COMMANDS
        .iter()
        .find(|c| c.name == name)
        .map_or("unknown", |c| c.name);
    if text.chars().count() > MAX_COMMAND_CHARS {
        return Err(Refusal {
            label,
            message: format!(
                "That message is {} characters long; a command may be at most \
                 {MAX_COMMAND_CHARS}. Nothing was done.",
                text.chars().count()
            ),
        });
    }
    let usage = |why: &str| Refusal {
        label,
        message: format!("{why}. Usage: {}", usage_of(label)),
    };
    Ok(match name.as_str() {
        "status" => Command::Status,
        "tasks" => Command::Tasks,
        "approve" => Command::Approve(incident_ref(args).map_err(|why| usage(&why))?),
        "deny" => {
            let (id, reason) = match args.split_once(char::is_whitespace) {
                Some((id, reason)) => (id, Some(reason.trim().to_owned())),
                None => (args, None),
            };
            Command::Deny(incident_ref(id).map_err(|why| usage(&why))?, reason)
        }
        "run" if args.is_empty() => return Err(usage("Run which schedule? The name is missing")),
        "run" => Command::Run(args.to_owned()),
        "ask" if args.is_empty() => return Err(usage("Ask what? The prompt is missing")),
        "ask" => Command::Ask(args.to_owned()),
        "help" | "start" => Command::Help,
        _ => Command::Unknown(name),
    })
}

fn usage_of(name: &str) -> &'static str {
    COMMANDS
        .iter()
        .find(|c| c.name == name)
        .map_or("/help", |c| c.usage)
}

fn incident_ref(text: &str) -> Result<IncidentRef, String> {
    if text.is_empty() {
        return Err("Which incident? Its id is missing".to_owned());
    }
    if let Ok(id) = Uuid::parse_str(text) {
        return Ok(IncidentRef::Id(id));
    }
    let hex: String = text.chars().filter(|c| *c != '-').collect();
    let shown: String = text.chars().take(40).collect();
    if !hex.chars().all(|c| c.is_ascii_hexdigit()) || hex.len() > 32 {
        return Err(format!(
            "{shown:?} is not an incident id: expected its id, or at least its first \
             {MIN_PREFIX_HEX} characters, as /status shows them"
        ));
    }
    if hex.len() < MIN_PREFIX_HEX {
        return Err(format!(
            "{shown:?} is too short to name an incident: give at least its first \
             {MIN_PREFIX_HEX} characters"
        ));
    }
    Ok(IncidentRef::Prefix(hex.to_lowercase()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0193a1b2-3c4d-7e5f-8a9b-0c1d2e3f4a5b";

    fn refused(text: &str) -> String {
        parse(text).unwrap_err().message
    }

    #[test]
    fn commands_read_with_their_arguments() {
        assert_eq!(parse("/status"), Ok(Command::Status));
        assert_eq!(parse("  /STATUS@MusterBot  "), Ok(Command::Status));
        assert_eq!(parse("/tasks please"), Ok(Command::Tasks));
        let id = Uuid::parse_str(ID).unwrap();
        assert_eq!(
            parse(&format!("/approve {ID}")),
            Ok(Command::Approve(IncidentRef::Id(id)))
        );
        assert_eq!(
            parse("/approve 0193A1B2"),
            Ok(Command::Approve(IncidentRef::Prefix("0193a1b2".into())))
        );
        assert_eq!(
            parse("/deny 0193a1b2-3c not during the film night "),
            Ok(Command::Deny(
                IncidentRef::Prefix("0193a1b23c".into()),
                Some("not during the film night".into())
            ))
        );
        assert_eq!(
            parse(&format!("/deny@bot {ID}")),
            Ok(Command::Deny(IncidentRef::Id(id), None))
        );
        assert_eq!(
            parse("/ask  Why is the NAS slow?\nAnd hot? 🔥"),
            Ok(Command::Ask("Why is the NAS slow?\nAnd hot? 🔥".into()))
        );
        assert_eq!(
            parse("/run nightly-backup"),
            Ok(Command::Run("nightly-backup".into()))
        );
        assert!(
            parse("/run")
                .unwrap_err()
                .message
                .contains("/run <schedule>")
        );
        assert_eq!(parse("/help"), Ok(Command::Help));
        assert_eq!(parse("/start"), Ok(Command::Help));
        assert_eq!(parse("/reboot now"), Ok(Command::Unknown("reboot".into())));
        assert_eq!(parse("hello"), Ok(Command::Unknown(String::new())));
        assert_eq!(parse("/reboot").unwrap().label(), "unknown");
    }

    #[test]
    fn a_command_that_cannot_be_carried_out_says_why_and_how() {
        assert_eq!(
            refused("/approve"),
            "Which incident? Its id is missing. Usage: /approve <incident>"
        );
        assert!(refused("/approve 0193a1").contains("too short"));
        assert!(refused("/deny jellyfin").contains("\"jellyfin\" is not an incident id"));
        assert!(refused("/ask   ").starts_with("Ask what?"));
        let long = format!("/ask {}", "x".repeat(MAX_COMMAND_CHARS));
        let refusal = parse(&long).unwrap_err();
        assert_eq!(refusal.label, "ask");
        assert!(
            refusal.message.contains("at most 2000"),
            "{}",
            refusal.message
        );
        assert_eq!(parse(&"y".repeat(3000)).unwrap_err().label, "unknown");
    }

    #[test]
    fn a_prefix_matches_the_ids_that_start_with_it() {
        let id = Uuid::parse_str(ID).unwrap();
        assert!(IncidentRef::Prefix("0193a1b23c4d".into()).matches(id));
        assert!(!IncidentRef::Prefix("0193a1b3".into()).matches(id));
        assert!(IncidentRef::Id(id).matches(id));
        assert!(!IncidentRef::Id(Uuid::nil()).matches(id));
    }
}
