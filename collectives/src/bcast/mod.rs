//! Broadcast (MPI_Bcast): the root's buffer ends up on every rank.
//!
//! | algorithm | file | time (α latency, β per byte, m bytes, p ranks) |
//! |---|---|---|
//! | [`Bcast::Linear`] | `linear.rs` | (p−1)(α + mβ) at the root |
//! | [`Bcast::Binomial`] | `binomial.rs` | ⌈log p⌉(α + mβ), segmented |
//! | [`Bcast::Binary`] | `binary.rs` | ~2 log p (α + mβ), segmented |
//! | [`Bcast::Pipeline`] | `pipeline.rs` | (p − 2 + m/s)(α + sβ) for segments of s |
//! | [`Bcast::ScatterAllgather`] | `scatter_allgather.rs` | log p α + 2(p−1)/p mβ + (p−1)α |
//!
//! [`Bcast::choose`] picks one from thresholds measured with `benches/collectives.rs`
//! (see `docs/COLLECTIVES.md` for the data).

mod binary;
mod binomial;
mod linear;
mod pipeline;
mod scatter_allgather;

use dsmpi_runtime::Communicator;

use crate::error::Result;

/// Segment size of the segmented trees: big enough that per-message costs stay small,
/// small enough that every level of the tree is busy (see `docs/COLLECTIVES.md`).
pub const SEGMENT_BYTES: usize = 64 * 1024;

/// Below this many bytes a broadcast is latency-bound and a tree wins (measured: the
/// trees lead up to 16–64 KiB on 4 and 8 ranks, the star from 64 KiB).
pub const SMALL_BYTES: usize = 64 * 1024;

/// Up to this many bytes the binary tree beats the binomial one on more than 4 ranks.
pub const BINARY_BYTES: usize = 1024;

/// From this many bytes (and at least [`LARGE_MIN_RANKS`] ranks) the scatter +
/// allgather broadcast matches or beats the star (4 MiB on 8 ranks: 4.9 ms vs 5.1 ms).
pub const LARGE_BYTES: usize = 4 * 1024 * 1024;

/// Fewest ranks for which [`Bcast::ScatterAllgather`] is chosen.
pub const LARGE_MIN_RANKS: usize = 8;

/// A broadcast algorithm.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Bcast {
    /// The root sends the whole buffer to every other rank (exercise 11.4's star).
    Linear,
    /// Binomial tree, segmented (exercise 11.4's tree; MPICH's short-message choice).
    Binomial,
    /// Binary tree, segmented.
    Binary,
    /// A chain through the ranks, segmented so every link is busy at once.
    Pipeline,
    /// Binomial scatter of p blocks, then a ring allgather (van de Geijn).
    ScatterAllgather,
    /// The backend's own collective (MPI_Bcast, on the `mpi` backend), for comparisons.
    /// Never chosen by [`Bcast::choose`]; fails with
    /// [`Error::NativeUnavailable`](crate::Error::NativeUnavailable) on other backends.
    Native,
}

impl Bcast {
    /// Every dsmpi algorithm, for tests and benchmarks (not [`Bcast::Native`], which
    /// needs the `mpi` backend).
    pub const ALL: [Bcast; 5] = [
        Bcast::Linear,
        Bcast::Binomial,
        Bcast::Binary,
        Bcast::Pipeline,
        Bcast::ScatterAllgather,
    ];

    /// The algorithm the decision function picks for `bytes` on `ranks` ranks.
    pub fn choose(bytes: usize, ranks: usize) -> Bcast {
        if ranks <= 2 {
            // One receiver: every algorithm is one message; the star sends it whole.
            Bcast::Linear
        } else if bytes < SMALL_BYTES {
            if ranks <= 4 || bytes <= BINARY_BYTES {
                Bcast::Binary
            } else {
                Bcast::Binomial
            }
        } else if bytes >= LARGE_BYTES && ranks >= LARGE_MIN_RANKS {
            Bcast::ScatterAllgather
        } else {
            // Large messages: one zero-copy rendezvous per rank beats the segmented
            // trees on this machine (see docs/COLLECTIVES.md for why).
            Bcast::Linear
        }
    }
}

/// Runs `alg` on the library plane `lib`.
pub(crate) fn run(lib: &Communicator, alg: Bcast, root: usize, buf: &mut [u8]) -> Result<()> {
    crate::util::check_root(root, lib.size())?;
    match alg {
        Bcast::Linear => linear::bcast(lib, root, buf),
        Bcast::Binomial => binomial::bcast(lib, root, buf),
        Bcast::Binary => binary::bcast(lib, root, buf),
        Bcast::Pipeline => pipeline::bcast(lib, root, buf),
        Bcast::ScatterAllgather => scatter_allgather::bcast(lib, root, buf),
        Bcast::Native => {
            let (native, scope) = crate::native::of(lib)?;
            Ok(native.bcast(scope, root, buf)?)
        }
    }
}
