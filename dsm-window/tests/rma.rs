//! RMA operations and synchronization on run_local, both backends.

use dsmpi_runtime::{run_local, run_local_with, LocalBackend};
use dsmpi_window::{LockType, Op, WinError, Window};

fn backends() -> [LocalBackend; 2] {
    [LocalBackend::Sockets, LocalBackend::Tcp]
}

#[test]
fn put_get_fence_ring() {
    for b in backends() {
        for n in [1, 2, 5] {
            let out = run_local_with(b, n, |world| {
                let win = Window::allocate(&world, 64 * 8).unwrap();
                let (me, n) = (world.rank(), world.size());
                win.fence().unwrap();
                let data: Vec<u64> = (0..64).map(|i| (me * 1000 + i) as u64).collect();
                win.put(&data, (me + 1) % n, 0).unwrap();
                win.fence().unwrap();
                let mut got = vec![0u64; 64];
                win.get(&mut got, me, 0).unwrap();
                let prev = (me + n - 1) % n;
                let want: Vec<u64> = (0..64).map(|i| (prev * 1000 + i) as u64).collect();
                assert_eq!(got, want);
                win.free().unwrap();
            })
            .unwrap();
            assert_eq!(out.len(), n);
        }
    }
}

#[test]
fn accumulate_loses_no_update() {
    for n in 1..=9 {
        let iters = 2000 / n + 200;
        run_local(n, |world| {
            let win = Window::allocate(&world, 4 * 8).unwrap();
            win.fence().unwrap();
            for i in 0..iters {
                win.accumulate(&[1u64, 2], 0, 0, Op::Sum).unwrap();
                win.accumulate(&[i as i64], 0, 2, Op::Max).unwrap();
                if i % 97 == 0 {
                    win.flush(0).unwrap();
                }
            }
            win.fence().unwrap();
            let mut got = [0u64; 2];
            win.get(&mut got, 0, 0).unwrap();
            let mut mx = [0i64];
            win.get(&mut mx, 0, 2).unwrap();
            let total = (n * iters) as u64;
            assert_eq!(got, [total, 2 * total]);
            assert_eq!(mx[0], iters as i64 - 1);
        })
        .unwrap();
    }
}

#[test]
fn fetch_and_op_tickets_unique() {
    for b in backends() {
        let n = 6;
        let per = 300;
        let out = run_local_with(b, n, |world| {
            let win = Window::allocate(&world, 8).unwrap();
            let target = world.size() - 1;
            let mut mine = Vec::with_capacity(per);
            for _ in 0..per {
                mine.push(win.fetch_and_op(1u64, target, 0, Op::Sum).unwrap());
            }
            win.fence().unwrap();
            mine
        })
        .unwrap();
        let mut all: Vec<u64> = out.into_iter().flatten().collect();
        all.sort_unstable();
        assert_eq!(all, (0..(n * per) as u64).collect::<Vec<_>>());
    }
}

#[test]
fn cas_spin_lock_gives_mutual_exclusion() {
    let n = 5;
    let rounds = 60;
    run_local(n, |world| {
        // Word 0: the lock; word 1: a counter updated by non-atomic get+put; word 2:
        // number of holders inside (must never exceed 1).
        let win = Window::allocate(&world, 3 * 8).unwrap();
        let me = world.rank() as u64 + 1;
        for _ in 0..rounds {
            while win.compare_and_swap(0u64, me, 0, 0).unwrap() != 0 {
                std::thread::yield_now();
            }
            let inside = win.fetch_and_op(1u64, 0, 2, Op::Sum).unwrap();
            assert_eq!(inside, 0, "two holders at once");
            let mut c = [0u64];
            win.get(&mut c, 0, 1).unwrap();
            c[0] += 1;
            win.put(&c, 0, 1).unwrap();
            win.flush(0).unwrap();
            win.fetch_and_op(u64::MAX, 0, 2, Op::Sum).unwrap(); // -1
            assert_eq!(win.compare_and_swap(me, 0u64, 0, 0).unwrap(), me);
        }
        win.fence().unwrap();
        let mut c = [0u64];
        win.get(&mut c, 0, 1).unwrap();
        assert_eq!(c[0], (n * rounds) as u64);
    })
    .unwrap();
}

#[test]
fn exclusive_lock_counter_via_get_put() {
    let n = 4;
    run_local(n, |world| {
        let win = Window::allocate(&world, 8).unwrap();
        for _ in 0..50 {
            win.lock(LockType::Exclusive, 0).unwrap();
            let mut c = [0u32; 2];
            win.get(&mut c, 0, 0).unwrap();
            c[0] += 1;
            win.put(&c, 0, 0).unwrap();
            win.unlock(0).unwrap();
        }
        win.lock_all().unwrap();
        win.unlock_all().unwrap();
        win.fence().unwrap();
        let mut c = [0u32; 2];
        win.get(&mut c, 0, 0).unwrap();
        assert_eq!(c[0], (n * 50) as u32);
    })
    .unwrap();
}

#[test]
fn pscw_ring() {
    let n = 4;
    run_local(n, |world| {
        let win = Window::allocate(&world, 8).unwrap();
        let (me, n) = (world.rank(), world.size());
        let next = (me + 1) % n;
        let prev = (me + n - 1) % n;
        for round in 0..5u64 {
            win.post(&[prev]).unwrap();
            win.start(&[next]).unwrap();
            win.put(&[round * 100 + me as u64], next, 0).unwrap();
            win.complete().unwrap();
            win.wait().unwrap();
            let mut got = [0u64];
            win.get(&mut got, me, 0).unwrap();
            assert_eq!(got[0], round * 100 + prev as u64);
        }
        assert!(matches!(win.complete(), Err(WinError::Sync(_))));
    })
    .unwrap();
}

#[test]
fn get_accumulate_ops_and_types() {
    run_local(3, |world| {
        let win = Window::allocate(&world, 64).unwrap();
        let me = world.rank();
        if me == 0 {
            win.put(&[1.5f64, 10.0], 2, 0).unwrap();
            win.flush(2).unwrap();
            let mut old = [0.0f64; 2];
            win.get_accumulate(&[2.0f64, 3.0], &mut old, 2, 0, Op::Prod)
                .unwrap();
            assert_eq!(old, [1.5, 10.0]);
            win.get_accumulate(&[0.0f64, 0.0], &mut old, 2, 0, Op::NoOp)
                .unwrap();
            assert_eq!(old, [3.0, 30.0]);
            assert_eq!(win.fetch_and_op(0xF0u8, 2, 20, Op::Bor).unwrap(), 0);
            assert_eq!(win.fetch_and_op(0x3Cu8, 2, 20, Op::Bxor).unwrap(), 0xF0);
            assert_eq!(win.fetch_and_op(0x0Fu8, 2, 20, Op::Band).unwrap(), 0xCC);
            assert_eq!(win.fetch_and_op(-7i32, 2, 6, Op::Min).unwrap(), 0);
            assert_eq!(win.fetch_and_op(5i32, 2, 6, Op::Replace).unwrap(), -7);
            assert_eq!(win.fetch_and_op(0i32, 2, 6, Op::NoOp).unwrap(), 5);
            assert_eq!(win.compare_and_swap(4i32, 9, 2, 6).unwrap(), 5);
            assert_eq!(win.compare_and_swap(5i32, 9, 2, 6).unwrap(), 5);
            assert_eq!(win.fetch_and_op(0i32, 2, 6, Op::NoOp).unwrap(), 9);
        }
        win.fence().unwrap();
    })
    .unwrap();
}

#[test]
fn invalid_accesses_are_errors() {
    run_local(2, |world| {
        let win = Window::allocate(&world, 100 + 60 * world.rank()).unwrap();
        assert!(matches!(
            win.put(&[0u8; 101], 0, 0),
            Err(WinError::OutOfRange { .. })
        ));
        assert!(win.put(&[0u8; 160], 1, 0).is_ok());
        assert!(matches!(
            win.put(&[0u64], 0, 13),
            Err(WinError::OutOfRange { .. })
        ));
        let mut b = [0u32; 2];
        assert!(matches!(
            win.get(&mut b, 1, 39),
            Err(WinError::OutOfRange { .. })
        ));
        assert!(matches!(
            win.get(&mut b, 2, 0),
            Err(WinError::RankOutOfRange { .. })
        ));
        assert!(matches!(
            win.put(&[1u8], 0, usize::MAX),
            Err(WinError::OutOfRange { .. })
        ));
        assert!(matches!(
            win.accumulate(&[1.0f32], 0, 0, Op::Band),
            Err(WinError::InvalidOp { .. })
        ));
        assert!(matches!(
            win.view_at::<u64>(4),
            Err(WinError::Misaligned { .. })
        ));
        let v = win.view::<u64>().unwrap();
        assert!(matches!(v.load(v.len()), Err(WinError::OutOfRange { .. })));
        assert!(matches!(
            v.index_of(0, 13),
            Err(WinError::OutOfRange { .. })
        ));
        assert!(win.lock_write(0, 0).is_err());
        assert!(win.lock_write(win.segment_bytes(), 1).is_err());
        assert!(matches!(win.unlock(0), Err(WinError::Remote { .. })));
        assert!(matches!(win.wait(), Err(WinError::Sync(_))));
        win.fence().unwrap();
    })
    .unwrap();
}

#[test]
fn large_put_get_rendezvous() {
    run_local(3, |world| {
        let bytes = 300_000;
        let win = Window::allocate(&world, bytes).unwrap();
        let me = world.rank();
        let n = world.size();
        let data: Vec<u8> = (0..bytes).map(|i| (i * 7 + me) as u8).collect();
        win.put(&data, (me + 1) % n, 0).unwrap();
        win.fence().unwrap();
        let mut got = vec![0u8; bytes];
        let prev = (me + n - 1) % n;
        win.get(&mut got, me, 0).unwrap();
        assert!(got
            .iter()
            .enumerate()
            .all(|(i, &b)| b == (i * 7 + prev) as u8));
    })
    .unwrap();
}

#[test]
fn many_operations_on_self() {
    // Requests to oneself execute in the calling thread (no message, no wake-up).
    run_local(1, |world| {
        let win = Window::allocate(&world, 64).unwrap();
        for i in 0..500u64 {
            assert_eq!(win.fetch_and_op(1u64, 0, 0, Op::Sum).unwrap(), i);
        }
        for _ in 0..100 {
            let g = win.lock_write(0, 24).unwrap();
            g.release().unwrap();
            win.lock(LockType::Exclusive, 0).unwrap();
            win.unlock(0).unwrap();
        }
        win.fence().unwrap();
    })
    .unwrap();
}

#[test]
fn rank_dying_with_a_lock_fails_the_waiters_instead_of_hanging() {
    use std::sync::atomic::{AtomicBool, Ordering};
    static WAITER_FAILED: AtomicBool = AtomicBool::new(false);
    let r = std::panic::catch_unwind(|| {
        run_local(3, |world| {
            let win = Window::allocate(&world, 8).unwrap();
            match world.rank() {
                1 => {
                    win.lock(LockType::Exclusive, 0).unwrap();
                    world.send(&[1u8], 2, 0).unwrap();
                    std::thread::sleep(std::time::Duration::from_millis(100));
                    panic!("rank 1 dies holding rank 0's lock (expected by the test)");
                }
                2 => {
                    let mut go = [0u8];
                    world.recv_into(&mut go, 1, 0).unwrap();
                    let r = win.lock(LockType::Exclusive, 0);
                    WAITER_FAILED.store(r.is_err(), Ordering::SeqCst);
                }
                _ => {
                    let _ = win.fence();
                }
            }
        })
    });
    assert!(r.is_err(), "the panic of rank 1 is resumed");
    assert!(WAITER_FAILED.load(Ordering::SeqCst));
}

#[test]
fn exclusive_locks_exclude_and_range_locks_serialize_writers() {
    let n = 5;
    run_local(n, |world| {
        let win = Window::allocate(&world, 64).unwrap();
        for _ in 0..30 {
            // Passive-target exclusive lock on rank 0: nobody else inside.
            win.lock(LockType::Exclusive, 0).unwrap();
            assert_eq!(win.fetch_and_op(1u64, 0, 0, Op::Sum).unwrap(), 0);
            win.fetch_and_op(u64::MAX, 0, 0, Op::Sum).unwrap();
            win.unlock(0).unwrap();
            // Byte-range write lock on rank 1's first word: nobody else inside.
            let off = win.segment_offset(1, 0).unwrap();
            let g = win.lock_write(off, 8).unwrap();
            assert_eq!(win.fetch_and_op(1u64, 1, 1, Op::Sum).unwrap(), 0);
            win.fetch_and_op(u64::MAX, 1, 1, Op::Sum).unwrap();
            g.release().unwrap();
            // Readers of a disjoint range never wait for that writer.
            let r = win.lock_read(off + 16, 8).unwrap();
            r.release().unwrap();
        }
        win.fence().unwrap();
    })
    .unwrap();
}
