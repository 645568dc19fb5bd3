//! Wrong arguments give errors, not garbage or a hang.

use dsmpi_collectives::prelude::*;
use dsmpi_collectives::Error;
use dsmpi_runtime::run_local;

#[test]
fn bad_arguments_are_reported() {
    run_local(3, |w| {
        let mut b = [0u8; 4];
        assert!(matches!(
            w.broadcast_into(3, &mut b),
            Err(Error::RootOutOfRange { root: 3, size: 3 })
        ));
        let mut r = [0f64; 2];
        assert!(matches!(
            w.all_reduce_into(&[1.0, 2.0], &mut r, SystemOp::BitAnd),
            Err(Error::InvalidOp { .. })
        ));
        assert!(matches!(
            w.all_reduce_into(&[1.0, 2.0], &mut r[..1], SystemOp::Sum),
            Err(Error::BufferLength { .. })
        ));
        if w.rank() == 0 {
            assert!(matches!(
                w.scatter_into(0, &[1u8; 5], &mut [0u8; 2]),
                Err(Error::BufferLength { .. })
            ));
        }
        assert!(matches!(
            w.all_to_all_into(&[1u8; 4], &mut [0u8; 4]),
            Err(Error::InvalidArgument(_))
        ));
    })
    .unwrap();
}

#[test]
fn disagreeing_counts_are_a_count_mismatch() {
    let out = run_local(2, |w| {
        // Rank 1 expects more than the root sends.
        let mut b = vec![0u8; if w.rank() == 0 { 4 } else { 8 }];
        w.broadcast_with(Bcast::Binomial, 0, &mut b)
    })
    .unwrap();
    assert!(out[0].is_ok());
    assert!(
        matches!(
            out[1],
            Err(Error::CountMismatch {
                sender: 0,
                expected: 8,
                got: 4,
                ..
            })
        ),
        "{:?}",
        out[1]
    );
}

/// `Native` asks for the backend's own collective: on the local backend (as on the TCP
/// mesh) there is none, and every rank gets the same clear error instead of a hang.
#[test]
fn native_needs_the_mpi_backend() {
    let unavailable = |r: Result<(), Error>| {
        matches!(&r, Err(Error::NativeUnavailable("shm" | "local")))
            && r.unwrap_err().to_string().contains("need the mpi backend")
    };
    run_local(3, |w| {
        let mut b = [0u32; 6];
        assert!(unavailable(w.barrier_with(Barrier::Native)));
        assert!(unavailable(w.broadcast_with(Bcast::Native, 0, &mut b)));
        assert!(unavailable(w.all_reduce_with(
            Allreduce::Native,
            &[1u32, 2],
            &mut b[..2],
            SystemOp::Sum
        )));
        assert!(unavailable(w.all_to_all_with(
            Alltoall::Native,
            &[7u32; 6],
            &mut b
        )));
        let block = [w.rank() as u32; 2];
        assert!(unavailable(w.gather_with(
            Gather::Native,
            0,
            &block,
            &mut b
        )));
        assert!(unavailable(w.scatter_with(
            Scatter::Native,
            0,
            &[1u32; 6],
            &mut b[..2]
        )));
        let (one, mut r1) = ([1u32], [0u32]);
        assert!(unavailable(w.reduce_with(
            Reduce::Native,
            0,
            &one,
            &mut r1,
            SystemOp::Sum
        )));
        assert!(unavailable(w.all_gather_with(
            Allgather::Native,
            &one,
            &mut b[..3]
        )));
        assert!(unavailable(w.scan_with(
            Scan::Native,
            &one,
            &mut r1,
            SystemOp::Sum
        )));
        assert!(unavailable(w.exclusive_scan_with(
            Scan::Native,
            &one,
            &mut r1,
            SystemOp::Sum
        )));
        let (c, d) = ([1usize; 3], [0usize, 1, 2]);
        assert!(unavailable(w.gatherv_with(
            Gather::Native,
            0,
            &one,
            &mut b[..3],
            &c,
            &d
        )));
        assert!(unavailable(w.scatterv_with(
            Scatter::Native,
            0,
            &[1u32; 3],
            &c,
            &d,
            &mut r1
        )));
        assert!(unavailable(w.all_gather_v_with(
            Allgatherv::Native,
            &one,
            &mut b[..3],
            &c,
            &d
        )));
        let mut out = [0u32; 3];
        assert!(unavailable(w.all_to_all_v_with(
            Alltoallv::Native,
            &[1u32; 3],
            &c,
            &d,
            &mut out,
            &c,
            &d
        )));
        // A dsmpi algorithm still works afterwards: nothing was left half-sent.
        let mut s = [0u32];
        w.all_reduce_into(&[1u32], &mut s, SystemOp::Sum).unwrap();
        assert_eq!(s[0], 3);
        // The split communicators' Native fails alike.
        let sub = w.split((w.rank() % 2) as i32, 0).unwrap().unwrap();
        assert!(unavailable(sub.barrier_with(Barrier::Native)));
    })
    .unwrap();
}
