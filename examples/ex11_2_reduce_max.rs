//! Exercise 11.2: each rank fills 1014 pseudo-random values in 0..100 (a xorshift
//! seeded by its rank), and the maximum is reduced to rank 0 — element-wise with
//! `SystemOp::Max`, then over the vector. Rank 0 regenerates every rank's values to
//! check the result. `dsmexec -n 4 target/debug/examples/ex11_2_reduce_max`

use dsmpi::prelude::*;

const N: usize = 1014;

/// The rank's values: xorshift64 seeded by the rank.
fn values(rank: usize) -> Vec<u32> {
    let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ (rank as u64 + 1).wrapping_mul(0xD1B5_4A32_D192_ED03);
    (0..N)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % 100) as u32
        })
        .collect()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let universe = dsmpi::init()?;
    let world = universe.world();
    let mine = values(world.rank());
    let local_max = mine.iter().copied().max().unwrap_or(0);
    println!("rank {}: local max {local_max}", world.rank());

    let mut maxes = vec![0u32; if world.rank() == 0 { N } else { 0 }];
    world.reduce_into(0, &mine, &mut maxes, SystemOp::Max)?;
    if world.rank() == 0 {
        let global = maxes.iter().copied().max().unwrap_or(0);
        let expected: Vec<u32> = (0..N)
            .map(|i| (0..world.size()).map(|r| values(r)[i]).max().unwrap_or(0))
            .collect();
        if maxes != expected {
            return Err("the reduced maxima differ from the sequential ones".into());
        }
        println!(
            "global max over {} ranks × {N} values: {global}",
            world.size()
        );
    }
    Ok(())
}
