//! The [`Collectives`] extension trait: the public face of every operation.

use bytemuck::Pod;
use dsmpi_runtime::Communicator;

use crate::allgather::{self, Allgather, Allgatherv};
use crate::allreduce::{self, Allreduce};
use crate::alltoall::{self, Alltoall, Alltoallv};
use crate::barrier::{self, Barrier};
use crate::bcast::{self, Bcast};
use crate::error::Result;
use crate::gather::{self, Gather};
use crate::op::Operation;
use crate::reduce::{self, Reduce};
use crate::reduce_scatter::{self, ReduceScatter};
use crate::scan::{self, Scan};
use crate::scatter::{self, Scatter};

fn bytes<T: Pod>(x: &[T]) -> &[u8] {
    bytemuck::cast_slice(x)
}

fn bytes_mut<T: Pod>(x: &mut [T]) -> &mut [u8] {
    bytemuck::cast_slice_mut(x)
}

fn scaled<T>(v: &[usize]) -> Vec<usize> {
    v.iter().map(|x| x * std::mem::size_of::<T>()).collect()
}

/// Collective operations on a communicator (rsmpi-like names).
///
/// All ranks of the communicator must call the same operations in the same order.
/// Buffer conventions follow MPI: arguments marked "root only" are ignored elsewhere
/// (pass empty slices); counts and displacements are in elements. Each `*_into` form
/// lets the operation's decision function pick the algorithm; each `*_with` form
/// forces one (tests, benchmarks, and users who know better).
pub trait Collectives {
    /// Blocks until every rank has entered the barrier (MPI_Barrier).
    fn barrier(&self) -> Result<()>;
    /// [`barrier`](Self::barrier) with a chosen algorithm.
    fn barrier_with(&self, alg: Barrier) -> Result<()>;

    /// Copies the root's `buf` into every rank's `buf` (MPI_Bcast). All ranks pass
    /// buffers of the same length.
    fn broadcast_into<T: Pod>(&self, root: usize, buf: &mut [T]) -> Result<()>;
    /// [`broadcast_into`](Self::broadcast_into) with a chosen algorithm.
    fn broadcast_with<T: Pod>(&self, alg: Bcast, root: usize, buf: &mut [T]) -> Result<()>;

    /// Block r (of `recv.len()` elements) of the root's `send` goes to rank r's `recv`
    /// (MPI_Scatter). `send` is read at the root only and holds p blocks.
    fn scatter_into<T: Pod>(&self, root: usize, send: &[T], recv: &mut [T]) -> Result<()>;
    /// [`scatter_into`](Self::scatter_into) with a chosen algorithm.
    fn scatter_with<T: Pod>(
        &self,
        alg: Scatter,
        root: usize,
        send: &[T],
        recv: &mut [T],
    ) -> Result<()>;
    /// Rank r gets `send[displs[r]..][..counts[r]]` into its `recv`, which is exactly
    /// `counts[r]` long (MPI_Scatterv). `send`, `counts`, `displs`: root only.
    fn scatterv_into<T: Pod>(
        &self,
        root: usize,
        send: &[T],
        counts: &[usize],
        displs: &[usize],
        recv: &mut [T],
    ) -> Result<()>;
    /// [`scatterv_into`](Self::scatterv_into) with a chosen algorithm.
    #[allow(clippy::too_many_arguments)]
    fn scatterv_with<T: Pod>(
        &self,
        alg: Scatter,
        root: usize,
        send: &[T],
        counts: &[usize],
        displs: &[usize],
        recv: &mut [T],
    ) -> Result<()>;

    /// Every rank's `send` lands at block r of the root's `recv` (MPI_Gather).
    /// `recv` (p blocks) is written at the root only.
    fn gather_into<T: Pod>(&self, root: usize, send: &[T], recv: &mut [T]) -> Result<()>;
    /// [`gather_into`](Self::gather_into) with a chosen algorithm.
    fn gather_with<T: Pod>(
        &self,
        alg: Gather,
        root: usize,
        send: &[T],
        recv: &mut [T],
    ) -> Result<()>;
    /// Rank r's `send` lands at `recv[displs[r]..][..counts[r]]` of the root
    /// (MPI_Gatherv). `recv`, `counts`, `displs`: root only.
    fn gatherv_into<T: Pod>(
        &self,
        root: usize,
        send: &[T],
        recv: &mut [T],
        counts: &[usize],
        displs: &[usize],
    ) -> Result<()>;
    /// [`gatherv_into`](Self::gatherv_into) with a chosen algorithm.
    #[allow(clippy::too_many_arguments)]
    fn gatherv_with<T: Pod>(
        &self,
        alg: Gather,
        root: usize,
        send: &[T],
        recv: &mut [T],
        counts: &[usize],
        displs: &[usize],
    ) -> Result<()>;

    /// Every rank's `send` lands at block r of every rank's `recv` (MPI_Allgather).
    fn all_gather_into<T: Pod>(&self, send: &[T], recv: &mut [T]) -> Result<()>;
    /// [`all_gather_into`](Self::all_gather_into) with a chosen algorithm.
    fn all_gather_with<T: Pod>(&self, alg: Allgather, send: &[T], recv: &mut [T]) -> Result<()>;
    /// Rank r's `send` (`counts[r]` elements) lands at `recv[displs[r]..][..counts[r]]`
    /// of every rank (MPI_Allgatherv); every rank passes the same `counts` and
    /// `displs`.
    fn all_gather_v_into<T: Pod>(
        &self,
        send: &[T],
        recv: &mut [T],
        counts: &[usize],
        displs: &[usize],
    ) -> Result<()>;
    /// [`all_gather_v_into`](Self::all_gather_v_into) with a chosen algorithm.
    fn all_gather_v_with<T: Pod>(
        &self,
        alg: Allgatherv,
        send: &[T],
        recv: &mut [T],
        counts: &[usize],
        displs: &[usize],
    ) -> Result<()>;

    /// Block j of rank i's `send` becomes block i of rank j's `recv` (MPI_Alltoall);
    /// both hold p equal blocks.
    fn all_to_all_into<T: Pod>(&self, send: &[T], recv: &mut [T]) -> Result<()>;
    /// [`all_to_all_into`](Self::all_to_all_into) with a chosen algorithm.
    fn all_to_all_with<T: Pod>(&self, alg: Alltoall, send: &[T], recv: &mut [T]) -> Result<()>;
    /// `send[sdispls[j]..][..scounts[j]]` of rank i lands at
    /// `recv[rdispls[i]..][..rcounts[i]]` of rank j (MPI_Alltoallv).
    #[allow(clippy::too_many_arguments)]
    fn all_to_all_v_into<T: Pod>(
        &self,
        send: &[T],
        scounts: &[usize],
        sdispls: &[usize],
        recv: &mut [T],
        rcounts: &[usize],
        rdispls: &[usize],
    ) -> Result<()>;
    /// [`all_to_all_v_into`](Self::all_to_all_v_into) with a chosen algorithm.
    #[allow(clippy::too_many_arguments)]
    fn all_to_all_v_with<T: Pod>(
        &self,
        alg: Alltoallv,
        send: &[T],
        scounts: &[usize],
        sdispls: &[usize],
        recv: &mut [T],
        rcounts: &[usize],
        rdispls: &[usize],
    ) -> Result<()>;

    /// The root's `recv` gets `send(0) ∘ send(1) ∘ … ∘ send(p−1)` element-wise
    /// (MPI_Reduce); `recv` (same length as `send`) is written at the root only.
    fn reduce_into<T: Pod, O: Operation<T>>(
        &self,
        root: usize,
        send: &[T],
        recv: &mut [T],
        op: O,
    ) -> Result<()>;
    /// [`reduce_into`](Self::reduce_into) with a chosen algorithm.
    fn reduce_with<T: Pod, O: Operation<T>>(
        &self,
        alg: Reduce,
        root: usize,
        send: &[T],
        recv: &mut [T],
        op: O,
    ) -> Result<()>;

    /// Every rank's `recv` gets the reduction of all `send`s (MPI_Allreduce).
    fn all_reduce_into<T: Pod, O: Operation<T>>(
        &self,
        send: &[T],
        recv: &mut [T],
        op: O,
    ) -> Result<()>;
    /// [`all_reduce_into`](Self::all_reduce_into) with a chosen algorithm.
    fn all_reduce_with<T: Pod, O: Operation<T>>(
        &self,
        alg: Allreduce,
        send: &[T],
        recv: &mut [T],
        op: O,
    ) -> Result<()>;

    /// Rank r's `recv` gets block r of the reduction of all `send`s, which hold p
    /// blocks of `recv.len()` (MPI_Reduce_scatter_block).
    fn reduce_scatter_block_into<T: Pod, O: Operation<T>>(
        &self,
        send: &[T],
        recv: &mut [T],
        op: O,
    ) -> Result<()>;
    /// [`reduce_scatter_block_into`](Self::reduce_scatter_block_into) with a chosen
    /// algorithm.
    fn reduce_scatter_block_with<T: Pod, O: Operation<T>>(
        &self,
        alg: ReduceScatter,
        send: &[T],
        recv: &mut [T],
        op: O,
    ) -> Result<()>;

    /// Rank r's `recv` gets `send(0) ∘ … ∘ send(r)` (MPI_Scan).
    fn scan_into<T: Pod, O: Operation<T>>(&self, send: &[T], recv: &mut [T], op: O) -> Result<()>;
    /// [`scan_into`](Self::scan_into) with a chosen algorithm.
    fn scan_with<T: Pod, O: Operation<T>>(
        &self,
        alg: Scan,
        send: &[T],
        recv: &mut [T],
        op: O,
    ) -> Result<()>;
    /// Rank r > 0 gets `send(0) ∘ … ∘ send(r−1)`; rank 0's `recv` is left untouched
    /// (MPI_Exscan).
    fn exclusive_scan_into<T: Pod, O: Operation<T>>(
        &self,
        send: &[T],
        recv: &mut [T],
        op: O,
    ) -> Result<()>;
    /// [`exclusive_scan_into`](Self::exclusive_scan_into) with a chosen algorithm.
    fn exclusive_scan_with<T: Pod, O: Operation<T>>(
        &self,
        alg: Scan,
        send: &[T],
        recv: &mut [T],
        op: O,
    ) -> Result<()>;
}

impl Collectives for Communicator {
    fn barrier(&self) -> Result<()> {
        self.barrier_with(Barrier::choose(self.size()))
    }
    fn barrier_with(&self, alg: Barrier) -> Result<()> {
        barrier::run(&self.library(), alg)
    }

    fn broadcast_into<T: Pod>(&self, root: usize, buf: &mut [T]) -> Result<()> {
        let alg = Bcast::choose(std::mem::size_of_val(buf), self.size());
        self.broadcast_with(alg, root, buf)
    }
    fn broadcast_with<T: Pod>(&self, alg: Bcast, root: usize, buf: &mut [T]) -> Result<()> {
        bcast::run(&self.library(), alg, root, bytes_mut(buf))
    }

    fn scatter_into<T: Pod>(&self, root: usize, send: &[T], recv: &mut [T]) -> Result<()> {
        let alg = Scatter::choose(std::mem::size_of_val(recv), self.size());
        self.scatter_with(alg, root, send, recv)
    }
    fn scatter_with<T: Pod>(
        &self,
        alg: Scatter,
        root: usize,
        send: &[T],
        recv: &mut [T],
    ) -> Result<()> {
        scatter::run(&self.library(), alg, root, bytes(send), bytes_mut(recv))
    }
    fn scatterv_into<T: Pod>(
        &self,
        root: usize,
        send: &[T],
        counts: &[usize],
        displs: &[usize],
        recv: &mut [T],
    ) -> Result<()> {
        // Only the root knows the counts, and every rank must pick the same algorithm
        // without communicating, so the choice cannot depend on sizes: linear, which
        // moves no byte twice.
        self.scatterv_with(Scatter::Linear, root, send, counts, displs, recv)
    }
    fn scatterv_with<T: Pod>(
        &self,
        alg: Scatter,
        root: usize,
        send: &[T],
        counts: &[usize],
        displs: &[usize],
        recv: &mut [T],
    ) -> Result<()> {
        let s = std::mem::size_of::<T>();
        scatter::run_v(
            &self.library(),
            alg,
            root,
            bytes(send),
            &scaled::<T>(counts),
            &scaled::<T>(displs),
            bytes_mut(recv),
        )
        .map_err(|e| per_elem(e, s))
    }

    fn gather_into<T: Pod>(&self, root: usize, send: &[T], recv: &mut [T]) -> Result<()> {
        let alg = Gather::choose(std::mem::size_of_val(send), self.size());
        self.gather_with(alg, root, send, recv)
    }
    fn gather_with<T: Pod>(
        &self,
        alg: Gather,
        root: usize,
        send: &[T],
        recv: &mut [T],
    ) -> Result<()> {
        gather::run(&self.library(), alg, root, bytes(send), bytes_mut(recv))
    }
    fn gatherv_into<T: Pod>(
        &self,
        root: usize,
        send: &[T],
        recv: &mut [T],
        counts: &[usize],
        displs: &[usize],
    ) -> Result<()> {
        // As for scatterv: no rank but the root knows the sizes, so the choice is fixed.
        self.gatherv_with(Gather::Linear, root, send, recv, counts, displs)
    }
    fn gatherv_with<T: Pod>(
        &self,
        alg: Gather,
        root: usize,
        send: &[T],
        recv: &mut [T],
        counts: &[usize],
        displs: &[usize],
    ) -> Result<()> {
        let s = std::mem::size_of::<T>();
        gather::run_v(
            &self.library(),
            alg,
            root,
            bytes(send),
            bytes_mut(recv),
            &scaled::<T>(counts),
            &scaled::<T>(displs),
        )
        .map_err(|e| per_elem(e, s))
    }

    fn all_gather_into<T: Pod>(&self, send: &[T], recv: &mut [T]) -> Result<()> {
        let alg = Allgather::choose(std::mem::size_of_val(recv), self.size());
        self.all_gather_with(alg, send, recv)
    }
    fn all_gather_with<T: Pod>(&self, alg: Allgather, send: &[T], recv: &mut [T]) -> Result<()> {
        allgather::run(&self.library(), alg, bytes(send), bytes_mut(recv))
    }
    fn all_gather_v_into<T: Pod>(
        &self,
        send: &[T],
        recv: &mut [T],
        counts: &[usize],
        displs: &[usize],
    ) -> Result<()> {
        let alg = Allgatherv::choose(std::mem::size_of_val(recv), self.size());
        self.all_gather_v_with(alg, send, recv, counts, displs)
    }
    fn all_gather_v_with<T: Pod>(
        &self,
        alg: Allgatherv,
        send: &[T],
        recv: &mut [T],
        counts: &[usize],
        displs: &[usize],
    ) -> Result<()> {
        let s = std::mem::size_of::<T>();
        allgather::run_v(
            &self.library(),
            alg,
            bytes(send),
            bytes_mut(recv),
            &scaled::<T>(counts),
            &scaled::<T>(displs),
        )
        .map_err(|e| per_elem(e, s))
    }

    fn all_to_all_into<T: Pod>(&self, send: &[T], recv: &mut [T]) -> Result<()> {
        let alg = Alltoall::choose(std::mem::size_of_val(send) / self.size(), self.size());
        self.all_to_all_with(alg, send, recv)
    }
    fn all_to_all_with<T: Pod>(&self, alg: Alltoall, send: &[T], recv: &mut [T]) -> Result<()> {
        if send.len() / self.size() * self.size() != send.len() {
            return Err(crate::Error::InvalidArgument(format!(
                "alltoall: a send buffer of {} elements is not {} equal blocks",
                send.len(),
                self.size()
            )));
        }
        alltoall::run(&self.library(), alg, bytes(send), bytes_mut(recv))
    }
    fn all_to_all_v_into<T: Pod>(
        &self,
        send: &[T],
        scounts: &[usize],
        sdispls: &[usize],
        recv: &mut [T],
        rcounts: &[usize],
        rdispls: &[usize],
    ) -> Result<()> {
        // Each rank decides alone, and both algorithms interoperate only with
        // themselves: the choice must be the same everywhere, so it is fixed.
        self.all_to_all_v_with(
            Alltoallv::Linear,
            send,
            scounts,
            sdispls,
            recv,
            rcounts,
            rdispls,
        )
    }
    fn all_to_all_v_with<T: Pod>(
        &self,
        alg: Alltoallv,
        send: &[T],
        scounts: &[usize],
        sdispls: &[usize],
        recv: &mut [T],
        rcounts: &[usize],
        rdispls: &[usize],
    ) -> Result<()> {
        let s = std::mem::size_of::<T>();
        alltoall::run_v(
            &self.library(),
            alg,
            bytes(send),
            &scaled::<T>(scounts),
            &scaled::<T>(sdispls),
            bytes_mut(recv),
            &scaled::<T>(rcounts),
            &scaled::<T>(rdispls),
        )
        .map_err(|e| per_elem(e, s))
    }

    fn reduce_into<T: Pod, O: Operation<T>>(
        &self,
        root: usize,
        send: &[T],
        recv: &mut [T],
        op: O,
    ) -> Result<()> {
        let alg = Reduce::choose(std::mem::size_of_val(send), self.size());
        self.reduce_with(alg, root, send, recv, op)
    }
    fn reduce_with<T: Pod, O: Operation<T>>(
        &self,
        alg: Reduce,
        root: usize,
        send: &[T],
        recv: &mut [T],
        op: O,
    ) -> Result<()> {
        if self.rank() == root {
            crate::util::check_len("reduce", "recv", recv.len(), send.len())?;
        }
        if let Some(res) = reduce::run(&self.library(), alg, root, send, &op)? {
            recv.copy_from_slice(&res);
        }
        Ok(())
    }

    fn all_reduce_into<T: Pod, O: Operation<T>>(
        &self,
        send: &[T],
        recv: &mut [T],
        op: O,
    ) -> Result<()> {
        let alg = Allreduce::choose(std::mem::size_of_val(send), self.size());
        self.all_reduce_with(alg, send, recv, op)
    }
    fn all_reduce_with<T: Pod, O: Operation<T>>(
        &self,
        alg: Allreduce,
        send: &[T],
        recv: &mut [T],
        op: O,
    ) -> Result<()> {
        allreduce::run(&self.library(), alg, send, recv, &op)
    }

    fn reduce_scatter_block_into<T: Pod, O: Operation<T>>(
        &self,
        send: &[T],
        recv: &mut [T],
        op: O,
    ) -> Result<()> {
        let alg = ReduceScatter::choose(std::mem::size_of_val(recv), self.size());
        self.reduce_scatter_block_with(alg, send, recv, op)
    }
    fn reduce_scatter_block_with<T: Pod, O: Operation<T>>(
        &self,
        alg: ReduceScatter,
        send: &[T],
        recv: &mut [T],
        op: O,
    ) -> Result<()> {
        reduce_scatter::run(&self.library(), alg, send, recv, &op)
    }

    fn scan_into<T: Pod, O: Operation<T>>(&self, send: &[T], recv: &mut [T], op: O) -> Result<()> {
        let alg = Scan::choose(std::mem::size_of_val(send), self.size());
        self.scan_with(alg, send, recv, op)
    }
    fn scan_with<T: Pod, O: Operation<T>>(
        &self,
        alg: Scan,
        send: &[T],
        recv: &mut [T],
        op: O,
    ) -> Result<()> {
        scan::run(&self.library(), alg, send, recv, &op, false)
    }
    fn exclusive_scan_into<T: Pod, O: Operation<T>>(
        &self,
        send: &[T],
        recv: &mut [T],
        op: O,
    ) -> Result<()> {
        let alg = Scan::choose(std::mem::size_of_val(send), self.size());
        self.exclusive_scan_with(alg, send, recv, op)
    }
    fn exclusive_scan_with<T: Pod, O: Operation<T>>(
        &self,
        alg: Scan,
        send: &[T],
        recv: &mut [T],
        op: O,
    ) -> Result<()> {
        scan::run(&self.library(), alg, send, recv, &op, true)
    }
}

/// Byte lengths in the v-variants' errors are reported in elements, as the caller
/// gave them.
fn per_elem(e: crate::Error, size: usize) -> crate::Error {
    match e {
        crate::Error::BufferLength {
            op,
            what,
            expected,
            got,
        } if size > 0 => crate::Error::BufferLength {
            op,
            what,
            expected: expected / size,
            got: got / size,
        },
        other => other,
    }
}
