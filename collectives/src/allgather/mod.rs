//! Allgather (MPI_Allgather): every rank's block ends up on every rank, in rank order.
//!
//! | algorithm | file | time (m bytes per rank, p ranks) |
//! |---|---|---|
//! | [`Allgather::Ring`] | `ring.rs` | (p−1)(α + mβ) |
//! | [`Allgather::RecursiveDoubling`] | `recursive_doubling.rs` | log p α + (p−1) mβ (+ a fold for p not a power of two) |
//! | [`Allgather::Bruck`] | `bruck.rs` | ⌈log p⌉ α + (p−1) mβ + a local rotation |

mod bruck;
mod recursive_doubling;
pub(crate) mod ring;

use dsmpi_runtime::Communicator;

use crate::error::Result;

/// Total bytes (p × block) from which the ring, whose neighbours-only traffic is the
/// friendliest to the links, replaces the logarithmic algorithms.
pub const RING_BYTES: usize = 256 * 1024;

/// An allgather algorithm.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Allgather {
    /// p−1 steps passing blocks to the right neighbour.
    Ring,
    /// Exchanges with partners 1, 2, 4, … apart, doubling the data each time.
    RecursiveDoubling,
    /// Bruck's algorithm: ⌈log2 p⌉ steps for any p.
    Bruck,
}

impl Allgather {
    /// Every algorithm, for tests and benchmarks.
    pub const ALL: [Allgather; 3] = [
        Allgather::Ring,
        Allgather::RecursiveDoubling,
        Allgather::Bruck,
    ];

    /// The algorithm the decision function picks for a total of `bytes` on `ranks`.
    pub fn choose(bytes: usize, ranks: usize) -> Allgather {
        if bytes >= RING_BYTES {
            Allgather::Ring
        } else if ranks.is_power_of_two() {
            Allgather::RecursiveDoubling
        } else {
            Allgather::Bruck
        }
    }
}

/// Runs `alg` on the library plane: `recv` (p blocks) gets every rank's `send`.
pub(crate) fn run(lib: &Communicator, alg: Allgather, send: &[u8], recv: &mut [u8]) -> Result<()> {
    let n = lib.size();
    crate::util::check_len("allgather", "recv (bytes)", recv.len(), send.len() * n)?;
    match alg {
        Allgather::Ring => ring::allgather(lib, send, recv),
        Allgather::RecursiveDoubling => recursive_doubling::allgather(lib, send, recv),
        Allgather::Bruck => bruck::allgather(lib, send, recv),
    }
}
