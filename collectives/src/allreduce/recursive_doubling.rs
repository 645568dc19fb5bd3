//! Recursive-doubling allreduce: in step k, rank r exchanges its partial result with
//! the rank whose (folded) number differs in bit k, and both combine. log2 p steps of
//! the whole vector: the latency-optimal choice for short vectors.
//!
//! For p not a power of two, the first 2·rem ranks (rem = p − 2^⌊log2 p⌋) fold in
//! pairs first: each even rank hands its vector to the odd rank above it and gets the
//! result back at the end. Each surviving rank then stands for a contiguous range of
//! ranks, so by putting the lower partner's operand first the combination stays in
//! rank order for non-commutative operations.

use bytemuck::Pod;
use dsmpi_runtime::Communicator;

use crate::error::Result;
use crate::op::{combine_low_into_acc, Operation};
use crate::tags::ALLREDUCE;
use crate::util::{exchange, recv_exact};

/// Recursive-doubling allreduce of `send` into `recv`.
pub(crate) fn allreduce<T: Pod>(
    comm: &Communicator,
    send: &[T],
    recv: &mut [T],
    op: &dyn Operation<T>,
) -> Result<()> {
    let n = comm.size();
    let me = comm.rank();
    let mut acc = send.to_vec();
    let mut tmp = vec![T::zeroed(); send.len()];
    let pof2 = 1usize << (usize::BITS - 1 - n.leading_zeros());
    let rem = n - pof2;

    // Fold: ranks below 2·rem pair up; the even one drops out of the doubling.
    let newrank = if me < 2 * rem {
        if me & 1 == 0 {
            comm.send(&acc, me + 1, ALLREDUCE)?;
            None
        } else {
            recv_exact(comm, "allreduce", &mut tmp, me - 1, ALLREDUCE)?;
            // tmp holds the lower rank: acc = tmp ∘ acc.
            op.apply(&tmp, &mut acc);
            Some(me / 2)
        }
    } else {
        Some(me - rem)
    };

    if let Some(nr) = newrank {
        let mut mask = 1;
        while mask < pof2 {
            let newdst = nr ^ mask;
            let dst = if newdst < rem {
                newdst * 2 + 1
            } else {
                newdst + rem
            };
            exchange(comm, "allreduce", &acc, dst, &mut tmp, dst, ALLREDUCE)?;
            if dst < me {
                op.apply(&tmp, &mut acc);
            } else {
                combine_low_into_acc(op, &mut acc, &mut tmp);
            }
            mask <<= 1;
        }
    }

    // Unfold: the odd rank returns the result to its even partner.
    if me < 2 * rem {
        if me & 1 == 0 {
            recv_exact(comm, "allreduce", &mut acc, me + 1, ALLREDUCE)?;
        } else {
            comm.send(&acc, me - 1, ALLREDUCE)?;
        }
    }
    recv.copy_from_slice(&acc);
    Ok(())
}
