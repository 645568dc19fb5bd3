//! Shared test helpers: deterministic data, a non-commutative operation, and a runner
//! that collects every rank's failures instead of stopping at the first.

#![allow(dead_code)]

use bytemuck::{Pod, Zeroable};
use dsmpi_collectives::op::UserOp;
use dsmpi_runtime::{run_local_with, Communicator, LocalBackend};

/// Byte sizes every algorithm is checked at on every rank count and root.
pub const SMALL: [usize; 4] = [0, 1, 7, 4096];
/// The large size: over the eager limit, several segments, not a multiple of anything.
pub const BIG: usize = (1 << 20) + 3;

/// Rank counts and roots for the large size. Every algorithm runs on the full 1..=9 ×
/// every root grid at the small sizes; at 1 MiB that grid would cost minutes on two
/// cores for no new code path (the segment loop and the rendezvous are already
/// exercised at 1 MiB by any rank count ≥ 2). These cover 1, 2, a prime, a power of
/// two and a non-power of two, with root 0 and a root in the middle.
pub const BIG_GRID: [(usize, usize); 7] = [(1, 0), (2, 1), (3, 0), (5, 2), (6, 5), (8, 0), (9, 4)];

/// Deterministic bytes for (`rank`, `len`, `salt`).
pub fn bytes(rank: usize, len: usize, salt: u64) -> Vec<u8> {
    let mut x = (rank as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ salt.wrapping_mul(0xD1B5_4A32_D192_ED03)
        ^ len as u64;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Deterministic values of any Pod type (from [`bytes`]).
pub fn values<T: Pod>(rank: usize, count: usize, salt: u64) -> Vec<T> {
    let b = bytes(rank, count * std::mem::size_of::<T>(), salt);
    let mut v = vec![T::zeroed(); count];
    bytemuck::cast_slice_mut::<T, u8>(&mut v).copy_from_slice(&b);
    v
}

/// An affine map x ↦ a·x + b (mod 2^64). Composition (first the left one, then the
/// right one) is associative but not commutative: the test of rank order.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct Affine {
    pub a: u64,
    pub b: u64,
}

/// `l` then `r`.
pub fn compose(l: Affine, r: Affine) -> Affine {
    Affine {
        a: l.a.wrapping_mul(r.a),
        b: r.a.wrapping_mul(l.b).wrapping_add(r.b),
    }
}

/// The non-commutative user operation over [`Affine`].
pub fn affine_op() -> UserOp<impl Fn(&[Affine], &mut [Affine]) + Copy> {
    UserOp::non_commutative(|input: &[Affine], inout: &mut [Affine]| {
        for (o, i) in inout.iter_mut().zip(input) {
            *o = compose(*i, *o);
        }
    })
}

/// Runs `f` on `n` ranks; each rank pushes failure descriptions; panics with all of
/// them if any.
pub fn run(backend: LocalBackend, n: usize, f: impl Fn(&Communicator, &mut Vec<String>) + Sync) {
    let out = run_local_with(backend, n, |world| {
        let mut fails = Vec::new();
        f(&world, &mut fails);
        fails
    })
    .expect("run_local");
    let all: Vec<String> = out
        .into_iter()
        .enumerate()
        .flat_map(|(r, v)| v.into_iter().map(move |s| format!("rank {r}: {s}")))
        .collect();
    assert!(
        all.is_empty(),
        "{} failures, first ones:\n{}",
        all.len(),
        all.iter().take(20).cloned().collect::<Vec<_>>().join("\n")
    );
}

/// Records a failure when `got != want` (or when the call failed).
pub fn check<T: PartialEq + std::fmt::Debug, E: std::fmt::Display>(
    fails: &mut Vec<String>,
    what: impl FnOnce() -> String,
    res: Result<(), E>,
    got: &[T],
    want: &[T],
) {
    match res {
        Err(e) => fails.push(format!("{}: error {e}", what())),
        Ok(()) if got != want => {
            let i = got
                .iter()
                .zip(want)
                .position(|(a, b)| a != b)
                .unwrap_or(got.len().min(want.len()));
            fails.push(format!(
                "{}: wrong result (len {} vs {}, first difference at {i})",
                what(),
                got.len(),
                want.len()
            ));
        }
        Ok(()) => {}
    }
}
