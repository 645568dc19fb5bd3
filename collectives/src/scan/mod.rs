//! Inclusive and exclusive prefix reductions (MPI_Scan, MPI_Exscan): rank r gets
//! `x0 ∘ … ∘ xr` (inclusive) or `x0 ∘ … ∘ x(r−1)` (exclusive; rank 0's receive
//! buffer is left as it was, as in MPI where it is undefined).

mod linear;
mod recursive_doubling;

use bytemuck::Pod;
use dsmpi_runtime::Communicator;

use crate::error::Result;
use crate::op::Operation;

/// A scan algorithm.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scan {
    /// A chain: rank r receives the prefix from r − 1, adds its operand and passes
    /// it on. p−1 steps, each vector sent once.
    Linear,
    /// log2 p steps of exchanges with rank XOR 2^k (MPICH's algorithm).
    RecursiveDoubling,
}

impl Scan {
    /// Every algorithm, for tests and benchmarks.
    pub const ALL: [Scan; 2] = [Scan::Linear, Scan::RecursiveDoubling];

    /// The decision function: recursive doubling has log p depth; the chain only
    /// wins when its single pass over large vectors beats log p full exchanges.
    pub fn choose(bytes: usize, ranks: usize) -> Scan {
        if bytes >= 1 << 20 && ranks > 4 {
            Scan::Linear
        } else {
            Scan::RecursiveDoubling
        }
    }
}

/// Runs `alg`, inclusive (`exclusive == false`) or exclusive.
pub(crate) fn run<T: Pod>(
    lib: &Communicator,
    alg: Scan,
    send: &[T],
    recv: &mut [T],
    op: &dyn Operation<T>,
    exclusive: bool,
) -> Result<()> {
    op.check()?;
    crate::util::check_len("scan", "recv", recv.len(), send.len())?;
    match alg {
        Scan::Linear => linear::scan(lib, send, recv, op, exclusive),
        Scan::RecursiveDoubling => recursive_doubling::scan(lib, send, recv, op, exclusive),
    }
}
