//! Window latency and kernel benchmark (not a timed test).
//!
//! `cargo run --release -p dsmpi-window --example window_bench -- --local 2`
//! (ranks as threads) or `dsmexec -n 2 target/release/examples/window_bench`
//! (processes over TCP). Rank 0 prints medians (and p99 for page faults) in µs.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use dsmpi_runtime::{scope, wait_all, Communicator};
use dsmpi_window::{Datatype, Layout, LockType, Op, Typed, WinOptions, Window};

const REPS: usize = 2000;

/// Windows that keep the fault path between every pair of ranks (served as
/// `DSMPI_WIN_FAULT_PATH` says, by default in the faulting thread).
fn faulting() -> WinOptions {
    WinOptions {
        layout: Layout::Blocked,
        share_same_host: false,
        ..WinOptions::default()
    }
}

fn stats(mut v: Vec<f64>) -> (f64, f64) {
    v.sort_by(|a, b| a.total_cmp(b));
    let med = v[v.len() / 2];
    let p99 = v[(v.len() * 99 / 100).min(v.len() - 1)];
    (med, p99)
}

fn time_us(
    reps: usize,
    mut f: impl FnMut() -> Result<(), Box<dyn std::error::Error>>,
) -> Result<Vec<f64>, Box<dyn std::error::Error>> {
    for _ in 0..reps / 10 {
        f()?;
    }
    let mut out = Vec::with_capacity(reps);
    for _ in 0..reps {
        let t = Instant::now();
        f()?;
        out.push(t.elapsed().as_secs_f64() * 1e6);
    }
    Ok(out)
}

fn report(me: usize, name: &str, v: Vec<f64>) {
    if me == 0 {
        let (m, p) = stats(v);
        println!("{name:<40} median {m:>9.2} µs   p99 {p:>9.2} µs");
    }
}

/// Plain loopback TCP ping-pong of `len` bytes between two threads of rank 0.
fn raw_tcp(len: usize) -> Vec<f64> {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    let echo = std::thread::spawn(move || {
        let (mut s, _) = l.accept().expect("accept");
        s.set_nodelay(true).ok();
        let mut b = vec![0u8; len];
        while s.read_exact(&mut b).is_ok() {
            if s.write_all(&b).is_err() {
                break;
            }
        }
    });
    let mut c = TcpStream::connect(addr).expect("connect");
    c.set_nodelay(true).ok();
    let mut b = vec![0u8; len];
    let mut out = Vec::new();
    for i in 0..REPS + REPS / 10 {
        let t = Instant::now();
        c.write_all(&b).expect("write");
        c.read_exact(&mut b).expect("read");
        if i >= REPS / 10 {
            out.push(t.elapsed().as_secs_f64() * 1e6);
        }
    }
    drop(c);
    echo.join().ok();
    out
}

fn bench(world: Communicator) -> Result<(), Box<dyn std::error::Error>> {
    let (me, n) = (world.rank(), world.size());
    if n < 2 {
        println!("window_bench needs at least 2 ranks");
        return Ok(());
    }
    let peer = 1;
    if me == 0 {
        println!("# {n} ranks, backend {}", world.transport().name());
        report(me, "raw TCP loopback round trip 8 B", raw_tcp(8));
        report(me, "raw TCP loopback round trip 4 KiB", raw_tcp(4096));
    }
    // Runtime round trip.
    for len in [8usize, 4096] {
        let mut b = vec![0u8; len];
        if me == 0 {
            let v = time_us(REPS, || {
                world.send(&b, peer, 0)?;
                world.recv_into(&mut b, peer, 0)?;
                Ok(())
            })?;
            report(me, &format!("runtime send/recv round trip {len} B"), v);
        } else if me == peer {
            for _ in 0..REPS + REPS / 10 {
                world.recv_into(&mut b, 0, 0)?;
                world.send(&b, 0, 0)?;
            }
        }
    }
    // The fault path even between same-host ranks (they would share pages and
    // never fault): this bench measures fetches, twins, diffs and migration.
    let win = Window::allocate_opts(&world, 1 << 20, faulting())?;
    win.fence()?;
    if me == 0 {
        for len in [8usize, 4096] {
            let mut buf = vec![0u64; len / 8];
            let g = time_us(REPS, || Ok(win.get(&mut buf, peer, 0)?))?;
            report(me, &format!("get {len} B"), g);
            let p = time_us(REPS, || {
                win.put(&buf, peer, 0)?;
                Ok(win.flush(peer)?)
            })?;
            report(me, &format!("put {len} B + flush"), p);
            let a = time_us(REPS, || {
                win.accumulate(&buf, peer, 0, Op::Sum)?;
                Ok(win.flush(peer)?)
            })?;
            report(me, &format!("accumulate {len} B + flush"), a);
            let t = Instant::now();
            for _ in 0..REPS {
                win.put(&buf, peer, 0)?;
            }
            win.flush(peer)?;
            report(
                me,
                &format!("put {len} B pipelined (per op)"),
                vec![t.elapsed().as_secs_f64() * 1e6 / REPS as f64],
            );
        }
        // A strided column (64 u64, one every 8): one typed request against 64 gets.
        let col = Datatype::vector(64, 1, 8, &Datatype::of::<u64>())?.commit();
        let flat = Datatype::of::<u64>().commit();
        let mut colbuf = vec![0u64; 64];
        let t = time_us(REPS / 4, || {
            Ok(win.get_typed(
                &mut colbuf,
                Typed::new(&flat, 64),
                peer,
                0,
                Typed::new(&col, 1),
            )?)
        })?;
        report(me, "get_typed strided column 64 x 8 B", t);
        let e = time_us(REPS / 4, || {
            for (i, x) in colbuf.iter_mut().enumerate() {
                win.get(std::slice::from_mut(x), peer, 8 * i)?;
            }
            Ok(())
        })?;
        report(me, "same column as 64 gets of 8 B", e);
        let f = time_us(REPS, || {
            win.fetch_and_op(1u64, peer, 0, Op::Sum)?;
            Ok(())
        })?;
        report(me, "fetch_and_op 8 B", f);
        let l = time_us(REPS / 4, || {
            win.lock(LockType::Exclusive, peer)?;
            Ok(win.unlock(peer)?)
        })?;
        report(me, "lock/unlock exclusive (empty)", l);
        // Remote page faults: every iteration drops the cached copy (lock on the
        // home invalidates), then one load faults and fetches the page. Epochs
        // alternate with ones that get a page instead, timed the same way, so that
        // the fault is compared with a get made in the same surroundings.
        let v = win.view::<u64>()?;
        let mut faults = Vec::with_capacity(REPS);
        let mut gets = Vec::with_capacity(REPS);
        let mut page = vec![0u64; 512];
        let mut sink = 0u64;
        for i in 0..2 * REPS {
            let disp = (i / 2 % 64) * 512;
            win.lock(LockType::Shared, peer)?;
            let t = Instant::now();
            if i % 2 == 0 {
                sink = sink.wrapping_add(v.load(v.index_of(peer, disp)?)?);
                faults.push(t.elapsed().as_secs_f64() * 1e6);
            } else {
                win.get(&mut page, peer, disp)?;
                gets.push(t.elapsed().as_secs_f64() * 1e6);
            }
            win.unlock(peer)?;
        }
        std::hint::black_box(sink.wrapping_add(page[0]));
        report(me, "remote read fault (4 KiB page fetch)", faults);
        report(me, "get 4096 B, timed like the fault", gets);
        let mut wf = Vec::with_capacity(REPS / 4);
        for i in 0..REPS / 4 {
            let idx = v.index_of(peer, (i % 64) * 512 + 1)?;
            win.lock(LockType::Exclusive, peer)?;
            let t = Instant::now();
            v.store(idx, i as u64)?;
            wf.push(t.elapsed().as_secs_f64() * 1e6);
            win.unlock(peer)?;
        }
        report(me, "remote write fault (fetch + twin)", wf);
        // A view access on a valid page (this rank's own region): the per-element
        // cost of going through the view, which `DSMPI_WIN_FAULT_PATH` changes.
        let own = v.index_of(me, 0)?;
        let words = 512 * 64;
        let t = Instant::now();
        let mut acc = 0u64;
        for k in 0..16 * words {
            acc = acc.wrapping_add(v.load(own + k % words)?);
        }
        std::hint::black_box(acc);
        let per = t.elapsed().as_secs_f64() * 1e9 / (16 * words) as f64;
        if me == 0 {
            println!(
                "{:<40} {per:>9.2} ns per element",
                "view load of a valid page"
            );
        }
        let st = win.stats();
        println!("# rank 0 window stats: {st:?}");
    }
    win.fence()?;
    let fe = time_us(200, || Ok(win.fence()?))?;
    report(me, &format!("fence ({n} ranks)"), fe);
    let la = time_us(100, || {
        win.lock_all()?;
        Ok(win.unlock_all()?)
    })?;
    report(me, &format!("lock_all/unlock_all ({n} ranks)"), la);
    win.fence()?;
    halo(&world, &win)?;
    gups(&world)?;
    migration(&world)?;
    win.free()?;
    Ok(())
}

/// 1-D stencil halo exchange, three ways; `cells` doubles per rank, 1 ghost each side.
fn halo(world: &Communicator, _w: &Window) -> Result<(), Box<dyn std::error::Error>> {
    let (me, n) = (world.rank(), world.size());
    let cells = 1024;
    let iters = 300;
    let left = (me + n - 1) % n;
    let right = (me + 1) % n;
    // Window layout per rank: [ghost_left, ghost_right].
    let win = Window::allocate(world, 16)?;
    let mut u: Vec<f64> = (0..cells).map(|i| (i + me * cells) as f64).collect();
    let step = |u: &mut Vec<f64>, gl: f64, gr: f64| {
        let old = u.clone();
        for i in 0..cells {
            let l = if i == 0 { gl } else { old[i - 1] };
            let r = if i + 1 == cells { gr } else { old[i + 1] };
            u[i] = (l + old[i] + r) / 3.0;
        }
    };
    let mut results = Vec::new();
    // fence
    let mut a = u.clone();
    win.fence()?;
    let t = Instant::now();
    let mut slow = Vec::new();
    for _ in 0..iters {
        let ti = Instant::now();
        win.put(&[a[cells - 1]], right, 0)?;
        win.put(&[a[0]], left, 1)?;
        win.fence()?;
        let mut g = [0f64; 2];
        win.get(&mut g, me, 0)?;
        step(&mut a, g[0], g[1]);
        win.fence()?;
        let d = ti.elapsed();
        if d > Duration::from_millis(2) {
            slow.push(d.as_millis());
        }
    }
    if me == 0 && !slow.is_empty() {
        println!(
            "# fence halo: {} of {iters} iterations over 2 ms: {slow:?} ms",
            slow.len()
        );
    }
    results.push(("halo stencil: fence", t.elapsed(), a[0]));
    // PSCW
    let mut b = u.clone();
    let nb = [left, right];
    let t = Instant::now();
    for _ in 0..iters {
        win.post(&nb)?;
        win.start(&nb)?;
        win.put(&[b[cells - 1]], right, 0)?;
        win.put(&[b[0]], left, 1)?;
        win.complete()?;
        win.wait()?;
        let mut g = [0f64; 2];
        win.get(&mut g, me, 0)?;
        step(&mut b, g[0], g[1]);
    }
    results.push(("halo stencil: PSCW", t.elapsed(), b[0]));
    // isend/irecv
    let t = Instant::now();
    for _ in 0..iters {
        let (mut gl, mut gr) = ([0f64], [0f64]);
        let (sl, sr) = ([u[0]], [u[cells - 1]]);
        scope(|s| -> Result<(), Box<dyn std::error::Error>> {
            let r1 = world.irecv_into(s, &mut gl, left, 7)?;
            let r2 = world.irecv_into(s, &mut gr, right, 8)?;
            let s1 = world.isend(s, &sr, right, 7)?;
            let s2 = world.isend(s, &sl, left, 8)?;
            wait_all(vec![r1, r2, s1, s2])?;
            Ok(())
        })?;
        step(&mut u, gl[0], gr[0]);
    }
    results.push(("halo stencil: isend/irecv", t.elapsed(), u[0]));
    win.free()?;
    if me == 0 {
        for (name, d, v) in results {
            println!(
                "{name:<40} {:>9.2} µs/iteration  (u[0] = {v:.6})",
                d.as_secs_f64() * 1e6 / iters as f64
            );
        }
    }
    Ok(())
}

/// Random increments of a distributed table: one-sided accumulates vs bucketed
/// all-to-all over point-to-point.
fn gups(world: &Communicator) -> Result<(), Box<dyn std::error::Error>> {
    let (me, n) = (world.rank(), world.size());
    let per_rank = 1 << 14;
    let updates = 20_000usize;
    let mut x = 0x9E37_79B9u64 ^ me as u64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let targets: Vec<(usize, usize)> = (0..updates)
        .map(|_| {
            let r = next();
            (
                (r % n as u64) as usize,
                ((r >> 20) % per_rank as u64) as usize,
            )
        })
        .collect();
    let win = Window::allocate(world, per_rank * 8)?;
    win.fence()?;
    let t = Instant::now();
    for &(r, i) in &targets {
        win.accumulate(&[1u64], r, i, Op::Sum)?;
    }
    win.fence()?;
    let one_sided = t.elapsed();
    let mut local = vec![0u64; per_rank];
    win.get(&mut local, me, 0)?;
    let sum1: u64 = local.iter().sum();
    // Bucketed: one message per destination with all its indices.
    let t = Instant::now();
    let mut buckets = vec![Vec::<u32>::new(); n];
    for &(r, i) in &targets {
        buckets[r].push(i as u32);
    }
    let mut table = vec![0u64; per_rank];
    for (r, b) in buckets.iter().enumerate() {
        if r != me {
            world.send(b, r, 9)?;
        }
    }
    for &i in &buckets[me] {
        table[i as usize] += 1;
    }
    for r in (0..n).filter(|&r| r != me) {
        let (v, _) = world.recv_vec::<u32>(r, 9)?;
        for i in v {
            table[i as usize] += 1;
        }
    }
    let bucketed = t.elapsed();
    let sum2: u64 = table.iter().sum();
    win.fence()?;
    win.free()?;
    if sum1 != sum2 {
        return Err(format!("gups: one-sided total {sum1} != bucketed {sum2}").into());
    }
    if me == 0 {
        let per = |d: Duration| d.as_secs_f64() * 1e9 / updates as f64;
        println!(
            "random accumulate, one-sided             {:>9.1} ns/update (total {:?})",
            per(one_sided),
            one_sided
        );
        println!(
            "random accumulate, bucketed all-to-all   {:>9.1} ns/update (total {:?})",
            per(bucketed),
            bucketed
        );
    }
    Ok(())
}

/// Page migration: rank 0 alone writes `pages` pages homed at rank 1 through its view,
/// every fence epoch. Epoch 0 pays a write fault (fetch + twin) per page and the diffs
/// at the fence; epoch 1 the same plus the migration at its fence; from epoch 2 on the
/// pages are rank 0's and the epoch is the stores and a fence. Fresh window per
/// repetition, so every repetition sees the migration happen; allocation not timed.
fn migration(world: &Communicator) -> Result<(), Box<dyn std::error::Error>> {
    let (me, n) = (world.rank(), world.size());
    if n < 2 {
        return Ok(());
    }
    let reps = 40;
    let after = 8;
    for pages in [1usize, 8] {
        let (mut e0, mut e1, mut later) = (Vec::new(), Vec::new(), Vec::new());
        let mut migrations = 0;
        for _ in 0..reps {
            let win = Window::allocate_opts(world, pages * 4096, faulting())?;
            let v = win.view::<u64>()?;
            win.fence()?;
            for epoch in 0..2 + after {
                let t = Instant::now();
                if me == 0 {
                    for p in 0..pages {
                        let base = v.index_of(1, p * 512)?;
                        for w in 0..16 {
                            v.store(base + w * 32, (epoch * 1000 + w) as u64)?;
                        }
                    }
                }
                win.fence()?;
                let us = t.elapsed().as_secs_f64() * 1e6;
                match epoch {
                    0 => e0.push(us),
                    1 => e1.push(us),
                    _ => later.push(us),
                }
            }
            migrations = win.stats().migrations;
            win.free()?;
        }
        let tag = format!("{pages} page(s), {n} ranks");
        report(me, &format!("sole writer epoch 0 ({tag})"), e0);
        report(me, &format!("sole writer epoch 1, migrates ({tag})"), e1);
        report(me, &format!("sole writer epochs 2+ ({tag})"), later);
        if me == 0 {
            println!("# migrations per repetition: {migrations}");
        }
    }
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--local") {
        let n: usize = args.get(i + 1).map(|s| s.parse()).transpose()?.unwrap_or(2);
        let tcp = args.iter().any(|a| a == "--tcp");
        let backend = if tcp {
            dsmpi_runtime::LocalBackend::Tcp
        } else {
            dsmpi_runtime::LocalBackend::Sockets
        };
        let res =
            dsmpi_runtime::run_local_with(backend, n, |w| bench(w).map_err(|e| e.to_string()))?;
        for r in res {
            r?;
        }
        return Ok(());
    }
    let universe = dsmpi_runtime::init()?;
    bench(universe.world())
}
