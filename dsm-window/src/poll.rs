//! When a window's threads poll instead of sleeping.
//!
//! A sleeping thread costs a wake-up of 25–100 µs (more on a loaded machine) on the
//! path of every request that finds it asleep; a polling thread costs a core. The
//! service and fault threads therefore poll only while the window is in use: for
//! [`poll_window`] after the last request (or fault) they served, and the service
//! thread for [`LOCK_FACTOR`] times as long while an origin holds a passive-target or
//! byte-range lock on this rank (an open epoch announces more requests). After that
//! they sleep as before, so an idle window costs nothing. Polling yields the core
//! between looks (`sched_yield`), so a thread that needs the core gets it.
//!
//! Polling only pays when the poller has a core of its own. When one `sched_yield`
//! takes longer than [`STARVED`], another thread needed this core (more hot threads
//! than cores: a loaded machine, or many ranks on few cores), and a polling thread
//! would only get to look when that thread stops — later than the kernel would have
//! woken a sleeper (a woken thread preempts a spinning one; a yielding one does not).
//! The thread then stops polling for [`BACKOFF`] and sleeps as before.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Default of [`poll_window`], in µs.
pub(crate) const DEFAULT_POLL_US: u64 = 2000;

/// While a lock is held on this rank, the service thread polls this many poll windows
/// after the last request.
pub(crate) const LOCK_FACTOR: u32 = 25;

/// How long the window's threads poll after their last request: `DSMPI_WIN_POLL_US`
/// (µs; 0 = never poll, sleep at once), [`DEFAULT_POLL_US`] if unset.
pub(crate) fn poll_window() -> Duration {
    static POLL: OnceLock<Duration> = OnceLock::new();
    *POLL.get_or_init(|| {
        let us = std::env::var("DSMPI_WIN_POLL_US")
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(DEFAULT_POLL_US);
        Duration::from_micros(us)
    })
}

/// A yield longer than this means another thread wanted this core.
pub(crate) const STARVED: Duration = Duration::from_micros(30);

/// How long a starved thread sleeps instead of polling before it tries again.
pub(crate) const BACKOFF: Duration = Duration::from_millis(20);

/// Paces a polling loop: one [`idle`](Pacer::idle) turn per empty look, and the
/// starvation back-off.
pub(crate) struct Pacer {
    starved_until: Option<Instant>,
}

impl Pacer {
    /// A pacer that may poll.
    pub(crate) fn new() -> Pacer {
        Pacer {
            starved_until: None,
        }
    }

    /// Whether polling is allowed now (not backing off after starvation).
    pub(crate) fn may_poll(&self) -> bool {
        self.starved_until.is_none_or(|t| Instant::now() >= t)
    }

    /// One idle turn: yields the core; if the yield took longer than [`STARVED`],
    /// backs off (and returns false: stop polling now).
    pub(crate) fn idle(&mut self) -> bool {
        let t = Instant::now();
        std::thread::yield_now();
        if t.elapsed() > STARVED {
            self.starved_until = Some(Instant::now() + BACKOFF);
            return false;
        }
        true
    }
}
