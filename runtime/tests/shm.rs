//! The shared-memory links (`LocalBackend::Shm`): what only they can get wrong — a
//! full ring, a writer that dies with half a frame in the ring, the cross-memory
//! rendezvous into both kinds of receive, and a sleeping reader's doorbell.
//! (Every point-to-point test in `p2p.rs` also runs over them.)

use std::time::Duration;

use dsmpi_runtime::{run_local_with, Error, LocalBackend};

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
fn threads_on_one_host_use_shared_memory() {
    let names = run_local_with(LocalBackend::Shm, 3, |w| w.transport().name()).unwrap();
    assert_eq!(names, vec!["shm"; 3]);
    let names = run_local_with(LocalBackend::Sockets, 2, |w| w.transport().name()).unwrap();
    assert_eq!(names, vec!["local"; 2]);
}

#[test]
fn a_full_ring_holds_the_writer_back_and_loses_nothing() {
    // 16 MiB of eager messages against rings of at most 256 KiB, read only after the
    // writer has long filled its ring: the writer must wait for room, then go on.
    let count = 4096usize;
    let len = 4096usize;
    run_local_with(LocalBackend::Shm, 2, |w| {
        if w.rank() == 0 {
            for i in 0..count {
                w.send(&pattern(len, i as u64), 1, 7).unwrap();
            }
        } else {
            std::thread::sleep(Duration::from_millis(200));
            let mut buf = vec![0u8; len];
            for i in 0..count {
                w.recv_into(&mut buf, 0, 7).unwrap();
                assert!(
                    buf == pattern(len, i as u64),
                    "message {i} arrived corrupted"
                );
            }
        }
    })
    .unwrap();
}

#[test]
fn a_writer_dying_mid_frame_fails_the_reader_cleanly() {
    // Rank 1 queues far more than its ring holds and dies: its last frame is cut in
    // the ring. Rank 0 must get every whole message intact, then a PeerLost error
    // naming rank 1 — never a hang, never a half message.
    let len = 60_000usize;
    let r = std::panic::catch_unwind(|| {
        run_local_with(LocalBackend::Shm, 2, |w| {
            if w.rank() == 1 {
                // Owned sends, leaked: their buffers stay valid however long the
                // transport holds them, and nothing waits for them at the panic.
                for i in 0..64 {
                    std::mem::forget(w.isend_owned(pattern(len, i), 0, 3).unwrap());
                }
                panic!("rank 1 dies with its ring full");
            } else {
                std::thread::sleep(Duration::from_millis(200));
                let mut buf = vec![0u8; len];
                let mut whole = 0;
                let err = loop {
                    match w.recv_into(&mut buf, 1, 3) {
                        Ok(_) => {
                            assert!(buf == pattern(len, whole), "message {whole} corrupted");
                            whole += 1;
                        }
                        Err(e) => break e,
                    }
                };
                assert!(whole < 64, "rank 1 died before sending everything");
                assert!(matches!(err, Error::PeerLost { rank: 1, .. }), "{err}");
            }
        })
    });
    let panic = r.expect_err("rank 1's panic is resumed by run_local");
    let msg = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_default();
    assert!(msg.contains("rank 1 dies"), "unexpected panic: {msg}");
}

#[test]
fn large_messages_land_in_posted_and_allocated_receives() {
    // Rendezvous sizes: read across processes' memory (cross-memory attach) when the
    // kernel allows it, else streamed through the ring; both must be exact.
    for len in [65_537usize, 1 << 20, 9 << 20] {
        run_local_with(LocalBackend::Shm, 2, |w| {
            if w.rank() == 0 {
                w.send(&pattern(len, 1), 1, 1).unwrap();
                w.send(&pattern(len, 2), 1, 2).unwrap();
                // A receive smaller than the message: an error for the receiver, a
                // completed send here.
                w.send(&pattern(len, 3), 1, 3).unwrap();
            } else {
                let mut buf = vec![0u8; len];
                w.recv_into(&mut buf, 0, 1).unwrap();
                assert!(buf == pattern(len, 1));
                let (v, st) = w.recv_vec::<u8>(0, 2).unwrap();
                assert_eq!(st.bytes(), len);
                assert!(v == pattern(len, 2));
                let mut small = vec![0u8; len - 1];
                let e = w.recv_into(&mut small, 0, 3).unwrap_err();
                assert!(matches!(e, Error::Truncated { .. }), "{e}");
            }
        })
        .unwrap();
    }
}

#[test]
fn a_sleeping_reader_is_woken_by_the_doorbell() {
    // The reader waits far longer than its spin, so it sleeps in epoll; only the
    // doorbell byte rung by the writer can end that sleep.
    run_local_with(LocalBackend::Shm, 2, |w| {
        for round in 0..5u64 {
            if w.rank() == 0 {
                std::thread::sleep(Duration::from_millis(30));
                w.send(&[round], 1, 0).unwrap();
            } else {
                let mut x = [0u64];
                w.recv_into(&mut x, 0, 0).unwrap();
                assert_eq!(x[0], round);
            }
        }
    })
    .unwrap();
}

#[test]
fn large_messages_stream_through_the_ring_without_cross_memory_attach() {
    // Where the kernel refuses process_vm_readv, the payload streams through the ring.
    // `DSMPI_SHM_CMA=0` forces that path; the variable is read at link set-up, so the
    // large-message test runs again in a child process that has it.
    let exe = std::env::current_exe().expect("test binary");
    let out = std::process::Command::new(exe)
        .args([
            "--exact",
            "large_messages_land_in_posted_and_allocated_receives",
            "--nocapture",
        ])
        .env("DSMPI_SHM_CMA", "0")
        .output()
        .expect("running the test binary");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_blocking_receive_never_jumps_an_earlier_claim() {
    // The blocking receive takes eager messages straight off the ring. It must still
    // leave a message to a receive posted before it, take an earlier unexpected
    // message before a later one waiting in the ring, and report a truncation.
    run_local_with(LocalBackend::Shm, 2, |w| {
        if w.rank() == 0 {
            for (i, tag) in [(1u32, 5), (2, 5), (3, 6), (4, 5), (5, 7)] {
                w.send(&[i], 1, tag).unwrap();
            }
            // Rank 1 has read all of the above off its ring.
            w.recv_into(&mut [0u32], 1, 9).unwrap();
            w.send(&[6u32], 1, 6).unwrap();
            w.send(&[10u32, 11], 1, 8).unwrap();
            w.send(&[12u32], 1, 8).unwrap();
        } else {
            let mut early = [0u32];
            let mut x = [0u32];
            dsmpi_runtime::scope(|s| {
                // Posted first: takes message 1, although the blocking receive below
                // asks for the same source and tag.
                let r = w.irecv_into(s, &mut early, 0, 5).unwrap();
                let st = w.recv_into(&mut x, 0, 5).unwrap();
                assert_eq!((x[0], st.tag()), (2, 5));
                r.wait().unwrap();
            });
            assert_eq!(early[0], 1);
            // Tag 7 first: messages 3 and 4 become unexpected on the way.
            let st = w.recv_into(&mut x, 0, 7).unwrap();
            assert_eq!((x[0], st.tag()), (5, 7));
            w.send(&[0u32], 0, 9).unwrap();
            // Message 6 gets into the ring meanwhile (were it not there yet, the
            // check below would pass without testing anything, never fail).
            std::thread::sleep(Duration::from_millis(200));
            // Message 3, unexpected, comes before message 6 from the ring.
            let st = w.recv_into(&mut x, 0, dsmpi_runtime::ANY_TAG).unwrap();
            assert_eq!((x[0], st.tag()), (3, 6));
            let st = w.recv_into(&mut x, 0, 5).unwrap();
            assert_eq!((x[0], st.tag()), (4, 5));
            let st = w.recv_into(&mut x, 0, 6).unwrap();
            assert_eq!((x[0], st.tag()), (6, 6));
            // Two elements into one: an error naming the sizes, and the link goes on.
            match w.recv_into(&mut x, 0, 8) {
                Err(Error::Truncated { .. }) => {}
                other => panic!("expected a truncation, got {other:?}"),
            }
            let st = w.recv_into(&mut x, 0, 8).unwrap();
            assert_eq!((x[0], st.bytes()), (12, 4));
        }
    })
    .unwrap();
}

#[test]
fn any_source_receives_keep_each_senders_order_and_lose_nothing() {
    // Any-source receives (into buffers and into allocations) take frames off every
    // ring in turn: each sender's messages must still come in its order, all of them.
    let per = 2000u32;
    run_local_with(LocalBackend::Shm, 4, |w| {
        let n = w.size();
        if w.rank() == 0 {
            let mut next = vec![0u32; n];
            for i in 0..(n as u32 - 1) * per {
                let (src, v) = if i % 2 == 0 {
                    let (v, st) = w.recv_vec::<u32>(dsmpi_runtime::ANY_SOURCE, 3).unwrap();
                    (st.source(), v)
                } else {
                    let mut b = [0u32; 2];
                    let st = w.recv_into(&mut b, dsmpi_runtime::ANY_SOURCE, 3).unwrap();
                    (st.source(), b[..st.bytes() / 4].to_vec())
                };
                assert_eq!(v, vec![src as u32, next[src]], "message from {src}");
                next[src] += 1;
            }
            assert!(next[1..].iter().all(|&k| k == per), "{next:?}");
        } else {
            for k in 0..per {
                w.send(&[w.rank() as u32, k], 0, 3).unwrap();
            }
        }
    })
    .unwrap();
}
