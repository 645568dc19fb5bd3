//! Allreduce as a binomial reduce to rank 0 followed by a broadcast: twice the depth
//! of recursive doubling, but each rank sends its vector only about twice, and both
//! halves are segmented trees. Mostly a baseline.

use bytemuck::Pod;
use dsmpi_runtime::Communicator;

use crate::bcast::{self, Bcast};
use crate::error::Result;
use crate::op::Operation;
use crate::reduce::{self, Reduce};

/// Reduce-then-broadcast allreduce of `send` into `recv`.
pub(crate) fn allreduce<T: Pod>(
    comm: &Communicator,
    send: &[T],
    recv: &mut [T],
    op: &dyn Operation<T>,
) -> Result<()> {
    if let Some(res) = reduce::run(comm, Reduce::Binomial, 0, send, op)? {
        recv.copy_from_slice(&res);
    }
    bcast::run(comm, Bcast::Binomial, 0, bytemuck::cast_slice_mut(recv))
}
