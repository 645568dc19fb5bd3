//! dsmpi's one-sided DSM windows.
//!
//! This crate owns [`Window`]: a segment of memory spread over the ranks of a
//! communicator, reached two ways —
//! - **MPI-style RMA**: [`put`](Window::put), [`get`](Window::get),
//!   [`accumulate`](Window::accumulate) (every [`Op`]: SUM, PROD, MIN, MAX, BAND, BOR,
//!   BXOR, REPLACE, NO_OP), [`get_accumulate`](Window::get_accumulate),
//!   [`fetch_and_op`](Window::fetch_and_op), [`compare_and_swap`](Window::compare_and_swap),
//!   addressed by *(target rank, displacement in elements of `T`)* — byte displacement
//!   is `disp * size_of::<T>()` from the start of the target's region — and their
//!   derived-datatype forms ([`put_typed`](Window::put_typed),
//!   [`get_typed`](Window::get_typed), [`accumulate_typed`](Window::accumulate_typed),
//!   [`get_accumulate_typed`](Window::get_accumulate_typed)), where a [`Typed`]
//!   (`count` elements of a committed [`Datatype`]) says where the data lies in the
//!   origin buffer and in the target region (see *Derived datatypes* below);
//! - **load/store** through a typed [`View`] of the whole segment, whose pages are
//!   guarded with `mprotect` and fetched on a SIGSEGV, kept coherent by home-based lazy
//!   release consistency;
//!
//! and the synchronization that makes both visible: [`fence`](Window::fence),
//! passive-target [`lock`](Window::lock)/[`unlock`](Window::unlock),
//! [`lock_all`](Window::lock_all), [`flush`](Window::flush) and friends, PSCW
//! ([`post`](Window::post), [`start`](Window::start), [`complete`](Window::complete),
//! [`wait`](Window::wait)), and document 001's byte-range locks
//! ([`lock_read`](Window::lock_read), [`lock_write`](Window::lock_write)).
//!
//! ```
//! use dsmpi_window::{Op, Window};
//!
//! dsmpi_runtime::run_local(3, |world| {
//!     let win = Window::allocate(&world, 64).unwrap(); // 64 bytes on every rank
//!     win.accumulate(&[1u64], 0, 0, Op::Sum).unwrap();  // +1 on rank 0, word 0
//!     let v = win.view::<u64>().unwrap();
//!     let mine = v.index_of(world.rank(), 1).unwrap();
//!     v.store(mine, 10 * world.rank() as u64).unwrap(); // a plain store
//!     win.fence().unwrap();
//!     assert_eq!(v.load(v.index_of(0, 0).unwrap()).unwrap(), 3);
//!     assert_eq!(v.load(v.index_of(2, 1).unwrap()).unwrap(), 20);
//!     win.free().unwrap();
//! })
//! .unwrap();
//! ```
//!
//! # The segment
//!
//! [`Window::allocate`] is collective: it duplicates the communicator (all window
//! traffic runs on that private context), exchanges the region sizes, and every rank
//! maps the whole segment — all regions, each rounded up to pages — at an address of
//! its own. In the default [`Layout::Blocked`] rank `r`'s region is one run of pages;
//! [`Layout::RoundRobin`] homes page `p` at rank `p mod n` (document 000's placement).
//! The memory is a `memfd` mapped twice: the *application view* (what [`View`] touches,
//! pages `PROT_NONE` / read-only / read-write by state) and a *service view*, always
//! read-write, through which the runtime's threads copy bytes. The runtime never
//! touches the application view, so no protected page ever reaches a syscall; the
//! safe API lends out no reference into it either (views copy single elements with
//! volatile accesses). Nothing has a name in `/dev/shm` or `/tmp`; freeing the window
//! unmaps both views and the memory goes with the last mapping.
//!
//! # Same-host windows: shared pages
//!
//! Ranks that the runtime links through shared memory (same host, the `shm`
//! transport: [`Communicator::shares_memory_with`](dsmpi_runtime::Communicator::shares_memory_with))
//! also map each other's regions straight from the home's memory file, as MPI's
//! shared-memory windows do: at allocation every rank reports its process id, the
//! descriptor of its memory file and the ranks it reaches through shared memory, and
//! maps each such region (opened through `/proc/<pid>/fd/<n>`) read-write over the
//! same pages of both its views. Then, between those ranks:
//! - loads and stores through the [`View`] never fault: no fetch, no twin, no diff,
//!   no invalidation (the page is the home's master copy, kept coherent by the
//!   hardware); a store is visible to the other ranks of the host at once, and
//!   ordered for them by the window's synchronization as usual (MPI's unified model);
//! - [`put`](Window::put) and [`get`](Window::get) copy straight through the mapping
//!   (a `memcpy`, no message), unless an earlier operation of this rank to that target
//!   is still unflushed (the copy would overtake it; then they travel as messages);
//! - accumulate-family operations still go to the home's service thread, which keeps
//!   them atomic with respect to each other whoever issues them;
//! - the pages of a region that any rank maps this way never migrate (the mappings
//!   would be left on a stale copy).
//!
//! Ranks on other hosts, and every pair under `DSMPI_TRANSPORT=tcp` or over the
//! thread backend's sockets, keep the fault path below, and so does a window
//! allocated with [`WinOptions::share_same_host`] off (both ranks of a pair must
//! agree to share). Only the blocked layout is shared: round-robin pages alternate
//! homes, which would cost one mapping per page. [`Window::shared_with`] says which
//! regions a rank maps directly. If the kernel refuses to open a peer's file (Yama's
//! ptrace rules; the runtime already allows same-host peers for cross-memory attach),
//! the rank says so on stderr and keeps the fault path for that region.
//!
//! Each rank runs two threads per window: a **service thread** that executes the
//! requests of other ranks against the pages this rank owns, and a **fault thread** that
//! makes pages valid for the SIGSEGV handler when faults are not served by the
//! faulting thread itself (see *The fault path*). Both poll while the window is busy
//! and sleep when it is idle (see *When the threads poll*).
//!
//! # RMA: messages to the owner, executed there
//!
//! Apart from puts and gets between ranks that share pages (above), every RMA
//! operation is one message (48-byte header + payload, see the `proto`
//! module) to the service thread of the rank that owns the target pages — their home,
//! unless they migrated (see *Page migration*) — which executes it on the master copy.
//! An operation whose bytes span pages with different owners is split at page
//! boundaries (never inside an element), one message per owner.
//! Accumulate-family operations on one location are therefore atomic with respect to
//! each other from any number of ranks: one thread executes them, one at a time (a
//! rank's requests to itself execute in the calling thread under the same lock).
//! `put` and `accumulate` are fire-and-forget: they are aggregated per target into
//! batches of up to 32 KiB and shipped before any other request to that target, or
//! when full. Requests from one origin are served in order, so `flush`, `unlock` and
//! the flushes inside `fence`/`complete` are one acknowledged round trip each: when it
//! comes back, everything sent before has been applied. `get`, `get_accumulate`,
//! `fetch_and_op` and `compare_and_swap` wait for their reply (each on its own tag,
//! so several threads of a rank may have calls in flight). Out-of-range targets,
//! displacements or lengths, overflowing displacements and bitwise ops on floats are
//! refused at the origin with a [`WinError`] (and checked again at the target).
//!
//! # Derived datatypes
//!
//! The `_typed` calls take MPI's origin and target datatypes: dsmpi's derived
//! [`Datatype`]s (`vector`, `indexed`, `subarray`, `struct`, `resized`, ...). The two
//! type signatures must match (same sequence of primitives; accumulate-family
//! datatypes must consist of `T` alone, as MPI requires). The origin is packed with
//! the datatype's own packing code; the target side is flattened into byte segments
//! of the region (`disp · size_of::<T>()`, one extent per element, each segment of the
//! committed type map at its displacement, adjacent ones merged), every segment
//! checked against the region at the origin, split at owner boundaries, and each
//! owner gets **one** message listing its segments and their bytes (`PutV`, `GetV`,
//! `AccV`, `GetAccV`): a strided column is one request, not one per element. The
//! target checks every segment before touching any, and executes the whole list under
//! its service lock, so typed accumulates are element-wise atomic like the others.
//!
//! ```
//! use dsmpi_window::{Datatype, Op, Typed, Window};
//!
//! dsmpi_runtime::run_local(2, |world| {
//!     let win = Window::allocate(&world, 8 * 4 * 4).unwrap(); // a 4×4 u64 matrix
//!     let col = Datatype::vector(4, 1, 4, &Datatype::of::<u64>()).unwrap().commit();
//!     let flat = Datatype::of::<u64>().commit();
//!     win.fence().unwrap();
//!     // Each rank writes column `rank` of rank 0's matrix, then adds 1 to column 3.
//!     let me = world.rank() as u64;
//!     win.put_typed(&[me; 4], Typed::new(&flat, 4), 0, world.rank(), Typed::new(&col, 1))
//!         .unwrap();
//!     win.accumulate_typed(&[1u64; 4], Typed::new(&flat, 4), 0, 3, Typed::new(&col, 1), Op::Sum)
//!         .unwrap();
//!     win.fence().unwrap();
//!     let mut m = [0u64; 16];
//!     win.get(&mut m, 0, 0).unwrap();
//!     assert_eq!(&m[..4], &[0, 1, 0, 2]);
//!     win.free().unwrap();
//! })
//! .unwrap();
//! ```
//!
//! # Load/store: home-based lazy release consistency
//!
//! Document 000 migrates a page to whoever touches it (single writer), document 001
//! keeps every page at a central master; both make a page that several ranks write
//! bounce between them, and serialize on one rank. This crate does what ArgoDSM and
//! TreadMarks-style HLRC do instead:
//! - a page's **owner** — its home, unless the page migrated (see below) — holds the
//!   master copy, and its view maps the page read-write for as long as it owns it;
//! - a **read fault** fetches the page from its owner into the service view and maps
//!   it read-only;
//! - a **write fault** (on an invalid or read-only page) also saves a **twin** (a copy
//!   of the page as fetched) and maps it read-write;
//! - at **release** (end of an epoch: `fence`, `unlock`, `unlock_all`, `flush`,
//!   `complete`, releasing a byte-range guard) dirty pages are write-protected first,
//!   then compared with their twins byte by byte, and only the changed byte runs go
//!   to the owner (one message per owner, acknowledged). Two ranks writing different bytes of
//!   one page both keep their writes;
//! - at **acquire** (`fence`, `lock` of the home, `lock_all`, `start`, `wait`, taking a
//!   byte-range lock) cached read-only copies are dropped (`PROT_NONE`, one `mprotect`
//!   per run of pages), so later loads fetch what was released before.
//!
//! Visibility: once an epoch closes, every completed RMA operation and every store
//! made through the view inside it is visible to every rank in later epochs; stores
//! and RMA that conflict within one epoch are racy, as in MPI.
//!
//! # Page migration: the fallback for a page one rank keeps writing alone
//!
//! Small operations travel as messages to a page's current owner and execute there;
//! a page that one rank keeps writing alone through its view moves to that rank
//! instead, which then stores into it in place: no fault, no twin, no diff, no fetch.
//!
//! - **Owner table.** Every rank holds the owner of every page (initially its home).
//!   It is identical on every rank and changes only inside [`fence`](Window::fence).
//!   Every route — RMA requests, page fetches at faults, diffs at releases, and the
//!   ownership checks of the service thread — goes through one function,
//!   `owner_of(page)`; [`Window::owner_of`] exposes it, [`Window::home_of`] still
//!   names the home. While no page has moved every route is the home (one branch).
//! - **Policy.** Each rank remembers the pages it wrote since the last fence: the
//!   pages it sent diffs of, and the pages its RMA writes touched (`put`,
//!   `accumulate`, `get_accumulate` and `fetch_and_op` other than `NO_OP`,
//!   `compare_and_swap`, and their typed forms) — so a page one rank keeps updating
//!   with RMA moves to it like one it keeps storing into, and its later operations on
//!   the page execute locally, without a message.
//!   The fence's barrier is an all-gather of these lists (the same dissemination
//!   pattern and message count as the plain barrier, a few bytes more), and every
//!   rank applies the same rule to the same lists, so all decide the same moves
//!   without a further message: a page written in an epoch by exactly one rank other
//!   than its owner extends that rank's streak; written by several ranks, it loses
//!   its streak; written by nobody, it keeps it (read-only epochs do not break a
//!   pattern). After `MIGRATE_AFTER` = **2** such epochs the page moves to the writer.
//!   The same rule moves it on, or back home, when another rank becomes its sole
//!   writer.
//! - **Transfer.** After the all-gather (every diff and operation of the epoch is
//!   applied: everyone flushed before it), the old owner unmaps the page and sends its
//!   bytes, the new owner installs them and maps the page read-write, every rank
//!   updates its table, and a second barrier — only in fences that move pages —
//!   keeps requests of the next epoch away from a new owner that has not installed
//!   its page yet. The acquire that ends the fence drops every cached copy as usual.
//! - **Locks and PSCW.** The table never changes outside a fence, so passive-target
//!   and PSCW epochs only route by it: a lock still lives at the region's rank (the
//!   lock is about the region, not about where its bytes are), and
//!   [`unlock`](Window::unlock) and [`flush`](Window::flush) of a target also flush
//!   the owners of its migrated pages, so a lock never passes on before the operations
//!   done under it are applied. Diffs released by locks and PSCW count in the policy
//!   at the next fence; windows never fenced never migrate.
//! - **Limits.** An owner's own stores are not observed (its page never faults), so
//!   the rule sees only the *other* writers: a page written every epoch by its owner
//!   and one other rank moves to the other one after two epochs, and back after two
//!   more — values stay correct, but each move costs a page transfer. An owner's RMA
//!   on its own pages *is* observed (it counts as a writer, so a page that the owner
//!   and one other rank update with RMA stays put).
//!
//! # The fault path
//!
//! One `SA_SIGINFO | SA_ONSTACK` SIGSEGV handler per process, installed at the first
//! allocation. It looks the fault address up in a fixed table of window ranges (atomic
//! loads only); for any other address it chains to the handler installed before it
//! (Rust's stack-overflow handler keeps working) or, if that was the default action,
//! restores the default and returns, so the access faults again and the process dies
//! of SIGSEGV as it would have. For a window address a fault is served one of two
//! ways ([`FaultPath`], chosen per window in [`WinOptions`]):
//!
//! - **Inline** (the default on x86_64 Linux). A [`View`] touches the application view
//!   only through tiny assembly routines (module `access`), one memory access each.
//!   When that access faults, the handler sees the faulting instruction in those
//!   routines and rewrites three saved registers so the routine returns "faulted at
//!   address A, read or write" instead of retrying the access — what the Linux
//!   kernel's exception tables do for its copies from user memory. Back in ordinary
//!   code, on its own stack and holding no lock, the faulting thread makes the page
//!   valid itself and retries. No thread wakes another; the wait for the page is an
//!   ordinary receive, which spins before it sleeps like a `get`'s. A fault costs
//!   a `get` of the page plus the signal's delivery and return (~5 µs on the 2-core
//!   VM these figures come from) and one `mprotect` (~3–4 µs there).
//! - **Thread** (document 000's design; elsewhere, and on request). The handler claims a
//!   preallocated slot (CAS) and submits the fault in it. If the window's fault
//!   thread is asleep it writes the slot number to the window's pipe (`write(2)`,
//!   non-blocking); if the thread is polling (see *When the threads poll*) it finds
//!   the slot without that wake-up. The faulting thread then polls the slot
//!   (`sched_yield(2)` between looks, `clock_gettime(2)` for the time limit) and after
//!   that sleeps on it with `futex(2)`; the fault thread makes the page valid, marks
//!   the slot done (and wakes it), and the access is retried. No allocation, no lock,
//!   errno preserved. This path serves any access to the window's memory, not only a
//!   view's, at the price of two thread wake-ups per fault.
//!
//! Either way a page is made valid by one function (`Shared::resolve`) under the
//! window's page-table lock, so several threads faulting on one page cause one fetch
//! (the later ones find it valid). On x86_64 the read/write kind comes from the
//! page-fault error code (`REG_ERR` bit 1); elsewhere a fault on an invalid page is
//! taken as a read and one on a read-only page as a write. `userfaultfd` is not used:
//! SIGSEGV serves every fault ([`WindowStats::faults_inline`] says how many were
//! served inline). Protection changes are per page at faults and per run of pages at
//! acquire and release; the number of mappings stays bounded by the number of pages
//! touched in an epoch.
//!
//! # When the threads poll
//!
//! A request that finds the target's service thread asleep pays its wake-up, and a
//! page fault served by the fault thread pays two (the fault thread's, then the
//! faulting thread's): about 5 µs each on an idle core, 20–100 µs on a loaded one. A thread that never sleeps costs
//! a core forever. The window's threads can therefore poll while the window is busy
//! (module `poll`):
//! - the **service thread** polls (`iprobe` on the request tag, `sched_yield` between
//!   looks) for the poll window after the last request it served, and 25× as long
//!   while some origin holds a passive-target or byte-range lock on this rank (an open
//!   epoch announces more requests); otherwise it sleeps in a blocking receive;
//! - the **fault thread** polls the fault slots for the poll window after the last
//!   fault it served, then announces that it sleeps (a flag the handler reads: the
//!   handler writes to the pipe only then — a Dekker pair of `SeqCst` stores and
//!   loads, so no fault is missed) and sleeps in `read(2)` on the pipe;
//! - the **faulting thread** polls its slot for up to the poll window, then sleeps on
//!   the futex;
//! - **starvation back-off**: a `sched_yield` that takes longer than 30 µs means
//!   another thread wanted this core; a yielding poller then looks only when that
//!   thread stops, later than the kernel would have woken a sleeper (a woken thread
//!   preempts a running one, a yielding one does not). The thread stops polling — the
//!   service and fault threads for 20 ms, the faulting thread for this fault.
//!
//! **The poll window**: `DSMPI_WIN_POLL_US` (µs) if set; otherwise 2000 µs when the
//! host has more than two cores per rank of the window on it, and **0 — sleep at once,
//! as before — when it has not**. An idle window costs nothing after the poll window
//! (50 ms while a lock is held); checked by hand: 0.1 ms of CPU over 1 s idle after a
//! burst of gets and a fault, polling forced on.
//!
//! Why off on small hosts: measured on the 2-core machine below, polling made gets and
//! faults slower, not faster. Every rank already has a thread busy-waiting in the
//! runtime whenever it waits for a message (the runtime spins ~50 µs before it
//! sleeps, so back-to-back requests never find a service thread asleep anyway), and
//! over TCP the kernel wakes the rank's thread asleep in `epoll_wait` for every
//! message that arrives, whoever reads it (over shared memory the runtime no longer
//! rings for it while another thread spins); a polling window thread takes the core
//! those need. Polling the
//! *reply* at the origin (`iprobe` + yield instead of the blocking receive) was tried
//! too and made an 8 B get 50–80 µs instead of 8 µs in processes: the reply is then
//! read by the rank's sleeping poller thread (a wake-up) instead of by the spinning
//! receiver. See *Measurements* for the figures.
//!
//! # Locks
//!
//! Passive-target locks are queues in each target's service thread (FIFO, shared or
//! exclusive). Byte-range locks are served by rank 0's service thread: a waiter is
//! granted when it conflicts with no holder and no earlier waiter (no starvation).
//! A rank that dies fails the operations that involve it (`Error::PeerLost` from the
//! runtime); a service thread that loses a peer answers every waiting and later
//! request with an error instead of leaving the caller hanging (and the launcher takes
//! the job down).
//!
//! # Teardown
//!
//! Dropping (or [`free`](Window::free)) is collective: this rank's operations are
//! flushed, a barrier makes sure no one sends more requests, the fault and service
//! threads stop, the fault-table entry is cleared and both views are unmapped. While
//! unwinding from a panic the collective part is skipped.
//!
//! # Measurements
//!
//! **Faults served inline** (the default since session 7), against the fault thread
//! (`DSMPI_WIN_FAULT_PATH=thread`), alternating runs of
//! `dsmexec --transport tcp|shm -n 2 target/release/examples/dsmpi_bench --ops get,fault --max-size 4096`
//! on the 2-core VM (the namespace hosts: `measure_remote_faults` in
//! `launcher/tests/multihost.rs`); `fault-get` is a 4 KiB get timed like the fault (one per lock
//! epoch, alternating with the faults), medians of the per-run medians, µs:
//!
//! | link, runs | path | read fault | fault-get | fault / fault-get (range) |
//! |------------|------|-----------:|----------:|--------------------------:|
//! | TCP, 8 + 8 | inline | 54.6 | 41.3 | 1.32 (1.18–1.78) |
//! | TCP, 8 + 8 | thread | 75.5 | 47.6 | 1.59 (1.54–1.78) |
//! | TCP, 6 + 6, half an hour later | inline | 26.6 | 19.0 | 1.41 (1.27–1.52) |
//! | TCP, 6 + 6, half an hour later | thread | 65.3 | 41.2 | 1.55 (1.46–1.62) |
//! | two namespace hosts (TCP over veth), 6 + 6 | inline | 59.5 | 48.4 | 1.26 (1.19–1.46) |
//! | two namespace hosts (TCP over veth), 6 + 6 | thread | 74.4 | 48.1 | 1.58 (1.49–1.66) |
//! | shared memory (sharing off), 6 + 6 | inline | 13.0 | 4.1 | 3.13 (3.01–3.54) |
//! | shared memory (sharing off), 6 + 6 | thread | 22.3 | 4.3 | 5.40 (4.55–5.92) |
//!
//! - Inline removes the two thread wake-ups: 20–39 µs per fault over TCP, 9 µs over
//!   shared memory. In the later TCP runs the system stayed in its fast mode with
//!   inline faults (the gets between them too), not with the fault thread.
//! - What is left on top of the page's round trip is the signal and one `mprotect`.
//!   `cargo run --release -p dsmpi-window --example fault_floor` times exactly that
//!   with no window at all: 5.6–7.8 µs on this VM (the `mprotect` 2.3–3.3 µs, the
//!   signal's delivery and return 3.3–4.5 µs). A 4 KiB get between ranks of one
//!   host takes 4 µs, so there a fault through SIGSEGV and `mprotect` cannot come
//!   within 2× of it. Same-host ranks share pages by default and never fault.
//! - The price: every view access is a call into a routine. On a valid page, 5.6–7.4 ns
//!   per element against 4.3–5.0 ns with the volatile access of the thread path
//!   (`view load of a valid page` in `dsmexec --transport tcp -n 2 window_bench`, 3
//!   alternating runs of each).
//! - Against the back-to-back `get` rows of the same runs (which keep the target's
//!   service thread spinning, and are bimodal: 24–114 µs over TCP), the inline fault
//!   was 0.27–3.14×, above 2× in 2 runs of 8 (runs whose gets were in their fast
//!   mode while the lock epochs were not); in the later 6 runs 0.38–0.96× (the fault
//!   thread: 0.80–2.75×, above 2× in 3 of 6).
//!
//! `cargo run --release -p dsmpi-window --example window_bench -- --local 2 [--tcp]`
//! (ranks as threads) and `dsmexec -n 2|4 target/release/examples/window_bench`
//! (processes over TCP), on a 2-core machine shared with other builds: every number is
//! noisy, and sleeping-thread wake-ups of 50–250 µs dominate many p99s. Medians in µs;
//! ratios are taken within one run. "raw TCP" is a blocking loopback ping-pong between
//! two plain threads (it sleeps in `read`, the runtime spins first, hence the runtime
//! often beats it here).
//!
//! **Latency targets and the polling policy** (issue 4: an 8 B get ≤ 1.2× a raw 8 B
//! TCP round trip, a remote read fault ≤ 2× a 4 KiB get). Built with
//! `cargo build --release -p dsmpi-window --example window_bench`, then run as
//! `nice -n -20 target/release/examples/window_bench --local 2` and
//! `nice -n -20 target/release/dsmexec -n 2 target/release/examples/window_bench`,
//! the variants alternating, 16 runs each, on the same 2-core machine (other builds
//! and tests kept its load at 4–12 throughout; `nice` only keeps them from taking
//! whole time slices). "Before": this crate at commit 5fa66c4 (the threads sleep at
//! once); "after": this crate's default, which on this host means no polling;
//! "polling": the same build with `DSMPI_WIN_POLL_US=2000`. Before and after run the
//! same hand-offs, so their differences are noise.
//! Every run's medians are bimodal: either both busy threads of an exchange have a
//! core (the runtime's own 8 B round trip is 4.6 µs in threads, 6.5 µs in processes)
//! or they share one and every exchange waits out the runtime's 50 µs spin (round trip
//! 106–109 µs, get 65–125 µs) — about half the runs, whatever the window does. The
//! table gives medians over the runs of the first kind (n of 16 in brackets); over all
//! runs every variant's get is 65–70 µs and its read fault 79–129 µs.
//!
//! | run (good runs)            | raw TCP 8 B | runtime RTT | get 8 B | get 4 KiB | read fault | write fault | get/raw | fault/get 4K |
//! |----------------------------|------------:|------------:|--------:|----------:|-----------:|------------:|--------:|-------------:|
//! | threads, before (8)        | 4.3         | 4.6         | 6.7     | 8.4       | 80         | 72          | 1.6     | 9.5          |
//! | threads, after (5)         | 4.9         | 4.6         | 6.7     | 8.5       | 80         | 26          | 1.4     | 9.4          |
//! | threads, polling (4)       | 73          | 4.6         | 25      | 27        | 30         | 65          | —       | 1.1          |
//! | processes, before (8)      | 4.9         | 6.7         | 8.7     | 10.7      | 71         | 74          | 1.8     | 6.6          |
//! | processes, after (5)       | 4.3         | 6.5         | 8.4     | 10.3      | 36         | 25          | 2.0     | 3.4          |
//! | processes, polling (8)     | 4.3         | 6.6         | 8.8     | 10.1      | 132        | 130         | 2.0     | 13           |
//!
//! - Neither target is met on this machine. An 8 B get is the runtime's own round
//!   trip plus 1.5–2 µs (header, service lock, reply), and that round trip is already
//!   1.1–1.5× the raw one: the 1.2× target needs a faster runtime round trip, not a
//!   faster window. A read fault in a run where both sides had cores: 23 µs, of which
//!   13 µs is the fault thread's own page fetch (timed inside the fault thread), so the
//!   two hand-offs (handler → fault thread → faulting thread) cost ~10 µs — 2.3× a
//!   4 KiB get; in the other runs the fault thread's fetch itself takes 45–120 µs (it
//!   is woken onto a core the target's service thread is spinning on).
//! - Polling forced on removes those hand-offs only when every polling thread has a
//!   core: in processes it made faults 4× slower (the polling service and fault
//!   threads take the cores the runtime's wake-ups need), hence the default above.
//!   Polling the reply at the origin was worse still (get 50–80 µs in processes, see
//!   *When the threads poll*) and was removed.
//! - A strided column of 64 × 8 B (one every 64 B) read with one `get_typed`: 13 µs
//!   in threads, against 426 µs for the same column as 64 8 B gets (one vectored
//!   request instead of 64 round trips).
//!
//! - Over the **shared-memory transport** (dsmexec's default since it landed; the
//!   table above is TCP): `nice -n -20 dsmexec -n 2 window_bench`, about a dozen runs
//!   each of this crate's default build and of polling forced, same machine. Again two
//!   modes. Both sides spinning on their own cores (runtime round trip 0.9–1.1 µs):
//!   get 8 B 1.4–1.5 µs, **0.35× the raw TCP round trip (target met)**, get 4 KiB
//!   2.5–3 µs, but read faults 28–108 µs (9–40×; in one run the fault thread's own
//!   page fetch took 49 µs against 2.7 µs for the same fetch from the main thread,
//!   timed inside it: it wakes from the pipe onto a busy core). Or the runtime's
//!   sleeping waiters (round trip 12 µs): get 8 B 22 µs (5× raw TCP), get 4 KiB 23
//!   µs, read fault 34 µs, **1.5× a 4 KiB get (target met)**. Forcing polling on gave
//!   read faults of 34–54 µs in every run (the fault thread no longer sleeps) but
//!   never the fast get mode; the default (no polling on this host) was kept.
//!
//! Older figures (same machine, quieter, before this change):
//!
//! | run                        | runtime RTT 8 B | get 8 B | get 4 KiB | put 8 B + flush | acc 8 B + flush | read fault | fence | lock+unlock |
//! |----------------------------|----------------:|--------:|----------:|----------------:|----------------:|-----------:|------:|------------:|
//! | threads, sockets, n=2      | 4.7             | 6.9     | 8.3       | 8.4             | 8.7             | 63         | 8     | 14          |
//! | processes, TCP, n=2        | 6.7             | 8.6     | 9.4       | 12.6            | 12.4            | 29         | 6     | 17          |
//! | processes, TCP, n=4 (2 cores, oversubscribed) | —  | 70      | 69        | 72              | 74              | 80         | 200   | 142         |
//!
//! - An 8 B `get` costs 1.3–1.5× the runtime's own 8 B round trip (target: 1.2× a raw
//!   TCP round trip): the request is served by the target's service thread, which may
//!   have to be woken.
//! - A remote read fault costs 3× a 4 KiB `get` in processes and up to 7× with thread
//!   ranks (target ≤ 2×; 1.7× was seen in one quieter run): on top of the fetch it
//!   wakes the fault thread (pipe) and then the faulting thread (futex). Spinning
//!   instead of sleeping on either side was tried and was slower here (PAUSE is slow,
//!   and the spinner takes the core the service threads need).
//! - Aggregation makes pipelined puts cost 0.2–0.4 µs (8 B) and 3–6 µs (4 KiB) each.
//!   Random 8 B accumulates (GUPS-like, 20 000 per rank) cost 250–530 ns per update,
//!   against 11–60 ns for the same updates bucketed into one message per destination
//!   (before aggregation one-sided was ~2 µs per update): one-sided wins on isolated,
//!   irregular updates whose targets are not known in advance (13.4's counters,
//!   tickets, locks); bucketing wins on throughput when they are.
//! - A 1-D halo exchange costs ~8 µs per iteration with isend/irecv, ~280–380 µs with
//!   fence or PSCW windows (n=2): each epoch is several acknowledged round trips
//!   through sleeping service threads. For regular neighbour exchanges two-sided wins
//!   by ~40×.
//! - `lock_all`/`unlock_all` costs 2n round trips (18 µs at n=2 in processes).
//! - Page migration (`window_bench`'s last section; fresh window per repetition, 40
//!   repetitions, rank 0 alone stores 16 words into each of 1 or 8 pages homed at
//!   rank 1 every fence epoch; medians of store + fence, µs):
//!
//!   | run                      | epoch 0 (faults + diffs) | epoch 1 (+ migration) | epochs 2+ (owned) |
//!   |--------------------------|-------------------------:|----------------------:|------------------:|
//!   | threads, n=2, 1 page     | 316                      | 410                   | 4.5               |
//!   | threads, n=2, 8 pages    | 503                      | 862                   | 5.1               |
//!   | processes, n=2, 1 page   | 316                      | 420                   | 10                |
//!   | processes, n=2, 8 pages  | 1270                     | 527                   | 10                |
//!   | processes, n=4, 1 page   | 434                      | 676                   | 249               |
//!   | processes, n=4, 8 pages  | 1304                     | 1565                  | 224               |
//!
//!   Before migration an epoch costs a write fault per page (fetch + twin), the diffs,
//!   and the fence; the migrating fence adds one page transfer per page and a second
//!   barrier; afterwards the epoch is the stores and a bare fence (6 µs at n=2, 156 µs
//!   at n=4 oversubscribed on 2 cores, where the fence dominates). Fences that move
//!   nothing cost what the plain barrier did (the all-gather is the same messages).
//!   Epoch 0 is also the first traffic after allocation (sleeping service threads),
//!   which is why it is sometimes slower than epoch 1.
#![warn(missing_docs)]

mod access;
mod element;
mod error;
mod fault;
mod poll;
mod proto;
mod segment;
mod shared;
mod window;

pub use dsmpi_collectives::datatype::Datatype;
pub use element::{ElemKind, Element, Op};
pub use error::{Result, WinError};
pub use window::{
    FaultPath, Layout, LockType, RangeGuard, Typed, View, WinOptions, Window, WindowStats,
};

/// What a program using windows usually needs.
pub mod prelude {
    pub use crate::{
        Datatype, Element, FaultPath, LockType, Op, Typed, WinError, WinOptions, Window,
    };
}
