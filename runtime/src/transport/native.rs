//! The backend's own collectives, for backends that have them (the `mpi` backend).
//!
//! dsmpi's collectives are written on point-to-point and run on every backend. A
//! backend over a real MPI library can also offer MPI's own collectives, so that one
//! program can compare both on the same network (`Native` in each algorithm enum of
//! `dsmpi-collectives`). [`Transport::native`](super::Transport::native) returns them,
//! or `None` on backends without them (TCP mesh, local threads).
//!
//! This trait is feature-independent and byte-level: the collectives crate checks and
//! converts typed arguments, then hands bytes, counts and a [`NativeScope`] naming the
//! dsmpi communicator over. Every method is collective over the scope's members, in
//! the order the dsmpi collectives are called (the same rule as for dsmpi's own).

use crate::error::Result;

/// The dsmpi communicator a native collective runs on.
#[derive(Clone, Copy, Debug)]
pub struct NativeScope<'a> {
    /// The communicator's context (as carried by its messages): the backend keys its
    /// own communicator for this group on it.
    pub ctx: u64,
    /// World rank of each member, in communicator rank order.
    pub members: &'a [usize],
}

/// A built-in reduction a backend can run natively.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NativeOp {
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
    /// Logical AND (integers only).
    LogicalAnd,
    /// Logical OR (integers only).
    LogicalOr,
    /// Logical XOR (integers only).
    LogicalXor,
}

/// A primitive element type a backend can reduce natively.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NativeKind {
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
    /// `f32`
    F32,
    /// `f64`
    F64,
}

impl NativeKind {
    /// Size of one element in bytes.
    pub fn size(self) -> usize {
        match self {
            NativeKind::U8 | NativeKind::I8 => 1,
            NativeKind::U16 | NativeKind::I16 => 2,
            NativeKind::U32 | NativeKind::I32 | NativeKind::F32 => 4,
            NativeKind::U64 | NativeKind::I64 | NativeKind::F64 => 8,
        }
    }

    /// Whether the kind is a floating-point type (bitwise and logical reductions are
    /// not defined on those, in MPI as in dsmpi).
    pub fn is_float(self) -> bool {
        matches!(self, NativeKind::F32 | NativeKind::F64)
    }

    /// The kind of `T`, when `T` is one of the supported primitives.
    pub fn of<T: 'static>() -> Option<NativeKind> {
        use std::any::TypeId;
        let t = TypeId::of::<T>();
        let table = [
            (TypeId::of::<u8>(), NativeKind::U8),
            (TypeId::of::<i8>(), NativeKind::I8),
            (TypeId::of::<u16>(), NativeKind::U16),
            (TypeId::of::<i16>(), NativeKind::I16),
            (TypeId::of::<u32>(), NativeKind::U32),
            (TypeId::of::<i32>(), NativeKind::I32),
            (TypeId::of::<u64>(), NativeKind::U64),
            (TypeId::of::<i64>(), NativeKind::I64),
            (TypeId::of::<f32>(), NativeKind::F32),
            (TypeId::of::<f64>(), NativeKind::F64),
        ];
        table.iter().find(|(id, _)| *id == t).map(|&(_, k)| k)
    }
}

/// A backend's own collectives on byte buffers (see the module documentation).
///
/// Every method is collective over `scope.members` and blocks until this rank's part
/// is done. Lengths are in bytes and must agree across ranks as MPI requires; the
/// implementation checks what it can see locally (so that it never reads or writes
/// past a buffer) and reports the rest as the backend does.
pub trait NativeCollectives: Send + Sync + std::fmt::Debug {
    /// Blocks until every member has entered (MPI_Barrier).
    fn barrier(&self, scope: NativeScope<'_>) -> Result<()>;

    /// Copies the root's `buf` (root: communicator rank) into every member's `buf`
    /// (MPI_Bcast).
    fn bcast(&self, scope: NativeScope<'_>, root: usize, buf: &mut [u8]) -> Result<()>;

    /// Every member's `recv` gets the element-wise reduction of all `send`s, read as
    /// elements of `kind` (MPI_Allreduce). `send` and `recv` have the same length, a
    /// whole number of elements.
    fn allreduce(
        &self,
        scope: NativeScope<'_>,
        op: NativeOp,
        kind: NativeKind,
        send: &[u8],
        recv: &mut [u8],
    ) -> Result<()>;

    /// Block j of this rank's `send` becomes block (this rank) of member j's `recv`
    /// (MPI_Alltoall); both hold one equal block per member.
    fn alltoall(&self, scope: NativeScope<'_>, send: &[u8], recv: &mut [u8]) -> Result<()>;

    /// Every member's `send` lands at block r of the root's `recv`, which holds one
    /// `send.len()` block per member (MPI_Gather); `recv` is ignored elsewhere.
    fn gather(
        &self,
        scope: NativeScope<'_>,
        root: usize,
        send: &[u8],
        recv: &mut [u8],
    ) -> Result<()>;

    /// Block r of the root's `send` (one `recv.len()` block per member) lands in
    /// member r's `recv` (MPI_Scatter); `send` is ignored elsewhere.
    fn scatter(
        &self,
        scope: NativeScope<'_>,
        root: usize,
        send: &[u8],
        recv: &mut [u8],
    ) -> Result<()>;

    /// The root's `recv` gets the element-wise reduction of all `send`s, read as
    /// elements of `kind` (MPI_Reduce). At the root `recv` has `send.len()` bytes;
    /// elsewhere it is ignored.
    fn reduce(
        &self,
        scope: NativeScope<'_>,
        root: usize,
        op: NativeOp,
        kind: NativeKind,
        send: &[u8],
        recv: &mut [u8],
    ) -> Result<()>;

    /// Every member's `send` lands at block r of every member's `recv`, which holds
    /// one `send.len()` block per member (MPI_Allgather).
    fn allgather(&self, scope: NativeScope<'_>, send: &[u8], recv: &mut [u8]) -> Result<()>;

    /// Prefix reduction (MPI_Scan, or MPI_Exscan when `exclusive`): member r's `recv`
    /// gets the reduction of the `send`s of members 0..=r (0..r when `exclusive`).
    /// With `exclusive`, member 0's `recv` is left as it was.
    fn scan(
        &self,
        scope: NativeScope<'_>,
        op: NativeOp,
        kind: NativeKind,
        exclusive: bool,
        send: &[u8],
        recv: &mut [u8],
    ) -> Result<()>;

    /// Member r's `send` lands at `recv[displs[r]..][..counts[r]]` of the root
    /// (MPI_Gatherv; bytes). `recv`, `counts` and `displs` are read at the root only.
    #[allow(clippy::too_many_arguments)]
    fn gatherv(
        &self,
        scope: NativeScope<'_>,
        root: usize,
        send: &[u8],
        recv: &mut [u8],
        counts: &[usize],
        displs: &[usize],
    ) -> Result<()>;

    /// Member r's `recv` (exactly `counts[r]` bytes) gets the root's
    /// `send[displs[r]..][..counts[r]]` (MPI_Scatterv). `send`, `counts` and
    /// `displs` are read at the root only.
    #[allow(clippy::too_many_arguments)]
    fn scatterv(
        &self,
        scope: NativeScope<'_>,
        root: usize,
        send: &[u8],
        counts: &[usize],
        displs: &[usize],
        recv: &mut [u8],
    ) -> Result<()>;

    /// Member r's `send` (`counts[r]` bytes) lands at `recv[displs[r]..][..counts[r]]`
    /// of every member (MPI_Allgatherv); every member passes the same `counts` and
    /// `displs`.
    fn allgatherv(
        &self,
        scope: NativeScope<'_>,
        send: &[u8],
        recv: &mut [u8],
        counts: &[usize],
        displs: &[usize],
    ) -> Result<()>;

    /// `send[sdispls[j]..][..scounts[j]]` of member i lands at
    /// `recv[rdispls[i]..][..rcounts[i]]` of member j (MPI_Alltoallv; bytes).
    #[allow(clippy::too_many_arguments)]
    fn alltoallv(
        &self,
        scope: NativeScope<'_>,
        send: &[u8],
        scounts: &[usize],
        sdispls: &[usize],
        recv: &mut [u8],
        rcounts: &[usize],
        rdispls: &[usize],
    ) -> Result<()>;
}
