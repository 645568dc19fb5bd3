//! Every algorithm of every operation against a plain sequential reference, on 1..=9
//! ranks, every root, at 0, 1, 7 and 4096 bytes (elements for the reductions), plus
//! about 1 MiB on the grid in `common::BIG_GRID`. One `run_local` per rank count runs
//! all cases back to back on one communicator, which also checks that consecutive
//! collectives never mix up their messages.

mod common;

use common::*;
use dsmpi_collectives::prelude::*;
use dsmpi_runtime::{Communicator, LocalBackend};

/// The threads backend `run_local` picks: shared memory, or byte streams with
/// `DSMPI_TRANSPORT=tcp` (CI runs the suite both ways).
fn b() -> LocalBackend {
    LocalBackend::from_env()
}

/// (root, bytes) cases for `n` ranks.
fn cases(n: usize) -> Vec<(usize, usize)> {
    let mut v: Vec<(usize, usize)> = (0..n)
        .flat_map(|r| SMALL.iter().map(move |&s| (r, s)))
        .collect();
    v.extend(
        BIG_GRID
            .iter()
            .filter(|&&(bn, _)| bn == n)
            .map(|&(_, r)| (r, BIG)),
    );
    v
}

fn bcast_case(w: &Communicator, fails: &mut Vec<String>, alg: Bcast, root: usize, len: usize) {
    let want = bytes(root, len, 1);
    let mut buf = if w.rank() == root {
        want.clone()
    } else {
        vec![0u8; len]
    };
    let res = w.broadcast_with(alg, root, &mut buf);
    check(
        fails,
        || format!("bcast {alg:?} n={} root={root} len={len}", w.size()),
        res,
        &buf,
        &want,
    );
}

#[test]
fn bcast_every_algorithm() {
    for n in 1..=9 {
        run(b(), n, |w, fails| {
            for (root, len) in cases(n) {
                for alg in Bcast::ALL {
                    bcast_case(w, fails, alg, root, len);
                }
            }
            // Other element types go through the same bytes.
            for alg in Bcast::ALL {
                let want: Vec<Affine> = values(n - 1, 33, 9);
                let mut buf = if w.rank() == n - 1 {
                    want.clone()
                } else {
                    vec![Affine { a: 0, b: 0 }; 33]
                };
                let res = w.broadcast_with(alg, n - 1, &mut buf);
                check(fails, || format!("bcast Affine {alg:?}"), res, &buf, &want);
            }
        });
    }
}

#[test]
fn scatter_and_gather_every_algorithm() {
    for n in 1..=9 {
        run(b(), n, |w, fails| {
            let me = w.rank();
            for (root, len) in cases(n) {
                let all = bytes(root, n * len, 2);
                for alg in Scatter::ALL {
                    let send = if me == root { all.clone() } else { Vec::new() };
                    let mut recv = vec![0u8; len];
                    let res = w.scatter_with(alg, root, &send, &mut recv);
                    check(
                        fails,
                        || format!("scatter {alg:?} n={n} root={root} len={len}"),
                        res,
                        &recv,
                        &all[me * len..(me + 1) * len],
                    );
                }
                let mine = bytes(me, len, 3);
                let want: Vec<u8> = (0..n).flat_map(|r| bytes(r, len, 3)).collect();
                for alg in Gather::ALL {
                    let mut recv = if me == root {
                        vec![0u8; n * len]
                    } else {
                        Vec::new()
                    };
                    let res = w.gather_with(alg, root, &mine, &mut recv);
                    let want = if me == root { &want[..] } else { &[][..] };
                    check(
                        fails,
                        || format!("gather {alg:?} n={n} root={root} len={len}"),
                        res,
                        &recv,
                        want,
                    );
                }
            }
        });
    }
}

/// Uneven counts (some zero), displacements in reverse rank order with gaps.
fn v_layout(n: usize, len: usize) -> (Vec<usize>, Vec<usize>, usize) {
    let counts: Vec<usize> = (0..n)
        .map(|r| {
            if len == 0 {
                0
            } else {
                (len + 3 * r) % (len + 2)
            }
        })
        .collect();
    let mut displs = vec![0; n];
    let mut at = 1;
    for r in (0..n).rev() {
        displs[r] = at;
        at += counts[r] + 2;
    }
    (counts, displs, at)
}

#[test]
fn scatterv_and_gatherv_every_algorithm() {
    for n in 1..=9 {
        run(b(), n, |w, fails| {
            let me = w.rank();
            for (root, len) in cases(n) {
                let (counts, displs, total) = v_layout(n, len);
                let all = bytes(root, total, 4);
                let mine_range = displs[me]..displs[me] + counts[me];
                for alg in Scatter::ALL {
                    let (send, c, d) = if me == root {
                        (&all[..], &counts[..], &displs[..])
                    } else {
                        (&[][..], &[][..], &[][..])
                    };
                    let mut recv = vec![0u8; counts[me]];
                    let res = w.scatterv_with(alg, root, send, c, d, &mut recv);
                    check(
                        fails,
                        || format!("scatterv {alg:?} n={n} root={root} len={len}"),
                        res,
                        &recv,
                        &all[mine_range.clone()],
                    );
                }
                let mine = bytes(me, counts[me], 5);
                let mut want = vec![0xEEu8; total];
                for r in 0..n {
                    want[displs[r]..displs[r] + counts[r]].copy_from_slice(&bytes(r, counts[r], 5));
                }
                for alg in Gather::ALL {
                    let mut recv = if me == root {
                        vec![0xEEu8; total]
                    } else {
                        Vec::new()
                    };
                    let (c, d) = if me == root {
                        (&counts[..], &displs[..])
                    } else {
                        (&[][..], &[][..])
                    };
                    let res = w.gatherv_with(alg, root, &mine, &mut recv, c, d);
                    let want = if me == root { &want[..] } else { &[][..] };
                    check(
                        fails,
                        || format!("gatherv {alg:?} n={n} root={root} len={len}"),
                        res,
                        &recv,
                        want,
                    );
                }
            }
        });
    }
}

/// Sizes for the rootless operations (no root to vary).
fn rootless_sizes(n: usize) -> Vec<usize> {
    let mut v = SMALL.to_vec();
    if BIG_GRID.iter().any(|&(bn, _)| bn == n) {
        v.push(BIG);
    }
    v
}

#[test]
fn allgather_every_algorithm() {
    for n in 1..=9 {
        run(b(), n, |w, fails| {
            let me = w.rank();
            for len in rootless_sizes(n) {
                let want: Vec<u8> = (0..n).flat_map(|r| bytes(r, len, 6)).collect();
                for alg in Allgather::ALL {
                    let mut recv = vec![0u8; n * len];
                    let res = w.all_gather_with(alg, &bytes(me, len, 6), &mut recv);
                    check(
                        fails,
                        || format!("allgather {alg:?} n={n} len={len}"),
                        res,
                        &recv,
                        &want,
                    );
                }
            }
        });
    }
}

#[test]
fn allgatherv_every_algorithm() {
    for n in 1..=9 {
        run(b(), n, |w, fails| {
            let me = w.rank();
            for len in rootless_sizes(n) {
                let (counts, displs, total) = v_layout(n, len);
                let mut want = vec![0xEEu8; total];
                for r in 0..n {
                    want[displs[r]..displs[r] + counts[r]]
                        .copy_from_slice(&bytes(r, counts[r], 13));
                }
                for alg in Allgatherv::ALL {
                    let mut recv = vec![0xEEu8; total];
                    let mine = bytes(me, counts[me], 13);
                    let res = w.all_gather_v_with(alg, &mine, &mut recv, &counts, &displs);
                    check(
                        fails,
                        || format!("allgatherv {alg:?} n={n} len={len}"),
                        res,
                        &recv,
                        &want,
                    );
                }
            }
        });
    }
}

#[test]
fn alltoall_every_algorithm() {
    for n in 1..=9 {
        run(b(), n, |w, fails| {
            let me = w.rank();
            for len in rootless_sizes(n) {
                // Keep the 1 MiB case to 1 MiB per *rank*, not per block, on many ranks.
                let len = if len == BIG { BIG / n } else { len };
                let send = bytes(me, n * len, 7);
                let want: Vec<u8> = (0..n)
                    .flat_map(|i| bytes(i, n * len, 7)[me * len..(me + 1) * len].to_vec())
                    .collect();
                for alg in Alltoall::ALL {
                    let mut recv = vec![0u8; n * len];
                    let res = w.all_to_all_with(alg, &send, &mut recv);
                    check(
                        fails,
                        || format!("alltoall {alg:?} n={n} len={len}"),
                        res,
                        &recv,
                        &want,
                    );
                }
                // v: rank i sends c(i, j) bytes to rank j.
                let c = |i: usize, j: usize| {
                    if len == 0 {
                        0
                    } else {
                        (len + i + 2 * j) % (len + 1)
                    }
                };
                let prefix = |f: &dyn Fn(usize) -> usize| -> Vec<usize> {
                    (0..n)
                        .scan(0, |a, k| {
                            let d = *a;
                            *a += f(k);
                            Some(d)
                        })
                        .collect()
                };
                let sc: Vec<usize> = (0..n).map(|j| c(me, j)).collect();
                let sd = prefix(&|j| c(me, j));
                let rc: Vec<usize> = (0..n).map(|i| c(i, me)).collect();
                let rd = prefix(&|i| c(i, me));
                let send = bytes(me, sc.iter().sum(), 8);
                let want: Vec<u8> = (0..n)
                    .flat_map(|i| {
                        let theirs = bytes(i, (0..n).map(|j| c(i, j)).sum(), 8);
                        let off: usize = (0..me).map(|j| c(i, j)).sum();
                        theirs[off..off + c(i, me)].to_vec()
                    })
                    .collect();
                for alg in Alltoallv::ALL {
                    let mut recv = vec![0u8; rc.iter().sum()];
                    let res = w.all_to_all_v_with(alg, &send, &sc, &sd, &mut recv, &rc, &rd);
                    check(
                        fails,
                        || format!("alltoallv {alg:?} n={n} len={len}"),
                        res,
                        &recv,
                        &want,
                    );
                }
            }
        });
    }
}

/// Element counts for the reductions: the small sizes, and about 1 MiB of `Affine`.
fn reduce_counts(n: usize) -> Vec<usize> {
    let mut v = SMALL.to_vec();
    if BIG_GRID.iter().any(|&(bn, _)| bn == n) {
        v.push(BIG / std::mem::size_of::<Affine>() + 1);
    }
    v
}

/// Rank-order fold of every rank's `values(r, count, salt)`.
fn fold_affine(n: usize, upto: usize, count: usize, salt: u64) -> Vec<Affine> {
    let mut acc: Vec<Affine> = values(0, count, salt);
    for r in 1..upto.min(n) {
        let x: Vec<Affine> = values(r, count, salt);
        for (a, b) in acc.iter_mut().zip(x) {
            *a = compose(*a, b);
        }
    }
    acc
}

fn sum_u64(upto: usize, count: usize, salt: u64) -> Vec<u64> {
    let mut acc = vec![0u64; count];
    for r in 0..upto {
        for (a, b) in acc.iter_mut().zip(values::<u64>(r, count, salt)) {
            *a = a.wrapping_add(b);
        }
    }
    acc
}

#[test]
fn reduce_every_algorithm_in_rank_order() {
    for n in 1..=9 {
        run(b(), n, |w, fails| {
            let me = w.rank();
            for count in reduce_counts(n) {
                let roots: Vec<usize> = if count > 4096 {
                    BIG_GRID.iter().filter(|g| g.0 == n).map(|g| g.1).collect()
                } else {
                    (0..n).collect()
                };
                let want_a = fold_affine(n, n, count, 10);
                let want_s = sum_u64(n, count, 11);
                for &root in &roots {
                    for alg in Reduce::ALL {
                        let mut recv =
                            vec![Affine { a: 0, b: 0 }; if me == root { count } else { 0 }];
                        let res = w.reduce_with(
                            alg,
                            root,
                            &values::<Affine>(me, count, 10),
                            &mut recv,
                            affine_op(),
                        );
                        check(
                            fails,
                            || format!("reduce affine {alg:?} n={n} root={root} count={count}"),
                            res,
                            &recv,
                            if me == root { &want_a[..] } else { &[] },
                        );
                        let mut recv = vec![0u64; if me == root { count } else { 0 }];
                        let res = w.reduce_with(
                            alg,
                            root,
                            &values::<u64>(me, count, 11),
                            &mut recv,
                            SystemOp::Sum,
                        );
                        check(
                            fails,
                            || format!("reduce sum {alg:?} n={n} root={root} count={count}"),
                            res,
                            &recv,
                            if me == root { &want_s[..] } else { &[] },
                        );
                    }
                }
            }
        });
    }
}

#[test]
fn allreduce_every_algorithm_in_rank_order() {
    for n in 1..=9 {
        run(b(), n, |w, fails| {
            let me = w.rank();
            for count in reduce_counts(n) {
                let want_a = fold_affine(n, n, count, 12);
                let want_s = sum_u64(n, count, 13);
                for alg in Allreduce::ALL {
                    let mut recv = vec![Affine { a: 0, b: 0 }; count];
                    let res = w.all_reduce_with(
                        alg,
                        &values::<Affine>(me, count, 12),
                        &mut recv,
                        affine_op(),
                    );
                    check(
                        fails,
                        || format!("allreduce affine {alg:?} n={n} count={count}"),
                        res,
                        &recv,
                        &want_a,
                    );
                    let mut recv = vec![0u64; count];
                    let res = w.all_reduce_with(
                        alg,
                        &values::<u64>(me, count, 13),
                        &mut recv,
                        SystemOp::Sum,
                    );
                    check(
                        fails,
                        || format!("allreduce sum {alg:?} n={n} count={count}"),
                        res,
                        &recv,
                        &want_s,
                    );
                }
            }
        });
    }
}

#[test]
fn reduce_scatter_every_algorithm_in_rank_order() {
    for n in 1..=9 {
        run(b(), n, |w, fails| {
            let me = w.rank();
            for count in reduce_counts(n) {
                let count = if count > 4096 { count / n } else { count };
                let want_a = fold_affine(n, n, n * count, 14);
                let want_s = sum_u64(n, n * count, 15);
                for alg in ReduceScatter::ALL {
                    let mut recv = vec![Affine { a: 0, b: 0 }; count];
                    let res = w.reduce_scatter_block_with(
                        alg,
                        &values::<Affine>(me, n * count, 14),
                        &mut recv,
                        affine_op(),
                    );
                    check(
                        fails,
                        || format!("reduce_scatter affine {alg:?} n={n} count={count}"),
                        res,
                        &recv,
                        &want_a[me * count..(me + 1) * count],
                    );
                    let mut recv = vec![0u64; count];
                    let res = w.reduce_scatter_block_with(
                        alg,
                        &values::<u64>(me, n * count, 15),
                        &mut recv,
                        SystemOp::Sum,
                    );
                    check(
                        fails,
                        || format!("reduce_scatter sum {alg:?} n={n} count={count}"),
                        res,
                        &recv,
                        &want_s[me * count..(me + 1) * count],
                    );
                }
            }
        });
    }
}

#[test]
fn scan_and_exscan_every_algorithm_in_rank_order() {
    for n in 1..=9 {
        run(b(), n, |w, fails| {
            let me = w.rank();
            for count in reduce_counts(n) {
                let mine: Vec<Affine> = values(me, count, 16);
                let inclusive = fold_affine(n, me + 1, count, 16);
                for alg in Scan::ALL {
                    let mut recv = vec![Affine { a: 0, b: 0 }; count];
                    let res = w.scan_with(alg, &mine, &mut recv, affine_op());
                    check(
                        fails,
                        || format!("scan {alg:?} n={n} count={count}"),
                        res,
                        &recv,
                        &inclusive,
                    );
                    // Exscan: rank 0's buffer stays as it was.
                    let sentinel = Affine { a: 7, b: 7 };
                    let mut recv = vec![sentinel; count];
                    let res = w.exclusive_scan_with(alg, &mine, &mut recv, affine_op());
                    let want = if me == 0 {
                        vec![sentinel; count]
                    } else {
                        fold_affine(n, me, count, 16)
                    };
                    check(
                        fails,
                        || format!("exscan {alg:?} n={n} count={count}"),
                        res,
                        &recv,
                        &want,
                    );
                    let mut recv = vec![0u64; count];
                    let res =
                        w.scan_with(alg, &values::<u64>(me, count, 17), &mut recv, SystemOp::Sum);
                    check(
                        fails,
                        || format!("scan sum {alg:?} n={n} count={count}"),
                        res,
                        &recv,
                        &sum_u64(me + 1, count, 17),
                    );
                }
            }
        });
    }
}

#[test]
fn barrier_every_algorithm_separates_rounds() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    for n in 1..=9 {
        let arrived = AtomicUsize::new(0);
        run(b(), n, |w, fails| {
            for round in 0..6 {
                let alg = Barrier::ALL[round % 2];
                arrived.fetch_add(1, Ordering::SeqCst);
                if let Err(e) = w.barrier_with(alg) {
                    fails.push(format!("barrier {alg:?}: {e}"));
                }
                // Nobody can have started the next round before everyone arrived here.
                let seen = arrived.load(Ordering::SeqCst);
                if seen < n * (round + 1) {
                    fails.push(format!(
                        "barrier {alg:?} n={n} round {round}: left with only {seen} arrivals"
                    ));
                }
                if let Err(e) = w.barrier() {
                    fails.push(format!("barrier: {e}"));
                }
            }
        });
    }
}
