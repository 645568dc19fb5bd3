//! Gather and gatherv (MPI_Gather, MPI_Gatherv): rank r's block lands at block r of the
//! root's buffer. The mirror image of [`scatter`](crate::scatter): linear receives
//! straight into the user's buffer, the trees relay whole subtrees. For gatherv the
//! trees first gather the counts up the same tree, so every inner node learns the
//! size of its subtree's data.

mod binary;
mod binomial;
mod linear;

use dsmpi_runtime::Communicator;

use crate::error::Result;
use crate::tags::{GATHER, GATHER_COUNTS};
use crate::tree;
use crate::util::{abs, check_len, check_v, expect_bytes, rel, Node, Shape};

/// Bytes per rank below which a tree's fewer messages beat the linear gather (taken
/// from the scatter measurements, its mirror image; gather itself is not benchmarked).
pub const TREE_BYTES: usize = 8 * 1024;

/// A gather (and gatherv) algorithm.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Gather {
    /// Every rank sends to the root, which receives them all at once.
    Linear,
    /// Binomial tree.
    Binomial,
    /// Binary tree.
    Binary,
    /// The backend's own collective (MPI_Gather, on the `mpi` backend), for comparisons.
    /// Never chosen by [`Gather::choose`]; fails with
    /// [`Error::NativeUnavailable`](crate::Error::NativeUnavailable) on other backends.
    /// The `v` form runs MPI_Gatherv.
    Native,
}

impl Gather {
    /// Every dsmpi algorithm, for tests and benchmarks (not [`Gather::Native`], which
    /// needs the `mpi` backend).
    pub const ALL: [Gather; 3] = [Gather::Linear, Gather::Binomial, Gather::Binary];

    /// The algorithm the decision function picks for `bytes` per rank on `ranks`.
    pub fn choose(bytes: usize, ranks: usize) -> Gather {
        if ranks > 2 && bytes < TREE_BYTES {
            Gather::Binary
        } else {
            Gather::Linear
        }
    }

    fn shape(self) -> Shape {
        match self {
            Gather::Linear => Shape::Star,
            Gather::Binomial => Shape::Binomial,
            Gather::Binary => Shape::Binary,
            // Never used: run_v runs Native before asking for a shape.
            Gather::Native => Shape::Star,
        }
    }
}

/// Runs `alg`: the root's `recv` (p × `send.len()` bytes) gets every rank's `send`.
pub(crate) fn run(
    lib: &Communicator,
    alg: Gather,
    root: usize,
    send: &[u8],
    recv: &mut [u8],
) -> Result<()> {
    let n = lib.size();
    crate::util::check_root(root, n)?;
    if lib.rank() == root {
        check_len("gather", "recv (bytes)", recv.len(), n * send.len())?;
    }
    match alg {
        Gather::Linear => linear::gather(lib, root, send, recv),
        Gather::Binomial => binomial::gather(lib, root, send, recv),
        Gather::Binary => binary::gather(lib, root, send, recv),
        Gather::Native => {
            let (native, scope) = crate::native::of(lib)?;
            Ok(native.gather(scope, root, send, recv)?)
        }
    }
}

/// Runs `alg` as a gatherv: rank r's `send` lands at `recv[displs[r]..][..counts[r]]`
/// (bytes; `recv`, `counts`, `displs` used at the root only).
pub(crate) fn run_v(
    lib: &Communicator,
    alg: Gather,
    root: usize,
    send: &[u8],
    recv: &mut [u8],
    counts: &[usize],
    displs: &[usize],
) -> Result<()> {
    let n = lib.size();
    crate::util::check_root(root, n)?;
    if lib.rank() == root {
        check_v("gatherv", counts, displs, n, recv.len())?;
        check_len("gatherv", "send (bytes)", send.len(), counts[root])?;
    }
    match alg {
        Gather::Native => {
            let (native, scope) = crate::native::of(lib)?;
            Ok(native.gatherv(scope, root, send, recv, counts, displs)?)
        }
        Gather::Linear => linear::gatherv(lib, root, send, recv, counts, displs),
        _ => tree_gatherv(lib, alg.shape(), root, send, recv, counts, displs),
    }
}

/// Gather with equal blocks up a tree.
pub(crate) fn tree_gather(
    comm: &Communicator,
    shape: Shape,
    root: usize,
    send: &[u8],
    recv: &mut [u8],
) -> Result<()> {
    let n = comm.size();
    let me = rel(comm.rank(), root, n);
    let m = send.len();
    let offs: Vec<usize> = (0..=n).map(|i| i * m).collect();
    let node = Node::of(shape, n, me);
    if let (Some(p), true) = (node.parent, node.children.is_empty()) {
        // A leaf's subtree is its own block: send it as it is.
        return Ok(comm.send(send, abs(p, root, n), GATHER)?);
    }
    if me != 0 {
        let mut sub = vec![0u8; offs[node.end] - offs[me]];
        sub[..m].copy_from_slice(send);
        return tree::gather(comm, shape, root, &offs, &mut sub, GATHER);
    }
    if root == 0 {
        recv[..m].copy_from_slice(send);
        return tree::gather(comm, shape, root, &offs, recv, GATHER);
    }
    let mut all = vec![0u8; n * m];
    all[..m].copy_from_slice(send);
    tree::gather(comm, shape, root, &offs, &mut all, GATHER)?;
    // Undo the rotation: relative rank v is rank (v + root) mod p.
    let split = (n - root) * m;
    recv[root * m..].copy_from_slice(&all[..split]);
    recv[..root * m].copy_from_slice(&all[split..]);
    Ok(())
}

/// Gatherv up a tree: the counts go up first, so inner nodes can size their buffers.
fn tree_gatherv(
    comm: &Communicator,
    shape: Shape,
    root: usize,
    send: &[u8],
    recv: &mut [u8],
    counts: &[usize],
    displs: &[usize],
) -> Result<()> {
    let n = comm.size();
    let me = rel(comm.rank(), root, n);
    let node = Node::of(shape, n, me);
    // Counts of this subtree, in relative order.
    let mut sub_counts = vec![0u64; node.end - me];
    sub_counts[0] = send.len() as u64;
    let count_offs: Vec<usize> = (0..=n).map(|i| i * 8).collect();
    tree::gather(
        comm,
        shape,
        root,
        &count_offs,
        bytemuck::cast_slice_mut(&mut sub_counts),
        GATHER_COUNTS,
    )?;
    let mut offs = vec![0usize; n + 1];
    for (i, c) in sub_counts.iter().enumerate() {
        offs[me + i + 1] = offs[me + i] + *c as usize;
    }
    let mut sub = vec![0u8; offs[node.end]];
    sub[..send.len()].copy_from_slice(send);
    tree::gather(comm, shape, root, &offs, &mut sub, GATHER)?;
    if me != 0 {
        return Ok(());
    }
    for (v, c) in sub_counts.iter().enumerate() {
        let r = abs(v, root, n);
        expect_bytes("gatherv", *c as usize, counts[r], r)?;
        recv[displs[r]..displs[r] + counts[r]].copy_from_slice(&sub[offs[v]..offs[v + 1]]);
    }
    Ok(())
}
