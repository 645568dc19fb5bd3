//! Exercise 12.3: distributed matrix transpose with derived types, where the send and
//! receive types differ.
//!
//! Part 1 (N×N, N a multiple of the rank count): each rank owns N/p rows; an
//! all-to-all sends each rank a block *column* with a vector type and receives it
//! contiguous, then a local transpose of each block finishes the job.
//!
//! Part 2 (any R×C): rank p owns a block of rows of A; it sends rank q the sub-block of
//! its rows × q's columns with a subarray type, and q receives it with a
//! "transposing" hvector-of-vectors type straight into its rows of Aᵀ — no local
//! transpose. `dsmexec -n 3 target/debug/examples/ex12_3_transpose [R C]`

use dsmpi::prelude::*;

fn block_range(len: usize, n: usize, i: usize) -> std::ops::Range<usize> {
    let (q, r) = (len / n, len % n);
    let start = i * q + i.min(r);
    start..start + q + usize::from(i < r)
}

fn a(i: usize, j: usize) -> f64 {
    (i * 1000 + j) as f64
}

/// Part 1: square, divisible, via the typed all-to-all.
fn square(world: &Communicator) -> Result<(), Box<dyn std::error::Error>> {
    let (me, p) = (world.rank(), world.size());
    let b = 2;
    let n = b * p;
    let rows: Vec<f64> = (0..b * n).map(|x| a(me * b + x / n, x % n)).collect();
    // One block column of my rows: b rows of b doubles, stride n; blocks b apart.
    let col = Datatype::vector(b, b, n as isize, &Datatype::of::<f64>())?;
    let col = Datatype::resized(&col, 0, (b * 8) as isize)?.commit();
    let flat = Datatype::contiguous(b * b, &Datatype::of::<f64>()).commit();
    let mut got = vec![0f64; b * n];
    world.all_to_all_typed(&rows, &col, 1, &mut got, &flat, 1)?;
    // Block q holds A[q rows][my columns]; transposing it gives my rows of Aᵀ.
    let mut t = vec![0f64; b * n];
    for q in 0..p {
        for i in 0..b {
            for j in 0..b {
                t[j * n + q * b + i] = got[q * b * b + i * b + j];
            }
        }
    }
    for (x, v) in t.iter().enumerate() {
        let (i, j) = (me * b + x / n, x % n);
        if *v != a(j, i) {
            return Err(format!("square transpose: rank {me} has {v} at ({i},{j})").into());
        }
    }
    Ok(())
}

/// Part 2: any size, typed point-to-point with differing types.
fn any_size(world: &Communicator, r: usize, c: usize) -> Result<(), Box<dyn std::error::Error>> {
    let (me, p) = (world.rank(), world.size());
    let my_rows = block_range(r, p, me);
    let mine: Vec<f64> = my_rows
        .clone()
        .flat_map(|i| (0..c).map(move |j| a(i, j)))
        .collect();
    let my_cols = block_range(c, p, me);
    // My rows of Aᵀ: columns my_cols of A, each r long.
    let mut t = vec![0f64; my_cols.len() * r];
    let f64t = Datatype::of::<f64>();
    // Sends on a thread of their own, so no blocking send waits for a receive that
    // this same thread has not posted yet.
    std::thread::scope(|s| -> Result<(), Box<dyn std::error::Error>> {
        let sender = s.spawn(|| -> Result<(), dsmpi::collectives::Error> {
            for q in 0..p {
                let cols = block_range(c, p, q);
                let sub = Datatype::subarray(
                    &[my_rows.len().max(1), c],
                    &[my_rows.len(), cols.len()],
                    &[0, cols.start],
                    Order::C,
                    &f64t,
                )?
                .commit();
                world.send_typed(&mine, &sub, 1, q, 3)?;
            }
            Ok(())
        });
        for q in 0..p {
            let rows = block_range(r, p, q);
            // Element (i, j) of q's sub-block (row-major) goes to t[j][rows.start + i].
            let column = Datatype::vector(my_cols.len(), 1, r as isize, &f64t)?;
            let transposing = Datatype::hvector(rows.len(), 1, 8, &column)?.commit();
            let at = rows.start.min(t.len());
            world.recv_typed(&mut t[at..], &transposing, 1, q, 3)?;
        }
        sender.join().map_err(|_| "the sending thread panicked")??;
        Ok(())
    })?;
    for (x, v) in t.iter().enumerate() {
        let (i, j) = (my_cols.start + x / r, x % r);
        if *v != a(j, i) {
            return Err(format!("{r}×{c} transpose: rank {me} has {v} at ({i},{j})").into());
        }
    }
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let universe = dsmpi::init()?;
    let world = universe.world();
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|s| s.parse())
        .collect::<Result<_, _>>()?;
    square(&world)?;
    let sizes = if args.len() == 2 {
        vec![(args[0], args[1])]
    } else {
        vec![(5, 7), (1, 9), (13, 2), (40, 33)]
    };
    for (r, c) in sizes {
        any_size(&world, r, c)?;
    }
    if world.rank() == 0 {
        println!("transposes correct on {} ranks", world.size());
    }
    Ok(())
}
