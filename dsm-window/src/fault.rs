//! The SIGSEGV path: a process-wide handler, a lock-free table of window ranges, and
//! the per-window channel through which a faulting thread asks the window's fault
//! thread to make a page valid. A fault raised by a view's access routine is not
//! submitted there: the handler hands it back to the routine's caller (module
//! `access`), which serves it itself.
//!
//! Inside the handler only async-signal-safe things happen: writes to the saved
//! registers of the interrupted context (for a view's routine), atomic loads and CAS on
//! preallocated memory, `write(2)` of four bytes to a non-blocking pipe (only when the
//! fault thread sleeps), `clock_gettime(2)` and `sched_yield(2)` while it polls for the
//! answer, `futex(2)` to wait after that, `sigaction(2)`. No allocation, no lock any
//! other thread may hold.
//! For an address outside every window the handler chains to the handler that was
//! installed before it (Rust's stack-overflow handler, usually) or, if that was the
//! default action, restores the default and returns so that the access faults again
//! and the process dies with its usual SIGSEGV.

use std::cell::UnsafeCell;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, AtomicUsize, Ordering};
use std::sync::Once;

use crate::error::{Result, WinError};

/// How many windows may be alive at once in one process.
pub(crate) const MAX_WINDOWS: usize = 256;
/// How many threads of one rank may wait on faults of one window at once; more wait
/// (yielding) for a free slot.
const SLOTS: usize = 64;

const FREE: u32 = 0;
const CLAIMED: u32 = 1;
const SUBMITTED: u32 = 2;
const DONE_OK: u32 = 3;
const DONE_FAIL: u32 = 4;
/// Taken by the fault thread.
const SERVING: u32 = 5;

/// [`crate::poll::STARVED`] in ns, for the handler.
const STARVED_NS: u64 = crate::poll::STARVED.as_nanos() as u64;

/// What the faulting instruction did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FaultKind {
    Read,
    Write,
    /// The architecture does not say (the fault thread infers it from the page state).
    Unknown,
}

impl FaultKind {
    /// Its code, as slots and the view routines' status word carry it.
    pub(crate) fn to_u32(self) -> u32 {
        self as u32
    }
    /// The kind `to_u32` gave this code.
    pub(crate) fn from_u32(v: u32) -> FaultKind {
        match v {
            0 => FaultKind::Read,
            1 => FaultKind::Write,
            _ => FaultKind::Unknown,
        }
    }
}

struct Slot {
    state: AtomicU32,
    addr: AtomicUsize,
    kind: AtomicU32,
}

/// One window's end of the fault channel, shared by the handler (which only reads
/// `pipe_w` and `poll_ns` and touches the atomics) and the fault thread.
///
/// The fault thread is either *polling* the slots (for [`poll_ns`](Self::poll_ns)
/// after the last fault it served) or *asleep* in `read(2)` on the pipe, having set
/// `sleeping` first. A faulting thread submits its slot, then writes to the pipe only
/// if `sleeping` is set: both sides store then load with `SeqCst` (a Dekker pair), so
/// either the handler sees `sleeping` and wakes the thread, or the thread's last scan
/// before sleeping sees the slot.
pub(crate) struct FaultChannel {
    pipe_w: OwnedFd,
    slots: [Slot; SLOTS],
    sleeping: AtomicU32,
    stop: AtomicBool,
    /// How long both sides poll before sleeping, in ns (0: never poll).
    poll_ns: u64,
}

impl FaultChannel {
    /// A channel and the read end of its pipe (for the fault thread); both sides
    /// poll for `poll` before they sleep.
    pub(crate) fn new(poll: std::time::Duration) -> Result<(Box<FaultChannel>, OwnedFd)> {
        let mut fds = [0 as libc::c_int; 2];
        // SAFETY: `fds` has room for the two descriptors pipe2 writes.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(WinError::last_os("creating the fault pipe"));
        }
        // SAFETY: both descriptors were just created and are owned by nobody else.
        let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // The handler's end never blocks: a full pipe already holds wake-ups enough.
        // SAFETY: F_SETFL on a descriptor we own.
        if unsafe { libc::fcntl(w.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) } != 0 {
            return Err(WinError::last_os("making the fault pipe non-blocking"));
        }
        let ch = Box::new(FaultChannel {
            pipe_w: w,
            slots: std::array::from_fn(|_| Slot {
                state: AtomicU32::new(FREE),
                addr: AtomicUsize::new(0),
                kind: AtomicU32::new(0),
            }),
            // Until the thread runs, a fault must wake it.
            sleeping: AtomicU32::new(1),
            stop: AtomicBool::new(false),
            poll_ns: u64::try_from(poll.as_nanos()).unwrap_or(u64::MAX),
        });
        Ok((ch, r))
    }

    /// How long the fault thread polls after serving a fault.
    pub(crate) fn poll_time(&self) -> std::time::Duration {
        std::time::Duration::from_nanos(self.poll_ns)
    }

    /// Takes the next submitted fault (fault thread side): its slot, address and kind.
    pub(crate) fn take(&self) -> Option<(u32, usize, FaultKind)> {
        self.slots.iter().enumerate().find_map(|(i, s)| {
            s.state
                .compare_exchange(SUBMITTED, SERVING, Ordering::SeqCst, Ordering::Relaxed)
                .ok()?;
            Some((
                i as u32,
                s.addr.load(Ordering::Relaxed),
                FaultKind::from_u32(s.kind.load(Ordering::Relaxed)),
            ))
        })
    }

    /// Whether the fault thread was asked to stop.
    pub(crate) fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// Fault thread side: announces that it goes to sleep, then looks once more.
    /// Returns true if it may sleep (nothing submitted, no stop).
    pub(crate) fn prepare_sleep(&self) -> bool {
        self.sleeping.store(1, Ordering::SeqCst);
        let idle = !self.stopping()
            && self
                .slots
                .iter()
                .all(|s| s.state.load(Ordering::SeqCst) != SUBMITTED);
        if !idle {
            self.sleeping.store(0, Ordering::SeqCst);
        }
        idle
    }

    /// Fault thread side: sleeps until the pipe has something (wake-ups are not
    /// counted: the thread rescans every slot). False at EOF or on an error.
    pub(crate) fn sleep(&self, pipe: &OwnedFd) -> bool {
        let mut b = [0u8; 256];
        let ok = loop {
            // SAFETY: the destination range lies inside `b`.
            let n = unsafe { libc::read(pipe.as_raw_fd(), b.as_mut_ptr().cast(), b.len()) };
            if n > 0 {
                break true;
            }
            if n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            break false;
        };
        self.sleeping.store(0, Ordering::SeqCst);
        ok
    }

    /// Tells the faulting thread its page is served (or not) and wakes it.
    pub(crate) fn complete(&self, slot: u32, ok: bool) {
        if let Some(s) = self.slots.get(slot as usize) {
            s.state
                .store(if ok { DONE_OK } else { DONE_FAIL }, Ordering::Release);
            futex_wake(&s.state);
        }
    }

    /// Asks the fault thread to stop.
    pub(crate) fn stop(&self) -> Result<()> {
        self.stop.store(true, Ordering::SeqCst);
        if write_all(self.pipe_w.as_raw_fd(), &u32::MAX.to_ne_bytes()) {
            Ok(())
        } else {
            Err(WinError::last_os("stopping the fault thread"))
        }
    }

    /// Handler side: submit a fault and wait for the answer. Async-signal-safe.
    fn serve(&self, addr: usize, kind: FaultKind) -> bool {
        let idx = loop {
            let free = self.slots.iter().position(|s| {
                s.state
                    .compare_exchange(FREE, CLAIMED, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
            });
            match free {
                Some(i) => break i,
                // SAFETY: sched_yield is async-signal-safe and has no preconditions.
                None => unsafe {
                    libc::sched_yield();
                },
            }
        };
        let s = &self.slots[idx];
        s.addr.store(addr, Ordering::Relaxed);
        s.kind.store(kind.to_u32(), Ordering::Relaxed);
        s.state.store(SUBMITTED, Ordering::SeqCst);
        if self.sleeping.load(Ordering::SeqCst) != 0
            && !write_all(self.pipe_w.as_raw_fd(), &(idx as u32).to_ne_bytes())
        {
            // Not served, unless the thread woke anyway and took it: then wait.
            if s.state
                .compare_exchange(SUBMITTED, FREE, Ordering::SeqCst, Ordering::Relaxed)
                .is_ok()
            {
                return false;
            }
        }
        // Poll for the answer first, yielding the core between looks (the threads that
        // serve the fault may need it), then sleep on the futex.
        // A yield that takes longer than `STARVED_NS` means another thread wanted this
        // core: stop polling and sleep (see `crate::poll`).
        if self.poll_ns > 0 {
            let start = now_ns();
            while matches!(s.state.load(Ordering::Acquire), SUBMITTED | SERVING)
                && now_ns().wrapping_sub(start) < self.poll_ns
            {
                let t = now_ns();
                // SAFETY: sched_yield is async-signal-safe and has no preconditions.
                unsafe { libc::sched_yield() };
                if now_ns().wrapping_sub(t) > STARVED_NS {
                    break;
                }
            }
        }
        let ok = loop {
            match s.state.load(Ordering::Acquire) {
                DONE_OK => break true,
                DONE_FAIL => break false,
                v => futex_wait(&s.state, v),
            }
        };
        s.state.store(FREE, Ordering::Release);
        ok
    }
}

/// `write(2)` of a whole (tiny) buffer, retried on EINTR. Async-signal-safe. A full
/// non-blocking pipe (EAGAIN) counts as written: it holds wake-ups already.
fn write_all(fd: libc::c_int, buf: &[u8]) -> bool {
    loop {
        // SAFETY: `buf` is valid for `buf.len()` bytes; writes of ≤ PIPE_BUF bytes to a
        // pipe are atomic, so a positive return means all of it.
        let n = unsafe { libc::write(fd, buf.as_ptr() as *const libc::c_void, buf.len()) };
        if n == buf.len() as isize {
            return true;
        }
        // SAFETY: reading errno of this thread.
        let e = unsafe { *libc::__errno_location() };
        if n < 0 && e == libc::EINTR {
            continue;
        }
        return n < 0 && e == libc::EAGAIN;
    }
}

/// CLOCK_MONOTONIC in ns. Async-signal-safe (`clock_gettime` is on POSIX's list).
fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64)
        .wrapping_mul(1_000_000_000)
        .wrapping_add(ts.tv_nsec as u64)
}

fn futex_wait(word: &AtomicU32, expected: u32) {
    // SAFETY: FUTEX_WAIT on a live, aligned u32; it returns at once if the value
    // differs, on a wake, or on a signal. Async-signal-safe (a plain syscall).
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
            expected,
            std::ptr::null::<libc::timespec>(),
        );
    }
}

fn futex_wake(word: &AtomicU32) {
    // SAFETY: FUTEX_WAKE on a live, aligned u32.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG,
            i32::MAX,
        );
    }
}

// ----- the process-wide table ------------------------------------------------------

struct Entry {
    start: AtomicUsize,
    end: AtomicUsize,
    chan: AtomicPtr<FaultChannel>,
}

#[allow(clippy::declare_interior_mutable_const)]
const EMPTY: Entry = Entry {
    start: AtomicUsize::new(0),
    end: AtomicUsize::new(0),
    chan: AtomicPtr::new(std::ptr::null_mut()),
};

static TABLE: [Entry; MAX_WINDOWS] = [EMPTY; MAX_WINDOWS];

/// The handler that was installed before ours, written once before ours is installed.
struct Prev(UnsafeCell<std::mem::MaybeUninit<libc::sigaction>>);
// SAFETY: written exactly once inside `INSTALL.call_once`, before our handler is
// installed; only read afterwards (by the handler).
unsafe impl Sync for Prev {}
static PREV: Prev = Prev(UnsafeCell::new(std::mem::MaybeUninit::uninit()));
static INSTALL: Once = Once::new();
static INSTALL_ERR: AtomicU32 = AtomicU32::new(0);

fn install() -> Result<()> {
    INSTALL.call_once(|| {
        // SAFETY: PREV is written here only, before the handler that reads it exists;
        // `sa` is fully initialised (zeroed, then the fields sigaction reads).
        unsafe {
            let prev = (*PREV.0.get()).as_mut_ptr();
            if libc::sigaction(libc::SIGSEGV, std::ptr::null(), prev) != 0 {
                INSTALL_ERR.store(1, Ordering::SeqCst);
                return;
            }
            let mut sa: libc::sigaction = std::mem::zeroed();
            let h: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) = on_segv;
            sa.sa_sigaction = h as usize;
            sa.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK | libc::SA_NODEFER;
            libc::sigemptyset(&mut sa.sa_mask);
            if libc::sigaction(libc::SIGSEGV, &sa, std::ptr::null_mut()) != 0 {
                INSTALL_ERR.store(1, Ordering::SeqCst);
            }
        }
    });
    if INSTALL_ERR.load(Ordering::SeqCst) != 0 {
        return Err(WinError::InvalidArgument(
            "could not install the SIGSEGV handler".into(),
        ));
    }
    Ok(())
}

/// A window's place in the table; unregisters on drop.
pub(crate) struct Registration {
    idx: usize,
}

/// Registers `[start, start+len)` as served by `chan`. `chan` must stay alive until
/// the registration is dropped.
pub(crate) fn register(start: usize, len: usize, chan: &FaultChannel) -> Result<Registration> {
    install()?;
    let p = chan as *const FaultChannel as *mut FaultChannel;
    for (idx, e) in TABLE.iter().enumerate() {
        if e.chan
            .compare_exchange(std::ptr::null_mut(), p, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
        {
            e.start.store(start, Ordering::Release);
            e.end.store(start + len, Ordering::Release);
            return Ok(Registration { idx });
        }
    }
    Err(WinError::TooManyWindows(MAX_WINDOWS))
}

impl Drop for Registration {
    fn drop(&mut self) {
        let e = &TABLE[self.idx];
        e.end.store(0, Ordering::Release);
        e.start.store(0, Ordering::Release);
        e.chan.store(std::ptr::null_mut(), Ordering::Release);
    }
}

fn lookup(addr: usize) -> Option<&'static FaultChannel> {
    for e in TABLE.iter() {
        let chan = e.chan.load(Ordering::Acquire);
        if chan.is_null() {
            continue;
        }
        let (s, t) = (
            e.start.load(Ordering::Acquire),
            e.end.load(Ordering::Acquire),
        );
        if s <= addr && addr < t {
            // SAFETY: a registered channel outlives its registration (the window drops
            // the registration before the channel), and a fault inside a window's range
            // can only come from a View, which borrows the live window.
            return Some(unsafe { &*chan });
        }
    }
    None
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn fault_kind(uctx: *mut libc::c_void) -> FaultKind {
    if uctx.is_null() {
        return FaultKind::Unknown;
    }
    // SAFETY: the kernel passes a valid ucontext_t to SA_SIGINFO handlers; on x86_64
    // bit 1 of the page-fault error code (REG_ERR) is set for writes.
    let err =
        unsafe { (*(uctx as *const libc::ucontext_t)).uc_mcontext.gregs[libc::REG_ERR as usize] };
    if err & 2 != 0 {
        FaultKind::Write
    } else {
        FaultKind::Read
    }
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
fn fault_kind(_uctx: *mut libc::c_void) -> FaultKind {
    FaultKind::Unknown
}

extern "C" fn on_segv(sig: libc::c_int, info: *mut libc::siginfo_t, uctx: *mut libc::c_void) {
    // SAFETY: errno is thread-local; saved and restored around our syscalls.
    let errno = unsafe { *libc::__errno_location() };
    // SAFETY: `info` is the kernel's siginfo for this SIGSEGV.
    let addr = if info.is_null() {
        0
    } else {
        unsafe { (*info).si_addr() as usize }
    };
    if let Some(chan) = lookup(addr) {
        let kind = fault_kind(uctx);
        // A view's access routine: it returns the fault to its caller, which serves
        // it in ordinary code (module `access`).
        if crate::access::redirect(uctx, addr, kind) {
            // SAFETY: restoring this thread's errno.
            unsafe { *libc::__errno_location() = errno };
            return;
        }
        if chan.serve(addr, kind) {
            // SAFETY: restoring this thread's errno.
            unsafe { *libc::__errno_location() = errno };
            return;
        }
        const MSG: &[u8] = b"dsmpi-window: a page fault in a window could not be served\n";
        write_all(2, MSG);
    }
    chain(sig, info, uctx);
}

fn chain(sig: libc::c_int, info: *mut libc::siginfo_t, uctx: *mut libc::c_void) {
    // SAFETY: PREV was initialised before our handler was installed. Calling the
    // previous handler with our arguments is what it expects from the kernel; for the
    // default (or ignore) action we reinstate the default and return, so the faulting
    // instruction runs again and the process dies of SIGSEGV as it would have.
    unsafe {
        let prev = (*PREV.0.get()).assume_init_ref();
        let h = prev.sa_sigaction;
        if h == libc::SIG_DFL || h == libc::SIG_IGN {
            let mut dfl: libc::sigaction = std::mem::zeroed();
            dfl.sa_sigaction = libc::SIG_DFL;
            libc::sigemptyset(&mut dfl.sa_mask);
            libc::sigaction(libc::SIGSEGV, &dfl, std::ptr::null_mut());
        } else if prev.sa_flags & libc::SA_SIGINFO != 0 {
            let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                std::mem::transmute(h);
            f(sig, info, uctx);
        } else {
            let f: extern "C" fn(libc::c_int) = std::mem::transmute(h);
            f(sig);
        }
    }
}
