//! Helpers shared by the algorithms: rank arithmetic, tree shapes, exact receives and
//! buffer splitting.

use std::ops::Range;

use bytemuck::Pod;
use dsmpi_runtime::{Communicator, Tag};

use crate::error::{Error, Result};

/// Rank `rank` seen from `root`: the root is 0 and the others follow cyclically.
pub(crate) fn rel(rank: usize, root: usize, n: usize) -> usize {
    (rank + n - root) % n
}

/// The rank whose relative rank from `root` is `r`.
pub(crate) fn abs(r: usize, root: usize, n: usize) -> usize {
    (r + root) % n
}

/// Fails unless `root` is a rank of a communicator of `n` ranks.
pub(crate) fn check_root(root: usize, n: usize) -> Result<()> {
    if root < n {
        Ok(())
    } else {
        Err(Error::RootOutOfRange { root, size: n })
    }
}

/// Fails unless a buffer argument has the length the operation needs.
pub(crate) fn check_len(
    op: &'static str,
    what: &'static str,
    got: usize,
    expected: usize,
) -> Result<()> {
    if got == expected {
        Ok(())
    } else {
        Err(Error::BufferLength {
            op,
            what,
            expected,
            got,
        })
    }
}

/// Receives exactly `buf.len()` elements from `src`; a shorter message means the ranks
/// disagree on the counts, and is reported instead of leaving part of `buf` stale.
pub(crate) fn recv_exact<T: Pod>(
    comm: &Communicator,
    op: &'static str,
    buf: &mut [T],
    src: usize,
    tag: Tag,
) -> Result<()> {
    let st = comm.recv_into(buf, src, tag)?;
    expect_bytes(op, st.bytes(), std::mem::size_of_val(buf), src)
}

/// Fails unless a message of `got` bytes from `src` has the `expected` length.
pub(crate) fn expect_bytes(
    op: &'static str,
    got: usize,
    expected: usize,
    src: usize,
) -> Result<()> {
    if got == expected {
        Ok(())
    } else {
        Err(Error::CountMismatch {
            op,
            sender: src,
            expected,
            got,
        })
    }
}

/// Sends `send` to `dest` and receives exactly `recv.len()` elements from `src` at
/// once (so that two ranks exchanging large messages do not deadlock).
#[allow(clippy::too_many_arguments)]
pub(crate) fn exchange<T: Pod>(
    comm: &Communicator,
    op: &'static str,
    send: &[T],
    dest: usize,
    recv: &mut [T],
    src: usize,
    tag: Tag,
) -> Result<()> {
    let expected = std::mem::size_of_val(recv);
    let st = comm.sendrecv(send, dest, tag, recv, src, tag)?;
    expect_bytes(op, st.bytes(), expected, src)
}

/// Two disjoint parts of one buffer: `a` to read, `b` to write.
pub(crate) fn split_ro_rw<T>(buf: &mut [T], a: Range<usize>, b: Range<usize>) -> (&[T], &mut [T]) {
    debug_assert!(a.end <= b.start || b.end <= a.start || a.is_empty() || b.is_empty());
    if a.is_empty() {
        return (&[], &mut buf[b]);
    }
    if a.start < b.start {
        let (lo, hi) = buf.split_at_mut(b.start);
        (&lo[a], &mut hi[..b.end - b.start])
    } else {
        let (lo, hi) = buf.split_at_mut(a.start);
        (&hi[..a.end - a.start], &mut lo[b])
    }
}

/// Cuts `buf` into consecutive mutable pieces of the given lengths (which must sum to
/// at most `buf.len()`).
pub(crate) fn split_lengths<'a, T>(mut buf: &'a mut [T], lens: &[usize]) -> Vec<&'a mut [T]> {
    let mut out = Vec::with_capacity(lens.len());
    for &l in lens {
        let (head, tail) = std::mem::take(&mut buf).split_at_mut(l);
        out.push(head);
        buf = tail;
    }
    out
}

/// Element range of block `i` of `nblocks` nearly equal blocks of a `len`-element
/// buffer (the first `len % nblocks` blocks are one element longer).
pub(crate) fn block_range(len: usize, nblocks: usize, i: usize) -> Range<usize> {
    let q = len / nblocks;
    let r = len % nblocks;
    let start = i * q + i.min(r);
    start..start + q + usize::from(i < r)
}

/// The tree shapes the rooted algorithms run on.
///
/// Every shape is described in *relative* ranks (the root is 0) and gives each node a
/// subtree that is a contiguous range `[node, end)` of relative ranks. That property
/// lets scatter and gather move one contiguous piece per child, and lets a reduction
/// over a tree rooted at rank 0 combine operands in rank order, which non-commutative
/// operations need.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Shape {
    /// The root is the parent of every other rank.
    Star,
    /// Binomial tree: relative rank `r` is the parent of `r + 2^k` for every `2^k`
    /// below the lowest set bit of `r`.
    Binomial,
    /// Binary tree: a node covering `[lo, hi)` has the children that cover the two
    /// halves of `[lo + 1, hi)`.
    Binary,
    /// A chain: `r` is the parent of `r + 1`.
    Chain,
}

/// One node of a tree: its parent, its children and the end of its subtree, all in
/// relative ranks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Node {
    /// Parent, `None` at the root.
    pub parent: Option<usize>,
    /// Children in increasing order, each with the end of its subtree.
    pub children: Vec<(usize, usize)>,
    /// End (exclusive) of this node's subtree `[node, end)`.
    pub end: usize,
}

impl Node {
    /// Node `r` of a tree of `shape` over `n` relative ranks.
    pub fn of(shape: Shape, n: usize, r: usize) -> Node {
        match shape {
            Shape::Star => {
                if r == 0 {
                    Node {
                        parent: None,
                        children: (1..n).map(|c| (c, c + 1)).collect(),
                        end: n,
                    }
                } else {
                    Node {
                        parent: Some(0),
                        children: Vec::new(),
                        end: r + 1,
                    }
                }
            }
            Shape::Chain => Node {
                parent: r.checked_sub(1),
                children: if r + 1 < n {
                    vec![(r + 1, n)]
                } else {
                    Vec::new()
                },
                end: n,
            },
            Shape::Binomial => {
                let low = if r == 0 {
                    n.next_power_of_two()
                } else {
                    1 << r.trailing_zeros()
                };
                let mut children = Vec::new();
                let mut m = 1;
                while m < low && r + m < n {
                    children.push((r + m, (r + 2 * m).min(n)));
                    m <<= 1;
                }
                Node {
                    parent: (r != 0).then(|| r - low),
                    children,
                    end: (r + low).min(n),
                }
            }
            Shape::Binary => {
                let (mut lo, mut hi, mut parent) = (0, n, None);
                loop {
                    let halves = binary_halves(lo, hi);
                    if lo == r {
                        return Node {
                            parent,
                            children: halves
                                .into_iter()
                                .flatten()
                                .map(|h| (h.start, h.end))
                                .collect(),
                            end: hi,
                        };
                    }
                    parent = Some(lo);
                    let next = halves
                        .into_iter()
                        .flatten()
                        .find(|h| h.contains(&r))
                        .unwrap_or(r..r + 1);
                    lo = next.start;
                    hi = next.end;
                }
            }
        }
    }
}

/// The two child ranges of a binary-tree node covering `[lo, hi)`.
fn binary_halves(lo: usize, hi: usize) -> [Option<Range<usize>>; 2] {
    let rest = hi - lo - 1;
    let left = rest.div_ceil(2);
    let l = lo + 1..lo + 1 + left;
    let rr = lo + 1 + left..hi;
    [(!l.is_empty()).then_some(l), (!rr.is_empty()).then_some(rr)]
}

/// Mutable views of the ranges `(start, len)` of `buf`, in the order given; fails when
/// two ranges overlap or one runs past the end (MPI forbids overlapping receives).
pub(crate) fn disjoint_mut<'a, T>(
    op: &'static str,
    buf: &'a mut [T],
    ranges: &[(usize, usize)],
) -> Result<Vec<&'a mut [T]>> {
    let mut order: Vec<usize> = (0..ranges.len()).collect();
    order.sort_by_key(|&i| ranges[i].0);
    let mut out: Vec<Option<&'a mut [T]>> = (0..ranges.len()).map(|_| None).collect();
    let mut rest = buf;
    let mut at = 0;
    for i in order {
        let (start, len) = ranges[i];
        if start < at || start.checked_add(len).is_none_or(|e| e > at + rest.len()) {
            return Err(Error::InvalidArgument(format!(
                "{op}: block {i} ({start}+{len}) overlaps another or runs past the buffer"
            )));
        }
        let (_, tail) = std::mem::take(&mut rest).split_at_mut(start - at);
        let (piece, tail) = tail.split_at_mut(len);
        out[i] = Some(piece);
        rest = tail;
        at = start + len;
    }
    Ok(out.into_iter().map(|p| p.unwrap_or_default()).collect())
}

/// Checks a counts/displacements pair against a buffer of `len` elements and `n`
/// ranks.
pub(crate) fn check_v(
    op: &'static str,
    counts: &[usize],
    displs: &[usize],
    n: usize,
    len: usize,
) -> Result<()> {
    check_len(op, "counts", counts.len(), n)?;
    check_len(op, "displs", displs.len(), n)?;
    for (r, (&c, &d)) in counts.iter().zip(displs).enumerate() {
        if d.checked_add(c).is_none_or(|e| e > len) {
            return Err(Error::InvalidArgument(format!(
                "{op}: block of rank {r} ({d}+{c}) runs past a buffer of {len}"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every shape is a tree: each non-root has the parent that lists it, subtrees are
    /// contiguous and partition their parent's range.
    #[test]
    fn shapes_are_trees_with_contiguous_subtrees() {
        for shape in [Shape::Star, Shape::Binomial, Shape::Binary, Shape::Chain] {
            for n in 1..=33 {
                let nodes: Vec<Node> = (0..n).map(|r| Node::of(shape, n, r)).collect();
                assert_eq!(nodes[0].parent, None);
                assert_eq!(nodes[0].end, n);
                for (r, node) in nodes.iter().enumerate() {
                    let mut next = r + 1;
                    for &(c, e) in &node.children {
                        assert_eq!(c, next, "{shape:?} n={n} r={r}");
                        assert_eq!(nodes[c].parent, Some(r));
                        assert_eq!(nodes[c].end, e);
                        next = e;
                    }
                    assert_eq!(next, node.end, "{shape:?} n={n} r={r}");
                }
            }
        }
    }

    #[test]
    fn blocks_cover_the_buffer() {
        for len in 0..20 {
            for nb in 1..7 {
                let mut at = 0;
                for i in 0..nb {
                    let r = block_range(len, nb, i);
                    assert_eq!(r.start, at);
                    at = r.end;
                }
                assert_eq!(at, len);
            }
        }
    }
}
