//! Page migration at fences: a page one rank keeps writing alone through its view moves
//! to that rank; RMA and the other ranks' views follow it to its new owner.
//!
//! Every test separates writing epochs from reading epochs with a fence, so reads never
//! race with the next writes; epochs without writes are neutral for the policy.

use dsmpi_runtime::{run_local, run_local_with, Communicator, LocalBackend};
use dsmpi_window::{LockType, Op, WinOptions, Window};

const PAGE: usize = 4096;
const WORDS: usize = PAGE / 8;

/// A window whose pages may migrate: same-host regions mapped directly are pinned to
/// their home, so these tests keep every pair on the fetch-and-diff path.
fn alloc(world: &Communicator, bytes: usize) -> Window {
    let opts = WinOptions {
        share_same_host: false,
        ..WinOptions::default()
    };
    Window::allocate_opts(world, bytes, opts).unwrap()
}

/// Rank `w` writes words 0..8 of rank 0's first page through the view: `value + i`.
fn write_alone(win: &Window, w: usize, value: u64) {
    if win.rank() == w {
        let v = win.view::<u64>().unwrap();
        let base = v.index_of(0, 0).unwrap();
        for i in 0..8 {
            v.store(base + i, value + i as u64).unwrap();
        }
    }
}

/// Every rank checks words 0..8 of rank 0's first page, through the view and `get`.
fn check_all(win: &Window, value: u64) {
    let v = win.view::<u64>().unwrap();
    let base = v.index_of(0, 0).unwrap();
    for i in 0..8 {
        assert_eq!(v.load(base + i).unwrap(), value + i as u64, "view word {i}");
    }
    let mut got = [0u64; 8];
    win.get(&mut got, 0, 0).unwrap();
    let want: Vec<u64> = (0..8).map(|i| value + i).collect();
    assert_eq!(got.to_vec(), want, "get");
}

#[test]
fn a_page_written_alone_migrates_to_its_writer() {
    for n in 1..=5 {
        run_local(n, |world| {
            let win = alloc(&world, 2 * PAGE);
            let (me, n) = (world.rank(), world.size());
            let w = n - 1; // for n = 1 the writer is the home: nothing to migrate
            win.fence().unwrap();
            let mut diffs_after_move = None;
            for epoch in 0..5u64 {
                write_alone(&win, w, 100 * epoch);
                win.fence().unwrap();
                let moved = win.stats().migrations;
                if n > 1 {
                    // Two epochs of sole writing move the page, and nothing else moves.
                    let want = if epoch >= 1 { 1 } else { 0 };
                    assert_eq!(moved, want, "epoch {epoch}");
                    let owner = win.owner_of(0).unwrap();
                    assert_eq!(owner, if epoch >= 1 { w } else { 0 });
                    assert_eq!(win.owner_of(PAGE).unwrap(), 0, "the other page stays");
                    assert_eq!(win.home_of(0).unwrap(), 0, "the home does not change");
                } else {
                    assert_eq!(moved, 0);
                }
                if epoch == 1 {
                    diffs_after_move = Some(win.stats().diff_pages);
                }
                check_all(&win, 100 * epoch);
                // A reading epoch: neutral for the policy, and keeps reads off the
                // next epoch's writes.
                win.fence().unwrap();
            }
            // The new owner writes its page in place: no more diffs for it.
            if me == w {
                assert_eq!(Some(win.stats().diff_pages), diffs_after_move);
            }
            win.free().unwrap();
        })
        .unwrap();
    }
}

#[test]
fn a_page_written_by_two_ranks_does_not_migrate() {
    for n in 3..=5 {
        run_local(n, |world| {
            let win = alloc(&world, PAGE);
            let v = win.view::<u64>().unwrap();
            let me = world.rank();
            let base = v.index_of(0, 0).unwrap();
            for epoch in 0..5u64 {
                // Ranks 1 and 2 write different words of rank 0's page.
                if me == 1 || me == 2 {
                    v.store(base + me, epoch * 10 + me as u64).unwrap();
                }
                win.fence().unwrap();
                assert_eq!(v.load(base + 1).unwrap(), epoch * 10 + 1);
                assert_eq!(v.load(base + 2).unwrap(), epoch * 10 + 2);
                win.fence().unwrap();
            }
            assert_eq!(win.stats().migrations, 0);
            assert_eq!(win.owner_of(0).unwrap(), 0);
        })
        .unwrap();
    }
}

#[test]
fn rma_on_a_migrated_page_lands_exactly() {
    for n in 2..=5 {
        run_local(n, |world| {
            let win = alloc(&world, 2 * PAGE);
            let (me, n) = (world.rank(), world.size());
            let w = 1;
            for epoch in 0..2u64 {
                write_alone(&win, w, epoch);
                win.fence().unwrap();
            }
            assert_eq!(win.owner_of(0).unwrap(), w);
            assert_eq!(win.owner_of(PAGE).unwrap(), 0);
            // Accumulates from every rank on the migrated page (word 100), and one
            // that spans both pages of rank 0's region (two owners).
            let iters = 200;
            for _ in 0..iters {
                win.accumulate(&[1u64], 0, 100, Op::Sum).unwrap();
                win.accumulate(&[1u64, 2], 0, WORDS - 1, Op::Sum).unwrap();
            }
            let t = win.fetch_and_op(1u64, 0, 101, Op::Sum).unwrap();
            assert!(t < n as u64);
            win.fence().unwrap();
            let mut got = [0u64; 2];
            win.get(&mut got, 0, WORDS - 1).unwrap();
            let total = (n * iters) as u64;
            assert_eq!(got, [total, 2 * total]);
            let mut x = [0u64; 2];
            win.get(&mut x, 0, 100).unwrap();
            assert_eq!(x, [total, n as u64]);
            // The owner sees the same bytes in place through its view.
            let v = win.view::<u64>().unwrap();
            assert_eq!(v.load(v.index_of(0, 100).unwrap()).unwrap(), total);
            win.fence().unwrap();
            // Passive target: a read-modify-write counter on the migrated page under
            // rank 0's exclusive lock. The unlock completes the put at the owner
            // before the lock passes on, or an increment would be lost.
            for _ in 0..20 {
                win.lock(LockType::Exclusive, 0).unwrap();
                let mut c = [0u64];
                win.get(&mut c, 0, 200).unwrap();
                win.put(&[c[0] + 1], 0, 200).unwrap();
                win.unlock(0).unwrap();
            }
            win.fence().unwrap();
            let mut c = [0u64];
            win.get(&mut c, 0, 200).unwrap();
            assert_eq!(c[0], 20 * n as u64);
            // Everyone has read before rank 0 swaps.
            win.fence().unwrap();
            // Compare-and-swap routes to the owner too.
            if me == 0 {
                assert_eq!(win.compare_and_swap(c[0], 7u64, 0, 200).unwrap(), c[0]);
            }
            win.fence().unwrap();
            win.get(&mut c, 0, 200).unwrap();
            assert_eq!(c[0], 7);
            assert_eq!(win.stats().migrations, 1, "RMA does not move pages");
        })
        .unwrap();
    }
}

#[test]
fn ownership_moves_on_and_back() {
    for n in 2..=5 {
        run_local(n, |world| {
            let win = alloc(&world, PAGE);
            let n = world.size();
            // Rank 1, then (with three ranks or more) rank 2, then the home writes alone.
            let mut writers = vec![1];
            if n > 2 {
                writers.push(2);
            }
            writers.push(0);
            let mut value = 0;
            for (k, &w) in writers.iter().enumerate() {
                for _ in 0..2 {
                    value += 1000;
                    write_alone(&win, w, value);
                    win.fence().unwrap();
                    check_all(&win, value);
                    win.fence().unwrap();
                }
                assert_eq!(win.owner_of(0).unwrap(), w);
                assert_eq!(win.stats().migrations, k as u64 + 1);
            }
        })
        .unwrap();
    }
}

#[test]
fn a_page_updated_by_rma_alone_migrates_to_its_origin() {
    // RMA writes count for the policy as stores do: rank n-1 alone accumulates into
    // rank 0's first page (and puts into it with a datatype) every epoch, so the page
    // moves to it; rank 0's second page is accumulated by two ranks and stays home.
    // Other ranks only read the first page (atomic NO_OP reads), which is neutral.
    for n in 2..=5 {
        run_local(n, |world| {
            let win = alloc(&world, 2 * PAGE);
            let (me, n) = (world.rank(), world.size());
            let w = n - 1;
            let strided =
                dsmpi_window::Datatype::vector(4, 1, 2, &dsmpi_window::Datatype::of::<u64>())
                    .unwrap()
                    .commit();
            let four = dsmpi_window::Datatype::contiguous(4, &dsmpi_window::Datatype::of::<u64>())
                .commit();
            win.fence().unwrap();
            for epoch in 0..5u64 {
                if me == w {
                    win.accumulate(&[1u64; 8], 0, 0, Op::Sum).unwrap();
                    let vals: Vec<u64> = (0..4).map(|i| epoch * 10 + i).collect();
                    win.put_typed(
                        &vals,
                        dsmpi_window::Typed::new(&four, 1),
                        0,
                        16,
                        dsmpi_window::Typed::new(&strided, 1),
                    )
                    .unwrap();
                } else {
                    win.fetch_and_op(0u64, 0, 3, Op::NoOp).unwrap();
                }
                if n > 2 && (me == 0 || me == 1) {
                    win.accumulate(&[1u64], 0, WORDS, Op::Sum).unwrap();
                }
                win.fence().unwrap();
                let owner = win.owner_of(0).unwrap();
                assert_eq!(owner, if epoch >= 1 { w } else { 0 }, "epoch {epoch}");
                let want_moves = if epoch >= 1 { 1 } else { 0 };
                assert_eq!(win.stats().migrations, want_moves, "epoch {epoch}");
                assert_eq!(win.owner_of(PAGE).unwrap(), 0, "the shared page stays");
                // Everyone sees exact values, wherever the page lives.
                let mut c = [0u64; 8];
                win.get(&mut c, 0, 0).unwrap();
                assert_eq!(c, [epoch + 1; 8], "epoch {epoch}: counters");
                let mut s = [0u64; 8];
                win.get(&mut s, 0, 16).unwrap();
                let want: Vec<u64> = (0..8)
                    .map(|i| if i % 2 == 0 { epoch * 10 + i / 2 } else { 0 })
                    .collect();
                assert_eq!(s.to_vec(), want, "epoch {epoch}: strided put");
                let v = win.view::<u64>().unwrap();
                assert_eq!(v.load(v.index_of(0, 0).unwrap()).unwrap(), epoch + 1);
                let mut shared = [0u64];
                win.get(&mut shared, 0, WORDS).unwrap();
                let per = if n > 2 { 2 } else { 0 };
                assert_eq!(shared[0], per * (epoch + 1), "epoch {epoch}: shared page");
                win.fence().unwrap();
            }
            win.free().unwrap();
        })
        .unwrap();
    }
}

#[test]
fn pages_of_a_shared_home_never_migrate() {
    // Same-host ranks over shared memory map rank 0's region from rank 0's memory; a
    // page that moved would leave those mappings on a stale copy, so it stays home
    // however long one rank writes it alone, and every value still lands.
    run_local_with(LocalBackend::Shm, 3, |world| {
        let win = Window::allocate(&world, PAGE).unwrap();
        assert!(win.shared_with(0) || world.rank() == 0);
        for epoch in 0..5u64 {
            write_alone(&win, 1, 100 * epoch);
            win.fence().unwrap();
            check_all(&win, 100 * epoch);
            win.fence().unwrap();
        }
        assert_eq!(win.stats().migrations, 0);
        assert_eq!(win.owner_of(0).unwrap(), 0);
        assert_eq!(win.stats().faults, 0);
        win.free().unwrap();
    })
    .unwrap();
}
