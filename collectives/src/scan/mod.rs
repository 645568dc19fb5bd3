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
    /// The backend's own collective (MPI_Scan / MPI_Exscan, on the `mpi` backend), for
    /// comparisons; only for [`SystemOp`](crate::op::SystemOp)s on `u8`…`i64`, `f32`
    /// and `f64`. Rank 0's buffer of an exclusive scan is left as it was, as with the
    /// other algorithms. Never chosen by [`Scan::choose`]; fails with
    /// [`Error::NativeUnavailable`](crate::Error::NativeUnavailable) on other backends.
    Native,
}

impl Scan {
    /// Every dsmpi algorithm, for tests and benchmarks (not [`Scan::Native`], which
    /// needs the `mpi` backend).
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
        Scan::Native => {
            let (native, scope) = crate::native::of(lib)?;
            let (nop, kind) = crate::native::reduction("Scan::Native", op)?;
            Ok(native.scan(
                scope,
                nop,
                kind,
                exclusive,
                bytemuck::cast_slice(send),
                bytemuck::cast_slice_mut(recv),
            )?)
        }
    }
}
