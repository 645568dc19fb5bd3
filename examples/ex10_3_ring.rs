//! Exercise 10.3: a token goes around a ring of any number of ranks.
//!
//! Rank 0 starts the token at 0; every rank adds its rank number and passes it on.
//! After `laps` laps rank 0 checks the sum and prints the mean time of one hop. `dsmexec -n 5 target/debug/examples/ex10_3_ring [LAPS]`

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
    let prev = (me + n - 1) % n;
    let mut token = [0u64];
    let start = std::time::Instant::now();
    for lap in 0..laps {
        if me == 0 {
            world.send(&token, next, 0)?;
            world.recv_into(&mut token, prev, 0)?;
            // The first laps are shown; a long run (a benchmark) prints only its total.
            if lap < 10 {
                println!("lap {lap}: token is {}", token[0]);
            }
        } else {
            world.recv_into(&mut token, prev, 0)?;
            token[0] += me as u64;
            world.send(&token, next, 0)?;
        }
    }
    if me == 0 {
        let expected = laps * (n as u64 * (n as u64 - 1) / 2);
        if token[0] != expected {
            return Err(
                format!("token {} after {laps} laps, expected {expected}", token[0]).into(),
            );
        }
        let hops = (laps * n as u64).max(1);
        println!(
            "ring of {n} ranks ok: {laps} laps, token {} ({:.2} us per hop)",
            token[0],
            start.elapsed().as_secs_f64() * 1e6 / hops as f64
        );
    }
    Ok(())
}
