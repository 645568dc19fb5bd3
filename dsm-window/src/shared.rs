//! State shared by a window's public handle, its service thread and its fault thread:
//! the geometry of the segment, the page table of the DSM view, and both threads'
//! loops.

use std::collections::{HashMap, VecDeque};
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use dsmpi_runtime::{Communicator, ANY_SOURCE};

use crate::element::{apply, kind_size, ElemKind, Op};
use crate::error::{Result, WinError};
use crate::fault::{self, FaultChannel, FaultKind};
use crate::proto::{self, Header, Kind, BATCH_MAX, HDR, TAG_REPLY0, TAG_REQ};
use crate::segment::{Prot, Segment};
use crate::Layout;

/// Where every rank's region lies in the segment.
#[derive(Debug)]
pub(crate) struct Geometry {
    pub n: usize,
    pub me: usize,
    pub page: usize,
    pub layout: Layout,
    /// Bytes each rank asked for.
    pub region_bytes: Vec<usize>,
    /// Pages each rank's region spans.
    pub region_pages: Vec<usize>,
    /// Blocked layout: first segment page of each region.
    pub first_page: Vec<usize>,
    /// Pages homed by some rank.
    pub total_pages: usize,
}

impl Geometry {
    pub(crate) fn new(me: usize, page: usize, layout: Layout, region_bytes: Vec<usize>) -> Self {
        let n = region_bytes.len();
        let region_pages: Vec<usize> = region_bytes.iter().map(|b| b.div_ceil(page)).collect();
        let mut first_page = Vec::with_capacity(n);
        let mut acc = 0;
        for p in &region_pages {
            first_page.push(acc);
            acc += p;
        }
        Geometry {
            n,
            me,
            page,
            layout,
            region_bytes,
            region_pages,
            first_page,
            total_pages: acc,
        }
    }

    /// Segment page holding page `k` of `rank`'s region.
    pub(crate) fn seg_page(&self, rank: usize, k: usize) -> usize {
        match self.layout {
            Layout::Blocked => self.first_page[rank] + k,
            Layout::RoundRobin => k * self.n + rank,
        }
    }

    /// Home rank of a segment page.
    pub(crate) fn home_of(&self, p: usize) -> usize {
        match self.layout {
            Layout::Blocked => self
                .first_page
                .partition_point(|&f| f <= p)
                .saturating_sub(1),
            Layout::RoundRobin => p % self.n,
        }
    }

    /// Segment byte offset of byte `off` of `rank`'s region.
    pub(crate) fn seg_offset(&self, rank: usize, off: usize) -> usize {
        self.seg_page(rank, off / self.page) * self.page + off % self.page
    }

    /// Checks that `len` bytes at `off` lie in `rank`'s region.
    pub(crate) fn check(&self, rank: usize, off: usize, len: usize) -> Result<()> {
        if rank >= self.n {
            return Err(WinError::RankOutOfRange { rank, size: self.n });
        }
        let size = self.region_bytes[rank];
        match off.checked_add(len) {
            Some(end) if end <= size => Ok(()),
            _ => Err(WinError::OutOfRange {
                target: rank,
                offset: off,
                len,
                size,
            }),
        }
    }

    /// Calls `f(segment offset, range in the access)` for each piece of the access
    /// `[off, off+len)` of `rank`'s region that is contiguous in the segment.
    pub(crate) fn pieces(
        &self,
        rank: usize,
        off: usize,
        len: usize,
        mut f: impl FnMut(usize, std::ops::Range<usize>) -> Result<()>,
    ) -> Result<()> {
        if self.layout == Layout::Blocked {
            return f(self.seg_offset(rank, off), 0..len);
        }
        let mut done = 0;
        while done < len {
            let at = off + done;
            let step = (self.page - at % self.page).min(len - done);
            f(self.seg_offset(rank, at), done..done + step)?;
            done += step;
        }
        Ok(())
    }
}

/// Page states of the application view.
pub(crate) const HOME: u8 = 0;
pub(crate) const INVALID: u8 = 1;
pub(crate) const READONLY: u8 = 2;
pub(crate) const DIRTY: u8 = 3;

/// The DSM view's page table: state per segment page, and twins of dirty pages.
pub(crate) struct PageTable {
    pub state: Vec<u8>,
    pub twins: HashMap<usize, Vec<u8>>,
}

/// Counters, for tests and benchmarks.
#[derive(Default)]
pub(crate) struct Counters {
    pub faults: AtomicU64,
    pub fetches: AtomicU64,
    pub diff_pages: AtomicU64,
    pub diff_bytes: AtomicU64,
    pub invalidations: AtomicU64,
}

/// Everything the threads of one window share.
pub(crate) struct Shared {
    pub comm: Communicator,
    pub seg: Segment,
    pub geo: Geometry,
    pub pages: Mutex<PageTable>,
    next_tag: AtomicU32,
    pub counters: Counters,
    pub service_error: Mutex<Option<WinError>>,
    /// Lock queues; held while a request executes (by the service thread, or by a
    /// thread of this rank executing a request to itself).
    svc: Mutex<ServiceState>,
    /// Replies to this rank's own requests, by reply tag (they never touch the wire).
    mailbox: Mutex<HashMap<i32, Vec<u8>>>,
    mail: Condvar,
    /// Aggregated fire-and-forget requests, per target.
    batches: Vec<Mutex<Vec<u8>>>,
}

/// The service's own state.
#[derive(Default)]
struct ServiceState {
    lock: LockQueue,
    ranges: RangeLocks,
}

/// Coalesces sorted page numbers into runs `(first, count)`.
fn runs(pages: &[usize]) -> Vec<(usize, usize)> {
    let mut out: Vec<(usize, usize)> = Vec::new();
    for &p in pages {
        match out.last_mut() {
            Some((f, c)) if *f + *c == p => *c += 1,
            _ => out.push((p, 1)),
        }
    }
    out
}

/// Byte runs where `cur` differs from `twin`: `(start, len)`.
fn diff_runs(cur: &[u8], twin: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut i = 0;
    let n = cur.len().min(twin.len());
    while i < n {
        // Skip equal 8-byte words quickly.
        if i % 8 == 0 && i + 8 <= n && cur[i..i + 8] == twin[i..i + 8] {
            i += 8;
            continue;
        }
        if cur[i] == twin[i] {
            i += 1;
            continue;
        }
        let start = i;
        while i < n && cur[i] != twin[i] {
            i += 1;
        }
        out.push((start, i - start));
    }
    out
}

impl Shared {
    pub(crate) fn new(comm: Communicator, seg: Segment, geo: Geometry, state: Vec<u8>) -> Self {
        let batches = (0..geo.n).map(|_| Mutex::new(Vec::new())).collect();
        Shared {
            batches,
            comm,
            seg,
            geo,
            pages: Mutex::new(PageTable {
                state,
                twins: HashMap::new(),
            }),
            next_tag: AtomicU32::new(0),
            counters: Counters::default(),
            service_error: Mutex::new(None),
            svc: Mutex::new(ServiceState::default()),
            mailbox: Mutex::new(HashMap::new()),
            mail: Condvar::new(),
        }
    }

    /// A reply tag no other outstanding call of this rank uses.
    pub(crate) fn new_tag(&self) -> i32 {
        let k = self.next_tag.fetch_add(1, Ordering::Relaxed) % (1 << 30);
        TAG_REPLY0 + k as i32
    }

    pub(crate) fn lock_pages(&self) -> MutexGuard<'_, PageTable> {
        // A panic while holding the table leaves it consistent enough to go on: every
        // state change is one assignment after the syscalls it depends on succeeded.
        self.pages.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Executes a request of this rank to itself, in the calling thread, serialized
    /// with the service thread.
    fn serve_here(&self, hdr: Header, payload: &[u8]) {
        let mut st = self.svc.lock().unwrap_or_else(|p| p.into_inner());
        Service {
            sh: self,
            st: &mut st,
        }
        .serve(self.geo.me, hdr, payload);
    }

    /// Sends a request and does not wait. Small requests without a reply are
    /// aggregated (see [`proto::BATCH_MAX`]); anything else first ships what is
    /// aggregated for the target, under the same lock, so that order is kept.
    pub(crate) fn send(&self, target: usize, hdr: Header, payload: &[u8]) -> Result<()> {
        if target == self.geo.me && hdr.kind != Kind::Stop {
            self.serve_here(hdr, payload);
            return Ok(());
        }
        let msg = hdr.encode(payload);
        let Some(slot) = self.batches.get(target) else {
            return Err(WinError::RankOutOfRange {
                rank: target,
                size: self.geo.n,
            });
        };
        let mut batch = slot.lock().unwrap_or_else(|p| p.into_inner());
        let small = hdr.reply == 0 && hdr.kind != Kind::Stop && msg.len() <= BATCH_MAX / 4;
        if small && HDR + batch.len() + 8 + msg.len() <= BATCH_MAX {
            batch.extend_from_slice(&(msg.len() as u64).to_le_bytes());
            batch.extend_from_slice(&msg);
            return Ok(());
        }
        self.ship(target, &mut batch)?;
        if small {
            batch.extend_from_slice(&(msg.len() as u64).to_le_bytes());
            batch.extend_from_slice(&msg);
            return Ok(());
        }
        self.comm.send(&msg, target, TAG_REQ)?;
        Ok(())
    }

    /// Sends what is aggregated for `target`, if anything.
    fn ship(&self, target: usize, batch: &mut Vec<u8>) -> Result<()> {
        if !batch.is_empty() {
            let hdr = Header::new(Kind::Batch, 0, batch.len());
            self.comm.send(&hdr.encode(batch), target, TAG_REQ)?;
            batch.clear();
        }
        Ok(())
    }

    /// Starts a request that will be answered on `tag` (see [`wait_reply`]).
    ///
    /// [`wait_reply`]: Self::wait_reply
    pub(crate) fn post(&self, target: usize, mut hdr: Header, payload: &[u8]) -> Result<i32> {
        let tag = self.new_tag();
        hdr.reply = tag;
        self.send(target, hdr, payload)?;
        Ok(tag)
    }

    /// Waits for the reply of a request started with [`post`](Self::post); returns its
    /// raw bytes (status byte included, checked: see [`proto::parse_reply`]).
    pub(crate) fn wait_reply(&self, target: usize, tag: i32) -> Result<Vec<u8>> {
        let v = if target == self.geo.me {
            let mut mb = self.mailbox.lock().unwrap_or_else(|p| p.into_inner());
            loop {
                if let Some(v) = mb.remove(&tag) {
                    break v;
                }
                mb = self.mail.wait(mb).unwrap_or_else(|p| p.into_inner());
            }
        } else {
            self.comm.recv_vec::<u8>(target, tag)?.0
        };
        proto::parse_reply(target, &v)?;
        Ok(v)
    }

    /// Sends a request and waits for its reply.
    pub(crate) fn call(&self, target: usize, hdr: Header, payload: &[u8]) -> Result<Vec<u8>> {
        let tag = self.post(target, hdr, payload)?;
        self.wait_reply(target, tag)
    }

    // ----- the DSM view: release and acquire -------------------------------------------

    /// Release: sends the diffs of every dirty page home and waits until applied.
    pub(crate) fn release(&self) -> Result<()> {
        let mut pt = self.lock_pages();
        let dirty: Vec<usize> = (0..pt.state.len())
            .filter(|&p| pt.state[p] == DIRTY)
            .collect();
        if dirty.is_empty() {
            return Ok(());
        }
        // Write-protect first, so that no store can slip in after its diff is taken.
        for (f, c) in runs(&dirty) {
            self.seg.protect(f, c, Prot::Read)?;
        }
        let page = self.geo.page;
        let mut bodies: HashMap<usize, Vec<u8>> = HashMap::new();
        let mut cur = vec![0u8; page];
        for &p in &dirty {
            self.seg.read(p * page, &mut cur)?;
            let twin = pt.twins.remove(&p).unwrap_or_else(|| vec![0u8; page]);
            pt.state[p] = READONLY;
            let body = bodies.entry(self.geo.home_of(p)).or_default();
            for (s, l) in diff_runs(&cur, &twin) {
                body.extend_from_slice(&((p * page + s) as u64).to_le_bytes());
                body.extend_from_slice(&(l as u64).to_le_bytes());
                body.extend_from_slice(&cur[s..s + l]);
                self.counters
                    .diff_bytes
                    .fetch_add(l as u64, Ordering::Relaxed);
            }
            self.counters.diff_pages.fetch_add(1, Ordering::Relaxed);
        }
        drop(pt);
        // Send every diff first, then collect the acknowledgements.
        let mut waits = Vec::new();
        for (home, body) in bodies {
            if !body.is_empty() {
                let hdr = Header::new(Kind::Diff, 0, body.len());
                waits.push((home, self.post(home, hdr, &body)?));
            }
        }
        for (home, tag) in waits {
            self.wait_reply(home, tag)?;
        }
        Ok(())
    }

    /// Acquire: drops every read-only cached copy (of pages homed at `home`, or all),
    /// so that later loads fetch what was released before.
    pub(crate) fn invalidate(&self, home: Option<usize>) -> Result<()> {
        let mut pt = self.lock_pages();
        let stale: Vec<usize> = (0..pt.state.len())
            .filter(|&p| pt.state[p] == READONLY && home.is_none_or(|h| self.geo.home_of(p) == h))
            .collect();
        for (f, c) in runs(&stale) {
            self.seg.protect(f, c, Prot::None)?;
        }
        for p in &stale {
            pt.state[*p] = INVALID;
        }
        self.counters
            .invalidations
            .fetch_add(stale.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    // ----- the fault thread -------------------------------------------------------------

    /// Makes the page under `addr` valid for the access `kind`.
    fn resolve(&self, addr: usize, kind: FaultKind) -> Result<()> {
        let base = self.seg.app_base() as usize;
        let page = self.geo.page;
        let p = addr.wrapping_sub(base) / page;
        if addr < base || p >= self.geo.total_pages {
            return Err(WinError::InvalidArgument(format!(
                "fault at {addr:#x} outside the window's pages"
            )));
        }
        self.counters.faults.fetch_add(1, Ordering::Relaxed);
        let mut pt = self.lock_pages();
        match (pt.state[p], kind) {
            (HOME, _) => Err(WinError::InvalidArgument(format!(
                "fault on home page {p}, which is always mapped"
            ))),
            (DIRTY, _) | (READONLY, FaultKind::Read) => Ok(()), // served meanwhile
            (INVALID, k) => {
                let home = self.geo.home_of(p);
                self.counters.fetches.fetch_add(1, Ordering::Relaxed);
                let v = self.call(home, Header::new(Kind::GetPage, p * page, page), &[])?;
                let data = proto::parse_reply(home, &v)?;
                if data.len() != page {
                    return Err(WinError::Protocol(format!(
                        "page {p} came back with {} bytes",
                        data.len()
                    )));
                }
                self.seg.write(p * page, data)?;
                if k == FaultKind::Write {
                    pt.twins.insert(p, data.to_vec());
                    self.seg.protect(p, 1, Prot::ReadWrite)?;
                    pt.state[p] = DIRTY;
                } else {
                    self.seg.protect(p, 1, Prot::Read)?;
                    pt.state[p] = READONLY;
                }
                Ok(())
            }
            (_, _) => {
                // A write (or an unknown access) on a read-only copy: make a twin.
                let mut twin = vec![0u8; page];
                self.seg.read(p * page, &mut twin)?;
                pt.twins.insert(p, twin);
                self.seg.protect(p, 1, Prot::ReadWrite)?;
                pt.state[p] = DIRTY;
                Ok(())
            }
        }
    }

    /// The fault thread: serves the faults the handler posts on `chan`, one at a
    /// time (so that several threads faulting on one page cause one fetch: the later
    /// ones find the page valid).
    pub(crate) fn fault_loop(self: Arc<Self>, chan: Arc<FaultChannel>, pipe: OwnedFd) {
        while let Some(slot) = fault::read_msg(&pipe) {
            if slot == fault::STOP {
                break;
            }
            let Some((addr, kind)) = chan.request(slot) else {
                continue;
            };
            let r = self.resolve(addr, kind);
            if let Err(e) = &r {
                eprintln!(
                    "dsmpi-window: rank {}: page fault at {addr:#x}: {e}",
                    self.geo.me
                );
            }
            chan.complete(slot, r.is_ok());
        }
    }

    // ----- the service thread -----------------------------------------------------------

    /// The service thread: serves requests from every rank until told to stop.
    pub(crate) fn service_loop(self: Arc<Self>) {
        loop {
            let (msg, st) = match self.comm.recv_vec::<u8>(ANY_SOURCE, TAG_REQ) {
                Ok(x) => x,
                Err(e) => {
                    let e = WinError::from(e);
                    eprintln!(
                        "dsmpi-window: rank {}: the window can no longer serve requests: {e}",
                        self.geo.me
                    );
                    self.degraded(&e);
                    *self.service_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                    return;
                }
            };
            let src = st.source();
            if self.dispatch(src, &msg) {
                return;
            }
        }
    }

    /// Serves one request message; true when it is this rank's stop request.
    fn dispatch(&self, src: usize, msg: &[u8]) -> bool {
        match Header::decode(msg) {
            Ok((h, _)) if h.kind == Kind::Stop && src == self.geo.me => return true,
            Ok((h, payload)) => {
                let mut st = self.svc.lock().unwrap_or_else(|p| p.into_inner());
                Service {
                    sh: self,
                    st: &mut st,
                }
                .serve(src, h, payload)
            }
            Err(e) => eprintln!(
                "dsmpi-window: rank {}: bad request from rank {src}: {e}",
                self.geo.me
            ),
        }
        false
    }

    /// After a peer was lost (receives from any source fail from then on): answers
    /// every waiting lock request, and every later request, with an error, so that no
    /// rank hangs on this one, until this rank stops the window.
    fn degraded(&self, why: &WinError) {
        let reason = format!("rank {} cannot serve: {why}", self.geo.me);
        let fail = |src: usize, tag: i32| {
            if tag != 0 {
                let mut st = self.svc.lock().unwrap_or_else(|p| p.into_inner());
                Service {
                    sh: self,
                    st: &mut st,
                }
                .reply(src, tag, &proto::err_reply(&reason));
            }
        };
        let waiting: Vec<(usize, i32)> = {
            let mut st = self.svc.lock().unwrap_or_else(|p| p.into_inner());
            let mut w: Vec<(usize, i32)> =
                st.lock.queue.drain(..).map(|(s, t, _)| (s, t)).collect();
            w.extend(st.ranges.queue.drain(..).map(|q| (q.0, q.1)));
            w
        };
        for (src, tag) in waiting {
            fail(src, tag);
        }
        loop {
            let mut idle = true;
            for r in 0..self.geo.n {
                // Lost peers fail here and are skipped.
                if let Ok(Some(_)) = self.comm.iprobe(r, TAG_REQ) {
                    idle = false;
                    let Ok((msg, _)) = self.comm.recv_vec::<u8>(r, TAG_REQ) else {
                        continue;
                    };
                    match Header::decode(&msg) {
                        Ok((h, _)) if h.kind == Kind::Stop && r == self.geo.me => return,
                        Ok((h, _)) => fail(r, h.reply),
                        Err(_) => {}
                    }
                }
            }
            if idle {
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
        }
    }
}

/// A passive-target lock: holders and a FIFO of waiters.
#[derive(Default)]
struct LockQueue {
    exclusive: Option<usize>,
    shared: Vec<usize>,
    queue: VecDeque<(usize, i32, bool)>,
}

impl LockQueue {
    fn grant(&mut self) -> Vec<(usize, i32)> {
        let mut out = Vec::new();
        while let Some(&(src, tag, excl)) = self.queue.front() {
            let free = self.exclusive.is_none() && (!excl || self.shared.is_empty());
            if !free {
                break;
            }
            self.queue.pop_front();
            if excl {
                self.exclusive = Some(src);
            } else {
                self.shared.push(src);
            }
            out.push((src, tag));
        }
        out
    }

    fn release(&mut self, src: usize) -> bool {
        if self.exclusive == Some(src) {
            self.exclusive = None;
            true
        } else if let Some(i) = self.shared.iter().position(|&s| s == src) {
            self.shared.swap_remove(i);
            true
        } else {
            false
        }
    }
}

/// Byte-range locks of the segment (document 001), served by rank 0.
#[derive(Default)]
struct RangeLocks {
    held: Vec<(usize, u64, u64, bool)>,
    queue: Vec<(usize, i32, u64, u64, bool)>,
}

fn ranges_conflict(a: (u64, u64, bool), b: (u64, u64, bool)) -> bool {
    let overlap = a.0 < b.0.saturating_add(b.1) && b.0 < a.0.saturating_add(a.1);
    overlap && (a.2 || b.2)
}

impl RangeLocks {
    /// Grants, in arrival order, every waiter that conflicts with no holder and no
    /// earlier waiter (so a writer is never starved by a stream of readers).
    fn grant(&mut self) -> Vec<(usize, i32)> {
        let mut out = Vec::new();
        let mut kept: Vec<(usize, i32, u64, u64, bool)> = Vec::new();
        for w in std::mem::take(&mut self.queue) {
            let me = (w.2, w.3, w.4);
            let blocked = self
                .held
                .iter()
                .any(|h| ranges_conflict(me, (h.1, h.2, h.3)))
                || kept.iter().any(|k| ranges_conflict(me, (k.2, k.3, k.4)));
            if blocked {
                kept.push(w);
            } else {
                self.held.push((w.0, w.2, w.3, w.4));
                out.push((w.0, w.1));
            }
        }
        self.queue = kept;
        out
    }
}

struct Service<'a> {
    sh: &'a Shared,
    st: &'a mut ServiceState,
}

impl Service<'_> {
    fn reply(&self, dest: usize, tag: i32, msg: &[u8]) {
        if tag == 0 {
            return;
        }
        if dest == self.sh.geo.me {
            let mut mb = self.sh.mailbox.lock().unwrap_or_else(|p| p.into_inner());
            mb.insert(tag, msg.to_vec());
            self.sh.mail.notify_all();
            return;
        }
        if let Err(e) = self.sh.comm.send(msg, dest, tag) {
            eprintln!(
                "dsmpi-window: rank {}: reply to rank {dest}: {e}",
                self.sh.geo.me
            );
        }
    }

    fn serve(&mut self, src: usize, h: Header, payload: &[u8]) {
        match self.execute(src, h, payload) {
            Ok(Some(data)) => self.reply(src, h.reply, &proto::ok_reply(&data)),
            Ok(None) => {}
            Err(e) => {
                if h.reply == 0 {
                    eprintln!(
                        "dsmpi-window: rank {}: request {:?} from rank {src}: {e}",
                        self.sh.geo.me, h.kind
                    );
                }
                self.reply(src, h.reply, &proto::err_reply(&e.to_string()))
            }
        }
    }

    fn read_region(&self, off: usize, len: usize) -> Result<Vec<u8>> {
        let g = &self.sh.geo;
        g.check(g.me, off, len)?;
        let mut out = vec![0u8; len];
        g.pieces(g.me, off, len, |so, r| self.sh.seg.read(so, &mut out[r]))?;
        Ok(out)
    }

    fn write_region(&self, off: usize, data: &[u8]) -> Result<()> {
        let g = &self.sh.geo;
        g.check(g.me, off, data.len())?;
        g.pieces(g.me, off, data.len(), |so, r| {
            self.sh.seg.write(so, &data[r])
        })
    }

    fn elem(code: u64) -> Result<(Op, ElemKind)> {
        let op = Op::from_u8((code & 0xff) as u8);
        let kind = ElemKind::from_u8(((code >> 8) & 0xff) as u8);
        match (op, kind) {
            (Some(op), Some(kind)) => Ok((op, kind)),
            _ => Err(WinError::Protocol(format!("bad op code {code:#x}"))),
        }
    }

    /// Executes one request; `Ok(Some(data))` is answered (when a reply tag was given).
    fn execute(&mut self, src: usize, h: Header, payload: &[u8]) -> Result<Option<Vec<u8>>> {
        let off = usize::try_from(h.off)
            .map_err(|_| WinError::Protocol(format!("offset {} too large", h.off)))?;
        let len = usize::try_from(h.len)
            .map_err(|_| WinError::Protocol(format!("length {} too large", h.len)))?;
        match h.kind {
            Kind::Put => {
                self.write_region(off, payload)?;
                Ok(Some(Vec::new()))
            }
            Kind::Get => self.read_region(off, len).map(Some),
            Kind::Acc | Kind::GetAcc => {
                let (op, kind) = Self::elem(h.code)?;
                if off % kind_size(kind) != 0 {
                    return Err(WinError::Misaligned {
                        offset: off,
                        align: kind_size(kind),
                    });
                }
                let old = self.read_region(off, payload.len())?;
                let mut new = old.clone();
                apply(kind, op, &mut new, payload)?;
                if op != Op::NoOp {
                    self.write_region(off, &new)?;
                }
                Ok(Some(if h.kind == Kind::GetAcc {
                    old
                } else {
                    Vec::new()
                }))
            }
            Kind::Cas => {
                if payload.len() != 2 * len {
                    return Err(WinError::Protocol("compare-and-swap payload".into()));
                }
                let old = self.read_region(off, len)?;
                if old[..] == payload[..len] {
                    self.write_region(off, &payload[len..])?;
                }
                Ok(Some(old))
            }
            Kind::Flush => Ok(Some(Vec::new())),
            Kind::Lock => {
                self.st.lock.queue.push_back((src, h.reply, h.extra == 1));
                for (s, t) in self.st.lock.grant() {
                    self.reply(s, t, &proto::ok_reply(&[]));
                }
                Ok(None)
            }
            Kind::Unlock => {
                if !self.st.lock.release(src) {
                    return Err(WinError::Sync(format!(
                        "rank {src} unlocks rank {} without holding its lock",
                        self.sh.geo.me
                    )));
                }
                self.reply(src, h.reply, &proto::ok_reply(&[]));
                for (s, t) in self.st.lock.grant() {
                    self.reply(s, t, &proto::ok_reply(&[]));
                }
                Ok(None)
            }
            Kind::RangeLock => {
                self.st
                    .ranges
                    .queue
                    .push((src, h.reply, h.off, h.len, h.extra == 1));
                for (s, t) in self.st.ranges.grant() {
                    self.reply(s, t, &proto::ok_reply(&[]));
                }
                Ok(None)
            }
            Kind::RangeUnlock => {
                let w = h.extra == 1;
                let i = self
                    .st
                    .ranges
                    .held
                    .iter()
                    .position(|x| *x == (src, h.off, h.len, w))
                    .ok_or_else(|| {
                        WinError::Sync(format!(
                            "rank {src} releases bytes {}+{} it does not hold",
                            h.off, h.len
                        ))
                    })?;
                self.st.ranges.held.swap_remove(i);
                self.reply(src, h.reply, &proto::ok_reply(&[]));
                for (s, t) in self.st.ranges.grant() {
                    self.reply(s, t, &proto::ok_reply(&[]));
                }
                Ok(None)
            }
            Kind::Diff => {
                self.apply_diff(payload)?;
                Ok(Some(Vec::new()))
            }
            Kind::GetPage => {
                let g = &self.sh.geo;
                let p = off / g.page;
                if off % g.page != 0 || p >= g.total_pages || g.home_of(p) != g.me {
                    return Err(WinError::Protocol(format!(
                        "page request at {off}, not a page homed here"
                    )));
                }
                let mut out = vec![0u8; g.page];
                self.sh.seg.read(off, &mut out)?;
                Ok(Some(out))
            }
            Kind::Batch => {
                let mut b = payload;
                let bad = || WinError::Protocol("malformed batch".into());
                while !b.is_empty() {
                    let len = proto::u64_at(b, 0).ok_or_else(bad)? as usize;
                    let msg = b
                        .get(8..8usize.checked_add(len).ok_or_else(bad)?)
                        .ok_or_else(bad)?;
                    let (sub, p) = Header::decode(msg)?;
                    if matches!(sub.kind, Kind::Batch | Kind::Stop) || sub.reply != 0 {
                        return Err(bad());
                    }
                    self.serve(src, sub, p);
                    b = &b[8 + len..];
                }
                Ok(None)
            }
            Kind::Stop => Err(WinError::Protocol(format!(
                "stop request from another rank ({src})"
            ))),
        }
    }

    fn apply_diff(&self, mut b: &[u8]) -> Result<()> {
        let g = &self.sh.geo;
        let bad = || WinError::Protocol("malformed diff".into());
        while !b.is_empty() {
            let off = proto::u64_at(b, 0).ok_or_else(bad)? as usize;
            let len = proto::u64_at(b, 8).ok_or_else(bad)? as usize;
            let data = b
                .get(16..16usize.checked_add(len).ok_or_else(bad)?)
                .ok_or_else(bad)?;
            let p = off / g.page;
            let end = off.checked_add(len).ok_or_else(bad)?;
            if len == 0 || (end - 1) / g.page != p || p >= g.total_pages || g.home_of(p) != g.me {
                return Err(WinError::Protocol(format!(
                    "diff run {off}+{len} is not inside a page homed here"
                )));
            }
            self.sh.seg.write(off, data)?;
            b = &b[16 + len..];
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diffs_are_byte_exact() {
        let twin = vec![0u8; 64];
        let mut cur = twin.clone();
        cur[3] = 1;
        cur[4] = 2;
        cur[40] = 9;
        assert_eq!(diff_runs(&cur, &twin), vec![(3, 2), (40, 1)]);
        assert_eq!(runs(&[1, 2, 3, 7, 9, 10]), vec![(1, 3), (7, 1), (9, 2)]);
    }

    #[test]
    fn geometry_maps_regions() {
        let g = Geometry::new(0, 4096, Layout::Blocked, vec![5000, 0, 4096]);
        assert_eq!(g.region_pages, vec![2, 0, 1]);
        assert_eq!(g.home_of(0), 0);
        assert_eq!(g.home_of(1), 0);
        assert_eq!(g.home_of(2), 2);
        assert_eq!(g.seg_offset(2, 10), 2 * 4096 + 10);
        let r = Geometry::new(1, 4096, Layout::RoundRobin, vec![8192; 3]);
        assert_eq!(r.seg_page(1, 1), 4);
        assert_eq!(r.home_of(4), 1);
        let mut seen = Vec::new();
        r.pieces(1, 4000, 200, |so, rg| {
            seen.push((so, rg));
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, vec![(4096 + 4000, 0..96), (4 * 4096, 96..200)]);
    }
}
