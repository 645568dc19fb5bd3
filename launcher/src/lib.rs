//! The dsmpi launcher: everything between the user's shell and the ranks' first
//! `DSMPI_*` environment read.
//!
//! This crate owns starting a job, not running it: `dsmexec` (the `mpirun` of dsmpi)
//! parses the command line, starts N ranks with their bootstrap environment, serves
//! the PMI rendezvous they connect to, forwards their output a line at a time, and
//! turns how they end into one exit code, making sure no process of the job survives
//! it. `dsmwrap` is the small per-rank bootstrap. The wire contract with the ranks
//! (variable names, PMI frames, the job token) lives in `dsmpi_runtime::bootstrap`,
//! which the runtime side implements; nothing here is linked into ranks.
//!
//! Modules, from the command line inwards:
//! - [`cli`]: the `dsmexec` command line;
//! - [`hostfile`]: hostfiles, `--host`, Slurm allocations, rank placement;
//! - [`job`]: the event loop and the exit-code policy;
//! - [`remote`]: dsmexec's end of the link to each remote host's daemon;
//! - [`daemon`]: `dsmwrap --daemon`, the per-host bootstrap a launch agent starts;
//! - [`proto`]: the framed protocol between the two;
//! - [`ship`]: `--ship`, the private content-addressed program cache;
//! - [`agent`]: the ranks of one host (spawn, output pipes, reap, kill), used by
//!   dsmexec for its own host and by each daemon for its host;
//! - [`pmi`]: the PMI rendezvous server;
//! - [`output`]: whole-line output forwarding;
//! - [`wrap`]: `dsmwrap`'s environment check;
//! - [`error`]: launcher errors and their exit codes.

#![warn(missing_docs)]

pub mod agent;
pub mod cli;
pub mod daemon;
pub mod error;
pub mod hostfile;
pub mod job;
pub mod output;
pub mod pmi;
pub mod proto;
pub mod remote;
pub mod ship;
pub mod wrap;
