//! Point-to-point over the TCP mesh and over shared memory, against raw TCP and a raw
//! shared-memory flag, measured in the same run.
//!
//! - `latency/*`: one-way latency of an 8-byte ping-pong (criterion reports the time
//!   of one round trip; halve it for one-way).
//! - `bandwidth/*`: 1 MiB messages streamed one way, 8 in flight, then one ack.
//! - `rate/*`: 8-byte messages, 64 in flight, then one ack (time per message).
//!
//! dsmpi runs as two ranks of one process: `dsmpi_tcp_*` over a real TCP mesh on
//! 127.0.0.1 (`LocalBackend::Tcp`), `dsmpi_shm_*` over the shared-memory rings
//! (`LocalBackend::Shm`), each through the same engine as separate processes. The
//! TCP baseline is two threads on one TCP connection with TCP_NODELAY, busy-polling
//! non-blocking reads: the best a hand-written socket program does here. The
//! shared-memory floor (`raw_shm_8B_roundtrip`) is two threads bouncing a counter
//! through one cache line: no message layer at all.
//!
//! - `overhead/*`: the software cost of one 8-byte round trip, both ranks' engines
//!   driven by one thread (post, progress, match, complete on each side): no core
//!   to core transfer and no scheduling, so it holds still on a busy machine.
//!
//! `cargo bench --bench p2p`

use std::hint::black_box;
use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use dsmpi::{run_local_with, scope, wait_all, Communicator, LocalBackend};

/// The dsmpi links measured: name in the benchmark id, and backend.
const LINKS: [(&str, LocalBackend); 2] = [("tcp", LocalBackend::Tcp), ("shm", LocalBackend::Shm)];

const MIB: usize = 1 << 20;

/// Runs `body(world, iters)` on two ranks over `backend`; returns rank 0's time.
fn on_mesh(
    backend: LocalBackend,
    iters: u64,
    body: impl Fn(&Communicator, u64) + Sync,
) -> Duration {
    let times = run_local_with(backend, 2, |w| {
        // Warm up the links (and the rendezvous path) before timing.
        body(&w, 3);
        let mut b = [0u8];
        w.sendrecv(&[0u8], 1 - w.rank(), 99, &mut b, 1 - w.rank(), 99)
            .expect("sync");
        let t = Instant::now();
        body(&w, iters);
        t.elapsed()
    })
    .expect("mesh");
    times[0]
}

fn raw_pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let a = TcpStream::connect(l.local_addr().expect("addr")).expect("connect");
    let (b, _) = l.accept().expect("accept");
    for s in [&a, &b] {
        s.set_nodelay(true).expect("nodelay");
        s.set_nonblocking(true).expect("nonblocking");
    }
    (a, b)
}

/// Busy-polls until `buf` is full.
fn spin_read(s: &mut TcpStream, buf: &mut [u8]) {
    let mut got = 0;
    while got < buf.len() {
        match s.read(&mut buf[got..]) {
            Ok(0) => panic!("raw peer closed"),
            Ok(n) => got += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => std::hint::spin_loop(),
            Err(e) => panic!("raw read: {e}"),
        }
    }
}

fn spin_write(s: &mut TcpStream, buf: &[u8]) {
    let mut put = 0;
    while put < buf.len() {
        match s.write(&buf[put..]) {
            Ok(n) => put += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => std::hint::spin_loop(),
            Err(e) => panic!("raw write: {e}"),
        }
    }
}

/// Runs `a` and `b` on the two ends of a raw connection; returns `a`'s time.
fn on_raw(
    iters: u64,
    a: impl Fn(&mut TcpStream, u64) + Sync,
    b: impl Fn(&mut TcpStream, u64) + Sync,
) -> Duration {
    let (mut sa, mut sb) = raw_pair();
    let bar = Barrier::new(2);
    std::thread::scope(|s| {
        s.spawn(|| {
            bar.wait();
            b(&mut sb, iters)
        });
        bar.wait();
        let t = Instant::now();
        a(&mut sa, iters);
        t.elapsed()
    })
}

fn latency(c: &mut Criterion) {
    let mut g = c.benchmark_group("latency");
    g.sample_size(20).measurement_time(Duration::from_secs(4));
    for (name, backend) in LINKS {
        g.bench_function(format!("dsmpi_{name}_8B_roundtrip"), |bn| {
            bn.iter_custom(|iters| {
                on_mesh(backend, iters, |w, n| {
                    let mut x = [0u64];
                    for i in 0..n {
                        if w.rank() == 0 {
                            w.send(&[i], 1, 0).expect("send");
                            w.recv_into(&mut x, 1, 0).expect("recv");
                        } else {
                            w.recv_into(&mut x, 0, 0).expect("recv");
                            w.send(&x, 0, 0).expect("send");
                        }
                    }
                    black_box(x);
                })
            })
        });
    }
    g.bench_function("raw_shm_8B_roundtrip", |bn| {
        bn.iter_custom(|iters| {
            use std::sync::atomic::{AtomicU64, Ordering};
            // Odd values are pings, even ones pongs.
            let cell = AtomicU64::new(0);
            let start = Barrier::new(2);
            std::thread::scope(|s| {
                s.spawn(|| {
                    start.wait();
                    for i in 0..iters {
                        while cell.load(Ordering::Acquire) != 2 * i + 1 {
                            std::hint::spin_loop();
                        }
                        cell.store(2 * i + 2, Ordering::Release);
                    }
                });
                start.wait();
                let t = Instant::now();
                for i in 0..iters {
                    cell.store(2 * i + 1, Ordering::Release);
                    while cell.load(Ordering::Acquire) != 2 * i + 2 {
                        std::hint::spin_loop();
                    }
                }
                t.elapsed()
            })
        })
    });
    g.bench_function("raw_tcp_8B_roundtrip", |bn| {
        bn.iter_custom(|iters| {
            on_raw(
                iters,
                |s, n| {
                    let mut x = [0u8; 8];
                    for i in 0..n {
                        spin_write(s, &i.to_le_bytes());
                        spin_read(s, &mut x);
                    }
                },
                |s, n| {
                    let mut x = [0u8; 8];
                    for _ in 0..n {
                        spin_read(s, &mut x);
                        spin_write(s, &x);
                    }
                },
            )
        })
    });
    g.finish();
}

fn bandwidth(c: &mut Criterion) {
    let mut g = c.benchmark_group("bandwidth");
    g.sample_size(10).measurement_time(Duration::from_secs(5));
    g.throughput(Throughput::Bytes((8 * MIB) as u64));
    let window = 8;
    for (name, backend) in LINKS {
        g.bench_function(format!("dsmpi_{name}_8x1MiB"), |bn| {
            let src = vec![7u8; window * MIB];
            let dst = std::sync::Mutex::new(vec![0u8; window * MIB]);
            bn.iter_custom(|iters| {
                on_mesh(backend, iters, |w, n| {
                    for _ in 0..n {
                        if w.rank() == 0 {
                            scope(|s| {
                                let reqs = src
                                    .chunks(MIB)
                                    .map(|c| w.isend(s, c, 1, 1).expect("isend"))
                                    .collect();
                                wait_all(reqs).expect("wait");
                            });
                            let mut ack = [0u8];
                            w.recv_into(&mut ack, 1, 2).expect("ack");
                        } else {
                            let mut d = dst.lock().expect("dst");
                            scope(|s| {
                                let reqs = d
                                    .chunks_mut(MIB)
                                    .map(|c| w.irecv_into(s, c, 0, 1).expect("irecv"))
                                    .collect();
                                wait_all(reqs).expect("wait");
                            });
                            w.send(&[1u8], 0, 2).expect("ack");
                        }
                    }
                })
            })
        });
    }
    g.bench_function("raw_tcp_8x1MiB", |bn| {
        let src = vec![7u8; window * MIB];
        bn.iter_custom(|iters| {
            on_raw(
                iters,
                |s, n| {
                    let mut ack = [0u8];
                    for _ in 0..n {
                        spin_write(s, &src);
                        spin_read(s, &mut ack);
                    }
                },
                |s, n| {
                    let mut d = vec![0u8; window * MIB];
                    for _ in 0..n {
                        spin_read(s, &mut d);
                        spin_write(s, &[1]);
                    }
                },
            )
        })
    });
    g.finish();
}

fn rate(c: &mut Criterion) {
    let mut g = c.benchmark_group("rate");
    g.sample_size(20).measurement_time(Duration::from_secs(4));
    let burst = 64usize;
    g.throughput(Throughput::Elements(burst as u64));
    for (name, backend) in LINKS {
        g.bench_function(format!("dsmpi_{name}_64x8B"), |bn| {
            bn.iter_custom(|iters| {
                on_mesh(backend, iters, |w, n| {
                    let out = vec![[5u64]; burst];
                    let mut inb = vec![[0u64]; burst];
                    for _ in 0..n {
                        if w.rank() == 0 {
                            scope(|s| {
                                let reqs = out
                                    .iter()
                                    .map(|m| w.isend(s, m, 1, 3).expect("isend"))
                                    .collect();
                                wait_all(reqs).expect("wait");
                            });
                            let mut ack = [0u8];
                            w.recv_into(&mut ack, 1, 4).expect("ack");
                        } else {
                            scope(|s| {
                                let reqs = inb
                                    .iter_mut()
                                    .map(|m| w.irecv_into(s, m, 0, 3).expect("irecv"))
                                    .collect();
                                wait_all(reqs).expect("wait");
                            });
                            w.send(&[1u8], 0, 4).expect("ack");
                        }
                    }
                })
            })
        });
    }
    g.bench_function("raw_tcp_64x8B", |bn| {
        bn.iter_custom(|iters| {
            on_raw(
                iters,
                |s, n| {
                    let mut ack = [0u8];
                    for i in 0..n {
                        for _ in 0..burst {
                            spin_write(s, &i.to_le_bytes());
                        }
                        spin_read(s, &mut ack);
                    }
                },
                |s, n| {
                    let mut m = [0u8; 8];
                    for _ in 0..n {
                        for _ in 0..burst {
                            spin_read(s, &mut m);
                        }
                        spin_write(s, &[1]);
                    }
                },
            )
        })
    });
    g.finish();
}

/// Two engines linked by `backend`'s links, for one thread to drive.
fn engine_pair(shm: bool) -> [dsmpi::transport::engine::Engine; 2] {
    use dsmpi::transport::{engine, local, shm as ring};
    let mesh = local::socketpair_mesh(2).expect("socket pairs");
    let same = [true, true];
    let rings: Vec<Vec<Option<ring::ShmLink>>> = std::thread::scope(|s| {
        let hs: Vec<_> = mesh
            .iter()
            .enumerate()
            .map(|(r, links)| {
                s.spawn(move || {
                    if shm {
                        ring::attach(r, links, &same, Duration::from_secs(30)).expect("attach")
                    } else {
                        vec![None, None]
                    }
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().expect("attach thread"))
            .collect()
    });
    let cfg = engine::EngineConfig::from_env(2);
    let mut it = mesh
        .into_iter()
        .zip(rings)
        .enumerate()
        .map(|(r, (links, rings))| {
            engine::Engine::with_shm(
                r,
                links,
                rings,
                vec!["here".into(); 2],
                "local",
                cfg.clone(),
                None,
            )
            .expect("engine")
        });
    let a = it.next().expect("engine 0");
    let b = it.next().expect("engine 1");
    [a, b]
}

fn overhead(c: &mut Criterion) {
    use dsmpi::transport::{Posted, RecvTarget, Transport};
    let mut g = c.benchmark_group("overhead");
    g.sample_size(20).measurement_time(Duration::from_secs(3));
    for (name, shm) in [("socket", false), ("shm", true)] {
        let [a, b] = engine_pair(shm);
        // One leg: `from` sends 8 bytes, `to` receives them by polling `test`.
        let leg = |from: &dsmpi::transport::engine::Engine,
                   to: &dsmpi::transport::engine::Engine,
                   x: &mut [u8; 8]| {
            let src = *x;
            // SAFETY: `src` and `x` outlive both requests, which complete here.
            unsafe {
                let r = to
                    .irecv(
                        Some(from.rank()),
                        1,
                        Some(0),
                        RecvTarget::Buffer {
                            ptr: x.as_mut_ptr(),
                            cap: 8,
                        },
                    )
                    .expect("irecv");
                let s = from.isend(to.rank(), 1, 0, src.as_ptr(), 8).expect("isend");
                if let Posted::Pending(s) = s {
                    from.wait(s).expect("send");
                }
                while to.test(r).expect("test").is_none() {}
            }
        };
        g.bench_function(format!("dsmpi_{name}_8B_roundtrip_one_thread"), |bn| {
            let mut x = [0u8; 8];
            bn.iter(|| {
                leg(&a, &b, &mut x);
                leg(&b, &a, &mut x);
                black_box(&x);
            })
        });
        a.abort();
        b.abort();
    }
    g.finish();
}

criterion_group!(benches, latency, bandwidth, rate, overhead);
criterion_main!(benches);
