//! The same operations with the window's threads polling (`DSMPI_WIN_POLL_US`), which
//! the default policy turns off on small machines: the polling service thread, the
//! polling fault thread and the handler's polling wait must serve every request and
//! every fault exactly as the sleeping ones do.

use dsmpi_runtime::run_local;
use dsmpi_window::{Datatype, LockType, Op, Typed, Window};

#[test]
fn polling_threads_serve_everything() {
    // The only test in this binary: nothing else reads the environment meanwhile.
    std::env::set_var("DSMPI_WIN_POLL_US", "2000");
    for n in [1, 2, 5, 9] {
        run_local(n, |world| {
            let (me, n) = (world.rank(), world.size());
            let win = Window::allocate(&world, 2 * 4096).unwrap();
            win.fence().unwrap();
            // Accumulates and tickets from everyone at once.
            let mut tickets = Vec::new();
            for _ in 0..300 {
                win.accumulate(&[1u64], 0, 0, Op::Sum).unwrap();
                tickets.push(win.fetch_and_op(1u64, n - 1, 1, Op::Sum).unwrap());
            }
            assert!(tickets.windows(2).all(|w| w[0] < w[1]));
            // Stores through the view under an exclusive lock: write faults, diffs.
            let v = win.view::<u64>().unwrap();
            let home = n / 2;
            let at = v.index_of(home, 8).unwrap();
            for _ in 0..20 {
                win.lock(LockType::Exclusive, home).unwrap();
                v.update(at, |x| x + 1).unwrap();
                win.unlock(home).unwrap();
            }
            // A strided typed accumulate into rank 0's second page.
            let col = Datatype::vector(8, 1, 4, &Datatype::of::<u64>())
                .unwrap()
                .commit();
            let flat = Datatype::of::<u64>().commit();
            win.accumulate_typed(
                &[me as u64 + 1; 8],
                Typed::new(&flat, 8),
                0,
                512,
                Typed::new(&col, 1),
                Op::Sum,
            )
            .unwrap();
            win.fence().unwrap();
            let mut c = [0u64; 2];
            win.get(&mut c, 0, 0).unwrap();
            assert_eq!(c[0], 300 * n as u64);
            let mut t = [0u64; 2];
            win.get(&mut t, n - 1, 0).unwrap();
            assert_eq!(t[1], 300 * n as u64);
            // Read faults on a remote page after the epoch.
            assert_eq!(v.load(at).unwrap(), 20 * n as u64);
            let mut col_got = vec![0u64; 8];
            win.get_typed(
                &mut col_got,
                Typed::new(&flat, 8),
                0,
                512,
                Typed::new(&col, 1),
            )
            .unwrap();
            let sum: u64 = (1..=n as u64).sum();
            assert_eq!(col_got, vec![sum; 8]);
            win.free().unwrap();
        })
        .unwrap();
    }
}
