//! The public window: allocation, RMA calls, synchronization, typed views, teardown.

use std::marker::PhantomData;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use bytemuck::Pod;
use dsmpi_runtime::Communicator;

use crate::access;
use crate::element::{Element, Op};
use crate::error::{Result, WinError};
use crate::fault::{self, FaultChannel, Registration};
use crate::proto::{self, Header, Kind, TAG_BARRIER, TAG_COMPLETE, TAG_POST, TAG_SETUP};
use crate::segment::{page_size, Prot, Segment};
use crate::shared::{Geometry, Shared, Sharing, INVALID, OWNED, SHARED};

mod typed;
pub use typed::Typed;

/// How the ranks' regions are laid out in the shared segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Layout {
    /// Rank 0's pages, then rank 1's, ... (MPI's window of per-rank regions).
    #[default]
    Blocked,
    /// Page `p` of the segment is homed at rank `p % n` (document 000's placement);
    /// needs the same size on every rank.
    RoundRobin,
}

/// Fixed words of a rank's set-up report (size, layout, pid, memory descriptor,
/// willing to share); a bitmap of the ranks it reaches through shared memory follows.
const SETUP_FIXED: usize = 5;

/// How many times one view access may fault before it is an error (see `View::retry`).
const FAULT_RETRIES: usize = 1000;

/// How [`Window::allocate_opts`] lays out and maps a window.
///
/// ```
/// use dsmpi_window::{Layout, WinOptions, Window};
///
/// dsmpi_runtime::run_local(2, |world| {
///     // Keep the page-fault path even between ranks of one host.
///     let opts = WinOptions { share_same_host: false, ..WinOptions::default() };
///     let win = Window::allocate_opts(&world, 4096, opts).unwrap();
///     assert_eq!(win.layout(), Layout::Blocked);
///     assert!(!win.shared_with(1 - world.rank()));
///     win.free().unwrap();
/// })
/// .unwrap();
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WinOptions {
    /// Where the regions lie in the segment.
    pub layout: Layout,
    /// Map the regions of ranks linked to this one through shared memory (same host,
    /// the `shm` transport) straight from their memory, as MPI's shared-memory windows
    /// do: loads and stores there never fault. Applies to the blocked layout, between
    /// two ranks that both ask for it. Default: on.
    pub share_same_host: bool,
    /// Who makes a page valid when a [`View`] access faults on it. Default:
    /// [`FaultPath::Inline`] where it exists (x86_64 Linux), unless the environment
    /// variable `DSMPI_WIN_FAULT_PATH` says `thread`.
    pub fault_path: FaultPath,
}

impl Default for WinOptions {
    fn default() -> WinOptions {
        WinOptions {
            layout: Layout::Blocked,
            share_same_host: true,
            fault_path: FaultPath::from_env(),
        }
    }
}

/// Who serves a page fault of a [`View`] access (see the crate docs, *The fault
/// path*). Both start the same way: the access raises SIGSEGV and the handler finds
/// the window; both make the page valid the same way (one fetch from its owner, then
/// `mprotect`), one fault at a time per window, so several threads faulting on one
/// page cause one fetch.
///
/// ```
/// use dsmpi_window::{FaultPath, LockType, WinOptions, Window};
///
/// dsmpi_runtime::run_local(2, |world| {
///     for path in [FaultPath::Inline, FaultPath::Thread] {
///         let opts = WinOptions { share_same_host: false, fault_path: path, ..WinOptions::default() };
///         let win = Window::allocate_opts(&world, 4096, opts).unwrap();
///         let v = win.view::<u32>().unwrap();
///         let other = 1 - world.rank();
///         v.store(v.index_of(world.rank(), 0).unwrap(), 7 + world.rank() as u32).unwrap();
///         win.fence().unwrap();
///         // The other rank's page is not valid here: this load faults and fetches it.
///         assert_eq!(v.load(v.index_of(other, 0).unwrap()).unwrap(), 7 + other as u32);
///         assert!(win.stats().faults >= 1);
///         win.free().unwrap();
///     }
/// })
/// .unwrap();
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultPath {
    /// The faulting thread itself, after the handler has turned the fault into a
    /// return value of the view's access routine. No thread hand-off; the wait for
    /// the page is an ordinary receive. x86_64 Linux only (elsewhere a window asked
    /// for it uses [`FaultPath::Thread`]).
    Inline,
    /// The window's fault thread, which the handler wakes and waits for (document
    /// 000's design): two thread wake-ups per fault, but it serves any access to the
    /// window's memory, not only the view's.
    Thread,
}

impl FaultPath {
    /// `DSMPI_WIN_FAULT_PATH=thread` (or `inline`), else [`FaultPath::Inline`] where it
    /// exists. Any other value is reported on stderr (once) and ignored.
    pub fn from_env() -> FaultPath {
        let default = if crate::access::AVAILABLE {
            FaultPath::Inline
        } else {
            FaultPath::Thread
        };
        match std::env::var("DSMPI_WIN_FAULT_PATH") {
            Ok(v) if v.trim() == "thread" => FaultPath::Thread,
            Ok(v) if v.trim() == "inline" || v.trim().is_empty() => default,
            Ok(v) => {
                static WARNED: std::sync::Once = std::sync::Once::new();
                WARNED.call_once(|| {
                    eprintln!(
                        "dsmpi-window: DSMPI_WIN_FAULT_PATH={v:?} is neither \"inline\" nor \"thread\"; using {default:?}"
                    )
                });
                default
            }
            Err(_) => default,
        }
    }
}

/// Passive-target lock type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockType {
    /// Several origins may hold it at once (MPI_LOCK_SHARED).
    Shared,
    /// One origin at a time (MPI_LOCK_EXCLUSIVE).
    Exclusive,
}

/// Counters of one window on this rank (for tests and benchmarks).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WindowStats {
    /// Page faults served (a fault that found its page already valid, served
    /// meanwhile for another thread, counts too).
    pub faults: u64,
    /// Of [`faults`](Self::faults), those the faulting thread served itself
    /// ([`FaultPath::Inline`]); the others were served by the fault thread.
    pub faults_inline: u64,
    /// Pages fetched from their home.
    pub fetches: u64,
    /// Dirty pages whose diffs were sent home.
    pub diff_pages: u64,
    /// Bytes of diffs sent home.
    pub diff_bytes: u64,
    /// Cached pages dropped at acquires.
    pub invalidations: u64,
    /// Pages that changed owner at fences (every rank counts every move, so the value
    /// is the same on all ranks).
    pub migrations: u64,
}

#[derive(Default)]
struct Pscw {
    exposure: Option<Vec<usize>>,
    access: Option<Vec<usize>>,
}

/// A one-sided communication window over a shared segment; see the crate docs.
pub struct Window {
    sh: Arc<Shared>,
    service: Option<JoinHandle<()>>,
    faulter: Option<JoinHandle<()>>,
    chan: Option<Arc<FaultChannel>>,
    reg: Option<Registration>,
    /// Targets with fire-and-forget operations not yet acknowledged by a flush.
    pending: Mutex<Vec<bool>>,
    pscw: Mutex<Pscw>,
    freed: bool,
    /// Views serve their own faults ([`FaultPath::Inline`], where it exists).
    inline_faults: bool,
}

impl std::fmt::Debug for Window {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Window")
            .field("rank", &self.sh.geo.me)
            .field("size", &self.sh.geo.n)
            .field("layout", &self.sh.geo.layout)
            .field("region_bytes", &self.sh.geo.region_bytes)
            .finish()
    }
}

fn spawn(name: String, f: impl FnOnce() + Send + 'static) -> Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(name)
        .spawn(f)
        .map_err(|e| WinError::Os {
            what: "starting a window thread".into(),
            source: Arc::new(e),
        })
}

/// Every rank's report of `mine.len()` words (the same length on every rank), in
/// rank order: each rank sends its own to every other. Collective over `comm`.
fn exchange(comm: &Communicator, mine: &[u64]) -> Result<Vec<Vec<u64>>> {
    let (n, me) = (comm.size(), comm.rank());
    let mut all = vec![vec![0u64; mine.len()]; n];
    all[me] = mine.to_vec();
    for r in (0..n).filter(|&r| r != me) {
        comm.send(mine, r, TAG_SETUP)?;
    }
    for (r, slot) in all.iter_mut().enumerate().filter(|(r, _)| *r != me) {
        comm.recv_into(&mut slot[..], r, TAG_SETUP)?;
    }
    Ok(all)
}

/// Barrier on the window's private communicator: the all-gather of
/// [`gather_pages`] with nothing to report. One message pattern for every barrier-like
/// step (allocation, fence, teardown), so that a rank in one of them still matches
/// another rank in a different one, and a lost peer fails both the same way.
fn barrier(comm: &Communicator) -> Result<()> {
    gather_pages(comm, &[]).map(|_| ())
}

/// Dissemination all-gather of page lists, which is also a barrier: round `k` sends
/// everything this rank knows to `me + 2^k` and learns everything `me - 2^k` knew, so
/// after ⌈log₂ n⌉ rounds every rank has every list (same message count as
/// the plain dissemination barrier). Returns `lists[r]` = rank `r`'s pages.
fn gather_pages(comm: &Communicator, mine: &[usize]) -> Result<Vec<Vec<usize>>> {
    let (n, me) = (comm.size(), comm.rank());
    let mut known: std::collections::BTreeMap<usize, Vec<usize>> = Default::default();
    known.insert(me, mine.to_vec());
    let mut k = 0;
    let mut dist = 1;
    while dist < n {
        // Encoding: per known rank, its number, its count, then its pages.
        let mut msg: Vec<u64> = Vec::new();
        for (r, pages) in &known {
            msg.push(*r as u64);
            msg.push(pages.len() as u64);
            msg.extend(pages.iter().map(|&p| p as u64));
        }
        comm.send(&msg, (me + dist) % n, TAG_BARRIER + k)?;
        let (got, _) = comm.recv_vec::<u64>((me + n - dist) % n, TAG_BARRIER + k)?;
        let bad = || WinError::Protocol("malformed page report at a fence".into());
        let mut i = 0;
        while i < got.len() {
            let r = usize::try_from(got[i]).map_err(|_| bad())?;
            let c = usize::try_from(*got.get(i + 1).ok_or_else(bad)?).map_err(|_| bad())?;
            let end = (i + 2).checked_add(c).ok_or_else(bad)?;
            let pages = got.get(i + 2..end).ok_or_else(bad)?;
            if r >= n {
                return Err(bad());
            }
            known
                .entry(r)
                .or_insert_with(|| pages.iter().map(|&p| p as usize).collect());
            i = end;
        }
        dist *= 2;
        k += 1;
    }
    if known.len() != n {
        return Err(WinError::Protocol(format!(
            "fence gathered page reports of {} ranks out of {n}",
            known.len()
        )));
    }
    Ok(known.into_values().collect())
}

impl Window {
    /// Allocates a window of `bytes_per_rank` bytes on this rank, in the blocked
    /// layout. Collective over `comm`; ranks may pass different sizes.
    pub fn allocate(comm: &Communicator, bytes_per_rank: usize) -> Result<Window> {
        Window::allocate_with(comm, bytes_per_rank, Layout::Blocked)
    }

    /// Allocates a window with the given layout (and the other options at their
    /// defaults). Collective over `comm`; every rank must pass the same layout (and,
    /// for [`Layout::RoundRobin`], the same size).
    pub fn allocate_with(comm: &Communicator, bytes: usize, layout: Layout) -> Result<Window> {
        let opts = WinOptions {
            layout,
            ..WinOptions::default()
        };
        Window::allocate_opts(comm, bytes, opts)
    }

    /// Allocates a window with the given options. Collective over `comm`; every rank
    /// must pass the same layout (and, for [`Layout::RoundRobin`], the same size).
    pub fn allocate_opts(comm: &Communicator, bytes: usize, opts: WinOptions) -> Result<Window> {
        let layout = opts.layout;
        let comm = comm.dup();
        let (n, me) = (comm.size(), comm.rank());
        let page = page_size();
        // What every rank tells every other: its size, its layout, where its memory
        // can be opened (pid, descriptor of the memory file), whether it shares, and
        // which ranks it reaches through shared memory (a bitmap).
        let words = SETUP_FIXED + n.div_ceil(64);
        let mut mine = vec![0u64; words];
        mine[0] = bytes as u64;
        mine[1] = layout as u64;
        mine[2] = u64::from(std::process::id());
        mine[4] = u64::from(opts.share_same_host);
        for r in (0..n).filter(|&r| r != me && comm.shares_memory_with(r)) {
            mine[SETUP_FIXED + r / 64] |= 1 << (r % 64);
        }
        // Sizes and layouts first (the memory's size depends on them), then the
        // memory's whereabouts.
        let all = exchange(&comm, &mine[..2])?;
        if all.iter().any(|a| a[1] != layout as u64) {
            return Err(WinError::InvalidArgument(
                "ranks disagree on the window layout".into(),
            ));
        }
        if layout == Layout::RoundRobin && all.iter().any(|a| a[0] != bytes as u64) {
            return Err(WinError::InvalidArgument(
                "a round-robin window needs the same size on every rank".into(),
            ));
        }
        let sizes = all
            .iter()
            .map(|a| usize::try_from(a[0]))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|_| WinError::InvalidArgument("window size overflows".into()))?;
        let geo = Geometry::new(me, page, layout, sizes);
        let seg = Segment::new(geo.total_pages.max(1) * page)?;
        mine[3] = seg.raw_fd() as u64;
        let all = exchange(&comm, &mine)?;
        // Ranks a and b share iff both want to, each reaches the other through shared
        // memory, and the layout keeps each region in one run of pages. Every rank
        // computes the same table from the same reports.
        let reaches = |a: usize, b: usize| all[a][SETUP_FIXED + b / 64] & (1 << (b % 64)) != 0;
        let pair = |a: usize, b: usize| {
            a != b
                && layout == Layout::Blocked
                && all[a][4] != 0
                && all[b][4] != 0
                && reaches(a, b)
                && reaches(b, a)
        };
        let mut sharing = Sharing {
            direct: (0..n).map(|r| pair(me, r)).collect(),
            pinned: (0..n).map(|h| (0..n).any(|b| pair(h, b))).collect(),
        };
        let mut state = vec![INVALID; geo.total_pages];
        let mut home_pages: Vec<usize> = (0..geo.region_pages[me])
            .map(|k| geo.seg_page(me, k))
            .collect();
        home_pages.sort_unstable();
        // Home pages stay read-write for the whole life of the window; protect them
        // in runs (one call in the blocked layout).
        let mut i = 0;
        while i < home_pages.len() {
            let mut j = i + 1;
            while j < home_pages.len() && home_pages[j] == home_pages[j - 1] + 1 {
                j += 1;
            }
            seg.protect(home_pages[i], j - i, Prot::ReadWrite)?;
            i = j;
        }
        for &p in &home_pages {
            state[p] = OWNED;
        }
        // Same-host regions: map them from their home's memory. A home whose memory
        // cannot be opened (ptrace rules) keeps the fault path for this rank; its
        // pages stay pinned all the same, which costs only migrations.
        for (h, report) in all.iter().enumerate() {
            if !sharing.direct[h] {
                continue;
            }
            let (first, count) = (geo.seg_page(h, 0), geo.region_pages[h]);
            if count == 0 {
                continue;
            }
            let (pid, fd) = (report[2] as u32, report[3] as i32);
            match Segment::open_peer(pid, fd) {
                Ok(file) => {
                    seg.share(first, count, &file)?;
                    state[first..first + count].fill(SHARED);
                }
                Err(e) => {
                    eprintln!(
                        "dsmpi-window: rank {me}: not sharing rank {h}'s region (same host): {e}; its pages fault and are fetched instead"
                    );
                    sharing.direct[h] = false;
                }
            }
        }
        let app = seg.app_base() as usize;
        let app_len = seg.len();
        // Ranks of this window on this host: polling pays only with cores to spare.
        let host = comm.host_of(me).to_string();
        let local = (0..n).filter(|&r| comm.host_of(r) == host).count();
        let poll = crate::poll::poll_window(local);
        let sh = Arc::new(Shared::new(comm, seg, geo, state, sharing, poll));

        let s2 = sh.clone();
        let service = spawn(format!("dsm-svc-{me}"), move || s2.service_loop())?;
        let mut win = Window {
            sh: sh.clone(),
            service: Some(service),
            faulter: None,
            chan: None,
            reg: None,
            pending: Mutex::new(vec![false; n]),
            pscw: Mutex::new(Pscw::default()),
            freed: false,
            inline_faults: opts.fault_path == FaultPath::Inline && crate::access::AVAILABLE,
        };
        // From here on a failure stops what was started, without the collective part
        // of teardown (the other ranks may be anywhere in `allocate`).
        match win
            .start_fault_path(app, app_len)
            .and_then(|_| barrier(&sh.comm))
        {
            Ok(()) => Ok(win),
            Err(e) => {
                let _ = win.teardown(false);
                Err(e)
            }
        }
    }

    /// Starts the fault thread and registers the application view with the handler.
    fn start_fault_path(&mut self, app: usize, app_len: usize) -> Result<()> {
        let (chan, pipe) = FaultChannel::new(self.sh.poll)?;
        let chan: Arc<FaultChannel> = Arc::from(chan);
        let (sh, c) = (self.sh.clone(), chan.clone());
        let me = self.rank();
        self.faulter = Some(spawn(format!("dsm-fault-{me}"), move || {
            sh.fault_loop(c, pipe)
        })?);
        self.chan = Some(chan.clone());
        self.reg = Some(fault::register(app, app_len, &chan)?);
        Ok(())
    }

    /// This rank in the window's group.
    pub fn rank(&self) -> usize {
        self.sh.geo.me
    }

    /// Number of ranks in the window.
    pub fn size(&self) -> usize {
        self.sh.geo.n
    }

    /// Whether this rank maps `rank`'s region straight from `rank`'s memory (same
    /// host, see [`WinOptions::share_same_host`]): loads and stores there never fault,
    /// and are visible to `rank` at once (still ordered for others only by the
    /// window's synchronization, as MPI's unified memory model says). `false` for
    /// this rank itself, whose region is its own memory anyway.
    pub fn shared_with(&self, rank: usize) -> bool {
        self.sh.sharing.direct.get(rank).copied().unwrap_or(false)
    }

    /// The layout of the segment.
    pub fn layout(&self) -> Layout {
        self.sh.geo.layout
    }

    /// Bytes in `rank`'s region (what it asked for at allocation).
    pub fn region_bytes(&self, rank: usize) -> Result<usize> {
        self.sh
            .geo
            .region_bytes
            .get(rank)
            .copied()
            .ok_or(WinError::RankOutOfRange {
                rank,
                size: self.size(),
            })
    }

    /// Bytes of the whole segment the view covers (every region, rounded to pages).
    pub fn segment_bytes(&self) -> usize {
        self.sh.geo.total_pages * self.sh.geo.page
    }

    /// The page size windows use.
    pub fn page_size(&self) -> usize {
        self.sh.geo.page
    }

    /// Segment byte offset of byte `byte` of `rank`'s region (for views).
    pub fn segment_offset(&self, rank: usize, byte: usize) -> Result<usize> {
        self.sh.geo.check(rank, byte, 1)?;
        Ok(self.sh.geo.seg_offset(rank, byte))
    }

    /// Rank that is the home of the segment byte `offset`.
    pub fn home_of(&self, offset: usize) -> Result<usize> {
        if offset >= self.segment_bytes() {
            return Err(WinError::OutOfRange {
                target: self.rank(),
                offset,
                len: 1,
                size: self.segment_bytes(),
            });
        }
        Ok(self.sh.geo.home_of(offset / self.sh.geo.page))
    }

    /// Rank that currently owns the page holding segment byte `offset`: its home, or
    /// the rank the page migrated to (see the crate docs). The same on every rank;
    /// changes only inside [`fence`](Self::fence).
    pub fn owner_of(&self, offset: usize) -> Result<usize> {
        self.home_of(offset)?;
        Ok(self.sh.owner_of(offset / self.sh.geo.page))
    }

    /// This rank's counters.
    pub fn stats(&self) -> WindowStats {
        let c = &self.sh.counters;
        WindowStats {
            faults: c.faults.load(Ordering::Relaxed),
            faults_inline: c.faults_inline.load(Ordering::Relaxed),
            fetches: c.fetches.load(Ordering::Relaxed),
            diff_pages: c.diff_pages.load(Ordering::Relaxed),
            diff_bytes: c.diff_bytes.load(Ordering::Relaxed),
            invalidations: c.invalidations.load(Ordering::Relaxed),
            migrations: c.migrations.load(Ordering::Relaxed),
        }
    }

    // ----- RMA ------------------------------------------------------------------------

    /// Byte offset and length of `count` elements of `T` at element displacement
    /// `disp` of `target`'s region, checked.
    fn span<T>(&self, target: usize, disp: usize, count: usize) -> Result<(usize, usize)> {
        let w = std::mem::size_of::<T>();
        let overflow = || WinError::OutOfRange {
            target,
            offset: usize::MAX,
            len: count,
            size: self.sh.geo.region_bytes.get(target).copied().unwrap_or(0),
        };
        let off = disp.checked_mul(w).ok_or_else(overflow)?;
        let len = count.checked_mul(w).ok_or_else(overflow)?;
        self.sh.geo.check(target, off, len)?;
        Ok((off, len))
    }

    /// The pending flags (a poisoned lock still holds valid flags).
    fn pending(&self) -> std::sync::MutexGuard<'_, Vec<bool>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether a put or get on `target`'s region may copy straight through the
    /// shared mapping: the region is mapped from `target`'s memory (so its pages
    /// never move), and no operation of this rank to `target` is still unflushed (a
    /// direct copy would overtake it; requests from one origin stay in order).
    fn direct(&self, target: usize) -> bool {
        self.sh.sharing.direct.get(target).copied().unwrap_or(false) && !self.pending()[target]
    }

    fn mark_pending(&self, target: usize) {
        self.pending()[target] = true;
    }

    /// Writes `origin` into `target`'s region at element displacement `disp` (in
    /// units of `T`). Completes at the target by the next flush, unlock, fence or
    /// complete; `origin` may be reused at once.
    pub fn put<T: Pod>(&self, origin: &[T], target: usize, disp: usize) -> Result<()> {
        let (off, len) = self.span::<T>(target, disp, origin.len())?;
        let bytes: &[u8] = bytemuck::cast_slice(origin);
        if self.direct(target) {
            self.sh
                .seg
                .write(self.sh.geo.seg_offset(target, off), bytes)?;
            self.sh.note_writes(target, &[(off, len)]);
            return Ok(());
        }
        for (owner, o, l) in self.sh.route(target, off, len)? {
            let mut h = Header::new(Kind::Put, o, l);
            h.extra = target as u64;
            self.sh.send(owner, h, &bytes[o - off..o - off + l])?;
            self.mark_pending(owner);
        }
        self.sh.note_writes(target, &[(off, len)]);
        Ok(())
    }

    /// Reads `buf.len()` elements from `target`'s region at element displacement
    /// `disp`. Returns when `buf` holds them.
    pub fn get<T: Pod>(&self, buf: &mut [T], target: usize, disp: usize) -> Result<()> {
        let (off, len) = self.span::<T>(target, disp, buf.len())?;
        let out: &mut [u8] = bytemuck::cast_slice_mut(buf);
        if self.direct(target) {
            return self.sh.seg.read(self.sh.geo.seg_offset(target, off), out);
        }
        // Ask every owner first, then collect the answers.
        let mut waits = Vec::new();
        for (owner, o, l) in self.sh.route(target, off, len)? {
            let mut h = Header::new(Kind::Get, o, l);
            h.extra = target as u64;
            waits.push((owner, o - off, l, self.sh.post(owner, h, &[])?));
        }
        for (owner, at, l, tag) in waits {
            let v = self.sh.wait_reply(owner, tag)?;
            let data = proto::parse_reply(owner, &v)?;
            if data.len() != l {
                return Err(WinError::Protocol(format!(
                    "get of {l} bytes answered with {}",
                    data.len()
                )));
            }
            out[at..at + l].copy_from_slice(data);
        }
        Ok(())
    }

    /// Combines `origin` into `target`'s region with `op`, element by element,
    /// atomically with respect to every other accumulate-family operation.
    pub fn accumulate<T: Element>(
        &self,
        origin: &[T],
        target: usize,
        disp: usize,
        op: Op,
    ) -> Result<()> {
        op.check(T::KIND)?;
        let (off, len) = self.span::<T>(target, disp, origin.len())?;
        let bytes: &[u8] = bytemuck::cast_slice(origin);
        // Pieces split at page boundaries, which are multiples of the element size: no
        // element is split.
        for (owner, o, l) in self.sh.route(target, off, len)? {
            let mut h = Header::new(Kind::Acc, o, l);
            h.code = op as u64 | (T::KIND as u64) << 8;
            h.extra = target as u64;
            self.sh.send(owner, h, &bytes[o - off..o - off + l])?;
            self.mark_pending(owner);
        }
        if op != Op::NoOp {
            self.sh.note_writes(target, &[(off, len)]);
        }
        Ok(())
    }

    /// Like [`accumulate`](Self::accumulate), and returns the target's previous
    /// contents into `result` (same length as `origin`). With [`Op::NoOp`] it is an
    /// atomic read.
    pub fn get_accumulate<T: Element>(
        &self,
        origin: &[T],
        result: &mut [T],
        target: usize,
        disp: usize,
        op: Op,
    ) -> Result<()> {
        op.check(T::KIND)?;
        if origin.len() != result.len() {
            return Err(WinError::InvalidArgument(format!(
                "get_accumulate with {} origin and {} result elements",
                origin.len(),
                result.len()
            )));
        }
        let (off, len) = self.span::<T>(target, disp, origin.len())?;
        let bytes: &[u8] = bytemuck::cast_slice(origin);
        let out: &mut [u8] = bytemuck::cast_slice_mut(result);
        let mut waits = Vec::new();
        for (owner, o, l) in self.sh.route(target, off, len)? {
            let mut h = Header::new(Kind::GetAcc, o, l);
            h.code = op as u64 | (T::KIND as u64) << 8;
            h.extra = target as u64;
            let at = o - off;
            waits.push((owner, at, l, self.sh.post(owner, h, &bytes[at..at + l])?));
        }
        for (owner, at, l, tag) in waits {
            let v = self.sh.wait_reply(owner, tag)?;
            let data = proto::parse_reply(owner, &v)?;
            if data.len() != l {
                return Err(WinError::Protocol("get_accumulate reply length".into()));
            }
            out[at..at + l].copy_from_slice(data);
        }
        if op != Op::NoOp {
            self.sh.note_writes(target, &[(off, len)]);
        }
        Ok(())
    }

    /// Atomically combines `value` into one element and returns its previous value.
    pub fn fetch_and_op<T: Element>(
        &self,
        value: T,
        target: usize,
        disp: usize,
        op: Op,
    ) -> Result<T> {
        let mut out = [T::zeroed()];
        self.get_accumulate(&[value], &mut out, target, disp, op)?;
        Ok(out[0])
    }

    /// Atomically replaces one element by `new` if it equals `compare` (bitwise);
    /// returns its previous value either way.
    pub fn compare_and_swap<T: Element>(
        &self,
        compare: T,
        new: T,
        target: usize,
        disp: usize,
    ) -> Result<T> {
        let (off, len) = self.span::<T>(target, disp, 1)?;
        let mut payload = bytemuck::bytes_of(&compare).to_vec();
        payload.extend_from_slice(bytemuck::bytes_of(&new));
        // One element of a power-of-two size never straddles a page: one owner.
        let owner = match self.sh.route(target, off, len)?.as_slice() {
            [(o, _, _)] => *o,
            _ => {
                return Err(WinError::Misaligned {
                    offset: off,
                    align: len,
                })
            }
        };
        let mut h = Header::new(Kind::Cas, off, len);
        h.extra = target as u64;
        let v = self.sh.call(owner, h, &payload)?;
        self.sh.note_writes(target, &[(off, len)]);
        let data = proto::parse_reply(owner, &v)?;
        if data.len() != len {
            return Err(WinError::Protocol("compare_and_swap reply length".into()));
        }
        Ok(bytemuck::pod_read_unaligned(data))
    }

    // ----- synchronization ------------------------------------------------------------

    fn check_rank(&self, rank: usize) -> Result<()> {
        if rank < self.size() {
            Ok(())
        } else {
            Err(WinError::RankOutOfRange {
                rank,
                size: self.size(),
            })
        }
    }

    /// Completes at `target` every operation this rank issued to it, and sends the
    /// diffs of this rank's stores through the view home.
    pub fn flush(&self, target: usize) -> Result<()> {
        self.check_rank(target)?;
        self.sh.release()?;
        // Operations on `target`'s region went to the owners of its pages.
        for o in self.sh.foreign_owners(target) {
            self.flush_rma(o)?;
        }
        self.flush_rma(target)
    }

    fn flush_rma(&self, target: usize) -> Result<()> {
        let was = { std::mem::replace(&mut self.pending()[target], false) };
        if was {
            self.sh.call(target, Header::new(Kind::Flush, 0, 0), &[])?;
        }
        Ok(())
    }

    /// [`flush`](Self::flush) to every rank.
    pub fn flush_all(&self) -> Result<()> {
        self.sh.release()?;
        let targets: Vec<usize> = {
            let mut p = self.pending();
            let t = (0..p.len()).filter(|&r| p[r]).collect();
            p.iter_mut().for_each(|x| *x = false);
            t
        };
        // Send every flush first, then wait for the answers.
        let mut waits = Vec::new();
        for t in targets {
            waits.push((t, self.sh.post(t, Header::new(Kind::Flush, 0, 0), &[])?));
        }
        for (t, tag) in waits {
            self.sh.wait_reply(t, tag)?;
        }
        Ok(())
    }

    /// Completes locally the operations issued to `target`: their origin buffers may
    /// be reused. Every call here copies or sends its origin before returning, so this
    /// only checks the rank.
    pub fn flush_local(&self, target: usize) -> Result<()> {
        self.check_rank(target)
    }

    /// [`flush_local`](Self::flush_local) for every rank.
    pub fn flush_local_all(&self) -> Result<()> {
        Ok(())
    }

    /// Collective fence: closes the current epoch (every operation and every store
    /// through the view of every rank is complete and visible) and opens the next.
    ///
    /// Fences are also where pages migrate (see the crate docs): the barrier is an
    /// all-gather of the pages each rank sent diffs of, every rank runs the same
    /// policy on it, and moved pages travel to their new owners before a second
    /// barrier (only in fences that move pages).
    pub fn fence(&self) -> Result<()> {
        self.flush_all()?;
        let mine = self.sh.take_epoch_diffs();
        let all = gather_pages(&self.sh.comm, &mine)?;
        let moves = self.sh.decide(&all);
        if !moves.is_empty() {
            self.sh.migrate(&moves)?;
            // No request of the next epoch reaches a new owner before it has the page.
            barrier(&self.sh.comm)?;
        }
        self.sh.invalidate(None)
    }

    /// Starts a passive-target epoch on `target` (MPI_Win_lock). Cached copies of the
    /// target's pages are dropped, so the view sees what earlier holders released.
    pub fn lock(&self, kind: LockType, target: usize) -> Result<()> {
        self.check_rank(target)?;
        let mut h = Header::new(Kind::Lock, 0, 0);
        h.extra = (kind == LockType::Exclusive) as u64;
        self.sh.call(target, h, &[])?;
        self.sh.invalidate(Some(target))
    }

    /// Ends the passive-target epoch on `target`: this rank's operations and stores are
    /// complete there before the lock passes on.
    pub fn unlock(&self, target: usize) -> Result<()> {
        self.check_rank(target)?;
        self.sh.release()?;
        // Operations on pages of `target` that live elsewhere complete there first.
        for o in self.sh.foreign_owners(target) {
            self.flush_rma(o)?;
        }
        self.pending()[target] = false;
        // Served after everything this rank sent before: the acknowledgement completes
        // them all.
        self.sh.call(target, Header::new(Kind::Unlock, 0, 0), &[])?;
        Ok(())
    }

    /// Shared lock on every rank (MPI_Win_lock_all).
    pub fn lock_all(&self) -> Result<()> {
        for r in 0..self.size() {
            let mut h = Header::new(Kind::Lock, 0, 0);
            h.extra = 0;
            self.sh.call(r, h, &[])?;
        }
        self.sh.invalidate(None)
    }

    /// Releases the locks of [`lock_all`](Self::lock_all).
    pub fn unlock_all(&self) -> Result<()> {
        self.sh.release()?;
        self.pending().iter_mut().for_each(|x| *x = false);
        for r in 0..self.size() {
            self.sh.call(r, Header::new(Kind::Unlock, 0, 0), &[])?;
        }
        Ok(())
    }

    fn check_group(&self, group: &[usize]) -> Result<Vec<usize>> {
        for &r in group {
            self.check_rank(r)?;
        }
        let mut g = group.to_vec();
        g.sort_unstable();
        g.dedup();
        Ok(g)
    }

    fn pscw(&self) -> std::sync::MutexGuard<'_, Pscw> {
        self.pscw.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// PSCW: exposes this rank's region to the origins in `group` (MPI_Win_post).
    pub fn post(&self, group: &[usize]) -> Result<()> {
        let g = self.check_group(group)?;
        let mut st = self.pscw();
        if st.exposure.is_some() {
            return Err(WinError::Sync(
                "post while an exposure epoch is open".into(),
            ));
        }
        // This rank's stores to its own pages are in place already; tell the origins.
        for &r in &g {
            self.sh.comm.send(&[0u8], r, TAG_POST)?;
        }
        st.exposure = Some(g);
        Ok(())
    }

    /// PSCW: starts an access epoch to the targets in `group`, once each has posted
    /// (MPI_Win_start).
    pub fn start(&self, group: &[usize]) -> Result<()> {
        let g = self.check_group(group)?;
        let mut st = self.pscw();
        if st.access.is_some() {
            return Err(WinError::Sync("start while an access epoch is open".into()));
        }
        for &r in &g {
            let mut b = [0u8; 1];
            self.sh.comm.recv_into(&mut b, r, TAG_POST)?;
        }
        for &r in &g {
            self.sh.invalidate(Some(r))?;
        }
        st.access = Some(g);
        Ok(())
    }

    /// PSCW: ends the access epoch; every operation is complete at its target
    /// (MPI_Win_complete).
    pub fn complete(&self) -> Result<()> {
        let g = self
            .pscw()
            .access
            .take()
            .ok_or_else(|| WinError::Sync("complete without start".into()))?;
        self.flush_all()?;
        for &r in &g {
            self.sh.comm.send(&[0u8], r, TAG_COMPLETE)?;
        }
        Ok(())
    }

    /// PSCW: ends the exposure epoch once every origin has completed (MPI_Win_wait).
    pub fn wait(&self) -> Result<()> {
        let g = self
            .pscw()
            .exposure
            .take()
            .ok_or_else(|| WinError::Sync("wait without post".into()))?;
        for &r in &g {
            let mut b = [0u8; 1];
            self.sh.comm.recv_into(&mut b, r, TAG_COMPLETE)?;
        }
        self.sh.invalidate(None)
    }

    // ----- byte-range locks (document 001) ----------------------------------------------

    fn range_lock(&self, offset: usize, len: usize, write: bool) -> Result<RangeGuard<'_>> {
        let total = self.segment_bytes();
        if len == 0 || offset.checked_add(len).is_none_or(|e| e > total) {
            return Err(WinError::OutOfRange {
                target: self.rank(),
                offset,
                len,
                size: total,
            });
        }
        let mut h = Header::new(Kind::RangeLock, offset, len);
        h.extra = write as u64;
        self.sh.call(0, h, &[])?;
        self.sh.invalidate(None)?;
        Ok(RangeGuard {
            win: self,
            offset,
            len,
            write,
            held: true,
        })
    }

    /// Locks bytes `offset..offset+len` of the segment for reading (shared with other
    /// readers). Cached pages are dropped, so the view sees what writers released.
    pub fn lock_read(&self, offset: usize, len: usize) -> Result<RangeGuard<'_>> {
        self.range_lock(offset, len, false)
    }

    /// Locks bytes `offset..offset+len` of the segment for writing (exclusive). On
    /// release, this rank's stores and operations are complete before the range
    /// passes on.
    pub fn lock_write(&self, offset: usize, len: usize) -> Result<RangeGuard<'_>> {
        self.range_lock(offset, len, true)
    }

    // ----- views ----------------------------------------------------------------------

    /// A typed load/store view of the whole segment (index 0 is the segment's first
    /// element; see [`segment_offset`](Self::segment_offset) and
    /// [`View::index_of`]).
    pub fn view<T: Pod>(&self) -> Result<View<'_, T>> {
        self.view_at(0)
    }

    /// A typed view starting at segment byte `offset`, which must be aligned for `T`.
    pub fn view_at<T: Pod>(&self, offset: usize) -> Result<View<'_, T>> {
        let align = std::mem::align_of::<T>();
        let w = std::mem::size_of::<T>();
        if w == 0 || !offset.is_multiple_of(align) || align > self.sh.geo.page {
            return Err(WinError::Misaligned { offset, align });
        }
        let total = self.segment_bytes();
        if offset > total {
            return Err(WinError::OutOfRange {
                target: self.rank(),
                offset,
                len: 0,
                size: total,
            });
        }
        Ok(View {
            win: self,
            offset,
            len: (total - offset) / w,
            _t: PhantomData,
        })
    }

    // ----- teardown -------------------------------------------------------------------

    /// Frees the window (collective): completes this rank's operations, waits for every
    /// rank, stops the threads and unmaps the segment. Dropping does the same and
    /// prints what failed.
    pub fn free(mut self) -> Result<()> {
        self.teardown(true)
    }

    fn teardown(&mut self, collective: bool) -> Result<()> {
        if self.freed {
            return Ok(());
        }
        self.freed = true;
        let mut first: Option<WinError> = None;
        let mut note = |r: Result<()>| {
            if let Err(e) = r {
                first.get_or_insert(e);
            }
        };
        if collective {
            // No one sends requests after this barrier: everyone's operations are
            // acknowledged (flush_all) before it.
            note(self.flush_all());
            note(barrier(&self.sh.comm));
        }
        // The fault thread: no view exists (they borrow the window), so no fault waits.
        self.reg = None;
        if let Some(c) = &self.chan {
            note(c.stop());
        }
        if let Some(h) = self.faulter.take() {
            let _ = h.join();
        }
        self.chan = None;
        // The service thread: a stop request from this rank, served after everything.
        if let Some(h) = self.service.take() {
            let stop = Header::new(Kind::Stop, 0, 0);
            match self.sh.send(self.rank(), stop, &[]) {
                Ok(()) => {
                    let _ = h.join();
                }
                Err(e) => note(Err(e)),
            }
        }
        if let Some(e) = self
            .sh
            .service_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            note(Err(e));
        }
        match first {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

impl Drop for Window {
    fn drop(&mut self) {
        // While unwinding, skip the collective part: the other ranks may be waiting
        // for this one, which will never come.
        let collective = !std::thread::panicking();
        if let Err(e) = self.teardown(collective) {
            eprintln!("dsmpi-window: rank {}: freeing a window: {e}", self.rank());
        }
    }
}

/// A held byte-range lock; released by [`release`](RangeGuard::release) or on drop.
#[derive(Debug)]
#[must_use = "the range is unlocked when the guard is dropped"]
pub struct RangeGuard<'w> {
    win: &'w Window,
    offset: usize,
    len: usize,
    write: bool,
    held: bool,
}

impl RangeGuard<'_> {
    /// Releases the range: this rank's stores and operations are complete and visible
    /// before anyone else gets a conflicting lock.
    pub fn release(mut self) -> Result<()> {
        self.release_inner()
    }

    fn release_inner(&mut self) -> Result<()> {
        if !self.held {
            return Ok(());
        }
        self.held = false;
        self.win.flush_all()?;
        let mut h = Header::new(Kind::RangeUnlock, self.offset, self.len);
        h.extra = self.write as u64;
        self.win.sh.call(0, h, &[])?;
        Ok(())
    }
}

impl Drop for RangeGuard<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.release_inner() {
            eprintln!(
                "dsmpi-window: rank {}: releasing bytes {}+{}: {e}",
                self.win.rank(),
                self.offset,
                self.len
            );
        }
    }
}

/// A typed load/store view of a window's segment.
///
/// Loads and stores go straight to this rank's mapping; a page that is not valid
/// locally faults and is fetched from its home (reads get a read-only copy, writes a
/// writable twin whose diff goes home at the end of the epoch). Accesses are volatile
/// single-element copies: the view never lends out references into the mapping, so
/// no protected page can reach a syscall through it.
pub struct View<'w, T> {
    win: &'w Window,
    offset: usize,
    len: usize,
    _t: PhantomData<T>,
}

// SAFETY: a view only performs volatile element copies into and out of the window's
// mapping; several threads doing so race only as the window's memory model allows
// (conflicting accesses within one epoch), never on Rust references.
unsafe impl<T: Pod> Send for View<'_, T> {}
// SAFETY: as for `Send`.
unsafe impl<T: Pod> Sync for View<'_, T> {}

impl<T> std::fmt::Debug for View<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("View")
            .field("offset", &self.offset)
            .field("len", &self.len)
            .finish()
    }
}

impl<T: Pod> View<'_, T> {
    /// Number of elements.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the view has no element.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Index in this view of element displacement `disp` (units of `T`) of `rank`'s
    /// region.
    pub fn index_of(&self, rank: usize, disp: usize) -> Result<usize> {
        let w = std::mem::size_of::<T>();
        let byte = disp.checked_mul(w).ok_or(WinError::OutOfRange {
            target: rank,
            offset: usize::MAX,
            len: w,
            size: 0,
        })?;
        self.win.sh.geo.check(rank, byte, w)?;
        let so = self.win.sh.geo.seg_offset(rank, byte);
        if so < self.offset || !(so - self.offset).is_multiple_of(w) {
            return Err(WinError::Misaligned {
                offset: so,
                align: w,
            });
        }
        Ok((so - self.offset) / w)
    }

    fn ptr(&self, i: usize) -> Result<*mut T> {
        if i >= self.len {
            return Err(WinError::OutOfRange {
                target: self.win.rank(),
                offset: i,
                len: 1,
                size: self.len,
            });
        }
        // SAFETY: `offset + (i+1)·size_of::<T>() ≤ segment_bytes` (checked at view
        // creation and above), so the address lies inside the application mapping.
        Ok(unsafe { (self.win.sh.seg.app_base().add(self.offset) as *mut T).add(i) })
    }

    /// Loads element `i`, fetching its page first if it is not valid here.
    ///
    /// Errors: `i` out of range; and with [`FaultPath::Inline`], a page that cannot be
    /// made valid (its owner lost, say) — with the fault thread that ends the process
    /// with a message instead, as the handler has no caller to return to.
    pub fn load(&self, i: usize) -> Result<T> {
        let p = self.ptr(i)?;
        if self.win.inline_faults {
            // SAFETY: `p` is in the window's mapping (registered with the handler), so
            // a fault comes back as a value; nothing holds a Rust reference there.
            return self.retry(|| unsafe { access::load(p) });
        }
        // SAFETY: `p` is in the mapping and aligned (view offset aligned, page-aligned
        // base). If the page is not readable, the access faults and the handler makes
        // it readable before the load is retried; it never observes a Rust reference.
        Ok(unsafe { std::ptr::read_volatile(p) })
    }

    /// Stores `v` at element `i`, fetching its page first if it is not valid here
    /// (errors as for [`load`](Self::load)).
    pub fn store(&self, i: usize, v: T) -> Result<()> {
        let p = self.ptr(i)?;
        if self.win.inline_faults {
            // SAFETY: as in `load`.
            return self.retry(|| unsafe { access::store(p, v) });
        }
        // SAFETY: as in `load`; a write fault makes the page writable (with a twin).
        unsafe { std::ptr::write_volatile(p, v) };
        Ok(())
    }

    /// Runs one access through the view's routines, making the page valid in this
    /// thread after each fault, until the access happens.
    fn retry<R>(&self, mut access: impl FnMut() -> access::Outcome<R>) -> Result<R> {
        // A page is valid after one serve unless another thread of this rank
        // invalidated it meanwhile (an acquire racing with the access); a bound turns
        // a page that never becomes valid into an error rather than a livelock.
        for _ in 0..FAULT_RETRIES {
            match access() {
                access::Outcome::Done(r) => return Ok(r),
                access::Outcome::Fault { addr, kind } => {
                    self.win
                        .sh
                        .counters
                        .faults_inline
                        .fetch_add(1, Ordering::Relaxed);
                    self.win.sh.resolve(addr, kind)?
                }
            }
        }
        Err(WinError::Protocol(format!(
            "a view access still faulted after the page was made valid {FAULT_RETRIES} times"
        )))
    }

    /// Loads element `i`, applies `f`, stores the result (not atomic).
    pub fn update(&self, i: usize, f: impl FnOnce(T) -> T) -> Result<()> {
        let v = self.load(i)?;
        self.store(i, f(v))
    }
}
