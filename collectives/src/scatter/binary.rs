//! Binary-tree scatter: each node sends the two halves of its subtree's blocks to
//! its two children, which forward the parts below them.

use dsmpi_runtime::Communicator;

use crate::error::Result;
use crate::util::Shape;

/// Binary-tree scatter of `send` (at the root) into `recv`.
pub(crate) fn scatter(
    comm: &Communicator,
    root: usize,
    send: &[u8],
    recv: &mut [u8],
) -> Result<()> {
    super::tree_scatter(comm, Shape::Binary, root, send, recv)
}
