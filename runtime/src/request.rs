//! Non-blocking operations: requests and the scope that keeps their buffers alive.
//!
//! A non-blocking send or receive lends its buffer to the transport until it
//! completes. Rust cannot stop a program from leaking a request (`mem::forget`), so
//! buffers are lent to a [`Scope`] instead (as in rsmpi and `std::thread::scope`):
//! when the scope ends, every request started in it has completed, whether it was
//! waited for, dropped, or leaked. Dropping an unfinished request waits for it.
//!
//! ```
//! dsmpi_runtime::run_local(2, |world| {
//!     let peer = 1 - world.rank();
//!     let out = [world.rank() as u32; 4];
//!     let mut inb = [0u32; 4];
//!     dsmpi_runtime::scope(|s| {
//!         let r = world.irecv_into(s, &mut inb, peer, 7).unwrap();
//!         let w = world.isend(s, &out, peer, 7).unwrap();
//!         dsmpi_runtime::wait_all(vec![r, w]).unwrap();
//!     });
//!     assert_eq!(inb, [peer as u32; 4]);
//! })
//! .unwrap();
//! ```

use std::cell::RefCell;
use std::marker::PhantomData;
use std::sync::Arc;

use crate::comm::{Communicator, Status};
use crate::error::{Error, Result};
use crate::transport::{Posted, ReqId, Transport};

/// Owner of the buffers lent to non-blocking operations; see the module docs.
///
/// `'a` is the lifetime of the lent buffers; it is invariant so that it cannot
/// shrink to the scope's body.
pub struct Scope<'a> {
    pending: Pending,
    _buffers: PhantomData<std::cell::Cell<&'a mut ()>>,
}

impl std::fmt::Debug for Scope<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Scope({} pending)", self.pending.borrow().len())
    }
}

/// The requests of a scope not yet completed through their handles: slots with a
/// free list, so that adding and settling one costs the same however many are in
/// flight (a window of 64 sends settled in order used to scan the list each time).
/// Each transport is kept once (a scope rarely sees more than one), not once per
/// request: a reference count touched twice per request was a measurable part of a
/// small receive.
#[derive(Default)]
struct PendingList {
    transports: Vec<Arc<dyn Transport>>,
    /// (index into `transports`, request id there).
    slots: Vec<Option<(usize, ReqId)>>,
    free: Vec<usize>,
}

impl PendingList {
    fn add(&mut self, t: &Arc<dyn Transport>, id: ReqId) -> usize {
        let ti = match self.transports.iter().position(|u| Arc::ptr_eq(u, t)) {
            Some(ti) => ti,
            None => {
                self.transports.push(t.clone());
                self.transports.len() - 1
            }
        };
        match self.free.pop() {
            Some(i) => {
                self.slots[i] = Some((ti, id));
                i
            }
            None => {
                self.slots.push(Some((ti, id)));
                self.slots.len() - 1
            }
        }
    }

    fn remove(&mut self, slot: usize) {
        if let Some(s) = self.slots.get_mut(slot) {
            if s.take().is_some() {
                self.free.push(slot);
            }
        }
    }

    fn len(&self) -> usize {
        self.slots.len() - self.free.len()
    }
}

type Pending = RefCell<PendingList>;

impl Scope<'_> {
    fn complete_all(&self) {
        let pending = std::mem::take(&mut *self.pending.borrow_mut());
        for (ti, id) in pending.slots.into_iter().flatten() {
            let t = &pending.transports[ti];
            // Errors have no one to go to here; what matters is that the transport
            // has let go of the buffer, which `wait` guarantees either way.
            let _ = t.wait(id);
        }
    }
}

/// Runs `f` with a [`Scope`] for non-blocking operations; when `f` returns (or
/// panics), every request started in the scope has completed.
pub fn scope<'a, R>(f: impl FnOnce(&Scope<'a>) -> R) -> R {
    struct Guard<'g, 'a>(&'g Scope<'a>);
    impl Drop for Guard<'_, '_> {
        fn drop(&mut self) {
            self.0.complete_all();
        }
    }
    let s = Scope {
        pending: RefCell::new(PendingList::default()),
        _buffers: PhantomData,
    };
    let g = Guard(&s);
    let r = f(g.0);
    drop(g);
    r
}

/// An operation in flight. `wait` it, `test` it, or drop it (which waits).
#[must_use = "a request is waited for when dropped; wait for it to see its result"]
pub struct Request<'s> {
    scope: &'s Pending,
    op: Op,
}

/// Where a [`Request`] stands.
enum Op {
    /// Lent to the transport: `id` there, `slot` in the scope's list.
    InFlight {
        comm: Communicator,
        id: ReqId,
        slot: usize,
    },
    /// Completed as it was posted (the transport made no request); not yet reported.
    Completed(Status),
    /// Reported by `wait`, `test` or `wait_all`: nothing left.
    Settled,
}

impl std::fmt::Debug for Request<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.op {
            Op::InFlight { id, .. } => write!(f, "Request({id}, in flight)"),
            Op::Completed(_) => write!(f, "Request(completed)"),
            Op::Settled => write!(f, "Request(settled)"),
        }
    }
}

impl<'s> Request<'s> {
    /// A request for what `comm`'s transport started: an id it completes later, or a
    /// send it completed at once (which costs the scope nothing).
    pub(crate) fn new<'a>(
        scope: &'s Scope<'a>,
        comm: &Communicator,
        posted: Posted,
    ) -> Request<'s> {
        let op = match posted {
            Posted::Pending(id) => {
                let slot = scope.pending.borrow_mut().add(comm.transport(), id);
                Op::InFlight {
                    comm: comm.clone(),
                    id,
                    slot,
                }
            }
            Posted::Done(raw) => Op::Completed(comm.status_of(raw)),
        };
        Request {
            scope: &scope.pending,
            op,
        }
    }

    /// Marks the request reported, taking it off its scope's list if it was there.
    fn settle(&mut self) {
        if let Op::InFlight { slot, .. } = std::mem::replace(&mut self.op, Op::Settled) {
            self.scope.borrow_mut().remove(slot);
        }
    }

    /// Blocks until the operation completes.
    pub fn wait(mut self) -> Result<Status> {
        match &self.op {
            Op::InFlight { comm, id, .. } => {
                let comm = comm.clone();
                let r = comm.transport().wait(*id);
                self.settle();
                r.map(|c| comm.status_of(c.status))
                    .map_err(|e| comm.localize(e))
            }
            Op::Completed(s) => {
                let s = *s;
                self.settle();
                Ok(s)
            }
            Op::Settled => Err(Error::InvalidArgument("request already completed".into())),
        }
    }

    /// Completes the operation if it is done: `Ok(Some(status))` then, `Ok(None)` if
    /// it is still in flight. Makes progress either way.
    pub fn test(&mut self) -> Result<Option<Status>> {
        let (comm, id) = match &self.op {
            Op::InFlight { comm, id, .. } => (comm.clone(), *id),
            Op::Completed(s) => {
                let s = *s;
                self.settle();
                return Ok(Some(s));
            }
            Op::Settled => return Err(Error::InvalidArgument("request already completed".into())),
        };
        match comm.transport().test(id) {
            Ok(Some(c)) => {
                self.settle();
                Ok(Some(comm.status_of(c.status)))
            }
            Ok(None) => Ok(None),
            Err(e) => {
                self.settle();
                Err(comm.localize(e))
            }
        }
    }
}

impl Drop for Request<'_> {
    fn drop(&mut self) {
        if let Op::InFlight { comm, id, .. } = &self.op {
            let _ = comm.transport().wait(*id);
        }
        self.settle();
    }
}

/// The transport ids of the requests in flight, in order, and the transport they all
/// belong to: `None` when none is in flight or they span several universes.
fn in_flight(reqs: &[Request<'_>]) -> (Vec<ReqId>, Option<Arc<dyn Transport>>) {
    let mut ids = Vec::with_capacity(reqs.len());
    let mut one: Option<&Arc<dyn Transport>> = None;
    let mut mixed = false;
    for r in reqs {
        if let Op::InFlight { comm, id, .. } = &r.op {
            match one {
                Some(t) => mixed |= !Arc::ptr_eq(t, comm.transport()),
                None => one = Some(comm.transport()),
            }
            ids.push(*id);
        }
    }
    (ids, one.filter(|_| !mixed).cloned())
}

/// Waits for every request; returns their statuses in order, or the first error
/// (after all have completed).
pub fn wait_all(mut reqs: Vec<Request<'_>>) -> Result<Vec<Status>> {
    let mut out = Vec::with_capacity(reqs.len());
    let mut first_err = None;
    let (ids, one) = in_flight(&reqs);
    if let Some(t) = one {
        // The usual case: one transport completes them all in one call (one lock,
        // one progress loop) instead of one wait each.
        // On a failure of waiting itself, the requests are left to their drop,
        // which waits for each.
        let mut results = t.wait_all(&ids)?.into_iter();
        for r in reqs.iter_mut() {
            let res = match &r.op {
                Op::InFlight { comm, .. } => match results.next() {
                    Some(Ok(c)) => Ok(comm.status_of(c.status)),
                    Some(Err(e)) => Err(comm.localize(e)),
                    None => Err(Error::InvalidArgument(
                        "the transport returned fewer completions than requests".into(),
                    )),
                },
                Op::Completed(s) => Ok(*s),
                Op::Settled => Err(Error::InvalidArgument("request already completed".into())),
            };
            r.settle();
            match res {
                Ok(s) => out.push(s),
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
    } else {
        for r in reqs {
            match r.wait() {
                Ok(s) => out.push(s),
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(out),
    }
}

/// Waits until one of `reqs` completes, removes it from the vector, and returns its
/// index (before removal) and status.
pub fn wait_any(reqs: &mut Vec<Request<'_>>) -> Result<(usize, Status)> {
    if reqs.is_empty() {
        return Err(Error::InvalidArgument("wait_any on no requests".into()));
    }
    // A send that completed as it was posted needs no transport.
    if let Some(i) = reqs
        .iter()
        .position(|r| !matches!(r.op, Op::InFlight { .. }))
    {
        let r = reqs.remove(i);
        return r.wait().map(|s| (i, s));
    }
    // Every request is in flight now, so `ids` lines up with `reqs`.
    let (ids, one) = in_flight(reqs);
    let Some(t) = one else {
        return Err(Error::InvalidArgument(
            "wait_any over requests of different universes".into(),
        ));
    };
    let (i, res) = t.wait_any(&ids)?;
    let mut r = reqs.remove(i);
    let comm = match &r.op {
        Op::InFlight { comm, .. } => comm.clone(),
        _ => return Err(Error::InvalidArgument("request already completed".into())),
    };
    r.settle();
    let c = res.map_err(|e| comm.localize(e))?;
    Ok((i, comm.status_of(c.status)))
}

/// A non-blocking operation that owns its buffer: it needs no [`Scope`], and `wait`
/// hands the buffer back. Leaking it leaks the buffer (never a dangling borrow),
/// which is what makes it safe without a scope.
///
/// This is the tool for pipelines that reuse a few buffers, e.g. packing the next
/// piece of a message while the previous one is on the wire:
///
/// ```
/// dsmpi_runtime::run_local(2, |world| {
///     if world.rank() == 0 {
///         let mut bufs = vec![vec![0u8; 1 << 18], vec![0u8; 1 << 18]];
///         let mut inflight = std::collections::VecDeque::new();
///         for piece in 0..6u8 {
///             let mut b = if bufs.is_empty() {
///                 let r: dsmpi_runtime::OwnedRequest<u8> = inflight.pop_front().unwrap();
///                 r.wait().unwrap().0
///             } else {
///                 bufs.pop().unwrap()
///             };
///             b.fill(piece);
///             inflight.push_back(world.isend_owned(b, 1, 0).unwrap());
///         }
///         for r in inflight {
///             r.wait().unwrap();
///         }
///     } else {
///         for piece in 0..6u8 {
///             let (v, _) = world.recv_vec::<u8>(0, 0).unwrap();
///             assert!(v.iter().all(|&x| x == piece));
///         }
///     }
/// })
/// .unwrap();
/// ```
pub struct OwnedRequest<T: bytemuck::Pod> {
    comm: Communicator,
    posted: Posted,
    buf: Option<Vec<T>>,
}

impl<T: bytemuck::Pod> std::fmt::Debug for OwnedRequest<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "OwnedRequest({:?}, done: {})",
            self.posted,
            self.buf.is_none()
        )
    }
}

impl<T: bytemuck::Pod> OwnedRequest<T> {
    pub(crate) fn new(comm: Communicator, posted: Posted, buf: Vec<T>) -> OwnedRequest<T> {
        OwnedRequest {
            comm,
            posted,
            buf: Some(buf),
        }
    }

    /// Blocks until the operation completes; returns the buffer and the status.
    /// For a receive, the buffer holds the message in its first
    /// `status.count::<T>()` elements (its length is unchanged).
    pub fn wait(mut self) -> Result<(Vec<T>, Status)> {
        let r = match self.posted {
            Posted::Pending(id) => self.comm.transport().wait(id).map(|c| c.status),
            Posted::Done(raw) => Ok(raw),
        };
        let buf = self.buf.take().unwrap_or_default();
        let raw = r.map_err(|e| self.comm.localize(e))?;
        Ok((buf, self.comm.status_of(raw)))
    }
}

impl<T: bytemuck::Pod> Drop for OwnedRequest<T> {
    fn drop(&mut self) {
        if let (Some(_), Posted::Pending(id)) = (&self.buf, self.posted) {
            // The transport may still use the buffer: free it only once it is done.
            let _ = self.comm.transport().wait(id);
        }
    }
}
