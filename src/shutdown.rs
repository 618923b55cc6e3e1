//! The node's root cancellation token and task tracker, and the process signals.
//!
//! [`Shutdown`] is the root of the node's listeners: long-lived tasks are spawned with
//! [`Shutdown::spawn`] (or on [`Shutdown::tracker`]) and stop when [`Shutdown::token`] is
//! cancelled. Subsystems with their own lifecycle (the Engine.IO sessions, the Socket.IO handler
//! tasks, the cluster runtime) keep their own tracker; [`crate::node::Node::shutdown`] is the one
//! sequence that stops all of them, in order, under one deadline. [`Signals`] is installed before
//! the node reports ready, so an early SIGTERM is not lost.

use std::future::Future;
use std::io;
use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Root cancellation token plus the tracker of every task that must finish before exit.
#[derive(Clone, Debug, Default)]
pub struct Shutdown {
    token: CancellationToken,
    tracker: TaskTracker,
}

impl Shutdown {
    /// A fresh, not yet cancelled shutdown handle.
    pub fn new() -> Self {
        Self::default()
    }

    /// The root token; cancelled when shutdown starts. Hand out `child_token()`s to subsystems.
    pub fn token(&self) -> &CancellationToken {
        &self.token
    }

    /// The tracker shutdown waits on.
    pub fn tracker(&self) -> &TaskTracker {
        &self.tracker
    }

    /// Spawns `fut` on the current runtime as a tracked task.
    pub fn spawn<F>(&self, fut: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.tracker.spawn(fut)
    }

    /// Whether shutdown has started.
    pub fn is_shutting_down(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Cancels the token, stops tracking new tasks and waits up to `grace` for every tracked
    /// task to finish. Returns `true` if all of them finished in time.
    pub async fn shutdown(&self, grace: Duration) -> bool {
        self.token.cancel();
        self.tracker.close();
        let drained = tokio::time::timeout(grace, self.tracker.wait()).await.is_ok();
        if drained {
            tracing::info!("all tasks finished");
        } else {
            tracing::warn!(
                remaining = self.tracker.len(),
                grace_ms = u64::try_from(grace.as_millis()).unwrap_or(u64::MAX),
                "tasks still running after the shutdown grace period"
            );
        }
        drained
    }
}

/// SIGINT and SIGTERM handlers, installed up front.
#[derive(Debug)]
pub struct Signals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
}

impl Signals {
    /// Installs the handlers: from now on SIGINT/SIGTERM no longer end the process by default.
    pub fn install() -> io::Result<Self> {
        Ok(Self { int: signal(SignalKind::interrupt())?, term: signal(SignalKind::terminate())? })
    }

    /// Waits for the next SIGINT or SIGTERM and returns its name.
    pub async fn recv(&mut self) -> &'static str {
        let name = tokio::select! {
            _ = self.int.recv() => "SIGINT",
            _ = self.term.recv() => "SIGTERM",
        };
        tracing::info!(signal = name, "shutdown requested");
        name
    }
}

/// Waits for SIGINT or SIGTERM and returns which one arrived (`"SIGINT"` or `"SIGTERM"`).
///
/// Fails only if the signal handlers cannot be installed. Call it before the first signal can
/// matter: until the handlers are installed the default action (exit) applies.
pub async fn wait_for_signal() -> io::Result<&'static str> {
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    let name = tokio::select! {
        _ = int.recv() => "SIGINT",
        _ = term.recv() => "SIGTERM",
    };
    tracing::info!(signal = name, "shutdown requested");
    Ok(name)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[tokio::test]
    async fn cooperative_tasks_drain() {
        let sd = Shutdown::new();
        let finished = Arc::new(AtomicBool::new(false));
        let token = sd.token().child_token();
        let flag = finished.clone();
        sd.spawn(async move {
            token.cancelled().await;
            // Some cleanup after cancellation still completes.
            tokio::task::yield_now().await;
            flag.store(true, Ordering::SeqCst);
        });
        assert!(!sd.is_shutting_down());
        assert!(sd.shutdown(Duration::from_secs(5)).await);
        assert!(sd.is_shutting_down());
        assert!(finished.load(Ordering::SeqCst));
        assert!(sd.tracker().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn stuck_task_hits_the_deadline() {
        let sd = Shutdown::new();
        sd.spawn(std::future::pending::<()>());
        let started = tokio::time::Instant::now();
        assert!(!sd.shutdown(Duration::from_millis(500)).await);
        assert_eq!(started.elapsed(), Duration::from_millis(500));
        assert_eq!(sd.tracker().len(), 1);
    }

    #[tokio::test]
    async fn shutdown_with_no_tasks_is_immediate() {
        assert!(Shutdown::new().shutdown(Duration::ZERO).await);
    }

    #[tokio::test]
    async fn signal_is_observed() {
        let mut wait = Box::pin(wait_for_signal());
        // Poll once so the handlers are installed before the signal is sent (an uninstalled
        // SIGTERM would kill the test process).
        tokio::select! {
            biased;
            r = &mut wait => panic!("returned before any signal: {r:?}"),
            () = tokio::task::yield_now() => {}
        }
        let status =
            std::process::Command::new("kill").args(["-TERM", &std::process::id().to_string()]).status().unwrap();
        assert!(status.success());
        let name = tokio::time::timeout(Duration::from_secs(5), wait).await.unwrap();
        assert_eq!(name.unwrap(), "SIGTERM");
    }
}
