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
use dsmpi_runtime::Communicator;

use crate::error::Result;
use crate::op::Operation;

/// From this many bytes (and [`RING_MIN_RANKS`] ranks) the ring, which moves each
/// byte about twice whatever p is, beats recursive doubling's m log p.
pub const RING_BYTES: usize = 256 * 1024;

/// Fewest ranks for which the ring is chosen.
pub const RING_MIN_RANKS: usize = 3;

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
}

impl Allreduce {
    /// Every algorithm, for tests and benchmarks.
    pub const ALL: [Allreduce; 3] = [
        Allreduce::RecursiveDoubling,
        Allreduce::Ring,
        Allreduce::ReduceBcast,
    ];

    /// The algorithm the decision function picks for `bytes` on `ranks` ranks.
    pub fn choose(bytes: usize, ranks: usize) -> Allreduce {
        if bytes >= RING_BYTES && ranks >= RING_MIN_RANKS {
            Allreduce::Ring
        } else {
            Allreduce::RecursiveDoubling
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
    }
}
