//! Binary-tree gather: a node receives its two children's halves and sends its whole
//! subtree up.

use dsmpi_runtime::Communicator;

use crate::error::Result;
use crate::util::Shape;

/// Binary-tree gather of every rank's `send` into the root's `recv`.
pub(crate) fn gather(comm: &Communicator, root: usize, send: &[u8], recv: &mut [u8]) -> Result<()> {
    super::tree_gather(comm, Shape::Binary, root, send, recv)
}
