//! Binomial-tree gather: a node receives its children's subtrees (1, 2, 4, … blocks)
//! into one buffer and sends the lot to its parent. ⌈log2 p⌉ steps: the small-block
//! choice.

use dsmpi_runtime::Communicator;

use crate::error::Result;
use crate::util::Shape;

/// Binomial-tree gather of every rank's `send` into the root's `recv`.
pub(crate) fn gather(comm: &Communicator, root: usize, send: &[u8], recv: &mut [u8]) -> Result<()> {
    super::tree_gather(comm, Shape::Binomial, root, send, recv)
}
