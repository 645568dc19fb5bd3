//! A small level-triggered epoll set plus an eventfd to wake a thread sleeping in it.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// Token of the waker in the epoll set.
pub const WAKER: u64 = u64::MAX;

/// An epoll instance with a built-in waker.
#[derive(Debug)]
pub struct Poller {
    ep: OwnedFd,
    wake: OwnedFd,
}

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

impl Poller {
    /// A new, empty set (the waker already in it).
    pub fn new() -> io::Result<Poller> {
        // SAFETY: plain syscalls; the returned descriptors are owned from here on.
        let ep = unsafe { OwnedFd::from_raw_fd(cvt(libc::epoll_create1(libc::EPOLL_CLOEXEC))?) };
        let wake = unsafe {
            OwnedFd::from_raw_fd(cvt(libc::eventfd(
                0,
                libc::EFD_CLOEXEC | libc::EFD_NONBLOCK,
            ))?)
        };
        let p = Poller { ep, wake };
        p.add(p.wake.as_raw_fd(), WAKER, false)?;
        Ok(p)
    }

    fn ctl(&self, op: libc::c_int, fd: RawFd, token: u64, write: bool) -> io::Result<()> {
        let mut ev = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLRDHUP) as u32
                | if write { libc::EPOLLOUT as u32 } else { 0 },
            u64: token,
        };
        // SAFETY: `ev` is a valid epoll_event for the duration of the call.
        cvt(unsafe { libc::epoll_ctl(self.ep.as_raw_fd(), op, fd, &mut ev) }).map(|_| ())
    }

    /// Watches `fd` for reading (and writing if `write`).
    pub fn add(&self, fd: RawFd, token: u64, write: bool) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_ADD, fd, token, write)
    }

    /// Changes whether `fd` is watched for writing.
    pub fn modify(&self, fd: RawFd, token: u64, write: bool) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_MOD, fd, token, write)
    }

    /// Stops watching `fd`.
    pub fn remove(&self, fd: RawFd) -> io::Result<()> {
        // SAFETY: a null event is allowed for EPOLL_CTL_DEL.
        cvt(unsafe {
            libc::epoll_ctl(
                self.ep.as_raw_fd(),
                libc::EPOLL_CTL_DEL,
                fd,
                std::ptr::null_mut(),
            )
        })
        .map(|_| ())
    }

    /// Waits up to `timeout_ms` (-1: forever) and fills `out` with (token, events).
    /// A blocking wait (timeout ≠ 0) that sees the waker resets it.
    pub fn wait(&self, out: &mut Vec<(u64, u32)>, timeout_ms: i32) -> io::Result<()> {
        out.clear();
        let mut evs = [libc::epoll_event { events: 0, u64: 0 }; 64];
        // SAFETY: `evs` has room for 64 events, the count passed.
        let n = unsafe { libc::epoll_wait(self.ep.as_raw_fd(), evs.as_mut_ptr(), 64, timeout_ms) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                return Ok(());
            }
            return Err(e);
        }
        for ev in &evs[..n as usize] {
            let (tok, bits) = (ev.u64, ev.events);
            // Only a blocking wait consumes a wake-up. If a thread merely glancing at
            // the set (timeout 0) drained it, the sleeper it was meant for could find
            // the eventfd empty when it runs and go back to sleep for good.
            if tok == WAKER && timeout_ms != 0 {
                self.drain_waker();
            }
            out.push((tok, bits));
        }
        Ok(())
    }

    /// Wakes a thread sleeping in [`Poller::wait`].
    pub fn wake(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64. A full counter (EAGAIN) already wakes.
        unsafe {
            libc::write(self.wake.as_raw_fd(), (&one as *const u64).cast(), 8);
        }
    }

    fn drain_waker(&self) {
        let mut v: u64 = 0;
        // SAFETY: reads 8 bytes into a live u64; non-blocking, EAGAIN is fine.
        unsafe {
            libc::read(self.wake.as_raw_fd(), (&mut v as *mut u64).cast(), 8);
        }
    }
}
