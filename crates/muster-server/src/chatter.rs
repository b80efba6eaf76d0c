//! The chatter: the loop behind the chat commands. It long-polls Telegram's `getUpdates`
//! (so muster needs no public URL), takes the text messages of the chats `[chat.telegram]`
//! allows, carries each command out through the verbs the API and the UI call
//! ([`incidents::approve`], [`operator::submit`], …), audits it as `chat:telegram:<chat id>`,
//! and answers in the chat. Messages from any other chat get no answer; they are counted per
//! chat and minute for the audit log, and logged once a minute at most.
//!
//! Each poll's offset acknowledges every update before it, and the offset moves past an
//! update before it is acted on, so nothing is done twice in one run. Telegram being down,
//! answering 5xx or 409 (another reader of the bot's updates, or a webhook set on it), 429
//! (honouring `retry_after`) or something that is not JSON only delays the next poll, with a
//! backoff. The settings are read at every poll, so a reload (SIGHUP) that changes the token,
//! the allowed chats or the server applies from the next poll, and one that adds or removes
//! `[chat.telegram]` starts or stops polling.
//!
//! Owned by the server: [`run`] is spawned at start and ends when shutdown begins, first
//! acknowledging what it handled. An `/ask` waits for its task in a task of its own (at most
//! [`MAX_ASKS`] at once), so a slow model never holds up `/status`; those end with the loop.

use std::sync::Arc;
use std::time::Duration;

use muster_api::{ErrorCode, IncidentState, SubmitTask, Task};
use serde_json::{Map, Value, json};
use tokio::task::JoinSet;
use uuid::Uuid;

use crate::app::App;
use crate::audit::{Actor, AuditRecord, ChatService};
use crate::chat::command::{self, Command, IncidentRef};
use crate::chat::reply::{self, Reply};
use crate::chat::{TelegramChat, wire};
use crate::error::ApiError;
use crate::gitops::rules::TaskTemplate;
use crate::incidents;
use crate::notify::{Outcome, telegram};
use crate::operator;
use crate::store::{IncidentFilter, TaskFilter};

/// How long an `/ask` waits for its task's answer before saying so.
pub const ASK_WAIT: Duration = Duration::from_secs(10 * 60);
/// The kind, capability and workflow of an `/ask`'s task.
pub const ASK_KIND: &str = "llm";
pub const ASK_CAPABILITY: &str = "llm";
pub const ASK_WORKFLOW: &str = "chat";
/// `/ask`s waiting for their answers at once; more are refused until one ends.
pub const MAX_ASKS: usize = 8;
/// Tasks `/tasks` lists.
pub const TASKS_LISTED: usize = 10;
/// A message older than this when it is read (muster was down, or could not reach Telegram)
/// is not acted on: an approval or a question from long ago may no longer be meant.
pub const STALE_AFTER: Duration = Duration::from_secs(10 * 60);

/// How often a server without `[chat.telegram]` looks again (a reload may add it).
const IDLE: Duration = Duration::from_secs(2);
/// Backoff after failed polls: doubling from the first, at most the last.
const BACKOFF_FIRST: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(60);
/// The longest `retry_after` honoured as given; a longer one is waited in several polls.
const RETRY_AFTER_MAX: Duration = Duration::from_secs(300);
/// One `sendMessage`, and how often a reply is tried.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);
const SEND_ATTEMPTS: u32 = 3;
/// How often a follower of an `/ask` looks at its task when no signal came.
const FOLLOW_POLL: Duration = Duration::from_secs(1);
/// What an audit entry keeps of a command's text.
const AUDITED_CHARS: usize = 200;

/// What came of a command, for the metrics and the audit log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Ok,
    /// Not as written, or the rules said no; the reply says why.
    Refused,
    /// muster could not carry it out (its store was away).
    Failed,
}

impl Verdict {
    fn as_str(self) -> &'static str {
        match self {
            Verdict::Ok => "ok",
            Verdict::Refused => "refused",
            Verdict::Failed => "failed",
        }
    }
}

/// A command carried out: the verdict, the reply, and for an `/ask` the task whose answer
/// follows once the reply is sent.
struct Done {
    verdict: Verdict,
    reply: Reply,
    follow: Option<Task>,
}

impl Done {
    fn ok(reply: Reply) -> Done {
        Done {
            verdict: Verdict::Ok,
            reply,
            follow: None,
        }
    }

    fn refused(message: &str) -> Done {
        Done {
            verdict: Verdict::Refused,
            reply: reply::refused(message),
            follow: None,
        }
    }

    /// A verb's answer: its reply, or its error in the chat (an error of muster's own, as
    /// the API would word it, a failure; any other a refusal).
    fn from(result: Result<Reply, ApiError>) -> Done {
        match result {
            Ok(reply) => Done::ok(reply),
            Err(err) => Done {
                verdict: if err.code == ErrorCode::Unavailable {
                    Verdict::Failed
                } else {
                    Verdict::Refused
                },
                reply: reply::refused(&err.message),
                follow: None,
            },
        }
    }
}

/// The loop's memory between polls: the offset, the bot it belongs to, the failures in a row
/// and the `/ask`s being followed.
pub struct Chatter {
    client: reqwest::Client,
    /// The next update wanted: one past the last one handled or passed over.
    offset: Option<i64>,
    /// The offset the last poll sent, which acknowledged everything before it.
    acknowledged: Option<i64>,
    /// Whose updates `offset` counts: another token or server starts afresh.
    bot: Option<(url::Url, String)>,
    failures: u32,
    asks: JoinSet<()>,
}

impl Default for Chatter {
    fn default() -> Self {
        Chatter {
            client: crate::notify::channels::client(),
            offset: None,
            acknowledged: None,
            bot: None,
            failures: 0,
            asks: JoinSet::new(),
        }
    }
}

pub async fn run(app: Arc<App>) {
    let mut chatter = Chatter::default();
    let mut last: Option<TelegramChat> = None;
    while !app.shutdown.is_cancelled() {
        let settings = app.settings();
        let Some(bot) = settings.chat.telegram.as_ref() else {
            last = None;
            tokio::select! {
                _ = tokio::time::sleep(IDLE) => {}
                _ = app.shutdown.cancelled() => {}
            }
            continue;
        };
        chatter.serve(bot);
        last = Some(bot.clone());
        let polled = tokio::select! {
            polled = chatter.poll(bot) => polled,
            _ = app.shutdown.cancelled() => break,
        };
        match polled {
            Ok(updates) => chatter.handle(&app, bot, updates).await,
            Err(wait) => {
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = app.shutdown.cancelled() => {}
                }
            }
        }
    }
    if let Some(bot) = last {
        chatter.acknowledge(&bot).await;
    }
    chatter.asks.abort_all();
}

impl Chatter {
    /// Starts afresh when the token or the server changed (a reload): an offset counts one
    /// bot's updates.
    fn serve(&mut self, bot: &TelegramChat) {
        let identity = (bot.api_url.clone(), bot.token.expose().to_owned());
        if self.bot.as_ref() != Some(&identity) {
            self.bot = Some(identity);
            self.offset = None;
            self.acknowledged = None;
            self.failures = 0;
        }
    }

    /// One long poll: the updates, or how long to wait before the next poll.
    pub async fn poll(&mut self, bot: &TelegramChat) -> Result<Vec<wire::Update>, Duration> {
        let body = wire::get_updates_body(self.offset, wire::POLL_TIMEOUT_S);
        self.acknowledged = self.offset;
        // Telegram holds the poll up to its timeout; the margin covers the way there and back.
        let limit = Duration::from_secs(wire::POLL_TIMEOUT_S) + Duration::from_secs(10);
        let called = call(&self.client, bot, "getUpdates", &body, limit).await;
        let read = match called.outcome {
            Outcome::Delivered { .. } => match called.body.as_ref().map(wire::updates) {
                Some(Ok(updates)) => Ok(updates),
                Some(Err(why)) => Err((None, None, format!("Telegram's answer is odd: {why}"))),
                None => Err((
                    None,
                    None,
                    "Telegram answered with something that is not JSON".to_owned(),
                )),
            },
            Outcome::Retry {
                status,
                after,
                error,
            } => Err((status, after, error)),
            Outcome::Refused { status, error } => Err((Some(status), None, error)),
        };
        match read {
            Ok(updates) => {
                if self.failures > 0 {
                    tracing::info!(
                        failed_polls = self.failures,
                        "Telegram answers getUpdates again; chat commands are back"
                    );
                }
                self.failures = 0;
                Ok(updates)
            }
            Err((status, after, error)) => Err(self.failed(status, after, &error)),
        }
    }

    /// Counts a failed poll, logs it with what to do, and says how long to wait.
    fn failed(&mut self, status: Option<u16>, after: Option<Duration>, error: &str) -> Duration {
        self.failures += 1;
        let backoff = BACKOFF_FIRST
            .saturating_mul(1 << self.failures.saturating_sub(1).min(6))
            .min(BACKOFF_MAX);
        let wait = after
            .map(|a| a.clamp(BACKOFF_FIRST, RETRY_AFTER_MAX))
            .unwrap_or(backoff);
        let advice = match status {
            Some(409) => {
                "another program reads this bot's updates, or a webhook is set on the bot: \
                 only one reader may; stop the other or delete the webhook (deleteWebhook)"
            }
            Some(401 | 404) => {
                "Telegram does not know the bot token: check the variable token_env names \
                 under [chat.telegram]"
            }
            Some(429) => "Telegram asks muster to slow down",
            _ => "Telegram could not be read; trying again",
        };
        tracing::warn!(
            error,
            failed_polls = self.failures,
            retry_in = %humantime::format_duration(wait),
            "chat commands: getUpdates failed: {advice}"
        );
        wait
    }

    /// Acknowledges what was handled since the last poll, so a restart does not see it
    /// again: one quick poll that asks for nothing new.
    async fn acknowledge(&mut self, bot: &TelegramChat) {
        if self.offset == self.acknowledged {
            return;
        }
        let mut body = wire::get_updates_body(self.offset, 0);
        body["limit"] = json!(1);
        let called = call(
            &self.client,
            bot,
            "getUpdates",
            &body,
            Duration::from_secs(2),
        )
        .await;
        if let Outcome::Retry { error, .. } | Outcome::Refused { error, .. } = called.outcome {
            tracing::warn!(
                error,
                "chat commands: the last updates could not be acknowledged"
            );
        }
    }

    /// Handles the updates of one poll, in order. The offset moves past each before it is
    /// acted on.
    pub async fn handle(&mut self, app: &Arc<App>, bot: &TelegramChat, updates: Vec<wire::Update>) {
        for update in updates {
            self.offset = wire::next_offset(self.offset, std::slice::from_ref(&update));
            let Some(message) = update.message else {
                tracing::debug!(
                    update_id = update.update_id,
                    "chat: not a text message; passed over"
                );
                continue;
            };
            if !bot.allows(message.chat_id) {
                ignore(app, &message);
                continue;
            }
            // In a group (a negative id) talk that is not a command is not for muster: a bot
            // whose privacy mode is off sees all of it, and must not answer each line.
            if message.chat_id < 0 && !message.text.trim_start().starts_with('/') {
                continue;
            }
            self.command(app, bot, update.update_id, message).await;
        }
    }

    /// Carries out one allowed chat's message, audits it and answers.
    async fn command(
        &mut self,
        app: &Arc<App>,
        bot: &TelegramChat,
        update_id: i64,
        message: wire::TextMessage,
    ) {
        let actor = Actor::chat(ChatService::Telegram, message.chat_id);
        let age = Duration::from_secs(
            u64::try_from(app.now_ms() / 1000 - message.date).unwrap_or_default(),
        );
        let (label, done) = match command::parse(&message.text) {
            Err(refusal) => (refusal.label, Done::refused(&refusal.message)),
            Ok(command) if message.date > 0 && age > STALE_AFTER => (
                command.label(),
                Done::refused(&format!(
                    "This was written {} ago, while muster could not read it: nothing was \
                     done. Send it again if it still holds.",
                    humantime::format_duration(Duration::from_secs(age.as_secs() / 60 * 60))
                )),
            ),
            Ok(command) => {
                let label = command.label();
                let done = self
                    .carry_out(app, &actor, message.chat_id, update_id, command)
                    .await;
                (label, done)
            }
        };
        app.changes
            .metrics
            .chat_command(label, done.verdict.as_str());
        let text = crate::notify::cut(&message.text, AUDITED_CHARS);
        let record =
            AuditRecord::chat_command(app.now_ms(), actor, label, done.verdict.as_str(), &text);
        if let Err(err) = crate::outbox::record_audit(app, vec![record]).await {
            tracing::error!(error = %err, "chat: the command's audit entry could not be written");
        }
        send(&self.client, bot, message.chat_id, done.reply).await;
        if let Some(task) = done.follow {
            let (app, client, bot) = (app.clone(), self.client.clone(), bot.clone());
            let chat_id = message.chat_id;
            self.asks.spawn(async move {
                let reply = match follow(&app, task.id, ASK_WAIT).await {
                    Ok(Followed::Ended(task)) => reply::answer(&task),
                    Ok(Followed::StillGoing(task)) => reply::gave_up(&task, ASK_WAIT),
                    Err(err) => reply::refused(&format!(
                        "The answer to task {} could not be read: {}",
                        reply::short_id(task.id),
                        err.message
                    )),
                };
                send(&client, &bot, chat_id, reply).await;
            });
        }
    }

    /// The dispatch: one arm per command.
    async fn carry_out(
        &mut self,
        app: &Arc<App>,
        actor: &Actor,
        chat_id: i64,
        update_id: i64,
        command: Command,
    ) -> Done {
        match command {
            Command::Status => Done::from(status(app).await),
            Command::Tasks => Done::from(tasks(app).await),
            Command::Approve(which) => Done::from(approve(app, &which, actor.clone()).await),
            Command::Deny(which, why) => Done::from(deny(app, &which, actor.clone(), why).await),
            Command::Run(name) => Done::from(run_schedule(app, &name, actor.clone()).await),
            Command::Ask(prompt) => self.ask(app, chat_id, update_id, prompt).await,
            Command::Help => Done::ok(reply::help(None)),
            Command::Unknown(name) => Done::ok(reply::help(Some(&name))),
        }
    }

    /// `/ask`: submits the prompt as an `llm` task, unless no agent could ever take it or too
    /// many questions wait; the answer follows once the acknowledgement is sent.
    async fn ask(&mut self, app: &App, chat_id: i64, update_id: i64, prompt: String) -> Done {
        while self.asks.try_join_next().is_some() {}
        if self.asks.len() >= MAX_ASKS {
            return Done::refused(&format!(
                "{MAX_ASKS} questions are still waiting for their answers; ask again when one \
                 has come."
            ));
        }
        let needs = [ASK_CAPABILITY.to_owned()];
        match operator::agents(app).await {
            Ok(agents) if !agents.iter().any(|a| operator::takes(a, ASK_KIND, &needs)) => {
                return Done::refused(&format!(
                    "No registered agent takes {ASK_KIND} tasks (an agent with the capability \
                     {ASK_CAPABILITY} that handles the kind {ASK_KIND}), so nothing was asked. \
                     Start one, then ask again."
                ));
            }
            Ok(_) => {}
            Err(err) => return Done::from(Err(err)),
        }
        match operator::submit(app, ask_task(prompt, chat_id, update_id)).await {
            Ok(submitted) => Done {
                verdict: Verdict::Ok,
                reply: reply::asked(&submitted.task, ASK_WAIT),
                follow: Some(submitted.task),
            },
            Err(err) => Done::from(Err(err)),
        }
    }
}

/// A message from a chat that may not command: no answer, one count, and a log line for the
/// first of each chat's minute.
fn ignore(app: &App, message: &wire::TextMessage) {
    let key = format!("telegram:{}", message.chat_id);
    let count = app.ignored_chats.record(&key, app.now_ms());
    app.changes.metrics.chat_ignored.inc();
    if count == 1 {
        tracing::warn!(
            chat_id = message.chat_id,
            from_id = message.from_id,
            "chat: a chat that [chat.telegram] chats does not list wrote to the bot; ignored \
             without a reply (counted per minute in the audit log as chat.ignored)"
        );
    }
}

/// Sends `reply` to `chat_id`, message by message, trying each again after Telegram's
/// `retry_after` (or a second) when it asks; a reply that cannot be sent is logged.
async fn send(client: &reqwest::Client, bot: &TelegramChat, chat_id: i64, reply: Reply) {
    for text in reply.messages() {
        let body = telegram::send_message_body(json!(chat_id), &text);
        let mut attempt = 1;
        loop {
            let called = call(client, bot, "sendMessage", &body, SEND_TIMEOUT).await;
            match called.outcome {
                Outcome::Delivered { .. } => break,
                Outcome::Retry { after, .. } if attempt < SEND_ATTEMPTS => {
                    attempt += 1;
                    let wait = after
                        .unwrap_or(BACKOFF_FIRST)
                        .clamp(BACKOFF_FIRST, SEND_TIMEOUT);
                    tokio::time::sleep(wait).await;
                }
                Outcome::Retry { error, .. } | Outcome::Refused { error, .. } => {
                    tracing::warn!(chat_id, error, "chat: a reply could not be sent");
                    return;
                }
            }
        }
    }
}

/// One call of a Bot API method on `bot`'s server, with its token.
async fn call(
    client: &reqwest::Client,
    bot: &TelegramChat,
    method: &str,
    body: &Value,
    timeout: Duration,
) -> telegram::Called {
    telegram::call(client, &bot.api_url, &bot.token, method, body, timeout).await
}

async fn status(app: &App) -> Result<Reply, ApiError> {
    let agents = operator::agents(app).await?;
    let stats = app.store.stats(app.now_ms()).await?;
    let open = incidents::list(
        app,
        IncidentFilter {
            states: IncidentState::ALL
                .iter()
                .copied()
                .filter(|s| !s.is_closed())
                .collect(),
            target: None,
            limit: incidents::MAX_PAGE,
        },
    )
    .await?;
    let repair = incidents::status(app).await?;
    let facts = reply::Status {
        agents: agents.iter().map(|a| a.status).collect(),
        tasks_by_state: stats.by_state,
        open,
        repair_paused: repair.paused,
    };
    Ok(reply::status(&facts, crate::clock::to_utc(app.now_ms())))
}

/// `/run`: the schedule fired now, through the verb the API's run calls (audited as the chat).
async fn run_schedule(app: &App, name: &str, actor: Actor) -> Result<Reply, ApiError> {
    let run = crate::scheduler::run_now(app, name, actor).await?;
    Ok(reply::ran(name, &run.task))
}

async fn tasks(app: &App) -> Result<Reply, ApiError> {
    let page = app
        .store
        .tasks(TaskFilter {
            limit: TASKS_LISTED,
            ..TaskFilter::default()
        })
        .await?;
    Ok(reply::tasks(
        &page.tasks,
        crate::clock::to_utc(app.now_ms()),
    ))
}

/// The incident a chat names: a whole id as it is, a prefix when it starts exactly one of the
/// newest incidents.
async fn find_incident(app: &App, which: &IncidentRef) -> Result<Uuid, ApiError> {
    if let IncidentRef::Id(id) = which {
        return Ok(*id);
    }
    let filter = IncidentFilter {
        states: Vec::new(),
        target: None,
        limit: incidents::MAX_PAGE,
    };
    let found: Vec<Uuid> = incidents::list(app, filter)
        .await?
        .into_iter()
        .map(|i| i.id)
        .filter(|id| which.matches(*id))
        .collect();
    match found.as_slice() {
        [id] => Ok(*id),
        [] => Err(ApiError::new(
            ErrorCode::NotFound,
            format!(
                "No incident starts with {which} (among the newest {}); /status lists those \
                 awaiting approval",
                incidents::MAX_PAGE
            ),
        )),
        several => {
            let ids: Vec<String> = several.iter().map(Uuid::to_string).collect();
            Err(ApiError::new(
                ErrorCode::Conflict,
                format!(
                    "{which} is the start of {} incidents: {}. Give more of the id.",
                    several.len(),
                    ids.join(", ")
                ),
            ))
        }
    }
}

async fn approve(app: &App, which: &IncidentRef, actor: Actor) -> Result<Reply, ApiError> {
    let id = find_incident(app, which).await?;
    let incident = incidents::approve(app, id, actor).await?;
    app.repairer_wake.notify_one();
    Ok(reply::answered("Approved", &incident))
}

async fn deny(
    app: &App,
    which: &IncidentRef,
    actor: Actor,
    why: Option<String>,
) -> Result<Reply, ApiError> {
    let id = find_incident(app, which).await?;
    let incident = incidents::deny(app, id, actor, why).await?;
    Ok(reply::answered("Denied", &incident))
}

/// The task an `/ask` submits: kind `llm` for an agent with the `llm` capability, the prompt
/// under the `chat` workflow, labelled with the chat, keyed by the update (so the same
/// message read again after a restart asks once), and no retry or wait beyond the answer's.
fn ask_task(prompt: String, chat_id: i64, update_id: i64) -> SubmitTask {
    let template = TaskTemplate {
        kind: ASK_KIND.to_owned(),
        capabilities: vec![ASK_CAPABILITY.to_owned()],
        payload: Map::new(),
        priority: 0,
        max_retries: Some(0),
        timeout_s: Some(ASK_WAIT.as_secs() as u32),
        labels: [("chat".to_owned(), format!("telegram:{chat_id}"))].into(),
    };
    let payload = Map::from_iter([
        ("prompt".to_owned(), Value::String(prompt)),
        ("workflow".to_owned(), json!(ASK_WORKFLOW)),
    ]);
    let key = format!("chat:telegram:{chat_id}:{update_id}");
    template.submit(payload, None, Some(key))
}

/// How following a task ended.
enum Followed {
    Ended(Task),
    /// The wait was over first; the task as it stood.
    StillGoing(Task),
}

/// Follows a task to its end, waking on its signals (new state, new logs) and looking once a
/// second besides (a lagging subscriber misses signals), for at most `wait`.
async fn follow(app: &App, task_id: Uuid, wait: Duration) -> Result<Followed, ApiError> {
    let deadline = tokio::time::Instant::now() + wait;
    let mut signals = app.changes.events.task_signals();
    loop {
        let task = app.store.task(task_id).await?;
        if task.state.is_final() {
            return Ok(Followed::Ended(task));
        }
        if tokio::time::Instant::now() >= deadline {
            return Ok(Followed::StillGoing(task));
        }
        let signalled = async {
            loop {
                match signals.recv().await {
                    Ok(id) if id != task_id => continue,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                        std::future::pending::<()>().await
                    }
                    _ => return,
                }
            }
        };
        tokio::select! {
            _ = signalled => {}
            _ = tokio::time::sleep(FOLLOW_POLL) => {}
            _ = tokio::time::sleep_until(deadline) => {}
        }
    }
}
