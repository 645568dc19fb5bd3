//! Ring reduce-scatter: block b's partial result starts at rank b + 1 and travels
//! round the ring, each rank adding its operand, until it reaches rank b. The same
//! routine is the first half of the ring allreduce (see `allreduce/ring.rs` for how
//! non-commutative operations keep rank order).

use bytemuck::Pod;
use dsmpi_runtime::Communicator;

use crate::allreduce::ring_reduce_scatter;
use crate::error::Result;
use crate::op::Operation;
use crate::tags::REDUCE_SCATTER;

/// Ring reduce-scatter of `send` into `recv`.
pub(crate) fn reduce_scatter<T: Pod>(
    comm: &Communicator,
    send: &[T],
    recv: &mut [T],
    op: &dyn Operation<T>,
) -> Result<()> {
    let m = recv.len();
    let offs: Vec<usize> = (0..=comm.size()).map(|i| i * m).collect();
    let mine = ring_reduce_scatter(comm, send, &offs, op, REDUCE_SCATTER)?;
    recv.copy_from_slice(&mine);
    Ok(())
}
