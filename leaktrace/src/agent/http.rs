//! The agent's HTTP endpoints. All are reads: nothing a caller sends can start, stop or change
//! tracing, read a file or name a process to attach to. Whatever reaches the port is bounded:
//! connections in number and lifetime, a request's head in time, size and header count, requests
//! served at once, and the wait for a report.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use axum::{
    Json, Router,
    extract::{Path, Query, State},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    service::TowerToHyperService,
};
use serde::Deserialize;
use tokio::sync::{Semaphore, mpsc, oneshot, watch};
use tracing::{debug, warn};

use super::{REPORT_TIMEOUT, Request, metrics, view::Published};

/// Requests served at once; more wait their turn. A scraper, a dashboard and a person need
/// far fewer.
const MAX_CONCURRENT_REQUESTS: usize = 8;

/// Connections open at once; one more is closed as soon as it is accepted.
const MAX_CONNECTIONS: usize = 256;

/// Time for a request's head (request line and headers) to arrive: a client that trickles it
/// in (slowloris) is cut off.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// Largest request head read (hyper's minimum buffer); the endpoints need a few hundred bytes.
const MAX_HEAD_BYTES: usize = 8192;

/// Most headers in one request.
const MAX_HEADERS: usize = 32;

#[derive(Clone)]
struct Shared {
    published: watch::Receiver<Arc<Published>>,
    requests: mpsc::Sender<Request>,
    started: Instant,
}

/// Serves on a thread of its own until the listener fails, whose error the returned channel
/// then carries. The session's loop runs on one thread whose only waits are its timers (see
/// `main::run_agent`); the server's thread answers scrapes while that loop samples or names a
/// window's stacks, and sleeps otherwise.
pub fn spawn(
    listener: std::net::TcpListener,
    lifetime: Duration,
    published: watch::Receiver<Arc<Published>>,
    requests: mpsc::Sender<Request>,
) -> anyhow::Result<oneshot::Receiver<std::io::Result<()>>> {
    use anyhow::Context as _;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the HTTP server's runtime")?;
    listener
        .set_nonblocking(true)
        .context("making the listening socket non-blocking")?;
    let (done, stopped) = oneshot::channel();
    std::thread::Builder::new()
        .name("leaktrace-http".into())
        .spawn(move || {
            let result = runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener)?;
                serve(listener, lifetime, published, requests).await
            });
            // The agent stopping first drops the receiver: nothing is waiting for this.
            let _ = done.send(result);
        })
        .context("starting the HTTP server's thread")?;
    Ok(stopped)
}

/// Serves until the listener fails. A connection is closed once it has lived `lifetime`, kept
/// alive or not.
async fn serve(
    listener: tokio::net::TcpListener,
    lifetime: Duration,
    published: watch::Receiver<Arc<Published>>,
    requests: mpsc::Sender<Request>,
) -> std::io::Result<()> {
    let shared = Shared {
        published,
        requests,
        started: Instant::now(),
    };
    let app = Router::new()
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(healthz))
        .route("/api/v1/targets", get(targets))
        .route("/api/v1/targets/{pid}/report", get(report))
        .route("/api/v1/targets/{pid}/window", get(window))
        .layer(tower::limit::GlobalConcurrencyLimitLayer::new(
            MAX_CONCURRENT_REQUESTS,
        ))
        .with_state(shared);
    // hyper's own connection loop rather than `axum::serve`, which offers none of the limits.
    let open = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            // Out of descriptors or a connection reset before it was accepted: the listener is
            // still good.
            Err(err) if !is_fatal(&err) => {
                warn!(%err, "accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            Err(err) => return Err(err),
        };
        let Ok(permit) = Arc::clone(&open).try_acquire_owned() else {
            debug!(%peer, "too many connections: closed at once");
            continue;
        };
        let service = TowerToHyperService::new(app.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .max_buf_size(MAX_HEAD_BYTES)
                .max_headers(MAX_HEADERS);
            let connection = http.serve_connection(TokioIo::new(stream), service);
            match tokio::time::timeout(lifetime, connection).await {
                Ok(Ok(())) => {}
                Ok(Err(err)) => debug!(%peer, %err, "connection ended with an error"),
                Err(_) => debug!(%peer, "connection closed: it lived too long"),
            }
        });
    }
}

/// Whether an accept error means the listener itself is broken.
fn is_fatal(err: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    !matches!(
        err.kind(),
        ConnectionAborted | ConnectionReset | Interrupted | WouldBlock
    ) && err.raw_os_error() != Some(libc::EMFILE)
        && err.raw_os_error() != Some(libc::ENFILE)
        && err.raw_os_error() != Some(libc::ENOMEM)
        && err.raw_os_error() != Some(libc::ENOBUFS)
}

async fn metrics_text(State(shared): State<Shared>) -> Response {
    let view = shared.published.borrow().clone();
    (
        [(header::CONTENT_TYPE, metrics::CONTENT_TYPE)],
        metrics::render(&view),
    )
        .into_response()
}

/// Healthy once the first sample is published, and as long as samples keep coming.
async fn healthz(State(shared): State<Shared>) -> Response {
    let view = shared.published.borrow().clone();
    let interval = view.agent.interval_s;
    let samples = view.agent.samples;
    let age = shared.started.elapsed().as_secs_f64();
    if samples == 0 && age > 3.0 * interval.max(1.0) + 10.0 {
        return (StatusCode::SERVICE_UNAVAILABLE, "no sample taken yet\n").into_response();
    }
    (StatusCode::OK, "ok\n").into_response()
}

async fn targets(State(shared): State<Shared>) -> Response {
    let view = shared.published.borrow().clone();
    Json(view.as_ref().clone()).into_response()
}

#[derive(Deserialize)]
struct ReportQuery {
    top: Option<usize>,
}

async fn report(
    State(shared): State<Shared>,
    Path(pid): Path<String>,
    Query(query): Query<ReportQuery>,
) -> Response {
    ask(
        &shared,
        &pid,
        "is not traced (see /api/v1/targets)",
        |pid, reply| Request::Report {
            pid,
            top: query.top,
            reply,
        },
    )
    .await
}

async fn window(
    State(shared): State<Shared>,
    Path(pid): Path<String>,
    Query(query): Query<ReportQuery>,
) -> Response {
    ask(
        &shared,
        &pid,
        "has had no exact window (tiered mode; see /api/v1/targets)",
        |pid, reply| Request::Window {
            pid,
            top: query.top,
            reply,
        },
    )
    .await
}

/// Asks the task that owns the session for a JSON report about `pid`; `missing` completes "process
/// PID …" when there is none.
async fn ask(
    shared: &Shared,
    pid: &str,
    missing: &str,
    request: impl FnOnce(u32, oneshot::Sender<Option<String>>) -> Request,
) -> Response {
    let Ok(pid) = pid.parse::<u32>() else {
        return error(
            StatusCode::BAD_REQUEST,
            "the PID must be a positive integer",
        );
    };
    let (reply, answer) = oneshot::channel();
    if shared.requests.send(request(pid, reply)).await.is_err() {
        return error(StatusCode::SERVICE_UNAVAILABLE, "the agent is stopping");
    }
    match tokio::time::timeout(REPORT_TIMEOUT, answer).await {
        Ok(Ok(Some(json))) => ([(header::CONTENT_TYPE, "application/json")], json).into_response(),
        Ok(Ok(None)) => error(StatusCode::NOT_FOUND, &format!("process {pid} {missing}")),
        Ok(Err(_)) => error(StatusCode::SERVICE_UNAVAILABLE, "the agent is stopping"),
        Err(_) => error(StatusCode::GATEWAY_TIMEOUT, "the report took too long"),
    }
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(serde_json::json!({ "error": message }))).into_response()
}
