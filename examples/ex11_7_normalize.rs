//! Exercise 11.7: normalize a distributed matrix by its global maximum. Each rank owns
//! some rows; an allreduce with `SystemOp::Max` gives everyone the maximum, and each
//! divides its rows by it. Checked by a second allreduce (the new maximum is 1) and
//! against the sequential result at rank 0 (a gather).
//! `dsmexec -n 4 target/debug/examples/ex11_7_normalize`

use dsmpi::prelude::*;

const ROWS: usize = 3;
const COLS: usize = 8;

fn value(rank: usize, i: usize) -> f64 {
    ((rank * 7919 + i * 104_729) % 1000) as f64 + 0.5
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let universe = dsmpi::init()?;
    let world = universe.world();
    let (me, n) = (world.rank(), world.size());
    let mut rows: Vec<f64> = (0..ROWS * COLS).map(|i| value(me, i)).collect();
    let local_max = rows.iter().copied().fold(f64::MIN, f64::max);
    let mut global = [0f64];
    world.all_reduce_into(&[local_max], &mut global, SystemOp::Max)?;
    for x in &mut rows {
        *x /= global[0];
    }
    let mut check = [0f64];
    world.all_reduce_into(
        &[rows.iter().copied().fold(f64::MIN, f64::max)],
        &mut check,
        SystemOp::Max,
    )?;
    if check[0] != 1.0 {
        return Err(format!("rank {me}: maximum after normalizing is {}", check[0]).into());
    }
    let mut all = vec![0f64; if me == 0 { n * ROWS * COLS } else { 0 }];
    world.gather_into(0, &rows, &mut all)?;
    if me == 0 {
        let seq: Vec<f64> = (0..n)
            .flat_map(|r| (0..ROWS * COLS).map(move |i| value(r, i)))
            .collect();
        let max = seq.iter().copied().fold(f64::MIN, f64::max);
        if seq.iter().zip(&all).any(|(s, a)| s / max != *a) {
            return Err("the normalized matrix differs from the sequential one".into());
        }
        println!("{}×{COLS} matrix normalized by its maximum {max}", n * ROWS);
    }
    Ok(())
}
