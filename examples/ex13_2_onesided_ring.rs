//! Exercise 13.2: a token goes around a ring with one-sided communication.
//!
//! At step `k` the holder (`k mod n`) adds its rank to the token and Puts it into
//! its successor's window; a fence separates the steps (the explicit synchronization
//! one-sided communication needs). After `laps` laps rank 0 checks the sum.
//! `dsmexec -n 5 target/debug/examples/ex13_2_onesided_ring [LAPS]`

use dsmpi::prelude::*;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let universe = dsmpi::init()?;
    let world = universe.world();
    let laps: u64 = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(3);
    let (me, n) = (world.rank(), world.size());
    let next = (me + 1) % n;
    let win = Window::allocate(&world, std::mem::size_of::<u64>())?;
    win.fence()?;
    for step in 0..laps as usize * n {
        if step % n == me {
            let mut token = [0u64];
            win.get(&mut token, me, 0)?;
            token[0] += me as u64;
            win.put(&token, next, 0)?;
        }
        win.fence()?;
    }
    if me == 0 {
        let mut token = [0u64];
        win.get(&mut token, 0, 0)?;
        let expected = laps * (n as u64 * (n as u64 - 1) / 2);
        if token[0] != expected {
            return Err(
                format!("token {} after {laps} laps, expected {expected}", token[0]).into(),
            );
        }
        println!(
            "one-sided ring of {n} ranks ok: {laps} laps, token {}",
            token[0]
        );
    }
    win.free()?;
    Ok(())
}
