//! `Native` collectives (MPI's own, on the `mpi` backend) give the same results as
//! dsmpi's algorithms, on the world communicator, a split one and a dup: bcast,
//! allreduce, alltoall, gather, scatter, barrier, reduce, allgather, scan, exscan and
//! the v forms (gatherv, scatterv, allgatherv, alltoallv).
//!
//! A test without the libtest harness, like the runtime's `mpi_p2p`: run by
//! `cargo test -p dsmpi-collectives --features mpi`, it finds `mpirun` and launches
//! itself under it (`--oversubscribe`, `--allow-run-as-root` when root) as 4 ranks;
//! started by mpirun, it is one rank of the check and every failure exits non-zero.
//!
//! Knobs: `DSMPI_MPIRUN` (the mpirun to use), `DSMPI_MPI_NP` (ranks, default 4).

use std::process::{Command, ExitCode};

use dsmpi_collectives::prelude::*;
use dsmpi_runtime::Communicator;

type Check = Result<(), String>;

fn e2s(e: dsmpi_collectives::Error) -> String {
    e.to_string()
}

fn ensure(cond: bool, what: impl FnOnce() -> String) -> Check {
    if cond {
        Ok(())
    } else {
        Err(what())
    }
}

/// Deterministic data that differs by rank and position.
fn data(rank: usize, len: usize, salt: u64) -> Vec<u64> {
    (0..len as u64)
        .map(|i| (rank as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (i * 31 + salt))
        .collect()
}

/// Broadcast from every root, small (eager) and large (rendezvous in dsmpi, MPI's
/// own protocol natively): Native and binomial agree.
fn bcast(c: &Communicator) -> Check {
    for len in [1usize, 1000, 40_000] {
        for root in 0..c.size() {
            let mut own = if c.rank() == root {
                data(root, len, 1)
            } else {
                vec![0; len]
            };
            let mut native = own.clone();
            c.broadcast_with(Bcast::Binomial, root, &mut own)
                .map_err(e2s)?;
            c.broadcast_with(Bcast::Native, root, &mut native)
                .map_err(e2s)?;
            ensure(own == native && own == data(root, len, 1), || {
                format!("bcast of {len} u64 from root {root}: Native differs")
            })?;
        }
    }
    Ok(())
}

/// Allreduce on integers (exact) and floats of integral values (exact too, whatever
/// the order of the additions).
fn allreduce(c: &Communicator) -> Check {
    for len in [1usize, 333, 20_000] {
        let send = data(c.rank(), len, 2);
        for op in [SystemOp::Sum, SystemOp::Max, SystemOp::BitXor] {
            let (mut own, mut native) = (vec![0u64; len], vec![0u64; len]);
            c.all_reduce_with(Allreduce::RecursiveDoubling, &send, &mut own, op)
                .map_err(e2s)?;
            c.all_reduce_with(Allreduce::Native, &send, &mut native, op)
                .map_err(e2s)?;
            ensure(own == native, || {
                format!("allreduce {op:?} of {len} u64 differs")
            })?;
        }
        let fs: Vec<f64> = send.iter().map(|&x| (x % 1000) as f64).collect();
        let (mut own, mut native) = (vec![0f64; len], vec![0f64; len]);
        c.all_reduce_with(Allreduce::Ring, &fs, &mut own, SystemOp::Sum)
            .map_err(e2s)?;
        c.all_reduce_with(Allreduce::Native, &fs, &mut native, SystemOp::Sum)
            .map_err(e2s)?;
        ensure(own == native, || {
            format!("allreduce Sum of {len} f64 differs")
        })?;
    }
    Ok(())
}

fn alltoall(c: &Communicator) -> Check {
    for block in [1usize, 100, 10_000] {
        let send = data(c.rank(), block * c.size(), 3);
        let (mut own, mut native) = (vec![0u64; send.len()], vec![0u64; send.len()]);
        c.all_to_all_with(Alltoall::Bruck, &send, &mut own)
            .map_err(e2s)?;
        c.all_to_all_with(Alltoall::Native, &send, &mut native)
            .map_err(e2s)?;
        ensure(own == native, || {
            format!("alltoall of {block}-u64 blocks differs")
        })?;
    }
    Ok(())
}

fn gather_scatter_barrier(c: &Communicator) -> Check {
    let (n, me) = (c.size(), c.rank());
    let root = n - 1;
    let block = data(me, 50, 4);
    let big = if me == root {
        vec![0u64; 50 * n]
    } else {
        Vec::new()
    };
    let (mut own, mut native) = (big.clone(), big);
    c.gather_with(Gather::Binomial, root, &block, &mut own)
        .map_err(e2s)?;
    c.gather_with(Gather::Native, root, &block, &mut native)
        .map_err(e2s)?;
    ensure(own == native, || "gather differs".into())?;
    let whole = if me == root {
        data(root, 50 * n, 5)
    } else {
        Vec::new()
    };
    let (mut own, mut native) = (vec![0u64; 50], vec![0u64; 50]);
    c.scatter_with(Scatter::Binary, root, &whole, &mut own)
        .map_err(e2s)?;
    c.scatter_with(Scatter::Native, root, &whole, &mut native)
        .map_err(e2s)?;
    ensure(own == native, || "scatter differs".into())?;
    c.barrier_with(Barrier::Native).map_err(e2s)
}

/// Reduce to every root, integers and floats of integral values (exact).
fn reduce(c: &Communicator) -> Check {
    let (n, me) = (c.size(), c.rank());
    for len in [1usize, 333, 20_000] {
        let send = data(me, len, 6);
        for root in 0..n {
            let recv_len = if me == root { len } else { 0 };
            for op in [SystemOp::Sum, SystemOp::Min, SystemOp::BitOr] {
                let (mut own, mut native) = (vec![0u64; recv_len], vec![0u64; recv_len]);
                c.reduce_with(Reduce::Binomial, root, &send, &mut own, op)
                    .map_err(e2s)?;
                c.reduce_with(Reduce::Native, root, &send, &mut native, op)
                    .map_err(e2s)?;
                ensure(own == native, || {
                    format!("reduce {op:?} of {len} u64 to root {root} differs")
                })?;
            }
        }
        let fs: Vec<f64> = send.iter().map(|&x| (x % 1000) as f64).collect();
        let recv_len = if me == 0 { len } else { 0 };
        let (mut own, mut native) = (vec![0f64; recv_len], vec![0f64; recv_len]);
        c.reduce_with(Reduce::Linear, 0, &fs, &mut own, SystemOp::Sum)
            .map_err(e2s)?;
        c.reduce_with(Reduce::Native, 0, &fs, &mut native, SystemOp::Sum)
            .map_err(e2s)?;
        ensure(own == native, || format!("reduce Sum of {len} f64 differs"))?;
    }
    Ok(())
}

fn allgather(c: &Communicator) -> Check {
    for block in [1usize, 100, 10_000] {
        let send = data(c.rank(), block, 7);
        let (mut own, mut native) = (vec![0u64; block * c.size()], vec![0u64; block * c.size()]);
        c.all_gather_with(Allgather::Bruck, &send, &mut own)
            .map_err(e2s)?;
        c.all_gather_with(Allgather::Native, &send, &mut native)
            .map_err(e2s)?;
        ensure(own == native, || {
            format!("allgather of {block}-u64 blocks differs")
        })?;
    }
    Ok(())
}

/// Inclusive and exclusive scans; rank 0's buffer of an exclusive scan must be left
/// as it was by both.
fn scan(c: &Communicator) -> Check {
    for len in [1usize, 333, 20_000] {
        let send = data(c.rank(), len, 8);
        for op in [SystemOp::Sum, SystemOp::Max, SystemOp::BitXor] {
            let (mut own, mut native) = (vec![0u64; len], vec![0u64; len]);
            c.scan_with(Scan::RecursiveDoubling, &send, &mut own, op)
                .map_err(e2s)?;
            c.scan_with(Scan::Native, &send, &mut native, op)
                .map_err(e2s)?;
            ensure(own == native, || {
                format!("scan {op:?} of {len} u64 differs")
            })?;
            let (mut own, mut native) = (vec![7u64; len], vec![7u64; len]);
            c.exclusive_scan_with(Scan::Linear, &send, &mut own, op)
                .map_err(e2s)?;
            c.exclusive_scan_with(Scan::Native, &send, &mut native, op)
                .map_err(e2s)?;
            ensure(own == native, || {
                format!("exscan {op:?} of {len} u64 differs")
            })?;
            ensure(c.rank() != 0 || native == vec![7u64; len], || {
                "exscan: Native wrote rank 0's buffer".into()
            })?;
        }
        let fs: Vec<f64> = send.iter().map(|&x| (x % 1000) as f64).collect();
        let (mut own, mut native) = (vec![0f64; len], vec![0f64; len]);
        c.scan_with(Scan::Linear, &fs, &mut own, SystemOp::Sum)
            .map_err(e2s)?;
        c.scan_with(Scan::Native, &fs, &mut native, SystemOp::Sum)
            .map_err(e2s)?;
        ensure(own == native, || format!("scan Sum of {len} f64 differs"))?;
    }
    Ok(())
}

/// Uneven counts (rank r has `base * (r + 1) + r` elements, one rank none) placed
/// back to front with gaps, so displacements matter: `(counts, displs, total)`.
fn v_layout(n: usize, base: usize) -> (Vec<usize>, Vec<usize>, usize) {
    let counts: Vec<usize> = (0..n)
        .map(|r| if r == 1 { 0 } else { base * (r + 1) + r })
        .collect();
    let mut displs = vec![0; n];
    let mut at = 0;
    for r in (0..n).rev() {
        displs[r] = at;
        at += counts[r] + 3;
    }
    (counts, displs, at)
}

fn gatherv_scatterv(c: &Communicator) -> Check {
    let (n, me) = (c.size(), c.rank());
    for base in [1usize, 2_000] {
        let (counts, displs, total) = v_layout(n, base);
        for root in [0, n - 1] {
            let send = data(me, counts[me], 9);
            let whole = if me == root { total } else { 0 };
            let (mut own, mut native) = (vec![5u64; whole], vec![5u64; whole]);
            c.gatherv_with(Gather::Binomial, root, &send, &mut own, &counts, &displs)
                .map_err(e2s)?;
            c.gatherv_with(Gather::Native, root, &send, &mut native, &counts, &displs)
                .map_err(e2s)?;
            ensure(own == native, || {
                format!("gatherv (base {base}) to root {root} differs")
            })?;
            let src = if me == root {
                data(root, total, 10)
            } else {
                Vec::new()
            };
            let (mut own, mut native) = (vec![0u64; counts[me]], vec![0u64; counts[me]]);
            c.scatterv_with(Scatter::Binary, root, &src, &counts, &displs, &mut own)
                .map_err(e2s)?;
            c.scatterv_with(Scatter::Native, root, &src, &counts, &displs, &mut native)
                .map_err(e2s)?;
            ensure(own == native, || {
                format!("scatterv (base {base}) from root {root} differs")
            })?;
        }
    }
    Ok(())
}

fn allgatherv(c: &Communicator) -> Check {
    let me = c.rank();
    for base in [1usize, 2_000] {
        let (counts, displs, total) = v_layout(c.size(), base);
        let send = data(me, counts[me], 11);
        let (mut own, mut native) = (vec![5u64; total], vec![5u64; total]);
        c.all_gather_v_with(Allgatherv::Ring, &send, &mut own, &counts, &displs)
            .map_err(e2s)?;
        c.all_gather_v_with(Allgatherv::Native, &send, &mut native, &counts, &displs)
            .map_err(e2s)?;
        ensure(own == native, || {
            format!("allgatherv (base {base}) differs")
        })?;
    }
    Ok(())
}

/// Alltoallv where rank i sends `base * (i + j) % 5` elements to rank j (some none),
/// blocks stored back to front.
fn alltoallv(c: &Communicator) -> Check {
    let (n, me) = (c.size(), c.rank());
    for base in [1usize, 1_000] {
        let len = |i: usize, j: usize| base * ((i + j) % 5);
        let place = |counts: &[usize]| {
            let mut displs = vec![0; n];
            let mut at = 0;
            for r in (0..n).rev() {
                displs[r] = at;
                at += counts[r] + 1;
            }
            (displs, at)
        };
        let scounts: Vec<usize> = (0..n).map(|j| len(me, j)).collect();
        let rcounts: Vec<usize> = (0..n).map(|i| len(i, me)).collect();
        let (sdispls, stotal) = place(&scounts);
        let (rdispls, rtotal) = place(&rcounts);
        let send = data(me, stotal, 12);
        let (mut own, mut native) = (vec![5u64; rtotal], vec![5u64; rtotal]);
        for (alg, out) in [
            (Alltoallv::Pairwise, &mut own),
            (Alltoallv::Native, &mut native),
        ] {
            c.all_to_all_v_with(alg, &send, &scounts, &sdispls, out, &rcounts, &rdispls)
                .map_err(e2s)?;
        }
        ensure(own == native, || format!("alltoallv (base {base}) differs"))?;
    }
    Ok(())
}

/// Native and dsmpi collectives interleaved with p2p on the same communicator: the
/// collectives must not take the p2p messages, nor the other way round.
fn interleaved_with_p2p(c: &Communicator) -> Check {
    let (n, me) = (c.size(), c.rank());
    let next = (me + 1) % n;
    let prev = (me + n - 1) % n;
    // Sent before the collective, received after it.
    c.send(&[me as u64; 3], next, 11)
        .map_err(|e| e.to_string())?;
    let mut b = [me as u64];
    c.broadcast_with(Bcast::Native, 0, &mut b).map_err(e2s)?;
    let mut got = [0u64; 3];
    c.recv_into(&mut got, prev, 11).map_err(|e| e.to_string())?;
    ensure(b == [0] && got == [prev as u64; 3], || {
        format!("interleaved: bcast {b:?}, p2p {got:?}")
    })
}

type NamedCheck = (&'static str, fn(&Communicator) -> Check);

fn rank_main() -> ExitCode {
    let universe = match dsmpi_runtime::init() {
        Ok(u) => u,
        Err(e) => {
            eprintln!("init: {e}");
            return ExitCode::FAILURE;
        }
    };
    let w = universe.world();
    let checks: [NamedCheck; 11] = [
        ("bcast", bcast),
        ("allreduce", allreduce),
        ("alltoall", alltoall),
        ("gather, scatter, barrier", gather_scatter_barrier),
        ("reduce", reduce),
        ("allgather", allgather),
        ("scan, exscan", scan),
        ("gatherv, scatterv", gatherv_scatterv),
        ("allgatherv", allgatherv),
        ("alltoallv", alltoallv),
        ("interleaved with p2p", interleaved_with_p2p),
    ];
    // The world, then a split into two halves with reversed rank order (so that the
    // MPI communicator must follow dsmpi's group and rank order, not the world's),
    // then a dup of the world (same group, its own MPI communicator).
    let split = match w.split((w.rank() % 2) as i32, -(w.rank() as i32)) {
        Ok(Some(s)) => s,
        Ok(None) | Err(_) => {
            eprintln!("split failed on rank {}", w.rank());
            universe.abort(1, "mpi_native: split failed")
        }
    };
    let dup = w.dup();
    let backend = w.transport().name();
    let mut failed = backend != "mpi";
    if failed {
        eprintln!("mpi_native: started by mpirun but the backend is {backend}");
    }
    'all: for (cname, c) in [("world", &w), ("split", &split), ("dup", &dup)] {
        for (name, f) in checks {
            if failed {
                break 'all;
            }
            match f(c) {
                Ok(()) => {
                    if w.rank() == 0 {
                        println!("ok   {name} on {cname} ({} ranks)", c.size());
                    }
                }
                Err(e) => {
                    eprintln!("FAIL {name} on {cname}, rank {}: {e}", w.rank());
                    failed = true;
                }
            }
        }
    }
    if failed {
        // Peers may be blocked on this rank: end the whole job now.
        universe.abort(1, "mpi_native check failed");
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
        println!("mpi_native: SKIPPED: no `{mpirun}` on PATH (install openmpi-bin)");
        return ExitCode::SUCCESS;
    }
    let np = std::env::var("DSMPI_MPI_NP").unwrap_or_else(|_| "4".into());
    let Ok(me) = std::env::current_exe() else {
        eprintln!("mpi_native: cannot find my own executable");
        return ExitCode::FAILURE;
    };
    let mut cmd = Command::new(&mpirun);
    cmd.args(["--oversubscribe", "-n", &np]);
    // Open MPI refuses to run as root without this; the id comes from the
    // environment-free `id -u` so that no libc dependency is needed here.
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.trim_ascii() == b"0")
        .unwrap_or(false);
    if root {
        cmd.arg("--allow-run-as-root");
    }
    cmd.arg(&me).env_remove("DSMPI_RANK");
    println!("mpi_native: {cmd:?}");
    match cmd.status() {
        Ok(s) if s.success() => {
            println!("mpi_native: Native equals dsmpi's algorithms on world, split and dup");
            ExitCode::SUCCESS
        }
        Ok(s) => {
            eprintln!("mpi_native: FAILED ({s})");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("mpi_native: could not run {mpirun}: {e}");
            ExitCode::FAILURE
        }
    }
}
