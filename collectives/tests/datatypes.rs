//! Derived datatypes: pack/unpack round trips on random layouts (proptest), typed
//! point-to-point with differing send and receive types, signature mismatches, and the
//! typed collectives.

mod common;

use common::bytes;
use dsmpi_collectives::datatype::Cursor;
use dsmpi_collectives::prelude::*;
use dsmpi_collectives::Error;
use dsmpi_runtime::run_local;
use proptest::prelude::*;

/// A random hindexed layout: blocks of `len` elements after gaps of `gap` bytes.
#[derive(Clone, Debug)]
struct Layout {
    kind: Primitive,
    blocks: Vec<(usize, usize)>,
    count: usize,
    pad: usize,
}

fn kind() -> impl Strategy<Value = Primitive> {
    prop_oneof![
        Just(Primitive::U8),
        Just(Primitive::I16),
        Just(Primitive::F32),
        Just(Primitive::I64),
        Just(Primitive::U128)
    ]
}

fn layout() -> impl Strategy<Value = Layout> {
    (
        kind(),
        prop::collection::vec((0usize..5, 0usize..24), 0..6),
        0usize..4,
        0usize..16,
    )
        .prop_map(|(kind, blocks, count, pad)| Layout {
            kind,
            blocks,
            count,
            pad,
        })
}

impl Layout {
    /// Displacements of the blocks, in bytes.
    fn displs(&self) -> Vec<isize> {
        let mut at = 0;
        self.blocks
            .iter()
            .map(|&(len, gap)| {
                at += gap;
                let d = at as isize;
                at += len * self.kind.size();
                d
            })
            .collect()
    }
    fn end(&self) -> usize {
        self.displs().last().map_or(0, |&d| {
            d as usize + self.blocks.last().map_or(0, |b| b.0) * self.kind.size()
        })
    }
    /// The datatype, resized to leave `pad` bytes between consecutive elements.
    fn datatype(&self) -> Datatype {
        let lens: Vec<usize> = self.blocks.iter().map(|b| b.0).collect();
        let t = Datatype::hindexed(&lens, &self.displs(), &Datatype::primitive(self.kind)).unwrap();
        Datatype::resized(&t, 0, (self.end() + self.pad) as isize)
            .unwrap()
            .commit()
    }
    fn extent(&self) -> usize {
        self.end() + self.pad
    }
    /// The naive reference of packing: block after block, element after element.
    fn reference_pack(&self, buf: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        for e in 0..self.count {
            for (&(len, _), &d) in self.blocks.iter().zip(&self.displs()) {
                let at = e * self.extent() + d as usize;
                out.extend_from_slice(&buf[at..at + len * self.kind.size()]);
            }
        }
        out
    }
    fn elements(&self) -> usize {
        self.count * self.blocks.iter().map(|b| b.0).sum::<usize>()
    }
}

/// What the receiving rank of a typed exchange reports: (contiguous, spread).
type Received = Option<(Vec<u8>, Vec<u8>)>;

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Packing matches the naive reference, piecewise packing (random piece sizes)
    /// matches whole packing, and unpacking restores exactly the selected bytes.
    #[test]
    fn pack_unpack_round_trip(l in layout(), piece in 1usize..40) {
        let t = l.datatype();
        let buf = bytes(1, l.count * l.extent(), 3);
        let packed = t.pack(&buf, l.count).unwrap();
        prop_assert_eq!(&packed, &l.reference_pack(&buf));
        prop_assert_eq!(packed.len(), l.count * t.size());

        let mut cur = Cursor::new();
        let mut pieces = Vec::new();
        let mut out = vec![0u8; piece];
        loop {
            let n = t.pack_into(&buf, l.count, &mut cur, &mut out).unwrap();
            pieces.extend_from_slice(&out[..n]);
            if n < piece { break; }
        }
        prop_assert_eq!(&pieces, &packed);

        let mut back = vec![0u8; buf.len()];
        t.unpack(&packed, &mut back, l.count).unwrap();
        prop_assert_eq!(&t.pack(&back, l.count).unwrap(), &packed);
        // Bytes outside the type map stay untouched.
        let mut mask = vec![0u8; buf.len()];
        t.unpack(&vec![1u8; packed.len()], &mut mask, l.count).unwrap();
        for i in 0..buf.len() {
            if mask[i] == 0 { prop_assert_eq!(back[i], 0); }
        }
    }

    /// A random send layout received as a contiguous run of the same kind, and as
    /// another random layout with the same number of elements.
    #[test]
    fn send_and_receive_types_differ(a in layout(), b_blocks in prop::collection::vec(0usize..24, 0..6)) {
        let ta = a.datatype();
        let n_elems = a.elements();
        let elem = Datatype::primitive(a.kind).commit();
        // Layout b: the same element count spread over blocks with random gaps.
        let mut left = n_elems;
        let mut blocks: Vec<(usize, usize)> = b_blocks.iter().map(|&g| { let take = left.min(3); left -= take; (take, g) }).collect();
        blocks.push((left, 5));
        let b = Layout { kind: a.kind, blocks, count: 1, pad: 0 };
        let tb = b.datatype();
        let src = bytes(0, a.count * a.extent(), 9);
        let expect = ta.pack(&src, a.count).unwrap();
        let out = run_local(2, |w| -> Result<Received, Error> {
            if w.rank() == 0 {
                w.send_typed(&src, &ta, a.count, 1, 4)?;
                w.send_typed(&src, &ta, a.count, 1, 4)?;
                Ok(None)
            } else {
                let mut flat = vec![0u8; n_elems * a.kind.size()];
                let st = w.recv_typed(&mut flat, &elem, n_elems, 0, 4)?;
                assert_eq!(st.bytes, expect.len());
                let mut spread = vec![0u8; b.extent()];
                w.recv_typed(&mut spread, &tb, 1, 0, 4)?;
                Ok(Some((flat, tb.pack(&spread, 1)?)))
            }
        }).unwrap();
        let (flat, spread) = out[1].clone().unwrap().unwrap();
        prop_assert_eq!(&flat, &expect);
        prop_assert_eq!(&spread, &expect);
    }
}

#[test]
fn signature_mismatch_is_an_error_and_the_stream_stays_usable() {
    let out = run_local(2, |w| -> Result<(), Error> {
        let f = Datatype::of::<f32>().commit();
        let i = Datatype::of::<i32>().commit();
        if w.rank() == 0 {
            // Big enough to take several pieces.
            let v = vec![1.5f32; 1_000_000];
            let col = Datatype::vector(500_000, 1, 2, &f)?.commit();
            w.send_typed(&v, &col, 1, 1, 0)?;
            w.send_typed(&[7i32, 8], &i, 2, 1, 0)?;
        } else {
            let mut got = vec![0i32; 500_000];
            match w.recv_typed(&mut got, &i, 500_000, 0, 0) {
                Err(Error::SignatureMismatch(_)) => {}
                other => panic!("expected a signature mismatch, got {other:?}"),
            }
            let mut next = [0i32; 2];
            w.recv_typed(&mut next, &i, 2, 0, 0)?;
            assert_eq!(next, [7, 8]);
        }
        Ok(())
    })
    .unwrap();
    assert!(out.iter().all(|r| r.is_ok()), "{out:?}");
}

#[test]
fn large_strided_messages_arrive_whole_in_any_receive_layout() {
    // Several pipelined pieces each way (the packed column is ~2.4 MiB), received as a
    // contiguous array and as a differently strided column, on both backends.
    let rows = 300_000usize;
    for backend in [
        dsmpi_runtime::LocalBackend::Sockets,
        dsmpi_runtime::LocalBackend::Tcp,
        dsmpi_runtime::LocalBackend::Shm,
    ] {
        let out = dsmpi_runtime::run_local_with(backend, 2, |w| -> Result<(), Error> {
            let f = Datatype::of::<f64>().commit();
            let send_col = Datatype::vector(rows, 1, 3, &f)?.commit();
            let recv_col = Datatype::vector(rows, 1, 2, &f)?.commit();
            let flat = Datatype::contiguous(rows, &f).commit();
            if w.rank() == 0 {
                let m: Vec<f64> = (0..3 * rows).map(|i| i as f64).collect();
                w.send_typed(&m, &send_col, 1, 1, 5)?;
                w.send_typed(&m, &send_col, 1, 1, 6)?;
            } else {
                let mut a = vec![0f64; rows];
                let st = w.recv_typed(&mut a, &flat, 1, 0, 5)?;
                assert_eq!(st.bytes, rows * 8);
                assert!(a.iter().enumerate().all(|(r, &x)| x == (3 * r) as f64));
                let mut b = vec![-1f64; 2 * rows];
                w.recv_typed(&mut b, &recv_col, 1, 0, 6)?;
                for r in 0..rows {
                    assert_eq!(b[2 * r], (3 * r) as f64, "row {r}");
                    assert_eq!(b[2 * r + 1], -1.0, "a gap was written at row {r}");
                }
            }
            Ok(())
        })
        .unwrap();
        assert!(out.iter().all(|r| r.is_ok()), "{out:?}");
    }
}

#[test]
fn uncommitted_and_out_of_bounds_types_are_refused() {
    run_local(1, |w| {
        let t = Datatype::vector(3, 1, 4, &Datatype::of::<u32>()).unwrap();
        assert!(matches!(
            w.send_typed(&[0u32; 16], &t, 1, 0, 0),
            Err(Error::InvalidDatatype(_))
        ));
        let t = t.commit();
        assert!(matches!(
            w.send_typed(&[0u32; 5], &t, 1, 0, 0),
            Err(Error::InvalidDatatype(_))
        ));
    })
    .unwrap();
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
struct Particle {
    pos: [f64; 3],
    id: u32,
    charge: f32,
}
dsmpi_collectives::derive_datatype!(Particle { pos, id, charge });

#[test]
fn derived_struct_type_and_typed_collectives() {
    for n in 1..=5 {
        run_local(n, |w| {
            let me = w.rank();
            let p = Datatype::of::<Particle>().commit();
            // Broadcast of structs.
            let mut ps: Vec<Particle> = (0..4)
                .map(|i| {
                    if me == n - 1 {
                        Particle {
                            pos: [i as f64; 3],
                            id: i,
                            charge: -1.0,
                        }
                    } else {
                        bytemuck::Zeroable::zeroed()
                    }
                })
                .collect();
            w.broadcast_typed(n - 1, &mut ps, &p, 4).unwrap();
            assert_eq!(
                ps[3],
                Particle {
                    pos: [3.0; 3],
                    id: 3,
                    charge: -1.0
                }
            );

            // Scatter the columns of an n×n matrix (column type, resized to one element
            // so block r starts at column r) into contiguous rows.
            let m: Vec<i32> = (0..(n * n) as i32).collect();
            let col = Datatype::vector(n, 1, n as isize, &Datatype::of::<i32>()).unwrap();
            let col = Datatype::resized(&col, 0, 4).unwrap().commit();
            let row = Datatype::contiguous(n, &Datatype::of::<i32>()).commit();
            let mut mine = vec![0i32; n];
            w.scatter_typed(0, &m, &col, 1, &mut mine, &row, 1).unwrap();
            let want: Vec<i32> = (0..n).map(|i| (i * n + me) as i32).collect();
            assert_eq!(mine, want);

            // Gather the rows back as columns: the transpose of the transpose.
            let mut back = vec![0i32; n * n];
            w.gather_typed(0, &mine, &row, 1, &mut back, &col, 1)
                .unwrap();
            if me == 0 {
                assert_eq!(back, m);
            }

            // All-to-all transpose of a row-distributed matrix (each rank one row of n
            // blocks of 2), received with a resized column type.
            let myrow: Vec<u16> = (0..2 * n).map(|j| (me * 100 + j) as u16).collect();
            let pair = Datatype::contiguous(2, &Datatype::of::<u16>()).commit();
            let mut got = vec![0u16; 2 * n];
            w.all_to_all_typed(&myrow, &pair, 1, &mut got, &pair, 1)
                .unwrap();
            let want: Vec<u16> = (0..n)
                .flat_map(|i| [(i * 100 + 2 * me) as u16, (i * 100 + 2 * me + 1) as u16])
                .collect();
            assert_eq!(got, want);

            // A mismatched typed collective is an error, not garbage.
            let mut f = vec![0f32; 4];
            let mut i = vec![0i32; 4];
            let res = if me == 0 {
                w.broadcast_typed(0, &mut i, &Datatype::of::<i32>().commit(), 4)
            } else {
                w.broadcast_typed(0, &mut f, &Datatype::of::<f32>().commit(), 4)
            };
            assert!(
                me == 0 || matches!(res, Err(Error::SignatureMismatch(_))),
                "{res:?}"
            );
        })
        .unwrap();
    }
}

#[test]
fn subarray_selects_the_block_in_both_orders() {
    let (rows, cols) = (5usize, 7usize);
    let buf: Vec<u8> = (0..(rows * cols) as u8).collect();
    let u8t = Datatype::of::<u8>();
    let c = Datatype::subarray(&[rows, cols], &[2, 3], &[1, 4], Order::C, &u8t)
        .unwrap()
        .commit();
    assert_eq!(c.pack(&buf, 1).unwrap(), vec![11, 12, 13, 18, 19, 20]);
    // The same memory seen as a Fortran array of cols × rows.
    let f = Datatype::subarray(&[cols, rows], &[3, 2], &[4, 1], Order::Fortran, &u8t)
        .unwrap()
        .commit();
    assert_eq!(f.pack(&buf, 1).unwrap(), vec![11, 12, 13, 18, 19, 20]);
    let ib = Datatype::indexed_block(2, &[0, 5, 9], &u8t)
        .unwrap()
        .commit();
    assert_eq!(ib.pack(&buf, 1).unwrap(), vec![0, 1, 5, 6, 9, 10]);
    let ix = Datatype::indexed(&[1, 3], &[2, 20], &u8t).unwrap().commit();
    assert_eq!(ix.pack(&buf, 1).unwrap(), vec![2, 20, 21, 22]);
    let hv = Datatype::hvector(2, 2, 10, &u8t).unwrap().commit();
    assert_eq!(
        hv.pack(&buf, 2).unwrap(),
        vec![0, 1, 10, 11, 12, 13, 22, 23]
    );
}
