//! Point-to-point semantics over the `mpi` backend, as real processes under `mpirun`.
//!
//! A test without the libtest harness: run by `cargo test --features mpi`, it finds
//! `mpirun` and launches itself under it (`--oversubscribe`, and
//! `--allow-run-as-root` when root), once on shared memory and once restricted to TCP
//! (`--mca btl tcp,self`). Started by mpirun (its environment says so), it is one rank
//! of the check: `dsmpi_runtime::init()` must pick the `mpi` backend, and every check
//! below runs; any failure exits non-zero, which fails the job and the test.
//!
//! The same binary runs under `dsmexec -n 4` as well (the checks only use the public
//! API), which is the point of the backend: one program, either launcher.
//!
//! Knobs: `DSMPI_MPIRUN` (the mpirun to use), `DSMPI_MPI_NP` (ranks, default 4).

use std::process::{Command, ExitCode};

use dsmpi_runtime::{scope, wait_all, Communicator, Error, ANY_SOURCE, ANY_TAG};

fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

type Check = Result<(), String>;

/// A named check, run on every rank.
type NamedCheck = (&'static str, fn(&Communicator) -> Check);

fn ensure(cond: bool, what: impl FnOnce() -> String) -> Check {
    if cond {
        Ok(())
    } else {
        Err(what())
    }
}

fn e2s(e: Error) -> String {
    e.to_string()
}

fn ring(w: &Communicator) -> Check {
    let (me, n) = (w.rank(), w.size());
    let mut tok = [0u64];
    if me == 0 {
        w.send(&[1u64], (me + 1) % n, 3).map_err(e2s)?;
        w.recv_into(&mut tok, (me + n - 1) % n, 3).map_err(e2s)?;
        ensure(tok[0] == n as u64, || {
            format!("ring token {} != {n}", tok[0])
        })
    } else {
        w.recv_into(&mut tok, me - 1, 3).map_err(e2s)?;
        tok[0] += 1;
        w.send(&tok, (me + 1) % n, 3).map_err(e2s)
    }
}

/// Eager and rendezvous messages interleaved on one (ctx, tag) keep their order.
fn order_across_protocols(w: &Communicator) -> Check {
    let sizes = [3usize, 200_000, 0, 70_000, 1, 1 << 20, 5, 65_536, 65_537];
    let me = w.rank();
    if me == 1 {
        for (i, &len) in sizes.iter().enumerate() {
            w.send(&pattern(len, i as u64), 0, 9).map_err(e2s)?;
        }
    } else if me == 0 {
        // Let them all arrive first, so that most are matched from the unexpected queue.
        w.probe(1, 9).map_err(e2s)?;
        for (i, &len) in sizes.iter().enumerate() {
            let (v, st) = w.recv_vec::<u8>(1, 9).map_err(e2s)?;
            ensure(st.bytes() == len && v == pattern(len, i as u64), || {
                format!("message {i}: got {} bytes, expected {len}", st.bytes())
            })?;
        }
    }
    Ok(())
}

/// Wildcards, statuses, probe and iprobe.
fn wildcards_and_probe(w: &Communicator) -> Check {
    let (me, n) = (w.rank(), w.size());
    if me == 0 {
        let mut seen = vec![false; n];
        for _ in 1..n {
            let st = w.probe(ANY_SOURCE, ANY_TAG).map_err(e2s)?;
            ensure(st.bytes() == 8 * st.source(), || {
                format!("probe said {st:?}")
            })?;
            let (v, st2) = w.recv_vec::<u64>(st.source(), ANY_TAG).map_err(e2s)?;
            ensure(st2 == st && st.tag() == 100 + st.source() as i32, || {
                format!("probe {st:?} vs recv {st2:?}")
            })?;
            ensure(v.iter().all(|&x| x == st.source() as u64), || {
                "payload".into()
            })?;
            seen[st.source()] = true;
        }
        ensure(seen[1..].iter().all(|&s| s), || {
            "a sender was missed".into()
        })?;
        ensure(w.iprobe(ANY_SOURCE, 12345).map_err(e2s)?.is_none(), || {
            "iprobe found a message nobody sent".into()
        })
    } else {
        w.send(&vec![me as u64; me], 0, 100 + me as i32)
            .map_err(e2s)
    }
}

/// A message longer than the receive buffer is an error, eager or rendezvous, and the
/// next message still arrives.
fn truncation(w: &Communicator) -> Check {
    match w.rank() {
        1 => {
            w.send(&[7u8; 16], 0, 5).map_err(e2s)?;
            w.send(&vec![8u8; 100_000], 0, 5).map_err(e2s)?;
            w.send(&[9u8; 4], 0, 5).map_err(e2s)
        }
        0 => {
            let mut small = [0u8; 8];
            for len in [16usize, 100_000] {
                match w.recv_into(&mut small, 1, 5) {
                    Err(Error::Truncated {
                        sender: 1,
                        tag: 5,
                        len: l,
                        capacity: 8,
                    }) if l == len => {}
                    other => return Err(format!("{len}-byte truncation: got {other:?}")),
                }
            }
            let st = w.recv_into(&mut small, 1, 5).map_err(e2s)?;
            ensure(st.bytes() == 4 && small[..4] == [9; 4], || {
                format!("after truncation: {st:?} {small:?}")
            })
        }
        _ => Ok(()),
    }
}

/// Contexts: a dup'ed communicator and the library plane never match world receives,
/// even on equal tags; split groups talk among themselves.
fn contexts(w: &Communicator) -> Check {
    let d = w.dup();
    let lib = w.library();
    let (me, n) = (w.rank(), w.size());
    if me == 1 {
        d.send(&[1u32], 0, 0).map_err(e2s)?;
        lib.send(&[2u32], 0, 0).map_err(e2s)?;
        w.send(&[3u32], 0, 0).map_err(e2s)?;
    } else if me == 0 {
        let mut x = [0u32];
        w.recv_into(&mut x, 1, 0).map_err(e2s)?;
        ensure(x[0] == 3, || format!("world got {}", x[0]))?;
        lib.recv_into(&mut x, 1, 0).map_err(e2s)?;
        ensure(x[0] == 2, || format!("library got {}", x[0]))?;
        d.recv_into(&mut x, ANY_SOURCE, ANY_TAG).map_err(e2s)?;
        ensure(x[0] == 1, || format!("dup got {}", x[0]))?;
    }
    let half = w
        .split((me % 2) as i32, -(me as i32))
        .map_err(e2s)?
        .ok_or("split left a rank out")?;
    let expect = n / 2 + (n % 2) * usize::from(me % 2 == 0);
    ensure(half.size() == expect, || {
        format!("split size {}", half.size())
    })?;
    // Keys are reversed: the highest world rank of each colour is rank 0.
    let mut sum = [0u64];
    if half.rank() == 0 {
        for _ in 1..half.size() {
            let mut x = [0u64];
            half.recv_into(&mut x, ANY_SOURCE, 1).map_err(e2s)?;
            sum[0] += x[0];
        }
        let want: u64 = (0..n)
            .filter(|r| r % 2 == me % 2 && *r != me)
            .map(|r| r as u64)
            .sum();
        ensure(sum[0] == want, || format!("split sum {} != {want}", sum[0]))
    } else {
        half.send(&[me as u64], 0, 1).map_err(e2s)
    }
}

/// Non-blocking exchange with every rank, self included, small and large.
fn nonblocking_all_pairs(w: &Communicator) -> Check {
    let (me, n) = (w.rank(), w.size());
    for len in [8usize, 300_000] {
        let outs: Vec<Vec<u8>> = (0..n).map(|d| pattern(len, (me * 64 + d) as u64)).collect();
        let mut ins = vec![vec![0u8; len]; n];
        let sts = scope(|s| {
            let mut reqs = Vec::new();
            for (src, b) in ins.iter_mut().enumerate() {
                reqs.push(w.irecv_into(s, b, src, 11)?);
            }
            for (d, o) in outs.iter().enumerate() {
                reqs.push(w.isend(s, o, d, 11)?);
            }
            wait_all(reqs)
        })
        .map_err(e2s)?;
        ensure(sts.len() == 2 * n, || "statuses".into())?;
        for (src, b) in ins.iter().enumerate() {
            ensure(*b == pattern(len, (src * 64 + me) as u64), || {
                format!("{len} bytes from {src} differ")
            })?;
        }
    }
    Ok(())
}

/// Several threads of each rank use the transport at once, each on its own tag.
fn threads(w: &Communicator) -> Check {
    let (me, n) = (w.rank(), w.size());
    let (next, prev) = ((me + 1) % n, (me + n - 1) % n);
    std::thread::scope(|s| {
        let hs: Vec<_> = (0..3)
            .map(|t| {
                s.spawn(move || -> Check {
                    for i in 0..200u64 {
                        let len = if i % 50 == 0 { 100_000 } else { 24 };
                        let out = pattern(len, i * 7 + t);
                        let mut inb = vec![0u8; len];
                        w.sendrecv(&out, next, 20 + t as i32, &mut inb, prev, 20 + t as i32)
                            .map_err(e2s)?;
                        ensure(inb == out, || format!("thread {t} message {i}"))?;
                    }
                    Ok(())
                })
            })
            .collect();
        // Threads not joined here are joined by the scope.
        hs.into_iter()
            .try_for_each(|h| h.join().unwrap_or_else(|_| Err("a thread panicked".into())))
    })
}

fn rank_main() -> ExitCode {
    let universe = match dsmpi_runtime::init() {
        Ok(u) => u,
        Err(e) => {
            eprintln!("init: {e}");
            return ExitCode::FAILURE;
        }
    };
    let w = universe.world();
    let checks: [NamedCheck; 7] = [
        ("ring", ring),
        ("order across protocols", order_across_protocols),
        ("wildcards and probe", wildcards_and_probe),
        ("truncation", truncation),
        ("contexts", contexts),
        ("non-blocking all pairs", nonblocking_all_pairs),
        ("threads", threads),
    ];
    let backend = w.transport().name();
    let mut failed = false;
    for (name, f) in checks {
        match f(&w) {
            Ok(()) => {
                if w.rank() == 0 {
                    println!("ok   {name} ({backend}, {} ranks)", w.size());
                }
            }
            Err(e) => {
                eprintln!("FAIL {name} on rank {}: {e}", w.rank());
                failed = true;
                break;
            }
        }
    }
    if failed {
        // Peers may be blocked on this rank: end the whole job now.
        universe.abort(1, "mpi_p2p check failed");
    }
    match universe.finalize() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("finalize: {e}");
            ExitCode::FAILURE
        }
    }
}

fn launched() -> bool {
    [
        "OMPI_COMM_WORLD_RANK",
        "PMI_RANK",
        "PMIX_RANK",
        "DSMPI_RANK",
    ]
    .iter()
    .any(|v| std::env::var_os(v).is_some())
}

fn main() -> ExitCode {
    if launched() {
        return rank_main();
    }
    // The test driver: `cargo test` runs this binary without a launcher.
    if std::env::args().any(|a| a == "--list") {
        return ExitCode::SUCCESS;
    }
    let mpirun = std::env::var("DSMPI_MPIRUN").unwrap_or_else(|_| "mpirun".into());
    if Command::new(&mpirun).arg("--version").output().is_err() {
        println!("mpi_p2p: SKIPPED: no `{mpirun}` on PATH (install openmpi-bin)");
        return ExitCode::SUCCESS;
    }
    let np = std::env::var("DSMPI_MPI_NP").unwrap_or_else(|_| "4".into());
    let Ok(me) = std::env::current_exe() else {
        eprintln!("mpi_p2p: cannot find my own executable");
        return ExitCode::FAILURE;
    };
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    for btl in [None, Some("tcp,self")] {
        let mut cmd = Command::new(&mpirun);
        cmd.args(["--oversubscribe", "-n", &np]);
        if root {
            cmd.arg("--allow-run-as-root");
        }
        if let Some(b) = btl {
            cmd.args(["--mca", "btl", b]);
        }
        cmd.arg(&me).env_remove("DSMPI_RANK");
        println!("mpi_p2p: {cmd:?}");
        match cmd.status() {
            Ok(s) if s.success() => {}
            Ok(s) => {
                eprintln!("mpi_p2p: FAILED ({s}) with btl {btl:?}");
                return ExitCode::FAILURE;
            }
            Err(e) => {
                eprintln!("mpi_p2p: could not run {mpirun}: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    println!("mpi_p2p: all checks passed on shared memory and TCP");
    ExitCode::SUCCESS
}
