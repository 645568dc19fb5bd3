//! A [`Transport`] over a system MPI library (Open MPI, MPICH, ...) through rsmpi's
//! raw bindings, so that a dsmpi program started by `mpirun`/`mpiexec` runs on
//! whatever network that MPI drives (shared memory, TCP, InfiniBand, ...).
//!
//! # Why one MPI communicator and a header
//!
//! dsmpi derives communicator contexts locally (`dup`/`split` mix a 64-bit context
//! from the parent's without talking), and a rank may create a context long before,
//! or without, its peers doing the same. MPI's communicators are the opposite:
//! `MPI_Comm_dup` is collective and must be called by all members in the same order.
//! Mapping each dsmpi context onto its own MPI communicator would therefore need an
//! agreement protocol inside every `dup`/`split` and would still break for contexts a
//! peer never creates. Packing the 64-bit context plus the 32-bit tag into MPI's tag
//! (at least 15 bits guaranteed, 31 with Open MPI) cannot be done without collisions.
//!
//! So the backend uses **one** communicator, `MPI_Comm_dup(MPI_COMM_WORLD)` made at
//! start-up (keeping dsmpi's traffic apart from anything else the program does with
//! MPI), and every dsmpi message starts as one MPI message on tag [`TAG_HDR`] whose
//! first [`HDR`] bytes carry `(ctx, tag, kind, length)`. dsmpi matches (context, tag,
//! source, wildcards) itself, exactly as the TCP engine does:
//! - headers are taken in MPI arrival order with `MPI_Improbe` + `MPI_Mrecv` on
//!   `(ANY_SOURCE, TAG_HDR)`; MPI guarantees that messages from one sender on one
//!   (communicator, tag) are matched in order, so dsmpi messages from one sender
//!   arrive here in send order, whatever their (ctx, tag);
//! - an arriving message matches the earliest posted receive that accepts it, else it
//!   joins the unexpected queue; a new receive takes the earliest unexpected message
//!   that it accepts. Hence dsmpi's rules hold: messages from one sender on one
//!   (ctx, tag) never overtake, and receives match the earliest message.
//!
//! Messages up to the eager limit (`DSMPI_EAGER_LIMIT`, 64 KiB) travel whole in the
//! header message: the send copies them behind the header and completes at once
//! (buffered, like the engine's eager sends); the receive copies them out. Larger
//! messages send only a header (a rendezvous "ready to send" carrying a per-pair bulk
//! tag) followed by the payload as a second MPI message on that bulk tag, straight
//! from the user's buffer; the receiver posts `MPI_Irecv` for it straight into its
//! buffer once dsmpi has matched the header, so large messages are never copied and
//! MPI's own rendezvous protocol moves them (RDMA on InfiniBand). Bulk tags cycle
//! through `1..=min(MPI_TAG_UB, 2^30)` per (sender, receiver): a clash would need that
//! many large messages outstanding between one pair.
//!
//! # Threads
//!
//! The transport is `Send + Sync` and called from several threads. Every MPI call is
//! made under one mutex (which also guards the matching queues), so MPI only needs
//! `MPI_THREAD_SERIALIZED`; `MPI_THREAD_MULTIPLE` is requested anyway so that the
//! program may use MPI itself, and anything below `SERIALIZED` is refused. Blocking
//! calls never sleep inside MPI with the mutex held: they poll (`MPI_Improbe`,
//! `MPI_Test`) with the mutex released between polls, spinning for `DSMPI_SPIN_US`
//! (default 50 µs, 0 when the host has more ranks than cores), then yielding, then
//! sleeping 50 µs between polls after 10 ms idle.
//!
//! # Native collectives
//!
//! [`Transport::native`] offers MPI's own collectives ([`NativeCollectives`]) so that a
//! program can compare them with dsmpi's. They run on an MPI communicator whose group
//! is the dsmpi communicator's: for the world communicator the dup'ed world one above;
//! for any other, one made with `MPI_Comm_create_group` on the first native collective
//! of that dsmpi context and cached (freed by `finalize`). `MPI_Comm_create_group` is
//! collective over the group's members only, which is fine: so is the dsmpi
//! collective that asks for it. It blocks, holding the transport's mutex, until every
//! member has arrived, so a member must not wait for p2p from another thread of this
//! process before joining its first native collective on a new communicator.
//!
//! Ordering: MPI never matches a collective's messages with point-to-point ones, even
//! on the same communicator, so native collectives cannot steal dsmpi messages (which
//! are all p2p) nor the other way round. The collectives themselves are started with
//! the non-blocking calls (`MPI_Ibcast`, ...) under the mutex, in the order this
//! process calls them, and completed by polling `MPI_Test` with the mutex released
//! between polls, so other threads' dsmpi traffic keeps flowing meanwhile. As in MPI,
//! every member must call the collectives of one communicator in the same order.
//!
//! # Errors
//!
//! The communicator's error handler is `MPI_ERRORS_RETURN`: a failing MPI call becomes
//! an [`Error::Io`] whose source is an [`MpiError`] naming the call, the code and
//! MPI's message. Lost peers are MPI's business: most MPI libraries abort the job.

use std::collections::{HashMap, VecDeque};
use std::ffi::{c_char, c_int, c_void};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use mpi::ffi;

use super::native::{NativeCollectives, NativeKind, NativeOp, NativeScope};
use super::{Completion, Posted, RawStatus, RecvTarget, ReqId, Transport};
use crate::error::{Error, Result};
use crate::Tag;

/// MPI tag of the header messages (every dsmpi message starts with one).
pub const TAG_HDR: c_int = 0;

/// Bytes of the header in front of every header message.
pub const HDR: usize = 32;

/// Largest bulk tag used, whatever the MPI library allows beyond it.
const BULK_TAG_CAP: c_int = 1 << 30;

/// Header kinds.
const KIND_EAGER: u32 = 0;
const KIND_RTS: u32 = 1;

/// A failed MPI call.
#[derive(Debug, thiserror::Error)]
#[error("{call} failed with MPI error {code}: {message}")]
pub struct MpiError {
    /// The MPI function.
    pub call: &'static str,
    /// Its return code.
    pub code: i32,
    /// `MPI_Error_string` of the code.
    pub message: String,
}

fn error_string(code: c_int) -> String {
    let mut buf = vec![0 as c_char; 1024.max(ffi::MPI_MAX_ERROR_STRING as usize + 1)];
    let mut len: c_int = 0;
    // SAFETY: `buf` has at least MPI_MAX_ERROR_STRING bytes, as MPI_Error_string needs.
    let rc = unsafe { ffi::MPI_Error_string(code, buf.as_mut_ptr(), &mut len) };
    if rc != ffi::MPI_SUCCESS as c_int {
        return format!("(no message for code {code})");
    }
    let bytes: Vec<u8> = buf[..len.clamp(0, buf.len() as c_int) as usize]
        .iter()
        .map(|&c| c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Turns an MPI return code into a runtime error (`what` says what dsmpi was doing).
fn check(call: &'static str, what: impl FnOnce() -> String, code: c_int) -> Result<()> {
    if code == ffi::MPI_SUCCESS as c_int {
        return Ok(());
    }
    Err(Error::io(
        what(),
        std::io::Error::other(MpiError {
            call,
            code,
            message: error_string(code),
        }),
    ))
}

/// An MPI handle (communicator or request) that may move between threads.
#[derive(Clone, Copy, Debug)]
struct Handle<T>(T);
// SAFETY: MPI handles are plain identifiers (an int or a pointer to library-owned
// state), not tied to the thread that made them; every use of one happens under the
// transport's mutex, which serializes MPI calls as MPI_THREAD_SERIALIZED requires.
unsafe impl<T> Send for Handle<T> {}
// SAFETY: as above; shared references only copy the handle out under the mutex.
unsafe impl<T> Sync for Handle<T> {}

/// Caller memory of a posted receive.
#[derive(Clone, Copy, Debug)]
struct BufPtr(*mut u8);
// SAFETY: the pointer is only written while its receive is outstanding, under the
// mutex, which irecv's contract keeps valid and unaccessed by anyone else.
unsafe impl Send for BufPtr {}

#[derive(Clone, Copy, Debug)]
enum Target {
    Buf(BufPtr, usize),
    Alloc,
}

/// A message whose header has arrived but that no receive has taken yet.
#[derive(Debug)]
struct Arrived {
    src: usize,
    ctx: u64,
    tag: Tag,
    body: Body,
}

#[derive(Debug)]
enum Body {
    /// The whole message (payload only, header stripped).
    Eager(Vec<u8>),
    /// A large message waiting on `bulk_tag` from the sender.
    Rts { len: usize, bulk_tag: c_int },
}

impl Body {
    fn len(&self) -> usize {
        match self {
            Body::Eager(v) => v.len(),
            Body::Rts { len, .. } => *len,
        }
    }
}

/// What a finished bulk transfer turns into.
#[derive(Debug)]
enum BulkEnd {
    Send,
    /// Received straight into caller memory.
    InPlace,
    /// Received into `buf`, returned to the caller.
    Alloc,
    /// Received into a scratch buffer because the caller's (`cap` bytes) was too small.
    Truncated {
        cap: usize,
    },
}

#[derive(Debug)]
enum Req {
    /// Complete; waiting to be collected by test/wait.
    Done(Result<Completion>),
    /// A receive in the posted queue.
    Posted {
        src: Option<usize>,
        ctx: u64,
        tag: Option<Tag>,
        target: Target,
    },
    /// A large message moving as its own MPI message.
    Bulk {
        mpi: Handle<ffi::MPI_Request>,
        status: RawStatus,
        /// Owned receive memory (scratch or allocated); its heap block never moves.
        buf: Option<Vec<u8>>,
        end: BulkEnd,
    },
}

#[derive(Debug, Default)]
struct State {
    next_id: ReqId,
    reqs: HashMap<ReqId, Req>,
    posted: VecDeque<ReqId>,
    unexpected: VecDeque<Arrived>,
    /// Header messages in flight and the memory MPI reads them from.
    detached: VecDeque<(Handle<ffi::MPI_Request>, Vec<u8>)>,
    /// Next bulk tag per destination.
    next_bulk: Vec<c_int>,
    /// MPI communicators made for native collectives, per dsmpi context (library
    /// plane, `ctx | 1`); freed by `finalize`.
    native: HashMap<u64, Handle<ffi::MPI_Comm>>,
    closed: bool,
}

/// dsmpi's transport over MPI: see the module documentation.
#[derive(Debug)]
pub struct MpiTransport {
    rank: usize,
    size: usize,
    hosts: Vec<String>,
    comm: Handle<ffi::MPI_Comm>,
    eager_limit: usize,
    bulk_tag_max: c_int,
    spin: Duration,
    /// Whether `init` called MPI_Init (then `finalize` calls MPI_Finalize).
    owns_mpi: bool,
    state: Mutex<State>,
}

fn matches(
    want_src: Option<usize>,
    want_ctx: u64,
    want_tag: Option<Tag>,
    src: usize,
    ctx: u64,
    tag: Tag,
) -> bool {
    want_ctx == ctx && want_src.is_none_or(|s| s == src) && want_tag.is_none_or(|t| t == tag)
}

fn encode_header(ctx: u64, tag: Tag, kind: u32, len: usize, bulk_tag: c_int) -> [u8; HDR] {
    let mut h = [0u8; HDR];
    h[0..8].copy_from_slice(&ctx.to_le_bytes());
    h[8..12].copy_from_slice(&tag.to_le_bytes());
    h[12..16].copy_from_slice(&kind.to_le_bytes());
    h[16..24].copy_from_slice(&(len as u64).to_le_bytes());
    h[24..28].copy_from_slice(&bulk_tag.to_le_bytes());
    h
}

/// Parses a header message from `src` into an arrival.
fn decode(src: usize, mut msg: Vec<u8>) -> Result<Arrived> {
    let bad = |why: &str| {
        Error::Bootstrap(format!(
            "mpi backend: malformed header from rank {src}: {why}"
        ))
    };
    if msg.len() < HDR {
        return Err(bad("shorter than a header"));
    }
    let u64_at = |i: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&msg[i..i + 8]);
        u64::from_le_bytes(b)
    };
    let u32_at = |i: usize| {
        let mut b = [0u8; 4];
        b.copy_from_slice(&msg[i..i + 4]);
        u32::from_le_bytes(b)
    };
    let ctx = u64_at(0);
    let tag = u32_at(8) as i32;
    let kind = u32_at(12);
    let len = usize::try_from(u64_at(16)).map_err(|_| bad("length"))?;
    let bulk_tag = u32_at(24) as i32;
    let body = match kind {
        KIND_EAGER => {
            if msg.len() != HDR + len {
                return Err(bad("eager length mismatch"));
            }
            msg.drain(..HDR);
            Body::Eager(msg)
        }
        KIND_RTS => Body::Rts { len, bulk_tag },
        _ => return Err(bad("unknown kind")),
    };
    Ok(Arrived {
        src,
        ctx,
        tag,
        body,
    })
}

fn count_of(len: usize, what: &str) -> Result<c_int> {
    c_int::try_from(len).map_err(|_| {
        Error::InvalidArgument(format!(
            "{what} of {len} bytes: the mpi backend moves at most {} bytes per message",
            c_int::MAX as usize - HDR
        ))
    })
}

/// Paces a polling loop: spin, then yield, then short sleeps.
struct Backoff {
    start: Instant,
    spin: Duration,
}

impl Backoff {
    fn new(spin: Duration) -> Backoff {
        Backoff {
            start: Instant::now(),
            spin,
        }
    }

    fn pause(&self) {
        let idle = self.start.elapsed();
        if idle < self.spin {
            std::hint::spin_loop();
        } else if idle < self.spin + Duration::from_millis(10) {
            std::thread::yield_now();
        } else {
            std::thread::sleep(Duration::from_micros(50));
        }
    }
}

impl MpiTransport {
    /// Initializes MPI (unless the program already did) and builds the transport.
    ///
    /// Collective over `MPI_COMM_WORLD`: every rank of the MPI job must call it.
    pub fn init() -> Result<MpiTransport> {
        let boot = |call: &'static str, code: c_int| {
            check(call, || "starting the mpi backend".to_string(), code)
                .map_err(|e| Error::Bootstrap(e.to_string()))
        };
        let mut already: c_int = 0;
        // SAFETY: MPI_Initialized may be called at any time, from any thread.
        boot("MPI_Initialized", unsafe {
            ffi::MPI_Initialized(&mut already)
        })?;
        let owns_mpi = already == 0;
        let mut provided: c_int = 0;
        if owns_mpi {
            // SAFETY: MPI is not initialized yet (checked above); null argc/argv is
            // allowed by MPI-2 and later.
            boot("MPI_Init_thread", unsafe {
                ffi::MPI_Init_thread(
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    ffi::RSMPI_THREAD_MULTIPLE,
                    &mut provided,
                )
            })?;
        } else {
            // SAFETY: MPI is initialized.
            boot("MPI_Query_thread", unsafe {
                ffi::MPI_Query_thread(&mut provided)
            })?;
        }
        // SAFETY: reading MPI's constant handles after initialization.
        let (world, serialized) = unsafe { (ffi::RSMPI_COMM_WORLD, ffi::RSMPI_THREAD_SERIALIZED) };
        if provided < serialized {
            return Err(Error::Bootstrap(format!(
                "the MPI library offers thread level {provided}, below MPI_THREAD_SERIALIZED: \
                 dsmpi calls MPI from several threads (one at a time)"
            )));
        }
        let (mut rank, mut size): (c_int, c_int) = (0, 0);
        let mut comm: ffi::MPI_Comm = world;
        let mut shm: ffi::MPI_Comm = world;
        let mut local: c_int = 1;
        // SAFETY: MPI is initialized; every out-pointer is a live local.
        unsafe {
            boot("MPI_Comm_rank", ffi::MPI_Comm_rank(world, &mut rank))?;
            boot("MPI_Comm_size", ffi::MPI_Comm_size(world, &mut size))?;
            boot("MPI_Comm_dup", ffi::MPI_Comm_dup(world, &mut comm))?;
            boot(
                "MPI_Comm_set_errhandler",
                ffi::MPI_Comm_set_errhandler(comm, ffi::RSMPI_ERRORS_RETURN),
            )?;
            boot(
                "MPI_Comm_split_type",
                ffi::MPI_Comm_split_type(
                    comm,
                    ffi::RSMPI_COMM_TYPE_SHARED,
                    rank,
                    ffi::RSMPI_INFO_NULL,
                    &mut shm,
                ),
            )?;
            boot("MPI_Comm_size", ffi::MPI_Comm_size(shm, &mut local))?;
            boot("MPI_Comm_free", ffi::MPI_Comm_free(&mut shm))?;
        }
        let mut tag_ub: *mut c_int = std::ptr::null_mut();
        let mut flag: c_int = 0;
        // SAFETY: MPI_TAG_UB's attribute value is a pointer to an int owned by MPI;
        // MPI writes that pointer into `tag_ub`.
        boot("MPI_Comm_get_attr", unsafe {
            ffi::MPI_Comm_get_attr(
                world,
                ffi::MPI_TAG_UB as c_int,
                (&mut tag_ub as *mut *mut c_int).cast::<c_void>(),
                &mut flag,
            )
        })?;
        let tag_ub = if flag != 0 && !tag_ub.is_null() {
            // SAFETY: MPI set the flag, so `tag_ub` points at its int.
            unsafe { *tag_ub }
        } else {
            32767
        };

        // Host names: a fixed-width all-gather of MPI_Get_processor_name.
        // SAFETY: reading an MPI constant.
        let width = usize::try_from(unsafe { ffi::RSMPI_MAX_PROCESSOR_NAME })
            .unwrap_or(256)
            .max(1);
        let n = usize::try_from(size).map_err(|_| Error::Bootstrap("negative size".into()))?;
        let mut mine = vec![0 as c_char; width];
        let mut len: c_int = 0;
        let mut all = vec![0 as c_char; width * n];
        // SAFETY: `mine` has MPI_MAX_PROCESSOR_NAME bytes; `all` has `width` bytes
        // per rank; both outlive the calls.
        unsafe {
            boot(
                "MPI_Get_processor_name",
                ffi::MPI_Get_processor_name(mine.as_mut_ptr(), &mut len),
            )?;
            boot(
                "MPI_Allgather",
                ffi::MPI_Allgather(
                    mine.as_ptr().cast(),
                    width as c_int,
                    ffi::RSMPI_UINT8_T,
                    all.as_mut_ptr().cast(),
                    width as c_int,
                    ffi::RSMPI_UINT8_T,
                    comm,
                ),
            )?;
        }
        let hosts = all
            .chunks(width)
            .map(|c| {
                let b: Vec<u8> = c
                    .iter()
                    .take_while(|&&x| x != 0)
                    .map(|&x| x as u8)
                    .collect();
                String::from_utf8_lossy(&b).into_owned()
            })
            .collect();

        let num = |var: &str| {
            std::env::var(var)
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        let cores = crate::bootstrap::host_cpus();
        let default_spin = if local as usize > cores { 0 } else { 50 };
        let state = State {
            next_bulk: vec![1; n],
            ..State::default()
        };
        Ok(MpiTransport {
            rank: rank as usize,
            size: n,
            hosts,
            comm: Handle(comm),
            eager_limit: num("DSMPI_EAGER_LIMIT").unwrap_or(64 * 1024) as usize,
            bulk_tag_max: tag_ub.clamp(32767, BULK_TAG_CAP),
            spin: Duration::from_micros(num("DSMPI_SPIN_US").unwrap_or(default_spin)),
            owns_mpi,
            state: Mutex::new(state),
        })
    }

    /// The eager limit in bytes: larger messages go by rendezvous.
    pub fn eager_limit(&self) -> usize {
        self.eager_limit
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn open(&self) -> Result<MutexGuard<'_, State>> {
        let st = self.lock();
        if st.closed {
            return Err(Error::Finalized);
        }
        Ok(st)
    }

    /// Sends a header message (with `payload` behind it) to `dest`, detached: the
    /// buffer lives in the state until MPI is done with it.
    fn send_header(
        &self,
        st: &mut State,
        dest: usize,
        hdr: [u8; HDR],
        payload: &[u8],
    ) -> Result<()> {
        let mut msg = Vec::with_capacity(HDR + payload.len());
        msg.extend_from_slice(&hdr);
        msg.extend_from_slice(payload);
        let count = count_of(msg.len(), "a message")?;
        // SAFETY: reading a constant handle.
        let mut req: ffi::MPI_Request = unsafe { ffi::RSMPI_REQUEST_NULL };
        // SAFETY: `msg` is kept in `st.detached` (its heap block does not move) until
        // MPI_Test reports the send complete; `dest` < size; the mutex is held.
        let rc = unsafe {
            ffi::MPI_Isend(
                msg.as_ptr().cast(),
                count,
                ffi::RSMPI_UINT8_T,
                dest as c_int,
                TAG_HDR,
                self.comm.0,
                &mut req,
            )
        };
        check(
            "MPI_Isend",
            || format!("sending a header to rank {dest}"),
            rc,
        )?;
        st.detached.push_back((Handle(req), msg));
        Ok(())
    }

    /// Moves MPI along: retires finished header sends, takes in arrived headers.
    fn progress(&self, st: &mut State) -> Result<()> {
        while let Some((req, _)) = st.detached.front_mut() {
            let mut flag: c_int = 0;
            // SAFETY: `req` is an active request from MPI_Isend, tested under the mutex.
            let rc = unsafe { ffi::MPI_Test(&mut req.0, &mut flag, ffi::RSMPI_STATUS_IGNORE) };
            check("MPI_Test", || "completing a header send".into(), rc)?;
            if flag == 0 {
                break;
            }
            st.detached.pop_front();
        }
        for _ in 0..64 {
            let mut flag: c_int = 0;
            // SAFETY: constant handle; zeroed MPI_Status is a valid all-integer struct.
            let mut msg: ffi::MPI_Message = unsafe { ffi::RSMPI_MESSAGE_NULL };
            let mut status: ffi::MPI_Status = unsafe { std::mem::zeroed() };
            // SAFETY: live out-pointers; the mutex is held.
            let rc = unsafe {
                ffi::MPI_Improbe(
                    ffi::RSMPI_ANY_SOURCE,
                    TAG_HDR,
                    self.comm.0,
                    &mut flag,
                    &mut msg,
                    &mut status,
                )
            };
            check("MPI_Improbe", || "looking for messages".into(), rc)?;
            if flag == 0 {
                break;
            }
            let mut count: c_int = 0;
            // SAFETY: `status` was filled by MPI_Improbe.
            let rc = unsafe { ffi::MPI_Get_count(&status, ffi::RSMPI_UINT8_T, &mut count) };
            check("MPI_Get_count", || "sizing a message".into(), rc)?;
            let src = usize::try_from(status.MPI_SOURCE).unwrap_or(usize::MAX);
            let mut buf = vec![0u8; usize::try_from(count).unwrap_or(0)];
            // SAFETY: `buf` has `count` bytes; `msg` is the matched message handle from
            // MPI_Improbe, received exactly once.
            let rc = unsafe {
                ffi::MPI_Mrecv(
                    buf.as_mut_ptr().cast(),
                    count,
                    ffi::RSMPI_UINT8_T,
                    &mut msg,
                    ffi::RSMPI_STATUS_IGNORE,
                )
            };
            check(
                "MPI_Mrecv",
                || format!("receiving a message from rank {src}"),
                rc,
            )?;
            let arrived = decode(src, buf)?;
            self.arrive(st, arrived);
        }
        Ok(())
    }

    /// A message arrived: hand it to the earliest posted receive that accepts it, or
    /// queue it as unexpected.
    fn arrive(&self, st: &mut State, a: Arrived) {
        let pos = st.posted.iter().position(|id| match st.reqs.get(id) {
            Some(Req::Posted { src, ctx, tag, .. }) => {
                matches(*src, *ctx, *tag, a.src, a.ctx, a.tag)
            }
            _ => false,
        });
        let Some(id) = pos.and_then(|p| st.posted.remove(p)) else {
            st.unexpected.push_back(a);
            return;
        };
        let Some(Req::Posted { target, .. }) = st.reqs.get(&id) else {
            st.unexpected.push_back(a);
            return;
        };
        let target = *target;
        let req = self.bind(target, a);
        st.reqs.insert(id, req);
    }

    /// What receive `target` becomes once message `a` is matched to it.
    fn bind(&self, target: Target, a: Arrived) -> Req {
        let status = RawStatus {
            source: a.src,
            tag: a.tag,
            bytes: a.body.len(),
        };
        match a.body {
            Body::Eager(bytes) => Req::Done(match target {
                Target::Buf(_, cap) if bytes.len() > cap => Err(Error::Truncated {
                    sender: a.src,
                    tag: a.tag,
                    len: bytes.len(),
                    capacity: cap,
                }),
                Target::Buf(ptr, _) => {
                    // SAFETY: the receive is outstanding, so `ptr` has `cap >= len`
                    // writable bytes that nobody else touches (irecv's contract).
                    unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), ptr.0, bytes.len()) };
                    Ok(Completion { status, data: None })
                }
                Target::Alloc => Ok(Completion {
                    status,
                    data: Some(bytes),
                }),
            }),
            Body::Rts { len, bulk_tag } => {
                let (ptr, buf, end) = match target {
                    Target::Buf(ptr, cap) if len <= cap => (ptr.0, None, BulkEnd::InPlace),
                    Target::Buf(_, cap) => {
                        let mut v = vec![0u8; len];
                        (v.as_mut_ptr(), Some(v), BulkEnd::Truncated { cap })
                    }
                    Target::Alloc => {
                        let mut v = vec![0u8; len];
                        (v.as_mut_ptr(), Some(v), BulkEnd::Alloc)
                    }
                };
                // SAFETY: constant handle.
                let mut req: ffi::MPI_Request = unsafe { ffi::RSMPI_REQUEST_NULL };
                // SAFETY: `ptr` has `len` writable bytes: the caller's buffer (still
                // outstanding) or `buf`, whose heap block stays put inside the request
                // until MPI completes it. The sender's length fits a c_int (checked
                // there), and the mutex is held.
                let rc = unsafe {
                    ffi::MPI_Irecv(
                        ptr.cast(),
                        len as c_int,
                        ffi::RSMPI_UINT8_T,
                        a.src as c_int,
                        bulk_tag,
                        self.comm.0,
                        &mut req,
                    )
                };
                match check(
                    "MPI_Irecv",
                    || format!("receiving a large message from rank {}", a.src),
                    rc,
                ) {
                    Ok(()) => Req::Bulk {
                        mpi: Handle(req),
                        status,
                        buf,
                        end,
                    },
                    Err(e) => Req::Done(Err(e)),
                }
            }
        }
    }

    /// Outer error: testing itself failed. Inner: the request's outcome, if complete.
    fn test_inner(&self, id: ReqId) -> Result<Option<Result<Completion>>> {
        let mut st = self.lock();
        self.progress(&mut st)?;
        let done = match st.reqs.get_mut(&id) {
            None => {
                return Err(Error::InvalidArgument(format!(
                    "request {id} is unknown to the mpi transport (already completed?)"
                )))
            }
            Some(Req::Posted { .. }) => false,
            Some(Req::Done(_)) => true,
            Some(Req::Bulk { mpi, .. }) => {
                let mut flag: c_int = 0;
                // SAFETY: an active request from MPI_Isend/MPI_Irecv whose memory is
                // still valid; the mutex is held.
                let rc = unsafe { ffi::MPI_Test(&mut mpi.0, &mut flag, ffi::RSMPI_STATUS_IGNORE) };
                if let Err(e) = check("MPI_Test", || "completing a large message".into(), rc) {
                    st.reqs.remove(&id);
                    return Ok(Some(Err(e)));
                }
                flag != 0
            }
        };
        if !done {
            return Ok(None);
        }
        Ok(st.reqs.remove(&id).map(|r| match r {
            Req::Done(r) => r,
            Req::Bulk {
                status, buf, end, ..
            } => match end {
                BulkEnd::Send | BulkEnd::InPlace => Ok(Completion { status, data: None }),
                BulkEnd::Alloc => Ok(Completion { status, data: buf }),
                BulkEnd::Truncated { cap } => Err(Error::Truncated {
                    sender: status.source,
                    tag: status.tag,
                    len: status.bytes,
                    capacity: cap,
                }),
            },
            Req::Posted { .. } => Err(Error::InvalidArgument("request still posted".into())),
        }))
    }

    fn check_rank(&self, r: usize) -> Result<()> {
        if r >= self.size {
            return Err(Error::RankOutOfRange {
                rank: r,
                size: self.size,
            });
        }
        Ok(())
    }

    fn new_id(st: &mut State) -> ReqId {
        st.next_id += 1;
        st.next_id
    }
}

impl Transport for MpiTransport {
    fn rank(&self) -> usize {
        self.rank
    }

    fn size(&self) -> usize {
        self.size
    }

    fn host(&self, rank: usize) -> &str {
        self.hosts.get(rank).map_or("?", |h| h.as_str())
    }

    fn name(&self) -> &'static str {
        "mpi"
    }

    unsafe fn isend(
        &self,
        dest: usize,
        ctx: u64,
        tag: Tag,
        data: *const u8,
        len: usize,
    ) -> Result<Posted> {
        self.check_rank(dest)?;
        count_of(len.saturating_add(HDR), "a message")?;
        let mut st = self.open()?;
        let status = RawStatus {
            source: dest,
            tag,
            bytes: len,
        };
        let id = Self::new_id(&mut st);
        if len <= self.eager_limit {
            let payload: &[u8] = if len == 0 {
                &[]
            } else {
                // SAFETY: the caller guarantees `len` readable bytes at `data` until
                // the request completes; they are copied out before this returns.
                unsafe { std::slice::from_raw_parts(data, len) }
            };
            self.send_header(
                &mut st,
                dest,
                encode_header(ctx, tag, KIND_EAGER, len, 0),
                payload,
            )?;
            st.reqs
                .insert(id, Req::Done(Ok(Completion { status, data: None })));
            return Ok(Posted::Pending(id));
        }
        let bulk_tag = st.next_bulk[dest];
        st.next_bulk[dest] = if bulk_tag >= self.bulk_tag_max {
            1
        } else {
            bulk_tag + 1
        };
        self.send_header(
            &mut st,
            dest,
            encode_header(ctx, tag, KIND_RTS, len, bulk_tag),
            &[],
        )?;
        // SAFETY: constant handle.
        let mut req: ffi::MPI_Request = unsafe { ffi::RSMPI_REQUEST_NULL };
        // SAFETY: the caller keeps `len` bytes at `data` valid until this request
        // completes, which is when MPI_Test reports the MPI send done; the mutex is held.
        let rc = unsafe {
            ffi::MPI_Isend(
                data.cast(),
                len as c_int,
                ffi::RSMPI_UINT8_T,
                dest as c_int,
                bulk_tag,
                self.comm.0,
                &mut req,
            )
        };
        check(
            "MPI_Isend",
            || format!("sending {len} bytes to rank {dest}"),
            rc,
        )?;
        st.reqs.insert(
            id,
            Req::Bulk {
                mpi: Handle(req),
                status,
                buf: None,
                end: BulkEnd::Send,
            },
        );
        Ok(Posted::Pending(id))
    }

    unsafe fn irecv(
        &self,
        source: Option<usize>,
        ctx: u64,
        tag: Option<Tag>,
        target: RecvTarget,
    ) -> Result<ReqId> {
        if let Some(s) = source {
            self.check_rank(s)?;
        }
        let target = match target {
            RecvTarget::Buffer { ptr, cap } => Target::Buf(BufPtr(ptr), cap),
            RecvTarget::Allocate => Target::Alloc,
        };
        let mut st = self.open()?;
        self.progress(&mut st)?;
        let id = Self::new_id(&mut st);
        let pos = st
            .unexpected
            .iter()
            .position(|a| matches(source, ctx, tag, a.src, a.ctx, a.tag));
        match pos.and_then(|p| st.unexpected.remove(p)) {
            Some(a) => {
                let req = self.bind(target, a);
                st.reqs.insert(id, req);
            }
            None => {
                st.reqs.insert(
                    id,
                    Req::Posted {
                        src: source,
                        ctx,
                        tag,
                        target,
                    },
                );
                st.posted.push_back(id);
            }
        }
        Ok(id)
    }

    fn test(&self, req: ReqId) -> Result<Option<Completion>> {
        self.test_inner(req)?.transpose()
    }

    fn wait(&self, req: ReqId) -> Result<Completion> {
        let backoff = Backoff::new(self.spin);
        loop {
            if let Some(r) = self.test_inner(req)? {
                return r;
            }
            backoff.pause();
        }
    }

    fn wait_any(&self, reqs: &[ReqId]) -> Result<(usize, Result<Completion>)> {
        if reqs.is_empty() {
            return Err(Error::InvalidArgument("wait_any on no requests".into()));
        }
        let backoff = Backoff::new(self.spin);
        loop {
            for (i, &r) in reqs.iter().enumerate() {
                if let Some(out) = self.test_inner(r)? {
                    return Ok((i, out));
                }
            }
            backoff.pause();
        }
    }

    fn iprobe(
        &self,
        source: Option<usize>,
        ctx: u64,
        tag: Option<Tag>,
    ) -> Result<Option<RawStatus>> {
        let mut st = self.open()?;
        self.progress(&mut st)?;
        Ok(st
            .unexpected
            .iter()
            .find(|a| matches(source, ctx, tag, a.src, a.ctx, a.tag))
            .map(|a| RawStatus {
                source: a.src,
                tag: a.tag,
                bytes: a.body.len(),
            }))
    }

    fn probe(&self, source: Option<usize>, ctx: u64, tag: Option<Tag>) -> Result<RawStatus> {
        let backoff = Backoff::new(self.spin);
        loop {
            if let Some(s) = self.iprobe(source, ctx, tag)? {
                return Ok(s);
            }
            backoff.pause();
        }
    }

    fn finalize(&self) -> Result<()> {
        {
            let mut st = self.lock();
            if st.closed {
                return Ok(());
            }
            st.closed = true;
        }
        // Let the header sends finish, then meet every rank (MPI_Ibarrier, polled so
        // that incoming headers keep being taken in), then let MPI go.
        let backoff = Backoff::new(self.spin);
        let mut barrier: Option<Handle<ffi::MPI_Request>> = None;
        loop {
            let mut st = self.lock();
            self.progress(&mut st)?;
            if !st.detached.is_empty() {
                drop(st);
                backoff.pause();
                continue;
            }
            let req = match &mut barrier {
                Some(r) => r,
                None => {
                    // SAFETY: constant handle.
                    let mut r: ffi::MPI_Request = unsafe { ffi::RSMPI_REQUEST_NULL };
                    // SAFETY: live out-pointer; the mutex is held.
                    let rc = unsafe { ffi::MPI_Ibarrier(self.comm.0, &mut r) };
                    check("MPI_Ibarrier", || "finalizing".into(), rc)?;
                    barrier.insert(Handle(r))
                }
            };
            let mut flag: c_int = 0;
            // SAFETY: an active barrier request; the mutex is held.
            let rc = unsafe { ffi::MPI_Test(&mut req.0, &mut flag, ffi::RSMPI_STATUS_IGNORE) };
            check("MPI_Test", || "finalizing".into(), rc)?;
            if flag != 0 {
                break;
            }
            drop(st);
            backoff.pause();
        }
        let mut st = self.lock();
        // Sorted so that every rank frees the communicators it shares with others in
        // the same order (MPI_Comm_free is collective in the standard).
        let mut natives: Vec<(u64, Handle<ffi::MPI_Comm>)> = st.native.drain().collect();
        natives.sort_by_key(|&(ctx, _)| ctx);
        for (_, mut c) in natives {
            // SAFETY: made by MPI_Comm_create_group for native collectives, none of
            // which is active (each completes before its call returns).
            let rc = unsafe { ffi::MPI_Comm_free(&mut c.0) };
            check("MPI_Comm_free", || "finalizing".into(), rc)?;
        }
        let mut comm = self.comm.0;
        // SAFETY: the communicator is ours and no request on it is active any more
        // (headers done, barrier done; bulk requests are the user's to complete).
        let rc = unsafe { ffi::MPI_Comm_free(&mut comm) };
        check("MPI_Comm_free", || "finalizing".into(), rc)?;
        if self.owns_mpi {
            // SAFETY: this transport initialized MPI and is closed: no more MPI calls.
            let rc = unsafe { ffi::MPI_Finalize() };
            check("MPI_Finalize", || "finalizing".into(), rc)?;
        }
        Ok(())
    }

    fn native(&self) -> Option<&dyn NativeCollectives> {
        Some(self)
    }

    fn abort(&self) {
        let mut st = self.lock();
        st.closed = true;
        // SAFETY: MPI is initialized; MPI_Abort ends every process of the job and does
        // not return in practice.
        unsafe {
            ffi::MPI_Abort(ffi::RSMPI_COMM_WORLD, 1);
        }
    }
}

/// MPI's datatype for a native element kind.
fn mpi_datatype(kind: NativeKind) -> ffi::MPI_Datatype {
    // SAFETY: reading MPI's constant handles (MPI is initialized while a transport
    // exists).
    unsafe {
        match kind {
            NativeKind::U8 => ffi::RSMPI_UINT8_T,
            NativeKind::I8 => ffi::RSMPI_INT8_T,
            NativeKind::U16 => ffi::RSMPI_UINT16_T,
            NativeKind::I16 => ffi::RSMPI_INT16_T,
            NativeKind::U32 => ffi::RSMPI_UINT32_T,
            NativeKind::I32 => ffi::RSMPI_INT32_T,
            NativeKind::U64 => ffi::RSMPI_UINT64_T,
            NativeKind::I64 => ffi::RSMPI_INT64_T,
            NativeKind::F32 => ffi::RSMPI_FLOAT,
            NativeKind::F64 => ffi::RSMPI_DOUBLE,
        }
    }
}

/// MPI's operation for a native reduction.
fn mpi_op(op: NativeOp) -> ffi::MPI_Op {
    // SAFETY: reading MPI's constant handles.
    unsafe {
        match op {
            NativeOp::Sum => ffi::RSMPI_SUM,
            NativeOp::Prod => ffi::RSMPI_PROD,
            NativeOp::Min => ffi::RSMPI_MIN,
            NativeOp::Max => ffi::RSMPI_MAX,
            NativeOp::BitAnd => ffi::RSMPI_BAND,
            NativeOp::BitOr => ffi::RSMPI_BOR,
            NativeOp::BitXor => ffi::RSMPI_BXOR,
            NativeOp::LogicalAnd => ffi::RSMPI_LAND,
            NativeOp::LogicalOr => ffi::RSMPI_LOR,
            NativeOp::LogicalXor => ffi::RSMPI_LXOR,
        }
    }
}

/// A local argument check of a native collective failed.
fn native_arg(what: String) -> Error {
    Error::InvalidArgument(format!("native collective: {what}"))
}

/// This rank's position in `scope.members`, checking the members are world ranks.
fn scope_rank(scope: &NativeScope<'_>, me: usize, size: usize) -> Result<usize> {
    if let Some(&bad) = scope.members.iter().find(|&&w| w >= size) {
        return Err(Error::RankOutOfRange { rank: bad, size });
    }
    scope
        .members
        .iter()
        .position(|&w| w == me)
        .ok_or_else(|| native_arg(format!("world rank {me} is not a member of its scope")))
}

/// Checks a native reduction's operands: `send_len` bytes (and `recv_len`, where the
/// receive buffer is used) a whole number of `kind` elements, and `op` defined on
/// `kind`. Returns the element count.
fn check_reduction(
    what: &str,
    op: NativeOp,
    kind: NativeKind,
    send_len: usize,
    recv_len: Option<usize>,
) -> Result<c_int> {
    if recv_len.is_some_and(|r| r != send_len) || !send_len.is_multiple_of(kind.size()) {
        return Err(native_arg(format!(
            "{what} of {send_len} bytes into {} bytes of {kind:?} elements",
            recv_len.map_or_else(|| "unused".to_string(), |r| r.to_string())
        )));
    }
    if kind.is_float()
        && !matches!(
            op,
            NativeOp::Sum | NativeOp::Prod | NativeOp::Min | NativeOp::Max
        )
    {
        return Err(native_arg(format!("{op:?} is not defined on {kind:?}")));
    }
    count_of(send_len / kind.size(), what)
}

/// Checks a v-collective's `counts` and `displs` (bytes) against the `n` members and
/// a buffer of `len` bytes, and converts them to MPI's `int`s.
fn v_layout(
    what: &str,
    counts: &[usize],
    displs: &[usize],
    n: usize,
    len: usize,
) -> Result<(Vec<c_int>, Vec<c_int>)> {
    if counts.len() != n || displs.len() != n {
        return Err(native_arg(format!(
            "{what}: {} counts and {} displacements for {n} members",
            counts.len(),
            displs.len()
        )));
    }
    for (r, (&c, &d)) in counts.iter().zip(displs).enumerate() {
        if d.checked_add(c).is_none_or(|end| end > len) {
            return Err(native_arg(format!(
                "{what}: block {r} ({c} bytes at {d}) runs past a buffer of {len} bytes"
            )));
        }
    }
    let ints = |v: &[usize], name: &str| {
        v.iter()
            .map(|&x| count_of(x, name))
            .collect::<Result<Vec<c_int>>>()
    };
    Ok((ints(counts, "a count")?, ints(displs, "a displacement")?))
}

/// The root's side of gatherv/scatterv: its `counts`/`displs` checked by [`v_layout`]
/// against its buffer of `len` bytes, and its own block against the `own` bytes it
/// contributes (`verb`: "sends" or "receives"). Away from the root MPI ignores the
/// counts but is handed arrays of `n` anyway: zeros.
#[allow(clippy::too_many_arguments)]
fn rooted_v_layout(
    what: &str,
    verb: &str,
    me: usize,
    root: usize,
    counts: &[usize],
    displs: &[usize],
    n: usize,
    len: usize,
    own: usize,
) -> Result<(Vec<c_int>, Vec<c_int>)> {
    if me != root {
        return Ok((vec![0; n], vec![0; n]));
    }
    let layout = v_layout(what, counts, displs, n, len)?;
    if counts[me] != own {
        return Err(native_arg(format!(
            "{what}: the root {verb} {own} bytes but counts {} for itself",
            counts[me]
        )));
    }
    Ok(layout)
}

fn check_root(root: usize, n: usize) -> Result<c_int> {
    if root >= n {
        return Err(Error::RankOutOfRange {
            rank: root,
            size: n,
        });
    }
    count_of(root, "a root rank")
}

impl MpiTransport {
    /// The MPI communicator for `scope`'s group, made (collectively over the members)
    /// and cached on first use. Called with the mutex held.
    fn native_comm(&self, st: &mut State, scope: &NativeScope<'_>) -> Result<ffi::MPI_Comm> {
        scope_rank(scope, self.rank, self.size)?;
        let is_world = scope.members.len() == self.size
            && scope.members.iter().enumerate().all(|(i, &w)| i == w);
        // The world communicator (context 0 and its library plane 1) uses the dup'ed
        // world communicator that also carries the p2p traffic: MPI keeps collective
        // and p2p matching apart. Other contexts with the world group (dups) get their
        // own, so that collectives on two of them in different orders on different
        // threads cannot cross.
        if is_world && scope.ctx | 1 == 1 {
            return Ok(self.comm.0);
        }
        let key = scope.ctx | 1;
        if let Some(c) = st.native.get(&key) {
            return Ok(c.0);
        }
        let ranks = scope
            .members
            .iter()
            .map(|&w| count_of(w, "a world rank"))
            .collect::<Result<Vec<c_int>>>()?;
        let n = count_of(ranks.len(), "a group")?;
        // The tag only tells apart concurrent creations over overlapping groups; any
        // value both sides derive alike will do, within the guaranteed tag range.
        let tag = ((key ^ (key >> 32)) % 32768) as c_int;
        let what = || format!("making an MPI communicator for dsmpi context {key:#x}");
        // SAFETY: constant handles.
        let (mut world_g, mut sub_g, mut newcomm) = unsafe {
            (
                ffi::RSMPI_GROUP_NULL,
                ffi::RSMPI_GROUP_NULL,
                ffi::RSMPI_COMM_NULL,
            )
        };
        // SAFETY: `self.comm` is live; `ranks` holds `n` valid ranks of it (checked by
        // scope_rank); the out-pointers are live locals; the mutex is held. The groups
        // are freed whatever happens to the communicator.
        let rc = unsafe { ffi::MPI_Comm_group(self.comm.0, &mut world_g) };
        check("MPI_Comm_group", what, rc)?;
        // SAFETY: as above.
        let rc = unsafe { ffi::MPI_Group_incl(world_g, n, ranks.as_ptr(), &mut sub_g) };
        let made = check("MPI_Group_incl", what, rc).and_then(|()| {
            // SAFETY: as above; collective over the members, who all get here from
            // the same dsmpi collective.
            let rc = unsafe { ffi::MPI_Comm_create_group(self.comm.0, sub_g, tag, &mut newcomm) };
            check("MPI_Comm_create_group", what, rc)?;
            // SAFETY: `newcomm` was just made.
            let rc = unsafe { ffi::MPI_Comm_set_errhandler(newcomm, ffi::RSMPI_ERRORS_RETURN) };
            check("MPI_Comm_set_errhandler", what, rc)
        });
        // SAFETY: the groups are ours (or GROUP_NULL, which is not freed).
        unsafe {
            if sub_g != ffi::RSMPI_GROUP_NULL {
                ffi::MPI_Group_free(&mut sub_g);
            }
            ffi::MPI_Group_free(&mut world_g);
        }
        made?;
        st.native.insert(key, Handle(newcomm));
        Ok(newcomm)
    }

    /// Starts a non-blocking collective on `scope`'s communicator with `start`, then
    /// polls it to completion, releasing the mutex between polls.
    ///
    /// The buffers `start` hands MPI must outlive this call, which the borrows of the
    /// callers (`&[u8]`/`&mut [u8]` held across it) guarantee: it returns only once
    /// MPI reports the request complete, or MPI_Test itself failed.
    fn run_native(
        &self,
        scope: &NativeScope<'_>,
        call: &'static str,
        start: impl FnOnce(ffi::MPI_Comm, &mut ffi::MPI_Request) -> c_int,
    ) -> Result<()> {
        let what = || format!("{call} on dsmpi context {:#x}", scope.ctx);
        let mut req = {
            let mut st = self.open()?;
            let comm = self.native_comm(&mut st, scope)?;
            // SAFETY: constant handle.
            let mut req: ffi::MPI_Request = unsafe { ffi::RSMPI_REQUEST_NULL };
            check(call, what, start(comm, &mut req))?;
            Handle(req)
        };
        let backoff = Backoff::new(self.spin);
        loop {
            {
                let _st = self.lock();
                let mut flag: c_int = 0;
                // SAFETY: an active request of a non-blocking collective whose buffers
                // the caller keeps borrowed; the mutex is held.
                let rc = unsafe { ffi::MPI_Test(&mut req.0, &mut flag, ffi::RSMPI_STATUS_IGNORE) };
                check("MPI_Test", what, rc)?;
                if flag != 0 {
                    return Ok(());
                }
            }
            backoff.pause();
        }
    }
}

impl NativeCollectives for MpiTransport {
    fn barrier(&self, scope: NativeScope<'_>) -> Result<()> {
        self.run_native(&scope, "MPI_Ibarrier", |comm, req| {
            // SAFETY: live communicator and out-pointer; the mutex is held.
            unsafe { ffi::MPI_Ibarrier(comm, req) }
        })
    }

    fn bcast(&self, scope: NativeScope<'_>, root: usize, buf: &mut [u8]) -> Result<()> {
        let root = check_root(root, scope.members.len())?;
        let count = count_of(buf.len(), "a broadcast")?;
        let ptr = buf.as_mut_ptr();
        self.run_native(&scope, "MPI_Ibcast", |comm, req| {
            // SAFETY: `ptr` has `count` bytes, borrowed until run_native returns.
            unsafe { ffi::MPI_Ibcast(ptr.cast(), count, ffi::RSMPI_UINT8_T, root, comm, req) }
        })
    }

    fn allreduce(
        &self,
        scope: NativeScope<'_>,
        op: NativeOp,
        kind: NativeKind,
        send: &[u8],
        recv: &mut [u8],
    ) -> Result<()> {
        let count = check_reduction("allreduce", op, kind, send.len(), Some(recv.len()))?;
        let (sp, rp) = (send.as_ptr(), recv.as_mut_ptr());
        let (dt, mop) = (mpi_datatype(kind), mpi_op(op));
        self.run_native(&scope, "MPI_Iallreduce", |comm, req| {
            // SAFETY: `sp` and `rp` have `count` elements of `dt` each, borrowed until
            // run_native returns; they do not overlap (one is & and one &mut).
            unsafe { ffi::MPI_Iallreduce(sp.cast(), rp.cast(), count, dt, mop, comm, req) }
        })
    }

    fn alltoall(&self, scope: NativeScope<'_>, send: &[u8], recv: &mut [u8]) -> Result<()> {
        let n = scope.members.len().max(1);
        if send.len() != recv.len() || send.len() / n * n != send.len() {
            return Err(native_arg(format!(
                "alltoall of {} bytes into {} bytes: not {n} equal blocks each",
                send.len(),
                recv.len()
            )));
        }
        count_of(send.len(), "an alltoall")?;
        let block = count_of(send.len() / n, "an alltoall block")?;
        let (sp, rp) = (send.as_ptr(), recv.as_mut_ptr());
        self.run_native(&scope, "MPI_Ialltoall", |comm, req| {
            // SAFETY: both buffers hold n blocks of `block` bytes (checked above),
            // borrowed until run_native returns.
            unsafe {
                ffi::MPI_Ialltoall(
                    sp.cast(),
                    block,
                    ffi::RSMPI_UINT8_T,
                    rp.cast(),
                    block,
                    ffi::RSMPI_UINT8_T,
                    comm,
                    req,
                )
            }
        })
    }

    fn gather(
        &self,
        scope: NativeScope<'_>,
        root: usize,
        send: &[u8],
        recv: &mut [u8],
    ) -> Result<()> {
        let (sp, rp) = (send.as_ptr(), recv.as_mut_ptr());
        let rooted = Rooted {
            op: "gather",
            call: "MPI_Igather",
            block: send.len(),
            whole: recv.len(),
        };
        // SAFETY: `send` has `block` bytes and, at the root, `recv` has n blocks of
        // it (`run_rooted` checks both); elsewhere MPI does not touch `recv`. Both
        // stay borrowed until this call returns.
        unsafe { self.run_rooted(&scope, root, rooted, sp, rp, ffi::MPI_Igather) }
    }

    fn scatter(
        &self,
        scope: NativeScope<'_>,
        root: usize,
        send: &[u8],
        recv: &mut [u8],
    ) -> Result<()> {
        let (sp, rp) = (send.as_ptr(), recv.as_mut_ptr());
        let rooted = Rooted {
            op: "scatter",
            call: "MPI_Iscatter",
            block: recv.len(),
            whole: send.len(),
        };
        // SAFETY: `recv` has `block` bytes and, at the root, `send` has n blocks of
        // it (`run_rooted` checks both); elsewhere MPI does not read `send`. Both
        // stay borrowed until this call returns.
        unsafe { self.run_rooted(&scope, root, rooted, sp, rp, ffi::MPI_Iscatter) }
    }

    fn reduce(
        &self,
        scope: NativeScope<'_>,
        root: usize,
        op: NativeOp,
        kind: NativeKind,
        send: &[u8],
        recv: &mut [u8],
    ) -> Result<()> {
        let root_c = check_root(root, scope.members.len())?;
        let me = scope_rank(&scope, self.rank, self.size)?;
        let recv_len = (me == root).then_some(recv.len());
        let count = check_reduction("reduce", op, kind, send.len(), recv_len)?;
        let (sp, rp) = (send.as_ptr(), recv.as_mut_ptr());
        let (dt, mop) = (mpi_datatype(kind), mpi_op(op));
        self.run_native(&scope, "MPI_Ireduce", |comm, req| {
            // SAFETY: `sp` has `count` elements of `dt` and, at the root, so has `rp`
            // (checked above); elsewhere MPI does not touch `rp`. Both are borrowed
            // until run_native returns and do not overlap.
            unsafe { ffi::MPI_Ireduce(sp.cast(), rp.cast(), count, dt, mop, root_c, comm, req) }
        })
    }

    fn allgather(&self, scope: NativeScope<'_>, send: &[u8], recv: &mut [u8]) -> Result<()> {
        let n = scope.members.len();
        if recv.len() != send.len().saturating_mul(n) {
            return Err(native_arg(format!(
                "allgather of {} bytes into {} bytes: not {n} blocks",
                send.len(),
                recv.len()
            )));
        }
        count_of(recv.len(), "an allgather")?;
        let block = count_of(send.len(), "an allgather block")?;
        let (sp, rp) = (send.as_ptr(), recv.as_mut_ptr());
        self.run_native(&scope, "MPI_Iallgather", |comm, req| {
            // SAFETY: `send` has `block` bytes and `recv` n blocks of it (checked
            // above), both borrowed until run_native returns.
            unsafe {
                ffi::MPI_Iallgather(
                    sp.cast(),
                    block,
                    ffi::RSMPI_UINT8_T,
                    rp.cast(),
                    block,
                    ffi::RSMPI_UINT8_T,
                    comm,
                    req,
                )
            }
        })
    }

    fn scan(
        &self,
        scope: NativeScope<'_>,
        op: NativeOp,
        kind: NativeKind,
        exclusive: bool,
        send: &[u8],
        recv: &mut [u8],
    ) -> Result<()> {
        let what = if exclusive { "exscan" } else { "scan" };
        let count = check_reduction(what, op, kind, send.len(), Some(recv.len()))?;
        let me = scope_rank(&scope, self.rank, self.size)?;
        // MPI leaves member 0's result of an exscan undefined (and may write to it);
        // dsmpi promises to leave it as it was, so member 0 hands MPI a scratch buffer.
        let mut scratch = Vec::new();
        let rp = if exclusive && me == 0 {
            scratch.resize(recv.len(), 0u8);
            scratch.as_mut_ptr()
        } else {
            recv.as_mut_ptr()
        };
        let sp = send.as_ptr();
        let (dt, mop) = (mpi_datatype(kind), mpi_op(op));
        let call = if exclusive {
            "MPI_Iexscan"
        } else {
            "MPI_Iscan"
        };
        self.run_native(&scope, call, |comm, req| {
            // SAFETY: `sp` and `rp` have `count` elements of `dt` each (`rp` is `recv`
            // or `scratch`, which has its length), borrowed or owned until run_native
            // returns; they do not overlap.
            unsafe {
                if exclusive {
                    ffi::MPI_Iexscan(sp.cast(), rp.cast(), count, dt, mop, comm, req)
                } else {
                    ffi::MPI_Iscan(sp.cast(), rp.cast(), count, dt, mop, comm, req)
                }
            }
        })?;
        drop(scratch);
        Ok(())
    }

    fn gatherv(
        &self,
        scope: NativeScope<'_>,
        root: usize,
        send: &[u8],
        recv: &mut [u8],
        counts: &[usize],
        displs: &[usize],
    ) -> Result<()> {
        let n = scope.members.len();
        let root_c = check_root(root, n)?;
        let me = scope_rank(&scope, self.rank, self.size)?;
        let scount = count_of(send.len(), "a gatherv block")?;
        let (rcounts, rdispls) = rooted_v_layout(
            "gatherv",
            "sends",
            me,
            root,
            counts,
            displs,
            n,
            recv.len(),
            send.len(),
        )?;
        let (sp, rp) = (send.as_ptr(), recv.as_mut_ptr());
        let (cp, dp) = (rcounts.as_ptr(), rdispls.as_ptr());
        self.run_native(&scope, "MPI_Igatherv", |comm, req| {
            // SAFETY: `send` has `scount` bytes; at the root every block r of `recv`
            // (counts[r] bytes at displs[r]) lies inside it (v_layout). The buffers and
            // the count arrays live until run_native returns.
            unsafe {
                ffi::MPI_Igatherv(
                    sp.cast(),
                    scount,
                    ffi::RSMPI_UINT8_T,
                    rp.cast(),
                    cp,
                    dp,
                    ffi::RSMPI_UINT8_T,
                    root_c,
                    comm,
                    req,
                )
            }
        })
    }

    fn scatterv(
        &self,
        scope: NativeScope<'_>,
        root: usize,
        send: &[u8],
        counts: &[usize],
        displs: &[usize],
        recv: &mut [u8],
    ) -> Result<()> {
        let n = scope.members.len();
        let root_c = check_root(root, n)?;
        let me = scope_rank(&scope, self.rank, self.size)?;
        let rcount = count_of(recv.len(), "a scatterv block")?;
        let (scounts, sdispls) = rooted_v_layout(
            "scatterv",
            "receives",
            me,
            root,
            counts,
            displs,
            n,
            send.len(),
            recv.len(),
        )?;
        let (sp, rp) = (send.as_ptr(), recv.as_mut_ptr());
        let (cp, dp) = (scounts.as_ptr(), sdispls.as_ptr());
        self.run_native(&scope, "MPI_Iscatterv", |comm, req| {
            // SAFETY: `recv` has `rcount` bytes; at the root every block r of `send`
            // lies inside it (v_layout). The buffers and the count arrays live until
            // run_native returns.
            unsafe {
                ffi::MPI_Iscatterv(
                    sp.cast(),
                    cp,
                    dp,
                    ffi::RSMPI_UINT8_T,
                    rp.cast(),
                    rcount,
                    ffi::RSMPI_UINT8_T,
                    root_c,
                    comm,
                    req,
                )
            }
        })
    }

    fn allgatherv(
        &self,
        scope: NativeScope<'_>,
        send: &[u8],
        recv: &mut [u8],
        counts: &[usize],
        displs: &[usize],
    ) -> Result<()> {
        let n = scope.members.len();
        let me = scope_rank(&scope, self.rank, self.size)?;
        let (rcounts, rdispls) = v_layout("allgatherv", counts, displs, n, recv.len())?;
        if counts[me] != send.len() {
            return Err(native_arg(format!(
                "allgatherv: member {me} sends {} bytes but counts {} for itself",
                send.len(),
                counts[me]
            )));
        }
        let scount = count_of(send.len(), "an allgatherv block")?;
        let (sp, rp) = (send.as_ptr(), recv.as_mut_ptr());
        let (cp, dp) = (rcounts.as_ptr(), rdispls.as_ptr());
        self.run_native(&scope, "MPI_Iallgatherv", |comm, req| {
            // SAFETY: `send` has `scount` bytes and every block r of `recv` lies inside
            // it (v_layout); buffers and count arrays live until run_native returns.
            unsafe {
                ffi::MPI_Iallgatherv(
                    sp.cast(),
                    scount,
                    ffi::RSMPI_UINT8_T,
                    rp.cast(),
                    cp,
                    dp,
                    ffi::RSMPI_UINT8_T,
                    comm,
                    req,
                )
            }
        })
    }

    fn alltoallv(
        &self,
        scope: NativeScope<'_>,
        send: &[u8],
        scounts: &[usize],
        sdispls: &[usize],
        recv: &mut [u8],
        rcounts: &[usize],
        rdispls: &[usize],
    ) -> Result<()> {
        let n = scope.members.len();
        let (sc, sd) = v_layout("alltoallv (send)", scounts, sdispls, n, send.len())?;
        let (rc, rd) = v_layout("alltoallv (recv)", rcounts, rdispls, n, recv.len())?;
        let (sp, rp) = (send.as_ptr(), recv.as_mut_ptr());
        self.run_native(&scope, "MPI_Ialltoallv", |comm, req| {
            // SAFETY: every block of `send` and `recv` lies inside its buffer
            // (v_layout); buffers and count arrays live until run_native returns.
            unsafe {
                ffi::MPI_Ialltoallv(
                    sp.cast(),
                    sc.as_ptr(),
                    sd.as_ptr(),
                    ffi::RSMPI_UINT8_T,
                    rp.cast(),
                    rc.as_ptr(),
                    rd.as_ptr(),
                    ffi::RSMPI_UINT8_T,
                    comm,
                    req,
                )
            }
        })
    }
}

/// The shape of a rooted collective of equal byte blocks (gather, scatter): one
/// `block` at every rank, `whole` = n blocks at the root.
struct Rooted {
    op: &'static str,
    call: &'static str,
    block: usize,
    whole: usize,
}

/// `MPI_Igather` and `MPI_Iscatter` share this signature.
type RootedCall = unsafe extern "C" fn(
    *const c_void,
    c_int,
    ffi::MPI_Datatype,
    *mut c_void,
    c_int,
    ffi::MPI_Datatype,
    c_int,
    ffi::MPI_Comm,
    *mut ffi::MPI_Request,
) -> c_int;

impl MpiTransport {
    /// Checks a rooted collective's sizes, then runs `call` on bytes.
    ///
    /// # Safety
    /// `sp` and `rp` must be the caller's send and receive buffers, described by
    /// `shape` (the root's side of `whole` bytes, every rank's of `block` bytes), and
    /// stay valid until this returns.
    unsafe fn run_rooted(
        &self,
        scope: &NativeScope<'_>,
        root: usize,
        shape: Rooted,
        sp: *const u8,
        rp: *mut u8,
        call: RootedCall,
    ) -> Result<()> {
        let n = scope.members.len();
        let root_c = check_root(root, n)?;
        let me = scope_rank(scope, self.rank, self.size)?;
        let block = count_of(shape.block, "a block")?;
        if me == root {
            if shape.whole != shape.block.saturating_mul(n) {
                return Err(native_arg(format!(
                    "{}: the root's buffer has {} bytes, not {n} blocks of {}",
                    shape.op, shape.whole, shape.block
                )));
            }
            count_of(shape.whole, "a root buffer")?;
        }
        self.run_native(scope, shape.call, |comm, req| {
            // SAFETY: the sizes were checked above against the buffers the caller
            // vouched for; MPI reads/writes `block` bytes per rank.
            unsafe {
                call(
                    sp.cast(),
                    block,
                    ffi::RSMPI_UINT8_T,
                    rp.cast(),
                    block,
                    ffi::RSMPI_UINT8_T,
                    root_c,
                    comm,
                    req,
                )
            }
        })
    }
}
