//! The shared state of a running server. It sits at the bottom of the module graph: the edges
//! (HTTP, UI), the verbs (operator, agent protocol) and the loops receive an `Arc<App>`, and
//! this module imports none of them.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Instant;

use tokio_util::sync::CancellationToken;

use crate::canaries::HookKey;
use crate::changes::Changes;
use crate::clock::Clock;
use crate::config::Settings;
use crate::registry::Registry;
use crate::sessions::Sessions;
use crate::store::Store;
use crate::tally::MinuteTally;

/// What handlers receive from axum.
pub type AppState = Arc<App>;

/// Shared state of a running server.
pub struct App {
    /// The current settings; a reload (SIGHUP) swaps them whole, so a reader always sees one
    /// consistent version. Read through [`App::settings`].
    settings: RwLock<Arc<Settings>>,
    pub store: Arc<dyn Store>,
    pub clock: Arc<dyn Clock>,
    /// Live agent state (last heartbeat, load, long-poll wake-ups). Read it here; change it
    /// through [`App::changes`].
    pub registry: Arc<Registry>,
    /// The one fan-out of committed changes to the dispatcher, wake-ups, events and metrics.
    pub changes: Changes,
    /// Web UI sessions (in memory; a restart logs everyone out).
    pub sessions: Sessions,
    /// Git hooks refused for a bad signature, per source and minute, for the audit log.
    pub refused_hooks: MinuteTally,
    /// Messages from chats the chat commands do not allow (`telegram:<id>`), per chat and
    /// minute, for the audit log.
    pub ignored_chats: MinuteTally,
    /// Wakes the messenger: a notification was queued.
    pub messenger_wake: Arc<tokio::sync::Notify>,
    /// Wakes the repairer: an alert came, or an incident was answered.
    pub repairer_wake: Arc<tokio::sync::Notify>,
    /// Wakes the canary runner: an operator started a run.
    pub canary_wake: Arc<tokio::sync::Notify>,
    /// Signs and verifies canary hook requests; drawn at start, never stored or shown.
    pub canary_key: HookKey,
    /// The address the listener is bound to (the real port when asked for port 0): where
    /// the server's own canary runs send their hook requests.
    pub local_addr: SocketAddr,
    /// Cancelled when shutdown begins: streams and long-polls end on it.
    pub shutdown: CancellationToken,
    pub started: Instant,
    /// When the server was built, by its clock: schedules count their firings from here, so
    /// one due while the loops are still starting is not lost.
    pub started_ms: i64,
}

impl App {
    pub fn new(
        settings: Settings,
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        registry: Arc<Registry>,
        changes: Changes,
        local_addr: SocketAddr,
    ) -> Self {
        let sessions = Sessions::new(settings.session_idle);
        let started_ms = clock.now_ms();
        App {
            settings: RwLock::new(Arc::new(settings)),
            store,
            clock,
            registry,
            changes,
            sessions,
            refused_hooks: MinuteTally::default(),
            ignored_chats: MinuteTally::default(),
            messenger_wake: Arc::default(),
            repairer_wake: Arc::default(),
            canary_wake: Arc::default(),
            canary_key: HookKey::random(),
            local_addr,
            shutdown: CancellationToken::new(),
            started: Instant::now(),
            started_ms,
        }
    }

    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    /// The settings in force now.
    pub fn settings(&self) -> Arc<Settings> {
        self.settings
            .read()
            .expect("settings lock poisoned")
            .clone()
    }

    /// Puts reloaded settings in force. The listen address and the database cannot change
    /// while serving; the caller keeps them (see the settings' reload rules).
    pub fn replace_settings(&self, settings: Settings) {
        *self.settings.write().expect("settings lock poisoned") = Arc::new(settings);
    }
}
