//! Load/store through views: the fault path, twins and diffs, invalidation.

use dsmpi_runtime::Communicator;
use dsmpi_runtime::{run_local, run_local_with, LocalBackend};
use dsmpi_window::{FaultPath, Layout, LockType, WinOptions, Window};

/// Both ways of serving a fault; the tests of coherence run each.
const PATHS: [FaultPath; 2] = [FaultPath::Inline, FaultPath::Thread];

/// A blocked window that maps same-host regions directly (`share`) or keeps the
/// fault path between every pair (the tests of coherence run both ways; under
/// `DSMPI_TRANSPORT=tcp` nothing is shared either way), its faults served by `path`.
fn alloc(world: &Communicator, bytes: usize, share: bool, path: FaultPath) -> Window {
    let opts = WinOptions {
        share_same_host: share,
        fault_path: path,
        ..WinOptions::default()
    };
    Window::allocate_opts(world, bytes, opts).unwrap()
}

#[test]
fn page_bounced_among_nine_ranks_under_exclusive_locks() {
    for (b, path) in [
        (LocalBackend::Sockets, FaultPath::Inline),
        (LocalBackend::Tcp, FaultPath::Inline),
        (LocalBackend::Sockets, FaultPath::Thread),
    ] {
        let n = 9;
        let rounds = 20;
        run_local_with(b, n, |world| {
            let win = alloc(&world, 4096, true, path);
            let v = win.view::<u64>().unwrap();
            // One page homed at rank 4; word 0 a counter, word 1 + r rank r's tally.
            let home = 4;
            let base = v.index_of(home, 0).unwrap();
            let me = world.rank();
            for _ in 0..rounds {
                win.lock(LockType::Exclusive, home).unwrap();
                v.update(base, |c| c + 1).unwrap();
                v.update(base + 1 + me, |c| c + 1).unwrap();
                win.unlock(home).unwrap();
            }
            win.fence().unwrap();
            assert_eq!(v.load(base).unwrap(), (n * rounds) as u64);
            for r in 0..n {
                assert_eq!(v.load(base + 1 + r).unwrap(), rounds as u64);
            }
            let st = win.stats();
            if me != home {
                assert!(st.fetches >= rounds as u64, "{st:?}");
                assert!(st.diff_pages >= rounds as u64, "{st:?}");
            }
        })
        .unwrap();
    }
}

#[test]
fn two_ranks_write_different_halves_of_one_page() {
    for share in [false, true] {
        for path in PATHS {
            two_halves(share, path);
        }
    }
}

fn two_halves(share: bool, path: FaultPath) {
    run_local(3, |world| {
        let win = alloc(&world, 4096, share, path);
        let v = win.view::<u8>().unwrap();
        let page = v.index_of(2, 0).unwrap(); // homed at rank 2
        let me = world.rank();
        win.fence().unwrap();
        if me < 2 {
            for i in 0..2048 {
                v.store(page + me * 2048 + i, (i % 251) as u8 + me as u8)
                    .unwrap();
            }
        }
        win.fence().unwrap();
        for half in 0..2 {
            for i in 0..2048 {
                assert_eq!(
                    v.load(page + half * 2048 + i).unwrap(),
                    (i % 251) as u8 + half as u8
                );
            }
        }
        // Everyone has read before anyone writes again: without this epoch boundary a
        // slow reader's first fault could fetch the home copy after a fast rank has
        // already released its next writes (a data race, so any value is allowed).
        win.fence().unwrap();
        // Interleaved bytes too: rank 0 writes even bytes, rank 1 odd ones.
        if me < 2 {
            for i in (me..4096).step_by(2) {
                v.store(page + i, 0xA0 + me as u8).unwrap();
            }
        }
        win.fence().unwrap();
        for i in 0..4096 {
            assert_eq!(v.load(page + i).unwrap(), 0xA0 + (i % 2) as u8);
        }
    })
    .unwrap();
}

#[test]
fn view_and_rma_see_each_other_across_epochs() {
    for share in [false, true] {
        for path in PATHS {
            view_and_rma(share, path);
        }
    }
}

fn view_and_rma(share: bool, path: FaultPath) {
    run_local(2, |world| {
        let win = alloc(&world, 3 * 4096, share, path);
        let v = win.view::<u32>().unwrap();
        let me = world.rank();
        let other = 1 - me;
        // Stores through the view into the other's region...
        for k in 0..3 * 1024 {
            v.store(v.index_of(other, k).unwrap(), (me * 100_000 + k) as u32)
                .unwrap();
        }
        win.fence().unwrap();
        // ...are visible to RMA gets and to the home's own view.
        let mut got = vec![0u32; 3 * 1024];
        win.get(&mut got, me, 0).unwrap();
        for (k, g) in got.iter().enumerate() {
            assert_eq!(*g, (other * 100_000 + k) as u32);
            assert_eq!(v.load(v.index_of(me, k).unwrap()).unwrap(), *g);
        }
        win.fence().unwrap();
        // RMA puts are visible to loads after the next fence.
        win.put(&[7u32; 10], other, 5).unwrap();
        win.fence().unwrap();
        assert_eq!(v.load(v.index_of(other, 5).unwrap()).unwrap(), 7);
        assert_eq!(v.load(v.index_of(me, 14).unwrap()).unwrap(), 7);
    })
    .unwrap();
}

#[test]
fn threads_faulting_on_one_page_cause_one_fetch() {
    for path in PATHS {
        threads_faulting(path);
    }
}

fn threads_faulting(path: FaultPath) {
    run_local(2, |world| {
        let win = alloc(&world, 4096, false, path);
        let v = win.view::<u64>().unwrap();
        let me = world.rank();
        if me == 1 {
            for i in 0..512 {
                v.store(v.index_of(1, i).unwrap(), i as u64 * 3).unwrap();
            }
        }
        win.fence().unwrap();
        if me == 0 {
            let before = win.stats().fetches;
            std::thread::scope(|s| {
                for t in 0..8 {
                    let v = &v;
                    s.spawn(move || {
                        for i in (t..512).step_by(8) {
                            let x = v.load(v.index_of(1, i).unwrap()).unwrap();
                            assert_eq!(x, i as u64 * 3);
                        }
                    });
                }
            });
            assert_eq!(win.stats().fetches - before, 1);
        }
        win.fence().unwrap();
    })
    .unwrap();
}

#[test]
fn round_robin_pages_written_by_every_rank_in_turn() {
    let n = 4;
    run_local(n, |world| {
        let pages_per_rank = 3;
        let win = Window::allocate_with(&world, pages_per_rank * 4096, Layout::RoundRobin).unwrap();
        let v = win.view::<u64>().unwrap();
        let total_pages = n * pages_per_rank;
        let per_page = 4096 / 8;
        let me = world.rank();
        for p in 0..total_pages {
            assert_eq!(win.home_of(p * 4096).unwrap(), p % n);
        }
        for turn in 0..n {
            if turn == me {
                for p in 0..total_pages {
                    v.update(p * per_page + turn, |x| x + (p * 10 + turn) as u64)
                        .unwrap();
                    v.update(p * per_page + per_page - 1, |x| x + 1).unwrap();
                }
            }
            win.fence().unwrap();
        }
        for p in 0..total_pages {
            for t in 0..n {
                assert_eq!(v.load(p * per_page + t).unwrap(), (p * 10 + t) as u64);
            }
            assert_eq!(v.load(p * per_page + per_page - 1).unwrap(), n as u64);
        }
        // RMA addressing follows the same placement.
        let mut x = [0u64];
        win.get(&mut x, 1, per_page + 2).unwrap(); // page 1 of rank 1 = segment page n+1
        assert_eq!(x[0], ((n + 1) * 10 + 2) as u64);
    })
    .unwrap();
}

#[test]
fn byte_range_locks_fibonacci() {
    for share in [false, true] {
        for path in PATHS {
            fibonacci(share, path);
        }
    }
}

fn fibonacci(share: bool, path: FaultPath) {
    let n = 5;
    let steps = 60u64;
    run_local(n, |world| {
        let win = alloc(&world, 64, share, path);
        let v = win.view::<u64>().unwrap();
        // Words at rank 2's region: a, b, step.
        let base = v.index_of(2, 0).unwrap();
        let off = win.segment_offset(2, 0).unwrap();
        if world.rank() == 2 {
            v.store(base + 1, 1).unwrap();
        }
        win.fence().unwrap();
        loop {
            let g = win.lock_write(off, 24).unwrap();
            let step = v.load(base + 2).unwrap();
            if step >= steps {
                g.release().unwrap();
                break;
            }
            let (a, b) = (v.load(base).unwrap(), v.load(base + 1).unwrap());
            v.store(base, b).unwrap();
            v.store(base + 1, a.wrapping_add(b)).unwrap();
            v.store(base + 2, step + 1).unwrap();
            g.release().unwrap();
        }
        let g = win.lock_read(off, 24).unwrap();
        let (mut a, mut b) = (0u64, 1u64);
        for _ in 0..steps {
            (a, b) = (b, a.wrapping_add(b));
        }
        assert_eq!(v.load(base).unwrap(), a);
        assert_eq!(v.load(base + 1).unwrap(), b);
        drop(g);
        win.fence().unwrap();
    })
    .unwrap();
}

/// Stores and loads of one element type `T` on pages homed at the other rank: a
/// write fault on an invalid page, read faults after the fence, then a write fault
/// on a read-only copy; every value must come back exact. `make(k)` is element k.
fn elements_of<T>(path: FaultPath, make: fn(usize) -> T)
where
    T: bytemuck::Pod + PartialEq + std::fmt::Debug + Send + Sync,
{
    run_local(2, |world| {
        let size = std::mem::size_of::<T>();
        let count = 2 * 4096 / size; // two pages' worth on each rank, and a bit more
        let win = alloc(&world, count * size + 64, false, path);
        let v = win.view::<T>().unwrap();
        let me = world.rank();
        let other = 1 - me;
        // Element k of rank r's region, offset so that neighbouring ranks differ.
        let value = |r: usize, k: usize| make(k + 7 * r);
        for k in 0..count {
            v.store(v.index_of(other, k).unwrap(), value(other, k))
                .unwrap();
        }
        win.fence().unwrap();
        for k in 0..count {
            assert_eq!(v.load(v.index_of(me, k).unwrap()).unwrap(), value(me, k));
        }
        win.fence().unwrap();
        for k in 0..count {
            assert_eq!(
                v.load(v.index_of(other, k).unwrap()).unwrap(),
                value(other, k)
            );
        }
        // The pages are read-only copies now: the next stores fault as writes.
        for k in (0..count).step_by(3) {
            v.store(v.index_of(other, k).unwrap(), value(other, k + 1))
                .unwrap();
        }
        win.fence().unwrap();
        for k in 0..count {
            let want = if k % 3 == 0 {
                value(me, k + 1)
            } else {
                value(me, k)
            };
            assert_eq!(v.load(v.index_of(me, k).unwrap()).unwrap(), want);
        }
        // At least: two write faults on invalid pages (fetched), two read faults
        // (fetched), two write faults on read-only copies (twins, no fetch); the
        // pages may also migrate to their one writer, and then this rank's loads of
        // its own region fault too.
        let st = win.stats();
        assert!(st.faults >= 6 && st.fetches >= 4, "{st:?}");
        let inline = if path == FaultPath::Inline {
            st.faults
        } else {
            0
        };
        assert_eq!(st.faults_inline, inline, "{st:?}");
        win.fence().unwrap();
    })
    .unwrap();
}

#[test]
fn elements_of_every_size_fault_and_come_back_exact() {
    for path in PATHS {
        elements_of::<u8>(path, |k| (k * 31 % 251) as u8);
        elements_of::<u16>(path, |k| (k * 7919) as u16);
        elements_of::<u32>(path, |k| (k as u32).wrapping_mul(2_654_435_761));
        elements_of::<u64>(path, |k| (k as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        elements_of::<f64>(path, |k| k as f64 * -1.5);
        // Sizes without a single instruction: copied with one `rep movsb`; elements
        // of 3 and 12 bytes straddle pages, so a copy can fault halfway.
        elements_of::<u128>(path, |k| (k as u128) << 70 | k as u128);
        elements_of::<[u8; 3]>(path, |k| [k as u8, (k >> 8) as u8, 0xA5]);
        elements_of::<[u32; 3]>(path, |k| [k as u32, 0xDEAD_BEEF, !(k as u32)]);
    }
}
