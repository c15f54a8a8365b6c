//! Graceful shutdown: one [`DrainSignal`] fired on SIGTERM, observed by every listener (stop
//! accepting) and connection (finish in-flight requests, then close) through a cloned
//! [`Drain`]. The caller bounds the wait with `--drain-timeout`.

use std::future::Future;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Wake, Waker};

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

    /// Runs `fut` until it ends (`Some(output)`) or draining starts (`None`: `fut` is left to
    /// the caller to wind down). Unlike a `select!`, which polls every branch on every wakeup,
    /// the drain signal is polled only when it woke the task: a proxied connection wakes
    /// several times per request, and polling the signal each time cost ~300 instructions a
    /// request.
    pub async fn run_until<F: Future + Unpin>(&mut self, fut: &mut F) -> Option<F::Output> {
        let mut signaled = pin!(self.signaled());
        let woke = Arc::new(DrainWake {
            woken: AtomicBool::new(true),
            task: Mutex::new(None),
        });
        let waker = Waker::from(woke.clone());
        std::future::poll_fn(|cx| {
            if let Poll::Ready(out) = Pin::new(&mut *fut).poll(cx) {
                return Poll::Ready(Some(out));
            }
            // Registered before the flag is read: a wake in between is not lost.
            woke.register(cx.waker());
            if woke.woken.swap(false, Ordering::AcqRel)
                && signaled
                    .as_mut()
                    .poll(&mut Context::from_waker(&waker))
                    .is_ready()
            {
                return Poll::Ready(None);
            }
            Poll::Pending
        })
        .await
    }
}

/// The waker the drain signal is polled with in [`Drain::run_until`]: notes that the signal
/// woke, and wakes the task.
#[derive(Debug)]
struct DrainWake {
    woken: AtomicBool,
    task: Mutex<Option<Waker>>,
}

impl DrainWake {
    fn register(&self, waker: &Waker) {
        let mut task = self.task.lock().unwrap_or_else(PoisonError::into_inner);
        if !task.as_ref().is_some_and(|t| t.will_wake(waker)) {
            *task = Some(waker.clone());
        }
    }
}

impl Wake for DrainWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        let task = self.task.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(t) = task.as_ref() {
            t.wake_by_ref();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn run_until_ends_with_the_future_or_the_drain() {
        let (signal, mut drain) = channel();
        let mut ready = std::future::ready(7);
        assert_eq!(drain.run_until(&mut ready).await, Some(7));
        // A future that never ends: the drain ends the wait, from another task.
        let mut never = std::future::pending::<()>();
        let fire = tokio::spawn(async move {
            tokio::task::yield_now().await;
            signal.drain();
            signal
        });
        assert_eq!(drain.run_until(&mut never).await, None);
        let _signal = fire.await.unwrap();
        // Already draining: at once.
        assert_eq!(drain.run_until(&mut never).await, None);
    }
}
