//! Starting and ending the runtime: [`init`], [`Universe`], and [`run_local`].

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::bootstrap::{self, JobToken, PmiMsg};
use crate::comm::Communicator;
use crate::error::{Error, Result};
use crate::transport::engine::{Engine, EngineConfig};
use crate::transport::shm;
use crate::transport::{local, tcp, Transport};

static INITIALIZED: AtomicBool = AtomicBool::new(false);

/// The runtime of one process: its world and its link to the launcher.
///
/// Dropping it finalizes: pending frames are flushed, every peer is told goodbye and
/// heard from, links are closed, and the launcher learns this rank ended cleanly.
/// If the drop happens while the thread panics, the rank aborts instead: its links
/// are torn down at once so that peers fail fast rather than wait for it.
#[derive(Debug)]
pub struct Universe {
    world: Communicator,
    transport: Arc<dyn Transport>,
    pmi: Option<Mutex<TcpStream>>,
    endpoint: Option<SocketAddr>,
    done: AtomicBool,
}

fn env_num(var: &str) -> Result<Option<usize>> {
    match std::env::var(var) {
        Err(_) => Ok(None),
        Ok(v) => v
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| Error::Bootstrap(format!("{var}={v:?} is not a number"))),
    }
}

fn env_required(var: &str) -> Result<String> {
    std::env::var(var).map_err(|_| {
        Error::Bootstrap(format!(
            "{var} is not set: start the program with dsmexec (or without any DSMPI_* variable to run one rank)"
        ))
    })
}

fn env_secs(var: &str, default: f64) -> Duration {
    let s = std::env::var(var)
        .ok()
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s > 0.0)
        .unwrap_or(default);
    Duration::from_secs_f64(s)
}

/// This machine's host name.
pub fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".to_string())
}

/// Starts the runtime in a process launched by `dsmexec` (or alone, as a world of
/// one rank, when no launcher variables are set).
///
/// ```no_run
/// let universe = dsmpi_runtime::init().expect("dsmpi start-up");
/// let world = universe.world();
/// println!("rank {} of {} on {}", world.rank(), world.size(), world.processor_name());
/// ```
pub fn init() -> Result<Universe> {
    if INITIALIZED.swap(true, Ordering::SeqCst) {
        return Err(Error::AlreadyInitialized);
    }
    let r = init_inner();
    if r.is_err() {
        INITIALIZED.store(false, Ordering::SeqCst);
    }
    r
}

/// Environment variables that MPI launchers set in every process they start, and the
/// launcher each one reveals, in the order they are looked for.
pub const MPI_LAUNCHER_VARS: [(&str, &str); 3] = [
    ("OMPI_COMM_WORLD_RANK", "Open MPI's mpirun"),
    ("PMI_RANK", "an MPICH/Hydra mpiexec (PMI)"),
    (
        "PMIX_RANK",
        "a PMIx launcher (Open MPI 5, Slurm srun --mpi=pmix)",
    ),
];

/// Which transport [`init`] starts, decided from the environment alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendChoice {
    /// No launcher variable: a world of one rank.
    Singleton,
    /// `DSMPI_RANK` is set: dsmexec started this process; dsmpi's TCP mesh.
    Dsmexec,
    /// An MPI launcher started this process (the variable that says so): the `mpi`
    /// transport.
    Mpi(&'static str),
}

/// Decides the backend from environment lookups (`get(name)`), without side effects.
///
/// `DSMPI_RANK` wins over MPI's variables: a process started by `dsmexec` that itself
/// runs under an MPI launcher (`mpirun -n 1 dsmexec -n 4 prog`) inherits both, and its
/// nearest launcher is dsmexec. Without the `mpi` feature, a process started by an MPI
/// launcher gets a [`Error::Bootstrap`] that says to rebuild with `--features mpi`:
/// running on silently as a world of one would make `mpirun -n 4 prog` four unrelated
/// one-rank jobs.
pub fn choose_backend(get: impl Fn(&str) -> Option<String>) -> Result<BackendChoice> {
    if get(bootstrap::ENV_RANK).is_some() {
        return Ok(BackendChoice::Dsmexec);
    }
    let Some(&(var, who)) = MPI_LAUNCHER_VARS.iter().find(|(v, _)| get(v).is_some()) else {
        return Ok(BackendChoice::Singleton);
    };
    if cfg!(feature = "mpi") {
        Ok(BackendChoice::Mpi(var))
    } else {
        Err(Error::Bootstrap(format!(
            "this program was started by {who} ({var} is set), but this build of dsmpi has no \
             MPI backend: rebuild with `--features mpi` (needs an MPI library, e.g. Debian's \
             libopenmpi-dev, plus libclang-dev and pkg-config), or launch it with \
             `dsmexec -n N program`"
        )))
    }
}

fn init_inner() -> Result<Universe> {
    match choose_backend(|v| std::env::var(v).ok())? {
        #[cfg(feature = "mpi")]
        BackendChoice::Mpi(_) => {
            let t: Arc<dyn Transport> = Arc::new(crate::transport::mpi::MpiTransport::init()?);
            return Ok(Universe::assemble(t, None, None));
        }
        #[cfg(not(feature = "mpi"))]
        BackendChoice::Mpi(var) => {
            // choose_backend only picks MPI with the feature on.
            return Err(Error::Bootstrap(format!(
                "{var} is set but this build has no MPI backend"
            )));
        }
        BackendChoice::Singleton | BackendChoice::Dsmexec => {}
    }
    let Some(rank) = env_num(bootstrap::ENV_RANK)? else {
        // A singleton: no launcher, a world of one.
        let engine = Engine::new(
            0,
            vec![None],
            vec![hostname()],
            "self",
            EngineConfig::from_env(1),
            None,
        )?;
        return Ok(Universe::assemble(Arc::new(engine), None, None));
    };
    let size = env_num(bootstrap::ENV_SIZE)?
        .ok_or_else(|| Error::Bootstrap(format!("{} is not set", bootstrap::ENV_SIZE)))?;
    if size == 0 || rank >= size {
        return Err(Error::Bootstrap(format!(
            "rank {rank} is out of range for a job of {size} ranks"
        )));
    }
    let local_size = env_num(bootstrap::ENV_LOCAL_SIZE)?.unwrap_or(size);
    let cfg = EngineConfig::from_env(local_size);
    if size == 1 && std::env::var(bootstrap::ENV_PMI_ADDR).is_err() {
        let engine = Engine::new(0, vec![None], vec![hostname()], "self", cfg, None)?;
        return Ok(Universe::assemble(Arc::new(engine), None, None));
    }
    let token_hex = env_required(bootstrap::ENV_TOKEN)?;
    let token = JobToken::from_hex(&token_hex).ok_or_else(|| {
        Error::Bootstrap(format!("{} is not 32 hex digits", bootstrap::ENV_TOKEN))
    })?;
    let pmi_addr_s = env_required(bootstrap::ENV_PMI_ADDR)?;
    let pmi_addr = pmi_addr_s
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| {
            Error::Bootstrap(format!(
                "{}={pmi_addr_s:?} is not an address",
                bootstrap::ENV_PMI_ADDR
            ))
        })?;
    let bind_ip: IpAddr = match std::env::var(bootstrap::ENV_BIND_ADDR) {
        Ok(v) => v.trim().parse().map_err(|_| {
            Error::Bootstrap(format!(
                "{}={v:?} is not an IP address",
                bootstrap::ENV_BIND_ADDR
            ))
        })?,
        Err(_) => pmi_addr.ip(),
    };
    let host = std::env::var(bootstrap::ENV_HOSTNAME).unwrap_or_else(|_| hostname());

    let listener = TcpListener::bind((bind_ip, 0)).map_err(|e| {
        Error::io(
            format!("rank {rank}: binding the mesh listener on {bind_ip}"),
            e,
        )
    })?;
    let my_addr = listener
        .local_addr()
        .map_err(|e| Error::io("reading the listener address", e))?;

    let connect_timeout = env_secs("DSMPI_CONNECT_TIMEOUT", 10.0);
    let mut pmi = TcpStream::connect_timeout(&pmi_addr, connect_timeout).map_err(|e| {
        Error::Bootstrap(format!(
            "rank {rank} could not reach the launcher at {pmi_addr}: {e}"
        ))
    })?;
    let _ = pmi.set_nodelay(true);
    PmiMsg::Hello {
        token: token.0,
        rank: rank as u32,
        pid: std::process::id(),
        host: host.clone(),
        addr: my_addr.to_string(),
    }
    .write_to(&mut pmi)
    .map_err(|e| {
        Error::Bootstrap(format!(
            "rank {rank}: saying hello to the launcher at {pmi_addr}: {e}"
        ))
    })?;
    // The table comes once every rank has started; a slow start of many ranks on a
    // loaded host is normal, so this waits longer than a connection.
    let table_timeout = env_secs("DSMPI_STARTUP_TIMEOUT", 120.0);
    pmi.set_read_timeout(Some(table_timeout))
        .map_err(|e| Error::io("PMI link", e))?;
    let table = match PmiMsg::read_from(&mut pmi) {
        Ok(Some(PmiMsg::Table(t))) => t,
        Ok(Some(other)) => {
            return Err(Error::Bootstrap(format!(
                "rank {rank}: the launcher sent {other:?} instead of the address table"
            )))
        }
        Ok(None) => {
            return Err(Error::Bootstrap(format!(
                "rank {rank}: the launcher closed the PMI link before start-up finished"
            )))
        }
        Err(e) => {
            return Err(Error::Bootstrap(format!(
                "rank {rank}: waiting for the address table from {pmi_addr}: {e}"
            )))
        }
    };
    pmi.set_read_timeout(None)
        .map_err(|e| Error::io("PMI link", e))?;
    if table.len() != size {
        return Err(Error::Bootstrap(format!(
            "the launcher's table has {} ranks, expected {size}",
            table.len()
        )));
    }
    let mut addrs = Vec::with_capacity(size);
    for (r, e) in table.iter().enumerate() {
        let a: SocketAddr = e.addr.parse().map_err(|_| {
            Error::Bootstrap(format!(
                "rank {r}'s address {:?} (host {}) is not ip:port",
                e.addr, e.host
            ))
        })?;
        addrs.push(a);
    }
    let hosts: Vec<String> = table.into_iter().map(|e| e.host).collect();
    let links = tcp::build_mesh(rank, &token, &listener, &addrs, connect_timeout)?;
    // Ranks the launcher placed on this host talk through shared memory; the launcher
    // gives every rank the same `DSMPI_TRANSPORT`, so both ends of a pair agree.
    let local: Vec<bool> = hosts.iter().map(|h| *h == host).collect();
    tcp::size_local_buffers(&links, &local);
    let same_host: Vec<bool> = local.iter().map(|&l| l && shm::enabled_by_env()).collect();
    let rings = shm::attach(rank, &links, &same_host, connect_timeout)?;
    let engine = Engine::with_shm(
        rank,
        links,
        rings,
        hosts,
        "tcp",
        cfg,
        Some(OwnedFd::from(listener)),
    )?;
    if let Ok(report) = pmi.try_clone() {
        // Tell the launcher who vanished first, so that it blames that rank and not
        // the first of its peers to exit because of it.
        let report = Mutex::new(report);
        engine.on_peer_lost(Box::new(move |peer| {
            let msg = PmiMsg::PeerLost {
                rank: rank as u32,
                peer: peer as u32,
            };
            let mut s = report.lock().unwrap_or_else(|e| e.into_inner());
            let _ = s.write_all(&msg.encode());
        }));
    }
    Ok(Universe::assemble(
        Arc::new(engine),
        Some(pmi),
        Some(my_addr),
    ))
}

impl Universe {
    fn assemble(
        transport: Arc<dyn Transport>,
        pmi: Option<TcpStream>,
        endpoint: Option<SocketAddr>,
    ) -> Universe {
        Universe {
            world: Communicator::world(transport.clone()),
            transport,
            pmi: pmi.map(Mutex::new),
            endpoint,
            done: AtomicBool::new(false),
        }
    }

    /// The communicator of every rank of the job.
    pub fn world(&self) -> Communicator {
        self.world.clone()
    }

    /// The address of this rank's mesh listener, if it has one. Connections arriving
    /// there after start-up are dropped with a log line.
    pub fn endpoint(&self) -> Option<SocketAddr> {
        self.endpoint
    }

    fn pmi_send(&self, msg: &PmiMsg) {
        if let Some(p) = &self.pmi {
            let mut s = p.lock().unwrap_or_else(|e| e.into_inner());
            let _ = s.write_all(&msg.encode());
        }
    }

    /// Finalizes now and reports how it went (dropping does the same, silently).
    pub fn finalize(self) -> Result<()> {
        self.finalize_inner()
    }

    fn finalize_inner(&self) -> Result<()> {
        if self.done.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        self.pmi_send(&PmiMsg::Finalize {
            rank: self.world.rank() as u32,
        });
        self.transport.finalize()
    }

    /// Ends the whole job: tells the launcher to stop every rank with exit `code`
    /// and `msg`, tears this rank's links down, and exits the process.
    pub fn abort(&self, code: i32, msg: &str) -> ! {
        self.done.store(true, Ordering::SeqCst);
        self.pmi_send(&PmiMsg::Abort {
            rank: self.world.rank() as u32,
            code,
            msg: msg.to_string(),
        });
        // Said before tearing down: an MPI transport's abort ends the process itself.
        eprintln!("dsmpi: rank {} aborted the job: {msg}", self.world.rank());
        self.transport.abort();
        std::process::exit(code)
    }
}

impl Drop for Universe {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.done.store(true, Ordering::SeqCst);
            self.transport.abort();
            return;
        }
        if let Err(e) = self.finalize_inner() {
            eprintln!("dsmpi: rank {}: finalize: {e}", self.world.rank());
        }
    }
}

/// Which links [`run_local_with`] puts between its threads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LocalBackend {
    /// Unix socket pairs carrying every byte (no ports, no network, no shared memory).
    Sockets,
    /// A real TCP mesh on 127.0.0.1, built with the job-token handshake, so that the
    /// `tcp` backend can be tested without launching processes.
    Tcp,
    /// Shared-memory rings (the [`crate::transport::shm`] links), with Unix
    /// socket pairs as doorbells: what ranks on one host use.
    Shm,
}

impl LocalBackend {
    /// What [`run_local`] uses: [`LocalBackend::Shm`], or [`LocalBackend::Sockets`]
    /// when `DSMPI_TRANSPORT=tcp` forces byte streams everywhere (so one environment
    /// variable runs the whole test suite over either).
    pub fn from_env() -> LocalBackend {
        if shm::enabled_by_env() {
            LocalBackend::Shm
        } else {
            LocalBackend::Sockets
        }
    }
}

impl Default for LocalBackend {
    fn default() -> LocalBackend {
        LocalBackend::from_env()
    }
}

/// Runs `f` on `n` ranks, each a thread of this process, and returns their results
/// in rank order, over [`LocalBackend::from_env`]. See [`run_local_with`].
pub fn run_local<R, F>(n: usize, f: F) -> Result<Vec<R>>
where
    R: Send,
    F: Fn(Communicator) -> R + Sync,
{
    run_local_with(LocalBackend::from_env(), n, f)
}

/// Runs `f` on `n` ranks as threads over `backend`, finalizing each rank when its
/// closure returns. If a rank panics, its links are torn down at once (so the other
/// ranks' pending operations fail instead of hanging) and the first panic is resumed
/// here after every thread has ended.
pub fn run_local_with<R, F>(backend: LocalBackend, n: usize, f: F) -> Result<Vec<R>>
where
    R: Send,
    F: Fn(Communicator) -> R + Sync,
{
    if n == 0 {
        return Err(Error::InvalidArgument(
            "run_local needs at least one rank".into(),
        ));
    }
    let cfg = EngineConfig::from_env(n);
    let hosts = vec![hostname(); n];
    let engines: Vec<Arc<Engine>> = match backend {
        LocalBackend::Sockets => {
            let mesh = local::socketpair_mesh(n)?;
            mesh.into_iter()
                .enumerate()
                .map(|(r, links)| {
                    Engine::new(r, links, hosts.clone(), "local", cfg.clone(), None).map(Arc::new)
                })
                .collect::<Result<_>>()?
        }
        LocalBackend::Shm => {
            let mesh = local::socketpair_mesh(n)?;
            let same_host = vec![true; n];
            // Every rank's side of the set-up exchange runs at once, as in a real job.
            let rings: Vec<Result<Vec<Option<shm::ShmLink>>>> = std::thread::scope(|s| {
                let hs: Vec<_> = mesh
                    .iter()
                    .enumerate()
                    .map(|(r, links)| {
                        let same_host = &same_host;
                        s.spawn(move || shm::attach(r, links, same_host, Duration::from_secs(60)))
                    })
                    .collect();
                hs.into_iter()
                    .map(|h| {
                        h.join().unwrap_or_else(|_| {
                            Err(Error::Bootstrap(
                                "shared-memory set-up thread panicked".into(),
                            ))
                        })
                    })
                    .collect()
            });
            mesh.into_iter()
                .zip(rings)
                .enumerate()
                .map(|(r, (links, rings))| {
                    Engine::with_shm(r, links, rings?, hosts.clone(), "local", cfg.clone(), None)
                        .map(Arc::new)
                })
                .collect::<Result<_>>()?
        }
        LocalBackend::Tcp => {
            let token = JobToken::random().map_err(|e| Error::io("making a job token", e))?;
            let listeners: Vec<TcpListener> = (0..n)
                .map(|_| {
                    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
                        .map_err(|e| Error::io("binding 127.0.0.1", e))
                })
                .collect::<Result<_>>()?;
            let addrs: Vec<SocketAddr> = listeners
                .iter()
                .map(|l| l.local_addr().map_err(|e| Error::io("listener address", e)))
                .collect::<Result<_>>()?;
            let built: Vec<Result<Vec<Option<OwnedFd>>>> = std::thread::scope(|s| {
                let hs: Vec<_> = listeners
                    .iter()
                    .enumerate()
                    .map(|(r, l)| {
                        let addrs = &addrs;
                        s.spawn(move || {
                            tcp::build_mesh(r, &token, l, addrs, Duration::from_secs(30))
                        })
                    })
                    .collect();
                hs.into_iter()
                    .map(|h| {
                        h.join().unwrap_or_else(|_| {
                            Err(Error::Bootstrap("mesh thread panicked".into()))
                        })
                    })
                    .collect()
            });
            built
                .into_iter()
                .zip(listeners)
                .enumerate()
                .map(|(r, (links, l))| {
                    let links = links?;
                    tcp::size_local_buffers(&links, &vec![true; n]);
                    Engine::new(
                        r,
                        links,
                        hosts.clone(),
                        "tcp",
                        cfg.clone(),
                        Some(OwnedFd::from(l)),
                    )
                    .map(Arc::new)
                })
                .collect::<Result<_>>()?
        }
    };
    let f = &f;
    let outcomes: Vec<std::thread::Result<R>> = std::thread::scope(|s| {
        let handles: Vec<_> = engines
            .into_iter()
            .enumerate()
            .map(|(r, engine)| {
                std::thread::Builder::new()
                    .name(format!("rank-{r}"))
                    .spawn_scoped(s, move || {
                        let t: Arc<dyn Transport> = engine.clone();
                        let world = Communicator::world(t);
                        let out =
                            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(world)));
                        match &out {
                            Ok(_) => {
                                if let Err(e) = engine.finalize() {
                                    eprintln!("dsmpi: rank {r}: finalize: {e}");
                                }
                            }
                            Err(_) => engine.abort(),
                        }
                        out
                    })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| match h {
                Ok(h) => h.join().and_then(|r| r),
                Err(e) => Err(Box::new(format!("could not start a rank thread: {e}"))
                    as Box<dyn std::any::Any + Send>),
            })
            .collect()
    });
    let mut results = Vec::with_capacity(n);
    for o in outcomes {
        match o {
            Ok(r) => results.push(r),
            Err(p) => std::panic::resume_unwind(p),
        }
    }
    Ok(results)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn no_launcher_is_a_singleton() {
        assert_eq!(
            choose_backend(env(&[("HOME", "/root")])).ok(),
            Some(BackendChoice::Singleton)
        );
    }

    #[test]
    fn dsmexec_wins_over_an_outer_mpirun() {
        let vars = [("OMPI_COMM_WORLD_RANK", "0"), (bootstrap::ENV_RANK, "2")];
        assert_eq!(
            choose_backend(env(&vars)).ok(),
            Some(BackendChoice::Dsmexec)
        );
    }

    #[test]
    fn each_mpi_launcher_is_recognized() {
        for (var, _) in MPI_LAUNCHER_VARS {
            let vars = [(var, "1")];
            let got = choose_backend(env(&vars));
            if cfg!(feature = "mpi") {
                assert_eq!(got.ok(), Some(BackendChoice::Mpi(var)));
            } else {
                match got {
                    Err(Error::Bootstrap(msg)) => {
                        assert!(msg.contains("--features mpi"), "{msg}");
                        assert!(msg.contains(var), "{msg}");
                    }
                    other => panic!("{var}: expected a bootstrap error, got {other:?}"),
                }
            }
        }
    }
}
