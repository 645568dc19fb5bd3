//! When a window's threads poll instead of sleeping.
//!
//! A sleeping thread costs a wake-up (5 µs on an idle core, 25–100 µs and more on a
//! loaded machine) on the path of every request that finds it asleep; a polling
//! thread costs a core. Where there are cores to spare ([`poll_window`]), the service
//! and fault threads poll only while the window is in use: for the poll window
//! after the last request (or fault) they served, and the service
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

use std::time::{Duration, Instant};

/// Poll window when polling is on by default, in µs.
pub(crate) const DEFAULT_POLL_US: u64 = 2000;

/// While a lock is held on this rank, the service thread polls this many poll windows
/// after the last request.
pub(crate) const LOCK_FACTOR: u32 = 25;

/// How long the window's threads poll after their last request, for a window with
/// `local_ranks` ranks on this host: `DSMPI_WIN_POLL_US` (µs; 0 = never poll) if
/// set; otherwise [`DEFAULT_POLL_US`] when the host has more than two cores per local
/// rank, and 0 (sleep at once) when it has not.
///
/// Why the core count: every rank already has a thread busy-waiting in the runtime
/// whenever it waits for a message, and the runtime wakes a sleeping thread of the
/// rank for every message that arrives, whoever polls. A polling window thread takes
/// the core those wake-ups need; on a 2-core machine with 2 ranks it made gets and
/// faults slower, not faster (see the measurements in the crate docs).
pub(crate) fn poll_window(local_ranks: usize) -> Duration {
    let env = std::env::var("DSMPI_WIN_POLL_US")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok());
    let cores = dsmpi_runtime::bootstrap::host_cpus();
    let us = env.unwrap_or(if cores > 2 * local_ranks.max(1) {
        DEFAULT_POLL_US
    } else {
        0
    });
    Duration::from_micros(us)
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
