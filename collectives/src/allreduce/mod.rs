//! Allreduce (MPI_Allreduce): every rank gets `x0 ∘ x1 ∘ … ∘ x(p−1)`.
//!
//! | algorithm | file | time (m bytes, p ranks) |
//! |---|---|---|
//! | [`Allreduce::RecursiveDoubling`] | `recursive_doubling.rs` | log p (α + mβ + mγ) |
//! | [`Allreduce::Ring`] | `ring.rs` | 2(p−1)α + 2(p−1)/p mβ + (p−1)/p mγ |
//! | [`Allreduce::ReduceBcast`] | `reduce_bcast.rs` | a binomial reduce, then a bcast |

mod recursive_doubling;
mod reduce_bcast;
mod ring;

pub(crate) use ring::ring_reduce_scatter;

use bytemuck::Pod;
use dsmpi_runtime::transport::NativeKind;
use dsmpi_runtime::Communicator;

use crate::error::Result;
use crate::op::Operation;

/// From this many bytes (and [`MANY_RANKS`] ranks) the ring, which moves each byte
/// about twice whatever p is, beats the others (8 ranks, 4 MiB: 17 ms against 22 ms).
pub const RING_BYTES: usize = 4 * 1024 * 1024;

/// From this many bytes (and [`MANY_RANKS`] ranks) reduce + bcast beats recursive
/// doubling (8 ranks: 126 µs against 160 µs at 16 KiB, 4.9 ms against 6.5 ms at
/// 1 MiB).
pub const REDUCE_BCAST_BYTES: usize = 16 * 1024;

/// Fewest ranks for which the ring or reduce + bcast is chosen; up to 4 ranks
/// recursive doubling is never clearly beaten.
pub const MANY_RANKS: usize = 5;

/// An allreduce algorithm.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Allreduce {
    /// Pairwise exchanges with partners 1, 2, 4, … apart (MPICH's short-message
    /// algorithm), with a fold step for p not a power of two.
    RecursiveDoubling,
    /// Ring reduce-scatter then ring allgather (bandwidth-optimal).
    Ring,
    /// Binomial reduce to rank 0, then a broadcast.
    ReduceBcast,
    /// The backend's own collective (MPI_Allreduce, on the `mpi` backend), for
    /// comparisons; only for [`SystemOp`](crate::op::SystemOp)s on `u8`…`i64`, `f32`
    /// and `f64`. Never chosen by [`Allreduce::choose`]; fails with
    /// [`Error::NativeUnavailable`](crate::Error::NativeUnavailable) on other backends.
    Native,
}

impl Allreduce {
    /// Every dsmpi algorithm, for tests and benchmarks (not [`Allreduce::Native`],
    /// which needs the `mpi` backend).
    pub const ALL: [Allreduce; 3] = [
        Allreduce::RecursiveDoubling,
        Allreduce::Ring,
        Allreduce::ReduceBcast,
    ];

    /// The algorithm the decision function picks for `bytes` on `ranks` ranks.
    pub fn choose(bytes: usize, ranks: usize) -> Allreduce {
        if ranks < MANY_RANKS || bytes < REDUCE_BCAST_BYTES {
            Allreduce::RecursiveDoubling
        } else if bytes >= RING_BYTES {
            Allreduce::Ring
        } else {
            Allreduce::ReduceBcast
        }
    }
}

/// Runs `alg` on the library plane; `recv` gets the result.
pub(crate) fn run<T: Pod>(
    lib: &Communicator,
    alg: Allreduce,
    send: &[T],
    recv: &mut [T],
    op: &dyn Operation<T>,
) -> Result<()> {
    op.check()?;
    crate::util::check_len("allreduce", "recv", recv.len(), send.len())?;
    match alg {
        Allreduce::RecursiveDoubling => recursive_doubling::allreduce(lib, send, recv, op),
        Allreduce::Ring => ring::allreduce(lib, send, recv, op),
        Allreduce::ReduceBcast => reduce_bcast::allreduce(lib, send, recv, op),
        Allreduce::Native => {
            let (native, scope) = crate::native::of(lib)?;
            // Both are known alike on every rank (same op, same T), so a refusal here
            // happens everywhere and leaves no rank waiting.
            let (Some(nop), Some(kind)) = (op.native_op(), NativeKind::of::<T>()) else {
                return Err(crate::Error::InvalidArgument(format!(
                    "Allreduce::Native runs built-in operations (SystemOp) on u8..i64, f32 \
                     and f64 only, not this operation on {}",
                    std::any::type_name::<T>()
                )));
            };
            Ok(native.allreduce(
                scope,
                nop,
                kind,
                bytemuck::cast_slice(send),
                bytemuck::cast_slice_mut(recv),
            )?)
        }
    }
}
