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
//!   (dsmexec found next to this binary, `mpirun` on PATH, twice: `--mca btl tcp,self`
//!   and default shared memory) and prints the tables side by side with ratios.
//!
//! Method: each measurement runs a warm-up, then `--samples` samples (default 15) of
//! a size-dependent number of iterations; a sample's time per operation is the
//! slowest rank's (a max-allreduce after the sample, outside the timing), and a
//! barrier starts every sample. Point-to-point latency is half the ping-pong round
//! trip between ranks 0 and 1 (OSU's osu_latency); bandwidth is a window of 64
//! non-blocking sends from 0 to 1 answered by one small message (osu_bw).
//!
//! Why an example of the `dsmpi` package: it needs the facade (collectives) and, with
//! the `mpi` feature, the raw MPI bindings for the `mpi-native` figures; `cargo build
//! --release --example dsmpi_bench [--features mpi]` builds it next to `dsmexec`.

use std::collections::BTreeMap;
use std::error::Error;
use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::time::Instant;

use dsmpi::prelude::*;

type Res<T> = Result<T, Box<dyn Error + Send + Sync>>;

/// Message sizes in bytes (per rank for scatter and all-to-all).
const SIZES: [usize; 7] = [8, 64, 512, 4096, 32768, 262_144, 1_048_576];

/// Sends in flight in the bandwidth test.
const WINDOW: usize = 64;

/// The operations, in print order, and whether their figure is a bandwidth.
const OPS: [(&str, bool); 6] = [
    ("latency", false),
    ("bw", true),
    ("bcast", false),
    ("scatter", false),
    ("alltoall", false),
    ("allreduce", false),
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
}

impl Stats {
    fn of(mut v: Vec<f64>) -> Stats {
        v.sort_by(f64::total_cmp);
        let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
        Stats {
            median: at(0.5),
            p10: at(0.1),
            p90: at(0.9),
        }
    }
}

/// Results of one run: (implementation, op) → size → stats.
type Table = BTreeMap<(String, String), BTreeMap<usize, Stats>>;

fn record(t: &mut Table, imp: &str, op: &str, size: usize, s: Stats, emit: bool) {
    if emit {
        // Machine-readable, for --compare.
        println!("@ {imp} {op} {size} {} {} {}", s.median, s.p10, s.p90);
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
    }
}

fn half(s: Stats) -> Stats {
    Stats {
        median: s.median / 2.0,
        p10: s.p10 / 2.0,
        p90: s.p90 / 2.0,
    }
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
        println!("\n# {op} ({unit}: median [p10-p90]) {header}");
        print!("{:<10}", "# Size");
        for i in &imps {
            print!("{:>34}", i);
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
                        let cell = format!("{:.2} [{:.2}-{:.2}]", s.median, s.p10, s.p90);
                        print!("{cell:>34}");
                    }
                    None => print!("{:>34}", "-"),
                }
            }
            println!();
        }
    }
}

/// Ratios of `num` over `den` (latency: >1 means `num` is slower).
fn print_ratios(t: &Table, pairs: &[(&str, &str)]) {
    println!(
        "\n# ratios of medians (time ratio: >1 means the first is slower; for bw, the inverse)"
    );
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

fn rank_main(o: &Opts) -> Res<()> {
    let universe = dsmpi::init()?;
    let w = universe.world();
    let mut t = Table::new();
    let mut o = o.clone();
    let emit = o.emit;
    o.emit = emit && w.rank() == 0;
    bench_dsmpi(&w, &o, &mut t)?;
    if w.transport().native().is_some() {
        bench_native_choice(&w, &o, &mut t)?;
    }
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
        if f.len() != 7 || f[0] != "@" {
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

fn compare(np: usize, o: &Opts, passthrough: &[String]) -> Res<()> {
    let exe = std::env::current_exe()?;
    let mut t = Table::new();
    let args: Vec<String> = passthrough
        .iter()
        .cloned()
        .chain(["--emit".into()])
        .collect();
    match find_dsmexec() {
        Some(d) => collect(
            Command::new(d)
                .args(["-n", &np.to_string()])
                .arg(&exe)
                .args(&args),
            "tcp",
            &mut t,
        )?,
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
            ("dsmpi/ompi-tcp", "ompi-tcp"),
            ("dsmpi/ompi-sm", "ompi-sm"),
            ("native/ompi-sm", "ompi-sm"),
            ("dsmpi/ompi-sm", "native/ompi-sm"),
        ],
    );
    Ok(())
}

const USAGE: &str = "usage: dsmpi_bench [--compare [-n N]] [--raw-tcp] [--samples K] [--ops a,b,..] [--max-size BYTES] [--emit]
  ops: latency bw bcast scatter alltoall allreduce
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
    let mut args = std::env::args().skip(1);
    let parsed: Res<()> = (|| {
        while let Some(a) = args.next() {
            let mut val = |name: &str| args.next().ok_or_else(|| format!("{name} needs a value"));
            match a.as_str() {
                "--compare" => do_compare = true,
                "--raw-tcp" => raw = true,
                "--emit" => o.emit = true,
                "-n" => np = val("-n")?.parse()?,
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
        if do_compare {
            compare(np, &o, &passthrough)
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
