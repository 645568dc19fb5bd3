//! Document 000's scenario: shared pages placed round-robin on the ranks, and every
//! rank writes into every page in turn through plain stores; the final contents are
//! checked by every rank.
//!
//! `dsmexec -n 4 target/debug/examples/dsm_round_robin [PAGES_PER_RANK]`

use dsmpi::prelude::*;
use dsmpi::window::Layout;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let universe = dsmpi::init()?;
    let world = universe.world();
    let per_rank: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(4);
    let (me, n) = (world.rank(), world.size());
    let page = 4096;
    let win = Window::allocate_with(&world, per_rank * page, Layout::RoundRobin)?;
    let v = win.view::<u32>()?;
    let pages = win.segment_bytes() / win.page_size();
    let words = win.page_size() / 4;
    for turn in 0..n {
        if turn == me {
            // Each rank owns a slice of every page's words in its turn, and bumps
            // the page's last word (written by everyone, one after the other).
            for p in 0..pages {
                for w in (me..words - 1).step_by(n) {
                    v.store(p * words + w, (p * 1_000_000 + w * 10 + me) as u32)?;
                }
                v.update(p * words + words - 1, |x| x + 1)?;
            }
        }
        win.fence()?;
    }
    for p in 0..pages {
        for w in 0..words - 1 {
            let want = (p * 1_000_000 + w * 10 + w % n) as u32;
            let got = v.load(p * words + w)?;
            if got != want {
                return Err(format!("page {p} word {w}: {got}, expected {want}").into());
            }
        }
        let last = v.load(p * words + words - 1)?;
        if last != n as u32 {
            return Err(format!("page {p}: {last} turns counted, expected {n}").into());
        }
    }
    let st = win.stats();
    println!(
        "rank {me}: {pages} round-robin pages checked; {} faults, {} fetches, {} diffs",
        st.faults, st.fetches, st.diff_pages
    );
    win.free()?;
    Ok(())
}
