//! Recursive-doubling scan: in step k rank r exchanges the partial reduction of its
//! group of 2^k ranks with rank r XOR 2^k; a rank above its partner adds the partner's
//! partial to its result (on the left, as the partner's ranks are lower). log2 p
//! steps for any p (partners beyond p are skipped).

use bytemuck::Pod;
use dsmpi_runtime::Communicator;

use crate::error::Result;
use crate::op::{combine_low_into_acc, Operation};
use crate::tags::{EXSCAN, SCAN};
use crate::util::exchange;

/// Recursive-doubling scan of `send` into `recv`.
pub(crate) fn scan<T: Pod>(
    comm: &Communicator,
    send: &[T],
    recv: &mut [T],
    op: &dyn Operation<T>,
    exclusive: bool,
) -> Result<()> {
    let n = comm.size();
    let me = comm.rank();
    let tag = if exclusive { EXSCAN } else { SCAN };
    // Reduction over this rank's current group (all of it, to give to partners).
    let mut partial = send.to_vec();
    // Reduction over the ranks of the group up to this one (inclusive or not).
    let mut result: Option<Vec<T>> = (!exclusive).then(|| send.to_vec());
    let mut tmp = vec![T::zeroed(); send.len()];
    let mut mask = 1;
    while mask < n {
        let dst = me ^ mask;
        if dst < n {
            exchange(comm, "scan", &partial, dst, &mut tmp, dst, tag)?;
            if dst < me {
                op.apply(&tmp, &mut partial);
                result = Some(match result {
                    Some(mut r) => {
                        op.apply(&tmp, &mut r);
                        r
                    }
                    None => tmp.clone(),
                });
            } else {
                combine_low_into_acc(op, &mut partial, &mut tmp);
            }
        }
        mask <<= 1;
    }
    if let Some(r) = result {
        recv.copy_from_slice(&r);
    }
    Ok(())
}
