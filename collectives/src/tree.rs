//! The engine under every rooted tree algorithm (bcast, scatter, gather, reduce).
//!
//! An algorithm file picks a [`Shape`]; this module moves the data over it. Keeping
//! one engine means segmentation, exact-length checks and request handling are written
//! (and tested) once, and the algorithms differ only where they really do: in the tree.

use bytemuck::Pod;
use dsmpi_runtime::{scope, wait_all, Communicator, Tag};

use crate::error::Result;
use crate::op::Operation;
use crate::util::{abs, expect_bytes, recv_exact, rel, split_lengths, Node, Shape};

/// Broadcasts `buf` from `root` down a tree of `shape`, cut in segments of `seg`
/// bytes: a node forwards segment `k` to its children (non-blocking) while it already
/// receives segment `k + 1`, so a deep tree pipelines instead of storing and
/// forwarding the whole message at each level.
pub(crate) fn bcast(
    comm: &Communicator,
    shape: Shape,
    root: usize,
    buf: &mut [u8],
    seg: usize,
    tag: Tag,
) -> Result<()> {
    let n = comm.size();
    if n == 1 || buf.is_empty() {
        return Ok(());
    }
    let node = Node::of(shape, n, rel(comm.rank(), root, n));
    let parent = node.parent.map(|p| abs(p, root, n));
    let children: Vec<usize> = node
        .children
        .iter()
        .rev()
        .map(|&(c, _)| abs(c, root, n))
        .collect();
    if comm.send_is_buffered(seg.max(1).min(buf.len())) {
        // Every piece is buffered at once: blocking sends (the transport's fast
        // path) cannot wait on a child, and cost no request each.
        for chunk in buf.chunks_mut(seg.max(1)) {
            if let Some(p) = parent {
                recv_exact(comm, "broadcast", chunk, p, tag)?;
            }
            for &c in &children {
                comm.send(chunk, c, tag)?;
            }
        }
        return Ok(());
    }
    scope(|s| {
        let mut sends = Vec::with_capacity(children.len() * buf.len().div_ceil(seg.max(1)));
        for chunk in buf.chunks_mut(seg.max(1)) {
            if let Some(p) = parent {
                recv_exact(comm, "broadcast", chunk, p, tag)?;
            }
            let chunk: &[u8] = chunk;
            for &c in &children {
                sends.push(comm.isend(s, chunk, c, tag)?);
            }
        }
        wait_all(sends)?;
        Ok(())
    })
}

/// The data a node of a tree scatter starts from.
pub(crate) enum Area<'a> {
    /// At the root: the whole data, in relative-rank order.
    Root(&'a [u8]),
    /// Elsewhere: room for this node's subtree, filled from the parent.
    Node(&'a mut [u8]),
}

/// Scatters down a tree: relative rank `r`'s bytes are `offs[r]..offs[r + 1]` of the
/// root's data. A non-root node receives its whole subtree's range into its
/// [`Area::Node`] (which must be exactly that long) and forwards each child's part.
/// The caller takes its own block from the start of the area.
pub(crate) fn scatter(
    comm: &Communicator,
    shape: Shape,
    root: usize,
    offs: &[usize],
    area: Area<'_>,
    tag: Tag,
) -> Result<()> {
    let n = comm.size();
    let me = rel(comm.rank(), root, n);
    let node = Node::of(shape, n, me);
    let base = offs[me];
    let data: &[u8] = match area {
        Area::Root(d) => d,
        Area::Node(buf) => {
            if let Some(p) = node.parent {
                recv_exact(comm, "scatter", buf, abs(p, root, n), tag)?;
            }
            buf
        }
    };
    scope(|s| {
        let mut sends = Vec::with_capacity(node.children.len());
        // Farthest (largest) subtree first: it has the longest way to go.
        for &(c, e) in node.children.iter().rev() {
            let part = &data[offs[c] - base..offs[e] - base];
            if comm.send_is_buffered(part.len()) {
                // Buffered at once: no request needed, and no wait on the child.
                comm.send(part, abs(c, root, n), tag)?;
            } else {
                sends.push(comm.isend(s, part, abs(c, root, n), tag)?);
            }
        }
        wait_all(sends)?;
        Ok(())
    })
}

/// Gathers up a tree: `area` covers this node's subtree (`offs[me]..offs[end]`, with
/// this rank's own bytes already at its start); the children's parts are received
/// into it at once, then the whole area goes to the parent.
pub(crate) fn gather(
    comm: &Communicator,
    shape: Shape,
    root: usize,
    offs: &[usize],
    area: &mut [u8],
    tag: Tag,
) -> Result<()> {
    let n = comm.size();
    let me = rel(comm.rank(), root, n);
    let node = Node::of(shape, n, me);
    if !node.children.is_empty() {
        let mut lens = vec![offs[me + 1] - offs[me]];
        lens.extend(node.children.iter().map(|&(c, e)| offs[e] - offs[c]));
        let mut pieces = split_lengths(&mut area[..], &lens).into_iter().skip(1);
        scope(|s| -> Result<()> {
            let mut recvs = Vec::with_capacity(node.children.len());
            for (&(c, _), piece) in node.children.iter().zip(pieces.by_ref()) {
                recvs.push(comm.irecv_into(s, piece, abs(c, root, n), tag)?);
            }
            let statuses = wait_all(recvs)?;
            for ((&(c, _), st), want) in node.children.iter().zip(statuses).zip(&lens[1..]) {
                expect_bytes("gather", st.bytes(), *want, abs(c, root, n))?;
            }
            Ok(())
        })?;
    }
    if let Some(p) = node.parent {
        comm.send(area, abs(p, root, n), tag)?;
    }
    Ok(())
}

/// Reduces `send` of every rank to `root` up a tree of `shape`, `seg` elements at a
/// time (so reduction at one level overlaps communication at the next).
///
/// Returns `Some(result)` at `root`, `None` elsewhere. For a non-commutative `op` the
/// tree is rooted at rank 0 without rotation — every subtree is then a contiguous
/// range of ranks *above* its node, so combining `own ∘ child1 ∘ child2 …` keeps rank
/// order — and rank 0 forwards the result to `root`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn reduce<T: Pod>(
    comm: &Communicator,
    shape: Shape,
    root: usize,
    send: &[T],
    op: &dyn Operation<T>,
    seg: usize,
    tag: Tag,
) -> Result<Option<Vec<T>>> {
    let n = comm.size();
    let tree_root = if op.is_commutative() { root } else { 0 };
    let me = rel(comm.rank(), tree_root, n);
    let node = Node::of(shape, n, me);
    let seg = seg.max(1);
    let parent = node.parent.map(|p| abs(p, tree_root, n));
    let children: Vec<usize> = node
        .children
        .iter()
        .map(|&(c, _)| abs(c, tree_root, n))
        .collect();

    let mut acc: Vec<T> = Vec::new();
    scope(|s| -> Result<()> {
        let mut sends = Vec::new();
        if children.is_empty() {
            // A leaf has nothing to combine: its segments go straight from `send`.
            if let Some(p) = parent {
                for chunk in send.chunks(seg) {
                    sends.push(comm.isend(s, chunk, p, tag)?);
                }
            } else {
                acc = send.to_vec();
            }
            wait_all(sends)?;
            return Ok(());
        }
        acc = send.to_vec();
        let mut tmps: Vec<Vec<T>> = vec![vec![T::zeroed(); seg.min(send.len())]; children.len()];
        for chunk in acc.chunks_mut(seg) {
            let len = chunk.len();
            scope(|s2| -> Result<()> {
                let mut recvs = Vec::with_capacity(children.len());
                for (&c, t) in children.iter().zip(tmps.iter_mut()) {
                    recvs.push(comm.irecv_into(s2, &mut t[..len], c, tag)?);
                }
                for (st, &c) in wait_all(recvs)?.into_iter().zip(&children) {
                    expect_bytes("reduce", st.bytes(), std::mem::size_of_val(&*chunk), c)?;
                }
                Ok(())
            })?;
            for t in tmps.iter_mut() {
                if op.is_commutative() {
                    op.apply(&t[..len], chunk);
                } else {
                    // chunk holds the lower ranks: chunk ∘ t, computed into t.
                    op.apply(chunk, &mut t[..len]);
                    chunk.copy_from_slice(&t[..len]);
                }
            }
            if let Some(p) = parent {
                let chunk: &[T] = chunk;
                sends.push(comm.isend(s, chunk, p, tag)?);
            }
        }
        wait_all(sends)?;
        Ok(())
    })?;
    if parent.is_some() {
        // Everything went up the tree; the root of the tree keeps nothing else.
        acc.clear();
    }
    let i_am_tree_root = parent.is_none();
    match (i_am_tree_root, comm.rank() == root) {
        (true, true) => Ok(Some(acc)),
        (true, false) => {
            comm.send(&acc, root, tag)?;
            Ok(None)
        }
        (false, true) => {
            let mut out = vec![T::zeroed(); send.len()];
            recv_exact(comm, "reduce", &mut out, tree_root, tag)?;
            Ok(Some(out))
        }
        (false, false) => Ok(None),
    }
}
