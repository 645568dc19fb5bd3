//! The window's stress checks in real processes, for `tests/procs.rs`:
//! `dsmexec -n 4 target/debug/examples/window_procs`.
//!
//! All ranks accumulate into the same counters; fetch-and-op tickets must be unique;
//! one page is bounced by plain stores under exclusive locks; strided columns are put,
//! read and accumulated through derived datatypes. Exits non-zero on any wrong result.

use dsmpi_window::{Datatype, LockType, Op, Typed, Window};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let universe = dsmpi_runtime::init()?;
    let world = universe.world();
    let (me, n) = (world.rank(), world.size());
    let iters = 1000;
    let win = Window::allocate(&world, 4096)?;
    win.fence()?;
    let mut tickets = Vec::with_capacity(iters);
    for _ in 0..iters {
        win.accumulate(&[1u64, 3], 0, 0, Op::Sum)?;
        tickets.push(win.fetch_and_op(1u64, n - 1, 2, Op::Sum)?);
    }
    if tickets.windows(2).any(|w| w[0] >= w[1]) {
        return Err("tickets are not increasing".into());
    }
    let v = win.view::<u64>()?;
    let home = n / 2;
    let base = v.index_of(home, 8)?;
    for _ in 0..50 {
        win.lock(LockType::Exclusive, home)?;
        v.update(base, |x| x + 1)?;
        v.update(base + 1 + me, |x| x + 1)?;
        win.unlock(home)?;
    }
    win.fence()?;
    let mut c = [0u64; 2];
    win.get(&mut c, 0, 0)?;
    let want = (n * iters) as u64;
    if c != [want, 3 * want] {
        return Err(format!("counters {c:?}, expected [{want}, {}]", 3 * want).into());
    }
    let mut t = [0u64];
    win.get(&mut t, n - 1, 2)?;
    if t[0] != want {
        return Err(format!("{} tickets handed out, expected {want}", t[0]).into());
    }
    if v.load(base)? != 50 * n as u64 || (0..n).any(|r| v.load(base + 1 + r).ok() != Some(50)) {
        return Err(format!("bounced page holds {}", v.load(base)?).into());
    }
    // Over TCP links (or across hosts) the bounced page was fetched by plain loads
    // and stores; say how its faults were served.
    let st = win.stats();
    win.free()?;
    typed_columns(&world)?;
    println!(
        "rank {me} of {n}: window checks ok ({} faults, {} served inline)",
        st.faults, st.faults_inline
    );
    Ok(())
}

/// Rank 0's region is a 16 × n matrix of u64 (row-major); rank r puts column r with a
/// vector datatype, every rank reads its neighbour's column back with one, then all
/// add 1 to column 0 at once.
fn typed_columns(world: &dsmpi_runtime::Communicator) -> Result<(), Box<dyn std::error::Error>> {
    let (me, n) = (world.rank(), world.size());
    let rows = 16;
    let win = Window::allocate(world, if me == 0 { rows * n * 8 } else { 0 })?;
    let col = Datatype::vector(rows, 1, n as isize, &Datatype::of::<u64>())?.commit();
    let flat = Datatype::of::<u64>().commit();
    let val = |r: usize, i: usize| (r * 1000 + i) as u64;
    win.fence()?;
    let mine: Vec<u64> = (0..rows).map(|i| val(me, i)).collect();
    win.put_typed(&mine, Typed::new(&flat, rows), 0, me, Typed::new(&col, 1))?;
    win.fence()?;
    let next = (me + 1) % n;
    let mut got = vec![0u64; rows];
    win.get_typed(
        &mut got,
        Typed::new(&flat, rows),
        0,
        next,
        Typed::new(&col, 1),
    )?;
    if got != (0..rows).map(|i| val(next, i)).collect::<Vec<_>>() {
        return Err(format!("column {next} reads {got:?}").into());
    }
    win.fence()?;
    win.accumulate_typed(
        &vec![1u64; rows],
        Typed::new(&flat, rows),
        0,
        0,
        Typed::new(&col, 1),
        Op::Sum,
    )?;
    win.fence()?;
    win.get_typed(&mut got, Typed::new(&flat, rows), 0, 0, Typed::new(&col, 1))?;
    if got != (0..rows).map(|i| val(0, i) + n as u64).collect::<Vec<_>>() {
        return Err(format!("column 0 after {n} accumulates reads {got:?}").into());
    }
    win.free()?;
    Ok(())
}
