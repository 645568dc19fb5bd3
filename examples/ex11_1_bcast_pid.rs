//! Exercise 11.1: rank 0 broadcasts its process id; every rank prints what it got.
//!
//! Each rank then sends the value back to rank 0 (a gather), which checks that
//! everyone received its pid. `dsmexec -n 4 target/debug/examples/ex11_1_bcast_pid`

use dsmpi::prelude::*;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let universe = dsmpi::init()?;
    let world = universe.world();
    let mut pid = [if world.rank() == 0 {
        std::process::id()
    } else {
        0
    }];
    world.broadcast_into(0, &mut pid)?;
    println!(
        "rank {} of {}: rank 0's pid is {}",
        world.rank(),
        world.size(),
        pid[0]
    );

    let mut all = vec![0u32; if world.rank() == 0 { world.size() } else { 0 }];
    world.gather_into(0, &pid, &mut all)?;
    if world.rank() == 0 {
        let me = std::process::id();
        if let Some(r) = all.iter().position(|&p| p != me) {
            return Err(format!("rank {r} received pid {} instead of {me}", all[r]).into());
        }
        println!("all {} ranks received pid {me}", world.size());
    }
    Ok(())
}
