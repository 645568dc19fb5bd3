//! Test support: every rank prints `ENDPOINT <rank> <pid> <ip:port>`; rank 0 prints
//! `READY` once it heard from all, then waits for a line on stdin before the ranks
//! run a checked ring of 50 laps and rank 0 prints `DONE`. The gate lets a test
//! poke the ranks' listeners while the job is known to be running.

use std::io::BufRead;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let universe = dsmpi::init()?;
    let world = universe.world();
    let (me, n) = (world.rank(), world.size());
    let ep = universe
        .endpoint()
        .map(|a| a.to_string())
        .unwrap_or_else(|| "none".into());
    println!("ENDPOINT {me} {} {ep}", std::process::id());
    if me == 0 {
        for r in 1..n {
            world.recv_into(&mut [0u8], r, 1)?;
        }
        println!("READY");
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line)?;
        for r in 1..n {
            world.send(&[1u8], r, 2)?;
        }
    } else {
        world.send(&[0u8], 0, 1)?;
        world.recv_into(&mut [0u8], 0, 2)?;
    }
    let mut tok = [0u64];
    for _ in 0..50 {
        if me == 0 {
            world.send(&tok, (me + 1) % n, 3)?;
            world.recv_into(&mut tok, (me + n - 1) % n, 3)?;
        } else {
            world.recv_into(&mut tok, me - 1, 3)?;
            tok[0] += 1;
            world.send(&tok, (me + 1) % n, 3)?;
        }
    }
    if me == 0 {
        if tok[0] != 50 * (n as u64 - 1) {
            return Err(format!("ring token {} is wrong", tok[0]).into());
        }
        println!("DONE");
    }
    Ok(())
}
