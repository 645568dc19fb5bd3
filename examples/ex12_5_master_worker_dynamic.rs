//! Exercise 12.5: dynamic (pull) master-worker. Workers ask the master for work by
//! sending their last result; the master answers with the next task, or a stop tag
//! when none is left, so fast workers take more tasks. Checked against a sequential
//! run. On one rank the master does the work itself.
//! `dsmexec -n 4 target/debug/examples/ex12_5_master_worker_dynamic`

use dsmpi::prelude::*;

const TASKS: usize = 57;
const TAG_WORK: Tag = 1;
const TAG_STOP: Tag = 2;
const TAG_RESULT: Tag = 3;
const NONE: u64 = u64::MAX;

fn work(x: u64) -> u64 {
    (0..(x % 5000)).fold(x, |acc, i| {
        acc.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(i)
    })
}

fn input(i: usize) -> u64 {
    (i as u64 * 7919) % 10_007
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let universe = dsmpi::init()?;
    let world = universe.world();
    let (me, n) = (world.rank(), world.size());
    if me != 0 {
        // [task index, result] of the last task, NONE at first.
        let mut report = [NONE, 0];
        loop {
            world.send(&report, 0, TAG_RESULT)?;
            let mut task = [0u64];
            let st = world.recv_into(&mut task, 0, ANY_TAG)?;
            if st.tag() == TAG_STOP {
                return Ok(());
            }
            report = [task[0], work(input(task[0] as usize))];
        }
    }
    let mut results = vec![None; TASKS];
    let mut per_worker = vec![0usize; n];
    if n == 1 {
        for (i, r) in results.iter_mut().enumerate() {
            *r = Some(work(input(i)));
        }
    } else {
        let (mut next, mut stopped) = (0usize, 0usize);
        while stopped < n - 1 {
            let mut report = [0u64; 2];
            let st = world.recv_into(&mut report, ANY_SOURCE, TAG_RESULT)?;
            if report[0] != NONE {
                results[report[0] as usize] = Some(report[1]);
                per_worker[st.source()] += 1;
            }
            if next < TASKS {
                world.send(&[next as u64], st.source(), TAG_WORK)?;
                next += 1;
            } else {
                world.send(&[0u64], st.source(), TAG_STOP)?;
                stopped += 1;
            }
        }
    }
    for (i, r) in results.iter().enumerate() {
        if *r != Some(work(input(i))) {
            return Err(format!("task {i}: result {r:?} is wrong or missing").into());
        }
    }
    println!(
        "{TASKS} tasks done; tasks per worker: {:?}",
        &per_worker[1..]
    );
    Ok(())
}
