//! Exercise 13.1: rank 0 stores its pid in its window; rank 1 Gets it and Puts it
//! into rank 2's window; rank 0 then checks what rank 2 holds.
//!
//! `dsmexec -n 3 target/debug/examples/ex13_1_get_put_pid` (fewer ranks: the roles
//! fold onto the ranks there are).

use dsmpi::prelude::*;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let universe = dsmpi::init()?;
    let world = universe.world();
    let (me, n) = (world.rank(), world.size());
    let (first, middle, last) = (0, 1 % n, 2 % n);
    let win = Window::allocate(&world, std::mem::size_of::<u32>())?;
    let pid = std::process::id();

    // Epoch 1: rank 0 exposes its pid (a put to itself).
    if me == first {
        win.put(&[pid], first, 0)?;
    }
    win.fence()?;
    // Epoch 2: the middle rank moves it on.
    if me == middle {
        let mut got = [0u32];
        win.get(&mut got, first, 0)?;
        println!("rank {me}: got pid {} from rank {first}", got[0]);
        win.put(&got, last, 0)?;
    }
    win.fence()?;
    // Epoch 3: rank 0 checks rank 2's copy.
    if me == first {
        let mut got = [0u32];
        win.get(&mut got, last, 0)?;
        if got[0] != pid {
            return Err(format!("rank {last} holds {} instead of pid {pid}", got[0]).into());
        }
        println!("rank {last} holds rank {first}'s pid {pid}: ok");
    }
    win.free()?;
    Ok(())
}
