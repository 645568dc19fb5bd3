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

use std::sync::OnceLock;
use std::time::Duration;

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

/// One idle turn of a polling loop: lets another thread have the core.
pub(crate) fn relax() {
    std::thread::yield_now();
}
