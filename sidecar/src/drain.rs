//! Graceful shutdown: one [`DrainSignal`] fired on SIGTERM, observed by every listener (stop
//! accepting) and connection (finish in-flight requests, then close) through a cloned
//! [`Drain`]. The caller bounds the wait with `--drain-timeout`.

use tokio::sync::watch;

/// Fires the drain.
#[derive(Debug)]
pub struct DrainSignal(watch::Sender<bool>);

/// Observes the drain.
#[derive(Debug, Clone)]
pub struct Drain(watch::Receiver<bool>);

/// A new signal and its first observer.
pub fn channel() -> (DrainSignal, Drain) {
    let (tx, rx) = watch::channel(false);
    (DrainSignal(tx), Drain(rx))
}

impl DrainSignal {
    /// Starts draining (idempotent).
    pub fn drain(&self) {
        self.0.send_replace(true);
    }

    /// A new observer.
    pub fn watch(&self) -> Drain {
        Drain(self.0.subscribe())
    }
}

impl Drain {
    /// Resolves once draining started (or the signal was dropped).
    pub async fn signaled(&mut self) {
        let _ = self.0.wait_for(|d| *d).await;
    }

    /// True once draining started.
    pub fn is_draining(&self) -> bool {
        *self.0.borrow()
    }
}
