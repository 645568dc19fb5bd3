//! Binomial-tree scatter: the root sends each child its whole subtree's blocks
//! (halves, quarters, …), which forward the parts below them. ⌈log2 p⌉ steps, and the
//! root sends ⌈log2 p⌉ messages: the small-block choice.

use dsmpi_runtime::Communicator;

use crate::error::Result;
use crate::util::Shape;

/// Binomial-tree scatter of `send` (at the root) into `recv`.
pub(crate) fn scatter(
    comm: &Communicator,
    root: usize,
    send: &[u8],
    recv: &mut [u8],
) -> Result<()> {
    super::tree_scatter(comm, Shape::Binomial, root, send, recv)
}
