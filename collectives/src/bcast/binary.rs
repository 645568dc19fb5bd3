//! Binary-tree broadcast: each node forwards to at most two children, the roots of the
//! two halves of its subtree. Deeper than binomial (about 2 log2 p sends on the
//! critical path) but every node sends at most twice per segment, which keeps inner
//! nodes' links balanced once the message is segmented.

use dsmpi_runtime::Communicator;

use crate::error::Result;
use crate::tags::BCAST;
use crate::tree;
use crate::util::Shape;

/// Binary-tree broadcast of `buf` from `root`.
pub(crate) fn bcast(comm: &Communicator, root: usize, buf: &mut [u8]) -> Result<()> {
    tree::bcast(comm, Shape::Binary, root, buf, super::SEGMENT_BYTES, BCAST)
}
