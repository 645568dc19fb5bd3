//! Exercise 11.6: all-to-all with non-blocking sends and receives — every receive
//! posted, then every send, then wait for all — checked against the library's three
//! algorithms. `dsmexec -n 5 target/debug/examples/ex11_6_alltoall`

use dsmpi::prelude::*;

const TAG: Tag = 13;
const M: usize = 3;

fn by_hand(world: &Communicator, send: &[u64], recv: &mut [u64]) -> Result<(), dsmpi::Error> {
    let me = world.rank();
    scope(|s| {
        let mut reqs = Vec::new();
        for (r, block) in recv.chunks_mut(M).enumerate() {
            if r == me {
                block.copy_from_slice(&send[me * M..(me + 1) * M]);
            } else {
                reqs.push(world.irecv_into(s, block, r, TAG)?);
            }
        }
        for (r, block) in send.chunks(M).enumerate().filter(|(r, _)| *r != me) {
            reqs.push(world.isend(s, block, r, TAG)?);
        }
        wait_all(reqs).map(|_| ())
    })
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let universe = dsmpi::init()?;
    let world = universe.world();
    let (me, n) = (world.rank(), world.size());
    // Block j of rank i holds the values 1000·i + 10·j + k.
    let send: Vec<u64> = (0..n * M)
        .map(|x| (1000 * me + 10 * (x / M) + x % M) as u64)
        .collect();
    let want: Vec<u64> = (0..n * M)
        .map(|x| (1000 * (x / M) + 10 * me + x % M) as u64)
        .collect();
    let mut got = vec![0u64; n * M];
    by_hand(&world, &send, &mut got)?;
    if got != want {
        return Err(format!("rank {me}: hand-written all-to-all gave {got:?}").into());
    }
    for alg in [Alltoall::Linear, Alltoall::Pairwise, Alltoall::Bruck] {
        got.fill(0);
        world.all_to_all_with(alg, &send, &mut got)?;
        if got != want {
            return Err(format!("rank {me}: library {alg:?} all-to-all gave {got:?}").into());
        }
    }
    println!(
        "rank {me}: received {:?}",
        got.chunks(M).map(|b| b[0]).collect::<Vec<_>>()
    );
    Ok(())
}
