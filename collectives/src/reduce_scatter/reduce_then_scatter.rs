//! Reduce-scatter as a binomial reduce of the whole vector to rank 0 followed by a
//! binomial scatter of its blocks: ⌈log2 p⌉ steps each way, but every step moves
//! whole vectors: for short ones only.

use bytemuck::Pod;
use dsmpi_runtime::Communicator;

use crate::error::Result;
use crate::op::Operation;
use crate::reduce::{self, Reduce};
use crate::scatter::{self, Scatter};

/// Reduce-then-scatter of `send` into `recv`.
pub(crate) fn reduce_scatter<T: Pod>(
    comm: &Communicator,
    send: &[T],
    recv: &mut [T],
    op: &dyn Operation<T>,
) -> Result<()> {
    let all = reduce::run(comm, Reduce::Binomial, 0, send, op)?.unwrap_or_default();
    scatter::run(
        comm,
        Scatter::Binomial,
        0,
        bytemuck::cast_slice(&all),
        bytemuck::cast_slice_mut(recv),
    )
}
