//! A cluster of real `kv-server` processes on loopback that a test can break.
//!
//! A cluster may include a shard master ([`ClusterConfig::shardmaster`]), a node like the others,
//! to kill, pause or cut off. Storage nodes then join it at start-up (`--shardmaster`, known by
//! their client address, so that clients and peers go through their proxies), and leave it when
//! stopped gracefully ([`Node::stop`]); [`Cluster::add_node`] starts one more. A node of such a
//! cluster counts as started once it has joined.
//!
//! Each [`Node`] is one server process with its own folder (a data directory, its working
//! directory, and its log file, kept across restarts), listening on a fixed loopback port so
//! that a restart comes back at the same address. Ports are picked below Linux's ephemeral range
//! (32768 and up), so no outgoing connection can take a node's port while the node is down.
//!
//! Faults on a node: [`Node::kill`] (SIGKILL), [`Node::restart`] (same address and folder),
//! [`Node::pause`] / [`Node::resume`] (SIGSTOP / SIGCONT).
//!
//! Network faults go through fault-injecting TCP proxies on loopback ([`crate::harness::proxy`]), so they
//! need no privileges and work in CI:
//! - in front of each node, the *client path* ([`Node::proxy`]): clients dial
//!   [`Node::client_addr`], and the harness partitions, delays or resets that path at will;
//! - between every ordered pair of nodes, a *link* ([`Cluster::link`]): node `a` must reach node
//!   `b` at [`Cluster::peer_addr`]`(a, b)`, never at `b`'s own address, so that the harness can
//!   cut `a → b` alone (a one-way fault), both ways, or whole groups apart
//!   ([`Cluster::partition`], [`Cluster::isolate`]). Storage servers of a sharded cluster know
//!   each other (and the shard master knows them) by the addresses they joined with, their
//!   client paths. By default they dial those, so links carry nothing and a node cut off on its
//!   client path is cut off from its peers too. With [`ClusterConfig::route_links`] every
//!   process starts with `kv-server --dial-via`, mapping each peer's client path to the link
//!   from it to that peer, the shard master included ([`Cluster::master_links`]): then a link
//!   cut is one link, one way or both, and [`Cluster::cut_from_master`] cuts a server from the
//!   shard master alone while it still reaches its peers and its clients. Links are made at
//!   start-up: a node added later ([`Cluster::add_node`]) has none, and is reached at its client
//!   path.
//!
//! A proxy only knows TCP: "drop" is a black hole per direction, and a connection that lost
//! bytes is reset when healed (see [`crate::harness::proxy`] for why).
//!
//! Dropping the [`Cluster`] kills and reaps every process it started — also when a test fails or
//! panics — and removes its folders, unless [`Cluster::keep_files`] was called.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};

pub use crate::harness::node::Node;
use crate::harness::proxy::{Faults, Proxy};

/// Ports are drawn from here: below the ephemeral range, above well-known services.
const PORT_RANGE: std::ops::Range<u16> = 20_000..32_000;

/// How to start a cluster.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// Number of storage servers.
    pub nodes: usize,
    /// The `kv-server` binary.
    pub server_bin: PathBuf,
    /// Extra arguments for every `kv-server storage`.
    pub server_args: Vec<String>,
    /// Put a fault-injecting proxy in front of every node, and on every node-to-node link.
    pub proxies: bool,
    /// Also start a shard master (`kv-server shardmaster`), behind a proxy of its own.
    pub shardmaster: bool,
    /// Copies of every slot (`--replication-factor`). The harness's default is 1, not the
    /// binary's 3: sharding tests count each server's keys.
    pub replication_factor: usize,
    /// Extra arguments for the `kv-server shardmaster`.
    pub shardmaster_args: Vec<String>,
    /// Route the traffic between processes through the links (needs `proxies` and a
    /// `shardmaster`): every process gets `--dial-via`, which makes it dial the link's proxy for
    /// each peer, the shard master included, so a cut of one link (or of a server from the shard
    /// master only) is one. Off by default: then servers reach each other, and the shard master,
    /// at their client paths, and a cut client path cuts a node off from its peers too.
    pub route_links: bool,
    /// Seed of the port choice and of the proxies' randomness.
    pub seed: u64,
    /// Storage servers keep their data on disk, in their folder (`--data-dir`, synced before
    /// each write is acknowledged), so a restarted one comes back with it; otherwise in memory.
    pub durable: bool,
}

impl ClusterConfig {
    /// `nodes` storage servers of the `kv-server` found by [`crate::harness::process::find_binary`],
    /// each behind a proxy.
    pub fn new(nodes: usize) -> Result<Self> {
        Ok(ClusterConfig {
            nodes,
            server_bin: crate::harness::process::find_binary("kv-server")?,
            server_args: vec!["--log".into(), "info".into(), "--workers".into(), "1".into()],
            proxies: true,
            shardmaster: false,
            replication_factor: 1,
            shardmaster_args: Vec::new(),
            route_links: false,
            seed: 0,
            durable: false,
        })
    }
}

/// A set of nodes, and the folder that holds theirs.
#[derive(Debug)]
pub struct Cluster {
    nodes: Vec<Node>,
    shardmaster: Option<Node>,
    /// `links[a][b]`: the proxy node `a` uses to reach node `b` (none for `a == b`).
    links: Vec<Vec<Option<Proxy>>>,
    /// With [`ClusterConfig::route_links`], per start-up node: the proxies of its link to the
    /// shard master, and of the shard master's link to it.
    master_links: Vec<(Proxy, Proxy)>,
    // Declared after `nodes`: the processes die before their folders are removed.
    dir: Option<tempfile::TempDir>,
    kept: Option<PathBuf>,
    config: ClusterConfig,
    rng: SmallRng,
}

impl Cluster {
    /// Starts every node and its proxy; returns once all of them listen.
    pub fn start(config: &ClusterConfig) -> Result<Self> {
        let dir =
            tempfile::Builder::new().prefix("kv-cluster-").tempdir().context("cannot create a folder")?;
        // Clusters started at once (tests in one process, or in several) probe different ports.
        static STARTED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let nth = STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut rng = SmallRng::seed_from_u64(
            config.seed ^ (u64::from(std::process::id()) << 20) ^ nth.wrapping_mul(0x9e37_79b9_7f4a_7c15),
        );
        let mut cluster = Cluster {
            nodes: Vec::new(),
            shardmaster: None,
            links: Vec::new(),
            master_links: Vec::new(),
            dir: Some(dir),
            kept: None,
            config: config.clone(),
            rng: SmallRng::seed_from_u64(0),
        };
        if config.route_links {
            cluster.start_routed(&mut rng)?;
            cluster.rng = rng;
            return Ok(cluster);
        }
        if config.shardmaster {
            let master = start_node(cluster.root(), "shardmaster", 0, config, None, &mut rng)?;
            cluster.shardmaster = Some(master);
        }
        let master = cluster.shardmaster.as_ref().map(Node::client_addr);
        for id in 0..config.nodes {
            let node = start_node(cluster.root(), "storage", id, config, master, &mut rng)?;
            cluster.nodes.push(node);
        }
        cluster.rng = rng;
        if config.proxies {
            for a in 0..config.nodes {
                let mut row = Vec::new();
                for b in 0..config.nodes {
                    row.push(if a == b {
                        None
                    } else {
                        let seed = config.seed.wrapping_add((1 + a * config.nodes + b) as u64 * 7919);
                        let proxy = Proxy::start(cluster.nodes[b].addr, seed)
                            .with_context(|| format!("cannot start the proxy of link {a} -> {b}"))?;
                        Some(proxy)
                    });
                }
                cluster.links.push(row);
            }
        }
        Ok(cluster)
    }

    /// Starts the shard master and the nodes with their traffic routed through the links:
    /// every address and proxy is made first, so that each process starts knowing the link to
    /// dial for each of its peers. A port taken between the probe and the bind fails the start
    /// (the links point at it).
    fn start_routed(&mut self, rng: &mut SmallRng) -> Result<()> {
        let config = self.config.clone();
        if !config.proxies || !config.shardmaster {
            bail!("routing the links needs proxies and a shard master");
        }
        let root = self.root().to_path_buf();
        let n = config.nodes;
        let mut master = new_node(&root, "shardmaster", 0, &config, rng)?;
        let mut nodes =
            (0..n).map(|id| new_node(&root, "storage", id, &config, rng)).collect::<Result<Vec<_>>>()?;
        let link = |target: SocketAddr, nth: usize| {
            Proxy::start(target, config.seed.wrapping_add(nth as u64 * 7919))
                .context("cannot start a link proxy")
        };
        for a in 0..n {
            let row = (0..n).map(|b| (a != b).then(|| link(nodes[b].addr, 1 + a * n + b)).transpose());
            self.links.push(row.collect::<Result<_>>()?);
        }
        for (i, node) in nodes.iter().enumerate() {
            let nth = 1 + n * n + 2 * i;
            self.master_links.push((link(master.addr, nth)?, link(node.addr, nth + 1)?));
        }
        let to_nodes = nodes
            .iter()
            .zip(&self.master_links)
            .map(|(node, (_, from_master))| (node.client_addr(), from_master.addr()));
        master.args.extend(dial_via(to_nodes));
        master.spawn()?;
        let peers: Vec<SocketAddr> = nodes.iter().map(Node::client_addr).collect();
        for (a, node) in nodes.iter_mut().enumerate() {
            let to_master = (master.client_addr(), self.master_links[a].0.addr());
            let to_peers = (0..n).filter_map(|b| Some((peers[b], self.link(a, b)?.addr())));
            join_args(node, &config, master.client_addr());
            node.args.extend(dial_via([to_master].into_iter().chain(to_peers)));
        }
        self.shardmaster = Some(master);
        for mut node in nodes {
            node.spawn()?;
            self.nodes.push(node);
        }
        Ok(())
    }

    /// The cluster's folder.
    pub fn root(&self) -> &Path {
        match (&self.dir, &self.kept) {
            (Some(dir), _) => dir.path(),
            (None, Some(kept)) => kept,
            (None, None) => Path::new("."),
        }
    }

    /// Keeps the cluster's folder (logs, data) after the cluster is dropped; returns its path.
    pub fn keep_files(&mut self) -> PathBuf {
        if let Some(dir) = self.dir.take() {
            self.kept = Some(dir.keep());
        }
        self.root().to_path_buf()
    }

    /// The nodes.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// The shard master, if the cluster has one.
    pub fn shardmaster(&self) -> Option<&Node> {
        self.shardmaster.as_ref()
    }

    /// Starts one more storage node (which joins the shard master, if there is one); returns its
    /// id. Links are made at start-up only: the new node has none, and is reached at its client
    /// path.
    pub fn add_node(&mut self) -> Result<usize> {
        let id = self.nodes.len();
        let master = self.shardmaster.as_ref().map(Node::client_addr);
        let root = self.root().to_path_buf();
        let node = start_node(&root, "storage", id, &self.config, master, &mut self.rng)?;
        self.nodes.push(node);
        Ok(id)
    }

    /// The shard master, to break.
    pub fn shardmaster_mut(&mut self) -> Option<&mut Node> {
        self.shardmaster.as_mut()
    }

    /// Every node, to break several at once.
    pub fn nodes_mut(&mut self) -> &mut [Node] {
        &mut self.nodes
    }

    /// One node, to break.
    pub fn node_mut(&mut self, id: usize) -> &mut Node {
        &mut self.nodes[id]
    }

    /// The proxy on the link from node `from` to node `to`, if the cluster has proxies and
    /// `from != to`.
    pub fn link(&self, from: usize, to: usize) -> Option<&Proxy> {
        self.links.get(from)?.get(to)?.as_ref()
    }

    /// The address node `from` must use to reach node `to`: the link's proxy, or `to`'s own
    /// address where there is none.
    pub fn peer_addr(&self, from: usize, to: usize) -> SocketAddr {
        self.link(from, to).map_or(self.nodes[to].addr, Proxy::addr)
    }

    /// Cuts every link between a node of `side_a` and a node of `side_b`, both ways. Client
    /// paths are untouched (cut them with [`Node::proxy`] or [`Cluster::isolate`]).
    pub fn partition(&self, side_a: &[usize], side_b: &[usize]) {
        for &a in side_a {
            for &b in side_b {
                for (from, to) in [(a, b), (b, a)] {
                    if let Some(link) = self.link(from, to) {
                        link.set_faults(Faults::partition());
                    }
                }
            }
        }
    }

    /// With [`ClusterConfig::route_links`], the proxies of start-up node `id`'s link to the
    /// shard master and of the shard master's link to it.
    pub fn master_links(&self, id: usize) -> Option<(&Proxy, &Proxy)> {
        self.master_links.get(id).map(|(to, from)| (to, from))
    }

    /// Cuts node `id` off from the shard master only, both ways (it still reaches its peers, and
    /// clients it); false if the cluster does not route its links.
    pub fn cut_from_master(&self, id: usize) -> bool {
        let Some((to, from)) = self.master_links(id) else { return false };
        to.set_faults(Faults::partition());
        from.set_faults(Faults::partition());
        true
    }

    /// Cuts node `id` off from everything: every link to and from it (the shard master's
    /// included), and its client path.
    pub fn isolate(&self, id: usize) {
        let others: Vec<usize> = (0..self.nodes.len()).filter(|&n| n != id).collect();
        self.partition(&[id], &others);
        self.cut_from_master(id);
        if let Some(proxy) = &self.nodes[id].proxy {
            proxy.set_faults(Faults::partition());
        }
    }

    /// Ends every fault: resumes paused nodes, restarts dead ones (not those stopped with
    /// [`Node::stop`]: they left), heals every proxy.
    pub fn heal(&mut self) -> Result<()> {
        for node in self.nodes.iter_mut().chain(self.shardmaster.as_mut()) {
            if node.paused {
                node.resume()?;
            }
            if !node.is_running() && !node.stopped {
                node.restart()?;
            }
            if let Some(proxy) = &node.proxy {
                proxy.heal();
            }
        }
        for link in self.links.iter().flatten().flatten() {
            link.heal();
        }
        for (to, from) in &self.master_links {
            to.heal();
            from.heal();
        }
        Ok(())
    }

    /// Every node's log, each under a header: for a failing test's output.
    pub fn logs(&self) -> String {
        self.shardmaster
            .iter()
            .chain(&self.nodes)
            .map(|n| format!("---- {} {} ({}) ----\n{}", n.role, n.id, n.addr, n.log()))
            .collect()
    }
}

/// Makes the folder and the [`Node`] (not started) of role `role` (`storage` or `shardmaster`)
/// in `root`, on a free port, behind a proxy if the cluster has proxies.
fn new_node(
    root: &Path,
    role: &'static str,
    id: usize,
    config: &ClusterConfig,
    rng: &mut SmallRng,
) -> Result<Node> {
    let dir = match role {
        "storage" => root.join(format!("node-{id}")),
        _ => root.join(role),
    };
    std::fs::create_dir_all(dir.join("data")).context("cannot create a node folder")?;
    let args = match role {
        "storage" => storage_args(config, &dir),
        _ => {
            let mut args: Vec<String> = vec!["--log".into(), "info".into(), "--workers".into(), "1".into()];
            args.extend(["--replication-factor".into(), config.replication_factor.to_string()]);
            // Its state survives a restart (a kill -9 included), as in any real deployment.
            args.extend(["--data-dir".into(), dir.join("data").display().to_string()]);
            args.extend(config.shardmaster_args.iter().cloned());
            args
        }
    };
    let mut node = Node {
        id,
        role,
        addr: free_port(rng)?,
        dir,
        bin: config.server_bin.clone(),
        args,
        child: None,
        paused: false,
        stopped: false,
        proxy: None,
        ready: None,
    };
    make_proxy(&mut node, config)?;
    Ok(node)
}

/// A storage node's own arguments, its folder being `dir`.
fn storage_args(config: &ClusterConfig, dir: &Path) -> Vec<String> {
    let mut args = config.server_args.clone();
    if config.durable {
        let engine = dir.join("data").join("engine");
        args.extend(["--data-dir".into(), engine.display().to_string(), "--fsync".into(), "always".into()]);
    }
    args
}

/// Puts a proxy in front of `node`'s port, if the cluster has proxies.
fn make_proxy(node: &mut Node, config: &ClusterConfig) -> Result<()> {
    if config.proxies {
        let (id, role) = (node.id, node.role);
        let seed = config.seed.wrapping_add(id as u64).wrapping_add(u64::from(role == "shardmaster") << 32);
        let proxy = Proxy::start(node.addr, seed)
            .with_context(|| format!("cannot start the proxy of the {role} node {id}"))?;
        node.proxy = Some(proxy);
    }
    Ok(())
}

/// A storage node's arguments to join the shard master at `master`, known by its client path.
fn join_args(node: &mut Node, config: &ClusterConfig, master: SocketAddr) {
    node.args = storage_args(config, node.dir());
    node.args.extend([
        "--shardmaster".to_owned(),
        master.to_string(),
        "--advertise".to_owned(),
        node.client_addr().to_string(),
    ]);
    node.ready = Some("joined the cluster");
}

/// Starts one server process of role `role` (`storage` or `shardmaster`) in `root`, on a free
/// port, behind a proxy if the cluster has proxies; a storage node joins `shardmaster` if given.
fn start_node(
    root: &Path,
    role: &'static str,
    id: usize,
    config: &ClusterConfig,
    shardmaster: Option<SocketAddr>,
    rng: &mut SmallRng,
) -> Result<Node> {
    let mut node = new_node(root, role, id, config, rng)?;
    // Another process may take the port between the probe and the bind: pick again.
    let mut attempts = 0;
    loop {
        if let (Some(master), "storage") = (shardmaster, role) {
            join_args(&mut node, config, master);
        }
        match node.spawn() {
            Ok(()) => break,
            Err(err) if attempts < 5 && format!("{err:#}").contains("in use") => {
                attempts += 1;
                node.addr = free_port(rng)?;
                // The proxy forwards to the port, so it is made again for the new one.
                make_proxy(&mut node, config)?;
            }
            Err(err) => return Err(err),
        }
    }
    Ok(node)
}

/// `PEER=VIA,...` for `kv-server --dial-via`.
fn dial_via(pairs: impl IntoIterator<Item = (SocketAddr, SocketAddr)>) -> [String; 2] {
    let pairs: Vec<String> = pairs.into_iter().map(|(peer, via)| format!("{peer}={via}")).collect();
    ["--dial-via".to_owned(), pairs.join(",")]
}

/// A loopback address with a port below the ephemeral range that nothing listens on right now.
fn free_port(rng: &mut SmallRng) -> Result<SocketAddr> {
    for _ in 0..1000 {
        let addr = SocketAddr::from(([127, 0, 0, 1], rng.random_range(PORT_RANGE)));
        if TcpListener::bind(addr).is_ok() {
            return Ok(addr);
        }
    }
    bail!("no free loopback port in {PORT_RANGE:?}")
}
