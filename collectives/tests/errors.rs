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
