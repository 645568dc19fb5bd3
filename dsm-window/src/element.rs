//! Element types and the accumulate operations that combine them.

use bytemuck::Pod;

use crate::error::{Result, WinError};

/// The kind of an [`Element`], sent with accumulate-family requests so that the target
/// knows how to combine bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum ElemKind {
    /// `i8`
    I8 = 0,
    /// `i16`
    I16,
    /// `i32`
    I32,
    /// `i64`
    I64,
    /// `u8`
    U8,
    /// `u16`
    U16,
    /// `u32`
    U32,
    /// `u64`
    U64,
    /// `f32`
    F32,
    /// `f64`
    F64,
}

impl ElemKind {
    pub(crate) fn from_u8(b: u8) -> Option<ElemKind> {
        use ElemKind::*;
        [I8, I16, I32, I64, U8, U16, U32, U64, F32, F64]
            .get(b as usize)
            .copied()
    }

    fn is_float(self) -> bool {
        matches!(self, ElemKind::F32 | ElemKind::F64)
    }
}

/// Accumulate operations (MPI_Op for one-sided calls).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Op {
    /// target = target + origin (wrapping for integers)
    Sum = 0,
    /// target = target × origin (wrapping for integers)
    Prod,
    /// target = min(target, origin)
    Min,
    /// target = max(target, origin)
    Max,
    /// target = target & origin (integers only)
    Band,
    /// target = target | origin (integers only)
    Bor,
    /// target = target ^ origin (integers only)
    Bxor,
    /// target = origin (MPI_REPLACE)
    Replace,
    /// target unchanged (MPI_NO_OP: with get_accumulate, an atomic read)
    NoOp,
}

impl Op {
    pub(crate) fn from_u8(b: u8) -> Option<Op> {
        use Op::*;
        [Sum, Prod, Min, Max, Band, Bor, Bxor, Replace, NoOp]
            .get(b as usize)
            .copied()
    }

    /// Whether the operation applies to elements of `kind`.
    pub fn applies_to(self, kind: ElemKind) -> bool {
        !(kind.is_float() && matches!(self, Op::Band | Op::Bor | Op::Bxor))
    }

    pub(crate) fn check(self, kind: ElemKind) -> Result<()> {
        if self.applies_to(kind) {
            Ok(())
        } else {
            Err(WinError::InvalidOp { op: self, kind })
        }
    }
}

mod sealed {
    pub trait Sealed {}
}

/// A primitive type that accumulate-family operations can combine: the integers of
/// 8 to 64 bits and `f32`/`f64`. Sealed: the target must know every kind.
pub trait Element: Pod + sealed::Sealed {
    /// The kind sent on the wire.
    const KIND: ElemKind;
    #[doc(hidden)]
    fn combine(op: Op, target: Self, origin: Self) -> Self;
}

macro_rules! int_element {
    ($($t:ty => $k:ident),*) => {$(
        impl sealed::Sealed for $t {}
        impl Element for $t {
            const KIND: ElemKind = ElemKind::$k;
            fn combine(op: Op, a: Self, b: Self) -> Self {
                match op {
                    Op::Sum => a.wrapping_add(b),
                    Op::Prod => a.wrapping_mul(b),
                    Op::Min => a.min(b),
                    Op::Max => a.max(b),
                    Op::Band => a & b,
                    Op::Bor => a | b,
                    Op::Bxor => a ^ b,
                    Op::Replace => b,
                    Op::NoOp => a,
                }
            }
        }
    )*};
}

macro_rules! float_element {
    ($($t:ty => $k:ident),*) => {$(
        impl sealed::Sealed for $t {}
        impl Element for $t {
            const KIND: ElemKind = ElemKind::$k;
            fn combine(op: Op, a: Self, b: Self) -> Self {
                match op {
                    Op::Sum => a + b,
                    Op::Prod => a * b,
                    Op::Min => a.min(b),
                    Op::Max => a.max(b),
                    Op::Replace => b,
                    // Bitwise ops are refused before they are sent (`Op::check`).
                    Op::NoOp | Op::Band | Op::Bor | Op::Bxor => a,
                }
            }
        }
    )*};
}

int_element!(i8 => I8, i16 => I16, i32 => I32, i64 => I64, u8 => U8, u16 => U16, u32 => U32, u64 => U64);
float_element!(f32 => F32, f64 => F64);

fn apply_typed<T: Element>(op: Op, target: &mut [u8], origin: &[u8]) {
    let w = std::mem::size_of::<T>();
    for (t, o) in target.chunks_exact_mut(w).zip(origin.chunks_exact(w)) {
        let a: T = bytemuck::pod_read_unaligned(t);
        let b: T = bytemuck::pod_read_unaligned(o);
        t.copy_from_slice(bytemuck::bytes_of(&T::combine(op, a, b)));
    }
}

/// Size in bytes of one element of `kind`.
pub(crate) fn kind_size(kind: ElemKind) -> usize {
    use ElemKind::*;
    match kind {
        I8 | U8 => 1,
        I16 | U16 => 2,
        I32 | U32 | F32 => 4,
        I64 | U64 | F64 => 8,
    }
}

/// Combines `origin` into `target` element by element (both hold whole elements).
pub(crate) fn apply(kind: ElemKind, op: Op, target: &mut [u8], origin: &[u8]) -> Result<()> {
    op.check(kind)?;
    if target.len() != origin.len() || !target.len().is_multiple_of(kind_size(kind)) {
        return Err(WinError::Protocol(format!(
            "accumulate of {} bytes onto {} bytes of {kind:?}",
            origin.len(),
            target.len()
        )));
    }
    use ElemKind::*;
    match kind {
        I8 => apply_typed::<i8>(op, target, origin),
        I16 => apply_typed::<i16>(op, target, origin),
        I32 => apply_typed::<i32>(op, target, origin),
        I64 => apply_typed::<i64>(op, target, origin),
        U8 => apply_typed::<u8>(op, target, origin),
        U16 => apply_typed::<u16>(op, target, origin),
        U32 => apply_typed::<u32>(op, target, origin),
        U64 => apply_typed::<u64>(op, target, origin),
        F32 => apply_typed::<f32>(op, target, origin),
        F64 => apply_typed::<f64>(op, target, origin),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ops_combine() {
        let mut t = bytemuck::cast_slice(&[5i32, -3]).to_vec();
        apply(
            ElemKind::I32,
            Op::Max,
            &mut t,
            bytemuck::cast_slice(&[2i32, 7]),
        )
        .unwrap();
        assert_eq!(bytemuck::cast_slice::<u8, i32>(&t), &[5, 7]);
        apply(
            ElemKind::I32,
            Op::Sum,
            &mut t,
            bytemuck::cast_slice(&[1i32, 1]),
        )
        .unwrap();
        assert_eq!(bytemuck::cast_slice::<u8, i32>(&t), &[6, 8]);
        assert!(apply(ElemKind::F64, Op::Bxor, &mut [0u8; 8], &[0u8; 8]).is_err());
        assert!(apply(ElemKind::U64, Op::Sum, &mut [0u8; 8], &[0u8; 4]).is_err());
    }
}
