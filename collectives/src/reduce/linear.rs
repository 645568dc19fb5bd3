//! Linear reduce: every rank sends its vector to the root, which combines them in
//! order (rank order for a non-commutative operation). p−1 messages and all the
//! arithmetic at one rank.

use bytemuck::Pod;
use dsmpi_runtime::Communicator;

use crate::error::Result;
use crate::op::Operation;
use crate::tags::REDUCE;
use crate::tree;
use crate::util::Shape;

/// Linear reduce of `send` to `root`; `Some(result)` at the root.
pub(crate) fn reduce<T: Pod>(
    comm: &Communicator,
    root: usize,
    send: &[T],
    op: &dyn Operation<T>,
) -> Result<Option<Vec<T>>> {
    tree::reduce(
        comm,
        Shape::Star,
        root,
        send,
        op,
        super::seg_elems::<T>(),
        REDUCE,
    )
}
