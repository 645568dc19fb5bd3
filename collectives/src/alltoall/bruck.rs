//! Bruck's all-to-all: after rotating the blocks so that block j is the one for rank
//! r + j, step k sends every block whose index has bit k set to rank r + 2^k (packed
//! into one message) and receives the same positions from r − 2^k. After ⌈log2 p⌉
//! steps position j holds the block from rank r − j; a final rotation puts them in
//! rank order. Few messages, about (p/2)·log p blocks moved: the small-block choice.

use dsmpi_runtime::Communicator;

use crate::error::Result;
use crate::tags::ALLTOALL;
use crate::util::exchange;

/// Bruck all-to-all with blocks of `m` bytes.
pub(crate) fn alltoall(comm: &Communicator, send: &[u8], recv: &mut [u8], m: usize) -> Result<()> {
    let n = comm.size();
    let me = comm.rank();
    let mut tmp = vec![0u8; n * m];
    for j in 0..n {
        let r = (me + j) % n;
        tmp[j * m..(j + 1) * m].copy_from_slice(&send[r * m..(r + 1) * m]);
    }
    let mut pack = Vec::with_capacity(n / 2 * m + m);
    let mut unpack = Vec::with_capacity(n / 2 * m + m);
    let mut pof = 1;
    while pof < n {
        let picked: Vec<usize> = (0..n).filter(|j| j & pof != 0).collect();
        pack.clear();
        for &j in &picked {
            pack.extend_from_slice(&tmp[j * m..(j + 1) * m]);
        }
        unpack.clear();
        unpack.resize(pack.len(), 0);
        exchange(
            comm,
            "alltoall",
            &pack,
            (me + pof) % n,
            &mut unpack,
            (me + n - pof) % n,
            ALLTOALL,
        )?;
        for (i, &j) in picked.iter().enumerate() {
            tmp[j * m..(j + 1) * m].copy_from_slice(&unpack[i * m..(i + 1) * m]);
        }
        pof <<= 1;
    }
    for j in 0..n {
        let r = (me + n - j) % n;
        recv[r * m..(r + 1) * m].copy_from_slice(&tmp[j * m..(j + 1) * m]);
    }
    Ok(())
}
