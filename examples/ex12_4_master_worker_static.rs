//! Exercise 12.4: static master-worker with collectives. The master (rank 0) splits
//! the tasks into nearly equal shares, scatters them (scatterv), every rank — the
//! master included — computes its share, and the results are gathered (gatherv) and
//! checked against a sequential run. `dsmexec -n 4 target/debug/examples/ex12_4_master_worker_static`

use dsmpi::prelude::*;

const TASKS: usize = 103;

/// A task: the number of Collatz steps of its input.
fn work(x: u64) -> u64 {
    let (mut x, mut steps) = (x.max(1), 0);
    while x != 1 {
        x = if x % 2 == 0 { x / 2 } else { 3 * x + 1 };
        steps += 1;
    }
    steps
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let universe = dsmpi::init()?;
    let world = universe.world();
    let (me, n) = (world.rank(), world.size());
    let counts: Vec<usize> = (0..n)
        .map(|r| TASKS / n + usize::from(r < TASKS % n))
        .collect();
    let displs: Vec<usize> = counts
        .iter()
        .scan(0, |a, c| {
            let d = *a;
            *a += c;
            Some(d)
        })
        .collect();
    let tasks: Vec<u64> = if me == 0 {
        (0..TASKS as u64).map(|i| 1_000_003 + 7 * i).collect()
    } else {
        Vec::new()
    };

    let mut share = vec![0u64; counts[me]];
    world.scatterv_into(0, &tasks, &counts, &displs, &mut share)?;
    let results: Vec<u64> = share.iter().map(|&x| work(x)).collect();
    let mut all = vec![0u64; if me == 0 { TASKS } else { 0 }];
    world.gatherv_into(0, &results, &mut all, &counts, &displs)?;

    if me == 0 {
        let seq: Vec<u64> = tasks.iter().map(|&x| work(x)).collect();
        if all != seq {
            return Err("gathered results differ from the sequential ones".into());
        }
        println!(
            "{TASKS} tasks over {n} ranks (shares {counts:?}); total steps {}",
            all.iter().sum::<u64>()
        );
    }
    Ok(())
}
