//! `dsmpi_bench`: OSU-style micro-benchmarks of dsmpi, side by side with the MPI it
//! may run on and with raw TCP.
//!
//! One binary, three ways to run it:
//! - as the ranks of a job: `dsmexec -n 2 dsmpi_bench` (dsmpi's TCP mesh) or
//!   `mpirun -n 2 dsmpi_bench` (built with `--features mpi`: dsmpi over MPI, plus the
//!   same measurements made with MPI's own calls, labelled `mpi-native`, and the
//!   collectives through dsmpi with the `Native` choice, labelled `dsmpi-native`
//!   (`native/ompi-*` in `--compare`)). Rank 0
//!   prints one OSU-style table per operation: size, then the median latency in µs
//!   (or bandwidth in MB/s) and the spread (10th and 90th percentiles of the samples);
//! - `dsmpi_bench --raw-tcp`: the baseline, two threads of one process over a
//!   127.0.0.1 TCP connection with busy-polling non-blocking sockets (the least a
//!   TCP-based runtime can cost);
//! - `dsmpi_bench --compare [-n N]`: runs all of the above in one invocation
//!   (dsmexec found next to this binary, twice: `--transport tcp`, the TCP mesh, and
//!   `--transport shm`, shared-memory links between the ranks of a host, labelled
//!   `dsmpi-shm`; `mpirun` on PATH, twice: `--mca btl tcp,self` and default shared
//!   memory) and prints the tables side by side with ratios.
//!
//! Method: each measurement runs a warm-up, then `--samples` samples (default 15) of
//! a size-dependent number of iterations; a sample's time per operation is the
//! slowest rank's (a max-allreduce after the sample, outside the timing), and a
//! barrier starts every sample. Point-to-point latency is half the ping-pong round
//! trip between ranks 0 and 1 (OSU's osu_latency); bandwidth is a window of 64
//! non-blocking sends from 0 to 1 answered by one small message (osu_bw); `ring` is
//! the time of one lap of a token around every rank (each hop waits for the next
//! rank to run: the test of an oversubscribed host).
//!
//! One-sided operations (issue 6) go through a `dsmpi::window::Window`, which rides on
//! whatever transport the job has (TCP mesh or MPI), from rank 0 to rank 1 while rank 1
//! only serves: `get`, `put` + `flush`, `accumulate` (sum of `u64`) + `flush`, timed
//! like the rest; and `fault`, one remote read page fault (a load through the window's
//! view on a page whose cached copy was just dropped), timed one fault at a time
//! because every fault needs its own invalidation, with its p99 shown as well, and
//! `fault-get`, a get of one page timed the same way in alternating lock epochs, so
//! that the ratio fault / get (printed with the ratios) compares operations made in
//! the same surroundings. MPI's own MPI_Get/MPI_Put are not measured.
//!
//! Per algorithm (ops `bcast-algs` and `allreduce-algs`): the broadcast and the
//! allreduce once with the decision function's choice (`decision`) and once forced to
//! each of dsmpi's algorithms (`Bcast::ALL`, `Allreduce::ALL`), plus `Native` when the
//! backend has native collectives (the `mpi` one), all measured back to back at each
//! size so that drift hits every column alike. They print after the other tables, one
//! table per implementation with one column per algorithm, the algorithm the decision
//! function picks, and the ratio of the decision's median to the fastest dsmpi
//! algorithm's.
//!
//! `--compare --plot DIR` also draws one SVG per operation (latency or bandwidth
//! against size, log-log, one line per column) into DIR, and one per implementation
//! for the per-algorithm tables (`<op>-algs-<implementation>.svg`).
//!
//! Why an example of the `dsmpi` package: it needs the facade (collectives) and, with
//! the `mpi` feature, the raw MPI bindings for the `mpi-native` figures; `cargo build
//! --release --example dsmpi_bench [--features mpi]` builds it next to `dsmexec`.

use std::collections::BTreeMap;
use std::error::Error;
use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Instant;

use dsmpi::prelude::*;
use dsmpi::window::{LockType, Op, WinOptions, Window};

type Res<T> = Result<T, Box<dyn Error + Send + Sync>>;

/// Message sizes in bytes (per rank for scatter and all-to-all).
const SIZES: [usize; 7] = [8, 64, 512, 4096, 32768, 262_144, 1_048_576];

/// Width of a table column: room for a page fault's cell, which adds its p99.
const COL: usize = 40;

/// Width of a column of the per-algorithm tables (their cells have no p99); each cell
/// is also preceded by a space, so that a wide one never runs into its neighbour.
const ALG_COL: usize = 30;

/// The operations measured per algorithm, each under its `--ops` name.
const ALG_OPS: [(&str, &str); 2] = [("bcast", "bcast-algs"), ("allreduce", "allreduce-algs")];

/// Sends in flight in the bandwidth test.
const WINDOW: usize = 64;

/// Remote page faults timed per run of the `fault` measurement: each is one sample,
/// so the p99 rests on 20 faults above it.
const FAULTS: usize = 2000;

/// The operations, in print order, and whether their figure is a bandwidth.
const OPS: [(&str, bool); 12] = [
    ("latency", false),
    ("bw", true),
    ("ring", false),
    ("bcast", false),
    ("scatter", false),
    ("alltoall", false),
    ("allreduce", false),
    ("get", false),
    ("put", false),
    ("accumulate", false),
    ("fault", false),
    ("fault-get", false),
];

#[derive(Clone, Debug)]
struct Opts {
    samples: usize,
    emit: bool,
    ops: Vec<String>,
    max_size: usize,
}

impl Opts {
    fn iters(&self, size: usize) -> usize {
        match size {
            0..=4096 => 200,
            4097..=65536 => 50,
            _ => 10,
        }
    }

    fn wants(&self, op: &str) -> bool {
        self.ops.is_empty() || self.ops.iter().any(|o| o == op)
    }
}

/// Median and spread of one measurement's samples.
#[derive(Clone, Copy, Debug)]
struct Stats {
    median: f64,
    p10: f64,
    p90: f64,
    /// Only shown for `fault`, the one measurement whose samples are single
    /// operations (elsewhere a sample is a mean over many, and the p99 of 15 of them
    /// is just the slowest).
    p99: f64,
}

impl Stats {
    fn of(mut v: Vec<f64>) -> Stats {
        v.sort_by(f64::total_cmp);
        let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
        Stats {
            median: at(0.5),
            p10: at(0.1),
            p90: at(0.9),
            p99: at(0.99),
        }
    }

    /// Every figure scaled by `k` (for half a round trip).
    fn scaled(self, k: f64) -> Stats {
        Stats {
            median: self.median * k,
            p10: self.p10 * k,
            p90: self.p90 * k,
            p99: self.p99 * k,
        }
    }
}

/// Results of one run: (implementation, op) → size → stats.
type Table = BTreeMap<(String, String), BTreeMap<usize, Stats>>;

fn record(t: &mut Table, imp: &str, op: &str, size: usize, s: Stats, emit: bool) {
    if emit {
        // Machine-readable, for --compare.
        println!(
            "@ {imp} {op} {size} {} {} {} {}",
            s.median, s.p10, s.p90, s.p99
        );
    }
    t.entry((imp.to_string(), op.to_string()))
        .or_default()
        .insert(size, s);
}

/// Runs `op` `iters` times per sample on every rank; returns µs per op (slowest rank).
fn timed(w: &Communicator, o: &Opts, size: usize, mut op: impl FnMut() -> Res<()>) -> Res<Stats> {
    let iters = o.iters(size);
    for _ in 0..(iters / 10).max(2) {
        op()?;
    }
    let mut samples = Vec::with_capacity(o.samples);
    for _ in 0..o.samples {
        w.barrier()?;
        let t = Instant::now();
        for _ in 0..iters {
            op()?;
        }
        let mine = t.elapsed().as_secs_f64() * 1e6 / iters as f64;
        let mut worst = [0f64];
        w.all_reduce_into(&[mine], &mut worst, SystemOp::Max)?;
        samples.push(worst[0]);
    }
    Ok(Stats::of(samples))
}

fn to_bw(size: usize, s: Stats) -> Stats {
    // µs per window of WINDOW messages → MB/s (10^6 bytes per second, as OSU).
    let mbs = |us: f64| (size * WINDOW) as f64 / us;
    Stats {
        median: mbs(s.median),
        p10: mbs(s.p90),
        p90: mbs(s.p10),
        // The slow tail of a bandwidth is its low end; p1 is not kept, so no figure.
        p99: f64::NAN,
    }
}

fn half(s: Stats) -> Stats {
    s.scaled(0.5)
}

/// dsmpi's own measurements on `w`, whatever its transport.
fn bench_dsmpi(w: &Communicator, o: &Opts, t: &mut Table) -> Res<()> {
    let imp = format!("dsmpi-{}", w.transport().name());
    let (me, n) = (w.rank(), w.size());
    for size in SIZES.into_iter().filter(|&s| s <= o.max_size) {
        let mut buf = vec![0u8; size];
        if o.wants("latency") && n >= 2 {
            let s = timed(w, o, size, || {
                match me {
                    0 => {
                        w.send(&buf, 1, 1)?;
                        w.recv_into(&mut buf, 1, 1)?;
                    }
                    1 => {
                        w.recv_into(&mut buf, 0, 1)?;
                        w.send(&buf, 0, 1)?;
                    }
                    _ => {}
                }
                Ok(())
            })?;
            record(t, &imp, "latency", size, half(s), o.emit);
        }
        if o.wants("ring") && n >= 2 {
            // One lap of a token around every rank (µs per lap): the oversubscribed
            // case's test, where each hop needs the next rank to get a core.
            let (next, prev) = ((me + 1) % n, (me + n - 1) % n);
            let s = timed(w, o, size, || {
                if me == 0 {
                    w.send(&buf, next, 4)?;
                    w.recv_into(&mut buf, prev, 4)?;
                } else {
                    w.recv_into(&mut buf, prev, 4)?;
                    w.send(&buf, next, 4)?;
                }
                Ok(())
            })?;
            record(t, &imp, "ring", size, s, o.emit);
        }
        if o.wants("bw") && n >= 2 {
            let mut wins = vec![vec![0u8; size]; WINDOW];
            let s = timed(w, o, size, || {
                match me {
                    0 => {
                        scope(|sc| -> Res<()> {
                            let reqs =
                                wins.iter()
                                    .map(|b| w.isend(sc, b, 1, 2))
                                    .collect::<Result<Vec<_>, _>>()?;
                            wait_all(reqs)?;
                            Ok(())
                        })?;
                        w.recv_into(&mut [0u8; 4], 1, 3)?;
                    }
                    1 => {
                        scope(|sc| -> Res<()> {
                            let reqs = wins
                                .iter_mut()
                                .map(|b| w.irecv_into(sc, b, 0, 2))
                                .collect::<Result<Vec<_>, _>>()?;
                            wait_all(reqs)?;
                            Ok(())
                        })?;
                        w.send(&[0u8; 4], 0, 3)?;
                    }
                    _ => {}
                }
                Ok(())
            })?;
            record(t, &imp, "bw", size, to_bw(size, s), o.emit);
        }
        if o.wants("bcast") {
            let s = timed(w, o, size, || Ok(w.broadcast_into(0, &mut buf)?))?;
            record(t, &imp, "bcast", size, s, o.emit);
        }
        if o.wants("scatter") {
            let send = if me == 0 {
                vec![1u8; size * n]
            } else {
                Vec::new()
            };
            let s = timed(w, o, size, || Ok(w.scatter_into(0, &send, &mut buf)?))?;
            record(t, &imp, "scatter", size, s, o.emit);
        }
        if o.wants("alltoall") {
            let send = vec![2u8; size * n];
            let mut recv = vec![0u8; size * n];
            let s = timed(w, o, size, || Ok(w.all_to_all_into(&send, &mut recv)?))?;
            record(t, &imp, "alltoall", size, s, o.emit);
        }
        if o.wants("allreduce") {
            let send = vec![1f64; size.div_ceil(8)];
            let mut recv = vec![0f64; send.len()];
            let s = timed(w, o, size, || {
                Ok(w.all_reduce_into(&send, &mut recv, SystemOp::Sum)?)
            })?;
            record(t, &imp, "allreduce", size, s, o.emit);
        }
    }
    Ok(())
}

/// One-sided operations from rank 0 on rank 1's part of a window (see the module
/// docs); every rank takes part in the window's allocation, fences and the samples'
/// barriers, but only rank 0 issues operations, so the slowest rank is rank 0.
fn bench_window(w: &Communicator, o: &Opts, t: &mut Table) -> Res<()> {
    let (me, n) = (w.rank(), w.size());
    let wanted = ["get", "put", "accumulate", "fault"];
    if n < 2 || !wanted.iter().any(|op| o.wants(op)) {
        return Ok(());
    }
    let imp = format!("dsmpi-{}", w.transport().name());
    let sizes: Vec<usize> = SIZES.into_iter().filter(|&s| s <= o.max_size).collect();
    // Room for the largest message and for 64 distinct pages to fault on, so that
    // consecutive faults do not hit the same page.
    let largest = sizes.iter().copied().max().unwrap_or(0);
    let win = Window::allocate(w, largest.max(64 * 4096))?;
    let page = win.page_size();
    let pages = (win.region_bytes(1)? / page).max(1);
    win.fence()?;
    for &size in &sizes {
        let mut buf = vec![1u64; size.div_ceil(8)];
        if o.wants("get") {
            let s = timed(w, o, size, || {
                if me == 0 {
                    win.get(&mut buf, 1, 0)?;
                }
                Ok(())
            })?;
            record(t, &imp, "get", size, s, o.emit);
        }
        if o.wants("put") {
            // A put alone may only be queued; the flush makes it complete at rank 1,
            // which is what a get's latency includes too.
            let s = timed(w, o, size, || {
                if me == 0 {
                    win.put(&buf, 1, 0)?;
                    win.flush(1)?;
                }
                Ok(())
            })?;
            record(t, &imp, "put", size, s, o.emit);
        }
        if o.wants("accumulate") {
            let s = timed(w, o, size, || {
                if me == 0 {
                    win.accumulate(&buf, 1, 0, Op::Sum)?;
                    win.flush(1)?;
                }
                Ok(())
            })?;
            record(t, &imp, "accumulate", size, s, o.emit);
        }
    }
    win.fence()?;
    win.free()?;
    if o.wants("fault") {
        // Same-host ranks map each other's regions and never fault, so the fault is
        // measured on a window that keeps the fault path between every pair.
        let opts = WinOptions {
            share_same_host: false,
            ..WinOptions::default()
        };
        let win = Window::allocate_opts(w, 64 * 4096, opts)?;
        win.fence()?;
        // A shared lock on rank 1 drops rank 0's cached copies of rank 1's pages, so a
        // load under it faults and fetches one page from its home. Faults and 4 KiB
        // gets of rank 1's pages are timed alike, one operation per lock epoch, the two
        // alternating, so that both find the same surroundings: the lock's round trip
        // just before, the unlock just after, rank 1's service thread in the same state.
        // (The `get` rows time back-to-back gets instead, which find that thread still
        // polling from the previous get.) Only the operation is timed.
        let before = win.stats();
        let mut v = Vec::with_capacity(FAULTS);
        let mut g = Vec::with_capacity(FAULTS);
        if me == 0 {
            let view = win.view::<u64>()?;
            let per_page = page / std::mem::size_of::<u64>();
            let mut buf = vec![0u64; per_page];
            let mut sink = 0u64;
            for i in 0..2 * FAULTS {
                let disp = (i / 2 % pages) * per_page;
                win.lock(LockType::Shared, 1)?;
                let t0 = Instant::now();
                if i % 2 == 0 {
                    sink = sink.wrapping_add(view.load(view.index_of(1, disp)?)?);
                    v.push(t0.elapsed().as_secs_f64() * 1e6);
                } else {
                    win.get(&mut buf, 1, disp)?;
                    g.push(t0.elapsed().as_secs_f64() * 1e6);
                }
                win.unlock(1)?;
            }
            sink = sink.wrapping_add(buf[0]);
            std::hint::black_box(sink);
            let faults = win.stats().faults - before.faults;
            // A load that did not fault would time a cache hit: say so rather than
            // print a fault latency that is not one.
            if faults < FAULTS as u64 {
                eprintln!("# warning: {faults} page faults for {FAULTS} timed loads");
            }
            record(t, &imp, "fault", page, Stats::of(v), o.emit);
            record(t, &imp, "fault-get", page, Stats::of(g), o.emit);
        }
        win.fence()?;
        win.free()?;
    }
    Ok(())
}

/// The collectives through dsmpi's API with the `Native` choice (`dsmpi-native`):
/// MPI's own collectives as dsmpi calls them, so the gap to `mpi-native` is dsmpi's
/// wrapping (polling a non-blocking collective) and the gap to `dsmpi-mpi` is
/// algorithms. Only on a backend with native collectives (the `mpi` one).
fn bench_native_choice(w: &Communicator, o: &Opts, t: &mut Table) -> Res<()> {
    let imp = "dsmpi-native";
    let (me, n) = (w.rank(), w.size());
    for size in SIZES.into_iter().filter(|&s| s <= o.max_size) {
        let mut buf = vec![0u8; size];
        if o.wants("bcast") {
            let s = timed(w, o, size, || {
                Ok(w.broadcast_with(Bcast::Native, 0, &mut buf)?)
            })?;
            record(t, imp, "bcast", size, s, o.emit);
        }
        if o.wants("scatter") {
            let send = if me == 0 {
                vec![1u8; size * n]
            } else {
                Vec::new()
            };
            let s = timed(w, o, size, || {
                Ok(w.scatter_with(Scatter::Native, 0, &send, &mut buf)?)
            })?;
            record(t, imp, "scatter", size, s, o.emit);
        }
        if o.wants("alltoall") {
            let send = vec![2u8; size * n];
            let mut recv = vec![0u8; size * n];
            let s = timed(w, o, size, || {
                Ok(w.all_to_all_with(Alltoall::Native, &send, &mut recv)?)
            })?;
            record(t, imp, "alltoall", size, s, o.emit);
        }
        if o.wants("allreduce") {
            let send = vec![1f64; size.div_ceil(8)];
            let mut recv = vec![0f64; send.len()];
            let s = timed(w, o, size, || {
                Ok(w.all_reduce_with(Allreduce::Native, &send, &mut recv, SystemOp::Sum)?)
            })?;
            record(t, imp, "allreduce", size, s, o.emit);
        }
    }
    Ok(())
}

/// The broadcast and the allreduce per algorithm (see the module docs): op
/// `<op>:decision` for the decision function, `<op>:<Algorithm>` for each forced one,
/// including `Native` where the backend has it. Same buffers and roots as the
/// decision-function figures of [`bench_dsmpi`].
fn bench_algorithms(w: &Communicator, o: &Opts, t: &mut Table) -> Res<()> {
    let imp = format!("dsmpi-{}", w.transport().name());
    let native = w.transport().native().is_some();
    for size in SIZES.into_iter().filter(|&s| s <= o.max_size) {
        if o.wants("bcast-algs") {
            let mut buf = vec![0u8; size];
            let mut algs: Vec<Option<Bcast>> = vec![None];
            algs.extend(Bcast::ALL.map(Some));
            if native {
                algs.push(Some(Bcast::Native));
            }
            for alg in algs {
                let s = timed(w, o, size, || {
                    match alg {
                        Some(a) => w.broadcast_with(a, 0, &mut buf)?,
                        None => w.broadcast_into(0, &mut buf)?,
                    }
                    Ok(())
                })?;
                let name = alg.map_or_else(|| "decision".to_string(), |a| format!("{a:?}"));
                record(t, &imp, &format!("bcast:{name}"), size, s, o.emit);
            }
        }
        if o.wants("allreduce-algs") {
            let send = vec![1f64; size.div_ceil(8)];
            let mut recv = vec![0f64; send.len()];
            let mut algs: Vec<Option<Allreduce>> = vec![None];
            algs.extend(Allreduce::ALL.map(Some));
            if native {
                algs.push(Some(Allreduce::Native));
            }
            for alg in algs {
                let s = timed(w, o, size, || {
                    match alg {
                        Some(a) => w.all_reduce_with(a, &send, &mut recv, SystemOp::Sum)?,
                        None => w.all_reduce_into(&send, &mut recv, SystemOp::Sum)?,
                    }
                    Ok(())
                })?;
                let name = alg.map_or_else(|| "decision".to_string(), |a| format!("{a:?}"));
                record(t, &imp, &format!("allreduce:{name}"), size, s, o.emit);
            }
        }
    }
    Ok(())
}

/// The same measurements with MPI's own calls on MPI_COMM_WORLD (`mpi-native`).
#[cfg(feature = "mpi")]
mod native {
    use super::*;
    use mpi::ffi;
    use std::ffi::c_int;

    fn ok(call: &str, rc: c_int) -> Res<()> {
        if rc == ffi::MPI_SUCCESS as c_int {
            Ok(())
        } else {
            Err(format!("{call} failed with MPI error {rc}").into())
        }
    }

    fn cnt(n: usize) -> Res<c_int> {
        Ok(c_int::try_from(n)?)
    }

    pub fn bench(w: &Communicator, o: &Opts, t: &mut Table) -> Res<()> {
        let imp = "mpi-native";
        let (me, n) = (w.rank(), w.size());
        // SAFETY (for every block below): MPI is initialized (the dsmpi transport is
        // the mpi one and not finalized); each buffer outlives its blocking call and
        // holds the count given; calls are made from this thread only while no other
        // thread of this process uses MPI.
        let (world, u8t) = unsafe { (ffi::RSMPI_COMM_WORLD, ffi::RSMPI_UINT8_T) };
        let status = || unsafe { ffi::RSMPI_STATUS_IGNORE };
        for size in SIZES.into_iter().filter(|&s| s <= o.max_size) {
            let c = cnt(size)?;
            let mut buf = vec![0u8; size];
            if o.wants("latency") && n >= 2 {
                let s = timed(w, o, size, || {
                    let p = buf.as_mut_ptr().cast();
                    match me {
                        0 => unsafe {
                            ok("MPI_Send", ffi::MPI_Send(p, c, u8t, 1, 1, world))?;
                            ok("MPI_Recv", ffi::MPI_Recv(p, c, u8t, 1, 1, world, status()))?;
                        },
                        1 => unsafe {
                            ok("MPI_Recv", ffi::MPI_Recv(p, c, u8t, 0, 1, world, status()))?;
                            ok("MPI_Send", ffi::MPI_Send(p, c, u8t, 0, 1, world))?;
                        },
                        _ => {}
                    }
                    Ok(())
                })?;
                record(t, imp, "latency", size, half(s), o.emit);
            }
            if o.wants("ring") && n >= 2 {
                let next = c_int::try_from((me + 1) % n)?;
                let prev = c_int::try_from((me + n - 1) % n)?;
                let s = timed(w, o, size, || {
                    let p = buf.as_mut_ptr().cast();
                    unsafe {
                        if me == 0 {
                            ok("MPI_Send", ffi::MPI_Send(p, c, u8t, next, 4, world))?;
                            ok(
                                "MPI_Recv",
                                ffi::MPI_Recv(p, c, u8t, prev, 4, world, status()),
                            )?;
                        } else {
                            ok(
                                "MPI_Recv",
                                ffi::MPI_Recv(p, c, u8t, prev, 4, world, status()),
                            )?;
                            ok("MPI_Send", ffi::MPI_Send(p, c, u8t, next, 4, world))?;
                        }
                    }
                    Ok(())
                })?;
                record(t, imp, "ring", size, s, o.emit);
            }
            if o.wants("bw") && n >= 2 {
                let mut wins = vec![vec![0u8; size]; WINDOW];
                let s = timed(w, o, size, || {
                    if me > 1 {
                        return Ok(());
                    }
                    let mut reqs = vec![unsafe { ffi::RSMPI_REQUEST_NULL }; WINDOW];
                    for (b, r) in wins.iter_mut().zip(reqs.iter_mut()) {
                        let p = b.as_mut_ptr().cast();
                        unsafe {
                            if me == 0 {
                                ok("MPI_Isend", ffi::MPI_Isend(p, c, u8t, 1, 2, world, r))?;
                            } else {
                                ok("MPI_Irecv", ffi::MPI_Irecv(p, c, u8t, 0, 2, world, r))?;
                            }
                        }
                    }
                    let mut ack = [0u8; 4];
                    let a = ack.as_mut_ptr().cast();
                    unsafe {
                        ok(
                            "MPI_Waitall",
                            ffi::MPI_Waitall(
                                WINDOW as c_int,
                                reqs.as_mut_ptr(),
                                ffi::RSMPI_STATUSES_IGNORE,
                            ),
                        )?;
                        if me == 0 {
                            ok("MPI_Recv", ffi::MPI_Recv(a, 4, u8t, 1, 3, world, status()))?;
                        } else {
                            ok("MPI_Send", ffi::MPI_Send(a, 4, u8t, 0, 3, world))?;
                        }
                    }
                    Ok(())
                })?;
                record(t, imp, "bw", size, to_bw(size, s), o.emit);
            }
            if o.wants("bcast") {
                let s = timed(w, o, size, || unsafe {
                    ok(
                        "MPI_Bcast",
                        ffi::MPI_Bcast(buf.as_mut_ptr().cast(), c, u8t, 0, world),
                    )
                })?;
                record(t, imp, "bcast", size, s, o.emit);
            }
            if o.wants("scatter") {
                let send = vec![1u8; size * n];
                let s = timed(w, o, size, || unsafe {
                    ok(
                        "MPI_Scatter",
                        ffi::MPI_Scatter(
                            send.as_ptr().cast(),
                            c,
                            u8t,
                            buf.as_mut_ptr().cast(),
                            c,
                            u8t,
                            0,
                            world,
                        ),
                    )
                })?;
                record(t, imp, "scatter", size, s, o.emit);
            }
            if o.wants("alltoall") {
                let send = vec![2u8; size * n];
                let mut recv = vec![0u8; size * n];
                let s = timed(w, o, size, || unsafe {
                    ok(
                        "MPI_Alltoall",
                        ffi::MPI_Alltoall(
                            send.as_ptr().cast(),
                            c,
                            u8t,
                            recv.as_mut_ptr().cast(),
                            c,
                            u8t,
                            world,
                        ),
                    )
                })?;
                record(t, imp, "alltoall", size, s, o.emit);
            }
            if o.wants("allreduce") {
                let send = vec![1f64; size.div_ceil(8)];
                let mut recv = vec![0f64; send.len()];
                let k = cnt(send.len())?;
                let s = timed(w, o, size, || unsafe {
                    ok(
                        "MPI_Allreduce",
                        ffi::MPI_Allreduce(
                            send.as_ptr().cast(),
                            recv.as_mut_ptr().cast(),
                            k,
                            ffi::RSMPI_DOUBLE,
                            ffi::RSMPI_SUM,
                            world,
                        ),
                    )
                })?;
                record(t, imp, "allreduce", size, s, o.emit);
            }
        }
        Ok(())
    }
}

/// The baseline: ping-pong and a windowed stream over one loopback TCP connection
/// between two threads, non-blocking sockets polled in a busy loop.
fn bench_raw_tcp(o: &Opts, t: &mut Table) -> Res<()> {
    fn read_full(s: &mut TcpStream, buf: &mut [u8]) -> std::io::Result<()> {
        let mut got = 0;
        while got < buf.len() {
            match s.read(&mut buf[got..]) {
                Ok(0) => return Err(ErrorKind::UnexpectedEof.into()),
                Ok(k) => got += k,
                Err(e) if e.kind() == ErrorKind::WouldBlock => std::hint::spin_loop(),
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
    fn write_full(s: &mut TcpStream, buf: &[u8]) -> std::io::Result<()> {
        let mut put = 0;
        while put < buf.len() {
            match s.write(&buf[put..]) {
                Ok(k) => put += k,
                Err(e) if e.kind() == ErrorKind::WouldBlock => std::hint::spin_loop(),
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    let addr = l.local_addr()?;
    let mut a = TcpStream::connect(addr)?;
    let (mut b, _) = l.accept()?;
    for s in [&a, &b] {
        s.set_nodelay(true)?;
        s.set_nonblocking(true)?;
    }
    let o2 = o.clone();
    // The echo side: mirrors what the measuring side does, size by size.
    let peer = std::thread::spawn(move || -> std::io::Result<()> {
        for size in SIZES.into_iter().filter(|&s| s <= o2.max_size) {
            let mut buf = vec![0u8; size];
            let iters = o2.iters(size);
            let rounds = (iters / 10).max(2) + o2.samples * iters;
            if o2.wants("latency") {
                for _ in 0..rounds {
                    read_full(&mut b, &mut buf)?;
                    write_full(&mut b, &buf)?;
                }
            }
            if o2.wants("bw") {
                let mut big = vec![0u8; size * WINDOW];
                for _ in 0..rounds {
                    read_full(&mut b, &mut big)?;
                    write_full(&mut b, &[0u8; 4])?;
                }
            }
        }
        Ok(())
    });
    let run = |rounds_of: &dyn Fn(usize) -> std::io::Result<()>, size: usize| -> Res<Stats> {
        let iters = o.iters(size);
        rounds_of((iters / 10).max(2))?;
        let mut v = Vec::new();
        for _ in 0..o.samples {
            let t0 = Instant::now();
            rounds_of(iters)?;
            v.push(t0.elapsed().as_secs_f64() * 1e6 / iters as f64);
        }
        Ok(Stats::of(v))
    };
    let a = std::cell::RefCell::new(&mut a);
    for size in SIZES.into_iter().filter(|&s| s <= o.max_size) {
        if o.wants("latency") {
            let buf = std::cell::RefCell::new(vec![0u8; size]);
            let s = run(
                &|k| {
                    let (mut a, mut buf) = (a.borrow_mut(), buf.borrow_mut());
                    for _ in 0..k {
                        write_full(&mut a, &buf)?;
                        read_full(&mut a, &mut buf)?;
                    }
                    Ok(())
                },
                size,
            )?;
            record(t, "raw-tcp", "latency", size, half(s), o.emit);
        }
        if o.wants("bw") {
            let big = vec![0u8; size * WINDOW];
            let s = run(
                &|k| {
                    let mut a = a.borrow_mut();
                    let mut ack = [0u8; 4];
                    for _ in 0..k {
                        write_full(&mut a, &big)?;
                        read_full(&mut a, &mut ack)?;
                    }
                    Ok(())
                },
                size,
            )?;
            record(t, "raw-tcp", "bw", size, to_bw(size, s), o.emit);
        }
    }
    peer.join()
        .map_err(|_| "the raw TCP echo thread panicked")??;
    Ok(())
}

fn print_table(t: &Table, header: &str) {
    for (op, bw) in OPS {
        let imps: Vec<&String> = t.keys().filter(|(_, o)| o == op).map(|(i, _)| i).collect();
        if imps.is_empty() {
            continue;
        }
        let unit = if bw { "MB/s" } else { "us" };
        let what = match op {
            "put" | "accumulate" => " + flush, rank 0 on rank 1",
            "get" => ", rank 0 on rank 1",
            "fault" => ", one remote read page fault, size = page",
            "fault-get" => ", a get of one page timed like the fault (alternating lock epochs)",
            _ => "",
        };
        println!("\n# {op}{what} ({unit}: median [p10-p90]) {header}");
        print!("{:<10}", "# Size");
        for i in &imps {
            print!("{:>COL$}", i);
        }
        println!();
        let sizes: std::collections::BTreeSet<usize> = imps
            .iter()
            .flat_map(|i| t[&((*i).clone(), op.to_string())].keys().copied())
            .collect();
        for size in sizes {
            print!("{size:<10}");
            for i in &imps {
                match t[&((*i).clone(), op.to_string())].get(&size) {
                    Some(s) => {
                        let mut cell = format!("{:.2} [{:.2}-{:.2}]", s.median, s.p10, s.p90);
                        if op.starts_with("fault") {
                            cell += &format!(" p99 {:.2}", s.p99);
                        }
                        print!("{cell:>COL$}");
                    }
                    None => print!("{:>COL$}", "-"),
                }
            }
            println!();
        }
    }
}

/// One implementation's per-algorithm columns: (algorithm, size → stats).
type AlgColumns<'a> = Vec<(&'a str, &'a BTreeMap<usize, Stats>)>;

/// The per-algorithm columns of `t` for `op` (`bcast`, `allreduce`): implementation
/// → column (`decision`, then algorithms in measurement order) → size → stats.
fn alg_columns<'a>(t: &'a Table, op: &str) -> BTreeMap<&'a str, AlgColumns<'a>> {
    let mut by_imp: BTreeMap<&str, AlgColumns> = BTreeMap::new();
    for ((imp, o), by) in t {
        if let Some(alg) = o.strip_prefix(op).and_then(|r| r.strip_prefix(':')) {
            by_imp.entry(imp.as_str()).or_default().push((alg, by));
        }
    }
    // The decision first, dsmpi's algorithms in their enum's order, Native last.
    let rank = |alg: &str| -> usize {
        let names: Vec<String> = match op {
            "bcast" => Bcast::ALL.iter().map(|a| format!("{a:?}")).collect(),
            _ => Allreduce::ALL.iter().map(|a| format!("{a:?}")).collect(),
        };
        match alg {
            "decision" => 0,
            "Native" => usize::MAX,
            other => names
                .iter()
                .position(|n| n == other)
                .map_or(usize::MAX - 1, |i| i + 1),
        }
    };
    for cols in by_imp.values_mut() {
        cols.sort_by_key(|&(alg, _)| rank(alg));
    }
    by_imp
}

/// The algorithm the decision function picks for `op` at `size` bytes on `n` ranks.
fn decided(op: &str, size: usize, n: usize) -> String {
    match op {
        "bcast" => format!("{:?}", Bcast::choose(size, n)),
        _ => format!("{:?}", Allreduce::choose(size, n)),
    }
}

/// One OSU-style table per implementation and operation measured per algorithm: a
/// column per algorithm, the decision function's pick, and how far its median is
/// from the fastest dsmpi algorithm's (`decision / fastest`, about 1 when it picked
/// the best; `Native` is no candidate, as the decision never picks it).
fn print_algorithms(t: &Table, n: usize, header: &str) {
    for (op, _) in ALG_OPS {
        for (imp, cols) in alg_columns(t, op) {
            println!("\n# {op} per algorithm, {imp} (us: median [p10-p90]) {header}");
            print!("{:<10}", "# Size");
            for (alg, _) in &cols {
                print!(" {alg:>ALG_COL$}");
            }
            println!("{:>20}{:>28}", "choice", "decision / fastest");
            let sizes: std::collections::BTreeSet<usize> =
                cols.iter().flat_map(|(_, by)| by.keys().copied()).collect();
            for size in sizes {
                print!("{size:<10}");
                for (_, by) in &cols {
                    match by.get(&size) {
                        Some(s) => {
                            let cell = format!("{:.2} [{:.2}-{:.2}]", s.median, s.p10, s.p90);
                            print!(" {cell:>ALG_COL$}");
                        }
                        None => print!(" {:>ALG_COL$}", "-"),
                    }
                }
                let at = |alg: &str| {
                    cols.iter()
                        .find(|(a, _)| *a == alg)
                        .and_then(|(_, by)| by.get(&size))
                        .map(|s| s.median)
                };
                let fastest = cols
                    .iter()
                    .filter(|(a, _)| *a != "decision" && *a != "Native")
                    .filter_map(|(a, by)| by.get(&size).map(|s| (*a, s.median)))
                    .min_by(|x, y| x.1.total_cmp(&y.1));
                let verdict = match (at("decision"), fastest) {
                    (Some(d), Some((best, m))) => format!("{:.2} ({best})", d / m),
                    _ => "-".to_string(),
                };
                println!("{:>20}{verdict:>28}", decided(op, size, n));
            }
        }
    }
}

/// Ratios of `num` over `den` (latency: >1 means `num` is slower), then each
/// implementation's page fault over its get of a page timed alike.
fn print_ratios(t: &Table, pairs: &[(&str, &str)]) {
    println!(
        "\n# ratios of medians (time ratio: >1 means the first is slower; for bw, the inverse)"
    );
    for ((imp, op), by) in t {
        if op != "fault" {
            continue;
        }
        if let Some(gets) = t.get(&(imp.clone(), "fault-get".to_string())) {
            for (size, f) in by {
                if let Some(gs) = gets.get(size) {
                    println!(
                        "fault      {imp}: fault / get of a page: {:.2}",
                        f.median / gs.median
                    );
                }
            }
        }
    }
    for (op, bw) in OPS {
        for (a, b) in pairs {
            let (Some(x), Some(y)) = (
                t.get(&(a.to_string(), op.to_string())),
                t.get(&(b.to_string(), op.to_string())),
            ) else {
                continue;
            };
            let cells: Vec<String> = x
                .iter()
                .filter_map(|(size, sx)| {
                    y.get(size).map(|sy| {
                        let r = if bw {
                            sy.median / sx.median
                        } else {
                            sx.median / sy.median
                        };
                        format!("{size}:{r:.2}")
                    })
                })
                .collect();
            println!("{op:<10} {a} / {b}: {}", cells.join("  "));
        }
    }
}

/// A job-wide warm-up before the first measurement: 5000 small round trips between
/// ranks 0 and 1 (a fixed count, so every rank runs the same calls), then a barrier.
/// A fresh job's ranks sometimes start on one core, and the first table row would
/// otherwise time the scheduler's load balancing (6 µs instead of 0.5 µs per message
/// while two polling ranks share a core), not the transport.
fn settle(w: &Communicator) -> Res<()> {
    let mut b = [0u8; 8];
    for _ in 0..5000 {
        match w.rank() {
            0 if w.size() > 1 => {
                w.send(&b, 1, 9)?;
                w.recv_into(&mut b, 1, 9)?;
            }
            1 => {
                w.recv_into(&mut b, 0, 9)?;
                w.send(&b, 0, 9)?;
            }
            _ => break,
        }
    }
    w.barrier()?;
    Ok(())
}

fn rank_main(o: &Opts) -> Res<()> {
    let universe = dsmpi::init()?;
    let w = universe.world();
    let mut t = Table::new();
    let mut o = o.clone();
    let emit = o.emit;
    o.emit = emit && w.rank() == 0;
    settle(&w)?;
    bench_dsmpi(&w, &o, &mut t)?;
    bench_window(&w, &o, &mut t)?;
    if w.transport().native().is_some() {
        bench_native_choice(&w, &o, &mut t)?;
    }
    bench_algorithms(&w, &o, &mut t)?;
    #[cfg(feature = "mpi")]
    if w.transport().name() == "mpi" {
        native::bench(&w, &o, &mut t)?;
    }
    if w.rank() == 0 && !emit {
        let header = format!("{} ranks, transport {}", w.size(), w.transport().name());
        print_table(&t, &header);
        print_ratios(
            &t,
            &[("dsmpi-mpi", "mpi-native"), ("dsmpi-native", "mpi-native")],
        );
        print_algorithms(&t, w.size(), &header);
    }
    universe.finalize()?;
    Ok(())
}

/// Runs one job of this binary with `--emit` and collects its results under `label`.
fn collect(cmd: &mut Command, label: &str, t: &mut Table) -> Res<()> {
    eprintln!("# running {cmd:?}");
    let out = cmd.output()?;
    if !out.status.success() {
        return Err(format!(
            "{label}: {cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() != 8 || f[0] != "@" {
            continue;
        }
        let imp = match f[1] {
            "mpi-native" => format!("ompi-{label}"),
            "dsmpi-mpi" => format!("dsmpi/ompi-{label}"),
            "dsmpi-native" => format!("native/ompi-{label}"),
            other => other.to_string(),
        };
        let s = Stats {
            median: f[4].parse()?,
            p10: f[5].parse()?,
            p90: f[6].parse()?,
            p99: f[7].parse()?,
        };
        record(t, &imp, f[2], f[3].parse()?, s, false);
    }
    Ok(())
}

fn find_dsmexec() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    // target/<profile>/examples/dsmpi_bench → target/<profile>/dsmexec
    let cand = exe.parent()?.parent()?.join("dsmexec");
    if cand.is_file() {
        return Some(cand);
    }
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join("dsmexec"))
            .find(|c| c.is_file())
    })
}

/// One line of a plot: its label and its (size, median) points.
type Line<'a> = (&'a str, Vec<(f64, f64)>);

/// Draws one SVG per operation of `t` into `dir` (`<op>.svg`): the median against the
/// size, both axes logarithmic, one line per column. A column keeps its colour in
/// every plot, so that the plots can be read side by side. The per-algorithm
/// measurements get one plot per implementation (`<op>-algs-<implementation>.svg`,
/// `/` in the name written `_`), one line per algorithm.
fn plot(t: &Table, dir: &Path, header: &str) -> Res<()> {
    std::fs::create_dir_all(dir)?;
    let columns: std::collections::BTreeSet<&str> = t.keys().map(|(i, _)| i.as_str()).collect();
    let colour = |imp: &str| columns.iter().position(|c| *c == imp).unwrap_or(0);
    let points = |by: &BTreeMap<usize, Stats>| -> Vec<(f64, f64)> {
        by.iter().map(|(&z, s)| (z as f64, s.median)).collect()
    };
    for (op, bw) in OPS {
        let lines: Vec<Line> = t
            .iter()
            .filter(|((_, o), _)| o == op)
            .map(|((i, _), by)| (i.as_str(), points(by)))
            .collect();
        let unit = if bw { "MB/s" } else { "µs" };
        let caption = format!("{op} ({header}), median {unit}");
        draw_lines(
            &dir.join(format!("{op}.svg")),
            &caption,
            unit,
            &lines,
            &colour,
        )?;
    }
    for (op, _) in ALG_OPS {
        for (imp, cols) in alg_columns(t, op) {
            let lines: Vec<Line> = cols.iter().map(|(alg, by)| (*alg, points(by))).collect();
            let order: Vec<&str> = cols.iter().map(|(alg, _)| *alg).collect();
            let colour = |alg: &str| order.iter().position(|a| *a == alg).unwrap_or(0);
            let caption = format!("{op} per algorithm, {imp} ({header}), median µs");
            let file = format!("{op}-algs-{}.svg", imp.replace('/', "_"));
            draw_lines(&dir.join(file), &caption, "µs", &lines, &colour)?;
        }
    }
    Ok(())
}

/// Draws `lines` into the SVG at `path`, log-log; `colour` gives each line's index in
/// the palette. Draws nothing when no line has a point.
fn draw_lines(
    path: &Path,
    caption: &str,
    unit: &str,
    lines: &[Line],
    colour: &dyn Fn(&str) -> usize,
) -> Res<()> {
    use plotters::prelude::*;
    let all = lines.iter().flat_map(|(_, pts)| pts.iter().copied());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, 0f64, f64::MAX, 0f64);
    for (x, y) in all.filter(|&(_, y)| y.is_finite() && y > 0.0) {
        (x0, x1, y0, y1) = (x0.min(x), x1.max(x), y0.min(y), y1.max(y));
    }
    if x1 == 0.0 {
        return Ok(());
    }
    // Margins, so that a single size (the page fault) or a flat line still spans a
    // drawable range on a log axis.
    let (x0, x1, y0, y1) = (x0 / 1.5, x1 * 1.5, y0 / 1.5, y1 * 1.5);
    let root = SVGBackend::new(path, (800, 500)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(caption, ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d((x0..x1).log_scale(), (y0..y1).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("message size (bytes)")
        .y_desc(unit)
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_label_formatter(&|v| format!("{v:.3}"))
        .draw()?;
    for (label, pts) in lines {
        let c = Palette99::pick(colour(label)).to_rgba();
        chart
            .draw_series(LineSeries::new(pts.iter().copied(), c.stroke_width(2)))?
            .label(*label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
        chart.draw_series(pts.iter().map(|&p| Circle::new(p, 3, c.filled())))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    eprintln!("# wrote {}", path.display());
    Ok(())
}

fn compare(np: usize, o: &Opts, passthrough: &[String], plot_dir: Option<&Path>) -> Res<()> {
    let exe = std::env::current_exe()?;
    let mut t = Table::new();
    let args: Vec<String> = passthrough
        .iter()
        .cloned()
        .chain(["--emit".into()])
        .collect();
    match find_dsmexec() {
        Some(d) => {
            // The TCP mesh (`dsmpi-tcp`, the column the targets are about),
            // forced: dsmexec links ranks of one host through shared memory by default.
            collect(
                Command::new(&d)
                    .args(["--transport", "tcp", "-n", &np.to_string()])
                    .arg(&exe)
                    .args(&args),
                "tcp",
                &mut t,
            )?;
            // Then dsmexec's default, shared-memory links (`dsmpi-shm`); a dsmexec
            // without them costs this column only.
            if let Err(e) = collect(
                Command::new(&d)
                    .args(["--transport", "shm", "-n", &np.to_string()])
                    .arg(&exe)
                    .args(&args),
                "shm",
                &mut t,
            ) {
                eprintln!("# no dsmpi-shm column: {e}");
            }
        }
        None => eprintln!(
            "# dsmexec not found next to {} nor on PATH: build it (cargo build --release -p dsmpi-launcher) for the dsmpi TCP column",
            exe.display()
        ),
    }
    if cfg!(feature = "mpi") && Command::new("mpirun").arg("--version").output().is_ok() {
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        for (label, btl) in [("tcp", Some("tcp,self")), ("sm", None)] {
            let mut cmd = Command::new("mpirun");
            cmd.args([
                "--oversubscribe",
                "--bind-to",
                "none",
                "-n",
                &np.to_string(),
            ]);
            if root {
                cmd.arg("--allow-run-as-root");
            }
            if let Some(b) = btl {
                cmd.args(["--mca", "btl", b]);
            }
            collect(cmd.arg(&exe).args(&args), label, &mut t)?;
        }
    } else {
        eprintln!("# no MPI columns: build with --features mpi and put mpirun on PATH");
    }
    if np == 2 {
        bench_raw_tcp(o, &mut t)?;
    }
    print_table(&t, &format!("{np} ranks"));
    print_ratios(
        &t,
        &[
            ("dsmpi-tcp", "ompi-tcp"),
            ("dsmpi-tcp", "raw-tcp"),
            ("dsmpi-shm", "ompi-sm"),
            ("dsmpi/ompi-tcp", "ompi-tcp"),
            ("dsmpi/ompi-sm", "ompi-sm"),
            ("native/ompi-sm", "ompi-sm"),
            ("dsmpi/ompi-sm", "native/ompi-sm"),
            ("dsmpi/ompi-sm", "dsmpi-tcp"),
        ],
    );
    print_algorithms(&t, np, &format!("{np} ranks"));
    if let Some(dir) = plot_dir {
        plot(&t, dir, &format!("{np} ranks"))?;
    }
    Ok(())
}

const USAGE: &str = "usage: dsmpi_bench [--compare [-n N] [--plot DIR]] [--raw-tcp] [--samples K] [--ops a,b,..] [--max-size BYTES] [--emit]
  ops: latency bw ring bcast scatter alltoall allreduce get put accumulate fault bcast-algs allreduce-algs
  as ranks: dsmexec -n N dsmpi_bench | mpirun -n N dsmpi_bench (built with --features mpi)";

fn main() -> ExitCode {
    let mut o = Opts {
        samples: 15,
        emit: false,
        ops: Vec::new(),
        max_size: usize::MAX,
    };
    let (mut do_compare, mut raw, mut np) = (false, false, 2usize);
    let mut passthrough = Vec::new();
    let mut plot_dir: Option<PathBuf> = None;
    let mut args = std::env::args().skip(1);
    let parsed: Res<()> = (|| {
        while let Some(a) = args.next() {
            let mut val = |name: &str| args.next().ok_or_else(|| format!("{name} needs a value"));
            match a.as_str() {
                "--compare" => do_compare = true,
                "--raw-tcp" => raw = true,
                "--emit" => o.emit = true,
                "-n" => np = val("-n")?.parse()?,
                "--plot" => plot_dir = Some(val("--plot")?.into()),
                "--samples" => {
                    let v = val("--samples")?;
                    o.samples = v.parse::<usize>()?.max(1);
                    passthrough.extend(["--samples".to_string(), v]);
                }
                "--ops" => {
                    let v = val("--ops")?;
                    o.ops = v.split(',').map(str::to_string).collect();
                    passthrough.extend(["--ops".to_string(), v]);
                }
                "--max-size" => {
                    let v = val("--max-size")?;
                    o.max_size = v.parse()?;
                    passthrough.extend(["--max-size".to_string(), v]);
                }
                "-h" | "--help" => {
                    println!("{USAGE}");
                    std::process::exit(0);
                }
                other => return Err(format!("unknown argument {other:?}\n{USAGE}").into()),
            }
        }
        Ok(())
    })();
    let r = parsed.and_then(|()| {
        if plot_dir.is_some() && !do_compare {
            Err("--plot DIR draws what --compare measures: give both".into())
        } else if do_compare {
            compare(np, &o, &passthrough, plot_dir.as_deref())
        } else if raw {
            let mut t = Table::new();
            bench_raw_tcp(&o, &mut t)?;
            if !o.emit {
                print_table(&t, "raw TCP, 2 threads");
            }
            Ok(())
        } else {
            rank_main(&o)
        }
    });
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dsmpi_bench: {e}");
            ExitCode::FAILURE
        }
    }
}
