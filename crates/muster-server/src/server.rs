//! Builds the control plane from [`Settings`] and a bound listener, runs it, and shuts it down
//! in order: stop accepting, end streams and long-polls, let requests finish (bounded), stop the
//! loops, then flush and close the store. Connections are accepted and served by
//! [`crate::connections`], under its cap and idle timeout.

use std::sync::Arc;

use tokio::net::TcpListener;

use crate::app::App;
use crate::changes::Changes;
use crate::clock::{Clock, SystemClock};
use crate::config::Settings;
use crate::connections::{self, Connections};
use crate::dispatch::{DispatchState, Dispatcher};
use crate::error::StoreError;
use crate::events::EventHub;
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::store::sqlite::SqliteStore;
use crate::store::{RetryPolicy, Store};

/// How long the chat loop gets to acknowledge what it handled once shutdown begins.
const CHATTER_GRACE: std::time::Duration = std::time::Duration::from_secs(3);

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("cannot read the listener's address: {0}")]
    Listener(#[from] std::io::Error),
}

/// A built server, bound and ready to [`Server::run`].
pub struct Server {
    app: Arc<App>,
    listener: TcpListener,
    dispatcher_task: tokio::task::JoinHandle<()>,
    /// The open-file limit after raising it, which bounds the connection cap.
    file_limit: Option<u64>,
}

impl Server {
    /// Opens the store, rebuilds memory from it and starts the dispatcher. The caller binds the
    /// listener (tests use `127.0.0.1:0`); the server reports the real address.
    pub async fn build(settings: Settings, listener: TcpListener) -> Result<Server, StartError> {
        Self::build_with_clock(settings, listener, Arc::new(SystemClock)).await
    }

    pub async fn build_with_clock(
        settings: Settings,
        listener: TcpListener,
        clock: Arc<dyn Clock>,
    ) -> Result<Server, StartError> {
        let addr = listener.local_addr()?;
        Settings {
            addr,
            ..settings.clone()
        }
        .check_exposure()?;
        let policy = RetryPolicy {
            backoff_base_ms: settings.retry_backoff.as_millis() as i64,
            backoff_max_ms: settings.retry_backoff_max.as_millis() as i64,
        };
        let path = settings.db_path.clone();
        let store: Arc<dyn Store> = Arc::new(
            tokio::task::spawn_blocking(move || SqliteStore::open(&path, policy))
                .await
                .map_err(|e| {
                    StoreError::Unavailable(format!("opening the store panicked: {e}"))
                })??,
        );
        let snapshot = store.snapshot().await?;
        let now = clock.now_ms();
        // The server may have been away longer than a lease (a reboot, an upgrade): agents
        // that kept working meanwhile get a full lease from now to heartbeat again, so a
        // restart never takes running work from healthy agents. Their heartbeats are judged
        // from now too (the registry below).
        let granted = store
            .grant_leases(now + settings.lease.as_millis() as i64)
            .await?;
        if granted > 0 {
            tracing::info!(
                tasks = granted,
                "running tasks get a lease from now to report in"
            );
        }
        let registry = Arc::new(Registry::default());
        for agent in &snapshot.agents {
            // Agents known before a restart get one heartbeat timeout from now to speak up.
            registry.upsert(&agent.agent_id, agent.status, now, false);
        }
        let mut state = DispatchState::from_snapshot(snapshot);
        let queued = state.load_queued(store.as_ref(), now).await?;
        if queued > 0 {
            tracing::info!(queued, "queue loaded");
        }
        let metrics = Metrics::new();
        let events = Arc::new(EventHub::new(now));
        let (dispatcher, dispatch_events) = Dispatcher::channel();
        let changes = Changes::new(dispatcher, registry.clone(), events, metrics);
        let dispatcher_task = crate::dispatcher::spawn(
            state,
            dispatch_events,
            store.clone(),
            clock.clone(),
            changes.clone(),
            registry.clone(),
        );
        // Every connection holds a descriptor: the usual soft limit (1,024) would let a few
        // hundred idle sockets starve the store, so take all the system allows.
        let file_limit = connections::raise_file_limit();
        tracing::debug!(
            file_limit,
            connections = connections::connection_cap(file_limit, settings.max_connections),
            "connection cap"
        );
        let app = Arc::new(App::new(settings, store, clock, registry, changes, addr));
        Ok(Server {
            app,
            listener,
            dispatcher_task,
            file_limit,
        })
    }

    pub fn local_addr(&self) -> std::net::SocketAddr {
        self.listener
            .local_addr()
            .expect("bound listener has an address")
    }

    pub fn app(&self) -> Arc<App> {
        self.app.clone()
    }

    /// Serves until `signal` completes, then shuts down in order.
    pub async fn run(self, signal: impl std::future::Future<Output = ()> + Send + 'static) {
        let Server {
            app,
            listener,
            dispatcher_task,
            file_limit,
        } = self;
        let health = tokio::spawn(crate::sweeper::run(app.clone()));
        let delivery = tokio::spawn(crate::outbox::run(app.clone()));
        let messenger = tokio::spawn(crate::messenger::run(app.clone()));
        let repairer = tokio::spawn(crate::repairer::run(app.clone()));
        let scheduler = tokio::spawn(crate::scheduler::run(app.clone()));
        // Idle until `[chat.telegram]` is configured (at start or by a reload).
        let chatter = tokio::spawn(crate::chatter::run(app.clone()));
        let canaries = tokio::spawn(crate::canary_runner::run(app.clone()));
        let router = crate::http::router(app.clone());
        let open = Connections::new(app.changes.metrics.connections.clone());
        connections::accept_until(
            listener,
            router,
            app.clone(),
            open.clone(),
            file_limit,
            signal,
        )
        .await;
        // The listener is gone: nothing new is accepted. Long-polls and streams end on this;
        // every connection finishes the request it serves, then closes.
        tracing::info!("shutting down: finishing in-flight requests");
        app.shutdown.cancel();
        let grace = app.settings().shutdown_grace;
        if tokio::time::timeout(grace, open.all_closed())
            .await
            .is_err()
        {
            tracing::warn!(
                ?grace,
                "requests still running after the grace period; stopping"
            );
        }
        health.abort();
        // Rows it has not delivered stay in the outbox and go out after the next start.
        delivery.abort();
        // A send in flight is cut off; its notification comes due again after the next start.
        messenger.abort();
        // A decision or probe in flight is cut off; the incident is due again after the next
        // start (a decision cut off stays `deciding` and is decided again).
        repairer.abort();
        // A look cut off committed all of a schedule's firings or none; the next start looks
        // again from what the store says.
        scheduler.abort();
        // It ends when shutdown begins, after acknowledging the updates it handled (so the
        // next start does not see them again), bounded in case Telegram hangs; an `/ask`
        // still waiting for its answer is not answered.
        let mut chatter = chatter;
        if tokio::time::timeout(CHATTER_GRACE, &mut chatter)
            .await
            .is_err()
        {
            chatter.abort();
        }
        // Runs in flight stop unjudged (the hook they need is gone); the next start
        // interrupts them.
        canaries.abort();
        dispatcher_task.abort();
        let _ = health.await;
        let _ = delivery.await;
        let _ = messenger.await;
        let _ = repairer.await;
        let _ = scheduler.await;
        let _ = canaries.await;
        let _ = dispatcher_task.await;
        if let Err(err) = crate::sweeper::record_tallies(&app, i64::MAX).await {
            tracing::warn!(error = %err, "could not record the last failed logins and refused hooks");
        }
        app.store.close().await;
        tracing::info!("stopped");
    }
}
