//! Collective algorithms over ranks-as-threads (`run_local`, Unix socket pairs):
//! every algorithm of bcast, scatter, all-to-all and allreduce on 2, 4 and 8 ranks,
//! 8 B .. 4 MiB, plus a large strided typed send against a contiguous one of the same
//! bytes. The results and the thresholds drawn from them are in docs/COLLECTIVES.md.
//!
//! Each measurement runs `iters` operations back to back inside one `run_local` job,
//! between two barriers, and reports the slowest rank's time (a collective is done
//! when its last rank is). Sizes are the message (bcast), the root's whole buffer
//! (scatter), one rank's whole send buffer (all-to-all) and the vector (allreduce).
//!
//! `cargo bench --bench collectives` (add a filter such as `bcast/` to run a part).

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use dsmpi::prelude::*;

const SIZES: [usize; 7] = [8, 1 << 10, 16 << 10, 64 << 10, 256 << 10, 1 << 20, 4 << 20];
const RANKS: [usize; 3] = [2, 4, 8];

/// Times `iters` runs of `op` on `n` ranks, on buffers `setup` made (untimed); the
/// slowest rank's time.
fn time_on<S, F>(n: usize, iters: u64, setup: impl Fn(&Communicator) -> S + Sync, op: F) -> Duration
where
    F: Fn(&Communicator, &mut S) + Sync,
{
    let times = dsmpi::run_local(n, |w| {
        let mut state = setup(&w);
        op(&w, &mut state);
        w.barrier().expect("barrier");
        let t = Instant::now();
        for _ in 0..iters {
            op(&w, &mut state);
        }
        w.barrier().expect("barrier");
        t.elapsed()
    })
    .expect("run_local");
    times.into_iter().max().unwrap_or_default()
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(200))
        .measurement_time(Duration::from_millis(600))
        .without_plots()
}

fn bcast(c: &mut Criterion) {
    let mut g = c.benchmark_group("bcast");
    for n in RANKS {
        for size in SIZES {
            g.throughput(Throughput::Bytes(size as u64));
            for alg in Bcast::ALL {
                g.bench_with_input(
                    BenchmarkId::new(format!("{alg:?}/n{n}"), size),
                    &size,
                    |b, &size| {
                        b.iter_custom(|iters| {
                            time_on(
                                n,
                                iters,
                                |_| vec![1u8; size],
                                |w, buf| w.broadcast_with(alg, 0, buf).expect("bcast"),
                            )
                        })
                    },
                );
            }
        }
    }
}

fn scatter(c: &mut Criterion) {
    let mut g = c.benchmark_group("scatter");
    for n in RANKS {
        for size in SIZES {
            let block = (size / n).max(1);
            g.throughput(Throughput::Bytes((block * n) as u64));
            for alg in Scatter::ALL {
                g.bench_with_input(
                    BenchmarkId::new(format!("{alg:?}/n{n}"), size),
                    &size,
                    |b, _| {
                        b.iter_custom(|iters| {
                            time_on(
                                n,
                                iters,
                                |w| {
                                    (
                                        vec![1u8; if w.rank() == 0 { block * n } else { 0 }],
                                        vec![0u8; block],
                                    )
                                },
                                |w, (send, recv)| {
                                    w.scatter_with(alg, 0, send, recv).expect("scatter")
                                },
                            )
                        })
                    },
                );
            }
        }
    }
}

fn alltoall(c: &mut Criterion) {
    let mut g = c.benchmark_group("alltoall");
    for n in RANKS {
        for size in SIZES {
            let block = (size / n).max(1);
            g.throughput(Throughput::Bytes((block * n) as u64));
            for alg in Alltoall::ALL {
                g.bench_with_input(
                    BenchmarkId::new(format!("{alg:?}/n{n}"), size),
                    &size,
                    |b, _| {
                        b.iter_custom(|iters| {
                            time_on(
                                n,
                                iters,
                                |_| (vec![1u8; block * n], vec![0u8; block * n]),
                                |w, (send, recv)| {
                                    w.all_to_all_with(alg, send, recv).expect("alltoall")
                                },
                            )
                        })
                    },
                );
            }
        }
    }
}

fn allreduce(c: &mut Criterion) {
    let mut g = c.benchmark_group("allreduce");
    for n in RANKS {
        for size in SIZES {
            let count = (size / 8).max(1);
            g.throughput(Throughput::Bytes((count * 8) as u64));
            for alg in Allreduce::ALL {
                g.bench_with_input(
                    BenchmarkId::new(format!("{alg:?}/n{n}"), size),
                    &size,
                    |b, _| {
                        b.iter_custom(|iters| {
                            time_on(
                                n,
                                iters,
                                |_| (vec![1.0f64; count], vec![0.0f64; count]),
                                |w, (send, recv)| {
                                    w.all_reduce_with(alg, send, recv, SystemOp::Sum)
                                        .expect("allreduce")
                                },
                            )
                        })
                    },
                );
            }
        }
    }
}

/// 4 MiB of f64 selected from an 8 MiB matrix (every other block of `block` doubles)
/// against 4 MiB contiguous, rank 0 → rank 1, received contiguous in both cases.
fn strided(c: &mut Criterion) {
    let mut g = c.benchmark_group("typed_send");
    let total = 4 << 20;
    let elems = total / 8;
    let f64t = Datatype::of::<f64>();
    g.throughput(Throughput::Bytes(total as u64));
    for block in [1usize, 8, 64] {
        let strided = Datatype::vector(elems / block, block, 2 * block as isize, &f64t)
            .expect("vector")
            .commit();
        let flat = Datatype::contiguous(elems, &f64t).commit();
        let cases = [
            (format!("strided_block{block}"), &strided),
            ("contiguous".to_string(), &flat),
        ];
        for (name, t) in cases {
            if name == "contiguous" && block != 1 {
                continue;
            }
            g.bench_function(name, |b| {
                b.iter_custom(|iters| {
                    time_on(
                        2,
                        iters,
                        |_| vec![1.0f64; 2 * elems],
                        |w, buf| {
                            if w.rank() == 0 {
                                w.send_typed(buf, t, 1, 1, 0).expect("send");
                            } else {
                                w.recv_typed(&mut buf[..elems], &flat, 1, 0, 0)
                                    .expect("recv");
                            }
                        },
                    )
                })
            });
        }
    }
}

criterion_group! { name = benches; config = config(); targets = bcast, scatter, alltoall, allreduce, strided }
criterion_main!(benches);
