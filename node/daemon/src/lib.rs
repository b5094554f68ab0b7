//! The node daemon: opens the home, recovers the document, and serves the local API until
//! SIGINT, SIGTERM or `node stop`.
//!
//! This crate is the only one that knows libp2p and the store. The `meshwork` binary calls
//! [`init`], [`start`] and [`local_caps`]; every other command reaches a running node through
//! the typed client (`meshwork-client`).
//!
//! Start-up order matters: the home lock, then a fresh boot number (persisted before any
//! write, so an actor id is never reused), then recovery, then the queue actor, then the
//! socket. Shutdown runs the other way and flushes the store last.

mod api;
pub mod clock;
mod events;
mod home;
mod invites;
mod mesh;
mod net;
mod probe;
mod queue;
mod start_caches;
mod store;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, bail};
use meshwork_crdt::events::EventDigest;
use meshwork_crdt::{CacheUse, QueueDoc, Replica};
use meshwork_protocol::api::InitView;
use meshwork_protocol::storage::Frame;
use meshwork_protocol::{NodeKey, Probe};
use tokio::net::UnixListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::clock::now_ms;
use crate::events::EventBus;
use crate::home::{Config, Home, MeshFile, default_node_name};
use crate::net::{NetConfig, NetEvents, NetHandle, Network};
use crate::probe::{DEFAULT_TOOLS, ProbeConfig, probe_machine};
use crate::queue::{NodeFacts, QueueActor, RequestTable};
use crate::store::{StoreConfig, StoreHandle};

/// How `meshwork node start` runs the node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StartOptions {
    /// Listen on these multiaddrs; QUIC and TCP on all interfaces when empty.
    pub listen: Vec<String>,
    /// Dial these peers' multiaddrs.
    pub peers: Vec<String>,
    /// Do not discover peers on the local network.
    pub no_mdns: bool,
    /// Neither listen nor dial.
    pub offline: bool,
    /// Serve the web dashboard on this address.
    pub dashboard: Option<String>,
}

/// `meshwork init`: creates the home, the key and a mesh of one. Run again, it reports the
/// home as it is.
pub fn init(root: &Path, name: Option<&str>) -> anyhow::Result<InitView> {
    let home = Home::new(root.to_path_buf());
    if home.is_initialised() {
        return init_view(&home);
    }
    home.create_dir()?;
    let _lock = home.lock()?;
    let key = home.load_or_create_key()?;
    let name = name.map_or_else(default_node_name, str::to_owned);
    meshwork_protocol::identity::validate_name("a node name", &name)?;
    if !home.config_path().exists() {
        home.write_config(&Config { name: name.clone(), labels: Vec::new(), tools: Vec::new() })?;
    }
    let config = home.load_config()?;
    let boot = store::next_boot(home.root())?;
    let founded = Replica::found(&key, boot, &config.name, &config.name, now_ms())?;
    let (mut writer, _) = store::open(&home.doc_dir(), StoreConfig::default())?;
    let frames: Vec<Frame> = founded.changes.into_iter().map(Frame::Changes).collect();
    writer.append(&frames)?;
    let mesh_id = founded.replica.mesh().map(|mesh| mesh.to_string()).unwrap_or_default();
    home.write_mesh(&MeshFile { mesh_id, mesh_name: config.name.clone() })?;
    init_view(&home)
}

fn init_view(home: &Home) -> anyhow::Result<InitView> {
    let key = home.load_key()?;
    let config = home.load_config()?;
    let mesh = home.load_mesh()?;
    Ok(InitView {
        node_id: key.node_id().to_string(),
        name: config.name,
        home: home.root().display().to_string(),
        mesh_id: mesh.mesh_id,
    })
}

/// This machine's probe, measured now (`meshwork caps` works without a running node).
pub fn local_caps(root: &Path) -> anyhow::Result<Probe> {
    let home = Home::new(root.to_path_buf());
    let config = home.load_config().ok();
    Ok(probe_machine(&probe_config(&home, config.as_ref())))
}

fn probe_config(home: &Home, config: Option<&Config>) -> ProbeConfig {
    let mut tools: Vec<String> = DEFAULT_TOOLS.iter().map(|tool| (*tool).to_owned()).collect();
    tools.extend(config.map(|config| config.tools.clone()).unwrap_or_default());
    ProbeConfig {
        labels: config.map(|config| config.labels.clone()).unwrap_or_default(),
        home: home.root().to_path_buf(),
        tools,
    }
}

/// `meshwork node start`: runs the node in the foreground until it is told to stop.
pub fn start(root: &Path, options: StartOptions) -> anyhow::Result<()> {
    init_tracing();
    if options.dashboard.is_some() {
        warn!("the dashboard is not part of this build yet; --dashboard is ignored");
    }
    let parse = |flag: &str, addrs: &[String]| -> anyhow::Result<Vec<libp2p::Multiaddr>> {
        addrs.iter().map(|addr| addr.parse().with_context(|| format!("{flag} {addr} is not a multiaddr"))).collect()
    };
    let home = Home::new(root.to_path_buf());
    let network = (!options.offline)
        .then(|| -> anyhow::Result<NetConfig> {
            Ok(NetConfig {
                listen: parse("--listen", &options.listen)?,
                peers: parse("--peer", &options.peers)?,
                mdns: !options.no_mdns,
                home: home.root().to_path_buf(),
            })
        })
        .transpose()?;
    if !home.is_initialised() {
        let view = init(root, None)?;
        info!(node_id = %view.node_id, home = %view.home, "initialised a new home");
    }
    let runtime =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().context("cannot start the async runtime")?;
    runtime.block_on(run(home, network))
}

/// Logs to stderr; `MESHWORK_LOG` (or `RUST_LOG`) sets the filter, `info` by default.
fn init_tracing() {
    let filter = std::env::var("MESHWORK_LOG").or_else(|_| std::env::var("RUST_LOG")).ok();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(log_filter(filter)))
        .with_writer(std::io::stderr)
        .try_init();
}

/// The log filter: the one given, `info` by default, with Automerge held at `warn` unless the
/// filter names it. Automerge 0.12 opens an `info` span around every load and
/// `load_incremental` whose fields Debug-format the document's whole change graph: with
/// 100,000 changes that cost 130 ms per call (so per log chunk replayed after a crash) and
/// 200 ms per start, where 1.5 ms and nothing are the work itself.
fn log_filter(given: Option<String>) -> String {
    let filter = given.unwrap_or_else(|| "info".to_owned());
    if filter.contains("automerge") { filter } else { format!("{filter},automerge=warn") }
}

/// Recovers the replica from the store, reporting and skipping what cannot be read.
struct Recovery {
    replica: Replica,
    store: StoreHandle,
    requests: RequestTable,
    skipped: Vec<String>,
    /// This start's boot number: it orders actor ids and event ids.
    boot: u32,
}

fn recover(home: &Home, key: &NodeKey) -> anyhow::Result<Recovery> {
    // The start caches are read on a thread of their own while the document loads.
    let caches = start_caches::read_in_background(home, key.node_id());
    let mut boot = store::next_boot(home.root())?;
    let (writer, recovered) = store::open(&home.doc_dir(), StoreConfig::default())?;
    let mut skipped: Vec<String> = recovered.skipped.iter().map(ToString::to_string).collect();
    let loading = std::time::Instant::now();
    let (doc, bad_chunks) = QueueDoc::load(recovered.snapshot.as_deref(), &recovered.changes)
        .with_context(|| format!("the document in {} cannot be loaded", home.doc_dir().display()))?;
    doc.check_schema().with_context(|| format!("cannot open the document in {}", home.doc_dir().display()))?;
    skipped.extend(
        bad_chunks
            .iter()
            .map(|(index, error)| format!("change chunk {index} in {}: {error}", home.doc_dir().display())),
    );
    for line in &skipped {
        warn!("skipped while loading: {line}");
    }
    let loaded_ms = loading.elapsed().as_millis();
    let caches = caches.join();
    let deriving = std::time::Instant::now();
    let (derived, derived_cache) = start_caches::decode_for(home, caches.derived, &doc);
    // Belt and braces: never reuse an actor id the document already holds, even if the boot
    // file was lost or restored from an old backup. The derived-state cache of this very
    // document knows the highest boot without reading every change's metadata.
    let highest_boot = match &derived {
        Some(cache) => cache.highest_boot(),
        None => doc.highest_boot_of(&key.node_id()),
    };
    while highest_boot.is_some_and(|highest| highest >= boot) {
        boot = store::next_boot(home.root())?;
    }
    let (replica, cache_use) = Replica::open_with_cache(key.node_id(), boot, doc, caches.verified, derived);
    let derived_cache = if cache_use == CacheUse::OtherDocument { "other-document" } else { derived_cache };
    info!(
        tasks = replica.tasks().len(),
        load_ms = loaded_ms,
        caches_ms = caches.read_ms,
        derive_ms = deriving.elapsed().as_millis(),
        %derived_cache,
        "loaded the document and its derived state"
    );
    if replica.mesh().is_none() {
        bail!(
            "the document in {} has no mesh; run `meshwork init --home {}`",
            home.doc_dir().display(),
            home.root().display()
        );
    }
    let store = StoreHandle::spawn(writer)?;
    Ok(Recovery { replica, store, requests: RequestTable::from_recovered(recovered.requests), skipped, boot })
}

/// The queue actor over a recovered replica, before it runs.
fn queue_actor(
    home: &Home,
    key: Arc<NodeKey>,
    config: &Config,
    recovery: Recovery,
    net: NetHandle,
    events: EventBus,
) -> QueueActor {
    QueueActor {
        digest: EventDigest::of(&recovery.replica),
        claims_waiting: Vec::new(),
        duties_due: meshwork_crdt::Touched::default(),
        duties_at: None,
        events,
        replica: recovery.replica,
        key,
        store: recovery.store,
        requests: recovery.requests,
        facts: NodeFacts {
            name: config.name.clone(),
            home: home.root().display().to_string(),
            skipped_files: recovery.skipped,
            started_at_ms: now_ms(),
        },
        needs_snapshot: false,
        write_failed: Arc::default(),
        verified_cache: home.verified_cache_path(),
        home: home.clone(),
        engine: meshwork_crdt::sync::SyncEngine::default(),
        links: Default::default(),
        net,
        invites: invites::Invites::load(&invites::Invites::path(home.root())),
        push_queued: Arc::default(),
        // Replaced by `QueueActor::spawn` with the actor's own channel.
        commands: tokio::sync::mpsc::channel(1).0.downgrade(),
    }
}

async fn run(home: Home, network: Option<NetConfig>) -> anyhow::Result<()> {
    let _lock = home.lock()?;
    let key = Arc::new(home.load_key()?);
    let config = home.load_config()?;
    let recovery = recover(&home, &key)?;
    info!(node_id = %key.node_id(), tasks = recovery.replica.tasks().len(), "recovered the queue");
    let (net, net_commands) = NetHandle::new(network.is_none());
    let events = EventBus::new(recovery.boot);
    let actor = queue_actor(&home, Arc::clone(&key), &config, recovery, net.clone(), events.clone());
    // With no probe of this machine in the document yet (a first start), gates could refuse
    // every task with requirements: probe before serving. Later starts serve at once with
    // the stored probe and refresh it in the background.
    let has_probe = actor.replica.probes().latest(&key.node_id()).is_some();
    let allowlist = actor.allowlist();
    let store = actor.store.clone();
    let (heard, heard_in) = NetEvents::new();
    let (queue, actor_task) = actor.spawn(heard_in);
    let probing = spawn_probe(&home, &config, queue.clone());
    if !has_probe {
        let _ = probing.await;
    }
    let shutdown = CancellationToken::new();
    let network_task = match network {
        Some(config) => {
            let network = Network::new(&key, &config, heard, net.clone(), allowlist, events.clone(), store)?;
            Some(tokio::spawn(network.run(net_commands, shutdown.clone())))
        }
        None => {
            // Offline: nothing reads network commands.
            drop(net_commands);
            None
        }
    };
    let listener = bind_socket(&home)?;
    let router = api::router(api::ApiState {
        queue: queue.clone(),
        shutdown: shutdown.clone(),
        events,
        node_id: key.node_id().to_string(),
    });
    let server =
        tokio::spawn(axum::serve(listener, router).with_graceful_shutdown(stop_signal(shutdown.clone())).into_future());
    let mode = if network_task.is_some() { "online" } else { "offline" };
    println!("meshwork node {} serving {} ({mode})", key.node_id(), home.socket_path().display());
    match server.await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => warn!(%error, "the local API stopped with an error"),
        Err(error) => warn!(%error, "the local API task failed"),
    }
    shutdown.cancel();
    if let Some(task) = network_task {
        let _ = task.await;
    }
    queue.stop().await;
    let _ = actor_task.await;
    let _ = fs::remove_file(home.socket_path());
    info!("stopped");
    Ok(())
}

/// Binds the API socket in the home, private to the owner. A stale socket from a node that
/// died is removed first: the home lock proves no other node serves it.
fn bind_socket(home: &Home) -> anyhow::Result<UnixListener> {
    let path = home.socket_path();
    if path.exists() {
        fs::remove_file(&path).with_context(|| format!("cannot remove the stale socket {}", path.display()))?;
    }
    let listener = UnixListener::bind(&path).with_context(|| format!("cannot listen on {}", path.display()))?;
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot make {} private", path.display()))?;
    Ok(listener)
}

/// Resolves on SIGINT, SIGTERM, or `node stop`.
async fn stop_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut interrupt), Ok(mut terminate)) = (signal(SignalKind::interrupt()), signal(SignalKind::terminate()))
    else {
        shutdown.cancelled().await;
        return;
    };
    tokio::select! {
        _ = interrupt.recv() => info!("SIGINT: stopping"),
        _ = terminate.recv() => info!("SIGTERM: stopping"),
        () = shutdown.cancelled() => info!("asked to stop"),
    }
}

/// Probes the machine off the async threads (it runs `TOOL --version` for each tool) and
/// publishes the probe when it differs from the last one.
fn spawn_probe(home: &Home, config: &Config, queue: queue::QueueHandle) -> tokio::task::JoinHandle<()> {
    let probe_config = probe_config(home, Some(config));
    tokio::spawn(async move {
        match tokio::task::spawn_blocking(move || probe_machine(&probe_config)).await {
            Ok(probe) => queue.publish_probe(probe).await,
            Err(error) => warn!(%error, "the machine probe failed"),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::log_filter;

    /// Automerge's spans stay off whatever the log filter, unless the filter names Automerge:
    /// they format the whole change graph on every load.
    #[test]
    fn automerge_spans_stay_off_unless_the_filter_names_automerge() {
        assert_eq!(log_filter(None), "info,automerge=warn");
        assert_eq!(log_filter(Some("debug".to_owned())), "debug,automerge=warn");
        assert_eq!(log_filter(Some("info,automerge=trace".to_owned())), "info,automerge=trace");
    }
}
