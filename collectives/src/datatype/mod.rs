//! Derived datatypes (MPI_Type_*): describe where the elements of a message lie in a
//! buffer, so that non-contiguous data (a matrix column, a sub-block, a struct's
//! fields) is sent without the program copying it.
//!
//! A [`Datatype`] is a *type map*: a sequence of (byte displacement, [`Primitive`]
//! kind, count) runs, with a lower bound and an extent that say where the next element
//! of an array of this type starts. Constructors mirror MPI's: [`Datatype::contiguous`],
//! [`vector`](Datatype::vector), [`hvector`](Datatype::hvector),
//! [`indexed`](Datatype::indexed), [`hindexed`](Datatype::hindexed),
//! [`indexed_block`](Datatype::indexed_block), [`structure`](Datatype::structure),
//! [`subarray`](Datatype::subarray) and [`resized`](Datatype::resized).
//! [`commit`](Datatype::commit) flattens the map once into merged byte segments and a
//! run-length *type signature*; only committed types can be used in transfers.
//!
//! Transfers ([`TypedCommunication`]) check signatures: the receive type may differ
//! from the send type (a vector sent, a contiguous block received) as long as the
//! sequence of primitive kinds matches; otherwise the receive fails with
//! [`Error::SignatureMismatch`](crate::Error::SignatureMismatch). The
//! [`derive_datatype!`](crate::derive_datatype) macro gives a `#[repr(C)]` struct its
//! datatype from its fields.

mod pack;
mod typed;

pub use pack::Cursor;
pub use typed::{TypedCommunication, TypedStatus, CHUNK_BYTES};

use crate::error::{Error, Result};

/// The primitive element kinds a type signature is made of.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Primitive {
    /// `u8`
    U8,
    /// `i8`
    I8,
    /// `u16`
    U16,
    /// `i16`
    I16,
    /// `u32`
    U32,
    /// `i32`
    I32,
    /// `u64`
    U64,
    /// `i64`
    I64,
    /// `u128`
    U128,
    /// `i128`
    I128,
    /// `f32`
    F32,
    /// `f64`
    F64,
}

impl Primitive {
    /// Size in bytes.
    pub fn size(self) -> usize {
        match self {
            Primitive::U8 | Primitive::I8 => 1,
            Primitive::U16 | Primitive::I16 => 2,
            Primitive::U32 | Primitive::I32 | Primitive::F32 => 4,
            Primitive::U64 | Primitive::I64 | Primitive::F64 => 8,
            Primitive::U128 | Primitive::I128 => 16,
        }
    }
}

/// Types with a datatype: the primitives, arrays of typed data, and structs given one
/// by [`derive_datatype!`](crate::derive_datatype).
pub trait TypedData: bytemuck::Pod {
    /// The (uncommitted) datatype describing one value.
    fn datatype() -> Datatype;
}

macro_rules! typed_primitive {
    ($($t:ty => $k:ident),*) => {$(
        impl TypedData for $t {
            fn datatype() -> Datatype {
                Datatype::primitive(Primitive::$k)
            }
        }
    )*};
}
typed_primitive!(u8 => U8, i8 => I8, u16 => U16, i16 => I16, u32 => U32, i32 => I32, u64 => U64,
    i64 => I64, u128 => U128, i128 => I128, f32 => F32, f64 => F64);
#[cfg(target_pointer_width = "64")]
typed_primitive!(usize => U64, isize => I64);

impl<T: TypedData, const N: usize> TypedData for [T; N]
where
    [T; N]: bytemuck::Pod,
{
    fn datatype() -> Datatype {
        Datatype::contiguous(N, &T::datatype())
    }
}

/// Gives a `#[repr(C)]` struct whose fields all implement [`TypedData`] a
/// [`TypedData`] implementation: a [`Datatype::structure`] of its fields at their
/// `offset_of!` displacements, resized to the struct's size (so arrays of it stride
/// correctly over padding).
///
/// ```
/// use dsmpi_collectives::derive_datatype;
/// use dsmpi_collectives::datatype::TypedData;
///
/// #[repr(C)]
/// #[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
/// struct Particle { pos: [f64; 3], id: u32, charge: f32 }
/// derive_datatype!(Particle { pos, id, charge });
///
/// let t = Particle::datatype().commit();
/// assert_eq!(t.size(), 32);
/// assert_eq!(t.extent(), 32);
/// ```
#[macro_export]
macro_rules! derive_datatype {
    ($name:ident { $($field:ident),+ $(,)? }) => {
        impl $crate::datatype::TypedData for $name {
            fn datatype() -> $crate::datatype::Datatype {
                fn field_type<S, F: $crate::datatype::TypedData>(
                    _: impl Fn(&S) -> &F,
                ) -> $crate::datatype::Datatype {
                    F::datatype()
                }
                let types = [$(field_type(|s: &$name| &s.$field)),+];
                let displs = [$(::core::mem::offset_of!($name, $field) as isize),+];
                let blocks = [$({ let _ = stringify!($field); 1usize }),+];
                $crate::datatype::Datatype::structure(&blocks, &displs, &types)
                    .and_then(|t| $crate::datatype::Datatype::resized(&t, 0, ::core::mem::size_of::<$name>() as isize))
                    .expect("a repr(C) struct's fields make a valid datatype")
            }
        }
    };
}

/// Array element order of [`Datatype::subarray`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Order {
    /// Row-major: the last dimension varies fastest.
    C,
    /// Column-major: the first dimension varies fastest.
    Fortran,
}

/// A run of `count` consecutive elements of one kind at a byte displacement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Run {
    disp: isize,
    kind: Primitive,
    count: usize,
}

/// `n` segments of `len` bytes, the k-th at byte `disp + k × stride`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct StridedRun {
    pub(crate) disp: isize,
    pub(crate) len: usize,
    pub(crate) stride: isize,
    pub(crate) n: usize,
}

/// Folds consecutive segments of one length at a constant distance into runs.
fn strided_runs(segs: &[(isize, usize)]) -> Vec<StridedRun> {
    let mut runs: Vec<StridedRun> = Vec::new();
    for &(disp, len) in segs.iter().filter(|s| s.1 > 0) {
        if let Some(r) = runs.last_mut() {
            if r.len == len && (r.n == 1 || disp == r.disp + r.n as isize * r.stride) {
                if r.n == 1 {
                    r.stride = disp - r.disp;
                }
                r.n += 1;
                continue;
            }
        }
        runs.push(StridedRun {
            disp,
            len,
            stride: 0,
            n: 1,
        });
    }
    runs
}

/// What [`Datatype::commit`] computes once.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Committed {
    /// Byte segments (displacement, length) in type-map order, adjacent ones merged.
    segs: Vec<(isize, usize)>,
    /// The same segments as strided runs, what packing walks: a column of a matrix
    /// is one run instead of one segment per row.
    strided: Vec<StridedRun>,
    /// Run-length type signature, adjacent equal kinds merged.
    sig: Vec<(Primitive, usize)>,
    /// Bytes of data in one element.
    size: usize,
    /// Lowest byte touched (relative to the element's start).
    true_lb: isize,
    /// One past the highest byte touched.
    true_ub: isize,
}

/// A derived datatype; see the [module docs](self).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Datatype {
    runs: Vec<Run>,
    lb: isize,
    ub: isize,
    committed: Option<Committed>,
}

fn push_run(runs: &mut Vec<Run>, r: Run) {
    if r.count == 0 {
        return;
    }
    if let Some(last) = runs.last_mut() {
        if last.kind == r.kind && last.disp + (last.count * last.kind.size()) as isize == r.disp {
            last.count += r.count;
            return;
        }
    }
    runs.push(r);
}

fn to_isize(x: usize, what: &str) -> Result<isize> {
    isize::try_from(x).map_err(|_| Error::InvalidDatatype(format!("{what} {x} is too large")))
}

impl Datatype {
    /// One element of a primitive kind.
    pub fn primitive(kind: Primitive) -> Datatype {
        Datatype {
            runs: vec![Run {
                disp: 0,
                kind,
                count: 1,
            }],
            lb: 0,
            ub: kind.size() as isize,
            committed: None,
        }
    }

    /// The datatype of a [`TypedData`] type, e.g. `Datatype::of::<f64>()`.
    pub fn of<T: TypedData>() -> Datatype {
        T::datatype()
    }

    /// Copies of `old` placed at each byte displacement of `at`; bounds span all
    /// copies (an empty placement gives an empty type of extent 0).
    fn replicate(parts: impl IntoIterator<Item = (isize, Datatype)>) -> Datatype {
        let mut runs = Vec::new();
        let (mut lb, mut ub) = (isize::MAX, isize::MIN);
        for (d, old) in parts {
            for r in &old.runs {
                push_run(
                    &mut runs,
                    Run {
                        disp: r.disp + d,
                        ..*r
                    },
                );
            }
            lb = lb.min(d + old.lb);
            ub = ub.max(d + old.ub);
        }
        if lb > ub {
            (lb, ub) = (0, 0);
        }
        Datatype {
            runs,
            lb,
            ub,
            committed: None,
        }
    }

    /// `count` copies of `old`, one extent apart (MPI_Type_contiguous).
    pub fn contiguous(count: usize, old: &Datatype) -> Datatype {
        let e = old.extent();
        Datatype::replicate((0..count).map(|i| (i as isize * e, old.clone())))
    }

    /// `count` blocks of `blocklen` copies of `old`, block starts `stride` extents of
    /// `old` apart (MPI_Type_vector).
    pub fn vector(
        count: usize,
        blocklen: usize,
        stride: isize,
        old: &Datatype,
    ) -> Result<Datatype> {
        Datatype::hvector(count, blocklen, stride * old.extent(), old)
    }

    /// Like [`vector`](Self::vector) with the stride in bytes (MPI_Type_create_hvector).
    pub fn hvector(
        count: usize,
        blocklen: usize,
        stride: isize,
        old: &Datatype,
    ) -> Result<Datatype> {
        let e = old.extent();
        to_isize(count, "count")?;
        to_isize(blocklen, "blocklen")?;
        Ok(Datatype::replicate((0..count).flat_map(|i| {
            (0..blocklen).map(move |j| (i as isize * stride + j as isize * e, old.clone()))
        })))
    }

    /// Blocks of `blocklens[i]` copies of `old` at `displs[i]` extents of `old`
    /// (MPI_Type_indexed).
    pub fn indexed(blocklens: &[usize], displs: &[isize], old: &Datatype) -> Result<Datatype> {
        let e = old.extent();
        let bytes: Vec<isize> = displs.iter().map(|d| d * e).collect();
        Datatype::hindexed(blocklens, &bytes, old)
    }

    /// Like [`indexed`](Self::indexed) with displacements in bytes
    /// (MPI_Type_create_hindexed).
    pub fn hindexed(blocklens: &[usize], displs: &[isize], old: &Datatype) -> Result<Datatype> {
        if blocklens.len() != displs.len() {
            return Err(Error::InvalidDatatype(format!(
                "{} block lengths for {} displacements",
                blocklens.len(),
                displs.len()
            )));
        }
        let types = vec![old.clone(); blocklens.len()];
        Datatype::structure(blocklens, displs, &types)
    }

    /// Blocks of `blocklen` copies of `old` at `displs[i]` extents
    /// (MPI_Type_create_indexed_block).
    pub fn indexed_block(blocklen: usize, displs: &[isize], old: &Datatype) -> Result<Datatype> {
        Datatype::indexed(&vec![blocklen; displs.len()], displs, old)
    }

    /// Blocks of `blocklens[i]` copies of `types[i]` at byte displacements `displs[i]`
    /// (MPI_Type_create_struct).
    pub fn structure(
        blocklens: &[usize],
        displs: &[isize],
        types: &[Datatype],
    ) -> Result<Datatype> {
        if blocklens.len() != displs.len() || blocklens.len() != types.len() {
            return Err(Error::InvalidDatatype(format!(
                "struct with {} block lengths, {} displacements and {} types",
                blocklens.len(),
                displs.len(),
                types.len()
            )));
        }
        Ok(Datatype::replicate(
            blocklens
                .iter()
                .zip(displs)
                .zip(types)
                .flat_map(|((&n, &d), t)| {
                    let e = t.extent();
                    (0..n).map(move |j| (d + j as isize * e, t.clone()))
                }),
        ))
    }

    /// The sub-block `starts .. starts + subsizes` of an array of `sizes` elements of
    /// `old` in `order` (MPI_Type_create_subarray). Its extent is the whole array's, so
    /// consecutive elements of this type are consecutive whole arrays.
    pub fn subarray(
        sizes: &[usize],
        subsizes: &[usize],
        starts: &[usize],
        order: Order,
        old: &Datatype,
    ) -> Result<Datatype> {
        let d = sizes.len();
        if d == 0 || subsizes.len() != d || starts.len() != d {
            return Err(Error::InvalidDatatype(
                "subarray needs ≥ 1 dimension and equal-length sizes, subsizes, starts".into(),
            ));
        }
        for i in 0..d {
            if starts[i]
                .checked_add(subsizes[i])
                .is_none_or(|e| e > sizes[i])
            {
                return Err(Error::InvalidDatatype(format!(
                    "subarray dimension {i}: {}+{} exceeds {}",
                    starts[i], subsizes[i], sizes[i]
                )));
            }
        }
        // Work in C order: reverse the dimensions of a Fortran array.
        let rev = |v: &[usize]| -> Vec<usize> {
            match order {
                Order::C => v.to_vec(),
                Order::Fortran => v.iter().rev().copied().collect(),
            }
        };
        let (sz, sub, st) = (rev(sizes), rev(subsizes), rev(starts));
        let e = old.extent();
        // Element strides of each dimension.
        let mut stride = vec![1isize; d];
        for i in (0..d - 1).rev() {
            stride[i] = stride[i + 1] * to_isize(sz[i + 1], "size")?;
        }
        let total: usize = sub.iter().product();
        let mut placements = Vec::with_capacity(total);
        let mut idx = vec![0usize; d];
        for _ in 0..total {
            let off: isize = (0..d).map(|i| (st[i] + idx[i]) as isize * stride[i]).sum();
            placements.push((off * e, old.clone()));
            for i in (0..d).rev() {
                idx[i] += 1;
                if idx[i] < sub[i] {
                    break;
                }
                idx[i] = 0;
            }
        }
        let full = stride[0] * to_isize(sz[0], "size")? * e;
        let t = Datatype::replicate(placements);
        Ok(Datatype {
            lb: 0,
            ub: full,
            ..t
        })
    }

    /// `old` with lower bound `lb` and extent `extent` (MPI_Type_create_resized): sets
    /// where consecutive elements of the type start, e.g. to interleave columns.
    pub fn resized(old: &Datatype, lb: isize, extent: isize) -> Result<Datatype> {
        if extent < 0 {
            return Err(Error::InvalidDatatype(format!("negative extent {extent}")));
        }
        Ok(Datatype {
            runs: old.runs.clone(),
            lb,
            ub: lb + extent,
            committed: None,
        })
    }

    /// Flattens the type map into merged byte segments and a type signature, once
    /// (MPI_Type_commit). Only committed types can be sent or received.
    pub fn commit(mut self) -> Datatype {
        let mut segs: Vec<(isize, usize)> = Vec::new();
        let mut sig: Vec<(Primitive, usize)> = Vec::new();
        let (mut tlb, mut tub) = (isize::MAX, isize::MIN);
        for r in &self.runs {
            let len = r.count * r.kind.size();
            match segs.last_mut() {
                Some((d, l)) if *d + *l as isize == r.disp => *l += len,
                _ => segs.push((r.disp, len)),
            }
            match sig.last_mut() {
                Some((k, c)) if *k == r.kind => *c += r.count,
                _ => sig.push((r.kind, r.count)),
            }
            tlb = tlb.min(r.disp);
            tub = tub.max(r.disp + len as isize);
        }
        if tlb > tub {
            (tlb, tub) = (0, 0);
        }
        let size = segs.iter().map(|s| s.1).sum();
        self.committed = Some(Committed {
            strided: strided_runs(&segs),
            segs,
            sig,
            size,
            true_lb: tlb,
            true_ub: tub,
        });
        self
    }

    /// Whether [`commit`](Self::commit) was called.
    pub fn is_committed(&self) -> bool {
        self.committed.is_some()
    }

    /// Lower bound in bytes.
    pub fn lb(&self) -> isize {
        self.lb
    }

    /// Extent in bytes: the distance between consecutive elements of this type.
    pub fn extent(&self) -> isize {
        self.ub - self.lb
    }

    /// Bytes of data in one element (what a send of one element moves).
    pub fn size(&self) -> usize {
        self.runs.iter().map(|r| r.count * r.kind.size()).sum()
    }

    /// The run-length type signature: kinds in order, equal neighbours merged.
    pub fn signature(&self) -> Vec<(Primitive, usize)> {
        match &self.committed {
            Some(c) => c.sig.clone(),
            None => self.clone().commit().signature(),
        }
    }

    /// The byte segments `(displacement, length)` of one element, relative to the
    /// element's start, in type-map order with adjacent ones merged (what
    /// [`commit`](Self::commit) computed). For code that moves the selected bytes
    /// itself, e.g. one-sided operations addressed by a datatype at a remote target.
    pub fn segments(&self) -> Result<&[(isize, usize)]> {
        Ok(&self.committed()?.segs)
    }

    /// The committed form, or an error naming the mistake.
    fn committed(&self) -> Result<&Committed> {
        self.committed.as_ref().ok_or_else(|| {
            Error::InvalidDatatype(
                "the datatype must be committed (Datatype::commit) before use".into(),
            )
        })
    }

    /// Whether `count` elements occupy one contiguous byte range of exactly their size,
    /// so they can be sent straight from the buffer.
    pub(crate) fn is_contiguous(&self, count: usize) -> bool {
        match &self.committed {
            Some(c) => {
                count == 0
                    || c.segs.is_empty()
                    || (c.segs.len() == 1 && (count == 1 || c.segs[0].1 as isize == self.extent()))
            }
            None => false,
        }
    }

    /// Byte range `count` elements touch in a buffer, checked to lie in `0..len`.
    pub(crate) fn span(&self, count: usize, len: usize) -> Result<std::ops::Range<usize>> {
        let c = self.committed()?;
        if count == 0 || c.size == 0 {
            return Ok(0..0);
        }
        let last = (count as isize - 1) * self.extent();
        let lo = c.true_lb.min(c.true_lb + last);
        let hi = c.true_ub.max(c.true_ub + last);
        if lo < 0 || hi as usize > len {
            return Err(Error::InvalidDatatype(format!(
                "{count} elements of this datatype touch bytes {lo}..{hi}, outside a {len}-byte buffer"
            )));
        }
        Ok(lo as usize..hi as usize)
    }
}

/// FNV-1a hash of the signature of the first `bytes` bytes of `count` elements of
/// `t`; `None` when `bytes` cuts a primitive in two or exceeds the data.
pub(crate) fn signature_hash(t: &Datatype, count: usize, bytes: usize) -> Result<Option<u64>> {
    let c = t.committed()?;
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut left = bytes;
    let mut pending: Option<(Primitive, usize)> = None;
    let feed = |k: Primitive, n: usize, h: &mut u64| {
        for b in [k as u64, n as u64] {
            for byte in b.to_le_bytes() {
                *h ^= u64::from(byte);
                *h = h.wrapping_mul(0x0100_0000_01b3);
            }
        }
    };
    'outer: for _ in 0..count {
        for &(k, n) in &c.sig {
            if left == 0 {
                break 'outer;
            }
            let take = n.min(left / k.size());
            if take == 0 {
                return Ok(None);
            }
            left -= take * k.size();
            pending = match pending {
                Some((pk, pn)) if pk == k => Some((k, pn + take)),
                Some((pk, pn)) => {
                    feed(pk, pn, &mut h);
                    Some((k, take))
                }
                None => Some((k, take)),
            };
            if take < n && left > 0 {
                return Ok(None);
            }
        }
    }
    if left != 0 {
        return Ok(None);
    }
    if let Some((k, n)) = pending {
        feed(k, n, &mut h);
    }
    Ok(Some(h))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vector_column_of_a_matrix() {
        // Column 0 of a 4×5 i32 matrix.
        let t = Datatype::vector(4, 1, 5, &Datatype::of::<i32>())
            .unwrap()
            .commit();
        assert_eq!(t.size(), 16);
        assert_eq!(t.extent(), (3 * 5 + 1) * 4);
        assert_eq!(t.signature(), vec![(Primitive::I32, 4)]);
        assert!(!t.is_contiguous(1));
    }

    #[test]
    fn segments_of_committed_types() {
        let v = Datatype::vector(3, 2, 4, &Datatype::of::<u32>()).unwrap();
        assert!(v.segments().is_err());
        let v = v.commit();
        assert_eq!(v.segments().unwrap(), &[(0, 8), (16, 8), (32, 8)]);
    }

    #[test]
    fn subarray_orders_agree() {
        let c = Datatype::subarray(&[4, 6], &[2, 3], &[1, 2], Order::C, &Datatype::of::<u8>())
            .unwrap()
            .commit();
        let f = Datatype::subarray(
            &[6, 4],
            &[3, 2],
            &[2, 1],
            Order::Fortran,
            &Datatype::of::<u8>(),
        )
        .unwrap()
        .commit();
        assert_eq!(c, f);
        assert_eq!(c.extent(), 24);
        assert_eq!(c.committed().unwrap().segs, vec![(8, 3), (14, 3)]);
    }

    #[test]
    fn signatures_of_equal_kinds_merge_across_types() {
        let v = Datatype::vector(3, 2, 4, &Datatype::of::<f64>())
            .unwrap()
            .commit();
        let c = Datatype::contiguous(6, &Datatype::of::<f64>()).commit();
        assert_eq!(
            signature_hash(&v, 2, 96).unwrap(),
            signature_hash(&c, 2, 96).unwrap()
        );
        assert_eq!(
            signature_hash(&v, 1, 48).unwrap(),
            signature_hash(&Datatype::of::<f64>().commit(), 6, 48).unwrap()
        );
        let i = Datatype::contiguous(12, &Datatype::of::<i64>()).commit();
        assert_ne!(
            signature_hash(&v, 2, 96).unwrap(),
            signature_hash(&i, 1, 96).unwrap()
        );
        assert_eq!(signature_hash(&c, 1, 4).unwrap(), None);
    }
}
