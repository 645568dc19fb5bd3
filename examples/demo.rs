//! The main job, one of each layer:
//! 1. every rank integrates its share of 4/(1+x²) over [0,1]; an allreduce (SUM)
//!    gives every rank π;
//! 2. a token goes twice around the ring over point-to-point;
//! 3. every rank takes 1000 tickets from a counter in rank 0's DSM window with
//!    fetch-and-add; the tickets must be unique and the counter exact.
//!
//! Every rank prints where it runs; rank 0 prints the results. Exits non-zero if any
//! result is wrong. `dsmexec -n 4 target/release/examples/demo [INTERVALS]`

use std::time::Instant;

use dsmpi::prelude::*;

const TICKETS: usize = 1000;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let t0 = Instant::now();
    let universe = dsmpi::init()?;
    let world = universe.world();
    let (me, n) = (world.rank(), world.size());
    let intervals: u64 = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(50_000_000);
    println!(
        "rank {me} of {n} on {} (pid {}, transport {})",
        world.processor_name(),
        std::process::id(),
        world.transport().name()
    );

    // 1. π by the midpoint rule, intervals dealt round-robin, summed by allreduce.
    let h = 1.0 / intervals as f64;
    let local: f64 = (me as u64..intervals)
        .step_by(n)
        .map(|i| {
            let x = h * (i as f64 + 0.5);
            4.0 / (1.0 + x * x)
        })
        .sum::<f64>()
        * h;
    let mut pi = [0f64];
    world.all_reduce_into(&[local], &mut pi, SystemOp::Sum)?;
    let err = (pi[0] - std::f64::consts::PI).abs();
    if err > 1e-6 {
        return Err(format!("rank {me}: pi = {} is off by {err}", pi[0]).into());
    }

    // 2. A token twice around the ring: each rank adds its rank.
    let mut token = [0u64];
    for _ in 0..2 {
        if me == 0 {
            world.send(&token, (me + 1) % n, 2)?;
            world.recv_into(&mut token, (me + n - 1) % n, 2)?;
        } else {
            world.recv_into(&mut token, me - 1, 2)?;
            token[0] += me as u64;
            world.send(&token, (me + 1) % n, 2)?;
        }
    }

    // 3. Tickets from a shared counter in rank 0's window.
    let win = Window::allocate(&world, if me == 0 { 8 } else { 0 })?;
    win.fence()?;
    let mut mine = Vec::with_capacity(TICKETS);
    for _ in 0..TICKETS {
        mine.push(win.fetch_and_op(1u64, 0, 0, Op::Sum)?);
    }
    win.fence()?;
    // Every ticket exactly once: rank 0 gathers them all and checks.
    let mut all = vec![0u64; TICKETS * n];
    world.gather_into(0, &mine, &mut all)?;
    let mut counter = [0u64];
    if me == 0 {
        win.get(&mut counter, 0, 0)?;
    }
    win.fence()?;
    drop(win);

    if me == 0 {
        let want = 2 * (n as u64) * (n as u64 - 1) / 2;
        all.sort_unstable();
        let unique = all.iter().enumerate().all(|(i, &t)| t == i as u64);
        println!(
            "pi = {:.12} (error {err:.2e}) from {intervals} intervals on {n} ranks",
            pi[0]
        );
        println!("ring token = {} (expected {want})", token[0]);
        println!(
            "window counter = {} after {} fetch-and-adds; tickets unique: {unique}",
            counter[0],
            TICKETS * n
        );
        println!("job took {:.3} s", t0.elapsed().as_secs_f64());
        if token[0] != want || counter[0] != (TICKETS * n) as u64 || !unique {
            return Err("a result is wrong".into());
        }
    }
    Ok(())
}
