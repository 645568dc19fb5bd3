//! `Native` collectives (MPI's own, on the `mpi` backend) give the same results as
//! dsmpi's algorithms, on the world communicator and on a split one.
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
    let checks: [NamedCheck; 5] = [
        ("bcast", bcast),
        ("allreduce", allreduce),
        ("alltoall", alltoall),
        ("gather, scatter, barrier", gather_scatter_barrier),
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
