//! `kiln serve`: an OpenAI-compatible HTTP server (axum on tokio) over the engines of one or
//! more models (`kiln_models::engine`), held by a registry under one byte budget per device
//! (setup.rs). Routes: POST /v1/chat/completions, POST /v1/completions, GET
//! /v1/models, GET /health (engine and KV-block state). Shutdown on SIGINT/SIGTERM: stop
//! accepting, let in-flight requests finish for up to the grace period, cancel the rest, and
//! return.

pub mod client;
pub mod openai;
pub mod routes;
pub mod setup;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::{get, post};
use tokio::net::TcpListener;

pub use routes::AppState;

/// The router over `state`.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(routes::chat))
        .route("/v1/completions", post(routes::completions))
        .route("/v1/models", get(routes::models))
        .route("/health", get(routes::health))
        .fallback(routes::not_found)
        .with_state(state)
}

/// Resolves at SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

/// Serve on `listener` until a shutdown signal; in-flight requests get `grace` to finish.
pub async fn serve(
    listener: TcpListener,
    state: Arc<AppState>,
    grace: Duration,
) -> std::io::Result<()> {
    let (sig_tx, sig_rx) = tokio::sync::watch::channel(false);
    let app = router(state);
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        shutdown_signal().await;
        eprintln!("kiln serve: shutting down (in-flight requests have {grace:?} to finish)");
        let _ = sig_tx.send(true);
    });
    let deadline = async move {
        let mut rx = sig_rx;
        while !*rx.borrow() {
            if rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
        tokio::time::sleep(grace).await;
    };
    tokio::select! {
        r = server => r,
        _ = deadline => {
            eprintln!("kiln serve: grace period over; cancelling the requests still running");
            Ok(())
        }
    }
}
