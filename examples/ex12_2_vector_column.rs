//! Exercise 12.2: send the first column of an M×N int matrix from rank 0 to rank 1,
//! once with a vector type (M blocks of one int, stride N) and once element by
//! element, and compare message count and volume.
//! `dsmexec -n 2 target/debug/examples/ex12_2_vector_column`

use dsmpi::prelude::*;

const M: usize = 6;
const N: usize = 9;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let universe = dsmpi::init()?;
    let world = universe.world();
    let peer = 1 % world.size();
    let matrix: Vec<i32> = (0..(M * N) as i32).collect();
    let want: Vec<i32> = (0..M).map(|i| (i * N) as i32).collect();
    let column = Datatype::vector(M, 1, N as isize, &Datatype::of::<i32>())?.commit();

    if world.rank() == 0 {
        world.send_typed(&matrix, &column, 1, peer, 1)?;
        for i in 0..M {
            world.send(&matrix[i * N..i * N + 1], peer, 2)?;
        }
    }
    if world.rank() == peer {
        // Received into a column of an M×N matrix too, with the same type.
        let mut mine = vec![-1i32; M * N];
        let st = world.recv_typed(&mut mine, &column, 1, 0, 1)?;
        let got: Vec<i32> = (0..M).map(|i| mine[i * N]).collect();
        let mut by_element = vec![0i32; M];
        for x in by_element.iter_mut() {
            world.recv_into(std::slice::from_mut(x), 0, 2)?;
        }
        if got != want || by_element != want {
            return Err(format!("column {got:?} / {by_element:?}, expected {want:?}").into());
        }
        // A typed send is one header and, for data under a piece, one data message.
        println!(
            "vector type:     2 messages (header + data), {} data bytes + 32 header bytes",
            st.bytes
        );
        println!(
            "element by element: {M} messages, {} data bytes",
            M * std::mem::size_of::<i32>()
        );
        println!("column received: {got:?}");
    }
    Ok(())
}
