//! Scatter and scatterv (MPI_Scatter, MPI_Scatterv): block r of the root's buffer goes
//! to rank r.
//!
//! [`Scatter::Linear`] sends each block straight from the user's buffer; the trees
//! (`binomial.rs`, `binary.rs`) send each subtree's blocks as one message, so the
//! root sends ⌈log2 p⌉ (binomial) or 2 (binary) messages instead of p−1, at the cost
//! of inner nodes relaying their subtree's data. For scatterv the trees first
//! broadcast the counts down the same tree (only the root knows them).

mod binary;
mod binomial;
mod linear;

use std::borrow::Cow;

use dsmpi_runtime::Communicator;

use crate::error::Result;
use crate::tags::{SCATTER, SCATTER_COUNTS};
use crate::tree::{self, Area};
use crate::util::{abs, check_len, check_v, rel, Node, Shape};

/// Bytes per rank below which a tree's fewer messages beat the linear scatter's
/// direct sends (measured: the trees win up to 4–16 KiB blocks on 4 and 8 ranks,
/// linear from 8–64 KiB).
pub const TREE_BYTES: usize = 8 * 1024;

/// A scatter (and scatterv) algorithm.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scatter {
    /// The root sends block r to rank r, all at once (exercise 11.5's linear version).
    Linear,
    /// Binomial tree (exercise 11.5).
    Binomial,
    /// Binary tree (exercise 11.5).
    Binary,
    /// The backend's own collective (MPI_Scatter, on the `mpi` backend), for comparisons.
    /// Never chosen by [`Scatter::choose`]; fails with
    /// [`Error::NativeUnavailable`](crate::Error::NativeUnavailable) on other backends.
    /// The `v` form runs MPI_Scatterv.
    Native,
}

impl Scatter {
    /// Every dsmpi algorithm, for tests and benchmarks (not [`Scatter::Native`], which
    /// needs the `mpi` backend).
    pub const ALL: [Scatter; 3] = [Scatter::Linear, Scatter::Binomial, Scatter::Binary];

    /// The algorithm the decision function picks for `bytes` per rank on `ranks`.
    pub fn choose(bytes: usize, ranks: usize) -> Scatter {
        if ranks > 2 && bytes < TREE_BYTES {
            Scatter::Binary
        } else {
            Scatter::Linear
        }
    }

    fn shape(self) -> Shape {
        match self {
            Scatter::Linear => Shape::Star,
            Scatter::Binomial => Shape::Binomial,
            Scatter::Binary => Shape::Binary,
            // Never used: run_v runs Native before asking for a shape.
            Scatter::Native => Shape::Star,
        }
    }
}

/// Runs `alg`: `recv` gets block `rank` of the root's `send` (`p × recv.len()` bytes,
/// read at the root only).
pub(crate) fn run(
    lib: &Communicator,
    alg: Scatter,
    root: usize,
    send: &[u8],
    recv: &mut [u8],
) -> Result<()> {
    let n = lib.size();
    crate::util::check_root(root, n)?;
    if lib.rank() == root {
        check_len("scatter", "send (bytes)", send.len(), n * recv.len())?;
    }
    match alg {
        Scatter::Linear => linear::scatter(lib, root, send, recv),
        Scatter::Binomial => binomial::scatter(lib, root, send, recv),
        Scatter::Binary => binary::scatter(lib, root, send, recv),
        Scatter::Native => {
            let (native, scope) = crate::native::of(lib)?;
            Ok(native.scatter(scope, root, send, recv)?)
        }
    }
}

/// Runs `alg` as a scatterv: rank r gets `send[displs[r]..][..counts[r]]` (bytes;
/// `send`, `counts` and `displs` read at the root only) into `recv`, which must be
/// exactly that long.
pub(crate) fn run_v(
    lib: &Communicator,
    alg: Scatter,
    root: usize,
    send: &[u8],
    counts: &[usize],
    displs: &[usize],
    recv: &mut [u8],
) -> Result<()> {
    let n = lib.size();
    crate::util::check_root(root, n)?;
    if lib.rank() == root {
        check_v("scatterv", counts, displs, n, send.len())?;
        check_len("scatterv", "recv (bytes)", recv.len(), counts[root])?;
    }
    match alg {
        Scatter::Native => {
            let (native, scope) = crate::native::of(lib)?;
            Ok(native.scatterv(scope, root, send, counts, displs, recv)?)
        }
        Scatter::Linear => linear::scatterv(lib, root, send, counts, displs, recv),
        _ => tree_scatterv(lib, alg.shape(), root, send, counts, displs, recv),
    }
}

/// `data` rotated left by `at` bytes: the root's blocks in relative-rank order.
pub(crate) fn rotate(data: &[u8], at: usize) -> Cow<'_, [u8]> {
    if at == 0 {
        Cow::Borrowed(data)
    } else {
        let mut v = Vec::with_capacity(data.len());
        v.extend_from_slice(&data[at..]);
        v.extend_from_slice(&data[..at]);
        Cow::Owned(v)
    }
}

/// Scatter with equal blocks down a tree.
pub(crate) fn tree_scatter(
    comm: &Communicator,
    shape: Shape,
    root: usize,
    send: &[u8],
    recv: &mut [u8],
) -> Result<()> {
    let n = comm.size();
    let me = rel(comm.rank(), root, n);
    let m = recv.len();
    let offs: Vec<usize> = (0..=n).map(|i| i * m).collect();
    if me == 0 {
        let data = rotate(send, root * m);
        tree::scatter(comm, shape, root, &offs, Area::Root(&data), SCATTER)?;
        recv.copy_from_slice(&data[..m]);
        return Ok(());
    }
    scatter_below(comm, shape, root, &offs, me, recv)
}

/// A non-root node's part of a tree scatter: a leaf receives straight into `recv`,
/// an inner node into a buffer for its subtree.
fn scatter_below(
    comm: &Communicator,
    shape: Shape,
    root: usize,
    offs: &[usize],
    me: usize,
    recv: &mut [u8],
) -> Result<()> {
    let node = Node::of(shape, comm.size(), me);
    if node.children.is_empty() {
        return tree::scatter(comm, shape, root, offs, Area::Node(recv), SCATTER);
    }
    let mut sub = vec![0u8; offs[node.end] - offs[me]];
    tree::scatter(comm, shape, root, offs, Area::Node(&mut sub), SCATTER)?;
    let m = recv.len();
    recv.copy_from_slice(&sub[..m]);
    Ok(())
}

/// Scatterv down a tree: the counts go first, then the data.
fn tree_scatterv(
    comm: &Communicator,
    shape: Shape,
    root: usize,
    send: &[u8],
    counts: &[usize],
    displs: &[usize],
    recv: &mut [u8],
) -> Result<()> {
    let n = comm.size();
    let me = rel(comm.rank(), root, n);
    let mut rel_counts = vec![0u64; n];
    if me == 0 {
        for (r, &c) in counts.iter().enumerate() {
            rel_counts[rel(r, root, n)] = c as u64;
        }
    }
    tree::bcast(
        comm,
        shape,
        root,
        bytemuck::cast_slice_mut(&mut rel_counts),
        usize::MAX,
        SCATTER_COUNTS,
    )?;
    let mut offs = vec![0usize; n + 1];
    for i in 0..n {
        offs[i + 1] = offs[i] + rel_counts[i] as usize;
    }
    check_len(
        "scatterv",
        "recv (bytes)",
        recv.len(),
        offs[me + 1] - offs[me],
    )?;
    if me == 0 {
        let mut data = Vec::with_capacity(offs[n]);
        for v in 0..n {
            let r = abs(v, root, n);
            data.extend_from_slice(&send[displs[r]..displs[r] + counts[r]]);
        }
        tree::scatter(comm, shape, root, &offs, Area::Root(&data), SCATTER)?;
        recv.copy_from_slice(&data[..offs[1]]);
        return Ok(());
    }
    scatter_below(comm, shape, root, &offs, me, recv)
}
