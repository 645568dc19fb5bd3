//! Document 001's test: several ranks advance a Fibonacci sequence held in shared
//! memory, each step under a byte-range write lock, with a step counter; the result
//! must be exact (it shows coherence and the absence of deadlock).
//!
//! The state `(a, b, step)` lives in rank 0's region and is reached through plain
//! loads and stores of the window's view; `lock_write` makes the pages coherent.
//! `dsmexec -n 4 target/debug/examples/dsm_fibonacci [STEPS]`

use dsmpi::prelude::*;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let universe = dsmpi::init()?;
    let world = universe.world();
    let steps: u64 = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(90);
    let (me, n) = (world.rank(), world.size());
    let win = Window::allocate(&world, if me == 0 { 24 } else { 0 })?;
    let v = win.view::<u64>()?;
    let (a_i, b_i, step_i) = (v.index_of(0, 0)?, v.index_of(0, 1)?, v.index_of(0, 2)?);
    let off = win.segment_offset(0, 0)?;
    if me == 0 {
        v.store(b_i, 1)?;
    }
    win.fence()?;
    let mut mine = 0u64;
    loop {
        let g = win.lock_write(off, 24)?;
        let step = v.load(step_i)?;
        if step >= steps {
            g.release()?;
            break;
        }
        let (a, b) = (v.load(a_i)?, v.load(b_i)?);
        v.store(a_i, b)?;
        v.store(b_i, a.wrapping_add(b))?;
        v.store(step_i, step + 1)?;
        g.release()?;
        mine += 1;
        // Give the others a chance at the lock (matters only with thread ranks).
        std::thread::yield_now();
    }
    // Everyone reports how many steps it made; the sum must be `steps`.
    let counts = Window::allocate(&world, if me == 0 { 8 } else { 0 })?;
    counts.accumulate(&[mine], 0, 0, Op::Sum)?;
    counts.fence()?;
    win.fence()?;
    if me == 0 {
        let (mut a, mut b) = (0u64, 1u64);
        for _ in 0..steps {
            (a, b) = (b, a.wrapping_add(b));
        }
        let (got_a, got_step) = (v.load(a_i)?, v.load(step_i)?);
        let mut total = [0u64];
        counts.get(&mut total, 0, 0)?;
        if got_a != a || got_step != steps || total[0] != steps {
            return Err(format!(
                "fib({steps}) = {got_a} (expected {a}), step {got_step}, steps made {}",
                total[0]
            )
            .into());
        }
        println!("{n} ranks computed fib({steps}) = {a} under lock_write: ok");
    }
    println!("rank {me} made {mine} steps");
    counts.free()?;
    win.free()?;
    Ok(())
}
