//! The smallest dsmpi program: initialize, then finalize. `dsmexec -n 4` of it is the
//! launcher's start-up cost (process start, PMI exchange, TCP mesh, goodbyes).
//!
//! `hyperfine 'target/release/dsmexec -n 4 target/release/examples/init_finalize'`

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let universe = dsmpi::init()?;
    universe.finalize()?;
    Ok(())
}
