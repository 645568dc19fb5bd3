//! RMA addressed by derived datatypes (origin and/or target side), against a plain
//! reference: element index lists applied to local copies of every region.

use dsmpi_runtime::{run_local, run_local_with, Communicator, LocalBackend};
use dsmpi_window::{Datatype, Op, Typed, WinError, WinOptions, Window};

/// u64 elements per region: two pages, so strided accesses cross a page boundary.
const ELEMS: usize = 1024;

fn u64_type() -> Datatype {
    Datatype::of::<u64>()
}

/// `vector(count, blocklen, stride)` of u64, and the element indices it selects.
fn vector(count: usize, blocklen: usize, stride: usize) -> (Datatype, Vec<usize>) {
    let t = Datatype::vector(count, blocklen, stride as isize, &u64_type())
        .unwrap()
        .commit();
    let idx = (0..count)
        .flat_map(|b| (0..blocklen).map(move |j| b * stride + j))
        .collect();
    (t, idx)
}

/// `indexed(blocklens, displs)` of u64, and the element indices it selects.
fn indexed(blocklens: &[usize], displs: &[usize]) -> (Datatype, Vec<usize>) {
    let d: Vec<isize> = displs.iter().map(|&x| x as isize).collect();
    let t = Datatype::indexed(blocklens, &d, &u64_type())
        .unwrap()
        .commit();
    let idx = blocklens
        .iter()
        .zip(displs)
        .flat_map(|(&l, &d)| d..d + l)
        .collect();
    (t, idx)
}

/// The whole region of `rank`, read with a plain get.
fn region(win: &Window, rank: usize) -> Vec<u64> {
    let mut v = vec![0u64; ELEMS];
    win.get(&mut v, rank, 0).unwrap();
    v
}

/// Every phase of the typed checks on one world; panics on any difference.
fn typed_phases(world: Communicator) {
    let (me, n) = (world.rank(), world.size());
    let win = Window::allocate(&world, ELEMS * 8).unwrap();
    win.fence().unwrap();
    // Reference contents of every region.
    let mut refs = vec![vec![0u64; ELEMS]; n];

    // 1. put: contiguous origin into a strided target (vector), with a displacement,
    //    from every rank to the next one.
    let (tv, tv_idx) = vector(16, 2, 37);
    let val = |r: usize, k: usize| (r * 100_000 + k) as u64 + 1;
    let origin: Vec<u64> = (0..32).map(|k| val(me, k)).collect();
    let c = u64_type().commit();
    win.put_typed(
        &origin,
        Typed::new(&c, 32),
        (me + 1) % n,
        3,
        Typed::new(&tv, 1),
    )
    .unwrap();
    for r in 0..n {
        for (k, &i) in tv_idx.iter().enumerate() {
            refs[(r + 1) % n][3 + i] = val(r, k);
        }
    }
    win.fence().unwrap();
    assert_eq!(region(&win, me), refs[me], "rank {me}: after put_typed");
    // Everyone has read before anyone writes again.
    win.fence().unwrap();

    // 2. put: strided origin (every third element of a buffer) into an indexed target,
    //    two elements of the target type (one extent apart).
    let (ti, ti_idx) = indexed(&[3, 1, 4], &[0, 10, 400]);
    let ext = (ti.extent() / 8) as usize;
    let (ov, ov_idx) = vector(16, 1, 3);
    let obuf: Vec<u64> = (0..48).map(|k| val(me, 1000 + k)).collect();
    let t2 = (me + 2) % n;
    win.put_typed(&obuf, Typed::new(&ov, 1), t2, 20, Typed::new(&ti, 2))
        .unwrap();
    for r in 0..n {
        let src: Vec<u64> = ov_idx.iter().map(|&k| val(r, 1000 + k)).collect();
        let dst: Vec<usize> = (0..2)
            .flat_map(|e| ti_idx.iter().map(move |&i| 20 + e * ext + i))
            .collect();
        for (s, d) in src.iter().zip(dst) {
            refs[(r + 2) % n][d] = *s;
        }
    }
    win.fence().unwrap();
    assert_eq!(
        region(&win, me),
        refs[me],
        "rank {me}: after strided put_typed"
    );
    // Everyone has read before anyone writes again.
    win.fence().unwrap();

    // 3. get: an indexed target into a strided origin buffer; elements the origin
    //    type skips stay untouched.
    for (t, tref) in refs.iter().enumerate() {
        let (gi, gi_idx) = indexed(&[2, 5, 1, 8], &[600, 3, 511, 40]);
        let (gv, gv_idx) = vector(8, 2, 4);
        let mut buf = vec![7u64; 32];
        win.get_typed(&mut buf, Typed::new(&gv, 1), t, 1, Typed::new(&gi, 1))
            .unwrap();
        let mut want = vec![7u64; 32];
        for (&o, &i) in gv_idx.iter().zip(&gi_idx) {
            want[o] = tref[1 + i];
        }
        assert_eq!(buf, want, "rank {me}: get_typed from {t}");
    }
    win.fence().unwrap();

    // 4. accumulate (SUM) from every rank into overlapping strided elements of rank
    //    0, count 3 of a resized vector (extent 40 elements), and MAX into rank n-1.
    let (av, av_idx) = vector(5, 2, 7);
    let av = Datatype::resized(&av, 0, 40 * 8).unwrap().commit();
    let add: Vec<u64> = (0..30).map(|k| (me + 1) as u64 * (k as u64 + 1)).collect();
    win.accumulate_typed(&add, Typed::new(&c, 30), 0, 5, Typed::new(&av, 3), Op::Sum)
        .unwrap();
    let (mv, mv_idx) = vector(10, 1, 50);
    let mx: Vec<u64> = (0..10).map(|k| (me * 10 + k) as u64 * 1_000_000).collect();
    win.accumulate_typed(
        &mx,
        Typed::new(&c, 10),
        n - 1,
        2,
        Typed::new(&mv, 1),
        Op::Max,
    )
    .unwrap();
    for r in 0..n {
        for e in 0..3 {
            for (k, &i) in av_idx.iter().enumerate() {
                let d = 5 + e * 40 + i;
                let v = (r + 1) as u64 * ((e * 10 + k) as u64 + 1);
                refs[0][d] = refs[0][d].wrapping_add(v);
            }
        }
        for (k, &i) in mv_idx.iter().enumerate() {
            let d = 2 + i;
            refs[n - 1][d] = refs[n - 1][d].max((r * 10 + k) as u64 * 1_000_000);
        }
    }
    win.fence().unwrap();
    assert_eq!(
        region(&win, me),
        refs[me],
        "rank {me}: after accumulate_typed"
    );
    // Everyone has read before anyone writes again.
    win.fence().unwrap();

    // 5. get_accumulate (SUM +1) on the same strided elements of rank 0 from every
    //    rank: each element's returned old values over all ranks are base..base+n.
    let (gv, gv_idx) = vector(6, 1, 9);
    let ones = vec![1u64; 6];
    let mut old = vec![0u64; 12];
    let (rv, rv_idx) = vector(6, 1, 2);
    win.get_accumulate_typed(
        &ones,
        Typed::new(&c, 6),
        &mut old,
        Typed::new(&rv, 1),
        0,
        100,
        Typed::new(&gv, 1),
        Op::Sum,
    )
    .unwrap();
    let mine: Vec<u64> = rv_idx.iter().map(|&i| old[i]).collect();
    assert!(rv_idx.iter().all(|&i| i % 2 == 0));
    assert!((0..12).filter(|i| i % 2 == 1).all(|i| old[i] == 0));
    // Gather everyone's old values at every rank (plain messages).
    let mut all = vec![mine.clone(); n];
    for r in (0..n).filter(|&r| r != me) {
        world.send(&mine, r, 77).unwrap();
    }
    for (r, slot) in all.iter_mut().enumerate().filter(|(r, _)| *r != me) {
        world.recv_into(&mut slot[..], r, 77).unwrap();
    }
    for (k, &i) in gv_idx.iter().enumerate() {
        let base = refs[0][100 + i];
        let mut seen: Vec<u64> = all.iter().map(|v| v[k]).collect();
        seen.sort_unstable();
        let want: Vec<u64> = (0..n as u64).map(|j| base + j).collect();
        assert_eq!(seen, want, "rank {me}: fetched old values of element {i}");
        refs[0][100 + i] = base + n as u64;
    }
    win.fence().unwrap();
    assert_eq!(
        region(&win, me),
        refs[me],
        "rank {me}: after get_accumulate_typed"
    );
    // Everyone has read before anyone writes again.
    win.fence().unwrap();

    // 6. get_accumulate NO_OP: an atomic strided read.
    let mut read = vec![0u64; 6];
    win.get_accumulate_typed(
        &[0u64; 6],
        Typed::new(&c, 6),
        &mut read,
        Typed::new(&c, 6),
        0,
        100,
        Typed::new(&gv, 1),
        Op::NoOp,
    )
    .unwrap();
    let want: Vec<u64> = gv_idx.iter().map(|&i| refs[0][100 + i]).collect();
    assert_eq!(read, want);
    win.fence().unwrap();
    assert_eq!(
        region(&win, me),
        refs[me],
        "rank {me}: NO_OP changed memory"
    );
    win.free().unwrap();
}

#[test]
fn typed_rma_matches_reference_1_to_9_ranks() {
    for n in 1..=9 {
        run_local(n, typed_phases).unwrap();
    }
}

#[test]
fn typed_rma_over_tcp() {
    run_local_with(LocalBackend::Tcp, 3, typed_phases).unwrap();
}

#[test]
fn typed_rma_after_pages_migrated() {
    // Rank 1 stores alone into rank 0's first page for three fence epochs, so the
    // page migrates to rank 1; typed operations on rank 0's region then span two
    // owners (split per owner) and must still land exactly.
    run_local(3, |world| {
        let me = world.rank();
        // Same-host regions mapped directly never migrate: keep the fetch path.
        let opts = WinOptions {
            share_same_host: false,
            ..WinOptions::default()
        };
        let win = Window::allocate_opts(&world, ELEMS * 8, opts).unwrap();
        let v = win.view::<u64>().unwrap();
        win.fence().unwrap();
        for e in 0..3u64 {
            if me == 1 {
                v.store(v.index_of(0, 1).unwrap(), e).unwrap();
            }
            win.fence().unwrap();
        }
        assert_eq!(win.owner_of(0).unwrap(), 1, "the page did not migrate");
        assert_eq!(win.owner_of(win.page_size()).unwrap(), 0);
        let (tv, idx) = vector(40, 1, 25); // elements 0..975 of rank 0: both pages
        let c = u64_type().commit();
        if me == 2 {
            let data: Vec<u64> = (0..40).map(|k| 500 + k).collect();
            win.put_typed(&data, Typed::new(&c, 40), 0, 0, Typed::new(&tv, 1))
                .unwrap();
        }
        win.fence().unwrap();
        let mut got = vec![0u64; 40];
        win.get_typed(&mut got, Typed::new(&c, 40), 0, 0, Typed::new(&tv, 1))
            .unwrap();
        assert_eq!(got, (0..40).map(|k| 500 + k).collect::<Vec<u64>>());
        win.fence().unwrap();
        win.accumulate_typed(
            &[1u64; 40],
            Typed::new(&c, 40),
            0,
            0,
            Typed::new(&tv, 1),
            Op::Sum,
        )
        .unwrap();
        win.fence().unwrap();
        let all = region(&win, 0);
        for (k, &i) in idx.iter().enumerate() {
            assert_eq!(all[i], 500 + k as u64 + 3);
        }
        win.free().unwrap();
    })
    .unwrap();
}

#[test]
fn typed_rma_errors() {
    run_local(2, |world| {
        let win = Window::allocate(&world, ELEMS * 8).unwrap();
        let c = u64_type().commit();
        let (tv, _) = vector(4, 1, 3);
        let data = [1u64; 8];
        let bad = |r: Result<(), WinError>, what: &str| {
            assert!(r.is_err(), "{what} was accepted");
        };
        // Signatures differ: 5 elements against 4.
        bad(
            win.put_typed(&data, Typed::new(&c, 5), 1, 0, Typed::new(&tv, 1)),
            "a signature mismatch",
        );
        // Past the end of the target region.
        bad(
            win.put_typed(&data, Typed::new(&c, 4), 1, ELEMS - 5, Typed::new(&tv, 1)),
            "an out-of-range target",
        );
        // Origin buffer too small for its datatype.
        let mut small = [0u64; 3];
        bad(
            win.get_typed(&mut small, Typed::new(&c, 4), 1, 0, Typed::new(&tv, 1)),
            "a short origin buffer",
        );
        // Uncommitted datatype.
        let raw = Datatype::vector(4, 1, 3, &u64_type()).unwrap();
        bad(
            win.put_typed(&data, Typed::new(&c, 4), 1, 0, Typed::new(&raw, 1)),
            "an uncommitted datatype",
        );
        // Accumulate datatypes of another primitive than the element type.
        let f = Datatype::contiguous(4, &Datatype::of::<f64>()).commit();
        bad(
            win.accumulate_typed(&data, Typed::new(&f, 1), 1, 0, Typed::new(&f, 1), Op::Sum),
            "an f64 datatype with u64 elements",
        );
        // A negative displacement before the region's start.
        let neg = Datatype::indexed(&[1], &[-2], &u64_type())
            .unwrap()
            .commit();
        bad(
            win.put_typed(&data, Typed::new(&c, 1), 1, 1, Typed::new(&neg, 1)),
            "a target before the region",
        );
        // Nothing of the above wrote anything.
        win.fence().unwrap();
        assert_eq!(region(&win, 1), vec![0u64; ELEMS]);
        win.free().unwrap();
    })
    .unwrap();
}
