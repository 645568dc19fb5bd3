//! Exercise 11.3: rank 0 draws N×1024 values in −100..100 (N = number of ranks),
//! scatters 1024 to each rank; each cubes its values and computes their mean; the
//! means are gathered and rank 0 averages them. Rank 0 compares with the sequential
//! computation and prints both times.
//! `dsmexec -n 4 target/debug/examples/ex11_3_scatter_gather`

use std::time::Instant;

use dsmpi::prelude::*;

const PER_RANK: usize = 1024;

fn draw(n: usize) -> Vec<f64> {
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % 201) as f64 - 100.0
        })
        .collect()
}

fn mean_of_cubes(v: &[f64]) -> f64 {
    v.iter().map(|x| x * x * x).sum::<f64>() / v.len() as f64
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let universe = dsmpi::init()?;
    let world = universe.world();
    let n = world.size();
    let all = if world.rank() == 0 {
        draw(n * PER_RANK)
    } else {
        Vec::new()
    };

    world.barrier()?;
    let t0 = Instant::now();
    let mut mine = vec![0f64; PER_RANK];
    world.scatter_into(0, &all, &mut mine)?;
    let local = [mean_of_cubes(&mine)];
    let mut means = vec![0f64; if world.rank() == 0 { n } else { 0 }];
    world.gather_into(0, &local, &mut means)?;
    let parallel = t0.elapsed();

    if world.rank() == 0 {
        let result = means.iter().sum::<f64>() / n as f64;
        let t1 = Instant::now();
        let sequential = mean_of_cubes(&all);
        let seq_time = t1.elapsed();
        println!("mean of means {result:.6} (parallel, {n} ranks): {parallel:?}");
        println!("mean          {sequential:.6} (sequential):        {seq_time:?}");
        if (result - sequential).abs() > 1e-9 * sequential.abs().max(1.0) {
            return Err(format!("parallel {result} differs from sequential {sequential}").into());
        }
    }
    Ok(())
}
