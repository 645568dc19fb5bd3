//! Same-host windows: ranks linked through shared memory map each other's regions
//! straight from the home's memory, so loads and stores never fault; the fault path
//! stays for every other pair (sockets, `DSMPI_TRANSPORT=tcp`, or opting out).

use dsmpi_runtime::{run_local_with, LocalBackend};
use dsmpi_window::{Op, WinOptions, Window};

/// Every rank stores into every rank's region through the view, epoch after epoch,
/// and adds into a shared counter with RMA; after each fence every rank checks every
/// value. Returns this rank's fault count.
fn stores_everywhere(win: &Window, epochs: u64) -> u64 {
    let (n, me) = (win.size(), win.rank());
    let v = win.view::<u64>().unwrap();
    for e in 0..epochs {
        for r in 0..n {
            // Word 1 + me of rank r's region: written by this rank alone.
            v.store(v.index_of(r, 1 + me).unwrap(), 1000 * e + me as u64)
                .unwrap();
        }
        win.accumulate(&[1u64], 0, 0, Op::Sum).unwrap();
        win.fence().unwrap();
        for r in 0..n {
            for w in 0..n {
                let got = v.load(v.index_of(r, 1 + w).unwrap()).unwrap();
                assert_eq!(
                    got,
                    1000 * e + w as u64,
                    "epoch {e}, rank {r}'s word of {w}"
                );
            }
        }
        assert_eq!(
            v.load(v.index_of(0, 0).unwrap()).unwrap(),
            (e + 1) * n as u64,
            "epoch {e}: the counter"
        );
        // Everyone has read before anyone writes again.
        win.fence().unwrap();
    }
    win.stats().faults
}

#[test]
fn same_host_regions_are_shared_and_never_fault() {
    for n in 1..=9 {
        run_local_with(LocalBackend::Shm, n, |world| {
            let win = Window::allocate(&world, 8 * (n + 1)).unwrap();
            let me = world.rank();
            for r in 0..n {
                assert_eq!(win.shared_with(r), r != me, "n = {n}, rank {r}");
            }
            assert_eq!(stores_everywhere(&win, 4), 0, "n = {n}: no fault");
            assert_eq!(win.stats().fetches, 0);
            win.free().unwrap();
        })
        .unwrap();
    }
}

#[test]
fn sockets_and_opting_out_keep_the_fault_path() {
    let cases = [(LocalBackend::Sockets, true), (LocalBackend::Shm, false)];
    for (backend, share) in cases {
        run_local_with(backend, 3, |world| {
            let opts = WinOptions {
                share_same_host: share,
                ..WinOptions::default()
            };
            let win = Window::allocate_opts(&world, 8 * 4, opts).unwrap();
            for r in 0..3 {
                assert!(!win.shared_with(r));
            }
            // Rank r stores into every other region: at least one fault per epoch each.
            assert!(stores_everywhere(&win, 3) >= 3 * 2, "{backend:?}");
            win.free().unwrap();
        })
        .unwrap();
    }
}

#[test]
fn a_rank_that_opts_out_shares_with_nobody() {
    // Sharing is per pair and needs both ranks' consent: rank 1 declines, ranks 0 and
    // 2 still share with each other, and every value lands either way.
    run_local_with(LocalBackend::Shm, 3, |world| {
        let me = world.rank();
        let opts = WinOptions {
            share_same_host: me != 1,
            ..WinOptions::default()
        };
        let win = Window::allocate_opts(&world, 8 * 4, opts).unwrap();
        for r in 0..3 {
            let want = r != me && me != 1 && r != 1;
            assert_eq!(win.shared_with(r), want, "rank {me} with {r}");
        }
        stores_everywhere(&win, 3);
        win.free().unwrap();
    })
    .unwrap();
}

#[test]
fn one_origin_stays_in_order_across_direct_copies_and_messages() {
    // An accumulate travels as a message; a get right after it (no flush) must not
    // overtake it by copying straight from the mapping, nor may a put.
    run_local_with(LocalBackend::Shm, 2, |world| {
        let win = Window::allocate(&world, 64).unwrap();
        win.fence().unwrap();
        if world.rank() == 0 {
            assert!(win.shared_with(1));
            for k in 1..=200u64 {
                win.accumulate(&[k], 1, 0, Op::Sum).unwrap();
                let mut got = [0u64];
                win.get(&mut got, 1, 0).unwrap();
                assert_eq!(got[0], k * (k + 1) / 2, "get after accumulate {k}");
                // Flushed: the put copies straight into rank 1's memory, and the
                // accumulate after it (a message) lands on top of it.
                win.flush(1).unwrap();
                win.put(&[k], 1, 1).unwrap();
                win.accumulate(&[k], 1, 1, Op::Sum).unwrap();
                win.get(&mut got, 1, 1).unwrap();
                assert_eq!(got[0], 2 * k, "put, accumulate, get {k}");
            }
        }
        win.fence().unwrap();
        let mut got = [0u64; 2];
        win.get(&mut got, 1, 0).unwrap();
        assert_eq!(got, [200 * 201 / 2, 400]);
        win.free().unwrap();
    })
    .unwrap();
}
