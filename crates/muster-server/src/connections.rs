//! The listening socket's side of the server: the accept loop, one HTTP/1 connection per task,
//! the connection cap and the timeouts that keep idle and half-open sockets from holding the
//! process's file descriptors.
//!
//! `axum::serve` accepts without limit and keeps an idle or half-sent connection forever, so a
//! thousand idle sockets under a 1,024 file limit left nothing for the database or an agent's
//! heartbeat. Here:
//!
//! - the open-file limit is raised to its hard limit at start ([`raise_file_limit`]);
//! - at most `min(MAX_CONNECTIONS, file limit − FILE_RESERVE)` connections are served at once;
//!   one more is accepted only to be answered 503 and closed at once, so the reserve always
//!   leaves descriptors for the store, and a flood costs the flooder its own sockets;
//! - hyper's header-read timeout (`IDLE_TIMEOUT`) closes a connection that has not sent a whole
//!   request head within that time of opening or of its last response: an idle keep-alive
//!   socket and a half-sent header alike. hyper only runs that timer while it waits for a
//!   head, so a long-poll or an SSE stream, which are responses in progress, are never cut.
//!
//! Shutdown: the loop stops accepting when the signal comes; each connection then finishes the
//! request it is serving and closes (hyper's graceful shutdown); `App::shutdown`, cancelled by
//! the caller, ends long-polls and streams. [`Connections::all_closed`] tells when the last
//! one is gone.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus::IntGauge;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tower::Service;

use crate::app::App;

/// Descriptors kept free below the open-file limit: the database, its WAL and shared memory,
/// the lock file, the audit key, log output and the connection being refused.
pub const FILE_RESERVE: u64 = 64;

/// Raises the soft open-file limit to the hard one and returns the limit in force (`None` where
/// it cannot be read). A failure to raise is logged and the old limit kept.
pub fn raise_file_limit() -> Option<u64> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).ok()?;
    if soft >= hard {
        return Some(soft);
    }
    match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
        Ok(()) => Some(hard),
        Err(err) => {
            tracing::warn!(soft, hard, error = %err, "could not raise the open-file limit");
            Some(soft)
        }
    }
}

/// Connections served at once: the setting, held `FILE_RESERVE` below the file limit.
pub fn connection_cap(file_limit: Option<u64>, max_connections: usize) -> usize {
    let by_files = file_limit.map_or(usize::MAX, |limit| {
        usize::try_from(limit.saturating_sub(FILE_RESERVE)).unwrap_or(usize::MAX)
    });
    max_connections.min(by_files).max(1)
}

/// The count of connections being served; owned by the accept loop, shared with each
/// connection's slot, mirrored in the `muster_http_connections` gauge.
pub struct Connections {
    open: AtomicUsize,
    closed: Notify,
    gauge: IntGauge,
}

/// One connection's place under the cap, given back when dropped.
struct Slot(Arc<Connections>);

impl Connections {
    pub fn new(gauge: IntGauge) -> Arc<Self> {
        Arc::new(Connections {
            open: AtomicUsize::new(0),
            closed: Notify::new(),
            gauge,
        })
    }

    /// A slot, unless `cap` connections are open. Only the accept loop takes slots, so the
    /// count cannot pass the cap between the check and the increment.
    fn take(self: &Arc<Self>, cap: usize) -> Option<Slot> {
        if self.open.load(Ordering::Acquire) >= cap {
            return None;
        }
        self.open.fetch_add(1, Ordering::AcqRel);
        self.gauge.inc();
        Some(Slot(self.clone()))
    }

    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// Waits until no connection is open.
    pub async fn all_closed(&self) {
        loop {
            let closed = self.closed.notified();
            tokio::pin!(closed);
            closed.as_mut().enable();
            if self.open() == 0 {
                return;
            }
            closed.await;
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.gauge.dec();
        if self.0.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.closed.notify_waiters();
        }
    }
}

/// What a connection over the cap is told before it is closed.
fn refusal() -> String {
    let body = r#"{"error":{"code":"unavailable","message":"the server has as many connections as it serves at once; try again shortly"}}"#;
    format!(
        "HTTP/1.1 503 Service Unavailable\r\nconnection: close\r\nretry-after: 1\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// How long the loop pauses after a failed accept (out of descriptors, most likely), so that
/// it does not spin while connections close.
const ACCEPT_PAUSE: Duration = Duration::from_millis(50);

/// Accepts connections until `stop` completes and serves each on its own task. Returns when it
/// stops accepting; the connections go on until they finish (see [`Connections::all_closed`]).
pub async fn accept_until(
    listener: TcpListener,
    router: Router,
    app: Arc<App>,
    connections: Arc<Connections>,
    file_limit: Option<u64>,
    stop: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(stop);
    let mut last_refusal_logged: Option<Instant> = None;
    loop {
        let accepted = tokio::select! {
            _ = &mut stop => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(err) => {
                tracing::warn!(error = %err, "accepting a connection failed");
                tokio::select! {
                    _ = &mut stop => return,
                    _ = tokio::time::sleep(ACCEPT_PAUSE) => continue,
                }
            }
        };
        let settings = app.settings();
        let cap = connection_cap(file_limit, settings.max_connections);
        let Some(slot) = connections.take(cap) else {
            // Written without waiting: a fresh socket's send buffer is empty. Dropping the
            // stream closes it at once, so the refusal holds no descriptor.
            let _ = stream.try_write(refusal().as_bytes());
            drop(stream);
            app.changes.metrics.refused_connections.inc();
            if last_refusal_logged.is_none_or(|at| at.elapsed() >= Duration::from_secs(10)) {
                last_refusal_logged = Some(Instant::now());
                tracing::warn!(
                    cap,
                    "refusing connections: as many are open as the server serves at once \
                     (MAX_CONNECTIONS, or the open-file limit less {FILE_RESERVE})"
                );
            }
            continue;
        };
        tokio::spawn(serve_connection(
            stream,
            peer,
            router.clone(),
            settings.idle_timeout,
            slot,
            app.shutdown.clone(),
        ));
    }
}

/// Serves one connection until the client or the idle timeout closes it, or, after shutdown
/// began, until the request in progress is answered.
async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    router: Router,
    idle_timeout: Duration,
    slot: Slot,
    shutdown: CancellationToken,
) {
    // The peer's address reaches handlers as `ConnectInfo`: the audit log and the login limit
    // name the client by it.
    let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        req.extensions_mut().insert(ConnectInfo(peer));
        router.clone().call(req)
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(idle_timeout);
    let mut conn = std::pin::pin!(builder.serve_connection(TokioIo::new(stream), service));
    let result = tokio::select! {
        result = conn.as_mut() => result,
        _ = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.as_mut().await
        }
    };
    if let Err(err) = result {
        // Timeouts, resets and malformed requests are the clients' business.
        tracing::debug!(%peer, error = %err, "connection ended with an error");
    }
    // The slot goes back before the socket is dropped, so a client that sees the close can
    // connect again and find the slot free.
    drop(slot);
}
