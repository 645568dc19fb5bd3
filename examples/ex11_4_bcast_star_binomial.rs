//! Exercise 11.4: broadcast with only send and receive — first a star (the root sends
//! to everyone), then a binomial tree (in round k, every rank that has the data sends
//! it 2^k ranks further) — for every root, checked against the library's
//! `Bcast::Linear` and `Bcast::Binomial` (which are these algorithms, segmented).
//! `dsmexec -n 6 target/debug/examples/ex11_4_bcast_star_binomial`

use dsmpi::prelude::*;

const TAG: Tag = 11;

/// Star: the root sends to every other rank.
fn bcast_star(world: &Communicator, root: usize, buf: &mut [u64]) -> Result<(), dsmpi::Error> {
    if world.rank() == root {
        for r in (0..world.size()).filter(|&r| r != root) {
            world.send(buf, r, TAG)?;
        }
    } else {
        world.recv_into(buf, root, TAG)?;
    }
    Ok(())
}

/// Binomial tree, in ranks relative to the root.
fn bcast_binomial(world: &Communicator, root: usize, buf: &mut [u64]) -> Result<(), dsmpi::Error> {
    let n = world.size();
    let me = (world.rank() + n - root) % n;
    // Receive from the parent: the rank that differs in my lowest set bit.
    let mut mask = 1;
    while mask < n {
        if me & mask != 0 {
            world.recv_into(buf, (me - mask + root) % n, TAG)?;
            break;
        }
        mask <<= 1;
    }
    // Send to the children below that bit, farthest first.
    mask >>= 1;
    while mask > 0 {
        if me + mask < n {
            world.send(buf, (me + mask + root) % n, TAG)?;
        }
        mask >>= 1;
    }
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let universe = dsmpi::init()?;
    let world = universe.world();
    let data =
        |root: usize| -> Vec<u64> { (0..1000).map(|i| (root * 1_000_000 + i) as u64).collect() };
    for root in 0..world.size() {
        let start = |r: usize| {
            if world.rank() == r {
                data(r)
            } else {
                vec![0; 1000]
            }
        };
        let (mut star, mut tree, mut lib_star, mut lib_tree) =
            (start(root), start(root), start(root), start(root));
        bcast_star(&world, root, &mut star)?;
        bcast_binomial(&world, root, &mut tree)?;
        world.broadcast_with(Bcast::Linear, root, &mut lib_star)?;
        world.broadcast_with(Bcast::Binomial, root, &mut lib_tree)?;
        let want = data(root);
        for (name, got) in [
            ("star", &star),
            ("binomial", &tree),
            ("library linear", &lib_star),
            ("library binomial", &lib_tree),
        ] {
            if *got != want {
                return Err(format!(
                    "rank {}: {name} broadcast from {root} gave wrong data",
                    world.rank()
                )
                .into());
            }
        }
    }
    if world.rank() == 0 {
        println!(
            "star and binomial broadcasts agree with the library for every root on {} ranks",
            world.size()
        );
    }
    Ok(())
}
