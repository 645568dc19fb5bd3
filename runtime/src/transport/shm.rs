//! Same-host links: a pair of lock-free byte rings in memory both ranks map.
//!
//! Between two ranks on one host the [`Engine`](super::engine::Engine) keeps its
//! stream socket, but frames travel through shared memory instead:
//!
//! - **Rings.** Each pair of ranks shares one anonymous `memfd` holding two
//!   single-producer/single-consumer byte rings, one per direction. Head and tail are
//!   monotonically increasing byte counters on their own cache lines; the producer
//!   alone writes the head, the consumer alone the tail. The engine writes exactly the
//!   frames it would have written to the socket, so matching, ordering, eager and
//!   rendezvous rules are the engine's, unchanged.
//! - **Set-up.** The lower rank of a pair creates the memfd and sends its pid, the
//!   descriptor number, the size, and a random cookie over the pair's socket; the
//!   higher rank opens `/proc/<pid>/fd/<n>`, maps it, and checks the cookie (which
//!   guards against a pid from another pid namespace). The memfd has no name, so
//!   nothing is ever left in `/dev/shm`; the memory goes away with the last mapping,
//!   also when a rank is killed. A pair that cannot do this (different user, no
//!   `/proc`, `DSMPI_TRANSPORT=tcp`) keeps using its socket, so the job still runs.
//! - **Doorbell.** A rank that has polled for a while sleeps in `epoll_wait` with the
//!   rest of its links. Before it sleeps it raises a flag in each incoming ring; a
//!   producer that finds the flag raised after writing clears it and writes one byte
//!   to the pair's socket, which wakes the sleeper. A futex in the mapping would wake
//!   as fast, but a rank that also has TCP peers (other hosts) could not wait on both;
//!   the socket wakes either way and costs nothing while the receiver is awake.
//!   A producer finding the ring full raises the other flag, and the consumer rings
//!   the producer's doorbell once it has made room.
//! - **Failure.** The socket still carries the end of the link: a peer that dies
//!   closes it, the engine drains what the ring holds, and an unfinished frame or a
//!   missing goodbye marks the peer lost, exactly as on TCP.
//! - **Large messages** (rendezvous) use cross-memory attach when the kernel allows
//!   it: the request-to-send carries the sender's buffer address and the receiver
//!   copies the payload with one `process_vm_readv` straight from the sender's memory
//!   into its own buffer. Where that is refused (seccomp, ptrace restrictions), the
//!   payload streams through the ring.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// The environment variable choosing the transport between ranks on one host:
/// `shm` (the default) or `tcp` (keep every pair on its stream socket).
pub const ENV_TRANSPORT: &str = "DSMPI_TRANSPORT";
/// The environment variable overriding the size in bytes of each ring (a power of two).
pub const ENV_RING: &str = "DSMPI_SHM_RING";

/// Whether same-host pairs should use shared memory (`DSMPI_TRANSPORT` is not `tcp`).
pub fn enabled_by_env() -> bool {
    !matches!(
        std::env::var(ENV_TRANSPORT).ok().as_deref().map(str::trim),
        Some("tcp") | Some("TCP") | Some("sockets")
    )
}

/// Ring size for a rank with `local_peers` peers on its host: about 4 MiB of rings
/// per rank in total, each between 32 KiB and 256 KiB, unless `DSMPI_SHM_RING` says.
pub fn ring_bytes(local_peers: usize) -> usize {
    if let Some(v) = std::env::var(ENV_RING)
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
    {
        return v.clamp(4096, 1 << 30).next_power_of_two();
    }
    let per = (4usize << 20) / local_peers.max(1);
    let p = if per.is_power_of_two() {
        per
    } else {
        per.next_power_of_two() / 2
    };
    p.clamp(32 << 10, 256 << 10)
}

const MAGIC: &[u8; 8] = b"DSMPIshm";
const OK: &[u8; 8] = b"DSMPIok!";
const NO: &[u8; 8] = b"DSMPIno!";
const PAGE: usize = 4096;
/// Offer: magic, pid, fd, ring size, cookie (16), creator's mapping address.
const OFFER: usize = 8 + 4 + 4 + 8 + 16 + 8;
/// Answer: OK or NO, the opener's mapping address, the opener's pid.
const ANSWER: usize = 8 + 8 + 4;

/// The control block of one ring, alone on its page of the mapping.
#[repr(C)]
struct Ctl {
    /// Bytes ever written (the producer's counter).
    head: AtomicU64,
    _p0: [u8; 56],
    /// Bytes ever read (the consumer's counter).
    tail: AtomicU64,
    _p1: [u8; 56],
    /// Set by a consumer about to sleep; cleared by the producer that rings for it.
    sleeping: AtomicU32,
    _p2: [u8; 60],
    /// Set by a producer that found the ring full; cleared by the consumer that
    /// rings for it after making room.
    waiting: AtomicU32,
    _p3: [u8; 60],
}

/// One direction of a link: a view into the shared mapping.
#[derive(Debug)]
struct Ring {
    ctl: *const Ctl,
    data: *mut u8,
    cap: usize,
    /// The producer's last look at `tail`: it reads the shared counter (a cache miss
    /// once the consumer has moved it) only when this look leaves too little room.
    tail_seen: std::cell::Cell<u64>,
}

impl Ring {
    fn ctl(&self) -> &Ctl {
        // SAFETY: `ctl` points into a live mapping owned by the same `ShmLink`, at a
        // page-aligned offset, and every field is an atomic (valid for any bytes).
        unsafe { &*self.ctl }
    }

    /// Copies as much of `bufs` as fits; returns the bytes written. Producer only.
    fn write(&self, bufs: &[&[u8]]) -> usize {
        let c = self.ctl();
        let head = c.head.load(Ordering::Relaxed);
        let want: usize = bufs.iter().map(|b| b.len()).sum();
        let mut tail = self.tail_seen.get();
        if self.cap - ((head - tail) as usize) < want {
            tail = c.tail.load(Ordering::Acquire);
            self.tail_seen.set(tail);
        }
        let mut free = self.cap - (head - tail) as usize;
        let mut pos = head;
        for b in bufs {
            if free == 0 {
                break;
            }
            let n = b.len().min(free);
            self.copy_in(pos, &b[..n]);
            pos += n as u64;
            free -= n;
        }
        if pos != head {
            c.head.store(pos, Ordering::Release);
        }
        (pos - head) as usize
    }

    fn copy_in(&self, pos: u64, src: &[u8]) {
        let off = (pos as usize) & (self.cap - 1);
        let first = src.len().min(self.cap - off);
        // SAFETY: `off + first <= cap` and `src.len() - first <= cap - first`: both
        // copies stay inside the ring's data area, which the producer alone writes
        // between `head` and `tail + cap`.
        unsafe {
            std::ptr::copy_nonoverlapping(src.as_ptr(), self.data.add(off), first);
            // The wrapped part is usually empty: skip the call (small frames are
            // mostly these calls).
            if src.len() > first {
                std::ptr::copy_nonoverlapping(
                    src.as_ptr().add(first),
                    self.data,
                    src.len() - first,
                );
            }
        }
    }

    /// Copies up to `max` bytes into `dst`; returns the count. Consumer only.
    ///
    /// # Safety
    /// `dst` must have `max` writable bytes.
    unsafe fn read(&self, dst: *mut u8, max: usize) -> usize {
        let c = self.ctl();
        let tail = c.tail.load(Ordering::Relaxed);
        let head = c.head.load(Ordering::Acquire);
        let n = ((head - tail) as usize).min(max);
        if n == 0 {
            return 0;
        }
        let off = (tail as usize) & (self.cap - 1);
        let first = n.min(self.cap - off);
        // SAFETY: the bytes between tail and head were published by the producer
        // (acquire above) and stay put until we advance tail; `dst` has `max >= n`.
        unsafe {
            std::ptr::copy_nonoverlapping(self.data.add(off), dst, first);
            if n > first {
                std::ptr::copy_nonoverlapping(self.data, dst.add(first), n - first);
            }
        }
        c.tail.store(tail + n as u64, Ordering::Release);
        n
    }

    fn readable(&self) -> bool {
        let c = self.ctl();
        c.head.load(Ordering::Acquire) != c.tail.load(Ordering::Relaxed)
    }

    /// Bytes published and not yet read. Consumer only.
    fn avail(&self) -> usize {
        let c = self.ctl();
        (c.head.load(Ordering::Acquire) - c.tail.load(Ordering::Relaxed)) as usize
    }

    /// Copies `n` unread bytes starting `skip` bytes past the tail into `dst`,
    /// without consuming them. Consumer only.
    ///
    /// # Safety
    /// `dst` must have `n` writable bytes, and `skip + n` must not exceed
    /// [`Ring::avail`] as last seen by this consumer.
    unsafe fn peek(&self, skip: usize, dst: *mut u8, n: usize) {
        let tail = self.ctl().tail.load(Ordering::Relaxed);
        let off = ((tail + skip as u64) as usize) & (self.cap - 1);
        let first = n.min(self.cap - off);
        // SAFETY: the bytes are published (the caller saw them in `avail`, whose
        // acquire load orders these reads) and stay put until the tail moves.
        unsafe {
            std::ptr::copy_nonoverlapping(self.data.add(off), dst, first);
            if n > first {
                std::ptr::copy_nonoverlapping(self.data, dst.add(first), n - first);
            }
        }
    }

    /// Consumes `n` bytes. Consumer only; `n` must not exceed [`Ring::avail`].
    fn advance(&self, n: usize) {
        let c = self.ctl();
        let tail = c.tail.load(Ordering::Relaxed);
        c.tail.store(tail + n as u64, Ordering::Release);
    }
}

/// A mapping of the pair's memfd; unmapped on drop.
#[derive(Debug)]
struct Mapping {
    base: *mut u8,
    len: usize,
}

impl Mapping {
    fn map(fd: RawFd, len: usize) -> io::Result<Mapping> {
        // SAFETY: a fresh shared mapping of a memfd we hold open; checked below.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Mapping {
            base: p.cast(),
            len,
        })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `base`/`len` came from a successful mmap; no ring outlives its link.
        unsafe { libc::munmap(self.base.cast(), self.len) };
    }
}

/// Mapping length for rings of `cap` bytes: a header page, then per direction a
/// control page and the data.
fn map_len(cap: usize) -> usize {
    PAGE + 2 * (PAGE + cap)
}

/// One rank's end of a same-host link.
#[derive(Debug)]
pub struct ShmLink {
    tx: Ring,
    rx: Ring,
    /// The pair's socket: doorbell and end-of-link.
    sock: RawFd,
    peer_pid: libc::pid_t,
    /// Whether `process_vm_readv` from the peer works (probed at set-up).
    cma: bool,
    _map: Mapping,
}

// SAFETY: the raw pointers point into `_map`, which the link owns; the rings are
// shared-memory SPSC structures whose side (producer/consumer) is fixed per link, and
// the engine calls them under its lock (which also serializes the `Cell`).
unsafe impl Send for ShmLink {}
// SAFETY: as above; all shared state is accessed through atomics.
unsafe impl Sync for ShmLink {}

impl ShmLink {
    fn new(map: Mapping, cap: usize, creator: bool, sock: RawFd, peer_pid: i32) -> ShmLink {
        // SAFETY: offsets within the mapping (map_len(cap) bytes).
        let ring = |i: usize| unsafe {
            let ctl = map.base.add(PAGE + i * (PAGE + cap));
            Ring {
                ctl: ctl as *const Ctl,
                data: ctl.add(PAGE),
                cap,
                tail_seen: std::cell::Cell::new(0),
            }
        };
        let (a, b) = (ring(0), ring(1));
        let (tx, rx) = if creator { (a, b) } else { (b, a) };
        ShmLink {
            tx,
            rx,
            sock,
            peer_pid,
            cma: false,
            _map: map,
        }
    }

    /// Writes as much of `bufs` as the outgoing ring takes, ringing the peer's
    /// doorbell if it sleeps. Returns the bytes written.
    pub fn send(&self, bufs: &[&[u8]]) -> usize {
        let n = self.tx.write(bufs);
        if n > 0 {
            // Pairs with the fence in `prepare_sleep`: either the sleeper sees our
            // bytes when it re-checks, or we see its flag here. (Dropping this fence
            // was measured: no change in the 64 x 8 B rate, so the race it would
            // open is not worth having.)
            fence(Ordering::SeqCst);
            let c = self.tx.ctl();
            if c.sleeping.load(Ordering::Relaxed) != 0 && c.sleeping.swap(0, Ordering::AcqRel) != 0
            {
                self.ring_doorbell();
            }
        }
        n
    }

    /// Reads up to `max` bytes from the incoming ring into `dst`, ringing the peer's
    /// doorbell if it waits for room.
    ///
    /// # Safety
    /// `dst` must have `max` writable bytes.
    pub unsafe fn recv(&self, dst: *mut u8, max: usize) -> usize {
        // SAFETY: forwarded contract.
        let n = unsafe { self.rx.read(dst, max) };
        if n > 0 {
            fence(Ordering::SeqCst);
            let c = self.rx.ctl();
            if c.waiting.load(Ordering::Relaxed) != 0 && c.waiting.swap(0, Ordering::AcqRel) != 0 {
                self.ring_doorbell();
            }
        }
        n
    }

    /// Unread bytes in the incoming ring.
    pub fn available(&self) -> usize {
        self.rx.avail()
    }

    /// Copies `n` unread bytes, `skip` bytes past the read position, into `dst`
    /// without consuming them: a reader looks at a frame's header in place and takes
    /// the frame only if it is the one it wants.
    ///
    /// # Safety
    /// `dst` must have `n` writable bytes and `skip + n` must not exceed what
    /// [`ShmLink::available`] last returned.
    pub unsafe fn peek(&self, skip: usize, dst: *mut u8, n: usize) {
        // SAFETY: forwarded contract.
        unsafe { self.rx.peek(skip, dst, n) }
    }

    /// Consumes `n` bytes already looked at with [`ShmLink::peek`] (at most what
    /// [`ShmLink::available`] last returned), ringing the peer's doorbell if it waits
    /// for room.
    pub fn consume(&self, n: usize) {
        self.rx.advance(n);
        fence(Ordering::SeqCst);
        let c = self.rx.ctl();
        if c.waiting.load(Ordering::Relaxed) != 0 && c.waiting.swap(0, Ordering::AcqRel) != 0 {
            self.ring_doorbell();
        }
    }

    /// Whether the incoming ring holds bytes. Only loads the two counters, so any
    /// thread may ask without the engine's lock (the answer is then a hint).
    pub fn readable(&self) -> bool {
        self.rx.readable()
    }

    /// Whether the outgoing ring has room.
    pub fn writable(&self) -> bool {
        let c = self.tx.ctl();
        let used = c.head.load(Ordering::Relaxed) - c.tail.load(Ordering::Acquire);
        (used as usize) < self.tx.cap
    }

    /// Asks the consumer to ring once it has made room. Returns whether room appeared
    /// meanwhile (then the caller should just write again).
    pub fn want_room(&self) -> bool {
        self.tx.ctl().waiting.store(1, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        self.writable()
    }

    /// Announces that this rank is about to sleep. Returns `false` if bytes arrived
    /// meanwhile (then it must not sleep).
    pub fn prepare_sleep(&self) -> bool {
        self.rx.ctl().sleeping.store(1, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        !self.rx.readable()
    }

    /// Withdraws the sleep announcement after waking.
    pub fn woke(&self) {
        let c = self.rx.ctl();
        if c.sleeping.load(Ordering::Relaxed) != 0 {
            c.sleeping.store(0, Ordering::Relaxed);
        }
    }

    fn ring_doorbell(&self) {
        let b = 1u8;
        // SAFETY: a one-byte send on the pair's socket. EAGAIN means the socket
        // already holds unread doorbell bytes, which wakes the peer just as well.
        unsafe {
            libc::send(
                self.sock,
                (&b as *const u8).cast(),
                1,
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
    }

    /// The peer's process id (for cross-memory attach).
    pub fn peer_pid(&self) -> libc::pid_t {
        self.peer_pid
    }

    /// Whether the payload of a rendezvous from this peer can be read with
    /// `process_vm_readv`.
    pub fn cma(&self) -> bool {
        self.cma
    }

    /// Copies `len` bytes at address `remote` in the peer into `local` with one
    /// cross-memory read.
    ///
    /// # Safety
    /// `local` must have `len` writable bytes.
    pub unsafe fn cma_read(&self, local: *mut u8, remote: u64, len: usize) -> io::Result<()> {
        let mut done = 0usize;
        while done < len {
            let liov = libc::iovec {
                // SAFETY: within the caller's `len` bytes.
                iov_base: unsafe { local.add(done) }.cast(),
                iov_len: len - done,
            };
            let riov = libc::iovec {
                iov_base: (remote as usize + done) as *mut libc::c_void,
                iov_len: len - done,
            };
            // SAFETY: one local iovec we own, one remote iovec the kernel checks.
            let r = unsafe { libc::process_vm_readv(self.peer_pid, &liov, 1, &riov, 1, 0) };
            if r < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if r == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "process_vm_readv read nothing",
                ));
            }
            done += r as usize;
        }
        Ok(())
    }
}

/// Whether cross-memory attach is switched on (`DSMPI_SHM_CMA` is not `0`).
fn cma_enabled_by_env() -> bool {
    !matches!(
        std::env::var("DSMPI_SHM_CMA")
            .ok()
            .as_deref()
            .map(str::trim),
        Some("0") | Some("no") | Some("off")
    )
}

/// Under Yama's `ptrace_scope = 1` (Ubuntu's default) only an ancestor may read a
/// process's memory, so the peers' `process_vm_readv` would be refused. Open MPI
/// answers this as done here: the rank declares any process of its user a permitted
/// reader (`PR_SET_PTRACER_ANY`). Elsewhere (no Yama, or scope 0) nothing changes;
/// with `DSMPI_SHM_CMA=0` this is not done at all.
fn allow_peer_reads() {
    let scope = std::fs::read_to_string("/proc/sys/kernel/yama/ptrace_scope").ok();
    if scope.as_deref().map(str::trim) == Some("1") {
        // SAFETY: prctl with integer arguments only; failure leaves CMA to its probe.
        unsafe { libc::prctl(libc::PR_SET_PTRACER, libc::PR_SET_PTRACER_ANY, 0, 0, 0) };
    }
}

fn random_cookie() -> [u8; 16] {
    let mut c = [0u8; 16];
    // SAFETY: getrandom into a 16-byte stack buffer.
    let r = unsafe { libc::getrandom(c.as_mut_ptr().cast(), 16, 0) };
    if r != 16 {
        // Not secret, only a check against opening an unrelated process's fd: the
        // time and pid are unique enough for that.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        c.copy_from_slice(&(t ^ ((std::process::id() as u128) << 64)).to_le_bytes());
    }
    c
}

fn create_memfd(len: usize) -> io::Result<OwnedFd> {
    // SAFETY: memfd_create with a static NUL-terminated name; checked below.
    let fd = unsafe { libc::memfd_create(c"dsmpi-shm".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a descriptor memfd_create just gave us.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: ftruncate on the descriptor we own.
    if unsafe { libc::ftruncate(fd.as_raw_fd(), len as libc::off_t) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

/// Moves `len` bytes through a set-up socket before `deadline`: `step(done)` makes
/// one non-blocking system call for the bytes from `done` on and returns its result.
fn io_exact(
    fd: RawFd,
    len: usize,
    events: libc::c_short,
    deadline: Instant,
    mut step: impl FnMut(usize) -> isize,
) -> io::Result<()> {
    let mut done = 0;
    while done < len {
        wait_fd(fd, events, deadline)?;
        let r = step(done);
        if r < 0 {
            let e = io::Error::last_os_error();
            if matches!(
                e.kind(),
                io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock
            ) {
                continue;
            }
            return Err(e);
        }
        if r == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the peer closed its link during shared-memory set-up",
            ));
        }
        done += r as usize;
    }
    Ok(())
}

/// Writes all of `buf` to a set-up socket before `deadline`.
fn write_all(fd: RawFd, buf: &[u8], deadline: Instant) -> io::Result<()> {
    io_exact(fd, buf.len(), libc::POLLOUT, deadline, |done| {
        // SAFETY: sending from the unsent tail of a live slice.
        unsafe {
            libc::send(
                fd,
                buf[done..].as_ptr().cast(),
                buf.len() - done,
                libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
            )
        }
    })
}

/// Reads exactly `buf.len()` bytes before `deadline`.
fn read_exact(fd: RawFd, buf: &mut [u8], deadline: Instant) -> io::Result<()> {
    let len = buf.len();
    io_exact(fd, len, libc::POLLIN, deadline, |done| {
        // SAFETY: reading into the unfilled tail of a live slice.
        unsafe {
            libc::recv(
                fd,
                buf[done..].as_mut_ptr().cast(),
                len - done,
                libc::MSG_DONTWAIT,
            )
        }
    })
}

fn wait_fd(fd: RawFd, events: libc::c_short, deadline: Instant) -> io::Result<()> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "timed out during shared-memory set-up",
            ));
        }
        let mut p = libc::pollfd {
            fd,
            events,
            revents: 0,
        };
        let ms = left.as_millis().min(1000) as libc::c_int;
        // SAFETY: one pollfd on the stack.
        let r = unsafe { libc::poll(&mut p, 1, ms.max(1)) };
        if r > 0 {
            return Ok(());
        }
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }
}

fn u32_at(b: &[u8], i: usize) -> u32 {
    u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}

fn u64_at(b: &[u8], i: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[i..i + 8]);
    u64::from_le_bytes(x)
}

/// What the creator of a pair's mapping keeps until the answer comes.
struct Offered {
    fd: OwnedFd,
    map: Mapping,
    cap: usize,
}

/// Puts shared-memory rings under every link of rank `me` to a rank on its host.
///
/// `links[p]` is the connected stream socket to rank `p` (`None` at `me`), still
/// carrying nothing else; `same_host[p]` says whether `p` shares this host. Runs a
/// small exchange over each such socket, so every rank of the job must call it at
/// the same point of start-up. Returns one entry per rank: `Some` where the pair
/// agreed on a mapping, `None` where it stays on the socket (including when the
/// exchange fails for a reason local to the pair, which is printed with
/// `DSMPI_DEBUG`).
pub fn attach(
    me: usize,
    links: &[Option<OwnedFd>],
    same_host: &[bool],
    timeout: Duration,
) -> Result<Vec<Option<ShmLink>>> {
    let n = links.len();
    let local_peers = (0..n).filter(|&p| p != me && same_host[p]).count();
    let mut out: Vec<Option<ShmLink>> = (0..n).map(|_| None).collect();
    if local_peers == 0 {
        return Ok(out);
    }
    let cap = ring_bytes(local_peers);
    let deadline = Instant::now() + timeout;
    let debug = std::env::var_os("DSMPI_DEBUG").is_some();
    let cma = cma_enabled_by_env();
    if cma {
        allow_peer_reads();
    }
    let my_pid = std::process::id();
    let sock = |p: usize| links[p].as_ref().map(|f| f.as_raw_fd());
    let fail = |p: usize, what: &str, e: io::Error| {
        Error::io(
            format!("rank {me}: setting up shared memory with rank {p} ({what})"),
            e,
        )
    };

    // 1. Offer a mapping to every higher local rank. Offers are small: they fit the
    //    socket buffer, so writing all of them first cannot deadlock.
    let mut offered: Vec<Option<Offered>> = (0..n).map(|_| None).collect();
    let mut cookies = vec![[0u8; 16]; n];
    for p in me + 1..n {
        let Some(fd) = sock(p).filter(|_| same_host[p]) else {
            continue;
        };
        let len = map_len(cap);
        let made = create_memfd(len).and_then(|m| Mapping::map(m.as_raw_fd(), len).map(|x| (m, x)));
        let mut msg = [0u8; OFFER];
        msg[..8].copy_from_slice(MAGIC);
        msg[8..12].copy_from_slice(&my_pid.to_le_bytes());
        match made {
            Ok((mfd, map)) => {
                let cookie = random_cookie();
                // SAFETY: the header page is ours to write; the peer reads the
                // cookie only after mapping, which follows our write to the socket.
                unsafe {
                    std::ptr::copy_nonoverlapping(cookie.as_ptr(), map.base, 16);
                }
                cookies[p] = cookie;
                msg[12..16].copy_from_slice(&(mfd.as_raw_fd() as u32).to_le_bytes());
                msg[16..24].copy_from_slice(&(cap as u64).to_le_bytes());
                msg[24..40].copy_from_slice(&cookie);
                msg[40..48].copy_from_slice(&(map.base as u64).to_le_bytes());
                offered[p] = Some(Offered { fd: mfd, map, cap });
            }
            Err(e) => {
                if debug {
                    eprintln!("dsmpi: rank {me}: no shared memory with rank {p}: {e}");
                }
                // Size 0 says "no offer": the pair stays on its socket.
            }
        }
        write_all(fd, &msg, deadline).map_err(|e| fail(p, "sending the offer", e))?;
    }

    // 2. Answer every lower local rank's offer.
    for p in 0..me {
        let Some(fd) = sock(p).filter(|_| same_host[p]) else {
            continue;
        };
        let mut msg = [0u8; OFFER];
        read_exact(fd, &mut msg, deadline).map_err(|e| fail(p, "reading the offer", e))?;
        if &msg[..8] != MAGIC {
            return Err(Error::Bootstrap(format!(
                "rank {me}: rank {p} sent a malformed shared-memory offer"
            )));
        }
        let pid = u32_at(&msg, 8) as libc::pid_t;
        let mfd = u32_at(&msg, 12);
        let pcap = u64_at(&msg, 16) as usize;
        let cookie = &msg[24..40];
        let their_base = u64_at(&msg, 40);
        let mut answer = [0u8; ANSWER];
        answer[..8].copy_from_slice(NO);
        answer[16..20].copy_from_slice(&my_pid.to_le_bytes());
        if pcap > 0 && pcap.is_power_of_two() {
            match open_offer(pid, mfd, pcap, cookie) {
                Ok(map) => {
                    answer[..8].copy_from_slice(OK);
                    answer[8..16].copy_from_slice(&(map.base as u64).to_le_bytes());
                    let mut link = ShmLink::new(map, pcap, false, fd, pid);
                    link.cma = cma && probe_cma(&link, their_base, cookie);
                    out[p] = Some(link);
                }
                Err(e) => {
                    if debug {
                        eprintln!(
                            "dsmpi: rank {me}: cannot map rank {p}'s shared memory (pid {pid}, fd {mfd}): {e}"
                        );
                    }
                }
            }
        }
        write_all(fd, &answer, deadline).map_err(|e| fail(p, "answering the offer", e))?;
    }

    // 3. Collect the answers to our offers.
    for p in me + 1..n {
        let Some(fd) = sock(p).filter(|_| same_host[p]) else {
            continue;
        };
        let mut ans = [0u8; ANSWER];
        read_exact(fd, &mut ans, deadline).map_err(|e| fail(p, "reading the answer", e))?;
        if let Some(o) = offered[p].take() {
            drop(o.fd);
            if &ans[..8] == OK {
                let their_base = u64_at(&ans, 8);
                let pid = u32_at(&ans, 16) as libc::pid_t;
                let mut link = ShmLink::new(o.map, o.cap, true, fd, pid);
                link.cma = cma && pid > 0 && probe_cma(&link, their_base, &cookies[p]);
                out[p] = Some(link);
            } else if debug {
                eprintln!("dsmpi: rank {me}: rank {p} declined shared memory");
            }
        }
    }
    Ok(out)
}

/// Opens and maps a peer's memfd through `/proc`, and checks its cookie.
fn open_offer(pid: libc::pid_t, fd: u32, cap: usize, cookie: &[u8]) -> io::Result<Mapping> {
    let path = format!("/proc/{pid}/fd/{fd}\0");
    // SAFETY: a NUL-terminated path; checked below.
    let raw = unsafe { libc::open(path.as_ptr().cast(), libc::O_RDWR | libc::O_CLOEXEC) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a descriptor `open` just gave us; closed when mapped.
    let file = unsafe { OwnedFd::from_raw_fd(raw) };
    let len = map_len(cap);
    // SAFETY: fstat into a zeroed stat buffer.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(file.as_raw_fd(), &mut st) } < 0 {
        return Err(io::Error::last_os_error());
    }
    if (st.st_size as usize) < len {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "the offered memory is smaller than announced",
        ));
    }
    let map = Mapping::map(file.as_raw_fd(), len)?;
    // SAFETY: the header page holds 16 cookie bytes written before the offer was sent.
    let seen = unsafe { std::slice::from_raw_parts(map.base, 16) };
    if seen != cookie {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "the offered memory carries another cookie (a pid from another namespace?)",
        ));
    }
    Ok(map)
}

/// Tries one cross-memory read of the peer's cookie.
fn probe_cma(link: &ShmLink, their_base: u64, cookie: &[u8]) -> bool {
    let mut got = [0u8; 16];
    // SAFETY: 16 writable bytes on the stack.
    let ok = unsafe { link.cma_read(got.as_mut_ptr(), their_base, 16) }.is_ok();
    ok && got[..] == cookie[..]
}
