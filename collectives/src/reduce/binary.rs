//! Binary-tree reduce: like the binomial one, with at most two children per node.

use bytemuck::Pod;
use dsmpi_runtime::Communicator;

use crate::error::Result;
use crate::op::Operation;
use crate::tags::REDUCE;
use crate::tree;
use crate::util::Shape;

/// Binary reduce of `send` to `root`; `Some(result)` at the root.
pub(crate) fn reduce<T: Pod>(
    comm: &Communicator,
    root: usize,
    send: &[T],
    op: &dyn Operation<T>,
) -> Result<Option<Vec<T>>> {
    tree::reduce(
        comm,
        Shape::Binary,
        root,
        send,
        op,
        super::seg_elems::<T>(),
        REDUCE,
    )
}
