//! Exercise 13.4: irregular maximum. Each rank fills an array of random size
//! (100..100000) with random values, Accumulates (MAX) its local maximum into rank 0
//! and increments a counter there with Accumulate (SUM); rank 0 polls the counter
//! (an atomic read: get_accumulate with NO_OP) until everyone is in, then checks the
//! maximum against its own recomputation of every rank's array.
//!
//! `dsmexec -n 6 target/debug/examples/ex13_4_irregular_max [SEED]`

use dsmpi::prelude::*;

fn rng(seed: u64) -> impl FnMut() -> u64 {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    move || {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

/// Rank `r`'s array: its size and values depend on the seed and the rank only.
fn array_of(seed: u64, r: usize) -> Vec<i64> {
    let mut next = rng(seed ^ (r as u64 + 1) << 32);
    let len = 100 + (next() % 99_901) as usize;
    (0..len)
        .map(|_| (next() % 2_000_001) as i64 - 1_000_000)
        .collect()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let universe = dsmpi::init()?;
    let world = universe.world();
    let seed: u64 = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(7);
    let (me, n) = (world.rank(), world.size());
    // Rank 0's region: [max, counter].
    let win = Window::allocate(&world, if me == 0 { 16 } else { 0 })?;
    if me == 0 {
        win.put(&[i64::MIN, 0], 0, 0)?;
        win.flush(0)?;
    }
    win.fence()?;
    let a = array_of(seed, me);
    let local = a.iter().copied().max().unwrap_or(i64::MIN);
    println!("rank {me}: {} values, local max {local}", a.len());
    win.lock(LockType::Shared, 0)?;
    win.accumulate(&[local], 0, 0, Op::Max)?;
    win.accumulate(&[1i64], 0, 1, Op::Sum)?;
    win.unlock(0)?;
    if me == 0 {
        // Passive wait: nobody else synchronizes with rank 0 before it has seen all.
        let mut polls = 0u64;
        while win.fetch_and_op(0i64, 0, 1, Op::NoOp)? < n as i64 {
            polls += 1;
            std::thread::yield_now();
        }
        let max = win.fetch_and_op(0i64, 0, 0, Op::NoOp)?;
        let want = (0..n)
            .map(|r| array_of(seed, r).into_iter().max().unwrap_or(i64::MIN))
            .max()
            .unwrap_or(i64::MIN);
        if max != want {
            return Err(format!("global max {max}, expected {want}").into());
        }
        println!("global max of {n} irregular arrays: {max} ({polls} polls): ok");
    }
    win.free()?;
    Ok(())
}
