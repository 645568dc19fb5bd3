//! State shared by a window's public handle, its service thread and its fault thread:
//! the geometry of the segment, the page table of the DSM view, and both threads'
//! loops.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::os::fd::OwnedFd;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Instant;

use dsmpi_runtime::{Communicator, ANY_SOURCE};

use crate::element::{apply, kind_size, ElemKind, Op};
use crate::error::{Result, WinError};
use crate::fault::{FaultChannel, FaultKind};
use crate::proto::{self, Header, Kind, BATCH_MAX, HDR, TAG_MIGRATE, TAG_REPLY0, TAG_REQ};
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

/// Page states of the application view. `OWNED`: this rank holds the master copy
/// (its home pages, and pages that migrated to it); mapped read-write, never faults.
pub(crate) const OWNED: u8 = 0;
pub(crate) const INVALID: u8 = 1;
pub(crate) const READONLY: u8 = 2;
pub(crate) const DIRTY: u8 = 3;
/// A page of a same-host home, mapped read-write straight from the home's memory
/// (see [`Sharing`]): never faults, never cached, never diffed.
pub(crate) const SHARED: u8 = 4;

/// Which regions ranks map from each other's memory, decided at allocation.
#[derive(Clone, Debug, Default)]
pub(crate) struct Sharing {
    /// `direct[r]`: this rank maps rank `r`'s region from `r`'s own memory (same
    /// host, linked through shared memory, blocked layout, both willing).
    pub direct: Vec<bool>,
    /// `pinned[h]`: some rank maps `h`'s region directly, so `h`'s pages never
    /// migrate (a moved page would leave those mappings on a stale copy). The same on
    /// every rank.
    pub pinned: Vec<bool>,
}

/// The DSM view's page table: state per segment page, and twins of dirty pages.
pub(crate) struct PageTable {
    pub state: Vec<u8>,
    pub twins: HashMap<usize, Vec<u8>>,
}

/// Counters, for tests and benchmarks.
#[derive(Default)]
pub(crate) struct Counters {
    pub faults: AtomicU64,
    pub faults_inline: AtomicU64,
    pub fetches: AtomicU64,
    pub diff_pages: AtomicU64,
    pub diff_bytes: AtomicU64,
    pub invalidations: AtomicU64,
    pub migrations: AtomicU64,
}

/// Consecutive fence epochs (counting only epochs in which the page was written
/// through views at all) in which one rank alone sent diffs of a page, after which the
/// page migrates to that rank. Two: one epoch is a coincidence, two is a pattern, and
/// a wrong guess costs one page transfer.
pub(crate) const MIGRATE_AFTER: u32 = 2;

/// One page that changes owner at a fence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Move {
    pub page: usize,
    pub from: usize,
    pub to: usize,
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
    /// Whether some origin holds a passive-target or byte-range lock served here
    /// (the service thread polls longer while one is held).
    locks_held: AtomicBool,
    /// How long the service and fault threads poll after their last request
    /// ([`crate::poll::poll_window`]).
    pub poll: std::time::Duration,
    /// Replies to this rank's own requests, by reply tag (they never touch the wire).
    mailbox: Mutex<HashMap<i32, Vec<u8>>>,
    mail: Condvar,
    /// Aggregated fire-and-forget requests, per target.
    batches: Vec<Mutex<Vec<u8>>>,
    /// Current owner of every segment page, identical on every rank: written only by
    /// the fence thread inside `fence` (between two barriers, while no request is in
    /// flight), read by every thread.
    owners: Vec<AtomicUsize>,
    /// Pages whose owner is not their home (0: every route is the home, the fast path).
    moved: AtomicUsize,
    /// Regions mapped from same-host ranks' memory.
    pub sharing: Sharing,
    /// Pages this rank wrote since the last fence: diffs sent, and RMA writes.
    epoch_diffs: Mutex<BTreeSet<usize>>,
    /// Per page: the rank that alone wrote it in the last epochs that wrote it, and in
    /// how many consecutive such epochs (identical on every rank: computed from the
    /// same gathered reports in the same order).
    streaks: Mutex<HashMap<usize, (usize, u32)>>,
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
    pub(crate) fn new(
        comm: Communicator,
        seg: Segment,
        geo: Geometry,
        state: Vec<u8>,
        sharing: Sharing,
        poll: std::time::Duration,
    ) -> Self {
        let batches = (0..geo.n).map(|_| Mutex::new(Vec::new())).collect();
        let owners = (0..geo.total_pages)
            .map(|p| AtomicUsize::new(geo.home_of(p)))
            .collect();
        Shared {
            batches,
            owners,
            moved: AtomicUsize::new(0),
            sharing,
            epoch_diffs: Mutex::new(BTreeSet::new()),
            streaks: Mutex::new(HashMap::new()),
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
            locks_held: AtomicBool::new(false),
            poll,
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

    // ----- page ownership -------------------------------------------------------------

    /// The rank holding the master copy of segment page `p`: where its RMA requests,
    /// diffs and page fetches go. Every route in the crate goes through here.
    pub(crate) fn owner_of(&self, p: usize) -> usize {
        match self.owners.get(p) {
            Some(o) => o.load(Ordering::Acquire),
            // Past the last page (only zero-length accesses get here): the home.
            None => self.geo.home_of(p),
        }
    }

    /// Whether some page lives away from its home (else every route is the home).
    pub(crate) fn any_moved(&self) -> bool {
        self.moved.load(Ordering::Acquire) != 0
    }

    /// The owners of `len` bytes at `off` of `region`'s region, as maximal pieces
    /// `(owner, region offset, length)` in order. One piece to the home while no page
    /// has moved.
    pub(crate) fn route(
        &self,
        region: usize,
        off: usize,
        len: usize,
    ) -> Result<Vec<(usize, usize, usize)>> {
        if !self.any_moved() || len == 0 {
            return Ok(vec![(region, off, len)]);
        }
        let g = &self.geo;
        let mut out: Vec<(usize, usize, usize)> = Vec::new();
        let mut done = 0;
        while done < len {
            let at = off + done;
            let step = (g.page - at % g.page).min(len - done);
            let owner = self.owner_of(g.seg_offset(region, at) / g.page);
            match out.last_mut() {
                Some((o, _, l)) if *o == owner => *l += step,
                _ => out.push((owner, at, step)),
            }
            done += step;
        }
        Ok(out)
    }

    /// Ranks other than `region` that own some page of `region`'s region.
    pub(crate) fn foreign_owners(&self, region: usize) -> Vec<usize> {
        if !self.any_moved() {
            return Vec::new();
        }
        let mut v: Vec<usize> = (0..self.geo.region_pages.get(region).copied().unwrap_or(0))
            .map(|k| self.owner_of(self.geo.seg_page(region, k)))
            .filter(|&o| o != region)
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// Records that this rank wrote the byte `segments` `(offset, length)` of
    /// `region`'s region with RMA (put, accumulate, ...): they count as writes for the
    /// migration policy, as diffs of stores do.
    pub(crate) fn note_writes(&self, region: usize, segments: &[(usize, usize)]) {
        let g = &self.geo;
        let mut d = self.epoch_diffs.lock().unwrap_or_else(|p| p.into_inner());
        for &(off, len) in segments.iter().filter(|s| s.1 > 0) {
            let _ = g.pieces(region, off, len, |so, r| {
                for p in so / g.page..=(so + r.len() - 1) / g.page {
                    d.insert(p);
                }
                Ok(())
            });
        }
    }

    /// The pages this rank wrote (diffs sent, RMA writes) since the last fence (and
    /// forgets them).
    pub(crate) fn take_epoch_diffs(&self) -> Vec<usize> {
        let mut d = self.epoch_diffs.lock().unwrap_or_else(|p| p.into_inner());
        std::mem::take(&mut *d).into_iter().collect()
    }

    /// The migration policy, run by every rank on the same reports (`diffs[r]`: the
    /// pages rank `r` sent diffs of in the epoch that ends), so that every rank
    /// decides the same moves. A page written by exactly one rank other than its owner
    /// extends that rank's streak (or starts a new one); a page written by several
    /// ranks loses its streak; a page nobody wrote keeps it (fences that only read do
    /// not reset a pattern). A streak of [`MIGRATE_AFTER`] moves the page. Pages of
    /// pinned homes ([`Sharing::pinned`]) never move.
    pub(crate) fn decide(&self, diffs: &[Vec<usize>]) -> Vec<Move> {
        // None: several writers.
        let mut writers: BTreeMap<usize, Option<usize>> = BTreeMap::new();
        let pinned = |p: usize| {
            self.sharing
                .pinned
                .get(self.geo.home_of(p))
                .copied()
                .unwrap_or(false)
        };
        for (r, pages) in diffs.iter().enumerate() {
            for &p in pages
                .iter()
                .filter(|&&p| p < self.geo.total_pages && !pinned(p))
            {
                writers
                    .entry(p)
                    .and_modify(|w| {
                        if *w != Some(r) {
                            *w = None
                        }
                    })
                    .or_insert(Some(r));
            }
        }
        let mut streaks = self.streaks.lock().unwrap_or_else(|p| p.into_inner());
        let mut moves = Vec::new();
        for (p, w) in writers {
            let owner = self.owner_of(p);
            match w {
                Some(w) if w != owner => {
                    let s = streaks.entry(p).or_insert((w, 0));
                    if s.0 != w {
                        *s = (w, 0);
                    }
                    s.1 += 1;
                    if s.1 >= MIGRATE_AFTER {
                        streaks.remove(&p);
                        moves.push(Move {
                            page: p,
                            from: owner,
                            to: w,
                        });
                    }
                }
                _ => {
                    streaks.remove(&p);
                }
            }
        }
        moves
    }

    /// Carries out `moves` (the same list on every rank, sorted by page), inside a
    /// fence after every rank's diffs and operations of the epoch were applied and
    /// before anyone sends a request of the next epoch: the old owner unmaps the page
    /// and sends its bytes, the new owner installs them and maps the page read-write,
    /// and every rank updates its owner table. The caller ends with a barrier, so no
    /// request reaches a new owner before it has the page.
    pub(crate) fn migrate(&self, moves: &[Move]) -> Result<()> {
        let me = self.geo.me;
        let page = self.geo.page;
        let mut pt = self.lock_pages();
        // Sends first (one eager message per page, in page order), then receives, so
        // that two ranks trading pages never wait on each other.
        for m in moves.iter().filter(|m| m.from == me) {
            // Unmap first: from here on this rank's copy is a cache like any other.
            self.seg.protect(m.page, 1, Prot::None)?;
            pt.state[m.page] = INVALID;
            pt.twins.remove(&m.page);
            let mut buf = vec![0u8; page];
            self.seg.read(m.page * page, &mut buf)?;
            self.comm.send(&buf, m.to, TAG_MIGRATE)?;
        }
        for m in moves.iter().filter(|m| m.to == me) {
            let (buf, _) = self.comm.recv_vec::<u8>(m.from, TAG_MIGRATE)?;
            if buf.len() != page {
                return Err(WinError::Protocol(format!(
                    "migrating page {} came with {} bytes",
                    m.page,
                    buf.len()
                )));
            }
            self.seg.write(m.page * page, &buf)?;
            self.seg.protect(m.page, 1, Prot::ReadWrite)?;
            pt.state[m.page] = OWNED;
            pt.twins.remove(&m.page);
        }
        for m in moves {
            let home = self.geo.home_of(m.page);
            if let Some(o) = self.owners.get(m.page) {
                o.store(m.to, Ordering::Release);
            }
            // `moved` counts pages away from home.
            match (m.from == home, m.to == home) {
                (true, false) => {
                    self.moved.fetch_add(1, Ordering::AcqRel);
                }
                (false, true) => {
                    self.moved.fetch_sub(1, Ordering::AcqRel);
                }
                _ => {}
            }
            self.counters.migrations.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
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
            let body = bodies.entry(self.owner_of(p)).or_default();
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
        // Reported at the next fence: the input of the migration policy.
        self.epoch_diffs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(dirty.iter().copied());
        // Send every diff first, then collect the acknowledgements.
        let mut waits = Vec::new();
        for (owner, body) in bodies {
            if !body.is_empty() {
                let hdr = Header::new(Kind::Diff, 0, body.len());
                waits.push((owner, self.post(owner, hdr, &body)?));
            }
        }
        for (owner, tag) in waits {
            self.wait_reply(owner, tag)?;
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
    pub(crate) fn resolve(&self, addr: usize, kind: FaultKind) -> Result<()> {
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
            (OWNED, _) => Err(WinError::InvalidArgument(format!(
                "fault on page {p}, which this rank owns and keeps mapped"
            ))),
            (SHARED, _) => Err(WinError::InvalidArgument(format!(
                "fault on page {p}, which this rank maps from its same-host home"
            ))),
            (DIRTY, _) | (READONLY, FaultKind::Read) => Ok(()), // served meanwhile
            (INVALID, k) => {
                let owner = self.owner_of(p);
                self.counters.fetches.fetch_add(1, Ordering::Relaxed);
                let v = self.call(owner, Header::new(Kind::GetPage, p * page, page), &[])?;
                let data = proto::parse_reply(owner, &v)?;
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
    /// ones find the page valid). Polls the slots for the channel's poll time after
    /// the last fault it served, then sleeps on the pipe (see [`crate::poll`]).
    pub(crate) fn fault_loop(self: Arc<Self>, chan: Arc<FaultChannel>, pipe: OwnedFd) {
        let poll = chan.poll_time();
        let mut pacer = crate::poll::Pacer::new();
        let mut last = Instant::now();
        loop {
            if chan.stopping() {
                break;
            }
            if let Some((slot, addr, kind)) = chan.take() {
                let r = self.resolve(addr, kind);
                if let Err(e) = &r {
                    eprintln!(
                        "dsmpi-window: rank {}: page fault at {addr:#x}: {e}",
                        self.geo.me
                    );
                }
                chan.complete(slot, r.is_ok());
                last = Instant::now();
                continue;
            }
            if last.elapsed() < poll && pacer.may_poll() && pacer.idle() {
                continue;
            }
            if chan.prepare_sleep() {
                if !chan.sleep(&pipe) {
                    break;
                }
                last = Instant::now();
            }
        }
    }

    // ----- the service thread -----------------------------------------------------------

    /// The service thread: serves requests from every rank until told to stop.
    /// Polls (`iprobe`) while the window is busy, sleeps in a blocking receive when
    /// it is not (see [`crate::poll`]).
    pub(crate) fn service_loop(self: Arc<Self>) {
        let poll = self.poll;
        let lock_poll = poll * crate::poll::LOCK_FACTOR;
        let mut pacer = crate::poll::Pacer::new();
        // Cold at start: the first request wakes the thread.
        let mut last: Option<Instant> = None;
        loop {
            let hot = last.is_some_and(|t| {
                let idle = t.elapsed();
                idle < poll || (idle < lock_poll && self.locks_held.load(Ordering::Relaxed))
            }) && pacer.may_poll();
            let got = if hot {
                match self.comm.iprobe(ANY_SOURCE, TAG_REQ) {
                    // The first message of that source on the tag is the one probed.
                    Ok(Some(st)) => self.comm.recv_vec::<u8>(st.source(), TAG_REQ),
                    Ok(None) => {
                        if !pacer.idle() {
                            // Starved: sleep in the receive from now on (for a while).
                            last = None;
                        }
                        continue;
                    }
                    Err(e) => Err(e),
                }
            } else {
                self.comm.recv_vec::<u8>(ANY_SOURCE, TAG_REQ)
            };
            let (msg, st) = match got {
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
            if !poll.is_zero() {
                last = Some(Instant::now());
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
        let r = self.execute(src, h, payload);
        if matches!(
            h.kind,
            Kind::Lock | Kind::Unlock | Kind::RangeLock | Kind::RangeUnlock
        ) {
            let l = &self.st.lock;
            let held =
                l.exclusive.is_some() || !l.shared.is_empty() || !self.st.ranges.held.is_empty();
            self.sh.locks_held.store(held, Ordering::Relaxed);
        }
        match r {
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

    /// Checks that `len` bytes at `off` of `region`'s region are all on pages this
    /// rank owns: a request routed with another owner table would be a protocol error.
    fn check_owned(&self, region: usize, off: usize, len: usize) -> Result<()> {
        let g = &self.sh.geo;
        g.check(region, off, len)?;
        g.pieces(region, off, len, |so, r| {
            if r.is_empty() {
                return Ok(());
            }
            let first = so / g.page;
            let last = (so + r.len() - 1) / g.page;
            match (first..=last).find(|&p| self.sh.owner_of(p) != g.me) {
                Some(p) => Err(WinError::Protocol(format!(
                    "request for page {p} of the segment, which rank {} does not own",
                    g.me
                ))),
                None => Ok(()),
            }
        })
    }

    fn read_region(&self, region: usize, off: usize, len: usize) -> Result<Vec<u8>> {
        let g = &self.sh.geo;
        self.check_owned(region, off, len)?;
        let mut out = vec![0u8; len];
        g.pieces(region, off, len, |so, r| self.sh.seg.read(so, &mut out[r]))?;
        Ok(out)
    }

    fn write_region(&self, region: usize, off: usize, data: &[u8]) -> Result<()> {
        let g = &self.sh.geo;
        self.check_owned(region, off, data.len())?;
        g.pieces(region, off, data.len(), |so, r| {
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
        // Data requests name the region they address in `extra` (its pages may be
        // owned here without being homed here); `check_owned` refuses a bad rank.
        let region = usize::try_from(h.extra).unwrap_or(usize::MAX);
        match h.kind {
            Kind::Put => {
                self.write_region(region, off, payload)?;
                Ok(Some(Vec::new()))
            }
            Kind::Get => self.read_region(region, off, len).map(Some),
            Kind::Acc | Kind::GetAcc => {
                let (op, kind) = Self::elem(h.code)?;
                if off % kind_size(kind) != 0 {
                    return Err(WinError::Misaligned {
                        offset: off,
                        align: kind_size(kind),
                    });
                }
                let old = self.read_region(region, off, payload.len())?;
                let mut new = old.clone();
                apply(kind, op, &mut new, payload)?;
                if op != Op::NoOp {
                    self.write_region(region, off, &new)?;
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
                let old = self.read_region(region, off, len)?;
                if old[..] == payload[..len] {
                    self.write_region(region, off, &payload[len..])?;
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
                if off % g.page != 0 || p >= g.total_pages || self.sh.owner_of(p) != g.me {
                    return Err(WinError::Protocol(format!(
                        "page request at {off}, not a page owned here"
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
            Kind::PutV | Kind::GetV | Kind::AccV | Kind::GetAccV => {
                self.execute_vectored(h, region, payload).map(Some)
            }
        }
    }

    /// A vectored request (derived datatypes): every piece is checked before any is
    /// touched, then the pieces execute in order, all under the service lock (so an
    /// accumulate stays element-wise atomic).
    fn execute_vectored(&mut self, h: Header, region: usize, payload: &[u8]) -> Result<Vec<u8>> {
        let (pieces, data) = proto::decode_list(payload)?;
        let mut total = 0usize;
        for &(o, l) in &pieces {
            self.check_owned(region, o, l)?;
            total = total
                .checked_add(l)
                .ok_or_else(|| WinError::Protocol("piece lengths overflow".into()))?;
        }
        let want = if h.kind == Kind::GetV { 0 } else { total };
        if data.len() != want {
            return Err(WinError::Protocol(format!(
                "{:?} of {total} bytes carries {} bytes of data",
                h.kind,
                data.len()
            )));
        }
        let mut out = Vec::new();
        match h.kind {
            Kind::PutV => {
                let mut at = 0;
                for &(o, l) in &pieces {
                    self.write_region(region, o, &data[at..at + l])?;
                    at += l;
                }
            }
            Kind::GetV => {
                out.reserve(total);
                for &(o, l) in &pieces {
                    out.extend_from_slice(&self.read_region(region, o, l)?);
                }
            }
            _ => {
                let (op, kind) = Self::elem(h.code)?;
                let ks = kind_size(kind);
                if let Some(&(o, _)) = pieces.iter().find(|p| p.0 % ks != 0 || p.1 % ks != 0) {
                    return Err(WinError::Misaligned {
                        offset: o,
                        align: ks,
                    });
                }
                let mut at = 0;
                for &(o, l) in &pieces {
                    let old = self.read_region(region, o, l)?;
                    let mut new = old.clone();
                    apply(kind, op, &mut new, &data[at..at + l])?;
                    if op != Op::NoOp {
                        self.write_region(region, o, &new)?;
                    }
                    if h.kind == Kind::GetAccV {
                        out.extend_from_slice(&old);
                    }
                    at += l;
                }
            }
        }
        Ok(out)
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
            if len == 0
                || (end - 1) / g.page != p
                || p >= g.total_pages
                || self.sh.owner_of(p) != g.me
            {
                return Err(WinError::Protocol(format!(
                    "diff run {off}+{len} is not inside a page owned here"
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
