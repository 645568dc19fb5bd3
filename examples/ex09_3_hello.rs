//! Exercise 9.3: every rank says "I am process R of N on HOST".
//!
//! Run: `dsmexec -n 8 target/debug/examples/ex09_3_hello`. Rank 0 also gathers every
//! rank's greeting over point-to-point and checks that each rank answered once.

use dsmpi::prelude::*;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let universe = dsmpi::init()?;
    let world = universe.world();
    let (me, n) = (world.rank(), world.size());
    println!("I am process {me} of {n} on {}", world.processor_name());
    if me == 0 {
        let mut seen = vec![false; n];
        seen[0] = true;
        for _ in 1..n {
            let mut r = [0u64];
            let st = world.recv_into(&mut r, ANY_SOURCE, 0)?;
            if r[0] as usize != st.source() || seen[st.source()] {
                return Err(format!("bad greeting {} from rank {}", r[0], st.source()).into());
            }
            seen[st.source()] = true;
        }
        println!("rank 0 heard from all {n} ranks");
    } else {
        world.send(&[me as u64], 0, 0)?;
    }
    Ok(())
}
