//! Exercise 11.5: scatter with only send and receive — linear, binomial tree and
//! binary tree — for every root, checked against the library's `Scatter::Linear`,
//! `Scatter::Binomial` and `Scatter::Binary`. In the trees a rank receives its whole
//! subtree's blocks (a contiguous range of relative ranks) and forwards the parts.
//! `dsmexec -n 7 target/debug/examples/ex11_5_scatter_linear_binomial_binary`

use dsmpi::prelude::*;

const TAG: Tag = 12;

/// One scatter implementation under test, filling this rank's block.
type ScatterFn<'a> = &'a dyn Fn(&mut [i32]) -> Result<(), Box<dyn std::error::Error>>;
const M: usize = 5;

/// The root's data rotated so that relative rank v's block is block v.
fn rotated(send: &[i32], root: usize) -> Vec<i32> {
    let mut v = send[root * M..].to_vec();
    v.extend_from_slice(&send[..root * M]);
    v
}

fn linear(
    world: &Communicator,
    root: usize,
    send: &[i32],
    recv: &mut [i32],
) -> Result<(), dsmpi::Error> {
    if world.rank() == root {
        for r in (0..world.size()).filter(|&r| r != root) {
            world.send(&send[r * M..(r + 1) * M], r, TAG)?;
        }
        recv.copy_from_slice(&send[root * M..(root + 1) * M]);
    } else {
        world.recv_into(recv, root, TAG)?;
    }
    Ok(())
}

/// A tree scatter; `children(v, end)` lists (child, end of its subtree) of relative
/// rank v whose subtree ends at `end`; `parent_end(v)` finds v's parent and subtree end.
fn tree(
    world: &Communicator,
    root: usize,
    send: &[i32],
    recv: &mut [i32],
    locate: impl Fn(usize, usize) -> (Option<usize>, usize, Vec<(usize, usize)>),
) -> Result<(), dsmpi::Error> {
    let n = world.size();
    let me = (world.rank() + n - root) % n;
    let (parent, end, children) = locate(n, me);
    let sub = match parent {
        None => rotated(send, root),
        Some(p) => {
            let mut sub = vec![0; (end - me) * M];
            world.recv_into(&mut sub, (p + root) % n, TAG)?;
            sub
        }
    };
    for (c, e) in children {
        world.send(&sub[(c - me) * M..(e - me) * M], (c + root) % n, TAG)?;
    }
    recv.copy_from_slice(&sub[..M]);
    Ok(())
}

/// Binomial: v's parent is v minus its lowest set bit; its children are v + 2^k for
/// 2^k below that bit.
fn binomial(n: usize, v: usize) -> (Option<usize>, usize, Vec<(usize, usize)>) {
    let low = if v == 0 {
        n.next_power_of_two()
    } else {
        1 << v.trailing_zeros()
    };
    let children = (0..)
        .map(|k| 1 << k)
        .take_while(|&m| m < low && v + m < n)
        .map(|m| (v + m, (v + 2 * m).min(n)))
        .collect();
    ((v != 0).then(|| v - low), (v + low).min(n), children)
}

/// Binary: a node covering [lo, hi) has children covering the halves of [lo+1, hi).
fn binary(n: usize, v: usize) -> (Option<usize>, usize, Vec<(usize, usize)>) {
    let halves = |lo: usize, hi: usize| {
        let mid = lo + 1 + (hi - lo - 1).div_ceil(2);
        [(lo + 1, mid), (mid, hi)]
            .into_iter()
            .filter(|(a, b)| a < b)
            .collect::<Vec<_>>()
    };
    let (mut lo, mut hi, mut parent) = (0, n, None);
    while lo != v {
        parent = Some(lo);
        let h = halves(lo, hi);
        (lo, hi) = h
            .into_iter()
            .find(|&(a, b)| (a..b).contains(&v))
            .unwrap_or((v, v + 1));
    }
    (parent, hi, halves(lo, hi))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let universe = dsmpi::init()?;
    let world = universe.world();
    let (me, n) = (world.rank(), world.size());
    for root in 0..n {
        let send: Vec<i32> = if me == root {
            (0..(n * M) as i32).map(|x| x * 10 + root as i32).collect()
        } else {
            Vec::new()
        };
        let want: Vec<i32> = (0..M).map(|j| ((me * M + j) * 10 + root) as i32).collect();
        let mut got = vec![0; M];
        let checks: [(&str, ScatterFn); 6] = [
            ("linear", &|r| Ok(linear(&world, root, &send, r)?)),
            ("binomial", &|r| Ok(tree(&world, root, &send, r, binomial)?)),
            ("binary", &|r| Ok(tree(&world, root, &send, r, binary)?)),
            ("library linear", &|r| {
                Ok(world.scatter_with(Scatter::Linear, root, &send, r)?)
            }),
            ("library binomial", &|r| {
                Ok(world.scatter_with(Scatter::Binomial, root, &send, r)?)
            }),
            ("library binary", &|r| {
                Ok(world.scatter_with(Scatter::Binary, root, &send, r)?)
            }),
        ];
        for (name, f) in checks {
            got.fill(-1);
            f(&mut got)?;
            if got != want {
                return Err(format!(
                    "rank {me}: {name} scatter from {root} gave {got:?}, expected {want:?}"
                )
                .into());
            }
        }
    }
    if me == 0 {
        println!("linear, binomial and binary scatters agree with the library for every root on {n} ranks");
    }
    Ok(())
}
