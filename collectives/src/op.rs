//! Reduction operations: the built-in ones (MPI's `MPI_SUM` … `MPI_MAXLOC`) and user
//! closures.
//!
//! An [`Operation`] combines two operands element by element, writing into the second:
//! `inout[i] = input[i] ∘ inout[i]`, where `input` always holds the contribution of
//! the *lower* ranks. Every algorithm keeps that order when the operation says it is
//! not commutative, so `x0 ∘ x1 ∘ … ∘ x(n-1)` comes out in rank order (it may still
//! regroup the parentheses: operations must be associative, as in MPI).

use bytemuck::{Pod, Zeroable};

use dsmpi_runtime::transport::NativeOp;

use crate::error::{Error, Result};

/// A reduction operation on elements of type `T`.
pub trait Operation<T> {
    /// `inout[i] = input[i] ∘ inout[i]`; `input` holds the lower ranks' operand.
    /// Both slices have the same length.
    fn apply(&self, input: &[T], inout: &mut [T]);
    /// Whether `a ∘ b == b ∘ a`, which frees the algorithms to combine in any order.
    fn is_commutative(&self) -> bool;
    /// Checks, before any message is sent, that the operation is defined for `T`.
    fn check(&self) -> Result<()> {
        Ok(())
    }
    /// The backend reduction this operation is, if any: lets `Allreduce::Native`
    /// hand it to MPI. `None` (the default) for user operations, which MPI cannot run
    /// without dsmpi's code.
    fn native_op(&self) -> Option<NativeOp> {
        None
    }
}

impl<T, O: Operation<T> + ?Sized> Operation<T> for &O {
    fn apply(&self, input: &[T], inout: &mut [T]) {
        (**self).apply(input, inout)
    }
    fn is_commutative(&self) -> bool {
        (**self).is_commutative()
    }
    fn check(&self) -> Result<()> {
        (**self).check()
    }
    fn native_op(&self) -> Option<NativeOp> {
        (**self).native_op()
    }
}

/// The built-in reductions on primitive numbers (all commutative).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SystemOp {
    /// Sum (wrapping for integers).
    Sum,
    /// Product (wrapping for integers).
    Prod,
    /// Minimum.
    Min,
    /// Maximum.
    Max,
    /// Bitwise AND (integers only).
    BitAnd,
    /// Bitwise OR (integers only).
    BitOr,
    /// Bitwise XOR (integers only).
    BitXor,
    /// Logical AND: 1 if both operands are non-zero, else 0.
    LogicalAnd,
    /// Logical OR.
    LogicalOr,
    /// Logical XOR.
    LogicalXor,
}

impl SystemOp {
    /// MPI's name of the operation, for messages.
    pub fn name(self) -> &'static str {
        match self {
            SystemOp::Sum => "SUM",
            SystemOp::Prod => "PROD",
            SystemOp::Min => "MIN",
            SystemOp::Max => "MAX",
            SystemOp::BitAnd => "BAND",
            SystemOp::BitOr => "BOR",
            SystemOp::BitXor => "BXOR",
            SystemOp::LogicalAnd => "LAND",
            SystemOp::LogicalOr => "LOR",
            SystemOp::LogicalXor => "LXOR",
        }
    }
}

/// Primitive element types the [`SystemOp`]s are defined on.
pub trait Builtin: Pod {
    /// The type's name, for error messages.
    const NAME: &'static str;
    /// Whether `op` is defined for this type.
    fn supports(op: SystemOp) -> bool;
    /// `inout[i] = input[i] op inout[i]`; only called when [`supports`](Self::supports).
    fn combine(op: SystemOp, input: &[Self], inout: &mut [Self]);
}

fn zip_with<T: Copy>(input: &[T], inout: &mut [T], f: impl Fn(T, T) -> T) {
    for (o, &i) in inout.iter_mut().zip(input) {
        *o = f(i, *o);
    }
}

macro_rules! builtin_int {
    ($($t:ty),*) => {$(
        impl Builtin for $t {
            const NAME: &'static str = stringify!($t);
            fn supports(_: SystemOp) -> bool {
                true
            }
            fn combine(op: SystemOp, input: &[Self], inout: &mut [Self]) {
                let b = |x: bool| if x { 1 } else { 0 };
                match op {
                    SystemOp::Sum => zip_with(input, inout, |a, c| a.wrapping_add(c)),
                    SystemOp::Prod => zip_with(input, inout, |a, c| a.wrapping_mul(c)),
                    SystemOp::Min => zip_with(input, inout, |a, c| a.min(c)),
                    SystemOp::Max => zip_with(input, inout, |a, c| a.max(c)),
                    SystemOp::BitAnd => zip_with(input, inout, |a, c| a & c),
                    SystemOp::BitOr => zip_with(input, inout, |a, c| a | c),
                    SystemOp::BitXor => zip_with(input, inout, |a, c| a ^ c),
                    SystemOp::LogicalAnd => zip_with(input, inout, |a, c| b(a != 0 && c != 0)),
                    SystemOp::LogicalOr => zip_with(input, inout, |a, c| b(a != 0 || c != 0)),
                    SystemOp::LogicalXor => zip_with(input, inout, |a, c| b((a != 0) != (c != 0))),
                }
            }
        }
    )*};
}
builtin_int!(u8, u16, u32, u64, u128, usize, i8, i16, i32, i64, i128, isize);

macro_rules! builtin_float {
    ($($t:ty),*) => {$(
        impl Builtin for $t {
            const NAME: &'static str = stringify!($t);
            fn supports(op: SystemOp) -> bool {
                !matches!(op, SystemOp::BitAnd | SystemOp::BitOr | SystemOp::BitXor)
            }
            fn combine(op: SystemOp, input: &[Self], inout: &mut [Self]) {
                let b = |x: bool| if x { 1.0 } else { 0.0 };
                match op {
                    SystemOp::Sum => zip_with(input, inout, |a, c| a + c),
                    SystemOp::Prod => zip_with(input, inout, |a, c| a * c),
                    // NaN-propagating order does not matter here: min/max of numbers.
                    SystemOp::Min => zip_with(input, inout, |a, c| a.min(c)),
                    SystemOp::Max => zip_with(input, inout, |a, c| a.max(c)),
                    SystemOp::LogicalAnd => zip_with(input, inout, |a, c| b(a != 0.0 && c != 0.0)),
                    SystemOp::LogicalOr => zip_with(input, inout, |a, c| b(a != 0.0 || c != 0.0)),
                    SystemOp::LogicalXor => {
                        zip_with(input, inout, |a, c| b((a != 0.0) != (c != 0.0)))
                    }
                    // Refused by `check` before any reduction starts.
                    SystemOp::BitAnd | SystemOp::BitOr | SystemOp::BitXor => {}
                }
            }
        }
    )*};
}
builtin_float!(f32, f64);

impl<T: Builtin> Operation<T> for SystemOp {
    fn apply(&self, input: &[T], inout: &mut [T]) {
        T::combine(*self, input, inout)
    }
    fn is_commutative(&self) -> bool {
        true
    }
    fn check(&self) -> Result<()> {
        if T::supports(*self) {
            Ok(())
        } else {
            Err(Error::InvalidOp {
                op: self.name(),
                ty: T::NAME,
            })
        }
    }
    fn native_op(&self) -> Option<NativeOp> {
        Some(match self {
            SystemOp::Sum => NativeOp::Sum,
            SystemOp::Prod => NativeOp::Prod,
            SystemOp::Min => NativeOp::Min,
            SystemOp::Max => NativeOp::Max,
            SystemOp::BitAnd => NativeOp::BitAnd,
            SystemOp::BitOr => NativeOp::BitOr,
            SystemOp::BitXor => NativeOp::BitXor,
            SystemOp::LogicalAnd => NativeOp::LogicalAnd,
            SystemOp::LogicalOr => NativeOp::LogicalOr,
            SystemOp::LogicalXor => NativeOp::LogicalXor,
        })
    }
}

/// A value and the index it came from, the element type of [`MinLoc`] and [`MaxLoc`]
/// (MPI's `MPI_2INT`, `MPI_DOUBLE_INT`, …). Implemented as [`Pod`] for the pairs that
/// have no padding: `V` and `I` of the same size.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, PartialOrd)]
pub struct ValueIndex<V, I> {
    /// The value compared.
    pub value: V,
    /// Where it came from (e.g. a rank or a position).
    pub index: I,
}

impl<V, I> ValueIndex<V, I> {
    /// A pair.
    pub fn new(value: V, index: I) -> Self {
        ValueIndex { value, index }
    }
}

macro_rules! value_index_pod {
    ($(($v:ty, $i:ty)),*) => {$(
        // SAFETY: `repr(C)` of two Pod fields of equal size and alignment has no
        // padding (checked below), so every bit pattern is valid and none is
        // uninitialized.
        unsafe impl Zeroable for ValueIndex<$v, $i> {}
        // SAFETY: as above.
        unsafe impl Pod for ValueIndex<$v, $i> {}
        const _: () = assert!(
            std::mem::size_of::<ValueIndex<$v, $i>>()
                == std::mem::size_of::<$v>() + std::mem::size_of::<$i>()
        );
    )*};
}
value_index_pod!(
    (i32, i32),
    (u32, u32),
    (f32, i32),
    (f32, u32),
    (i32, u32),
    (i64, i64),
    (u64, u64),
    (f64, i64),
    (f64, u64),
    (i64, u64)
);

/// MPI_MINLOC: the smallest value, and the smallest index among equal values.
#[derive(Clone, Copy, Debug, Default)]
pub struct MinLoc;

/// MPI_MAXLOC: the largest value, and the smallest index among equal values.
#[derive(Clone, Copy, Debug, Default)]
pub struct MaxLoc;

impl<V: PartialOrd + Copy, I: Ord + Copy> Operation<ValueIndex<V, I>> for MinLoc {
    fn apply(&self, input: &[ValueIndex<V, I>], inout: &mut [ValueIndex<V, I>]) {
        for (o, i) in inout.iter_mut().zip(input) {
            if i.value < o.value || (i.value == o.value && i.index < o.index) {
                *o = *i;
            }
        }
    }
    fn is_commutative(&self) -> bool {
        true
    }
}

impl<V: PartialOrd + Copy, I: Ord + Copy> Operation<ValueIndex<V, I>> for MaxLoc {
    fn apply(&self, input: &[ValueIndex<V, I>], inout: &mut [ValueIndex<V, I>]) {
        for (o, i) in inout.iter_mut().zip(input) {
            if i.value > o.value || (i.value == o.value && i.index < o.index) {
                *o = *i;
            }
        }
    }
    fn is_commutative(&self) -> bool {
        true
    }
}

/// A user-defined reduction from a closure `f(input, inout)` that must compute
/// `inout[i] = input[i] ∘ inout[i]` (MPI_Op_create).
#[derive(Clone, Copy, Debug)]
pub struct UserOp<F> {
    f: F,
    commutative: bool,
}

impl<F> UserOp<F> {
    /// A commutative operation: the algorithms may combine operands in any order.
    pub fn commutative(f: F) -> Self {
        UserOp {
            f,
            commutative: true,
        }
    }
    /// A non-commutative operation: operands are combined in rank order.
    pub fn non_commutative(f: F) -> Self {
        UserOp {
            f,
            commutative: false,
        }
    }
}

impl<T, F: Fn(&[T], &mut [T])> Operation<T> for UserOp<F> {
    fn apply(&self, input: &[T], inout: &mut [T]) {
        (self.f)(input, inout)
    }
    fn is_commutative(&self) -> bool {
        self.commutative
    }
}

/// `acc = acc ∘ incoming` for an `acc` that holds the lower ranks: computes into
/// `incoming` (the operation's output side) and swaps the two buffers, which avoids a
/// copy.
pub(crate) fn combine_low_into_acc<T>(
    op: &dyn Operation<T>,
    acc: &mut Vec<T>,
    incoming: &mut Vec<T>,
) {
    op.apply(acc, incoming);
    std::mem::swap(acc, incoming);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtins_on_ints_and_floats() {
        let mut x = [1i32, 5, -3];
        SystemOp::Max.apply(&[2, 4, -1], &mut x);
        assert_eq!(x, [2, 5, -1]);
        let mut f = [1.5f64, 2.0];
        SystemOp::Prod.apply(&[2.0, 0.5], &mut f);
        assert_eq!(f, [3.0, 1.0]);
        let mut l = [0u8, 3, 0];
        SystemOp::LogicalXor.apply(&[1, 1, 0], &mut l);
        assert_eq!(l, [1, 0, 0]);
        assert!(Operation::<f32>::check(&SystemOp::BitAnd).is_err());
        assert!(Operation::<u32>::check(&SystemOp::BitAnd).is_ok());
    }

    #[test]
    fn minloc_maxloc_break_ties_by_index() {
        let a = [ValueIndex::new(1.0f64, 3u64), ValueIndex::new(5.0, 9)];
        let mut b = [ValueIndex::new(1.0f64, 2u64), ValueIndex::new(5.0, 1)];
        MinLoc.apply(&a, &mut b);
        assert_eq!(b[0], ValueIndex::new(1.0, 2));
        let mut c = [ValueIndex::new(0.0f64, 0u64), ValueIndex::new(5.0, 4)];
        MaxLoc.apply(&a, &mut c);
        assert_eq!(c, [ValueIndex::new(1.0, 3), ValueIndex::new(5.0, 4)]);
    }
}
