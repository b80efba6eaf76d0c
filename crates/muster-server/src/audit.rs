//! The audit log's chain, as pure logic: what one record says ([`AuditRecord`], with a
//! constructor per audited action), the canonical bytes an entry is hashed over, SHA-256
//! chaining, the HMAC-signed checkpoint that pruning leaves behind, and [`verify`], which walks
//! a stored sequence and names the first entry that was changed, removed or reordered.
//!
//! No I/O here: the store appends and reads entries (`store::sqlite::audit`), the outbox
//! delivers records to it (`outbox`), and the key file is read by the store.
//!
//! Chaining: `hash = SHA-256(prev_hash ‖ canonical entry)`, where the canonical entry is a fixed
//! tag followed by each field (seq, at, actor, action, subject, detail, id) as an 8-byte
//! big-endian length and its bytes. Length prefixes make the encoding unambiguous (no field's
//! text can pose as the next field), and `seq` is inside it, so moving an entry to another place
//! changes its hash. `detail` is stored as canonical JSON (keys sorted, no whitespace) and hashed
//! as the stored text, so verification never depends on a JSON library's formatting.

use std::collections::HashMap;
use std::fmt;

use hmac::{Hmac, KeyInit, Mac};
use muster_api::{PauseScope, TaskState};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::secret::hex;

/// The `prev_hash` of the first entry ever appended.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Where an operator acted from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    Api,
    Ui,
}

/// A chat service operators send commands from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChatService {
    Telegram,
}

impl ChatService {
    pub fn as_str(self) -> &'static str {
        match self {
            ChatService::Telegram => "telegram",
        }
    }

    fn parse(text: &str) -> Option<ChatService> {
        match text {
            "telegram" => Some(ChatService::Telegram),
            _ => None,
        }
    }
}

/// Who caused an audited action. Stored and sent as text: `operator:api`, `operator:ui`,
/// `chat:telegram:<chat id>`, `agent:<id>` or `system`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Actor {
    Operator(Via),
    /// Whoever wrote in an allow-listed chat: the service and the chat's id there (a person's
    /// own chat, or a group whose members may all command).
    Chat {
        service: ChatService,
        chat_id: i64,
    },
    Agent(String),
    System,
}

impl Actor {
    pub fn operator(via: Via) -> Actor {
        Actor::Operator(via)
    }

    pub fn agent(agent_id: &str) -> Actor {
        Actor::Agent(agent_id.to_owned())
    }

    pub fn chat(service: ChatService, chat_id: i64) -> Actor {
        Actor::Chat { service, chat_id }
    }

    pub fn as_text(&self) -> String {
        match self {
            Actor::Operator(Via::Api) => "operator:api".into(),
            Actor::Operator(Via::Ui) => "operator:ui".into(),
            Actor::Chat { service, chat_id } => format!("chat:{}:{chat_id}", service.as_str()),
            Actor::Agent(id) => format!("agent:{id}"),
            Actor::System => "system".into(),
        }
    }

    pub fn parse(text: &str) -> Option<Actor> {
        match text {
            "operator:api" => Some(Actor::Operator(Via::Api)),
            "operator:ui" => Some(Actor::Operator(Via::Ui)),
            "system" => Some(Actor::System),
            _ => {
                if let Some(chat) = text.strip_prefix("chat:") {
                    let (service, id) = chat.split_once(':')?;
                    return Some(Actor::chat(ChatService::parse(service)?, id.parse().ok()?));
                }
                // Agent ids may hold ':'; only the prefix is ours.
                text.strip_prefix("agent:")
                    .map(|id| Actor::Agent(id.into()))
            }
        }
    }
}

impl fmt::Display for Actor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.as_text())
    }
}

impl Serialize for Actor {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.as_text())
    }
}

impl<'de> Deserialize<'de> for Actor {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Actor, D::Error> {
        let text = String::deserialize(d)?;
        Actor::parse(&text)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown actor {text:?}")))
    }
}

/// One audited action, before it has a place in the chain. It travels as an outbox row's
/// payload; the outbox row's id becomes the entry's id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// When it happened (ms since the epoch), not when it was appended.
    pub at: i64,
    pub actor: Actor,
    /// A dotted name: `task.cancel`, `agent.drain`, `login.failed`, ….
    pub action: String,
    /// What it was done to: `task:<id>`, `agent:<id>`, `client:<address>`, `config`.
    pub subject: String,
    pub detail: Value,
}

impl AuditRecord {
    fn new(at: i64, actor: Actor, action: &str, subject: String, detail: Value) -> Self {
        AuditRecord {
            at,
            actor,
            action: action.to_owned(),
            subject,
            detail,
        }
    }

    /// An operator cancelled a task: at once (`asked_agent` false) or by telling its agent.
    pub fn task_cancelled(
        at: i64,
        actor: Actor,
        task_id: Uuid,
        from: TaskState,
        asked_agent: bool,
    ) -> Self {
        Self::new(
            at,
            actor,
            "task.cancel",
            format!("task:{task_id}"),
            json!({"from": from.as_str(), "asked_agent": asked_agent}),
        )
    }

    /// An operator queued a failed or cancelled task again.
    pub fn task_retried(
        at: i64,
        actor: Actor,
        task_id: Uuid,
        from: TaskState,
        attempt: u32,
    ) -> Self {
        Self::new(
            at,
            actor,
            "task.retry",
            format!("task:{task_id}"),
            json!({"from": from.as_str(), "attempts_before": attempt}),
        )
    }

    /// An agent registered (`created`: for the first time) with these capabilities.
    pub fn agent_registered(
        at: i64,
        agent_id: &str,
        host: &str,
        capabilities: &[String],
        created: bool,
    ) -> Self {
        Self::new(
            at,
            Actor::agent(agent_id),
            "agent.register",
            format!("agent:{agent_id}"),
            json!({"new": created, "host": host, "capabilities": capabilities}),
        )
    }

    /// An operator drained an agent: it takes no new tasks.
    pub fn agent_drained(at: i64, actor: Actor, agent_id: &str) -> Self {
        Self::new(
            at,
            actor,
            "agent.drain",
            format!("agent:{agent_id}"),
            json!({}),
        )
    }

    /// An operator ended an agent's drain.
    pub fn agent_undrained(at: i64, actor: Actor, agent_id: &str) -> Self {
        Self::new(
            at,
            actor,
            "agent.undrain",
            format!("agent:{agent_id}"),
            json!({}),
        )
    }

    /// An operator removed an agent; `tasks_requeued` of its tasks went back to the queue.
    pub fn agent_removed(at: i64, actor: Actor, agent_id: &str, tasks_requeued: usize) -> Self {
        Self::new(
            at,
            actor,
            "agent.remove",
            format!("agent:{agent_id}"),
            json!({"tasks_requeued": tasks_requeued}),
        )
    }

    /// An operator paused (`paused`) or resumed a GitOps source or rule; a resume names how
    /// many held tasks it submitted.
    pub fn gitops_paused(
        at: i64,
        actor: Actor,
        scope: PauseScope,
        name: &str,
        paused: bool,
        released_tasks: usize,
    ) -> Self {
        let (action, detail) = if paused {
            ("gitops.pause", json!({}))
        } else {
            ("gitops.resume", json!({"released_tasks": released_tasks}))
        };
        Self::new(
            at,
            actor,
            action,
            format!("git-{}:{name}", scope.as_str()),
            detail,
        )
    }

    /// An operator re-submitted a past deployment as a new one.
    pub fn deployment_redeployed(at: i64, actor: Actor, of: Uuid, new: Uuid, sha: &str) -> Self {
        Self::new(
            at,
            actor,
            "deployment.redeploy",
            format!("deployment:{of}"),
            json!({"deployment": new, "sha": sha}),
        )
    }

    /// An operator ran a canary now, outside its cron.
    pub fn canary_run(at: i64, actor: Actor, canary: &str, run: Uuid) -> Self {
        Self::new(
            at,
            actor,
            "canary.run",
            format!("canary:{canary}"),
            json!({"run": run}),
        )
    }

    /// A step of an incident's story (`incident.opened`, `incident.decided`,
    /// `incident.approved`, …), with the event's details.
    pub fn incident(at: i64, actor: Actor, kind: &str, id: Uuid, detail: Value) -> Self {
        Self::new(
            at,
            actor,
            &format!("incident.{kind}"),
            format!("incident:{id}"),
            detail,
        )
    }

    /// An operator paused or resumed self-repair, for everything (`target` none) or one
    /// target.
    pub fn repair_paused(at: i64, actor: Actor, target: Option<&str>, paused: bool) -> Self {
        Self::new(
            at,
            actor,
            if paused {
                "repair.pause"
            } else {
                "repair.resume"
            },
            match target {
                Some(t) => format!("repair-target:{t}"),
                None => "repair".to_owned(),
            },
            json!({}),
        )
    }

    /// A schedule was paused or resumed.
    pub fn schedule_paused(at: i64, actor: Actor, name: &str, paused: bool) -> Self {
        let action = if paused {
            "schedule.pause"
        } else {
            "schedule.resume"
        };
        Self::new(at, actor, action, format!("schedule:{name}"), json!({}))
    }

    /// Someone ran a schedule now, submitting `task`.
    pub fn schedule_run(at: i64, actor: Actor, name: &str, task: uuid::Uuid) -> Self {
        Self::new(
            at,
            actor,
            "schedule.run",
            format!("schedule:{name}"),
            json!({ "task": task }),
        )
    }

    /// A schedule was created through the API (`spec`, as sent) or deleted (`spec` none).
    pub fn schedule_changed(at: i64, actor: Actor, name: &str, spec: Option<Value>) -> Self {
        let action = match spec {
            Some(_) => "schedule.create",
            None => "schedule.delete",
        };
        let detail = spec.unwrap_or_else(|| json!({}));
        Self::new(at, actor, action, format!("schedule:{name}"), detail)
    }

    /// Someone logged in to the web UI from `client`.
    pub fn login_succeeded(at: i64, client: &str) -> Self {
        Self::new(
            at,
            Actor::operator(Via::Ui),
            "login.succeeded",
            format!("client:{client}"),
            json!({}),
        )
    }

    /// `count` wrong keys came from `client` in the minute starting at `minute_ms`: one entry
    /// per client and minute, so a flood of guesses cannot fill the disk. Recorded by the
    /// system, since nobody is known to be acting.
    pub fn logins_failed(at: i64, client: &str, minute_ms: i64, count: u64) -> Self {
        Self::tallied(
            at,
            "login.failed",
            format!("client:{client}"),
            minute_ms,
            count,
        )
    }

    /// One minute's tally of refusals of one kind from one subject, recorded by the system.
    fn tallied(at: i64, action: &str, subject: String, minute_ms: i64, count: u64) -> Self {
        let minute =
            crate::clock::to_utc(minute_ms).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        Self::new(
            at,
            Actor::System,
            action,
            subject,
            json!({"count": count, "minute": minute}),
        )
    }

    /// `count` hooks for the git source `source` came with a missing or wrong signature in the
    /// minute starting at `minute_ms`: one entry per source and minute, like failed logins.
    pub fn hooks_refused(at: i64, source: &str, minute_ms: i64, count: u64) -> Self {
        Self::tallied(
            at,
            "hook.refused",
            format!("source:{source}"),
            minute_ms,
            count,
        )
    }

    /// An allow-listed chat sent a command (`command`, as the metrics name it), with what came
    /// of it (`ok`, `refused`, `failed`) and the start of what was written.
    pub fn chat_command(at: i64, actor: Actor, command: &str, outcome: &str, text: &str) -> Self {
        let subject = actor.as_text();
        Self::new(
            at,
            actor,
            "chat.command",
            subject,
            json!({"command": command, "outcome": outcome, "text": text}),
        )
    }

    /// `count` messages came from the chat `chat` (`telegram:<id>`), which is not allow-listed,
    /// in the minute starting at `minute_ms`: ignored, and one entry per chat and minute, like
    /// failed logins.
    pub fn chats_ignored(at: i64, chat: &str, minute_ms: i64, count: u64) -> Self {
        Self::tallied(at, "chat.ignored", format!("chat:{chat}"), minute_ms, count)
    }

    /// A notification reached its channel after `attempts` attempts.
    pub fn notification_delivered(
        at: i64,
        id: Uuid,
        channel: &str,
        event: &str,
        subject: &str,
        attempts: u32,
    ) -> Self {
        Self::new(
            at,
            Actor::System,
            "notification.delivered",
            format!("notification:{id}"),
            json!({"channel": channel, "event": event, "about": subject, "attempts": attempts}),
        )
    }

    /// A notification was refused by its channel's service, or given up on.
    pub fn notification_failed(
        at: i64,
        id: Uuid,
        channel: &str,
        event: &str,
        subject: &str,
        reason: &str,
    ) -> Self {
        Self::new(
            at,
            Actor::System,
            "notification.failed",
            format!("notification:{id}"),
            json!({"channel": channel, "event": event, "about": subject, "reason": reason}),
        )
    }

    /// An operator sent a test message over a channel; `outcome` is what its service said.
    pub fn notify_tested(
        at: i64,
        actor: Actor,
        channel: &str,
        outcome: &str,
        status: Option<u16>,
    ) -> Self {
        Self::new(
            at,
            actor,
            "notify.test",
            format!("channel:{channel}"),
            json!({"outcome": outcome, "status": status}),
        )
    }

    /// The settings were reloaded; `detail` says from where and what changed (never secrets).
    pub fn config_reloaded(at: i64, detail: Value) -> Self {
        Self::new(at, Actor::System, "config.reload", "config".into(), detail)
    }
}

/// JSON text with object keys sorted and no whitespace: one text per value, whatever order a
/// map was built in.
pub fn canonical_json(value: &Value) -> String {
    fn write(value: &Value, out: &mut String) {
        match value {
            Value::Object(map) => {
                let mut keys: Vec<&String> = map.keys().collect();
                keys.sort();
                out.push('{');
                for (i, key) in keys.into_iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&Value::String(key.clone()).to_string());
                    out.push(':');
                    write(&map[key], out);
                }
                out.push('}');
            }
            Value::Array(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    write(item, out);
                }
                out.push(']');
            }
            scalar => out.push_str(&scalar.to_string()),
        }
    }
    let mut out = String::new();
    write(value, &mut out);
    out
}

/// One entry as stored: the record's fields as text, its place and its links.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEntry {
    pub seq: i64,
    pub at: i64,
    pub actor: String,
    pub action: String,
    pub subject: String,
    /// Canonical JSON text.
    pub detail: String,
    /// The id of the outbox row that carried it (UUIDv7): a redelivery appends nothing.
    pub id: String,
    pub prev_hash: String,
    pub hash: String,
}

impl StoredEntry {
    /// The entry that follows `prev_hash` at `seq`, with its hash computed.
    pub fn chained(seq: i64, prev_hash: &str, id: &str, record: &AuditRecord) -> StoredEntry {
        let mut entry = StoredEntry {
            seq,
            at: record.at,
            actor: record.actor.as_text(),
            action: record.action.clone(),
            subject: record.subject.clone(),
            detail: canonical_json(&record.detail),
            id: id.to_owned(),
            prev_hash: prev_hash.to_owned(),
            hash: String::new(),
        };
        entry.hash = entry.computed_hash();
        entry
    }

    /// The hash this entry's content and `prev_hash` call for.
    pub fn computed_hash(&self) -> String {
        let mut h = Sha256::new();
        h.update(b"muster-audit-v1");
        let seq = self.seq.to_string();
        let at = self.at.to_string();
        for field in [
            self.prev_hash.as_str(),
            &seq,
            &at,
            &self.actor,
            &self.action,
            &self.subject,
            &self.detail,
            &self.id,
        ] {
            h.update((field.len() as u64).to_be_bytes());
            h.update(field.as_bytes());
        }
        hex(&h.finalize())
    }
}

/// Hex to bytes; `None` for anything else (an odd length fails on its last pair).
fn unhex(text: &str) -> Option<Vec<u8>> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// The secret that signs checkpoints. It lives outside the database (a file beside it), so
/// someone who can rewrite the database cannot move the checkpoint to hide what they removed.
#[derive(Clone)]
pub struct AuditKey([u8; 32]);

impl fmt::Debug for AuditKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AuditKey([redacted])")
    }
}

impl AuditKey {
    /// The key from exactly 32 bytes.
    pub fn from_bytes(bytes: &[u8]) -> Option<AuditKey> {
        bytes.try_into().ok().map(AuditKey)
    }

    pub fn bytes(&self) -> &[u8; 32] {
        &self.0
    }

    fn mac(&self, seq: i64, hash: &str, count: u64) -> Hmac<Sha256> {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes a key of any length");
        mac.update(b"muster-audit-checkpoint-v1");
        mac.update(&seq.to_be_bytes());
        mac.update(&(hash.len() as u64).to_be_bytes());
        mac.update(hash.as_bytes());
        mac.update(&count.to_be_bytes());
        mac
    }

    /// The checkpoint after pruning up to the entry `seq` with `hash`; `count` entries were
    /// pruned in all.
    pub fn checkpoint(&self, seq: i64, hash: &str, count: u64, at: i64) -> Checkpoint {
        let signature = hex(&self.mac(seq, hash, count).finalize().into_bytes());
        Checkpoint {
            seq,
            hash: hash.to_owned(),
            count,
            at,
            signature,
        }
    }

    /// Whether `checkpoint` was signed with this key (compared in constant time).
    pub fn signed(&self, checkpoint: &Checkpoint) -> bool {
        let Some(signature) = unhex(&checkpoint.signature) else {
            return false;
        };
        self.mac(checkpoint.seq, &checkpoint.hash, checkpoint.count)
            .verify_slice(&signature)
            .is_ok()
    }
}

/// What pruning leaves of the entries it deleted: the last one's seq and hash, how many were
/// pruned in all, and a signature over those with the [`AuditKey`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub seq: i64,
    pub hash: String,
    pub count: u64,
    /// When the last pruning happened (not signed: it says nothing about the chain).
    pub at: i64,
    pub signature: String,
}

/// A chain that verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// Entries checked (those after the checkpoint).
    pub entries: u64,
    pub checkpoint: Option<Checkpoint>,
    /// The last entry's seq and hash (the checkpoint's when no entry follows it). Removing
    /// the newest entries leaves a shorter chain that still links; comparing this with a
    /// copy kept elsewhere is how that is seen.
    pub head_seq: i64,
    pub head_hash: String,
}

/// The first place where the chain is not what was appended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Broken {
    /// The checkpoint cannot be trusted: its signature is wrong or cannot be checked.
    Checkpoint { seq: i64, why: String },
    /// This entry's content (or its stored hash) is not what was appended.
    Changed { seq: i64 },
    /// This entry is missing: `next` follows the one before it.
    Removed { seq: i64, next: i64 },
    /// This entry stands where another belongs (`expected` is the seq that should be here).
    Reordered { seq: i64, expected: i64 },
}

impl Broken {
    /// The seq the verdict names.
    pub fn seq(&self) -> i64 {
        match self {
            Broken::Checkpoint { seq, .. }
            | Broken::Changed { seq }
            | Broken::Removed { seq, .. }
            | Broken::Reordered { seq, .. } => *seq,
        }
    }
}

impl fmt::Display for Broken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Broken::Checkpoint { seq, why } => {
                write!(f, "the checkpoint at seq {seq} cannot be trusted: {why}")
            }
            Broken::Changed { seq } => write!(f, "entry seq {seq} was changed"),
            Broken::Removed { seq, next } => {
                write!(
                    f,
                    "entry seq {seq} was removed (seq {next} follows seq {})",
                    seq - 1
                )
            }
            Broken::Reordered { seq, expected } if seq == expected => write!(
                f,
                "entry seq {seq} was reordered (its content was written at another place)"
            ),
            Broken::Reordered { seq, expected } => write!(
                f,
                "entry seq {seq} was reordered (it stands where seq {expected} belongs)"
            ),
        }
    }
}

/// Everything needed to verify a chain: the checkpoint (if anything was pruned), the key to
/// check it with (if the key file exists), and the entries in seq order.
#[derive(Debug, Clone)]
pub struct Chain {
    pub checkpoint: Option<Checkpoint>,
    pub key: Option<AuditKey>,
    pub entries: Vec<StoredEntry>,
}

impl Chain {
    pub fn verify(&self) -> Result<Verified, Broken> {
        verify(self.checkpoint.as_ref(), self.key.as_ref(), &self.entries)
    }
}

/// Walks `entries` (in the order stored) from the checkpoint, or from the genesis when nothing
/// was pruned, and names the first entry that is not what was appended.
///
/// Each entry must hash to its stored hash, link to the previous one's hash, and carry the next
/// seq. When one does not, the diagnosis is: an entry whose `prev_hash` names an entry found
/// later, or whose seq goes backwards, was reordered; one whose own hash is wrong was changed;
/// an intact one after a gap follows a removed entry; an intact one in its place whose link is
/// wrong follows an entry that was changed and re-hashed.
pub fn verify(
    checkpoint: Option<&Checkpoint>,
    key: Option<&AuditKey>,
    entries: &[StoredEntry],
) -> Result<Verified, Broken> {
    let (mut prev_seq, mut prev_hash) = match checkpoint {
        None => (0, GENESIS.to_owned()),
        Some(cp) => {
            let signed = match key {
                Some(key) => key.signed(cp),
                None => {
                    return Err(Broken::Checkpoint {
                        seq: cp.seq,
                        why: "there is no key to check its signature (the database's \
                              .audit-key file)"
                            .into(),
                    });
                }
            };
            if !signed {
                return Err(Broken::Checkpoint {
                    seq: cp.seq,
                    why: "its signature does not match its seq, hash and count".into(),
                });
            }
            (cp.seq, cp.hash.clone())
        }
    };
    // Built only when something is wrong: where each hash stands, to tell a reorder.
    let mut positions: Option<HashMap<&str, usize>> = None;
    for (i, entry) in entries.iter().enumerate() {
        let expected = prev_seq + 1;
        let intact = entry.computed_hash() == entry.hash;
        if intact && entry.prev_hash == prev_hash && entry.seq == expected {
            prev_seq = entry.seq;
            prev_hash.clone_from(&entry.hash);
            continue;
        }
        let positions = positions.get_or_insert_with(|| {
            entries
                .iter()
                .enumerate()
                .map(|(j, e)| (e.hash.as_str(), j))
                .collect()
        });
        let links_later = positions
            .get(entry.prev_hash.as_str())
            .is_some_and(|&j| j > i);
        return Err(if links_later || entry.seq < expected {
            Broken::Reordered {
                seq: entry.seq,
                expected,
            }
        } else if !intact {
            Broken::Changed { seq: entry.seq }
        } else if entry.seq > expected {
            Broken::Removed {
                seq: expected,
                next: entry.seq,
            }
        } else if i == 0 {
            // Intact and in its place, yet not linked to the checkpoint (or the genesis): it
            // was re-hashed after a change.
            Broken::Changed { seq: entry.seq }
        } else {
            Broken::Changed { seq: prev_seq }
        });
    }
    Ok(Verified {
        entries: entries.len() as u64,
        checkpoint: checkpoint.cloned(),
        head_seq: prev_seq,
        head_hash: prev_hash,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(n: i64) -> AuditRecord {
        AuditRecord::task_cancelled(
            1_700_000_000_000 + n,
            Actor::operator(Via::Api),
            Uuid::from_u128(n as u128),
            TaskState::Queued,
            false,
        )
    }

    /// A chain of `n` entries starting after `(seq, hash)`.
    fn chain_from(start_seq: i64, start_hash: &str, n: i64) -> Vec<StoredEntry> {
        let mut entries: Vec<StoredEntry> = Vec::new();
        for k in 1..=n {
            let prev = entries
                .last()
                .map_or(start_hash.to_owned(), |e| e.hash.clone());
            let seq = start_seq + k;
            entries.push(StoredEntry::chained(
                seq,
                &prev,
                &format!("id-{seq}"),
                &record(seq),
            ));
        }
        entries
    }

    fn chain(n: i64) -> Vec<StoredEntry> {
        chain_from(0, GENESIS, n)
    }

    fn key() -> AuditKey {
        AuditKey::from_bytes(&[7u8; 32]).unwrap()
    }

    #[test]
    fn an_untouched_chain_verifies() {
        let entries = chain(5);
        let ok = verify(None, None, &entries).expect("verifies");
        assert_eq!(ok.entries, 5);
        assert_eq!(ok.head_seq, 5);
        assert_eq!(ok.head_hash, entries[4].hash);
        assert_eq!(verify(None, None, &[]).unwrap().head_hash, GENESIS);
    }

    #[test]
    fn a_changed_detail_is_named() {
        let mut entries = chain(5);
        entries[2].detail = r#"{"asked_agent":true,"from":"queued"}"#.into();
        assert_eq!(
            verify(None, None, &entries),
            Err(Broken::Changed { seq: 3 })
        );
    }

    #[test]
    fn a_change_whose_hash_was_recomputed_is_named_by_the_next_link() {
        let mut entries = chain(5);
        entries[2].actor = "system".into();
        entries[2].hash = entries[2].computed_hash();
        assert_eq!(
            verify(None, None, &entries),
            Err(Broken::Changed { seq: 3 })
        );
    }

    #[test]
    fn a_removed_entry_is_named() {
        let mut entries = chain(5);
        entries.remove(1);
        let broken = verify(None, None, &entries).unwrap_err();
        assert_eq!(broken, Broken::Removed { seq: 2, next: 3 });
        assert_eq!(
            broken.to_string(),
            "entry seq 2 was removed (seq 3 follows seq 1)"
        );
        // The first one too.
        let mut entries = chain(3);
        entries.remove(0);
        assert_eq!(
            verify(None, None, &entries),
            Err(Broken::Removed { seq: 1, next: 2 })
        );
    }

    #[test]
    fn swapped_entries_are_named() {
        let mut entries = chain(5);
        entries.swap(1, 2);
        assert_eq!(
            verify(None, None, &entries),
            Err(Broken::Reordered {
                seq: 3,
                expected: 2
            })
        );
        // Swapping their seq numbers (what an UPDATE would do, read back in seq order).
        let mut entries = chain(5);
        let (a, b) = (entries[1].clone(), entries[2].clone());
        entries[1] = StoredEntry { seq: 2, ..b };
        entries[2] = StoredEntry { seq: 3, ..a };
        assert_eq!(
            verify(None, None, &entries),
            Err(Broken::Reordered {
                seq: 2,
                expected: 2
            })
        );
    }

    #[test]
    fn a_chain_verifies_from_a_signed_checkpoint() {
        let all = chain(6);
        let cp = key().checkpoint(3, &all[2].hash, 3, 0);
        let rest = &all[3..];
        let ok = verify(Some(&cp), Some(&key()), rest).expect("verifies");
        assert_eq!(ok.entries, 3);
        assert_eq!(ok.checkpoint.unwrap().seq, 3);
        // Nothing left after the checkpoint: its hash is the head.
        let ok = verify(Some(&cp), Some(&key()), &[]).unwrap();
        assert_eq!((ok.head_seq, ok.head_hash), (3, all[2].hash.clone()));
        // The first entry after the checkpoint removed.
        assert_eq!(
            verify(Some(&cp), Some(&key()), &all[4..]),
            Err(Broken::Removed { seq: 4, next: 5 })
        );
    }

    #[test]
    fn a_bad_checkpoint_signature_is_named() {
        let all = chain(4);
        let good = key().checkpoint(2, &all[1].hash, 2, 0);
        // Moved forward to hide the pruning of more entries, signature kept.
        let moved = Checkpoint {
            seq: 3,
            hash: all[2].hash.clone(),
            ..good.clone()
        };
        let broken = verify(Some(&moved), Some(&key()), &all[3..]).unwrap_err();
        assert!(
            matches!(broken, Broken::Checkpoint { seq: 3, .. }),
            "{broken}"
        );
        assert!(broken.to_string().contains("signature"), "{broken}");
        // A signature that is not even hex, or one character short.
        for signature in ["zz".to_owned(), good.signature[1..].to_owned()] {
            let garbled = Checkpoint {
                signature,
                ..good.clone()
            };
            assert!(matches!(
                verify(Some(&garbled), Some(&key()), &all[2..]),
                Err(Broken::Checkpoint { seq: 2, .. })
            ));
        }
        // Signed with another key.
        let other = AuditKey::from_bytes(&[8u8; 32]).unwrap();
        assert!(matches!(
            verify(Some(&good), Some(&other), &all[2..]),
            Err(Broken::Checkpoint { seq: 2, .. })
        ));
        // No key at all.
        assert!(matches!(
            verify(Some(&good), None, &all[2..]),
            Err(Broken::Checkpoint { seq: 2, .. })
        ));
        // A checkpoint that does not match the entries after it.
        let wrong_hash = key().checkpoint(2, GENESIS, 2, 0);
        assert_eq!(
            verify(Some(&wrong_hash), Some(&key()), &all[2..]),
            Err(Broken::Changed { seq: 3 })
        );
    }

    #[test]
    fn canonical_json_sorts_keys_at_every_depth() {
        let a: Value =
            serde_json::from_str(r#"{"b": 1, "a": {"d": [1, {"f": 2, "e": 3}], "c": "x"}}"#)
                .unwrap();
        assert_eq!(
            canonical_json(&a),
            r#"{"a":{"c":"x","d":[1,{"e":3,"f":2}]},"b":1}"#
        );
        assert_eq!(canonical_json(&json!("q\"uote")), r#""q\"uote""#);
    }

    #[test]
    fn actors_round_trip_through_text() {
        for actor in [
            Actor::operator(Via::Api),
            Actor::operator(Via::Ui),
            Actor::agent("host:with:colons"),
            Actor::chat(ChatService::Telegram, -1001234567890),
            Actor::chat(ChatService::Telegram, 42),
            Actor::System,
        ] {
            assert_eq!(Actor::parse(&actor.as_text()), Some(actor.clone()));
        }
        assert_eq!(Actor::parse("somebody"), None);
        assert_eq!(
            Actor::chat(ChatService::Telegram, -100456).as_text(),
            "chat:telegram:-100456"
        );
        for bad in ["chat:telegram:", "chat:telegram:x", "chat:irc:1", "chat:"] {
            assert_eq!(Actor::parse(bad), None, "{bad}");
        }
        let record = record(1);
        let back: AuditRecord =
            serde_json::from_value(serde_json::to_value(&record).unwrap()).unwrap();
        assert_eq!(back, record);
    }
}
