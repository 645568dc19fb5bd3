//! Ring allreduce: a ring reduce-scatter leaves block r of the result on rank r, then
//! a ring allgather circulates the blocks. Each rank sends 2(p−1)/p of the vector in
//! 2(p−1) steps: bandwidth-optimal, the choice for large vectors.
//!
//! In the reduce-scatter, block b starts at rank b+1 and travels right, each rank
//! adding its operand, until it ends at rank b. That visiting order wraps around from
//! p−1 to 0, which is fine for a commutative operation. For a non-commutative one
//! the travelling partial result is kept in two parts — `high` for the ranks above b
//! it has visited, `low` for ranks 0..=r — and the owner finishes with `low ∘ high`,
//! which is rank order. That costs a second block on the messages after the wrap.

use bytemuck::Pod;
use dsmpi_runtime::Communicator;

use crate::error::Result;
use crate::op::Operation;
use crate::tags::{ALLGATHER, REDUCE_SCATTER};
use crate::util::{block_range, exchange};

/// Ring allreduce of `send` into `recv`.
pub(crate) fn allreduce<T: Pod>(
    comm: &Communicator,
    send: &[T],
    recv: &mut [T],
    op: &dyn Operation<T>,
) -> Result<()> {
    let n = comm.size();
    let me = comm.rank();
    let mut offs: Vec<usize> = (0..n)
        .map(|i| block_range(send.len(), n, i).start)
        .collect();
    offs.push(send.len());
    let mine = ring_reduce_scatter(comm, send, &offs, op, REDUCE_SCATTER)?;
    recv[offs[me]..offs[me + 1]].copy_from_slice(&mine);
    let size = std::mem::size_of::<T>();
    let byte_offs: Vec<usize> = offs.iter().map(|o| o * size).collect();
    crate::allgather::ring::ring_blocks(
        comm,
        bytemuck::cast_slice_mut(recv),
        &byte_offs,
        me,
        |v| v,
        ALLGATHER,
    )
}

/// The partial result for one block as it travels round the ring.
struct Partial<T> {
    /// Ranks `0..=r` visited so far (only for non-commutative operations).
    low: Option<Vec<T>>,
    /// Ranks above the block's owner visited so far (or all of them, when the
    /// operation commutes).
    high: Option<Vec<T>>,
}

/// Ring reduce-scatter of `data` whose blocks are `offs[b]..offs[b + 1]` (elements):
/// returns block `rank` of the reduction.
pub(crate) fn ring_reduce_scatter<T: Pod>(
    comm: &Communicator,
    data: &[T],
    offs: &[usize],
    op: &dyn Operation<T>,
    tag: dsmpi_runtime::Tag,
) -> Result<Vec<T>> {
    let n = comm.size();
    let me = comm.rank();
    let block = |b: usize| &data[offs[b]..offs[b + 1]];
    if n == 1 {
        return Ok(block(0).to_vec());
    }
    let split = !op.is_commutative();
    let right = (me + 1) % n;
    let left = (me + n - 1) % n;
    // Which parts a message about block `b` from sender `s` carries.
    let parts = |s: usize, b: usize| -> (bool, bool) {
        if split {
            (s <= b, b < n - 1)
        } else {
            (false, true)
        }
    };
    // Adds this rank's operand to the partial result of block `b`.
    let add_mine = |mut p: Partial<T>, b: usize| -> Partial<T> {
        let mut x = block(b).to_vec();
        if split && me <= b {
            p.low = Some(match p.low {
                Some(l) => {
                    op.apply(&l, &mut x);
                    x
                }
                None => x,
            });
        } else {
            p.high = Some(match p.high {
                Some(h) => {
                    op.apply(&h, &mut x);
                    x
                }
                None => x,
            });
        }
        p
    };

    let mut hand = add_mine(
        Partial {
            low: None,
            high: None,
        },
        (me + n - 1) % n,
    );
    let mut out = Vec::new();
    let mut inbox = Vec::new();
    for k in 0..n - 1 {
        // Send the block in hand, (me − k − 1) mod p; receive block (me − k − 2).
        let rb = (me + 2 * n - k - 2) % n;
        out.clear();
        out.extend(hand.low.iter().flatten());
        out.extend(hand.high.iter().flatten());
        let (rl, rh) = parts(left, rb);
        let len = offs[rb + 1] - offs[rb];
        inbox.clear();
        inbox.resize(len * (usize::from(rl) + usize::from(rh)), T::zeroed());
        exchange(comm, "reduce_scatter", &out, right, &mut inbox, left, tag)?;
        let (l, h) = inbox.split_at(if rl { len } else { 0 });
        let got = Partial {
            low: rl.then(|| l.to_vec()),
            high: rh.then(|| h.to_vec()),
        };
        hand = add_mine(got, rb);
    }
    // The block in hand is now this rank's own.
    Ok(match (hand.low, hand.high) {
        (Some(l), Some(mut h)) => {
            op.apply(&l, &mut h);
            h
        }
        (Some(v), None) | (None, Some(v)) => v,
        (None, None) => Vec::new(),
    })
}
