//! The layer under communicators: moving tagged messages between world ranks.
//!
//! [`Transport`] is deliberately the MPI point-to-point surface (post a send, post a
//! receive, test, wait, probe) rather than a byte pipe, so that a backend over a real
//! MPI library can map it onto `MPI_Isend`/`MPI_Irecv` and let MPI do the matching.
//! The byte-stream backends share one matching and rendezvous engine
//! ([`engine::Engine`]):
//! - [`tcp`]: the rank mesh, one TCP connection per pair of ranks;
//! - [`local`]: ranks as threads of one process, linked by Unix socket pairs, so the
//!   very same engine code runs in tests without a launcher.
//!
//! - [`shm`]: between ranks on one host, shared-memory rings under the same engine,
//!   the pair's socket kept as doorbell and as the end-of-link signal.

pub mod engine;
pub mod local;
#[cfg(feature = "mpi")]
pub mod mpi;
pub mod native;
pub(crate) mod poller;
pub mod shm;
pub mod tcp;
pub mod wire;

use crate::error::Result;
use crate::Tag;

pub use native::{NativeCollectives, NativeKind, NativeOp, NativeScope};

/// Identifies one outstanding operation inside a transport.
pub type ReqId = u64;

/// Completion record of an operation, in world ranks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawStatus {
    /// World rank of the sender (for a send: the destination).
    pub source: usize,
    /// Tag of the message.
    pub tag: Tag,
    /// Bytes received (for a send: bytes sent).
    pub bytes: usize,
}

/// What posting a send started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Posted {
    /// A request, to complete with [`Transport::wait`] or [`Transport::test`].
    Pending(ReqId),
    /// The send completed as it was posted (a small message written into a
    /// shared-memory ring): no request was made and nothing is left to wait for.
    /// Saves the request's bookkeeping, which is most of a small send's cost when
    /// many are posted back to back.
    Done(RawStatus),
}

/// Where a receive puts its bytes.
#[derive(Clone, Copy, Debug)]
pub enum RecvTarget {
    /// Caller memory: `cap` writable bytes at `ptr`.
    Buffer {
        /// Start of the buffer.
        ptr: *mut u8,
        /// Capacity in bytes.
        cap: usize,
    },
    /// The transport allocates a buffer of exactly the message's size and returns it.
    Allocate,
}

/// A finished operation: its status and, for [`RecvTarget::Allocate`], the bytes.
#[derive(Debug)]
pub struct Completion {
    /// What completed.
    pub status: RawStatus,
    /// The allocated message, when the receive asked for one.
    pub data: Option<Vec<u8>>,
}

/// Moves tagged messages between the world ranks of one job.
///
/// Contexts (`ctx`) separate communicators: a receive only matches messages sent with
/// its context. Messages from one sender on one context and tag never overtake each
/// other, and a receive matches the earliest matching message (MPI's rules).
/// Every method may be called from several threads at once.
pub trait Transport: Send + Sync + std::fmt::Debug {
    /// This process's world rank.
    fn rank(&self) -> usize;
    /// Number of world ranks.
    fn size(&self) -> usize;
    /// Host name of a world rank.
    fn host(&self, rank: usize) -> &str;
    /// Short backend name (`"tcp"`, `"local"`, ...).
    fn name(&self) -> &'static str;
    /// Whether this rank reaches world rank `rank` through shared memory (a same-host
    /// link of the `shm` backend), so that the two may also map each other's memory
    /// (what DSM windows do with same-host regions). `false` for itself and by
    /// default.
    fn shares_memory_with(&self, rank: usize) -> bool {
        let _ = rank;
        false
    }

    /// Starts sending `len` bytes at `data` to world rank `dest`.
    ///
    /// # Safety
    /// The `len` bytes at `data` must stay valid and unmodified until the request
    /// completes (by `wait`, a successful `test`, or an error); after
    /// [`Posted::Done`] they are free at once.
    unsafe fn isend(
        &self,
        dest: usize,
        ctx: u64,
        tag: Tag,
        data: *const u8,
        len: usize,
    ) -> Result<Posted>;

    /// Starts receiving from world rank `source` (`None`: any) with `tag` (`None`: any).
    ///
    /// # Safety
    /// For [`RecvTarget::Buffer`], the buffer must stay valid and otherwise unaccessed
    /// until the request completes.
    unsafe fn irecv(
        &self,
        source: Option<usize>,
        ctx: u64,
        tag: Option<Tag>,
        target: RecvTarget,
    ) -> Result<ReqId>;

    /// Sends `data` to world rank `dest` and returns once `data` may be reused (a
    /// blocking standard-mode send).
    ///
    /// The default posts [`Transport::isend`] and waits; a backend overrides it when a
    /// send that needs no request is cheaper (a small message into a shared-memory
    /// ring).
    fn send(&self, dest: usize, ctx: u64, tag: Tag, data: &[u8]) -> Result<()> {
        send_by_request(self, dest, ctx, tag, data)
    }

    /// Receives one message from world rank `source` (`None`: any) with `tag`
    /// (`None`: any) into `buf`, blocking until it is there (a longer message is an
    /// [`crate::Error::Truncated`]).
    ///
    /// The default posts [`Transport::irecv`] and waits; a backend overrides it when
    /// taking a message that is already there needs no request.
    fn recv(
        &self,
        source: Option<usize>,
        ctx: u64,
        tag: Option<Tag>,
        buf: &mut [u8],
    ) -> Result<RawStatus> {
        recv_by_request(self, source, ctx, tag, buf)
    }

    /// The largest message whose send completes without any help from its receiver
    /// (buffered at once, whatever the receiver does), if the backend promises one.
    ///
    /// A send-and-receive of at most this many bytes can send first and then
    /// receive without risking a deadlock. `None` (the default) promises nothing.
    fn buffered_send_limit(&self) -> Option<usize> {
        None
    }

    /// Receives one message from world rank `source` (`None`: any) with `tag`
    /// (`None`: any) into a new allocation of its size, blocking until it is there.
    ///
    /// The default posts [`Transport::irecv`] with [`RecvTarget::Allocate`] and
    /// waits; a backend overrides it like [`Transport::recv`].
    fn recv_alloc(
        &self,
        source: Option<usize>,
        ctx: u64,
        tag: Option<Tag>,
    ) -> Result<(Vec<u8>, RawStatus)> {
        recv_alloc_by_request(self, source, ctx, tag)
    }

    /// Completes `req` if it is done (freeing it), else `Ok(None)`. Makes progress.
    fn test(&self, req: ReqId) -> Result<Option<Completion>>;

    /// Blocks until `req` completes, then frees it.
    fn wait(&self, req: ReqId) -> Result<Completion>;

    /// Blocks until every one of `reqs` completes, frees them, and returns their
    /// outcomes in order. The outer error is a failure of waiting itself; the
    /// requests it leaves unfinished must still be waited for.
    ///
    /// The default waits for each in turn; a backend overrides it to complete them
    /// all in one pass.
    fn wait_all(&self, reqs: &[ReqId]) -> Result<Vec<Result<Completion>>> {
        Ok(reqs.iter().map(|&r| self.wait(r)).collect())
    }

    /// Blocks until one of `reqs` completes (successfully or not), frees it, and
    /// returns its index and outcome. The outer error is a failure of waiting itself.
    fn wait_any(&self, reqs: &[ReqId]) -> Result<(usize, Result<Completion>)>;

    /// Status of the earliest matching message not yet received, without receiving it.
    fn iprobe(
        &self,
        source: Option<usize>,
        ctx: u64,
        tag: Option<Tag>,
    ) -> Result<Option<RawStatus>>;

    /// Blocks until a matching message can be received; returns its status.
    fn probe(&self, source: Option<usize>, ctx: u64, tag: Option<Tag>) -> Result<RawStatus>;

    /// Flushes, says goodbye to every peer, waits for theirs, and closes the links.
    fn finalize(&self) -> Result<()>;

    /// Tears every link down at once, without goodbyes: peers see this rank as lost.
    fn abort(&self);

    /// The backend's own collectives, if it has any (the `mpi` backend: MPI's).
    ///
    /// `None` by default: the byte-stream backends have only dsmpi's collectives,
    /// which run on point-to-point.
    fn native(&self) -> Option<&dyn NativeCollectives> {
        None
    }
}

/// [`Transport::send`] through a request: post, then wait. The default, and the
/// fallback of a backend's own fast path.
pub(crate) fn send_by_request<T: Transport + ?Sized>(
    t: &T,
    dest: usize,
    ctx: u64,
    tag: Tag,
    data: &[u8],
) -> Result<()> {
    // SAFETY: `data` is borrowed for this whole call and the request is waited for
    // (to completion or error) before returning.
    match unsafe { t.isend(dest, ctx, tag, data.as_ptr(), data.len())? } {
        Posted::Pending(id) => t.wait(id).map(|_| ()),
        Posted::Done(_) => Ok(()),
    }
}

/// [`Transport::recv`] through a request; see [`send_by_request`].
pub(crate) fn recv_by_request<T: Transport + ?Sized>(
    t: &T,
    source: Option<usize>,
    ctx: u64,
    tag: Option<Tag>,
    buf: &mut [u8],
) -> Result<RawStatus> {
    let target = RecvTarget::Buffer {
        ptr: buf.as_mut_ptr(),
        cap: buf.len(),
    };
    // SAFETY: `buf` is exclusively borrowed for this whole call and the request is
    // waited for before returning.
    let id = unsafe { t.irecv(source, ctx, tag, target)? };
    t.wait(id).map(|c| c.status)
}

/// [`Transport::recv_alloc`] through a request; see [`send_by_request`].
pub(crate) fn recv_alloc_by_request<T: Transport + ?Sized>(
    t: &T,
    source: Option<usize>,
    ctx: u64,
    tag: Option<Tag>,
) -> Result<(Vec<u8>, RawStatus)> {
    // SAFETY: an Allocate target borrows no caller memory.
    let id = unsafe { t.irecv(source, ctx, tag, RecvTarget::Allocate)? };
    t.wait(id).map(|c| (c.data.unwrap_or_default(), c.status))
}
