//! Exercise 12.1: a contiguous derived type (4 doubles) sent with count = 1 from rank 0
//! to rank 1 (to itself on one rank), received with the same type and checked.
//! `dsmexec -n 2 target/debug/examples/ex12_1_contiguous`

use dsmpi::prelude::*;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let universe = dsmpi::init()?;
    let world = universe.world();
    let quad = Datatype::contiguous(4, &Datatype::of::<f64>()).commit();
    let peer = 1 % world.size();
    let data = [1.5, 2.5, 3.5, 4.5];
    if world.rank() == 0 {
        world.send_typed(&data, &quad, 1, peer, 0)?;
    }
    if world.rank() == peer {
        let mut got = [0f64; 4];
        let st = world.recv_typed(&mut got, &quad, 1, 0, 0)?;
        if got != data {
            return Err(format!("received {got:?}, expected {data:?}").into());
        }
        println!(
            "rank {peer} received one contiguous element of {} bytes: {got:?}",
            st.bytes
        );
    }
    Ok(())
}
