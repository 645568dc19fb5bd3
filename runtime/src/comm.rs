//! Communicators: a group of ranks, a private context, and point-to-point on them.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytemuck::Pod;

use crate::error::{Error, Result};
use crate::request::{OwnedRequest, Request, Scope};
use crate::transport::{Completion, Posted, RawStatus, RecvTarget, ReqId, Transport};
use crate::{Tag, ANY_SOURCE, ANY_TAG, TAG_UB};

/// Tag of the runtime's own exchange inside [`Communicator::split`] (library plane).
const TAG_SPLIT: Tag = -100;

/// What a completed receive (or probe) tells about its message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Status {
    source: usize,
    tag: Tag,
    bytes: usize,
}

impl Status {
    /// Rank of the sender in the receiving communicator.
    pub fn source(&self) -> usize {
        self.source
    }
    /// The message's tag.
    pub fn tag(&self) -> Tag {
        self.tag
    }
    /// The message's length in bytes.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
    /// The message's length in elements of `T` (rounded down).
    pub fn count<T>(&self) -> usize {
        self.bytes
            .checked_div(std::mem::size_of::<T>())
            .unwrap_or(0)
    }
}

/// The ranks of a communicator, as world ranks.
#[derive(Debug)]
struct Group {
    world_of: Vec<usize>,
    /// World rank → rank here, `u32::MAX` when absent.
    local_of: Vec<u32>,
}

impl Group {
    fn new(world_of: Vec<usize>, world_size: usize) -> Group {
        let mut local_of = vec![u32::MAX; world_size];
        for (l, &w) in world_of.iter().enumerate() {
            local_of[w] = l as u32;
        }
        Group { world_of, local_of }
    }
}

struct Inner {
    transport: Arc<dyn Transport>,
    /// Even: the user plane; odd (`ctx | 1`): the library plane of the same group.
    ctx: u64,
    group: Arc<Group>,
    rank: usize,
    /// Number of `dup`/`split` calls made on this group, to derive child contexts
    /// identically on every member without communication.
    seq: Arc<AtomicU64>,
    /// The library plane of a user-plane communicator, made on first use: every
    /// collective call asks for it, and making it costs an allocation.
    lib: std::sync::OnceLock<Arc<Inner>>,
}

/// A group of ranks with a private context, on which messages are sent.
///
/// Cheap to clone (an `Arc`), `Send` and `Sync`: several threads of a rank may use
/// one communicator at once. Messages sent on one communicator never match receives on
/// another, and a communicator's [`library`](Communicator::library) plane keeps the
/// collectives' and windows' traffic apart from the user's.
///
/// ```
/// let sums = dsmpi_runtime::run_local(3, |world| {
///     let next = (world.rank() + 1) % world.size();
///     let prev = (world.rank() + world.size() - 1) % world.size();
///     let mut got = [0u64];
///     world
///         .sendrecv(&[world.rank() as u64], next, 0, &mut got, prev, 0)
///         .unwrap();
///     got[0]
/// })
/// .unwrap();
/// assert_eq!(sums, vec![2, 0, 1]);
/// ```
#[derive(Clone)]
pub struct Communicator {
    inner: Arc<Inner>,
}

impl fmt::Debug for Communicator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Communicator")
            .field("rank", &self.inner.rank)
            .field("size", &self.size())
            .field("ctx", &format_args!("{:#x}", self.inner.ctx))
            .finish()
    }
}

/// Mixes a parent context and a sequence number into a child context (even).
///
/// 64-bit contexts derived by a strong mixer make an accidental collision between two
/// live communicators negligible, and need no agreement protocol.
fn derive_ctx(parent: u64, seq: u64, color: u64) -> u64 {
    let mut z = parent
        ^ seq.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ color.wrapping_mul(0xC2B2_AE3D_27D4_EB4F).rotate_left(31);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    // Keep 0/1 for the world; children are never 0.
    (z & !1).max(2)
}

fn check_tag(tag: Tag) -> Result<()> {
    if (0..=TAG_UB).contains(&tag) {
        Ok(())
    } else {
        Err(Error::InvalidTag(tag))
    }
}

fn check_recv_tag(tag: Tag) -> Result<Option<Tag>> {
    if tag == ANY_TAG {
        Ok(None)
    } else {
        check_tag(tag).map(|_| Some(tag))
    }
}

impl Communicator {
    /// The world communicator over `transport`.
    pub fn world(transport: Arc<dyn Transport>) -> Communicator {
        let n = transport.size();
        let rank = transport.rank();
        Communicator {
            inner: Arc::new(Inner {
                transport,
                ctx: 0,
                group: Arc::new(Group::new((0..n).collect(), n)),
                rank,
                seq: Arc::new(AtomicU64::new(0)),
                lib: std::sync::OnceLock::new(),
            }),
        }
    }

    /// This rank's index in the communicator, `0..size()`.
    pub fn rank(&self) -> usize {
        self.inner.rank
    }

    /// Number of ranks in the communicator.
    pub fn size(&self) -> usize {
        self.inner.group.world_of.len()
    }

    /// Name of the host this rank runs on (MPI_Get_processor_name).
    pub fn processor_name(&self) -> String {
        self.host_of(self.rank()).to_string()
    }

    /// Name of the host rank `r` of this communicator runs on.
    pub fn host_of(&self, r: usize) -> &str {
        self.inner.transport.host(self.inner.group.world_of[r])
    }

    /// Whether this rank and rank `r` of this communicator are linked through shared
    /// memory (same host, the `shm` transport; never with `DSMPI_TRANSPORT=tcp`), so
    /// that they may map each other's memory. `false` for this rank itself and for an
    /// `r` out of range.
    pub fn shares_memory_with(&self, r: usize) -> bool {
        self.inner
            .group
            .world_of
            .get(r)
            .is_some_and(|&w| self.inner.transport.shares_memory_with(w))
    }

    /// World rank of rank `r` of this communicator.
    pub fn world_rank(&self, r: usize) -> usize {
        self.inner.group.world_of[r]
    }

    /// World rank of every member, in communicator rank order (what a backend's
    /// native collectives need to build their own communicator for this group).
    pub fn world_ranks(&self) -> &[usize] {
        &self.inner.group.world_of
    }

    /// The transport underneath (for diagnostics and backend-aware code).
    pub fn transport(&self) -> &Arc<dyn Transport> {
        &self.inner.transport
    }

    /// The context id messages on this communicator carry.
    pub fn context(&self) -> u64 {
        self.inner.ctx
    }

    /// Whether this is a library plane (see [`library`](Self::library)).
    pub fn is_library(&self) -> bool {
        self.inner.ctx & 1 == 1
    }

    /// The same group on its private library context.
    ///
    /// Collectives and windows send here, so their messages can never match a receive
    /// the user posted on this communicator, whatever tags either side uses.
    pub fn library(&self) -> Communicator {
        if self.is_library() {
            return self.clone();
        }
        let lib = self.inner.lib.get_or_init(|| {
            Arc::new(Inner {
                transport: self.inner.transport.clone(),
                ctx: self.inner.ctx | 1,
                group: self.inner.group.clone(),
                rank: self.inner.rank,
                seq: self.inner.seq.clone(),
                lib: std::sync::OnceLock::new(),
            })
        });
        Communicator { inner: lib.clone() }
    }

    /// A new communicator with the same ranks and a new context (MPI_Comm_dup).
    ///
    /// Collective in the MPI sense: every rank calls it, in the same order relative to
    /// other `dup`/`split` calls on this communicator. It needs no messages.
    pub fn dup(&self) -> Communicator {
        let seq = self.inner.seq.fetch_add(1, Ordering::SeqCst);
        Communicator {
            inner: Arc::new(Inner {
                transport: self.inner.transport.clone(),
                ctx: derive_ctx(self.inner.ctx & !1, seq, 0),
                group: self.inner.group.clone(),
                rank: self.inner.rank,
                seq: Arc::new(AtomicU64::new(0)),
                lib: std::sync::OnceLock::new(),
            }),
        }
    }

    /// Splits into one communicator per `color` (MPI_Comm_split). Ranks with a
    /// negative color get `None`. Within a new communicator ranks are ordered by
    /// `key`, ties broken by rank here. Collective over this communicator.
    pub fn split(&self, color: i32, key: i32) -> Result<Option<Communicator>> {
        let seq = self.inner.seq.fetch_add(1, Ordering::SeqCst);
        let lib = self.library();
        let n = self.size();
        let me = self.rank();
        let mine = [color, key];
        let mut all = vec![[0i32; 2]; n];
        all[me] = mine;
        // Everyone tells everyone: the messages are eager and never block.
        for r in (0..n).filter(|&r| r != me) {
            lib.send_internal(&mine, r, TAG_SPLIT)?;
        }
        for (r, slot) in all.iter_mut().enumerate().filter(|(r, _)| *r != me) {
            lib.recv_internal(&mut slot[..], r, TAG_SPLIT)?;
        }
        if color < 0 {
            return Ok(None);
        }
        let mut members: Vec<(i32, usize)> = all
            .iter()
            .enumerate()
            .filter(|(_, ck)| ck[0] == color)
            .map(|(r, ck)| (ck[1], r))
            .collect();
        members.sort();
        let world_of: Vec<usize> = members.iter().map(|&(_, r)| self.world_rank(r)).collect();
        let rank = members
            .iter()
            .position(|&(_, r)| r == me)
            .ok_or_else(|| Error::InvalidArgument("split lost this rank".into()))?;
        Ok(Some(Communicator {
            inner: Arc::new(Inner {
                transport: self.inner.transport.clone(),
                ctx: derive_ctx(self.inner.ctx & !1, seq, color as u64 + 1),
                group: Arc::new(Group::new(world_of, self.inner.transport.size())),
                rank,
                seq: Arc::new(AtomicU64::new(0)),
                lib: std::sync::OnceLock::new(),
            }),
        }))
    }

    // ----- rank translation ---------------------------------------------------------

    fn dest_world(&self, dest: usize) -> Result<usize> {
        self.inner
            .group
            .world_of
            .get(dest)
            .copied()
            .ok_or(Error::RankOutOfRange {
                rank: dest,
                size: self.size(),
            })
    }

    fn source_world(&self, source: usize) -> Result<Option<usize>> {
        if source == ANY_SOURCE {
            Ok(None)
        } else {
            self.dest_world(source).map(Some)
        }
    }

    fn local(&self, world: usize) -> usize {
        self.inner.group.local_of[world] as usize
    }

    pub(crate) fn status_of(&self, raw: RawStatus) -> Status {
        Status {
            source: self.local(raw.source),
            tag: raw.tag,
            bytes: raw.bytes,
        }
    }

    /// Rewrites world ranks inside an error into this communicator's ranks.
    pub(crate) fn localize(&self, e: Error) -> Error {
        match e {
            Error::Truncated {
                sender,
                tag,
                len,
                capacity,
            } => Error::Truncated {
                sender: self.local(sender),
                tag,
                len,
                capacity,
            },
            other => other,
        }
    }

    // ----- blocking point-to-point ---------------------------------------------------

    /// Posts a send of `bytes` to rank `dest` of this communicator.
    ///
    /// # Safety
    /// `bytes` must stay valid and unmodified until the request completes.
    unsafe fn post_send(&self, bytes: &[u8], dest: usize, tag: Tag) -> Result<Posted> {
        let dest = self.dest_world(dest)?;
        // SAFETY: forwarded to the caller.
        unsafe {
            self.inner
                .transport
                .isend(dest, self.inner.ctx, tag, bytes.as_ptr(), bytes.len())
        }
    }

    /// Posts a receive into `bytes` from rank `source` (or any) of this communicator.
    ///
    /// # Safety
    /// `bytes` must stay valid and otherwise unaccessed until the request completes.
    unsafe fn post_recv(&self, bytes: &mut [u8], source: usize, tag: Option<Tag>) -> Result<ReqId> {
        let src = self.source_world(source)?;
        let target = RecvTarget::Buffer {
            ptr: bytes.as_mut_ptr(),
            cap: bytes.len(),
        };
        // SAFETY: forwarded to the caller.
        unsafe { self.inner.transport.irecv(src, self.inner.ctx, tag, target) }
    }

    fn send_internal<T: Pod>(&self, buf: &[T], dest: usize, tag: Tag) -> Result<()> {
        let dest = self.dest_world(dest)?;
        self.inner
            .transport
            .send(dest, self.inner.ctx, tag, bytemuck::cast_slice(buf))
    }

    fn recv_internal<T: Pod>(&self, buf: &mut [T], source: usize, tag: Tag) -> Result<Status> {
        let tag = if tag == ANY_TAG { None } else { Some(tag) };
        let src = self.source_world(source)?;
        let raw = self
            .inner
            .transport
            .recv(src, self.inner.ctx, tag, bytemuck::cast_slice_mut(buf))
            .map_err(|e| self.localize(e))?;
        let st = self.status_of(raw);
        if !st.bytes.is_multiple_of(std::mem::size_of::<T>().max(1)) {
            return Err(Error::ElementSize {
                bytes: st.bytes,
                elem: std::mem::size_of::<T>(),
            });
        }
        Ok(st)
    }

    /// Sends `buf` to rank `dest` with `tag` (blocking, standard mode: returns once
    /// the buffer may be reused).
    pub fn send<T: Pod>(&self, buf: &[T], dest: usize, tag: Tag) -> Result<()> {
        check_tag(tag)?;
        self.send_internal(buf, dest, tag)
    }

    /// Receives into `buf` from `source` (or [`ANY_SOURCE`]) with `tag` (or
    /// [`ANY_TAG`]). The message may be shorter than `buf`; a longer one is an
    /// [`Error::Truncated`].
    pub fn recv_into<T: Pod>(&self, buf: &mut [T], source: usize, tag: Tag) -> Result<Status> {
        check_recv_tag(tag)?;
        self.recv_internal(buf, source, tag)
    }

    /// Receives a message of any length into a new vector.
    pub fn recv_vec<T: Pod>(&self, source: usize, tag: Tag) -> Result<(Vec<T>, Status)> {
        let tag = check_recv_tag(tag)?;
        let src = self.source_world(source)?;
        let (data, status) = self
            .inner
            .transport
            .recv_alloc(src, self.inner.ctx, tag)
            .map_err(|e| self.localize(e))?;
        self.vec_of(Completion {
            status,
            data: Some(data),
        })
    }

    pub(crate) fn vec_of<T: Pod>(&self, c: Completion) -> Result<(Vec<T>, Status)> {
        let st = self.status_of(c.status);
        let bytes = c.data.unwrap_or_default();
        let elem = std::mem::size_of::<T>();
        if elem == 0 || !bytes.len().is_multiple_of(elem) {
            return Err(Error::ElementSize {
                bytes: bytes.len(),
                elem,
            });
        }
        // Reuses the allocation when the alignment allows, copies otherwise.
        let v = bytemuck::allocation::try_cast_vec::<u8, T>(bytes)
            .unwrap_or_else(|(_, bytes)| bytemuck::allocation::pod_collect_to_vec(&bytes));
        Ok((v, st))
    }

    /// Whether a blocking send of `bytes` bytes returns without any help from its
    /// receiver (the transport buffers it at once): true up to the eager limit on
    /// dsmpi's own transports, never over an MPI library.
    ///
    /// Collectives use it to send small pieces one after another on the blocking
    /// send's fast path instead of through requests; a program can do the same.
    pub fn send_is_buffered(&self, bytes: usize) -> bool {
        self.inner
            .transport
            .buffered_send_limit()
            .is_some_and(|limit| bytes <= limit)
    }

    /// Sends `sendbuf` to `dest` and receives into `recvbuf` from `source` at once,
    /// so that exchanges in a ring or a pair never deadlock.
    #[allow(clippy::too_many_arguments)]
    pub fn sendrecv<T: Pod, U: Pod>(
        &self,
        sendbuf: &[T],
        dest: usize,
        sendtag: Tag,
        recvbuf: &mut [U],
        source: usize,
        recvtag: Tag,
    ) -> Result<Status> {
        // A send the transport buffers at once cannot wait for the peer's own
        // send-and-receive: send it, then receive, each on its blocking fast path
        // (collectives exchange mostly small messages this way).
        if self.send_is_buffered(std::mem::size_of_val(sendbuf)) {
            self.send(sendbuf, dest, sendtag)?;
            return self.recv_into(recvbuf, source, recvtag);
        }
        crate::request::scope(|s| {
            let r = self.irecv_into(s, recvbuf, source, recvtag)?;
            let w = self.isend(s, sendbuf, dest, sendtag)?;
            w.wait()?;
            r.wait()
        })
    }

    /// Blocks until a message from `source` with `tag` can be received; returns its
    /// status without receiving it.
    pub fn probe(&self, source: usize, tag: Tag) -> Result<Status> {
        let tag = check_recv_tag(tag)?;
        let src = self.source_world(source)?;
        let raw = self.inner.transport.probe(src, self.inner.ctx, tag)?;
        Ok(self.status_of(raw))
    }

    /// Like [`probe`](Self::probe), but returns `None` at once when no message is there.
    pub fn iprobe(&self, source: usize, tag: Tag) -> Result<Option<Status>> {
        let tag = check_recv_tag(tag)?;
        let src = self.source_world(source)?;
        let raw = self.inner.transport.iprobe(src, self.inner.ctx, tag)?;
        Ok(raw.map(|r| self.status_of(r)))
    }

    // ----- non-blocking point-to-point -----------------------------------------------

    /// Starts sending `buf`; it stays borrowed until the request completes or `scope`
    /// ends. See [`scope`](crate::scope).
    pub fn isend<'s, 'a: 's, T: Pod>(
        &self,
        scope: &'s Scope<'a>,
        buf: &'a [T],
        dest: usize,
        tag: Tag,
    ) -> Result<Request<'s>> {
        check_tag(tag)?;
        self.isend_internal(scope, buf, dest, tag)
    }

    fn isend_internal<'s, 'a: 's, T: Pod>(
        &self,
        scope: &'s Scope<'a>,
        buf: &'a [T],
        dest: usize,
        tag: Tag,
    ) -> Result<Request<'s>> {
        // SAFETY: `buf` is borrowed for 'a, which outlives the scope; the scope waits
        // for every request it registered before 'a ends, even if the request is leaked.
        let posted = unsafe { self.post_send(bytemuck::cast_slice(buf), dest, tag)? };
        Ok(Request::new(scope, self, posted))
    }

    /// Starts receiving into `buf` from `source` with `tag`; `buf` stays borrowed until
    /// the request completes or `scope` ends.
    pub fn irecv_into<'s, 'a: 's, T: Pod>(
        &self,
        scope: &'s Scope<'a>,
        buf: &'a mut [T],
        source: usize,
        tag: Tag,
    ) -> Result<Request<'s>> {
        let tag = check_recv_tag(tag)?;
        // SAFETY: as in `isend`: the scope outlives no borrow of `buf`.
        let id = unsafe { self.post_recv(bytemuck::cast_slice_mut(buf), source, tag)? };
        Ok(Request::new(scope, self, Posted::Pending(id)))
    }

    /// Starts sending `buf`, which the request owns until [`OwnedRequest::wait`]
    /// gives it back. Needs no scope.
    pub fn isend_owned<T: Pod>(
        &self,
        buf: Vec<T>,
        dest: usize,
        tag: Tag,
    ) -> Result<OwnedRequest<T>> {
        check_tag(tag)?;
        // SAFETY: the heap block of `buf` moves into the request (moving a Vec does not
        // move its heap block) and is freed only after the transport completed the
        // send: `wait` and `Drop` wait first, and a leaked request leaks the block.
        let posted = unsafe { self.post_send(bytemuck::cast_slice(&buf), dest, tag)? };
        Ok(OwnedRequest::new(self.clone(), posted, buf))
    }

    /// Starts receiving into `buf` (up to its length), which the request owns until
    /// [`OwnedRequest::wait`] gives it back. Needs no scope.
    pub fn irecv_owned<T: Pod>(
        &self,
        mut buf: Vec<T>,
        source: usize,
        tag: Tag,
    ) -> Result<OwnedRequest<T>> {
        let tag = check_recv_tag(tag)?;
        // SAFETY: as in `isend_owned`: the heap block outlives the request's use of it.
        let id = unsafe { self.post_recv(bytemuck::cast_slice_mut(&mut buf), source, tag)? };
        Ok(OwnedRequest::new(self.clone(), Posted::Pending(id), buf))
    }

    /// rsmpi-style handle on one rank of this communicator.
    pub fn process_at_rank(&self, r: usize) -> Process<'_> {
        Process {
            comm: self,
            rank: r,
        }
    }

    /// rsmpi-style handle to receive from any rank.
    pub fn any_process(&self) -> Process<'_> {
        Process {
            comm: self,
            rank: ANY_SOURCE,
        }
    }
}

/// One peer of a communicator, in the shape rsmpi users know:
/// `world.process_at_rank(1).send(&data)`.
#[derive(Clone, Copy, Debug)]
pub struct Process<'c> {
    comm: &'c Communicator,
    rank: usize,
}

impl Process<'_> {
    /// The rank this handle addresses ([`ANY_SOURCE`] for `any_process`).
    pub fn rank(&self) -> usize {
        self.rank
    }
    /// Sends with tag 0.
    pub fn send<T: Pod>(&self, buf: &[T]) -> Result<()> {
        self.comm.send(buf, self.rank, 0)
    }
    /// Sends with `tag`.
    pub fn send_with_tag<T: Pod>(&self, buf: &[T], tag: Tag) -> Result<()> {
        self.comm.send(buf, self.rank, tag)
    }
    /// Receives with any tag into `buf`.
    pub fn receive_into<T: Pod>(&self, buf: &mut [T]) -> Result<Status> {
        self.comm.recv_into(buf, self.rank, ANY_TAG)
    }
    /// Receives with `tag` into `buf`.
    pub fn receive_into_with_tag<T: Pod>(&self, buf: &mut [T], tag: Tag) -> Result<Status> {
        self.comm.recv_into(buf, self.rank, tag)
    }
    /// Receives a message of any length and tag.
    pub fn receive_vec<T: Pod>(&self) -> Result<(Vec<T>, Status)> {
        self.comm.recv_vec(self.rank, ANY_TAG)
    }
    /// Receives one value of any tag.
    pub fn receive<T: Pod>(&self) -> Result<(T, Status)> {
        let mut v = [T::zeroed()];
        let st = self.comm.recv_into(&mut v, self.rank, ANY_TAG)?;
        if st.bytes() != std::mem::size_of::<T>() {
            return Err(Error::ElementSize {
                bytes: st.bytes(),
                elem: std::mem::size_of::<T>(),
            });
        }
        Ok((v[0], st))
    }
}

#[cfg(test)]
mod tests {
    use super::derive_ctx;

    #[test]
    fn derived_contexts_are_even_distinct_and_not_world() {
        let mut seen = std::collections::HashSet::new();
        for parent in [0u64, 2, 4, 0xdead_beef_0000] {
            for seq in 0..200 {
                for color in 0..4 {
                    let c = derive_ctx(parent, seq, color);
                    assert_eq!(c & 1, 0);
                    assert!(c >= 2);
                    assert!(seen.insert(c), "collision at {parent} {seq} {color}");
                }
            }
        }
    }
}
