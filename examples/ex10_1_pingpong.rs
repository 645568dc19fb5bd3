//! Exercise 10.1: ping-pong between ranks 0 and 1, with the round-trip time.
//!
//! Rank 0 sends a counter, rank 1 increments it and sends it back, for several
//! message sizes; the content is checked at every bounce. Other ranks idle.
//! `dsmexec -n 2 target/release/examples/ex10_1_pingpong [ITERATIONS]`

use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let universe = dsmpi::init()?;
    let world = universe.world();
    let iters: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(1000);
    if world.size() < 2 {
        println!("ping-pong needs 2 ranks (run it with dsmexec -n 2); nothing to do");
        return Ok(());
    }
    let me = world.rank();
    for &len in &[1usize, 128, 8192, 1 << 20] {
        let mut buf = vec![0u64; len];
        let start = Instant::now();
        for i in 0..iters as u64 {
            if me == 0 {
                buf[0] = i;
                buf[len - 1] = i;
                world.send(&buf, 1, 0)?;
                world.recv_into(&mut buf, 1, 0)?;
                if buf[0] != i + 1 || buf[len - 1] != i + 1 {
                    return Err(format!("bounce {i}: got {} back", buf[0]).into());
                }
            } else if me == 1 {
                world.recv_into(&mut buf, 0, 0)?;
                buf[0] += 1;
                buf[len - 1] = buf[0];
                world.send(&buf, 0, 0)?;
            }
        }
        if me == 0 {
            let rtt = start.elapsed().as_secs_f64() / iters as f64;
            println!(
                "{:>9} bytes: round trip {:>9.2} us, {:>8.1} MB/s",
                len * 8,
                rtt * 1e6,
                2.0 * (len * 8) as f64 / rtt / 1e6
            );
        }
    }
    Ok(())
}
