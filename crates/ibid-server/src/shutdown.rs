//! Shutdown for both servers: a signal to wait for, and a flag raised with it so that work in
//! flight (index queries in their loops) stops early.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// `shutdown`, raising `flag` when it resolves, so the queries in flight stop.
pub async fn raising(flag: Arc<AtomicBool>, shutdown: impl Future<Output = ()> + Send + 'static) {
    shutdown.await;
    flag.store(true, Ordering::Relaxed);
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
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
