//! Process signals: SIGTERM (what Kubernetes and systemd send) and SIGINT
//! (Ctrl-C during development) both ask for a graceful stop.
//!
//! The handlers are installed when [`signal`] is called, not when its future
//! is first polled: a command calls it before it announces that it is up, so
//! a signal sent right after that announcement is never the default
//! (immediate, ungraceful) death.

use std::future::Future;

/// Installs the handlers now; the future resolves at SIGINT or SIGTERM.
pub fn signal() -> impl Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let terminate = signal(SignalKind::terminate());
        let interrupt = signal(SignalKind::interrupt());
        async move {
            match (terminate, interrupt) {
                (Ok(mut terminate), Ok(mut interrupt)) => {
                    tokio::select! {
                        _ = terminate.recv() => {}
                        _ = interrupt.recv() => {}
                    }
                }
                (Ok(mut only), Err(_)) | (Err(_), Ok(mut only)) => {
                    only.recv().await;
                }
                (Err(_), Err(_)) => std::future::pending().await,
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
