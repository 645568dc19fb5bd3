//! The main job: every rank integrates its share of 4/(1+x²) over [0,1] (π), the
//! partial sums travel to rank 0 over point-to-point, then a token goes twice around
//! the ring. Rank 0 prints π, its error, and the ring result; every rank prints
//! where it runs. Exits non-zero if any result is wrong.
//!
//! `dsmexec -n 4 target/release/examples/demo [INTERVALS]`

use std::time::Instant;

use dsmpi::prelude::*;

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
        "rank {me} of {n} on {} (pid {})",
        world.processor_name(),
        std::process::id()
    );

    // π by the midpoint rule, the intervals dealt round-robin.
    let h = 1.0 / intervals as f64;
    let local: f64 = (me as u64..intervals)
        .step_by(n)
        .map(|i| {
            let x = h * (i as f64 + 0.5);
            4.0 / (1.0 + x * x)
        })
        .sum::<f64>()
        * h;
    if me == 0 {
        let mut pi = local;
        for _ in 1..n {
            let mut part = [0f64];
            world.recv_into(&mut part, ANY_SOURCE, 1)?;
            pi += part[0];
        }
        let err = (pi - std::f64::consts::PI).abs();
        println!("pi = {pi:.12} (error {err:.2e}) from {intervals} intervals on {n} ranks");
        if err > 1e-6 {
            return Err(format!("pi is off by {err}").into());
        }
    } else {
        world.send(&[local], 0, 1)?;
    }

    // A token twice around the ring: each rank adds its rank.
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
    if me == 0 {
        let want = 2 * (n as u64) * (n as u64 - 1) / 2;
        println!(
            "ring token = {} (expected {want}); job took {:.3} s",
            token[0],
            t0.elapsed().as_secs_f64()
        );
        if token[0] != want {
            return Err("ring token is wrong".into());
        }
    }
    Ok(())
}
