//! Binomial-tree reduce: a rank combines its children's partial results (subtrees
//! of 1, 2, 4, … ranks) with its own and sends the result to its parent; ⌈log2 p⌉
//! levels. Segmented so that the levels work concurrently on large vectors.

use bytemuck::Pod;
use dsmpi_runtime::Communicator;

use crate::error::Result;
use crate::op::Operation;
use crate::tags::REDUCE;
use crate::tree;
use crate::util::Shape;

/// Binomial reduce of `send` to `root`; `Some(result)` at the root.
pub(crate) fn reduce<T: Pod>(
    comm: &Communicator,
    root: usize,
    send: &[T],
    op: &dyn Operation<T>,
) -> Result<Option<Vec<T>>> {
    tree::reduce(
        comm,
        Shape::Binomial,
        root,
        send,
        op,
        super::seg_elems::<T>(),
        REDUCE,
    )
}
