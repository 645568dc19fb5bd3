//! The matching and rendezvous engine shared by every byte-stream transport.
//!
//! One engine per rank owns one non-blocking stream socket per peer (TCP for the mesh,
//! Unix socket pairs for ranks-as-threads). Between ranks on one host, a pair of
//! shared-memory rings ([`super::shm`]) carries the same frames instead, and the
//! socket only rings doorbells and tells when the peer is gone. It implements MPI's
//! point-to-point rules:
//!
//! - **Matching.** Posted receives wait in post order; arrived messages nobody asked
//!   for wait in arrival order in the *unexpected* queue. A new message takes the
//!   first posted receive it matches; a new receive takes the first unexpected message
//!   it matches. One sender's frames arrive in order on its socket, so messages from
//!   one sender never overtake each other.
//! - **Eager** (at most `eager_limit` bytes): header and payload are sent at once and
//!   complete the send immediately. A payload that meets a posted receive is read
//!   straight into the user's buffer.
//! - **Rendezvous** (larger): the sender sends `RTS`, the receiver answers `CTS` once a
//!   receive is posted, and the payload goes from the sender's buffer straight into the
//!   receiver's, so a receiver never buffers a large message it did not ask for.
//! - **Coalescing.** Frames queue per peer and leave in one `sendmsg` of many iovecs;
//!   small ones are copied into a shared buffer so a burst of small sends costs a few
//!   system calls, not one each.
//! - **Blocking fast paths** (same-host peers): a blocking send of an eager message
//!   with nothing queued ahead of it goes straight into the ring, and a blocking
//!   receive from one source takes an eager frame straight off that source's ring
//!   into the caller's buffer, after checking that no unexpected message and no
//!   posted receive has an earlier claim on it. Neither makes a request or touches a
//!   read buffer; anything else (rendezvous, truncation, a frame another receive
//!   wants, frames of ours waiting to go out) takes the general path below.
//! - **Non-blocking fast paths** (same-host peers). An `isend` whose eager frame goes
//!   into the ring is complete as it is posted: it returns [`Posted::Done`] and makes
//!   no request. Eager frames at the head of a ring that match posted receives are
//!   copied from the ring straight into those receives' buffers, with one ring
//!   advance per batch (`ring_into_posted`). Together: 8 B message rate
//!   (64 in flight) 3.6 → 4.7 M msg/s, 10 alternating runs.
//! - **Progress** happens inside calls, under one lock. A waiting thread first polls
//!   (the rings on every turn, `epoll_wait(0)` on the sockets) for `spin` counted from
//!   the last time bytes moved (a blocking wake-up costs ~25–30 µs against ~4 µs
//!   busy-polled on this machine), giving its core away between looks once the answer
//!   is late (5 µs over rings, 10 µs over sockets); then one waiter sleeps in
//!   `epoll_wait` while the others sleep on a condition variable; whoever completes a
//!   request wakes them.
//! - **Fewer wake-ups with several threads per rank** (a window's service thread
//!   beside the main thread). Same-host peers ring the sleeper's doorbell only while
//!   no other thread of the rank spins on the rings: a spinner moves every frame
//!   itself, and the last one to stop raises the sleeper's flags again (moving what
//!   came meanwhile itself). The sleeper is woken by other threads only for what it
//!   waits for ([`Interest`]), not for every completion. And small frames no longer
//!   keep idle threads spinning ([`BULK_MOVE`]). Measured with 2 ranks on 2 cores: a
//!   remote page fault 21 µs against 39 µs (median of 5 alternating runs each),
//!   8 B latency and accumulates unchanged.
//! - **Failure.** A socket that closes without a `BYE` marks its rank lost: every
//!   request that involves it fails with [`Error::PeerLost`], and so does every later
//!   one, instead of hanging.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::poller::{Poller, WAKER};
use super::shm::ShmLink;
use super::wire::{Header, Kind, HDR, NO_REQ};
use super::{Completion, Posted, RawStatus, RecvTarget, ReqId, Transport};
use crate::error::{Error, Result};
use crate::Tag;

/// Token of a listening socket kept in the epoll set to turn away late connections.
const LISTENER: u64 = u64::MAX - 1;
/// Read buffer per peer: one `read` picks up many small frames.
const RBUF: usize = 64 * 1024;
/// A payload with at least this much left is read straight into its destination.
const DIRECT_MIN: usize = 16 * 1024;
/// Bytes moved in one go over a shared-memory ring that count as a long transfer in
/// progress, which keeps every waiter of the rank polling ([`State::moved`]). Small
/// frames do not: a busy thread exchanging small messages (a window's requests, a
/// ping-pong) would otherwise keep the rank's idle threads spinning for ever, one
/// more runnable thread per core, where a sleeping one costs nothing (its doorbell is
/// not rung while another thread spins). Over sockets any bytes count: a thread
/// asleep in `epoll_wait` is woken by the kernel for every frame whoever reads it,
/// and there two spinning threads did better than one spinning and one woken per
/// frame (8 B window gets over TCP: 19 µs against 61 µs, medians of 4 alternating
/// runs each).
const BULK_MOVE: usize = 16 * 1024;
/// Most bytes one `sendmsg` or one direct `read` moves on a socket link. Sending
/// and receiving on a TCP socket take the same socket lock, and a call holds it while
/// it copies: a 1 MiB `sendmsg` keeps the peer's incoming data waiting in the
/// backlog, a 1 MiB `read` keeps our own ACKs and window updates from going out, so
/// two ranks exchanging large messages take turns instead of overlapping. In 256 KiB
/// pieces both directions flow. Measured with `dsmpi_bench --ops
/// latency,scatter,alltoall` under `dsmexec --transport tcp -n 2` (5–6 interleaved
/// runs, medians): 1 MiB all-to-all 388–408 µs against 535–552 µs unchunked (Open MPI
/// over TCP 373–383 in the same runs); chunking only the sends or only the reads
/// did not help (557, 583 µs), nor did 128 KiB pieces (486 µs); point-to-point and
/// scatter stayed within noise.
const SOCKET_CHUNK: usize = 256 * 1024;
/// Small frames are appended to a shared send buffer up to this size.
const COALESCE_MAX: usize = 256 * 1024;
/// At most this many iovecs per `sendmsg`.
const MAX_IOV: usize = 64;
/// With shared-memory peers, a spinning waiter looks at the epoll set (other hosts,
/// doorbells, ends of links) once every this many looks at the rings.
const SHM_EPOLL_EVERY: u32 = 16;
/// With shared-memory peers, how long a waiter spins on the CPU before it starts
/// yielding its core between looks at the rings.
const SHM_PAUSE_SPIN: Duration = Duration::from_micros(5);
/// The same over sockets, where a loopback round trip takes several microseconds.
/// Measured with `ex10_1_pingpong` under `dsmexec --transport tcp -n 2` on a busy
/// 2-core machine: without yielding, runs where the scheduler had put both ranks on
/// one core took 96 µs per 8-byte round trip (each rank spun out its whole 50 µs
/// before sleeping) against 7 µs in the others.
const PAUSE_SPIN: Duration = Duration::from_micros(10);

/// The outstanding requests, by id: a slot vector with a free list. An id is the
/// slot's index in its low 32 bits and the slot's generation in its high 32, so a
/// lookup is an index and a compare (a hash map cost more than the rest of a small
/// shared-memory send), and an id that came back from the wire stale or forged finds
/// nothing instead of someone else's request.
#[derive(Debug, Default)]
struct Reqs {
    slots: Vec<(u32, Option<Req>)>,
    free: Vec<u32>,
}

impl Reqs {
    /// Reserves a slot; it holds nothing until [`Reqs::insert`].
    fn alloc(&mut self) -> ReqId {
        let idx = match self.free.pop() {
            Some(i) => i,
            None => {
                self.slots.push((0, None));
                (self.slots.len() - 1) as u32
            }
        };
        let slot = &mut self.slots[idx as usize];
        // Generation 0 and u32::MAX are never used: no id is 0 or NO_REQ.
        slot.0 = match slot.0.wrapping_add(1) {
            0 | u32::MAX => 1,
            g => g,
        };
        ((slot.0 as u64) << 32) | idx as u64
    }

    fn slot(&self, id: ReqId) -> Option<&(u32, Option<Req>)> {
        self.slots
            .get((id & 0xffff_ffff) as usize)
            .filter(|s| s.0 == (id >> 32) as u32)
    }

    fn get(&self, id: &ReqId) -> Option<&Req> {
        self.slot(*id).and_then(|s| s.1.as_ref())
    }

    fn get_mut(&mut self, id: &ReqId) -> Option<&mut Req> {
        self.slot(*id)?;
        self.slots[(*id & 0xffff_ffff) as usize].1.as_mut()
    }

    /// Sets the request of a reserved (or live) id.
    fn insert(&mut self, id: ReqId, req: Req) {
        if self.slot(id).is_some() {
            self.slots[(id & 0xffff_ffff) as usize].1 = Some(req);
        }
    }

    /// Takes a request out and frees its slot.
    fn remove(&mut self, id: &ReqId) -> Option<Req> {
        self.slot(*id)?;
        let idx = (*id & 0xffff_ffff) as u32;
        let r = self.slots[idx as usize].1.take();
        self.free.push(idx);
        r
    }

    /// Frees a reserved id that will not be used.
    fn release(&mut self, id: ReqId) {
        let _ = self.remove(&id);
    }

    fn iter(&self) -> impl Iterator<Item = (ReqId, &Req)> + '_ {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, (g, r))| r.as_ref().map(|r| (((*g as u64) << 32) | i as u64, r)))
    }
}

/// Tunables of an engine.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Largest message sent eagerly; larger ones use the rendezvous.
    pub eager_limit: usize,
    /// How long a waiting thread polls, with nothing moving, before it sleeps.
    pub spin: Duration,
    /// Whether a polling thread yields its core between polls (more ranks than cores
    /// on this host): the rank it waits for may need that core to send.
    pub yield_while_spinning: bool,
}

impl EngineConfig {
    /// Defaults, overridden by `DSMPI_EAGER_LIMIT` (bytes) and `DSMPI_SPIN_US`.
    ///
    /// When more ranks share the host than it has cores, a polling rank yields its
    /// core between polls (`sched_yield`), as Open MPI does when oversubscribed: the
    /// rank it waits for gets the core, yet the wait still ends without a 25–30 µs
    /// wake-up from sleep. Measured with `ex10_1_pingpong` under `dsmexec -n 4` on 2
    /// cores: sleeping at once gave a 46 µs round trip for 8 B, yielding 7 µs.
    pub fn from_env(ranks_on_host: usize) -> EngineConfig {
        let cores = crate::bootstrap::host_cpus();
        let default_spin = 50;
        let num = |var: &str, default: u64| {
            std::env::var(var)
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or(default)
        };
        EngineConfig {
            eager_limit: num("DSMPI_EAGER_LIMIT", 64 * 1024) as usize,
            spin: Duration::from_micros(num("DSMPI_SPIN_US", default_spin)),
            yield_while_spinning: ranks_on_host > cores,
        }
    }
}

/// A raw pointer the engine may hold across threads.
///
/// The engine only dereferences it while the owning request is outstanding, which the
/// `unsafe` contracts of [`Transport::isend`]/[`Transport::irecv`] make valid.
#[derive(Clone, Copy, Debug)]
struct Ptr(*mut u8);
// SAFETY: see the type's comment: validity is guaranteed by the request contract,
// and all access happens under the engine's lock.
unsafe impl Send for Ptr {}

/// A receive's destination, in the engine's own terms.
#[derive(Clone, Copy, Debug)]
enum Target {
    Buf(Ptr, usize),
    Alloc,
}

impl From<RecvTarget> for Target {
    fn from(t: RecvTarget) -> Target {
        match t {
            RecvTarget::Buffer { ptr, cap } => Target::Buf(Ptr(ptr), cap),
            RecvTarget::Allocate => Target::Alloc,
        }
    }
}

#[derive(Debug)]
enum Req {
    /// A receive in the posted queue.
    Posted {
        src: Option<usize>,
        ctx: u64,
        tag: Option<Tag>,
        target: Target,
    },
    /// A receive whose message is matched and whose payload is on its way.
    Receiving {
        src: usize,
        tag: Tag,
        len: usize,
        target: Target,
    },
    /// A rendezvous send waiting for clear-to-send.
    SendRts {
        dest: usize,
        tag: Tag,
        ptr: Ptr,
        len: usize,
    },
    /// A rendezvous send whose payload is queued on the socket.
    SendData { dest: usize, tag: Tag, len: usize },
    /// Finished; waiting to be collected by `test`/`wait`.
    Done(Result<Completion>),
}

/// What a waiting thread waits for: while it sleeps in `epoll_wait`, other threads
/// wake it only when that happens (see [`State::poller_wants`]).
#[derive(Clone, Copy, Debug)]
enum Interest<'a> {
    /// The completion of one of these requests.
    Reqs(&'a [ReqId]),
    /// Anything: a frame, a message queued as unexpected, a lost peer.
    Anything,
}

/// Where a blocking receive's fast path puts a message.
enum Dst<'a> {
    /// The caller's buffer.
    Buf(&'a mut [u8]),
    /// A new allocation of the message's size.
    Alloc,
}

/// What [`Engine::take_from_ring`] found.
enum RingTake {
    /// The message, now in the buffer (or in the allocation, returned here).
    Got(RawStatus, Option<Vec<u8>>),
    /// No whole frame yet: look again.
    Nothing,
    /// Something the general path must handle (or no ring at all).
    Elsewhere,
}

#[derive(Debug)]
enum Body {
    Data(Vec<u8>),
    /// A request-to-send: the sender's request and its buffer's address (for a
    /// cross-memory read on a same-host link).
    Rts {
        sreq: u64,
        addr: u64,
    },
}

#[derive(Debug)]
struct Unexpected {
    src: usize,
    ctx: u64,
    tag: Tag,
    len: usize,
    body: Body,
}

#[derive(Debug)]
enum Sink {
    Mem(Ptr),
    Discard,
}

#[derive(Debug)]
enum Then {
    /// Complete receive `req`; `heap` is the allocation the payload went into, if any.
    Recv {
        req: ReqId,
        status: RawStatus,
        heap: Option<Vec<u8>>,
    },
    /// An eager message nobody has asked for yet; `data` holds it.
    Unexpected { ctx: u64, tag: Tag, data: Vec<u8> },
    /// Fail `req` with `err` once the payload is skipped.
    Fail { req: ReqId, err: Error },
    /// Skip the payload.
    Drop,
}

#[derive(Debug)]
enum Rx {
    Header {
        buf: [u8; HDR],
        got: usize,
    },
    Payload {
        sink: Sink,
        len: usize,
        got: usize,
        then: Then,
    },
}

impl Rx {
    fn header() -> Rx {
        Rx::Header {
            buf: [0; HDR],
            got: 0,
        }
    }
}

#[derive(Debug)]
enum TxItem {
    Buf(Vec<u8>),
    Borrowed { ptr: Ptr, len: usize, req: ReqId },
}

impl TxItem {
    fn len(&self) -> usize {
        match self {
            TxItem::Buf(v) => v.len(),
            TxItem::Borrowed { len, .. } => *len,
        }
    }
}

#[derive(Debug)]
struct Peer {
    fd: Option<OwnedFd>,
    raw: RawFd,
    rbuf: Vec<u8>,
    rpos: usize,
    rlen: usize,
    rx: Rx,
    txq: VecDeque<TxItem>,
    tx_off: usize,
    /// A written-out send buffer kept for the next frames, so a steady stream of small
    /// messages does not allocate one buffer per message.
    spare: Vec<u8>,
    want_out: bool,
    dirty: bool,
    bye_sent: bool,
    bye_recvd: bool,
    lost: Option<String>,
}

impl Peer {
    fn new(fd: Option<OwnedFd>) -> Peer {
        let raw = fd.as_ref().map(|f| f.as_raw_fd()).unwrap_or(-1);
        Peer {
            fd,
            raw,
            rbuf: Vec::new(),
            rpos: 0,
            rlen: 0,
            rx: Rx::header(),
            txq: VecDeque::new(),
            tx_off: 0,
            spare: Vec::new(),
            want_out: false,
            dirty: false,
            bye_sent: false,
            bye_recvd: false,
            lost: None,
        }
    }
}

#[derive(Debug)]
struct State {
    peers: Vec<Peer>,
    reqs: Reqs,
    posted: VecDeque<ReqId>,
    unexpected: VecDeque<Unexpected>,
    dirty: Vec<usize>,
    events: Vec<(u64, u32)>,
    /// A thread is asleep in `epoll_wait` without the lock.
    poller_busy: bool,
    /// What the thread asleep in `epoll_wait` waits for: one of these requests, or
    /// (`poller_any`) anything that happens (a probe, finalize). Only then is it woken
    /// by another thread's progress ([`State::wake_poller`]); waking it for every
    /// completion cost a wake-up per message to a rank with an idle second thread.
    poller_wants: Vec<ReqId>,
    poller_any: bool,
    /// Something the thread asleep in `epoll_wait` waits for happened.
    wake_poller: bool,
    /// Threads polling the shared-memory rings (spinning in a blocking call): while
    /// one does, the thread asleep in `epoll_wait` needs no doorbell (see
    /// [`Engine::spin_begin`]).
    spinners: u32,
    /// The sleep flags in the incoming rings are raised for the thread asleep in
    /// `epoll_wait` (some may have been lowered since by peers that rang for it).
    armed: bool,
    /// Threads asleep on the condition variable.
    waiters: usize,
    /// Requests completed since the last wake-up.
    completed: usize,
    /// The first peer lost, for failing any-source receives.
    first_lost: Option<usize>,
    /// The peer data last came from: what a spinning waiter reads directly.
    last_peer: Option<usize>,
    /// Calls of `progress`, to look at the epoll set every few of them.
    progress_calls: u32,
    /// Bumped whenever a long transfer moves bytes on a link (at least [`BULK_MOVE`] at
    /// once): a waiter keeps polling while they do.
    moved: u64,
    /// Until when a same-host peer is probably still copying a rendezvous payload
    /// out of this rank's memory (cross-memory attach): the sender sees nothing move
    /// meanwhile, yet its answer comes soon, so it polls until then.
    peer_copying_until: Option<Instant>,
    finalized: bool,
}

/// The per-rank engine: see the module documentation.
#[derive(Debug)]
pub struct Engine {
    me: usize,
    n: usize,
    hosts: Vec<String>,
    backend: &'static str,
    cfg: EngineConfig,
    st: Mutex<State>,
    cv: Condvar,
    poll: Poller,
    listener: Option<OwnedFd>,
    /// Told (once, under the lock) the first time a peer vanishes without goodbye.
    on_peer_lost: std::sync::OnceLock<Hook>,
    /// Peers linked by shared memory, whose rings a waiting thread polls directly.
    shm_peers: Vec<usize>,
    /// Shared-memory rings replacing the socket's data path, by rank (same-host
    /// peers; the socket then only carries doorbells and the end of the link). Set
    /// once, so outside the lock: a blocking receive watches its ring's counters
    /// without taking it (see [`Engine::fast_recv`]). Producer and consumer calls
    /// that move bytes still happen under the lock.
    links: Vec<Option<ShmLink>>,
}

/// A callback for the first peer lost; see [`Engine::on_peer_lost`].
pub type PeerLostHook = Box<dyn Fn(usize) + Send + Sync>;

struct Hook(PeerLostHook);

impl std::fmt::Debug for Hook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PeerLostHook")
    }
}

fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor the caller owns.
    unsafe {
        let fl = libc::fcntl(fd, libc::F_GETFL);
        if fl < 0 || libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

impl Engine {
    /// Builds the engine of rank `me` from one connected stream socket per peer
    /// (`links[me]` is `None`). `listener`, if given, stays open so that connections
    /// arriving after start-up are accepted and dropped with a log line instead of
    /// hanging in the backlog.
    pub fn new(
        me: usize,
        links: Vec<Option<OwnedFd>>,
        hosts: Vec<String>,
        backend: &'static str,
        cfg: EngineConfig,
        listener: Option<OwnedFd>,
    ) -> Result<Engine> {
        let shm = (0..links.len()).map(|_| None).collect();
        Self::with_shm(me, links, shm, hosts, backend, cfg, listener)
    }

    /// Like [`Engine::new`], with shared-memory rings (from [`super::shm::attach`])
    /// carrying the frames of the peers that have one; their sockets stay as
    /// doorbells and to tell when the peer is gone.
    pub fn with_shm(
        me: usize,
        links: Vec<Option<OwnedFd>>,
        shm: Vec<Option<ShmLink>>,
        hosts: Vec<String>,
        backend: &'static str,
        cfg: EngineConfig,
        listener: Option<OwnedFd>,
    ) -> Result<Engine> {
        let n = links.len();
        assert_eq!(shm.len(), n, "one shared-memory slot per rank");
        let shm_peers: Vec<usize> = (0..n).filter(|&p| shm[p].is_some()).collect();
        let backend = match (shm_peers.len(), backend) {
            (0, b) => b,
            (k, "local") if k + 1 == n => "shm",
            (k, "tcp") if k + 1 == n => "shm",
            (_, "tcp") => "tcp+shm",
            (_, _) => "local+shm",
        };
        assert_eq!(hosts.len(), n, "one host name per rank");
        let poll = Poller::new().map_err(|e| Error::io("creating epoll set", e))?;
        let mut peers = Vec::with_capacity(n);
        for (p, fd) in links.into_iter().enumerate() {
            if let Some(fd) = &fd {
                let raw = fd.as_raw_fd();
                set_nonblocking(raw).map_err(|e| Error::io("making a link non-blocking", e))?;
                poll.add(raw, p as u64, false)
                    .map_err(|e| Error::io("watching a link", e))?;
            } else if p != me {
                return Err(Error::Bootstrap(format!(
                    "no link from rank {me} to rank {p}"
                )));
            }
            let mut peer = Peer::new(fd);
            if p != me {
                peer.rbuf = vec![0; RBUF];
            }
            peers.push(peer);
        }
        if let Some(l) = &listener {
            set_nonblocking(l.as_raw_fd()).map_err(|e| Error::io("listener", e))?;
            poll.add(l.as_raw_fd(), LISTENER, false)
                .map_err(|e| Error::io("watching the listener", e))?;
        }
        Ok(Engine {
            me,
            n,
            hosts,
            backend,
            cfg,
            st: Mutex::new(State {
                peers,
                reqs: Reqs::default(),
                posted: VecDeque::new(),
                unexpected: VecDeque::new(),
                dirty: Vec::new(),
                events: Vec::with_capacity(64),
                poller_busy: false,
                spinners: 0,
                armed: false,
                poller_wants: Vec::new(),
                poller_any: false,
                wake_poller: false,
                waiters: 0,
                completed: 0,
                first_lost: None,
                last_peer: None,
                progress_calls: 0,
                moved: 0,
                peer_copying_until: None,
                finalized: false,
            }),
            cv: Condvar::new(),
            poll,
            listener,
            on_peer_lost: std::sync::OnceLock::new(),
            shm_peers,
            links: shm,
        })
    }

    /// Registers `hook` to be called with the world rank of the first peer that
    /// vanishes (links closed without finalize). The runtime uses it to tell the
    /// launcher who died first. Only the first registration counts.
    pub fn on_peer_lost(&self, hook: PeerLostHook) {
        let _ = self.on_peer_lost.set(Hook(hook));
    }

    /// The engine's tunables.
    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves the state consistent enough to tear
        // down: every mutation is completed before any call that could panic.
        self.st.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lost_error(&self, st: &State, p: usize) -> Error {
        Error::PeerLost {
            rank: p,
            host: self.hosts[p].clone(),
            reason: st.peers[p]
                .lost
                .clone()
                .unwrap_or_else(|| "it finalized".to_string()),
        }
    }

    // ----- request bookkeeping -------------------------------------------------

    fn new_id(st: &mut State) -> ReqId {
        st.reqs.alloc()
    }

    fn finish(st: &mut State, req: ReqId, r: Result<Completion>) {
        if let Some(slot) = st.reqs.get_mut(&req) {
            *slot = Req::Done(r);
            st.completed += 1;
            if st.poller_busy && (st.poller_any || st.poller_wants.contains(&req)) {
                st.wake_poller = true;
            }
        }
    }

    /// Something other than a completion that may end a wait happened (a message
    /// queued as unexpected, for a probe; a lost peer): wake the waiters on the
    /// condition variable, and the one in `epoll_wait` if it waits for anything (a
    /// posted receive would have matched the message; a request that fails has its
    /// own completion).
    fn news(st: &mut State) {
        st.completed += 1;
        if st.poller_busy && st.poller_any {
            st.wake_poller = true;
        }
    }

    fn matches(
        spec_src: Option<usize>,
        spec_ctx: u64,
        spec_tag: Option<Tag>,
        src: usize,
        ctx: u64,
        tag: Tag,
    ) -> bool {
        spec_ctx == ctx && spec_src.is_none_or(|s| s == src) && spec_tag.is_none_or(|t| t == tag)
    }

    /// Where the first posted receive matching a message sits in `posted`.
    fn find_posted(st: &State, src: usize, ctx: u64, tag: Tag) -> Option<usize> {
        st.posted.iter().position(|id| match st.reqs.get(id) {
            Some(Req::Posted {
                src: s,
                ctx: c,
                tag: t,
                ..
            }) => Self::matches(*s, *c, *t, src, ctx, tag),
            _ => false,
        })
    }

    /// Removes and returns the first posted receive matching a message.
    fn match_posted(st: &mut State, src: usize, ctx: u64, tag: Tag) -> Option<(ReqId, Target)> {
        let pos = Self::find_posted(st, src, ctx, tag)?;
        let id = st.posted.remove(pos)?;
        match st.reqs.get(&id) {
            Some(Req::Posted { target, .. }) => Some((id, *target)),
            _ => None,
        }
    }

    /// Completes receive `req` with a message already whole in memory.
    fn deliver(st: &mut State, req: ReqId, target: Target, status: RawStatus, bytes: Vec<u8>) {
        let r = match target {
            Target::Buf(ptr, cap) => {
                if bytes.len() > cap {
                    Err(Error::Truncated {
                        sender: status.source,
                        tag: status.tag,
                        len: bytes.len(),
                        capacity: cap,
                    })
                } else {
                    // SAFETY: `ptr` has `cap >= len` writable bytes for as long as the
                    // request is outstanding (irecv's contract); it is outstanding now.
                    unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), ptr.0, bytes.len()) };
                    Ok(Completion { status, data: None })
                }
            }
            Target::Alloc => Ok(Completion {
                status,
                data: Some(bytes),
            }),
        };
        Self::finish(st, req, r);
    }

    /// The receive `req` accepts rendezvous `sreq` from `src`: answer clear-to-send.
    #[allow(clippy::too_many_arguments)]
    fn accept_rts(
        &self,
        st: &mut State,
        req: ReqId,
        target: Target,
        src: usize,
        ctx: u64,
        tag: Tag,
        len: usize,
        sreq: u64,
        addr: u64,
    ) {
        let mut cts = Header::new(Kind::Cts, ctx, tag, len as u64);
        cts.a = sreq;
        if let Some(done) = self.cma_receive(target, src, tag, len, addr) {
            // The payload is already here: "clear to send" with no request tells the
            // sender its buffer is free, as after a truncation.
            cts.b = NO_REQ;
            Self::finish(st, req, done);
            Self::push_frame(st, src, &cts.encode(), &[]);
            return;
        }
        match target {
            Target::Buf(_, cap) if len > cap => {
                cts.b = NO_REQ;
                Self::finish(
                    st,
                    req,
                    Err(Error::Truncated {
                        sender: src,
                        tag,
                        len,
                        capacity: cap,
                    }),
                );
            }
            _ => {
                cts.b = req;
                st.reqs.insert(
                    req,
                    Req::Receiving {
                        src,
                        tag,
                        len,
                        target,
                    },
                );
            }
        }
        Self::push_frame(st, src, &cts.encode(), &[]);
    }

    /// Copies a rendezvous payload straight out of a same-host sender's memory with
    /// one cross-memory read, when its link allows it. `None`: use the ring instead.
    fn cma_receive(
        &self,
        target: Target,
        src: usize,
        tag: Tag,
        len: usize,
        addr: u64,
    ) -> Option<Result<Completion>> {
        let link = self.links[src].as_ref().filter(|l| l.cma() && addr != 0)?;
        let status = RawStatus {
            source: src,
            tag,
            bytes: len,
        };
        match target {
            Target::Buf(ptr, cap) if len <= cap => {
                // SAFETY: a posted receive buffer with `cap >= len` writable bytes.
                unsafe { link.cma_read(ptr.0, addr, len) }
                    .ok()
                    .map(|()| Ok(Completion { status, data: None }))
            }
            Target::Buf(..) => None,
            Target::Alloc => {
                let mut heap = Vec::with_capacity(len);
                // SAFETY: `heap` has room for `len` bytes; they count as its contents
                // only once the read has filled them all.
                unsafe { link.cma_read(heap.as_mut_ptr(), addr, len) }
                    .ok()
                    .map(|()| {
                        // SAFETY: the read filled all `len` bytes.
                        unsafe { heap.set_len(len) };
                        Ok(Completion {
                            status,
                            data: Some(heap),
                        })
                    })
            }
        }
    }

    // ----- sending ---------------------------------------------------------------

    /// Queues a header and a small payload (copied) on a peer's link.
    fn push_frame(st: &mut State, p: usize, hdr: &[u8], payload: &[u8]) {
        let peer = &mut st.peers[p];
        let need = hdr.len() + payload.len();
        let append = match peer.txq.back() {
            Some(TxItem::Buf(v)) => v.len() + need <= COALESCE_MAX.max(v.capacity()),
            _ => false,
        };
        if !append {
            let buf = if peer.spare.capacity() >= need {
                std::mem::take(&mut peer.spare)
            } else {
                Vec::with_capacity(need.max(4096))
            };
            peer.txq.push_back(TxItem::Buf(buf));
        }
        if let Some(TxItem::Buf(v)) = peer.txq.back_mut() {
            v.extend_from_slice(hdr);
            v.extend_from_slice(payload);
        }
        if !peer.dirty {
            peer.dirty = true;
            st.dirty.push(p);
        }
    }

    /// Writes as much of a peer's queue as the socket takes now.
    fn flush_peer(&self, st: &mut State, p: usize) {
        let mut done_reqs: Vec<ReqId> = Vec::new();
        let mut failure: Option<String> = None;
        let mut wrote = 0usize;
        {
            let peer = &mut st.peers[p];
            if peer.lost.is_some() || peer.fd.is_none() {
                peer.txq.clear();
                return;
            }
            while !peer.txq.is_empty() {
                let mut iov = [libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0,
                }; MAX_IOV];
                let mut cnt = 0;
                let mut budget = if self.links[p].is_none() {
                    SOCKET_CHUNK
                } else {
                    usize::MAX
                };
                for (i, item) in peer.txq.iter().take(MAX_IOV).enumerate() {
                    if budget == 0 {
                        break;
                    }
                    let skip = if i == 0 { peer.tx_off } else { 0 };
                    let (base, len) = match item {
                        TxItem::Buf(v) => (v.as_ptr() as *mut u8, v.len()),
                        TxItem::Borrowed { ptr, len, .. } => (ptr.0, *len),
                    };
                    // SAFETY: `skip <= len`; borrowed items point at live send buffers.
                    let take = (len - skip).min(budget);
                    budget -= take;
                    iov[cnt] = libc::iovec {
                        iov_base: unsafe { base.add(skip) }.cast(),
                        iov_len: take,
                    };
                    cnt += 1;
                }
                if let Some(link) = &self.links[p] {
                    let mut bufs: [&[u8]; MAX_IOV] = [&[]; MAX_IOV];
                    for (b, v) in bufs.iter_mut().zip(&iov[..cnt]) {
                        // SAFETY: each iovec was built above from a live queue item.
                        *b = unsafe {
                            std::slice::from_raw_parts(v.iov_base as *const u8, v.iov_len)
                        };
                    }
                    let n = link.send(&bufs[..cnt]);
                    if n == 0 {
                        // Ring full: a waiting thread retries as it polls the rings,
                        // and one about to sleep asks the reader to ring once it has
                        // made room (`prepare_sleep`), so a reader that keeps up pays
                        // no doorbell.
                        peer.want_out = true;
                        break;
                    }
                    Self::advance_tx(peer, n, &mut done_reqs);
                    wrote += n;
                    continue;
                }
                // SAFETY: a zeroed msghdr is valid; iov points at `cnt` initialized iovecs.
                let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
                msg.msg_iov = iov.as_mut_ptr();
                msg.msg_iovlen = cnt as _;
                // MSG_NOSIGNAL: a dead peer gives EPIPE, not a process-killing SIGPIPE.
                let r = unsafe {
                    libc::sendmsg(peer.raw, &msg, libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT)
                };
                if r < 0 {
                    let e = io::Error::last_os_error();
                    match e.kind() {
                        io::ErrorKind::Interrupted => continue,
                        io::ErrorKind::WouldBlock => {
                            if !peer.want_out && self.poll.modify(peer.raw, p as u64, true).is_ok()
                            {
                                peer.want_out = true;
                            }
                            break;
                        }
                        _ => {
                            failure = Some(format!("sending to it failed: {e}"));
                            break;
                        }
                    }
                }
                Self::advance_tx(peer, r as usize, &mut done_reqs);
                wrote += r as usize;
            }
            // A ring's reader rings when it makes room; a socket's writability was
            // watched in epoll and no longer needs to be.
            if peer.txq.is_empty()
                && peer.want_out
                && (self.links[p].is_some() || self.poll.modify(peer.raw, p as u64, false).is_ok())
            {
                peer.want_out = false;
            }
        }
        if wrote > 0 && self.long_transfer(p, wrote) {
            st.moved = st.moved.wrapping_add(1);
        }
        for req in done_reqs {
            if let Some(Req::SendData { dest, tag, len }) = st.reqs.get(&req) {
                let status = RawStatus {
                    source: *dest,
                    tag: *tag,
                    bytes: *len,
                };
                Self::finish(st, req, Ok(Completion { status, data: None }));
            }
        }
        if let Some(reason) = failure {
            self.lose_peer(st, p, reason);
        }
    }

    /// Drops `n` written bytes from the front of a peer's queue, collecting the
    /// borrowed sends that are now complete.
    fn advance_tx(peer: &mut Peer, mut n: usize, done_reqs: &mut Vec<ReqId>) {
        while n > 0 {
            let Some(front) = peer.txq.front() else { break };
            let left = front.len() - peer.tx_off;
            if n >= left {
                n -= left;
                peer.tx_off = 0;
                match peer.txq.pop_front() {
                    Some(TxItem::Borrowed { req, .. }) => done_reqs.push(req),
                    Some(TxItem::Buf(mut v))
                        if v.capacity() <= COALESCE_MAX && v.capacity() > peer.spare.capacity() =>
                    {
                        v.clear();
                        peer.spare = v;
                    }
                    _ => {}
                }
            } else {
                peer.tx_off += n;
                n = 0;
            }
        }
        // Zero-length borrowed items complete without bytes.
        while let Some(TxItem::Borrowed { len: 0, .. }) = peer.txq.front() {
            if let Some(TxItem::Borrowed { req, .. }) = peer.txq.pop_front() {
                done_reqs.push(req);
            }
        }
    }

    // ----- receiving -------------------------------------------------------------

    /// Reads everything a peer's socket has now and acts on the frames.
    fn read_peer(&self, st: &mut State, p: usize) {
        if self.links[p].is_some() {
            self.ring_into_posted(st, p);
        }
        let mut drained = false;
        loop {
            if let Err(why) = self.consume(st, p) {
                self.lose_peer(st, p, why);
                return;
            }
            // A read shorter than asked for emptied the socket; asking again would only
            // cost a system call that says EAGAIN. Level-triggered epoll reports more.
            if drained {
                return;
            }
            let peer = &mut st.peers[p];
            if peer.lost.is_some() || peer.fd.is_none() {
                return;
            }
            peer.rpos = 0;
            peer.rlen = 0;
            let piece = if self.links[p].is_none() {
                SOCKET_CHUNK
            } else {
                usize::MAX
            };
            let direct = match &peer.rx {
                Rx::Payload {
                    sink: Sink::Mem(ptr),
                    len,
                    got,
                    ..
                } if len - got >= DIRECT_MIN => Some((ptr.0, *got, (len - got).min(piece))),
                _ => None,
            };
            let (dst, want) = match direct {
                // SAFETY: the sink has `len` writable bytes (a posted receive buffer or
                // an allocation sized to the message); we write its unfilled tail.
                Some((ptr, got, left)) => (unsafe { ptr.add(got) }, left),
                None => (peer.rbuf.as_mut_ptr(), RBUF),
            };
            let r = match &self.links[p] {
                // SAFETY: `dst` has `want` writable bytes (see above).
                Some(link) => match unsafe { link.recv(dst, want) } {
                    0 => return,
                    n => n as isize,
                },
                // SAFETY: as above.
                None => unsafe { libc::read(peer.raw, dst.cast(), want) },
            };
            if r < 0 {
                let e = io::Error::last_os_error();
                match e.kind() {
                    io::ErrorKind::Interrupted => continue,
                    io::ErrorKind::WouldBlock => return,
                    _ => {
                        self.lose_peer(st, p, format!("its connection failed: {e}"));
                        return;
                    }
                }
            }
            if r == 0 {
                self.on_eof(st, p);
                return;
            }
            let n = r as usize;
            st.last_peer = Some(p);
            if direct.is_some() || self.long_transfer(p, n) {
                st.moved = st.moved.wrapping_add(1);
            }
            let peer = &mut st.peers[p];
            drained = n < direct.map_or(RBUF, |(_, _, left)| left);
            if direct.is_some() {
                let finished = match &mut peer.rx {
                    Rx::Payload { len, got, .. } => {
                        *got += n;
                        *got == *len
                    }
                    Rx::Header { .. } => false,
                };
                if finished {
                    self.finish_payload(st, p);
                }
            } else {
                peer.rlen = n;
            }
        }
    }

    /// Posted receives' fast path over a ring: the eager frames at the head of `p`'s
    /// ring that the earliest matching posted receive takes, into a buffer large
    /// enough, are copied straight from the ring into that buffer, and the ring is
    /// advanced once for all of them. The general path copies each frame into the
    /// read buffer first and walks it through the receive state machine; in a stream
    /// of small messages into posted receives (a message-rate window) that was the
    /// receiver's largest cost. The first frame that is anything else ends the walk
    /// and is left, with everything after it, to the general path.
    fn ring_into_posted(&self, st: &mut State, p: usize) {
        let Some(link) = self.links[p].as_ref() else {
            return;
        };
        let peer = &st.peers[p];
        if st.posted.is_empty()
            || peer.lost.is_some()
            || peer.rpos < peer.rlen
            || !matches!(peer.rx, Rx::Header { got: 0, .. })
        {
            return;
        }
        let avail = link.available();
        let (mut skip, mut bulk) = (0, false);
        while avail - skip >= HDR {
            let mut hb = [0u8; HDR];
            // SAFETY: `hb` has HDR bytes and the ring holds at least `skip + HDR`.
            unsafe { link.peek(skip, hb.as_mut_ptr(), HDR) };
            let Some(h) = Header::decode(&hb).filter(|h| h.kind == Kind::Eager) else {
                break;
            };
            let len = match usize::try_from(h.len) {
                Ok(len) if len <= avail - skip - HDR => len,
                _ => break,
            };
            let Some(pos) = Self::find_posted(st, p, h.ctx, h.tag) else {
                break;
            };
            let ptr = match st.reqs.get(&st.posted[pos]) {
                Some(Req::Posted {
                    target: Target::Buf(ptr, cap),
                    ..
                }) if len <= *cap => *ptr,
                // Truncations and allocating receives: the general path.
                _ => break,
            };
            let Some(req) = st.posted.remove(pos) else {
                break;
            };
            // SAFETY: the receive's buffer has `cap >= len` writable bytes while it is
            // outstanding (irecv's contract), and the ring holds the whole frame.
            unsafe { link.peek(skip + HDR, ptr.0, len) };
            skip += HDR + len;
            bulk |= len >= BULK_MOVE;
            let status = RawStatus {
                source: p,
                tag: h.tag,
                bytes: len,
            };
            Self::finish(st, req, Ok(Completion { status, data: None }));
        }
        if skip > 0 {
            link.consume(skip);
            st.last_peer = Some(p);
            if bulk {
                st.moved = st.moved.wrapping_add(1);
            }
            if st.poller_busy && st.poller_any {
                // As for any header (see `on_header`).
                st.wake_poller = true;
            }
        }
    }

    fn on_eof(&self, st: &mut State, p: usize) {
        let peer = &mut st.peers[p];
        if let Some(fd) = peer.fd.take() {
            let _ = self.poll.remove(fd.as_raw_fd());
        }
        if !peer.bye_recvd || !matches!(peer.rx, Rx::Header { got: 0, .. }) {
            self.lose_peer(
                st,
                p,
                "it closed its connection without finalizing (it probably died)".into(),
            );
        }
    }

    /// Processes the bytes buffered in `rbuf[rpos..rlen]`.
    fn consume(&self, st: &mut State, p: usize) -> Result<(), String> {
        loop {
            let peer = &mut st.peers[p];
            if peer.rpos >= peer.rlen {
                return Ok(());
            }
            let avail = peer.rlen - peer.rpos;
            match &mut peer.rx {
                Rx::Header { buf, got } => {
                    let k = avail.min(HDR - *got);
                    buf[*got..*got + k].copy_from_slice(&peer.rbuf[peer.rpos..peer.rpos + k]);
                    *got += k;
                    peer.rpos += k;
                    if *got == HDR {
                        let h = Header::decode(buf)
                            .ok_or_else(|| "it sent a corrupt frame header".to_string())?;
                        peer.rx = Rx::header();
                        self.on_header(st, p, h)?;
                    }
                }
                Rx::Payload { sink, len, got, .. } => {
                    let k = avail.min(*len - *got);
                    if let Sink::Mem(ptr) = sink {
                        // SAFETY: the sink has `len` writable bytes (see read_peer).
                        unsafe {
                            std::ptr::copy_nonoverlapping(
                                peer.rbuf.as_ptr().add(peer.rpos),
                                ptr.0.add(*got),
                                k,
                            )
                        };
                    }
                    *got += k;
                    peer.rpos += k;
                    if *got == *len {
                        self.finish_payload(st, p);
                    }
                }
            }
        }
    }

    /// Sets up the receiving side of a payload, finishing at once if it is empty.
    fn expect_payload(&self, st: &mut State, p: usize, sink: Sink, len: usize, then: Then) {
        st.peers[p].rx = Rx::Payload {
            sink,
            len,
            got: 0,
            then,
        };
        if len == 0 {
            self.finish_payload(st, p);
        }
    }

    fn on_header(&self, st: &mut State, p: usize, h: Header) -> Result<(), String> {
        if st.poller_busy && st.poller_any {
            // The sleeper waits for anything (a peer's goodbye, at finalize).
            st.wake_poller = true;
        }
        let len = usize::try_from(h.len).map_err(|_| "it sent an impossible length".to_string())?;
        match h.kind {
            Kind::Eager => {
                let status = RawStatus {
                    source: p,
                    tag: h.tag,
                    bytes: len,
                };
                match Self::match_posted(st, p, h.ctx, h.tag) {
                    Some((req, Target::Buf(ptr, cap))) if len <= cap => {
                        st.reqs.insert(
                            req,
                            Req::Receiving {
                                src: p,
                                tag: h.tag,
                                len,
                                target: Target::Buf(ptr, cap),
                            },
                        );
                        self.expect_payload(
                            st,
                            p,
                            Sink::Mem(ptr),
                            len,
                            Then::Recv {
                                req,
                                status,
                                heap: None,
                            },
                        );
                    }
                    Some((req, Target::Buf(_, cap))) => {
                        let err = Error::Truncated {
                            sender: p,
                            tag: h.tag,
                            len,
                            capacity: cap,
                        };
                        self.expect_payload(st, p, Sink::Discard, len, Then::Fail { req, err });
                    }
                    Some((req, Target::Alloc)) => {
                        // Filled through the sink, then given its length (no zeroing).
                        let mut heap = Vec::with_capacity(len);
                        let ptr = Ptr(heap.as_mut_ptr());
                        st.reqs.insert(
                            req,
                            Req::Receiving {
                                src: p,
                                tag: h.tag,
                                len,
                                target: Target::Alloc,
                            },
                        );
                        self.expect_payload(
                            st,
                            p,
                            Sink::Mem(ptr),
                            len,
                            Then::Recv {
                                req,
                                status,
                                heap: Some(heap),
                            },
                        );
                    }
                    None => {
                        // Filled through the sink, then given its length.
                        let mut data = Vec::with_capacity(len);
                        let ptr = Ptr(data.as_mut_ptr());
                        self.expect_payload(
                            st,
                            p,
                            Sink::Mem(ptr),
                            len,
                            Then::Unexpected {
                                ctx: h.ctx,
                                tag: h.tag,
                                data,
                            },
                        );
                    }
                }
            }
            Kind::Rts => match Self::match_posted(st, p, h.ctx, h.tag) {
                Some((req, target)) => {
                    self.accept_rts(st, req, target, p, h.ctx, h.tag, len, h.a, h.b)
                }
                None => {
                    Self::news(st);
                    st.unexpected.push_back(Unexpected {
                        src: p,
                        ctx: h.ctx,
                        tag: h.tag,
                        len,
                        body: Body::Rts {
                            sreq: h.a,
                            addr: h.b,
                        },
                    });
                }
            },
            Kind::Cts => match st.reqs.get(&h.a) {
                Some(Req::SendRts {
                    dest,
                    tag,
                    ptr,
                    len,
                }) if *dest == p => {
                    let (dest, tag, ptr, len) = (*dest, *tag, *ptr, *len);
                    if h.b == NO_REQ {
                        let status = RawStatus {
                            source: dest,
                            tag,
                            bytes: len,
                        };
                        Self::finish(st, h.a, Ok(Completion { status, data: None }));
                    } else {
                        let mut data = Header::new(Kind::Data, h.ctx, tag, len as u64);
                        data.a = h.b;
                        Self::push_frame(st, p, &data.encode(), &[]);
                        st.peers[p]
                            .txq
                            .push_back(TxItem::Borrowed { ptr, len, req: h.a });
                        st.reqs.insert(h.a, Req::SendData { dest, tag, len });
                    }
                }
                _ => return Err(format!("it sent clear-to-send for unknown request {}", h.a)),
            },
            Kind::Data => match st.reqs.get(&h.a) {
                Some(Req::Receiving {
                    src,
                    tag,
                    len: want,
                    target,
                }) if *src == p => {
                    if *want != len {
                        return Err(format!(
                            "rendezvous length {len} differs from announced {want}"
                        ));
                    }
                    let status = RawStatus {
                        source: p,
                        tag: *tag,
                        bytes: len,
                    };
                    let req = h.a;
                    match *target {
                        Target::Buf(ptr, _) => self.expect_payload(
                            st,
                            p,
                            Sink::Mem(ptr),
                            len,
                            Then::Recv {
                                req,
                                status,
                                heap: None,
                            },
                        ),
                        Target::Alloc => {
                            // Filled through the sink, then given its length (no zeroing).
                            let mut heap = Vec::with_capacity(len);
                            let ptr = Ptr(heap.as_mut_ptr());
                            self.expect_payload(
                                st,
                                p,
                                Sink::Mem(ptr),
                                len,
                                Then::Recv {
                                    req,
                                    status,
                                    heap: Some(heap),
                                },
                            )
                        }
                    }
                }
                // The receive is gone (its rank is tearing down): skip the bytes.
                _ => self.expect_payload(st, p, Sink::Discard, len, Then::Drop),
            },
            Kind::Bye => st.peers[p].bye_recvd = true,
        }
        Ok(())
    }

    fn finish_payload(&self, st: &mut State, p: usize) {
        let rx = std::mem::replace(&mut st.peers[p].rx, Rx::header());
        let Rx::Payload { then, len, got, .. } = rx else {
            return;
        };
        // Heap sinks are made with capacity only; the payload is whole now (finish
        // comes at got == len), so its bytes become the contents.
        debug_assert_eq!(got, len);
        let whole = |mut v: Vec<u8>| {
            if got == len && v.capacity() >= len {
                // SAFETY: the sink wrote bytes 0..len of this allocation.
                unsafe { v.set_len(len) };
            }
            v
        };
        match then {
            Then::Recv { req, status, heap } => {
                let heap = heap.map(whole);
                Self::finish(st, req, Ok(Completion { status, data: heap }));
            }
            Then::Unexpected { ctx, tag, data } => {
                let data = whole(data);
                let status = RawStatus {
                    source: p,
                    tag,
                    bytes: data.len(),
                };
                // A receive may have been posted while the payload was arriving.
                match Self::match_posted(st, p, ctx, tag) {
                    Some((req, target)) => Self::deliver(st, req, target, status, data),
                    None => {
                        Self::news(st);
                        st.unexpected.push_back(Unexpected {
                            src: p,
                            ctx,
                            tag,
                            len: status.bytes,
                            body: Body::Data(data),
                        });
                    }
                }
            }
            Then::Fail { req, err } => Self::finish(st, req, Err(err)),
            Then::Drop => {}
        }
    }

    /// Whether `n` bytes moved at once on `p`'s link count as a long transfer under
    /// way (which keeps waiters polling; see [`BULK_MOVE`]): over a ring, at least
    /// `BULK_MOVE`; over a socket, any.
    fn long_transfer(&self, p: usize, n: usize) -> bool {
        n >= BULK_MOVE || self.links[p].is_none()
    }

    /// Marks a peer lost and fails everything that waits on it.
    fn lose_peer(&self, st: &mut State, p: usize, reason: String) {
        if st.peers[p].lost.is_some() {
            return;
        }
        let peer = &mut st.peers[p];
        peer.lost = Some(reason);
        if let Some(fd) = peer.fd.take() {
            let _ = self.poll.remove(fd.as_raw_fd());
        }
        peer.txq.clear();
        peer.rx = Rx::header();
        if st.first_lost.is_none() && !st.peers[p].bye_recvd {
            st.first_lost = Some(p);
            if let Some(hook) = self.on_peer_lost.get() {
                (hook.0)(p);
            }
        }
        let err = self.lost_error(st, p);
        let any_fails = !st.peers[p].bye_recvd;
        let victims: Vec<ReqId> = st
            .reqs
            .iter()
            .filter(|(_, r)| match r {
                Req::Posted { src: Some(s), .. } => *s == p,
                Req::Posted { src: None, .. } => any_fails,
                Req::Receiving { src, .. } => *src == p,
                Req::SendRts { dest, .. } | Req::SendData { dest, .. } => *dest == p,
                Req::Done(_) => false,
            })
            .map(|(id, _)| id)
            .collect();
        for id in victims {
            st.posted.retain(|x| *x != id);
            Self::finish(st, id, Err(err.clone()));
        }
        // Probes and any-source waits learn of it too.
        Self::news(st);
    }

    // ----- progress and waiting --------------------------------------------------

    /// Flushes queued frames and handles whatever the sockets have, without blocking.
    fn progress(&self, st: &mut State) -> Result<()> {
        self.flush_dirty(st);
        if !self.shm_peers.is_empty() {
            // Rings ring no bell while this rank is awake: look at them, and at the
            // sockets (other hosts, ends of links) only every few calls, since a
            // `test` loop calls this back to back and `epoll_wait` costs more than
            // the whole of a shared-memory message.
            self.poll_shm(st);
            st.progress_calls = st.progress_calls.wrapping_add(1);
            if !st.progress_calls.is_multiple_of(SHM_EPOLL_EVERY) {
                return Ok(());
            }
        }
        self.poll_once(st)
    }

    /// Writes the frames queued since the last flush.
    fn flush_dirty(&self, st: &mut State) {
        while !st.dirty.is_empty() {
            let mut dirty = std::mem::take(&mut st.dirty);
            for &p in &dirty {
                st.peers[p].dirty = false;
                self.flush_peer(st, p);
            }
            // Keep the allocation for next time.
            dirty.clear();
            if st.dirty.is_empty() {
                st.dirty = dirty;
            }
        }
        self.wake_waiters(st);
    }

    /// Handles whatever the sockets have now, then flushes what that queued.
    fn poll_once(&self, st: &mut State) -> Result<()> {
        let mut events = std::mem::take(&mut st.events);
        self.poll
            .wait(&mut events, 0)
            .map_err(|e| Error::io("polling links", e))?;
        for &(tok, bits) in &events {
            match tok {
                WAKER => {}
                LISTENER => self.turn_away(),
                p if self.links[p as usize].is_some() => self.shm_event(st, p as usize),
                p => {
                    let p = p as usize;
                    if bits & libc::EPOLLOUT as u32 != 0 {
                        self.flush_peer(st, p);
                    }
                    if bits
                        & (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLHUP | libc::EPOLLERR)
                            as u32
                        != 0
                    {
                        self.read_peer(st, p);
                    }
                }
            }
        }
        st.events = events;
        // Frames queued while handling (clear-to-send, rendezvous data) go out now.
        self.flush_dirty(st);
        Ok(())
    }

    /// A same-host peer's socket spoke: doorbell bytes (read and dropped) or the end
    /// of the link. Either way, move what its rings hold.
    fn shm_event(&self, st: &mut State, p: usize) {
        let raw = st.peers[p].raw;
        let mut eof = false;
        let mut rung = false;
        if st.peers[p].fd.is_some() {
            let mut buf = [0u8; 64];
            loop {
                // SAFETY: reading into a stack buffer of 64 bytes.
                let r = unsafe { libc::recv(raw, buf.as_mut_ptr().cast(), 64, libc::MSG_DONTWAIT) };
                rung |= r > 0;
                if r == 64 {
                    continue;
                }
                if r < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                // A reset or any other error ends the link like an end of file.
                eof = r == 0
                    || (r < 0 && io::Error::last_os_error().kind() != io::ErrorKind::WouldBlock);
                break;
            }
        }
        if st.peers[p].want_out {
            self.flush_peer(st, p);
        }
        // Everything the peer wrote before closing is in the ring: read it all first.
        self.read_peer(st, p);
        if eof {
            self.on_eof(st, p);
        }
        if rung && st.poller_busy && st.armed {
            // The bell was rung for the thread asleep in `epoll_wait`, and the peer
            // cleared that thread's sleep flag in ringing it. Taken here, the bell no
            // longer wakes it (its `epoll_wait` finds the socket empty and sleeps on),
            // and with no flag raised later frames ring no bell: wake it, so that it
            // raises its flags again before it sleeps. (Not armed: a spinning thread
            // watches the rings for it and re-arms when the last one stops.)
            self.poll.wake();
        }
    }

    /// Moves whatever the shared-memory rings hold, without a system call.
    fn poll_shm(&self, st: &mut State) {
        for &p in &self.shm_peers {
            let peer = &st.peers[p];
            let Some(link) = self.links[p].as_ref().filter(|_| peer.fd.is_some()) else {
                continue;
            };
            let (readable, retry) = (link.readable(), peer.want_out && link.writable());
            if retry {
                self.flush_peer(st, p);
            }
            if readable {
                st.last_peer = Some(p);
                self.read_peer(st, p);
            }
        }
        self.flush_dirty(st);
    }

    /// Raises the sleep flag in every incoming ring. `false` if a ring has bytes or
    /// room appeared for a blocked send: then the caller must not sleep.
    fn prepare_sleep(&self, st: &State) -> bool {
        self.shm_peers.iter().all(|&p| {
            let peer = &st.peers[p];
            match self.links[p].as_ref().filter(|_| peer.fd.is_some()) {
                Some(link) => link.prepare_sleep() && !(peer.want_out && link.want_room()),
                None => true,
            }
        })
    }

    /// A thread starts polling the rings in a blocking call. While some thread does,
    /// the one asleep in `epoll_wait` needs no doorbell: a spinning thread moves
    /// every frame (completing requests wakes their waiters), so its flags are
    /// lowered and peers write without a system call. This saves a wake-up per
    /// frame when a rank has two waiting threads (a window's service thread spinning
    /// for requests, the main thread asleep in a barrier), which on a small host is
    /// a third runnable thread per message.
    fn spin_begin(&self, st: &mut State) {
        st.spinners += 1;
        if st.spinners == 1 && st.armed {
            self.woke();
            st.armed = false;
        }
    }

    /// A thread stops polling the rings. The last one hands the watch back to the
    /// thread asleep in `epoll_wait`: it raises that thread's flags. Raising, then
    /// looking (a fence between, as in [`ShmLink::prepare_sleep`]) pairs with a
    /// peer's write, then look at the flag: a frame written as the last spinner stops
    /// is either seen here or rings. Frames seen here are moved here (they are often
    /// the next request for this very thread, which should not cost the sleeper a
    /// wake-up); if they keep coming, the sleeper is woken to watch.
    fn spin_end(&self, st: &mut State) {
        st.spinners = st.spinners.saturating_sub(1);
        if st.spinners == 0 && st.poller_busy && !st.armed {
            for _ in 0..4 {
                if self.prepare_sleep(st) {
                    st.armed = true;
                    return;
                }
                self.woke();
                self.poll_shm(st);
            }
            self.poll.wake();
        }
    }

    /// Lowers the sleep flags raised by [`Engine::prepare_sleep`].
    fn woke(&self) {
        for &p in &self.shm_peers {
            if let Some(link) = &self.links[p] {
                link.woke();
            }
        }
    }

    /// Wakes the threads that may be waiting for requests completed since the last
    /// call: sleepers on the condition variable and the one asleep in `epoll_wait`.
    fn wake_waiters(&self, st: &mut State) {
        if st.completed > 0 {
            st.completed = 0;
            if st.waiters > 0 {
                self.cv.notify_all();
            }
        }
        if st.wake_poller {
            st.wake_poller = false;
            if st.poller_busy {
                self.poll.wake();
            }
        }
    }

    /// Accepts and drops a connection that arrived after start-up.
    fn turn_away(&self) {
        let Some(l) = &self.listener else { return };
        loop {
            // SAFETY: a zeroed sockaddr_storage is valid; accept4 fills at most `len`.
            let mut addr: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
            let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            let fd = unsafe {
                libc::accept4(
                    l.as_raw_fd(),
                    (&mut addr as *mut libc::sockaddr_storage).cast(),
                    &mut len,
                    libc::SOCK_CLOEXEC,
                )
            };
            if fd < 0 {
                return;
            }
            // SAFETY: accept4 returned a fresh descriptor that we own and close now.
            drop(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) });
            eprintln!(
                "dsmpi: rank {}: dropped a connection from {} that arrived after start-up (no job connection is expected now)",
                self.me,
                super::tcp::describe_sockaddr(&addr)
            );
        }
    }

    /// Makes progress until `check` returns `Some`, spinning then sleeping.
    fn wait_until<R>(
        &self,
        interest: Interest<'_>,
        check: impl FnMut(&mut State) -> Option<R>,
    ) -> Result<R> {
        self.wait_locked(self.lock(), interest, check)
    }

    /// [`Engine::wait_until`] for a caller that already holds the lock.
    fn wait_locked<'g, R>(
        &'g self,
        mut st: MutexGuard<'g, State>,
        interest: Interest<'_>,
        mut check: impl FnMut(&mut State) -> Option<R>,
    ) -> Result<R> {
        let mut start = Instant::now();
        let mut events = Vec::new();
        let mut spins = 0u32;
        let shm = !self.shm_peers.is_empty();
        let mut seen = st.moved;
        // Whether this thread counts in `State::spinners` (shared-memory ranks only);
        // every way out of the loop below stops counting first.
        let mut spinning = shm;
        if spinning {
            self.spin_begin(&mut st);
        }
        let out = 'wait: loop {
            // Queued frames first: an eager send is complete once written, and needs
            // no look at the sockets.
            self.flush_dirty(&mut st);
            if let Some(r) = check(&mut st) {
                break 'wait Ok(r);
            }
            if shm {
                // Rings are memory: look at them on every turn, and at the sockets
                // (other hosts, doorbells, ends of links) only now and then.
                self.poll_shm(&mut st);
                if let Some(r) = check(&mut st) {
                    break 'wait Ok(r);
                }
            }
            if !shm || spins.is_multiple_of(SHM_EPOLL_EVERY) {
                if let Err(e) = self.poll_once(&mut st) {
                    break 'wait Err(e);
                }
                if let Some(r) = check(&mut st) {
                    break 'wait Ok(r);
                }
            }
            // The spin counts from the last time bytes moved: a long transfer keeps
            // its waiter polling (each wake-up from sleep costs tens of µs), and the
            // sleep comes after `spin` of silence.
            if st.moved != seen {
                seen = st.moved;
                start = Instant::now();
            }
            let mut spun = start.elapsed();
            if let Some(until) = st.peer_copying_until {
                let now = Instant::now();
                if now < until {
                    spun = spun.min(self.cfg.spin / 2);
                } else {
                    st.peer_copying_until = None;
                }
            }
            if spun < self.cfg.spin {
                if shm && !spinning {
                    spinning = true;
                    self.spin_begin(&mut st);
                }
                drop(st);
                // A quiet peer answers within a microsecond or two over shared memory,
                // a few over loopback TCP; past that it is probably waiting for a core
                // (other ranks, other jobs, or this very core: the scheduler may put
                // both ranks on one), so give ours away between looks rather than
                // hold it until the spin ends.
                let pause_only = if shm { SHM_PAUSE_SPIN } else { PAUSE_SPIN };
                if self.cfg.yield_while_spinning || spun > pause_only {
                    std::thread::yield_now();
                } else {
                    for _ in 0..if shm { 4 } else { 32 } {
                        std::hint::spin_loop();
                    }
                }
                st = self.lock();
                if shm {
                    spins = spins.wrapping_add(1);
                    continue;
                }
                // Between looks at the whole epoll set, read the peer that spoke last
                // directly: in a ping-pong that is the one about to answer, and one
                // `read` is cheaper than `epoll_wait` plus `read`.
                spins += 1;
                if !spins.is_multiple_of(4) {
                    if let Some(p) = st.last_peer.filter(|&p| st.peers[p].fd.is_some()) {
                        self.read_peer(&mut st, p);
                        self.flush_dirty(&mut st);
                        if let Some(r) = check(&mut st) {
                            break 'wait Ok(r);
                        }
                    }
                    // A large send stuck on a full socket: retry it now rather than
                    // wait for epoll to report the socket writable.
                    for p in 0..self.n {
                        if st.peers[p].want_out {
                            self.flush_peer(&mut st, p);
                        }
                    }
                    self.wake_waiters(&mut st);
                    if let Some(r) = check(&mut st) {
                        break 'wait Ok(r);
                    }
                }
                continue;
            }
            if spinning {
                spinning = false;
                self.spin_end(&mut st);
                // Stopping may have moved frames (for the sleeper, or ours): look
                // before sleeping, as the wake-up for them has already been given.
                if let Some(r) = check(&mut st) {
                    break 'wait Ok(r);
                }
            }
            if !st.poller_busy {
                // With another thread spinning on the rings, sleep without flags:
                // that thread moves the frames, and raises them when it stops.
                let arm = shm && st.spinners == 0;
                if arm && !self.prepare_sleep(&st) {
                    self.woke();
                    continue;
                }
                st.armed = arm;
                st.poller_busy = true;
                st.wake_poller = false;
                st.poller_wants.clear();
                match interest {
                    Interest::Reqs(ids) => {
                        st.poller_any = false;
                        st.poller_wants.extend_from_slice(ids);
                    }
                    Interest::Anything => st.poller_any = true,
                }
                drop(st);
                // No timeout: every event that can end this wait (a frame, a completion by
                // another thread, a send to self, a queued frame, teardown, a doorbell
                // rung by a same-host peer) wakes it.
                let r = self.poll.wait(&mut events, -1);
                st = self.lock();
                st.poller_busy = false;
                // Past the spin: every further turn looks at the epoll set too.
                spins = 0;
                if shm {
                    self.woke();
                }
                st.armed = false;
                // Hand the poller role (and any completion) to the sleepers.
                if st.waiters > 0 {
                    self.cv.notify_all();
                }
                if let Err(e) = r {
                    break 'wait Err(Error::io("waiting on links", e));
                }
            } else {
                st.waiters += 1;
                st = self
                    .cv
                    .wait_timeout(st, Duration::from_millis(1000))
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
                st.waiters -= 1;
                spins = 0;
            }
        };
        if spinning {
            self.spin_end(&mut st);
        }
        out
    }

    /// Writes an eager frame straight into `dest`'s ring when nothing is queued ahead
    /// of it (no queue, no copy into a send buffer); what does not fit is queued like
    /// any frame. Returns `false`, having done nothing, for a peer without a ring or
    /// with frames queued.
    fn eager_into_ring(&self, st: &mut State, dest: usize, h: &[u8; HDR], bytes: &[u8]) -> bool {
        let peer = &mut st.peers[dest];
        let link = match &self.links[dest] {
            Some(link) if peer.txq.is_empty() => link,
            _ => return false,
        };
        let n = link.send(&[h, bytes]);
        if n < HDR + bytes.len() {
            let mut rest = Vec::with_capacity(HDR + bytes.len() - n);
            rest.extend_from_slice(&h[n.min(HDR)..]);
            rest.extend_from_slice(&bytes[n.saturating_sub(HDR)..]);
            peer.txq.push_back(TxItem::Buf(rest));
            if !peer.dirty {
                peer.dirty = true;
                st.dirty.push(dest);
            }
        }
        true
    }

    /// The blocking receive's fast path: takes the next frame of `s`'s ring straight
    /// into `buf` when it is an eager message this receive matches and nothing ahead
    /// of it (an unexpected message, a posted receive, bytes half-read by the general
    /// path) has a claim on it. No request, no read buffer, no header copy beyond one
    /// look. Anything else is left to the general path, which keeps every rule.
    fn take_from_ring(
        &self,
        st: &mut State,
        s: usize,
        ctx: u64,
        tag: Option<Tag>,
        dst: &mut Dst<'_>,
    ) -> RingTake {
        let peer = &st.peers[s];
        let link = match &self.links[s] {
            Some(link)
                if peer.lost.is_none()
                    && peer.rpos >= peer.rlen
                    && matches!(peer.rx, Rx::Header { got: 0, .. }) =>
            {
                link
            }
            _ => return RingTake::Elsewhere,
        };
        // An earlier message already taken off the ring comes first.
        if !st.unexpected.is_empty() && Self::find_unexpected(st, Some(s), ctx, tag).is_some() {
            return RingTake::Elsewhere;
        }
        let avail = link.available();
        if avail < HDR {
            return RingTake::Nothing;
        }
        let mut hb = [0u8; HDR];
        // SAFETY: `hb` has HDR bytes and the ring holds at least HDR unread ones.
        unsafe { link.peek(0, hb.as_mut_ptr(), HDR) };
        let h = match Header::decode(&hb) {
            // A corrupt header is the general path's to report.
            Some(h) if h.kind == Kind::Eager => h,
            _ => return RingTake::Elsewhere,
        };
        let len = h.len as usize;
        // A longer message is a truncation, which the general path reports.
        let too_long = matches!(dst, Dst::Buf(b) if len > b.len());
        if !Self::matches(Some(s), ctx, tag, s, h.ctx, h.tag) || too_long {
            return RingTake::Elsewhere;
        }
        if avail - HDR < len {
            return RingTake::Nothing;
        }
        // A receive posted earlier that matches this message takes it first.
        let claimed = st.posted.iter().any(|id| match st.reqs.get(id) {
            Some(Req::Posted {
                src,
                ctx: c,
                tag: t,
                ..
            }) => Self::matches(*src, *c, *t, s, h.ctx, h.tag),
            _ => false,
        });
        if claimed {
            return RingTake::Elsewhere;
        }
        let heap = match dst {
            Dst::Buf(b) => {
                // SAFETY: `b` has `len <= b.len()` bytes, and the ring holds the whole
                // frame (`HDR + len <= avail`).
                unsafe { link.peek(HDR, b.as_mut_ptr(), len) };
                None
            }
            Dst::Alloc => {
                let mut v = Vec::with_capacity(len);
                // SAFETY: `v` has capacity `len`, all of which the peek writes before
                // the length is set; the ring holds the whole frame.
                unsafe {
                    link.peek(HDR, v.as_mut_ptr(), len);
                    v.set_len(len);
                }
                Some(v)
            }
        };
        link.consume(HDR + len);
        st.last_peer = Some(s);
        if len >= BULK_MOVE {
            st.moved = st.moved.wrapping_add(1);
        }
        RingTake::Got(
            RawStatus {
                source: s,
                tag: h.tag,
                bytes: len,
            },
            heap,
        )
    }

    /// [`Engine::take_from_ring`] for a receive from `src`, or from any source when
    /// every other rank is a same-host peer (rings are looked at in turn, starting
    /// after the one that spoke last; messages from different senders have no order
    /// among them).
    fn take_from_rings(
        &self,
        st: &mut State,
        src: Option<usize>,
        ctx: u64,
        tag: Option<Tag>,
        dst: &mut Dst<'_>,
    ) -> RingTake {
        match src {
            Some(s) if s < self.n && s != self.me => self.take_from_ring(st, s, ctx, tag, dst),
            Some(_) => RingTake::Elsewhere,
            None => {
                if self.shm_peers.len() + 1 != self.n
                    || Self::find_unexpected(st, None, ctx, tag).is_some()
                {
                    return RingTake::Elsewhere;
                }
                let k = self.shm_peers.len();
                let after = st
                    .last_peer
                    .and_then(|p| self.shm_peers.iter().position(|&q| q == p))
                    .map_or(0, |i| i + 1);
                for i in 0..k {
                    let p = self.shm_peers[(after + i) % k];
                    match self.take_from_ring(st, p, ctx, tag, dst) {
                        RingTake::Nothing => {}
                        other => return other,
                    }
                }
                RingTake::Nothing
            }
        }
    }

    /// The blocking receives' fast path: polls the rings alone (see
    /// [`Engine::take_from_rings`]) for as long as a quiet same-host peer takes to
    /// answer. `None` when the general path must take over: past that time, when
    /// anything else has a claim on the message, or when frames of ours wait to go
    /// out.
    fn fast_recv(
        &self,
        src: Option<usize>,
        ctx: u64,
        tag: Option<Tag>,
        dst: &mut Dst<'_>,
    ) -> Result<Option<(RawStatus, Option<Vec<u8>>)>> {
        if self.shm_peers.is_empty() {
            return Ok(None);
        }
        let mut started: Option<Instant> = None;
        let mut turns = 0u32;
        let mut st = self.lock();
        // A spinner for as long as it watches (see `spin_begin`).
        self.spin_begin(&mut st);
        let out = loop {
            if let Err(e) = self.check_open(&st) {
                break Err(e);
            }
            match self.take_from_rings(&mut st, src, ctx, tag, dst) {
                RingTake::Got(status, heap) => break Ok(Some((status, heap))),
                RingTake::Elsewhere => break Ok(None),
                RingTake::Nothing if !st.dirty.is_empty() => break Ok(None),
                RingTake::Nothing => {}
            }
            drop(st);
            // Watch the ring's counters without the lock until bytes come (a look
            // is then one load of a line the sender writes), and take the lock for
            // a full look at least every 16th turn, when the clock is read too: a
            // look costs ~50 ns, a clock read about as much on a VM.
            let timed_out = loop {
                if turns.is_multiple_of(16) {
                    let t0 = *started.get_or_insert_with(Instant::now);
                    if t0.elapsed() > SHM_PAUSE_SPIN {
                        break true;
                    }
                }
                turns = turns.wrapping_add(1);
                if self.cfg.yield_while_spinning {
                    std::thread::yield_now();
                } else {
                    // One PAUSE (~140 cycles on recent x86): a frame that lands
                    // meanwhile is seen within ~50 ns.
                    std::hint::spin_loop();
                }
                if turns.is_multiple_of(16) || self.rings_readable(src) {
                    break false;
                }
            };
            st = self.lock();
            if timed_out {
                break Ok(None);
            }
        };
        self.spin_end(&mut st);
        out
    }

    /// Whether the ring of `src` (of any same-host peer for `None`) holds unread
    /// bytes, read without the lock: a hint for [`Engine::fast_recv`], which then
    /// looks under the lock.
    fn rings_readable(&self, src: Option<usize>) -> bool {
        match src {
            Some(s) => self
                .links
                .get(s)
                .and_then(Option::as_ref)
                .is_some_and(|l| l.readable()),
            None => self
                .shm_peers
                .iter()
                .any(|&p| self.links[p].as_ref().is_some_and(|l| l.readable())),
        }
    }

    fn take_done(st: &mut State, req: ReqId) -> Option<Result<Completion>> {
        match st.reqs.get(&req) {
            Some(Req::Done(_)) => match st.reqs.remove(&req) {
                Some(Req::Done(r)) => Some(r),
                _ => None,
            },
            None => Some(Err(Error::InvalidArgument(format!(
                "unknown request {req}"
            )))),
            _ => None,
        }
    }

    fn check_open(&self, st: &State) -> Result<()> {
        if st.finalized {
            Err(Error::Finalized)
        } else {
            Ok(())
        }
    }

    fn find_unexpected(
        st: &State,
        src: Option<usize>,
        ctx: u64,
        tag: Option<Tag>,
    ) -> Option<usize> {
        st.unexpected
            .iter()
            .position(|u| Self::matches(src, ctx, tag, u.src, u.ctx, u.tag))
    }

    /// The error a receive gets when no message can ever match it, if that is so.
    fn unreachable_source(&self, st: &State, src: Option<usize>) -> Option<Error> {
        match src {
            Some(s) if s != self.me => {
                let peer = &st.peers[s];
                (peer.lost.is_some() || peer.bye_recvd).then(|| self.lost_error(st, s))
            }
            Some(_) => None,
            None => st.first_lost.map(|p| self.lost_error(st, p)),
        }
    }
}

impl Transport for Engine {
    fn rank(&self) -> usize {
        self.me
    }

    fn size(&self) -> usize {
        self.n
    }

    fn host(&self, rank: usize) -> &str {
        &self.hosts[rank]
    }

    fn name(&self) -> &'static str {
        self.backend
    }

    fn shares_memory_with(&self, rank: usize) -> bool {
        self.links.get(rank).is_some_and(Option::is_some)
    }

    unsafe fn isend(
        &self,
        dest: usize,
        ctx: u64,
        tag: Tag,
        data: *const u8,
        len: usize,
    ) -> Result<Posted> {
        if dest >= self.n {
            return Err(Error::RankOutOfRange {
                rank: dest,
                size: self.n,
            });
        }
        let mut st = self.lock();
        self.check_open(&st)?;
        let status = RawStatus {
            source: dest,
            tag,
            bytes: len,
        };
        let bytes: &[u8] = if len == 0 {
            &[]
        } else {
            // SAFETY: the caller guarantees `len` readable bytes at `data`.
            unsafe { std::slice::from_raw_parts(data, len) }
        };
        if dest == self.me {
            // Sends to self are always buffered, so a blocking send to self never
            // deadlocks waiting for the receive it precedes.
            let rstatus = RawStatus {
                source: self.me,
                tag,
                bytes: len,
            };
            match Self::match_posted(&mut st, self.me, ctx, tag) {
                Some((req, target)) => Self::deliver(&mut st, req, target, rstatus, bytes.to_vec()),
                None => {
                    Self::news(&mut st);
                    st.unexpected.push_back(Unexpected {
                        src: self.me,
                        ctx,
                        tag,
                        len,
                        body: Body::Data(bytes.to_vec()),
                    });
                }
            }
            // The message may have completed a receive another thread sleeps on.
            st.completed += 1;
            self.wake_waiters(&mut st);
            return Ok(Posted::Done(status));
        }
        if st.peers[dest].lost.is_some() {
            return Err(self.lost_error(&st, dest));
        }
        let id = if len <= self.cfg.eager_limit {
            let h = Header::new(Kind::Eager, ctx, tag, len as u64).encode();
            if self.eager_into_ring(&mut st, dest, &h, bytes) {
                // In the ring (what did not fit is queued): complete, no request. The
                // flush below moves what other peers have queued, as every post does.
                self.flush_dirty(&mut st);
                return Ok(Posted::Done(status));
            }
            Self::push_frame(&mut st, dest, &h, bytes);
            // Complete too, but over a socket the frame may still be queued: the
            // request's wait is what pushes it out when nothing else runs.
            let id = Self::new_id(&mut st);
            st.reqs
                .insert(id, Req::Done(Ok(Completion { status, data: None })));
            id
        } else {
            let id = Self::new_id(&mut st);
            let mut h = Header::new(Kind::Rts, ctx, tag, len as u64);
            h.a = id;
            // The buffer's address lets a same-host receiver copy the payload itself.
            h.b = data as u64;
            if self.links[dest].as_ref().is_some_and(|l| l.cma()) {
                // Allow the copy 1 ns a byte (it runs at ~10 GB/s), at most 20 ms.
                let until = Instant::now() + Duration::from_nanos(len.min(20_000_000) as u64);
                st.peer_copying_until = Some(st.peer_copying_until.map_or(until, |u| u.max(until)));
            }
            Self::push_frame(&mut st, dest, &h.encode(), &[]);
            st.reqs.insert(
                id,
                Req::SendRts {
                    dest,
                    tag,
                    ptr: Ptr(data as *mut u8),
                    len,
                },
            );
            id
        };
        if self.links[dest].is_some() {
            // A ring write is cheap and needs nobody's help: do it now, so that the
            // send's `wait` finds it complete.
            self.flush_dirty(&mut st);
        } else if st.poller_busy {
            // The sleeping poller flushes the queued frame even if this thread never
            // waits for the request (an eager send is already complete).
            self.poll.wake();
        }
        Ok(Posted::Pending(id))
    }

    unsafe fn irecv(
        &self,
        src: Option<usize>,
        ctx: u64,
        tag: Option<Tag>,
        target: RecvTarget,
    ) -> Result<ReqId> {
        if let Some(s) = src {
            if s >= self.n {
                return Err(Error::RankOutOfRange {
                    rank: s,
                    size: self.n,
                });
            }
        }
        let target = Target::from(target);
        let mut st = self.lock();
        self.check_open(&st)?;
        let id = Self::new_id(&mut st);
        let found =
            Self::find_unexpected(&st, src, ctx, tag).and_then(|pos| st.unexpected.remove(pos));
        if let Some(u) = found {
            let status = RawStatus {
                source: u.src,
                tag: u.tag,
                bytes: u.len,
            };
            st.reqs.insert(id, Req::Done(Err(Error::Finalized)));
            match u.body {
                Body::Data(bytes) => Self::deliver(&mut st, id, target, status, bytes),
                Body::Rts { sreq, addr } => {
                    self.accept_rts(&mut st, id, target, u.src, u.ctx, u.tag, u.len, sreq, addr)
                }
            }
            return Ok(id);
        }
        if let Some(e) = self.unreachable_source(&st, src) {
            st.reqs.release(id);
            return Err(e);
        }
        st.reqs.insert(
            id,
            Req::Posted {
                src,
                ctx,
                tag,
                target,
            },
        );
        st.posted.push_back(id);
        Ok(id)
    }

    fn buffered_send_limit(&self) -> Option<usize> {
        // An eager send is complete once its frame is written or queued.
        Some(self.cfg.eager_limit)
    }

    fn send(&self, dest: usize, ctx: u64, tag: Tag, data: &[u8]) -> Result<()> {
        // Fast path: a small message to a same-host peer with nothing queued ahead of
        // it is complete once it is in the ring; no request is made.
        if !self.shm_peers.is_empty()
            && dest < self.n
            && dest != self.me
            && data.len() <= self.cfg.eager_limit
        {
            let mut st = self.lock();
            self.check_open(&st)?;
            if st.peers[dest].lost.is_none() {
                let h = Header::new(Kind::Eager, ctx, tag, data.len() as u64).encode();
                if self.eager_into_ring(&mut st, dest, &h, data) {
                    self.flush_dirty(&mut st);
                    return Ok(());
                }
            }
        }
        super::send_by_request(self, dest, ctx, tag, data)
    }

    fn recv(
        &self,
        src: Option<usize>,
        ctx: u64,
        tag: Option<Tag>,
        buf: &mut [u8],
    ) -> Result<RawStatus> {
        if let Some((status, _)) = self.fast_recv(src, ctx, tag, &mut Dst::Buf(buf))? {
            return Ok(status);
        }
        super::recv_by_request(self, src, ctx, tag, buf)
    }

    fn recv_alloc(
        &self,
        src: Option<usize>,
        ctx: u64,
        tag: Option<Tag>,
    ) -> Result<(Vec<u8>, RawStatus)> {
        if let Some((status, heap)) = self.fast_recv(src, ctx, tag, &mut Dst::Alloc)? {
            return Ok((heap.unwrap_or_default(), status));
        }
        super::recv_alloc_by_request(self, src, ctx, tag)
    }

    fn test(&self, req: ReqId) -> Result<Option<Completion>> {
        let mut st = self.lock();
        self.progress(&mut st)?;
        Self::take_done(&mut st, req).transpose()
    }

    fn wait(&self, req: ReqId) -> Result<Completion> {
        // Fast path: already complete (eager sends, matched receives).
        let mut st = self.lock();
        if st.dirty.is_empty() {
            if let Some(r) = Self::take_done(&mut st, req) {
                return r;
            }
        }
        self.wait_locked(st, Interest::Reqs(&[req]), |st| Self::take_done(st, req))?
    }

    fn wait_all(&self, reqs: &[ReqId]) -> Result<Vec<Result<Completion>>> {
        let mut out: Vec<Result<Completion>> = Vec::with_capacity(reqs.len());
        // Each look goes from the first request still open up to the next one still
        // open, not over all of them: frames often arrive one per look, and a full
        // scan each time made a window of 64 receives cost 64 x 64 lookups. A
        // request done out of order waits in its slot until the scan reaches it.
        let mut first = 0;
        let st = self.lock();
        self.wait_locked(st, Interest::Reqs(reqs), |st| {
            while first < reqs.len() {
                match Self::take_done(st, reqs[first]) {
                    Some(r) => {
                        out.push(r);
                        first += 1;
                    }
                    None => return None,
                }
            }
            Some(())
        })?;
        Ok(out)
    }

    fn wait_any(&self, reqs: &[ReqId]) -> Result<(usize, Result<Completion>)> {
        if reqs.is_empty() {
            return Err(Error::InvalidArgument("wait_any on no requests".into()));
        }
        self.wait_until(Interest::Reqs(reqs), |st| {
            reqs.iter()
                .enumerate()
                .find_map(|(i, &id)| Self::take_done(st, id).map(|r| (i, r)))
        })
    }

    fn iprobe(&self, src: Option<usize>, ctx: u64, tag: Option<Tag>) -> Result<Option<RawStatus>> {
        let mut st = self.lock();
        self.check_open(&st)?;
        self.progress(&mut st)?;
        Ok(Self::find_unexpected(&st, src, ctx, tag).map(|i| {
            let u = &st.unexpected[i];
            RawStatus {
                source: u.src,
                tag: u.tag,
                bytes: u.len,
            }
        }))
    }

    fn probe(&self, src: Option<usize>, ctx: u64, tag: Option<Tag>) -> Result<RawStatus> {
        self.wait_until(Interest::Anything, |st| {
            if st.finalized {
                return Some(Err(Error::Finalized));
            }
            if let Some(i) = Self::find_unexpected(st, src, ctx, tag) {
                let u = &st.unexpected[i];
                return Some(Ok(RawStatus {
                    source: u.src,
                    tag: u.tag,
                    bytes: u.len,
                }));
            }
            self.unreachable_source(st, src).map(Err)
        })?
    }

    fn finalize(&self) -> Result<()> {
        {
            let mut st = self.lock();
            if st.finalized {
                return Ok(());
            }
            let bye = Header::new(Kind::Bye, 0, 0, 0).encode();
            for p in 0..self.n {
                if p != self.me && st.peers[p].lost.is_none() && !st.peers[p].bye_sent {
                    st.peers[p].bye_sent = true;
                    Self::push_frame(&mut st, p, &bye, &[]);
                }
            }
        }
        // Every peer's goodbye means every byte it sent us has been read, so closing
        // cannot reset a connection with data in flight.
        self.wait_until(Interest::Anything, |st| {
            (0..self.n)
                .all(|p| {
                    p == self.me
                        || st.peers[p].lost.is_some()
                        || (st.peers[p].bye_recvd && st.peers[p].txq.is_empty())
                })
                .then_some(())
        })?;
        self.close_all(None);
        Ok(())
    }

    fn abort(&self) {
        self.close_all(Some("this rank aborted"));
    }
}

impl Engine {
    /// Closes every link and fails whatever is still outstanding.
    fn close_all(&self, reason: Option<&str>) {
        let mut st = self.lock();
        for p in 0..self.n {
            let peer = &mut st.peers[p];
            if let Some(fd) = peer.fd.take() {
                let _ = self.poll.remove(fd.as_raw_fd());
                if reason.is_some() {
                    // SAFETY: shutdown on a descriptor we own; wakes a peer at once.
                    unsafe { libc::shutdown(fd.as_raw_fd(), libc::SHUT_RDWR) };
                }
            }
            peer.txq.clear();
            if peer.lost.is_none() && p != self.me {
                peer.lost = Some(reason.unwrap_or("it finalized").to_string());
            }
        }
        st.finalized = true;
        st.posted.clear();
        let ids: Vec<ReqId> = st
            .reqs
            .iter()
            .filter(|(_, r)| !matches!(r, Req::Done(_)))
            .map(|(id, _)| id)
            .collect();
        for id in ids {
            Self::finish(&mut st, id, Err(Error::Finalized));
        }
        self.cv.notify_all();
        if st.poller_busy {
            self.poll.wake();
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        let finalized = self.lock().finalized;
        if !finalized {
            self.close_all(Some("its engine was dropped without finalize"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_slots_are_reused_and_stale_ids_find_nothing() {
        let mut r = Reqs::default();
        let a = r.alloc();
        assert!(r.get(&a).is_none(), "a reserved slot holds nothing yet");
        r.insert(a, Req::Done(Err(Error::Finalized)));
        assert!(r.get(&a).is_some());
        assert!(r.remove(&a).is_some());
        let b = r.alloc();
        assert_eq!(a & 0xffff_ffff, b & 0xffff_ffff, "the slot is reused");
        assert_ne!(a, b, "under a new generation");
        r.insert(a, Req::Done(Err(Error::Finalized)));
        assert!(
            r.get(&b).is_none(),
            "a stale id cannot fill the new request"
        );
        assert!(r.get(&a).is_none() && r.remove(&a).is_none());
        for forged in [0, NO_REQ, 1 << 40, u64::MAX - 1] {
            assert!(r.get(&forged).is_none(), "{forged:#x}");
        }
        assert!(b != 0 && b != NO_REQ);
        assert_eq!(r.iter().count(), 0);
        r.insert(b, Req::Done(Err(Error::Finalized)));
        assert_eq!(r.iter().map(|(id, _)| id).collect::<Vec<_>>(), vec![b]);
    }
}
