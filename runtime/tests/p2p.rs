//! Point-to-point semantics, on both in-process backends (Unix socket pairs and a
//! real TCP mesh on 127.0.0.1).

use dsmpi_runtime::{
    run_local_with, scope, wait_all, wait_any, Communicator, Error, LocalBackend, ANY_SOURCE,
    ANY_TAG,
};

const BACKENDS: [LocalBackend; 3] = [LocalBackend::Sockets, LocalBackend::Tcp, LocalBackend::Shm];

fn on_all<R: Send>(n: usize, f: impl Fn(Communicator) -> R + Sync) -> Vec<Vec<R>> {
    BACKENDS
        .iter()
        .map(|&b| run_local_with(b, n, &f).expect("run_local"))
        .collect()
}

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

#[test]
fn ring_on_every_rank_count() {
    for n in 1..=9 {
        let out = on_all(n, |w| {
            let (me, n) = (w.rank(), w.size());
            let mut tok = [0u64];
            if me == 0 {
                w.send(&[1u64], (me + 1) % n, 0).unwrap();
                w.recv_into(&mut tok, (me + n - 1) % n, 0).unwrap();
            } else {
                w.recv_into(&mut tok, me - 1, 0).unwrap();
                tok[0] += 1;
                w.send(&tok, (me + 1) % n, 0).unwrap();
            }
            tok[0]
        });
        for per_backend in out {
            assert_eq!(
                per_backend[0], n as u64,
                "token came back incremented once per rank"
            );
        }
    }
}

#[test]
fn messages_between_a_pair_never_overtake_across_protocols() {
    // Small (eager) and large (rendezvous) messages interleaved on one tag must
    // arrive in send order.
    let sizes = [3usize, 200_000, 0, 70_000, 1, 1 << 20, 5];
    on_all(2, |w| {
        if w.rank() == 0 {
            let bufs: Vec<Vec<u8>> = sizes
                .iter()
                .enumerate()
                .map(|(i, &l)| pattern(l, i as u64))
                .collect();
            scope(|s| {
                let reqs: Vec<_> = bufs.iter().map(|b| w.isend(s, b, 1, 9).unwrap()).collect();
                wait_all(reqs).unwrap();
            });
        } else {
            for (i, &l) in sizes.iter().enumerate() {
                let (v, st) = w.recv_vec::<u8>(0, 9).unwrap();
                assert_eq!(st.bytes(), l);
                assert_eq!(
                    v,
                    pattern(l, i as u64),
                    "message {i} out of order or corrupt"
                );
            }
        }
    });
}

#[test]
fn many_small_messages_keep_order() {
    on_all(3, |w| {
        let k = 5000u32;
        if w.rank() != 0 {
            for i in 0..k {
                w.send(&[w.rank() as u32, i], 0, 1).unwrap();
            }
        } else {
            let mut next = [0u32; 3];
            for _ in 0..2 * k {
                let mut m = [0u32; 2];
                let st = w.recv_into(&mut m, ANY_SOURCE, 1).unwrap();
                assert_eq!(st.source(), m[0] as usize);
                assert_eq!(m[1], next[st.source()], "out of order from {}", st.source());
                next[st.source()] += 1;
            }
        }
    });
}

#[test]
fn tags_select_and_any_tag_takes_the_earliest() {
    on_all(2, |w| {
        if w.rank() == 0 {
            w.send(&[1i32], 1, 1).unwrap();
            w.send(&[2i32], 1, 2).unwrap();
            w.send(&[3i32], 1, 3).unwrap();
        } else {
            let mut x = [0i32];
            // Tag 2 first, although tag 1 arrived earlier.
            let st = w.recv_into(&mut x, 0, 2).unwrap();
            assert_eq!((x[0], st.tag()), (2, 2));
            let st = w.recv_into(&mut x, 0, ANY_TAG).unwrap();
            assert_eq!((x[0], st.tag()), (1, 1));
            let st = w.recv_into(&mut x, ANY_SOURCE, ANY_TAG).unwrap();
            assert_eq!((x[0], st.tag(), st.source()), (3, 3, 0));
        }
    });
}

#[test]
fn zero_length_and_self_sends() {
    on_all(2, |w| {
        let me = w.rank();
        // Zero-length to the peer.
        w.send::<u8>(&[], 1 - me, 4).unwrap();
        let (v, st) = w.recv_vec::<u8>(1 - me, 4).unwrap();
        assert!(v.is_empty());
        assert_eq!(st.bytes(), 0);
        // Blocking send to self before the receive: small and large.
        w.send(&[me as u64 + 10], me, 5).unwrap();
        let big = pattern(3 << 20, me as u64);
        w.send(&big, me, 6).unwrap();
        let mut x = [0u64];
        w.recv_into(&mut x, me, 5).unwrap();
        assert_eq!(x[0], me as u64 + 10);
        let (got, _) = w.recv_vec::<u8>(me, 6).unwrap();
        assert_eq!(got, big);
        // Receive posted first, then the self-send.
        let mut y = [0u16; 3];
        scope(|s| {
            let r = w.irecv_into(s, &mut y, me, 7).unwrap();
            w.send(&[1u16, 2, 3], me, 7).unwrap();
            r.wait().unwrap();
        });
        assert_eq!(y, [1, 2, 3]);
    });
}

#[test]
fn sixty_four_mib_message_lands_in_the_posted_buffer() {
    let len = 64 << 20;
    on_all(2, |w| {
        if w.rank() == 0 {
            let data: Vec<u64> = (0..len as u64 / 8).collect();
            w.send(&data, 1, 0).unwrap();
        } else {
            let mut buf = vec![0u64; len / 8];
            let st = w.recv_into(&mut buf, 0, 0).unwrap();
            assert_eq!(st.bytes(), len);
            assert!(buf.iter().enumerate().all(|(i, &x)| x == i as u64));
        }
    });
}

#[test]
fn truncation_is_an_error_naming_the_sizes() {
    on_all(2, |w| {
        if w.rank() == 0 {
            w.send(&[1u8; 10], 1, 0).unwrap();
            w.send(&vec![1u8; 1 << 20], 1, 0).unwrap();
            w.send(&[7u8], 1, 1).unwrap();
        } else {
            let mut small = [0u8; 4];
            for expected_len in [10, 1 << 20] {
                match w.recv_into(&mut small, 0, 0) {
                    Err(Error::Truncated {
                        sender,
                        len,
                        capacity,
                        ..
                    }) => {
                        assert_eq!((sender, len, capacity), (0, expected_len, 4));
                    }
                    other => panic!("expected truncation, got {other:?}"),
                }
            }
            // The stream stays usable.
            let mut x = [0u8];
            w.recv_into(&mut x, 0, 1).unwrap();
            assert_eq!(x[0], 7);
        }
    });
}

#[test]
fn probe_then_receive_and_iprobe() {
    on_all(2, |w| {
        if w.rank() == 0 {
            w.send(&[5u32; 17], 1, 3).unwrap();
            w.send(&vec![9u32; 100_000], 1, 4).unwrap();
        } else {
            let st = w.probe(ANY_SOURCE, 4).unwrap();
            assert_eq!((st.source(), st.tag(), st.count::<u32>()), (0, 4, 100_000));
            let st = w.iprobe(0, 3).unwrap().expect("tag 3 arrived before tag 4");
            assert_eq!(st.count::<u32>(), 17);
            assert!(w.iprobe(0, 99).unwrap().is_none());
            let mut a = vec![0u32; 17];
            w.recv_into(&mut a, 0, 3).unwrap();
            let (b, _) = w.recv_vec::<u32>(0, 4).unwrap();
            assert!(a.iter().all(|&x| x == 5) && b.iter().all(|&x| x == 9));
        }
    });
}

#[test]
fn wait_any_returns_each_request_once() {
    on_all(4, |w| {
        let me = w.rank();
        if me == 0 {
            let mut bufs = [[0u64; 2]; 3];
            scope(|s| {
                let mut reqs = Vec::new();
                for (i, b) in bufs.iter_mut().enumerate() {
                    reqs.push(w.irecv_into(s, b, i + 1, 0).unwrap());
                }
                let mut seen = Vec::new();
                while !reqs.is_empty() {
                    let (_, st) = wait_any(&mut reqs).unwrap();
                    seen.push(st.source());
                }
                seen.sort();
                assert_eq!(seen, vec![1, 2, 3]);
            });
            for (i, b) in bufs.iter().enumerate() {
                assert_eq!(b, &[i as u64 + 1, 42]);
            }
        } else {
            w.send(&[me as u64, 42], 0, 0).unwrap();
        }
    });
}

#[test]
fn nonblocking_exchange_and_test() {
    on_all(2, |w| {
        let peer = 1 - w.rank();
        let out = pattern(300_000, w.rank() as u64);
        let mut inb = vec![0u8; 300_000];
        scope(|s| {
            let mut r = w.irecv_into(s, &mut inb, peer, 0).unwrap();
            let sreq = w.isend(s, &out, peer, 0).unwrap();
            let mut spins = 0u64;
            let st = loop {
                if let Some(st) = r.test().unwrap() {
                    break st;
                }
                spins += 1;
            };
            assert_eq!(st.bytes(), 300_000);
            sreq.wait().unwrap();
            let _ = spins;
        });
        assert_eq!(inb, pattern(300_000, peer as u64));
    });
}

#[test]
fn dropped_and_leaked_requests_complete_at_scope_end() {
    on_all(2, |w| {
        let peer = 1 - w.rank();
        let out = vec![w.rank() as u8; 200_000];
        let mut inb = vec![0u8; 200_000];
        scope(|s| {
            let r = w.irecv_into(s, &mut inb, peer, 0).unwrap();
            let snd = w.isend(s, &out, peer, 0).unwrap();
            drop(snd); // waits
            std::mem::forget(r); // the scope still waits for it
        });
        assert!(inb.iter().all(|&b| b == peer as u8));
    });
}

#[test]
fn dup_and_split_isolate_traffic() {
    for n in 1..=7 {
        on_all(n, |w| {
            let me = w.rank();
            let d = w.dup();
            // Same tag and peers on world and dup: each receive gets its own message.
            w.send(&[1u8], me, 0).unwrap();
            d.send(&[2u8], me, 0).unwrap();
            let mut x = [0u8];
            d.recv_into(&mut x, me, 0).unwrap();
            assert_eq!(x[0], 2);
            w.recv_into(&mut x, me, 0).unwrap();
            assert_eq!(x[0], 1);
            // The library plane is separate too.
            w.library().send(&[3u8], me, 0).unwrap();
            assert!(w.iprobe(me, 0).unwrap().is_none());
            w.library().recv_into(&mut x, me, 0).unwrap();
            assert_eq!(x[0], 3);

            // Split by parity, reverse order by key.
            let color = (me % 2) as i32;
            let sub = w.split(color, -(me as i32)).unwrap().expect("has a color");
            let members: Vec<usize> = (0..n).filter(|r| r % 2 == me % 2).rev().collect();
            assert_eq!(sub.size(), members.len());
            assert_eq!(members[sub.rank()], me);
            // A ring inside the sub-communicator.
            let k = sub.size();
            let mut got = [0usize];
            sub.sendrecv(
                &[me],
                (sub.rank() + 1) % k,
                0,
                &mut got,
                (sub.rank() + k - 1) % k,
                0,
            )
            .unwrap();
            assert_eq!(got[0], members[(sub.rank() + k - 1) % k]);
            // Undefined color.
            let none = w.split(if me == 0 { -1 } else { 0 }, 0).unwrap();
            assert_eq!(none.is_none(), me == 0);
        });
    }
}

#[test]
fn several_threads_share_one_communicator() {
    on_all(2, |w| {
        let peer = 1 - w.rank();
        std::thread::scope(|s| {
            for t in 0..4i32 {
                let w = w.clone();
                s.spawn(move || {
                    for i in 0..200u32 {
                        w.send(&[i], peer, t).unwrap();
                        let mut x = [0u32];
                        w.recv_into(&mut x, peer, t).unwrap();
                        assert_eq!(x[0], i);
                    }
                });
            }
        });
    });
}

#[test]
fn bad_arguments_are_errors() {
    on_all(2, |w| {
        assert!(matches!(
            w.send(&[1u8], 5, 0),
            Err(Error::RankOutOfRange { rank: 5, size: 2 })
        ));
        assert!(matches!(w.send(&[1u8], 0, -3), Err(Error::InvalidTag(-3))));
        let mut b = [0u8];
        assert!(matches!(
            w.recv_into(&mut b, 9, 0),
            Err(Error::RankOutOfRange { .. })
        ));
        // A 3-byte message is not a whole number of u16.
        w.send(&[1u8, 2, 3], w.rank(), 1).unwrap();
        assert!(matches!(
            w.recv_vec::<u16>(w.rank(), 1),
            Err(Error::ElementSize { bytes: 3, elem: 2 })
        ));
    });
}

#[test]
fn a_panicking_rank_fails_its_peers_instead_of_hanging_them() {
    for b in BACKENDS {
        let r = std::panic::catch_unwind(|| {
            run_local_with(b, 3, |w| {
                if w.rank() == 1 {
                    panic!("rank 1 fails on purpose");
                }
                // Waits for a message rank 1 will never send.
                let mut x = [0u8];
                let e = w.recv_into(&mut x, 1, 0).unwrap_err();
                assert!(matches!(e, Error::PeerLost { rank: 1, .. }), "{e}");
            })
        });
        let msg = r.unwrap_err();
        let text = msg.downcast_ref::<&str>().copied().unwrap_or_default();
        assert_eq!(text, "rank 1 fails on purpose");
    }
}

#[test]
fn a_send_to_self_wakes_a_thread_blocked_on_its_receive() {
    on_all(2, |w| {
        let me = w.rank();
        let (tx, rx) = std::sync::mpsc::channel();
        let wr = w.clone();
        std::thread::spawn(move || {
            let mut x = [0u32];
            let r = wr.recv_into(&mut x, ANY_SOURCE, 11).map(|_| x[0]);
            let _ = tx.send(r);
        });
        // Let the receiver block (spin, then sleep in epoll) before the self-send.
        std::thread::sleep(std::time::Duration::from_millis(100));
        w.send(&[me as u32 + 40], me, 11).unwrap();
        // Without a wake-up the receiver would sleep forever: a generous bound turns
        // that into a failure instead of a hang.
        let got = rx
            .recv_timeout(std::time::Duration::from_secs(60))
            .expect("the receiver was never woken");
        assert_eq!(got.unwrap(), me as u32 + 40);
    });
}

#[test]
fn a_glance_at_the_sockets_does_not_steal_a_sleepers_wake_up() {
    // A thread asleep in a receive is woken by a send to self; right after, this
    // thread glances at the sockets (iprobe). The glance must not consume the
    // wake-up meant for the sleeper.
    const ROUNDS: u32 = 30;
    on_all(2, |w| {
        let me = w.rank();
        let (tx, rx) = std::sync::mpsc::channel();
        let wr = w.clone();
        std::thread::spawn(move || {
            for _ in 0..ROUNDS {
                let mut x = [0u32];
                let r = wr.recv_into(&mut x, ANY_SOURCE, 12).map(|_| x[0]);
                if tx.send(r).is_err() {
                    break;
                }
            }
        });
        for i in 0..ROUNDS {
            // Long enough for the receiver to stop spinning and sleep in epoll.
            std::thread::sleep(std::time::Duration::from_millis(2));
            w.send(&[i], me, 12).unwrap();
            assert!(w.iprobe(me, 99).unwrap().is_none());
            let got = rx
                .recv_timeout(std::time::Duration::from_secs(60))
                .expect("the receiver was never woken");
            assert_eq!(got.unwrap(), i);
        }
    });
}

#[test]
fn a_one_gib_message_arrives_whole() {
    // The rendezvous moves it straight from the sender's buffer into the posted one:
    // the receiver never holds more than its own buffer.
    let len = 1usize << 30;
    run_local_with(LocalBackend::Sockets, 2, |w| {
        if w.rank() == 0 {
            let mut data = vec![0u8; len];
            for (i, chunk) in data.chunks_mut(1 << 20).enumerate() {
                chunk.fill(i as u8);
            }
            w.send(&data, 1, 0).unwrap();
        } else {
            let mut buf = vec![0xEEu8; len];
            let st = w.recv_into(&mut buf, 0, 0).unwrap();
            assert_eq!(st.bytes(), len);
            for (i, chunk) in buf.chunks(1 << 20).enumerate() {
                assert!(chunk.iter().all(|&b| b == i as u8), "MiB {i} is wrong");
            }
        }
    })
    .unwrap();
}

#[test]
fn wait_all_completes_out_of_order_and_reports_the_first_error_after_all() {
    on_all(2, |w| {
        if w.rank() == 0 {
            // Tags 2, 1, 0: the receives below complete last-first.
            for t in [2, 1, 0] {
                w.send(&[t as u32; 3], 1, t).unwrap();
            }
            // Then a message too long for its receive, between two good ones.
            w.send(&[7u32], 1, 5).unwrap();
            w.send(&[8u32, 8], 1, 6).unwrap();
            w.send(&[9u32], 1, 7).unwrap();
        } else {
            let mut bufs = [[0u32; 3]; 3];
            let sts = scope(|s| {
                let reqs = bufs
                    .iter_mut()
                    .enumerate()
                    .map(|(t, b)| w.irecv_into(s, b, 0, t as i32).unwrap())
                    .collect();
                wait_all(reqs).unwrap()
            });
            assert_eq!(sts.iter().map(|s| s.tag()).collect::<Vec<_>>(), [0, 1, 2]);
            assert_eq!(bufs, [[0; 3], [1; 3], [2; 3]]);
            let (mut a, mut b, mut c) = ([0u32], [0u32], [0u32]);
            let r = scope(|s| {
                let reqs = vec![
                    w.irecv_into(s, &mut a, 0, 5).unwrap(),
                    w.irecv_into(s, &mut b, 0, 6).unwrap(),
                    w.irecv_into(s, &mut c, 0, 7).unwrap(),
                ];
                wait_all(reqs)
            });
            assert!(matches!(r, Err(Error::Truncated { .. })), "{r:?}");
            // The good ones completed all the same.
            assert_eq!((a[0], c[0]), (7, 9));
        }
    });
}

#[test]
fn large_messages_cross_in_both_directions_at_once() {
    // Sizes around the engine's 256 KiB socket pieces and well past them, sent by
    // both ranks at the same time: some into receives posted first, some into
    // receives posted after the sends (the request-to-send waits unexpected), the
    // last into an allocated buffer.
    let sizes = [(256 << 10) - 1, 256 << 10, (256 << 10) + 1, (3 << 20) + 7];
    on_all(2, |w| {
        let (me, peer) = (w.rank(), 1 - w.rank());
        let outs: Vec<Vec<u8>> = sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| pattern(n, (me * 10 + i) as u64))
            .collect();
        let mut ins: Vec<Vec<u8>> = sizes.iter().map(|&n| vec![0u8; n]).collect();
        let (early, late) = ins.split_at_mut(2);
        scope(|s| {
            let mut reqs = Vec::new();
            for (i, b) in early.iter_mut().enumerate() {
                reqs.push(w.irecv_into(s, b, peer, i as i32).unwrap());
            }
            let sends: Vec<_> = outs
                .iter()
                .enumerate()
                .map(|(i, o)| w.isend(s, o, peer, i as i32).unwrap())
                .collect();
            for (i, b) in late.iter_mut().take(1).enumerate() {
                reqs.push(w.irecv_into(s, b, peer, (i + 2) as i32).unwrap());
            }
            let (big, st) = w.recv_vec::<u8>(peer, 3).unwrap();
            assert_eq!(st.bytes(), sizes[3]);
            assert_eq!(big, pattern(sizes[3], (peer * 10 + 3) as u64));
            wait_all(reqs).unwrap();
            wait_all(sends).unwrap();
        });
        for (i, b) in ins.iter().take(3).enumerate() {
            assert_eq!(*b, pattern(sizes[i], (peer * 10 + i) as u64), "message {i}");
        }
    });
}

#[test]
fn sends_completed_when_posted_mix_with_requests_in_flight() {
    // Over shared memory a small send is complete as it is posted (no request in the
    // transport); over sockets it is a request. Either way `wait_all` keeps the order,
    // `wait_any` reports each request once, `test` reports once and then refuses, and
    // an owned send hands its buffer back.
    on_all(2, |w| {
        let peer = 1 - w.rank();
        if w.rank() == 0 {
            let small = [5u32; 4];
            let big = pattern(200_000, 9);
            let sts = scope(|s| {
                let reqs = vec![
                    w.isend(s, &small, peer, 1).unwrap(),
                    w.isend(s, &big, peer, 2).unwrap(),
                    w.isend(s, &small, peer, 3).unwrap(),
                ];
                wait_all(reqs).unwrap()
            });
            assert_eq!(sts.iter().map(|s| s.tag()).collect::<Vec<_>>(), [1, 2, 3]);
            assert_eq!(
                sts.iter().map(|s| s.bytes()).collect::<Vec<_>>(),
                [16, 200_000, 16]
            );
            scope(|s| {
                let mut r = w.isend(s, &small, peer, 4).unwrap();
                let st = loop {
                    if let Some(st) = r.test().unwrap() {
                        break st;
                    }
                };
                assert_eq!((st.source(), st.tag(), st.bytes()), (peer, 4, 16));
                assert!(matches!(r.test(), Err(Error::InvalidArgument(_))));
                let mut reqs = vec![
                    w.isend(s, &big, peer, 5).unwrap(),
                    w.isend(s, &small, peer, 6).unwrap(),
                ];
                let mut tags = Vec::new();
                while !reqs.is_empty() {
                    tags.push(wait_any(&mut reqs).unwrap().1.tag());
                }
                tags.sort();
                assert_eq!(tags, [5, 6]);
            });
            let (back, st) = w
                .isend_owned(vec![7u8; 8], peer, 7)
                .unwrap()
                .wait()
                .unwrap();
            assert_eq!((back, st.tag()), (vec![7u8; 8], 7));
        } else {
            for (tag, len) in [
                (1, 16),
                (2, 200_000),
                (3, 16),
                (4, 16),
                (5, 200_000),
                (6, 16),
                (7, 8),
            ] {
                let (v, st) = w.recv_vec::<u8>(peer, tag).unwrap();
                assert_eq!((st.tag(), v.len()), (tag, len));
                if tag == 2 || tag == 5 {
                    assert_eq!(v, pattern(200_000, 9));
                }
            }
        }
    });
}
