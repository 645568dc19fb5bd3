//! A representative subset over the real TCP mesh (`LocalBackend::Tcp`): every
//! algorithm of bcast, scatter, gather, alltoall and allreduce on a prime and a power
//! of two, at a small, an eager-sized and a rendezvous-sized message.

mod common;

use common::*;
use dsmpi_collectives::prelude::*;
use dsmpi_runtime::LocalBackend;

const SIZES: [usize; 3] = [7, 4096, 200_003];

#[test]
fn representative_subset_over_tcp() {
    for n in [3, 4] {
        run(LocalBackend::Tcp, n, |w, fails| {
            let me = w.rank();
            for len in SIZES {
                for root in [0, n - 1] {
                    for alg in Bcast::ALL {
                        let want = bytes(root, len, 1);
                        let mut buf = if me == root {
                            want.clone()
                        } else {
                            vec![0u8; len]
                        };
                        let res = w.broadcast_with(alg, root, &mut buf);
                        check(
                            fails,
                            || format!("tcp bcast {alg:?} n={n} root={root} len={len}"),
                            res,
                            &buf,
                            &want,
                        );
                    }
                    let all = bytes(root, n * len, 2);
                    for alg in Scatter::ALL {
                        let mut recv = vec![0u8; len];
                        let res = w.scatter_with(alg, root, &all, &mut recv);
                        check(
                            fails,
                            || format!("tcp scatter {alg:?}"),
                            res,
                            &recv,
                            &all[me * len..(me + 1) * len],
                        );
                    }
                    let want: Vec<u8> = (0..n).flat_map(|r| bytes(r, len, 3)).collect();
                    for alg in Gather::ALL {
                        let mut recv = vec![0u8; if me == root { n * len } else { 0 }];
                        let res = w.gather_with(alg, root, &bytes(me, len, 3), &mut recv);
                        check(
                            fails,
                            || format!("tcp gather {alg:?}"),
                            res,
                            &recv,
                            if me == root { &want[..] } else { &[] },
                        );
                    }
                }
                let send = bytes(me, n * len, 7);
                let want: Vec<u8> = (0..n)
                    .flat_map(|i| bytes(i, n * len, 7)[me * len..(me + 1) * len].to_vec())
                    .collect();
                for alg in Alltoall::ALL {
                    let mut recv = vec![0u8; n * len];
                    let res = w.all_to_all_with(alg, &send, &mut recv);
                    check(
                        fails,
                        || format!("tcp alltoall {alg:?} len={len}"),
                        res,
                        &recv,
                        &want,
                    );
                }
                let count = len / 16 + 1;
                let want = {
                    let mut acc: Vec<Affine> = values(0, count, 5);
                    for r in 1..n {
                        for (a, b) in acc.iter_mut().zip(values::<Affine>(r, count, 5)) {
                            *a = compose(*a, b);
                        }
                    }
                    acc
                };
                for alg in Allreduce::ALL {
                    let mut recv = vec![Affine { a: 0, b: 0 }; count];
                    let res = w.all_reduce_with(
                        alg,
                        &values::<Affine>(me, count, 5),
                        &mut recv,
                        affine_op(),
                    );
                    check(
                        fails,
                        || format!("tcp allreduce {alg:?} count={count}"),
                        res,
                        &recv,
                        &want,
                    );
                }
            }
        });
    }
}
