//! Reduce (MPI_Reduce): the root gets `x0 ∘ x1 ∘ … ∘ x(p−1)`.
//!
//! All three run on the segmented tree engine; with a non-commutative operation the
//! tree is rooted at rank 0 (so operands combine in rank order) and rank 0 forwards
//! the result to the root.

mod binary;
mod binomial;
mod linear;

use bytemuck::Pod;
use dsmpi_runtime::Communicator;

use crate::error::Result;
use crate::op::Operation;

/// Segment size (bytes) of the tree reductions, so that levels overlap on large
/// vectors.
pub const SEGMENT_BYTES: usize = 64 * 1024;

/// A reduce algorithm.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reduce {
    /// Every rank sends to the root, which combines p−1 vectors.
    Linear,
    /// Binomial tree: ⌈log2 p⌉ levels of combining.
    Binomial,
    /// Binary tree.
    Binary,
    /// The backend's own collective (MPI_Reduce, on the `mpi` backend), for
    /// comparisons; only for [`SystemOp`](crate::op::SystemOp)s on `u8`…`i64`, `f32`
    /// and `f64`. Never chosen by [`Reduce::choose`]; fails with
    /// [`Error::NativeUnavailable`](crate::Error::NativeUnavailable) on other backends.
    Native,
}

impl Reduce {
    /// Every dsmpi algorithm, for tests and benchmarks (not [`Reduce::Native`], which
    /// needs the `mpi` backend).
    pub const ALL: [Reduce; 3] = [Reduce::Linear, Reduce::Binomial, Reduce::Binary];

    /// The decision function: the binomial tree spreads both the messages and the
    /// combining work, and its segmentation handles large vectors.
    pub fn choose(_bytes: usize, _ranks: usize) -> Reduce {
        Reduce::Binomial
    }
}

/// Runs `alg` on the library plane; `Some(result)` at the root.
pub(crate) fn run<T: Pod>(
    lib: &Communicator,
    alg: Reduce,
    root: usize,
    send: &[T],
    op: &dyn Operation<T>,
) -> Result<Option<Vec<T>>> {
    crate::util::check_root(root, lib.size())?;
    op.check()?;
    match alg {
        Reduce::Linear => linear::reduce(lib, root, send, op),
        Reduce::Binomial => binomial::reduce(lib, root, send, op),
        Reduce::Binary => binary::reduce(lib, root, send, op),
        Reduce::Native => {
            let (native, scope) = crate::native::of(lib)?;
            let (nop, kind) = crate::native::reduction("Reduce::Native", op)?;
            let mut out = if lib.rank() == root {
                vec![T::zeroed(); send.len()]
            } else {
                Vec::new()
            };
            native.reduce(
                scope,
                root,
                nop,
                kind,
                bytemuck::cast_slice(send),
                bytemuck::cast_slice_mut(&mut out),
            )?;
            Ok((lib.rank() == root).then_some(out))
        }
    }
}

/// Elements per segment for `T`.
pub(crate) fn seg_elems<T>() -> usize {
    (SEGMENT_BYTES / std::mem::size_of::<T>().max(1)).max(1)
}
