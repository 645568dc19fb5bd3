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
use crate::transport::{ReqId, Transport};

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
#[derive(Default)]
struct PendingList {
    slots: Vec<Option<(Arc<dyn Transport>, ReqId)>>,
    free: Vec<usize>,
}

impl PendingList {
    fn add(&mut self, t: Arc<dyn Transport>, id: ReqId) -> usize {
        match self.free.pop() {
            Some(i) => {
                self.slots[i] = Some((t, id));
                i
            }
            None => {
                self.slots.push(Some((t, id)));
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
        for (t, id) in pending.slots.into_iter().flatten() {
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
    /// This request's slot in its scope's list.
    slot: usize,
    comm: Communicator,
    id: ReqId,
    done: bool,
}

impl std::fmt::Debug for Request<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Request({}, done: {})", self.id, self.done)
    }
}

impl<'s> Request<'s> {
    pub(crate) fn new<'a>(scope: &'s Scope<'a>, comm: Communicator, id: ReqId) -> Request<'s> {
        let slot = scope.pending.borrow_mut().add(comm.transport().clone(), id);
        Request {
            scope: &scope.pending,
            slot,
            comm,
            id,
            done: false,
        }
    }

    fn settle(&mut self) {
        self.done = true;
        self.scope.borrow_mut().remove(self.slot);
    }

    /// Blocks until the operation completes.
    pub fn wait(mut self) -> Result<Status> {
        let r = self.comm.transport().wait(self.id);
        self.settle();
        r.map(|c| self.comm.status_of(c.status))
            .map_err(|e| self.comm.localize(e))
    }

    /// Completes the operation if it is done: `Ok(Some(status))` then, `Ok(None)` if
    /// it is still in flight. Makes progress either way.
    pub fn test(&mut self) -> Result<Option<Status>> {
        if self.done {
            return Err(Error::InvalidArgument("request already completed".into()));
        }
        match self.comm.transport().test(self.id) {
            Ok(Some(c)) => {
                self.settle();
                Ok(Some(self.comm.status_of(c.status)))
            }
            Ok(None) => Ok(None),
            Err(e) => {
                self.settle();
                Err(self.comm.localize(e))
            }
        }
    }
}

impl Drop for Request<'_> {
    fn drop(&mut self) {
        if !self.done {
            let _ = self.comm.transport().wait(self.id);
            self.settle();
        }
    }
}

/// Waits for every request; returns their statuses in order, or the first error
/// (after all have completed).
pub fn wait_all(mut reqs: Vec<Request<'_>>) -> Result<Vec<Status>> {
    let mut out = Vec::with_capacity(reqs.len());
    let mut first_err = None;
    let one_transport = reqs.first().map(|r| r.comm.transport().clone());
    match one_transport {
        // The usual case: one transport completes them all in one call (one lock,
        // one progress loop) instead of one wait each.
        Some(t) if reqs.iter().all(|r| Arc::ptr_eq(r.comm.transport(), &t)) => {
            let ids: Vec<ReqId> = reqs.iter().map(|r| r.id).collect();
            // On a failure of waiting itself, the requests are left to their drop,
            // which waits for each.
            let results = t.wait_all(&ids)?;
            for r in reqs.iter_mut() {
                r.settle();
            }
            for (r, res) in reqs.iter().zip(results) {
                match res {
                    Ok(c) => out.push(r.comm.status_of(c.status)),
                    Err(e) => {
                        first_err.get_or_insert(r.comm.localize(e));
                    }
                }
            }
        }
        _ => {
            for r in reqs {
                match r.wait() {
                    Ok(s) => out.push(s),
                    Err(e) => {
                        first_err.get_or_insert(e);
                    }
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
    let t = reqs[0].comm.transport().clone();
    if reqs.iter().any(|r| !Arc::ptr_eq(r.comm.transport(), &t)) {
        return Err(Error::InvalidArgument(
            "wait_any over requests of different universes".into(),
        ));
    }
    let ids: Vec<ReqId> = reqs.iter().map(|r| r.id).collect();
    let (i, res) = t.wait_any(&ids)?;
    let mut r = reqs.remove(i);
    r.settle();
    let c = res.map_err(|e| r.comm.localize(e))?;
    Ok((i, r.comm.status_of(c.status)))
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
    id: ReqId,
    buf: Option<Vec<T>>,
}

impl<T: bytemuck::Pod> std::fmt::Debug for OwnedRequest<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "OwnedRequest({}, done: {})", self.id, self.buf.is_none())
    }
}

impl<T: bytemuck::Pod> OwnedRequest<T> {
    pub(crate) fn new(comm: Communicator, id: ReqId, buf: Vec<T>) -> OwnedRequest<T> {
        OwnedRequest {
            comm,
            id,
            buf: Some(buf),
        }
    }

    /// Blocks until the operation completes; returns the buffer and the status.
    /// For a receive, the buffer holds the message in its first
    /// `status.count::<T>()` elements (its length is unchanged).
    pub fn wait(mut self) -> Result<(Vec<T>, Status)> {
        let r = self.comm.transport().wait(self.id);
        let buf = self.buf.take().unwrap_or_default();
        let c = r.map_err(|e| self.comm.localize(e))?;
        Ok((buf, self.comm.status_of(c.status)))
    }
}

impl<T: bytemuck::Pod> Drop for OwnedRequest<T> {
    fn drop(&mut self) {
        if self.buf.is_some() {
            // The transport may still use the buffer: free it only once it is done.
            let _ = self.comm.transport().wait(self.id);
        }
    }
}
