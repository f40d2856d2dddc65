//! The agent's HTTP endpoints. All are reads: nothing a caller sends can start, stop or change
//! tracing. Requests are bounded in number at once, and each waits at most a fixed time.

use std::{sync::Arc, time::Instant};

use axum::{
    Json, Router,
    extract::{Path, Query, State},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use serde::Deserialize;
use tokio::sync::{mpsc, oneshot, watch};

use super::{REPORT_TIMEOUT, Request, metrics, view::Published};

/// Requests served at once; more wait their turn. A scraper, a dashboard and a person need
/// far fewer.
const MAX_CONCURRENT_REQUESTS: usize = 8;

#[derive(Clone)]
struct Shared {
    published: watch::Receiver<Arc<Published>>,
    requests: mpsc::Sender<Request>,
    started: Instant,
}

/// Serves until the listener fails.
pub async fn serve(
    listener: tokio::net::TcpListener,
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
        .layer(tower::limit::GlobalConcurrencyLimitLayer::new(
            MAX_CONCURRENT_REQUESTS,
        ))
        .with_state(shared);
    axum::serve(listener, app).await
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
    let Ok(pid) = pid.parse::<u32>() else {
        return error(
            StatusCode::BAD_REQUEST,
            "the PID must be a positive integer",
        );
    };
    let (reply, answer) = oneshot::channel();
    let request = Request::Report {
        pid,
        top: query.top,
        reply,
    };
    if shared.requests.send(request).await.is_err() {
        return error(StatusCode::SERVICE_UNAVAILABLE, "the agent is stopping");
    }
    match tokio::time::timeout(REPORT_TIMEOUT, answer).await {
        Ok(Ok(Some(json))) => ([(header::CONTENT_TYPE, "application/json")], json).into_response(),
        Ok(Ok(None)) => error(
            StatusCode::NOT_FOUND,
            &format!("process {pid} is not traced (see /api/v1/targets)"),
        ),
        Ok(Err(_)) => error(StatusCode::SERVICE_UNAVAILABLE, "the agent is stopping"),
        Err(_) => error(StatusCode::GATEWAY_TIMEOUT, "the report took too long"),
    }
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(serde_json::json!({ "error": message }))).into_response()
}
