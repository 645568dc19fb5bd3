//! RMA addressed by derived datatypes: MPI's origin and target datatypes.
//!
//! The origin side is packed (or unpacked) with the datatype's own packing code. The
//! target side is flattened into byte segments of the target's region
//! (displacement `disp · size_of::<T>()`, then each element one extent further, each
//! segment of the committed type map at its displacement), adjacent segments merged;
//! the segments are split at owner boundaries (see *Page migration*) and each owner
//! gets **one** message listing its segments (`PutV`, `GetV`, `AccV`, `GetAccV`), so a
//! strided column costs one request, not one per element. The target executes the
//! whole list under its service lock: accumulates stay element-wise atomic.

use bytemuck::Pod;
use dsmpi_collectives::datatype::{Cursor, Datatype, Primitive};

use super::Window;
use crate::element::{ElemKind, Element, Op};
use crate::error::{Result, WinError};
use crate::proto::{self, Header, Kind};

/// `count` elements of a committed [`Datatype`]: how the data of a typed RMA call
/// ([`Window::put_typed`] and friends) lies in the origin buffer or in the target's
/// region. Displacements of the datatype are bytes from the buffer's start (origin)
/// or from the target displacement (target).
#[derive(Clone, Copy, Debug)]
pub struct Typed<'a> {
    /// The datatype; must be committed ([`Datatype::commit`]).
    pub datatype: &'a Datatype,
    /// How many elements of it.
    pub count: usize,
}

impl<'a> Typed<'a> {
    /// `count` elements of `datatype`.
    pub fn new(datatype: &'a Datatype, count: usize) -> Typed<'a> {
        Typed { datatype, count }
    }
}

fn dt_err(e: dsmpi_collectives::Error) -> WinError {
    WinError::InvalidArgument(format!("datatype: {e}"))
}

/// The signature of `t.count` elements, equal neighbours merged.
fn signature(t: Typed<'_>) -> Result<Vec<(Primitive, usize)>> {
    let one = t.datatype.signature();
    let mut out: Vec<(Primitive, usize)> = Vec::new();
    let too_big = || WinError::InvalidArgument("datatype count overflows".into());
    if let [(k, n)] = one.as_slice() {
        if t.count > 0 {
            out.push((*k, n.checked_mul(t.count).ok_or_else(too_big)?));
        }
        return Ok(out);
    }
    for _ in 0..t.count {
        for &(k, n) in &one {
            match out.last_mut() {
                Some((lk, ln)) if *lk == k => *ln = ln.checked_add(n).ok_or_else(too_big)?,
                _ => out.push((k, n)),
            }
        }
    }
    Ok(out)
}

/// Checks that both sides move the same sequence of primitives (MPI's type matching).
fn check_match(a: Typed<'_>, b: Typed<'_>, what: &str) -> Result<()> {
    if !a.datatype.is_committed() || !b.datatype.is_committed() {
        return Err(WinError::InvalidArgument(
            "datatype: the datatype must be committed (Datatype::commit) before use".into(),
        ));
    }
    let (sa, sb) = (signature(a)?, signature(b)?);
    if sa != sb {
        return Err(WinError::InvalidArgument(format!(
            "{what}: the type signatures differ ({sa:?} against {sb:?})"
        )));
    }
    Ok(())
}

/// The primitive an accumulate element kind is.
fn primitive(kind: ElemKind) -> Primitive {
    match kind {
        ElemKind::I8 => Primitive::I8,
        ElemKind::I16 => Primitive::I16,
        ElemKind::I32 => Primitive::I32,
        ElemKind::I64 => Primitive::I64,
        ElemKind::U8 => Primitive::U8,
        ElemKind::U16 => Primitive::U16,
        ElemKind::U32 => Primitive::U32,
        ElemKind::U64 => Primitive::U64,
        ElemKind::F32 => Primitive::F32,
        ElemKind::F64 => Primitive::F64,
    }
}

/// Accumulate-family datatypes must be made of `T` alone (MPI: one predefined type).
fn check_kind<T: Element>(t: Typed<'_>) -> Result<()> {
    let p = primitive(T::KIND);
    match t.datatype.signature().iter().find(|(k, _)| *k != p) {
        Some((k, _)) => Err(WinError::InvalidArgument(format!(
            "accumulate datatypes must consist of {p:?} only, found {k:?}"
        ))),
        None => Ok(()),
    }
}

/// Packs the selected bytes of `origin`.
fn pack<T: Pod>(origin: &[T], t: Typed<'_>) -> Result<Vec<u8>> {
    t.datatype
        .pack(bytemuck::cast_slice(origin), t.count)
        .map_err(dt_err)
}

/// Checks that `t` fits in a buffer of `len` bytes (before data is fetched for it).
fn check_fits(buf: &mut [u8], t: Typed<'_>) -> Result<()> {
    t.datatype
        .unpack_from(&[], buf, t.count, &mut Cursor::new())
        .map(|_| ())
        .map_err(dt_err)
}

/// One owner's share of a typed access: `(region offset, length, offset in the packed
/// data)` per piece, in packed order.
type Pieces = Vec<(usize, usize, usize)>;

/// Encodes a piece list: count, then (offset, length) pairs.
fn encode_list(pieces: &Pieces) -> Vec<u8> {
    let mut v = Vec::with_capacity(8 + 16 * pieces.len());
    v.extend_from_slice(&(pieces.len() as u64).to_le_bytes());
    for &(o, l, _) in pieces {
        v.extend_from_slice(&(o as u64).to_le_bytes());
        v.extend_from_slice(&(l as u64).to_le_bytes());
    }
    v
}

impl Window {
    /// The byte segments `(region offset, length)` that `t` selects in `target`'s
    /// region from element displacement `disp` (units of `w` bytes), in type-map
    /// order, adjacent ones merged, each checked to lie in the region.
    fn target_segments(
        &self,
        target: usize,
        disp: usize,
        w: usize,
        t: Typed<'_>,
    ) -> Result<Vec<(usize, usize)>> {
        self.check_rank(target)?;
        let segs = t.datatype.segments().map_err(dt_err)?;
        let size = self.sh.geo.region_bytes[target];
        let oor = |len: usize| WinError::OutOfRange {
            target,
            offset: usize::MAX,
            len,
            size,
        };
        let base = disp
            .checked_mul(w)
            .and_then(|b| isize::try_from(b).ok())
            .ok_or_else(|| oor(0))?;
        let ext = t.datatype.extent();
        let mut out: Vec<(usize, usize)> = Vec::new();
        for i in 0..t.count {
            let elem = isize::try_from(i)
                .ok()
                .and_then(|i| i.checked_mul(ext))
                .and_then(|e| e.checked_add(base))
                .ok_or_else(|| oor(0))?;
            for &(d, l) in segs.iter().filter(|s| s.1 > 0) {
                let at = elem
                    .checked_add(d)
                    .and_then(|a| usize::try_from(a).ok())
                    .ok_or_else(|| oor(l))?;
                self.sh.geo.check(target, at, l)?;
                match out.last_mut() {
                    Some((o, ol)) if *o + *ol == at => *ol += l,
                    _ => out.push((at, l)),
                }
            }
        }
        Ok(out)
    }

    /// Splits target segments at owner boundaries and groups them per owner.
    fn plan(&self, target: usize, segs: &[(usize, usize)]) -> Result<Vec<(usize, Pieces)>> {
        let mut per: Vec<(usize, Pieces)> = Vec::new();
        let mut at = 0;
        for &(off, len) in segs {
            for (owner, o, l) in self.sh.route(target, off, len)? {
                let piece = (o, l, at + (o - off));
                match per.iter_mut().find(|(w, _)| *w == owner) {
                    Some((_, p)) => p.push(piece),
                    None => per.push((owner, vec![piece])),
                }
            }
            at += len;
        }
        Ok(per)
    }

    /// Sends one vectored request per owner; returns the reply tags of those that
    /// wait for one.
    fn send_typed(
        &self,
        kind: Kind,
        code: u64,
        target: usize,
        plan: &[(usize, Pieces)],
        data: &[u8],
    ) -> Result<Vec<(usize, i32)>> {
        let mut waits = Vec::new();
        for (owner, pieces) in plan {
            let mut payload = encode_list(pieces);
            let mut total = 0;
            for &(_, l, at) in pieces {
                if !data.is_empty() {
                    payload.extend_from_slice(&data[at..at + l]);
                }
                total += l;
            }
            let mut h = Header::new(kind, 0, total);
            h.code = code;
            h.extra = target as u64;
            if matches!(kind, Kind::PutV | Kind::AccV) {
                self.sh.send(*owner, h, &payload)?;
                self.mark_pending(*owner);
            } else {
                waits.push((*owner, self.sh.post(*owner, h, &payload)?));
            }
        }
        Ok(waits)
    }

    /// Collects the replies of [`send_typed`](Self::send_typed) into `packed`.
    fn collect_typed(
        &self,
        plan: &[(usize, Pieces)],
        waits: Vec<(usize, i32)>,
        packed: &mut [u8],
    ) -> Result<()> {
        for ((owner, tag), (_, pieces)) in waits.into_iter().zip(plan) {
            let v = self.sh.wait_reply(owner, tag)?;
            let data = proto::parse_reply(owner, &v)?;
            let total: usize = pieces.iter().map(|p| p.1).sum();
            if data.len() != total {
                return Err(WinError::Protocol(format!(
                    "typed request of {total} bytes answered with {}",
                    data.len()
                )));
            }
            let mut from = 0;
            for &(_, l, at) in pieces {
                packed[at..at + l].copy_from_slice(&data[from..from + l]);
                from += l;
            }
        }
        Ok(())
    }

    /// Like [`put`](Self::put), with derived datatypes on both sides
    /// (MPI_Put with origin and target datatypes): the bytes `origin_type` selects in
    /// `origin` go, in order, to the bytes `target_type` selects in `target`'s region
    /// from element displacement `disp` (units of `T`). The two type signatures must
    /// match. Completes like `put`.
    pub fn put_typed<T: Pod>(
        &self,
        origin: &[T],
        origin_type: Typed<'_>,
        target: usize,
        disp: usize,
        target_type: Typed<'_>,
    ) -> Result<()> {
        check_match(origin_type, target_type, "put_typed")?;
        let segs = self.target_segments(target, disp, std::mem::size_of::<T>(), target_type)?;
        let data = pack(origin, origin_type)?;
        let plan = self.plan(target, &segs)?;
        self.send_typed(Kind::PutV, 0, target, &plan, &data)?;
        self.sh.note_writes(target, &segs);
        Ok(())
    }

    /// Like [`get`](Self::get), with derived datatypes on both sides (MPI_Get): the
    /// bytes `target_type` selects in `target`'s region from element displacement
    /// `disp` land, in order, in the bytes `origin_type` selects in `buf`. Returns
    /// when they are there.
    pub fn get_typed<T: Pod>(
        &self,
        buf: &mut [T],
        origin_type: Typed<'_>,
        target: usize,
        disp: usize,
        target_type: Typed<'_>,
    ) -> Result<()> {
        check_match(origin_type, target_type, "get_typed")?;
        let out: &mut [u8] = bytemuck::cast_slice_mut(buf);
        check_fits(out, origin_type)?;
        let segs = self.target_segments(target, disp, std::mem::size_of::<T>(), target_type)?;
        let plan = self.plan(target, &segs)?;
        let mut packed = vec![0u8; segs.iter().map(|s| s.1).sum()];
        let waits = self.send_typed(Kind::GetV, 0, target, &plan, &[])?;
        self.collect_typed(&plan, waits, &mut packed)?;
        origin_type
            .datatype
            .unpack(&packed, out, origin_type.count)
            .map_err(dt_err)
    }

    /// Checks an accumulate's datatypes and op; returns the target segments.
    fn acc_segments<T: Element>(
        &self,
        origin_type: Typed<'_>,
        target: usize,
        disp: usize,
        target_type: Typed<'_>,
        op: Op,
    ) -> Result<Vec<(usize, usize)>> {
        op.check(T::KIND)?;
        check_match(origin_type, target_type, "accumulate_typed")?;
        check_kind::<T>(origin_type)?;
        check_kind::<T>(target_type)?;
        let w = std::mem::size_of::<T>();
        let segs = self.target_segments(target, disp, w, target_type)?;
        if let Some(&(o, _)) = segs.iter().find(|s| !s.0.is_multiple_of(w)) {
            return Err(WinError::Misaligned {
                offset: o,
                align: w,
            });
        }
        Ok(segs)
    }

    /// Like [`accumulate`](Self::accumulate), with derived datatypes on both sides
    /// (MPI_Accumulate): the elements `origin_type` selects in `origin` are combined
    /// with `op`, in order, into the elements `target_type` selects in `target`'s
    /// region from element displacement `disp`. Both datatypes must consist of `T`
    /// alone (MPI's rule for accumulate). Element-wise atomic with every other
    /// accumulate-family operation; completes like `accumulate`.
    pub fn accumulate_typed<T: Element>(
        &self,
        origin: &[T],
        origin_type: Typed<'_>,
        target: usize,
        disp: usize,
        target_type: Typed<'_>,
        op: Op,
    ) -> Result<()> {
        let segs = self.acc_segments::<T>(origin_type, target, disp, target_type, op)?;
        let data = pack(origin, origin_type)?;
        let plan = self.plan(target, &segs)?;
        let code = op as u64 | (T::KIND as u64) << 8;
        self.send_typed(Kind::AccV, code, target, &plan, &data)?;
        if op != Op::NoOp {
            self.sh.note_writes(target, &segs);
        }
        Ok(())
    }

    /// Like [`get_accumulate`](Self::get_accumulate), with derived datatypes
    /// (MPI_Get_accumulate): combines as [`accumulate_typed`](Self::accumulate_typed)
    /// and returns the target's previous contents into the elements `result_type`
    /// selects in `result`. All three datatypes must consist of `T` alone and move
    /// the same number of elements.
    #[allow(clippy::too_many_arguments)]
    pub fn get_accumulate_typed<T: Element>(
        &self,
        origin: &[T],
        origin_type: Typed<'_>,
        result: &mut [T],
        result_type: Typed<'_>,
        target: usize,
        disp: usize,
        target_type: Typed<'_>,
        op: Op,
    ) -> Result<()> {
        let segs = self.acc_segments::<T>(origin_type, target, disp, target_type, op)?;
        check_match(result_type, target_type, "get_accumulate_typed result")?;
        let out: &mut [u8] = bytemuck::cast_slice_mut(result);
        check_fits(out, result_type)?;
        let data = pack(origin, origin_type)?;
        let plan = self.plan(target, &segs)?;
        let code = op as u64 | (T::KIND as u64) << 8;
        let waits = self.send_typed(Kind::GetAccV, code, target, &plan, &data)?;
        let mut packed = vec![0u8; data.len()];
        self.collect_typed(&plan, waits, &mut packed)?;
        if op != Op::NoOp {
            self.sh.note_writes(target, &segs);
        }
        result_type
            .datatype
            .unpack(&packed, out, result_type.count)
            .map_err(dt_err)
    }
}
