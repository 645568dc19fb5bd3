//! Exercise 13.3: reproducible random numbers. Rank 0 exposes a seed in its window;
//! every rank reads it, draws its numbers from `seed + rank`, and Puts a checksum
//! into rank 0's window, which redraws every rank's numbers and compares.
//!
//! `dsmexec -n 4 target/debug/examples/ex13_3_reproducible_random [SEED]`

use dsmpi::prelude::*;

const DRAWS: usize = 1000;

/// xorshift64*: small, deterministic, good enough for the exercise.
fn draws(seed: u64) -> impl Iterator<Item = u64> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    std::iter::repeat_with(move || {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D) % 100
    })
}

fn checksum(seed: u64) -> u64 {
    draws(seed)
        .take(DRAWS)
        .fold(0u64, |h, v| h.wrapping_mul(31).wrapping_add(v))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let universe = dsmpi::init()?;
    let world = universe.world();
    let seed: u64 = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(2026);
    let (me, n) = (world.rank(), world.size());
    // Rank 0's region: the seed, then one checksum per rank.
    let bytes = if me == 0 { (1 + n) * 8 } else { 0 };
    let win = Window::allocate(&world, bytes)?;
    if me == 0 {
        win.put(&[seed], 0, 0)?;
    }
    win.fence()?;
    let mut s = [0u64];
    win.get(&mut s, 0, 0)?;
    let mine = checksum(s[0] + me as u64);
    let first: Vec<u64> = draws(s[0] + me as u64).take(5).collect();
    println!("rank {me}: seed {} → first draws {first:?}", s[0]);
    win.put(&[mine], 0, 1 + me)?;
    win.fence()?;
    if me == 0 {
        let mut sums = vec![0u64; n];
        win.get(&mut sums, 0, 1)?;
        for (r, got) in sums.iter().enumerate() {
            let want = checksum(seed + r as u64);
            if *got != want {
                return Err(format!("rank {r}: checksum {got:#x}, expected {want:#x}").into());
            }
        }
        println!("{n} ranks drew reproducible sequences from seed {seed}: ok");
    }
    win.free()?;
    Ok(())
}
