//! Exercise 10.2: ping-pong with non-blocking isend/irecv + wait, then a
//! simultaneous exchange where both ranks send before they receive.
//!
//! Both phases check the data. `dsmexec -n 2 target/debug/examples/ex10_2_nonblocking`

use dsmpi::prelude::*;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let universe = dsmpi::init()?;
    let world = universe.world();
    if world.size() < 2 {
        println!("this exercise needs 2 ranks (run it with dsmexec -n 2); nothing to do");
        return Ok(());
    }
    let me = world.rank();
    if me > 1 {
        return Ok(());
    }
    let peer = 1 - me;

    // Phase 1: ping-pong, each step an isend or irecv completed by wait.
    let mut ball = [0u32; 256];
    for round in 0..100u32 {
        let mine = (round % 2) as usize == me;
        scope(|s| -> Result<(), Error> {
            if mine {
                ball.iter_mut().for_each(|x| *x = round);
                world.isend(s, &ball, peer, 1)?.wait()?;
            } else {
                world.irecv_into(s, &mut ball, peer, 1)?.wait()?;
            }
            Ok(())
        })?;
        if !mine && ball.iter().any(|&x| x != round) {
            return Err(format!("round {round}: wrong ball").into());
        }
    }
    println!("rank {me}: non-blocking ping-pong ok (100 rounds)");

    // Phase 2: both ranks post their receive and their send at once. With large
    // messages, two blocking sends would wait for each other forever; non-blocking
    // operations make the exchange safe.
    let n = 1 << 20;
    let out: Vec<u64> = (0..n).map(|i| (me as u64) << 32 | i as u64).collect();
    let mut inb = vec![0u64; n];
    scope(|s| -> Result<(), Error> {
        let r = world.irecv_into(s, &mut inb, peer, 2)?;
        let w = world.isend(s, &out, peer, 2)?;
        wait_all(vec![w, r])?;
        Ok(())
    })?;
    if inb
        .iter()
        .enumerate()
        .any(|(i, &x)| x != (peer as u64) << 32 | i as u64)
    {
        return Err("simultaneous exchange: wrong data".into());
    }
    println!("rank {me}: simultaneous exchange of {} bytes ok", n * 8);
    Ok(())
}
