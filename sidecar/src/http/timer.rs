//! The HTTP/1.1 server's timer, which hyper runs the header read timeout on: one tokio
//! timer per connection, re-armed for every request.
//!
//! hyper asks its timer for a new sleep each time it starts reading a request head and drops
//! it once the head is in: with `TokioTimer` that is an allocation, a registration in the
//! runtime's timer wheel and a removal from it per request (~650 instructions of a proxied
//! request). [`ConnTimer`] hands out a small box around the connection's one tokio `Sleep`,
//! which goes back to the connection when hyper drops the box and is re-armed for the next
//! deadline; moving a registered deadline later only updates it (the wheel entry is moved
//! when it comes due), so a busy connection touches the wheel about once per timeout. A
//! deadline that comes due while the sleep is parked (a request that takes longer than the
//! timeout) wakes the connection once for nothing.
//!
//! Not for HTTP/2, whose keep-alive pings hold several sleeps at once: that keeps
//! `TokioTimer`.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::rt::{Sleep, Timer};

/// The parked sleep of one connection.
type Slot = Arc<Mutex<Option<Pin<Box<tokio::time::Sleep>>>>>;

/// The timer of one HTTP/1.1 server connection (see the module documentation).
#[derive(Debug, Clone, Default)]
pub struct ConnTimer {
    slot: Slot,
}

impl ConnTimer {
    /// A timer with no sleep yet.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Timer for ConnTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Sleep>> {
        self.sleep_until(self.now() + duration)
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn Sleep>> {
        let parked = self
            .slot
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let inner = match parked {
            Some(mut sleep) => {
                sleep.as_mut().reset(deadline.into());
                sleep
            }
            None => Box::pin(tokio::time::sleep_until(deadline.into())),
        };
        Box::pin(ConnSleep {
            inner: Some(inner),
            slot: self.slot.clone(),
        })
    }

    fn reset(&self, sleep: &mut Pin<Box<dyn Sleep>>, new_deadline: Instant) {
        match sleep.as_mut().downcast_mut_pin::<ConnSleep>() {
            Some(mut s) => {
                if let Some(inner) = s.inner.as_mut() {
                    inner.as_mut().reset(new_deadline.into());
                }
            }
            None => *sleep = self.sleep_until(new_deadline),
        }
    }

    fn now(&self) -> Instant {
        // tokio's clock, so that paused time in tests applies (as with `TokioTimer`).
        tokio::time::Instant::now().into()
    }
}

/// A sleep lent to hyper; its tokio sleep goes back to the connection when dropped.
struct ConnSleep {
    inner: Option<Pin<Box<tokio::time::Sleep>>>,
    slot: Slot,
}

impl Future for ConnSleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        match self.inner.as_mut() {
            Some(inner) => inner.as_mut().poll(cx),
            None => Poll::Ready(()),
        }
    }
}

impl Sleep for ConnSleep {}

impl Drop for ConnSleep {
    fn drop(&mut self) {
        if let Some(inner) = self.inner.take() {
            *self.slot.lock().unwrap_or_else(PoisonError::into_inner) = Some(inner);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[tokio::test]
    async fn sleeps_fire_at_their_deadlines_and_the_sleep_is_reused() {
        let timer = ConnTimer::new();
        let start = Instant::now();
        timer.sleep(40 * MS).await;
        assert!(start.elapsed() >= 40 * MS);
        // The sleep went back to the connection; re-armed, it waits for its new deadline.
        assert!(timer.slot.lock().unwrap().is_some());
        let again = Instant::now();
        timer.sleep(30 * MS).await;
        assert!(again.elapsed() >= 30 * MS);
        // Dropped before its deadline, then re-armed, and reset to a later deadline.
        drop(timer.sleep(10 * MS));
        let later = Instant::now();
        let mut s = timer.sleep_until(timer.now() + 20 * MS);
        timer.reset(&mut s, timer.now() + 60 * MS);
        s.await;
        assert!(later.elapsed() >= 60 * MS, "{:?}", later.elapsed());
    }
}
