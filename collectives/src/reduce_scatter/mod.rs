//! Reduce-scatter with equal blocks (MPI_Reduce_scatter_block): rank r gets block r of
//! the element-wise reduction of everyone's p-block vector.

mod reduce_then_scatter;
mod ring;

use bytemuck::Pod;
use dsmpi_runtime::Communicator;

use crate::error::Result;
use crate::op::Operation;

/// A reduce-scatter algorithm.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReduceScatter {
    /// p−1 ring steps, each passing one block's partial result (bandwidth-optimal).
    Ring,
    /// A binomial reduce of the whole vector to rank 0, then a binomial scatter.
    ReduceThenScatter,
}

impl ReduceScatter {
    /// Every algorithm, for tests and benchmarks.
    pub const ALL: [ReduceScatter; 2] = [ReduceScatter::Ring, ReduceScatter::ReduceThenScatter];

    /// The decision function: the ring for blocks of at least 4 KiB, where its
    /// (p−1) latencies are paid for by moving (p−1)/p of the data instead of log p
    /// times all of it.
    pub fn choose(bytes: usize, ranks: usize) -> ReduceScatter {
        if bytes >= 4096 || ranks <= 2 {
            ReduceScatter::Ring
        } else {
            ReduceScatter::ReduceThenScatter
        }
    }
}

/// Runs `alg`: `recv` gets block `rank` of the reduction of `send` (p × `recv.len()`).
pub(crate) fn run<T: Pod>(
    lib: &Communicator,
    alg: ReduceScatter,
    send: &[T],
    recv: &mut [T],
    op: &dyn Operation<T>,
) -> Result<()> {
    op.check()?;
    crate::util::check_len(
        "reduce_scatter_block",
        "send",
        send.len(),
        recv.len() * lib.size(),
    )?;
    match alg {
        ReduceScatter::Ring => ring::reduce_scatter(lib, send, recv, op),
        ReduceScatter::ReduceThenScatter => {
            reduce_then_scatter::reduce_scatter(lib, send, recv, op)
        }
    }
}
