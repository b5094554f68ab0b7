//! The node's network: libp2p with QUIC first and TCP + noise + yamux as fallback, identify,
//! ping, mDNS, the membership gate, and two stream protocols: `/meshwork/sync/1` (one
//! long-lived sync link per peer) and `/meshwork/join/1` (an invite's one exchange).
//!
//! One task owns the swarm ([`Network::run`]). It dials and redials members, keeps the
//! address book, opens or accepts one sync link per connected member, and records presence
//! (connected, last seen, round trips) in [`NetFacts`], which `node status` and the claim
//! settle time read. The sync engine runs in the queue actor; links only carry frames.

mod book;
pub(crate) mod gate;
pub(crate) mod link;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use libp2p::futures::StreamExt;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{Multiaddr, PeerId, StreamProtocol, Swarm, connection_limits, identify, mdns, noise, ping, tcp, yamux};
use meshwork_protocol::error::ErrorBody;
use meshwork_protocol::invite::InviteToken;
use meshwork_protocol::limits::{CONNECTIONS_MAX, CONNECTIONS_PER_PEER_MAX, SETTLE_MS_MAX};
use meshwork_protocol::wire::{JoinRefusal, JoinRequest};
use meshwork_protocol::{ErrorCode, NodeId, NodeKey};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::clock::now_ms;
use crate::events::EventBus;
use crate::store::StoreHandle;
pub(crate) use gate::Allowlist;
pub(crate) use link::sync_bytes;
use meshwork_protocol::event::Event;

/// The sync protocol: one long-lived stream per pair of members.
pub(crate) const SYNC_PROTOCOL: StreamProtocol = StreamProtocol::new("/meshwork/sync/1");
/// The join protocol: a joining node presents an invite and receives the document.
pub(crate) const JOIN_PROTOCOL: StreamProtocol = StreamProtocol::new("/meshwork/join/1");
/// Peer exchange: a member tells another the addresses it knows of the other members, so a
/// node that joined through one member finds them all.
pub(crate) const PEERS_PROTOCOL: StreamProtocol = StreamProtocol::new("/meshwork/peers/1");
/// How often addresses are exchanged with each connected member.
const PEER_EXCHANGE_EVERY: Duration = Duration::from_secs(30);
/// First wait before redialling a member that is not connected; doubles up to the max.
const REDIAL_FIRST: Duration = Duration::from_secs(1);
const REDIAL_MAX: Duration = Duration::from_secs(30);
/// How often the network looks for members to redial and strangers to drop.
const TICK: Duration = Duration::from_millis(250);
/// Round-trip samples kept per peer for the settle time.
const RTT_SAMPLES_KEPT: usize = 64;
/// How long the higher node id of a pair waits for the lower one to open their sync link.
const LINK_GRACE: Duration = Duration::from_secs(2);
/// A connection with no stream open is closed after this long.
const IDLE_CONNECTION_TIMEOUT: Duration = Duration::from_secs(60);
/// Link and peer-exchange outcomes waiting for the network task; their senders wait when full.
const LINK_EVENTS_MAX: usize = 256;

/// How the node reaches the network, from `node start`'s flags.
#[derive(Debug, Clone)]
pub(crate) struct NetConfig {
    /// Explicit `--listen` addresses; empty means QUIC and TCP on all interfaces, on the
    /// ports of the address book (chosen by the OS on the first start).
    pub(crate) listen: Vec<Multiaddr>,
    /// `--peer` addresses, dialled at start and redialled while not connected.
    pub(crate) peers: Vec<Multiaddr>,
    pub(crate) mdns: bool,
    pub(crate) home: PathBuf,
}

/// What the network knows of itself and its peers; read by `node status` and the claim
/// settle time.
#[derive(Debug, Default)]
pub(crate) struct NetFacts {
    pub(crate) offline: bool,
    pub(crate) listen: Vec<String>,
    pub(crate) peers: BTreeMap<NodeId, PeerFacts>,
    /// Connections the membership gate refused.
    pub(crate) refused_connections: u64,
}

#[derive(Debug, Default, Clone)]
pub(crate) struct PeerFacts {
    pub(crate) addrs: Vec<String>,
    pub(crate) connected: bool,
    /// When the first of the current connections came up.
    pub(crate) connected_since_ms: Option<u64>,
    pub(crate) last_seen_ms: Option<u64>,
    pub(crate) rtt_ms: Option<f64>,
    rtt_samples: VecDeque<f64>,
}

impl NetFacts {
    /// A round trip to a peer: a ping, or a sync frame and the peer's next frame (which
    /// includes the time both nodes' queues took, as a claim's settle time must).
    pub(crate) fn note_round_trip(&mut self, node: NodeId, millis: f64) {
        let entry = self.peers.entry(node).or_default();
        entry.rtt_samples.push_back(millis);
        while entry.rtt_samples.len() > RTT_SAMPLES_KEPT {
            entry.rtt_samples.pop_front();
        }
    }

    /// How long a claim waits before it is reported won: about twice the p99 round trip to
    /// connected peers, at most [`SETTLE_MS_MAX`], zero with no peer connected.
    pub(crate) fn settle_ms(&self) -> u64 {
        let mut samples: Vec<f64> = self
            .peers
            .values()
            .filter(|peer| peer.connected)
            .flat_map(|peer| peer.rtt_samples.iter().copied())
            .collect();
        if !self.peers.values().any(|peer| peer.connected) {
            return 0;
        }
        if samples.is_empty() {
            // Connected but not measured yet: assume a LAN round trip.
            return 10;
        }
        samples.sort_by(f64::total_cmp);
        let index = (samples.len() * 99).div_ceil(100).saturating_sub(1);
        let p99 = samples.get(index).copied().unwrap_or(0.0);
        ((2.0 * p99).ceil() as u64).clamp(1, SETTLE_MS_MAX)
    }
}

/// Orders for the network task.
#[derive(Debug)]
pub(crate) enum NetCommand {
    /// The members changed, or an invite opened.
    Allow(Allowlist),
    /// Cut a peer off (it sent a bad frame, or was removed).
    Disconnect(NodeId),
    /// Join a mesh through an invite: reach the inviter and bring back its document.
    Join { token: InviteToken, request: JoinRequest, reply: oneshot::Sender<Result<Vec<u8>, ErrorBody>> },
}

/// What the network's links hear that the document's owner (the queue actor) must act on.
/// The network never touches the document: it hands these over a bounded channel.
#[derive(Debug)]
pub(crate) enum NetEvent {
    /// A sync link to a member opened; `reply` says whether the actor takes it.
    SyncOpened {
        peer: NodeId,
        link: u64,
        sender: mpsc::Sender<Vec<u8>>,
        reply: oneshot::Sender<bool>,
    },
    SyncFrame {
        peer: NodeId,
        link: u64,
        bytes: Vec<u8>,
    },
    SyncBadFrame {
        peer: NodeId,
        link: u64,
        reason: String,
    },
    SyncClosed {
        peer: NodeId,
        link: u64,
    },
    /// A joiner presented an invite: the inviter's side answers with the document or why not.
    Admit {
        peer: NodeId,
        request: JoinRequest,
        reply: oneshot::Sender<Result<Vec<u8>, JoinRefusal>>,
    },
}

/// Network events waiting for the queue actor; a link's reader waits when it is full, so a
/// fast peer slows down rather than fill memory.
pub(crate) const NET_EVENTS_MAX: usize = 1024;

/// Where the network's links deliver what they hear.
#[derive(Debug, Clone)]
pub(crate) struct NetEvents(mpsc::Sender<NetEvent>);

impl NetEvents {
    pub(crate) fn new() -> (NetEvents, mpsc::Receiver<NetEvent>) {
        let (sender, receiver) = mpsc::channel(NET_EVENTS_MAX);
        (NetEvents(sender), receiver)
    }

    async fn send(&self, event: NetEvent) -> bool {
        self.0.send(event).await.is_ok()
    }

    /// A sync link to `peer` opened; false when the actor refuses it (not a member).
    pub(crate) async fn sync_opened(&self, peer: NodeId, link: u64, sender: mpsc::Sender<Vec<u8>>) -> bool {
        let (reply, answer) = oneshot::channel();
        self.send(NetEvent::SyncOpened { peer, link, sender, reply }).await && answer.await.unwrap_or(false)
    }

    pub(crate) async fn sync_frame(&self, peer: NodeId, link: u64, bytes: Vec<u8>) {
        self.send(NetEvent::SyncFrame { peer, link, bytes }).await;
    }

    pub(crate) async fn sync_bad_frame(&self, peer: NodeId, link: u64, reason: String) {
        self.send(NetEvent::SyncBadFrame { peer, link, reason }).await;
    }

    pub(crate) async fn sync_closed(&self, peer: NodeId, link: u64) {
        self.send(NetEvent::SyncClosed { peer, link }).await;
    }

    /// The inviter's side of a join: a member now, and the document; or why not.
    pub(crate) async fn admit(&self, peer: NodeId, request: JoinRequest) -> Result<Vec<u8>, JoinRefusal> {
        let (reply, answer) = oneshot::channel();
        let stopping =
            || JoinRefusal { code: ErrorCode::NodeUnavailable, message: "the inviter is stopping".to_owned() };
        if !self.send(NetEvent::Admit { peer, request, reply }).await {
            return Err(stopping());
        }
        answer.await.unwrap_or_else(|_| Err(stopping()))
    }
}

/// The queue actor's way to the network. With `--offline` the commands go nowhere.
#[derive(Debug, Clone)]
pub(crate) struct NetHandle {
    commands: mpsc::UnboundedSender<NetCommand>,
    pub(crate) facts: Arc<Mutex<NetFacts>>,
}

impl NetHandle {
    pub(crate) fn new(offline: bool) -> (NetHandle, mpsc::UnboundedReceiver<NetCommand>) {
        let (commands, receiver) = mpsc::unbounded_channel();
        let facts = NetFacts { offline, ..NetFacts::default() };
        (NetHandle { commands, facts: Arc::new(Mutex::new(facts)) }, receiver)
    }

    pub(crate) fn send(&self, command: NetCommand) -> bool {
        self.commands.send(command).is_ok()
    }

    pub(crate) fn facts(&self) -> std::sync::MutexGuard<'_, NetFacts> {
        // A panic while holding the lock leaves plain data behind; keep using it.
        self.facts.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[derive(NetworkBehaviour)]
struct Behaviour {
    /// First: a connection the gate refuses never reaches the others.
    gate: gate::MemberGate,
    limits: connection_limits::Behaviour,
    identify: identify::Behaviour,
    ping: ping::Behaviour,
    mdns: Toggle<mdns::tokio::Behaviour>,
    streams: libp2p_stream::Behaviour,
}

/// Something a link or join task reports back to the network task.
#[derive(Debug)]
enum LinkEvent {
    Ended {
        peer: PeerId,
        link: u64,
    },
    OpenFailed {
        peer: PeerId,
        link: u64,
    },
    /// Addresses of members, as another member knows them.
    Peers {
        from: PeerId,
        peers: BTreeMap<String, Vec<String>>,
    },
}

/// The network task's hold on one sync link.
#[derive(Debug)]
struct LinkHandle {
    id: u64,
    /// Ends the link from outside. A link on a connection that was closed gracefully would
    /// otherwise wait forever: yamux never wakes the streams of a connection it closes
    /// (rust-yamux#216), so reads and writes on them neither finish nor fail.
    stop: CancellationToken,
}

/// A member or `--peer` address to redial with backoff.
#[derive(Debug)]
struct Redial {
    next_at: Instant,
    delay: Duration,
}

impl Redial {
    /// Due at once: the first dial is not held back.
    fn new(now: Instant) -> Redial {
        Redial { next_at: now, delay: REDIAL_FIRST }
    }

    fn due(&mut self, now: Instant) -> bool {
        if now < self.next_at {
            return false;
        }
        self.next_at = now + self.delay;
        self.delay = (self.delay * 2).min(REDIAL_MAX);
        true
    }
}

struct PendingJoin {
    inviter: PeerId,
    request: JoinRequest,
    reply: oneshot::Sender<Result<Vec<u8>, ErrorBody>>,
    deadline: Instant,
}

/// The network task's state.
pub(crate) struct Network {
    swarm: Swarm<Behaviour>,
    local: NodeId,
    /// Where links deliver what they hear.
    heard: NetEvents,
    net: NetHandle,
    control: libp2p_stream::Control,
    book: book::AddressBook,
    book_path: PathBuf,
    book_dirty: bool,
    /// The store's writer, which writes the address book so the network task never waits
    /// for a disk.
    store: StoreHandle,
    /// Listening on the default addresses: the chosen ports go into the book.
    default_listen: bool,
    explicit_peers: Vec<(Multiaddr, Redial)>,
    redial: HashMap<PeerId, Redial>,
    /// mDNS sightings: addresses of peers on the LAN.
    lan: HashMap<PeerId, Vec<Multiaddr>>,
    /// The sync link per peer, opening or open.
    links: HashMap<PeerId, LinkHandle>,
    next_link: u64,
    /// Strangers admitted under an open invite, and since when.
    probation: HashMap<PeerId, Instant>,
    pending_join: Option<PendingJoin>,
    /// When the first of the current connections to each peer was established.
    connected_since: HashMap<PeerId, Instant>,
    last_exchange: Instant,
    /// From the tasks that run links and peer exchanges: bounded, since peers drive them.
    link_events: mpsc::Sender<LinkEvent>,
    link_events_in: mpsc::Receiver<LinkEvent>,
    /// Where members' connections coming and going are announced.
    events: EventBus,
}

impl std::fmt::Debug for Network {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Network").field("local", &self.local).finish_non_exhaustive()
    }
}

impl Network {
    /// Builds the swarm and starts listening. Errors here stop the node with the reason.
    pub(crate) fn new(
        key: &NodeKey,
        config: &NetConfig,
        heard: NetEvents,
        net: NetHandle,
        allow: Allowlist,
        events: EventBus,
        store: StoreHandle,
    ) -> anyhow::Result<Network> {
        let protobuf = key.to_libp2p_protobuf().context("cannot convert the node key for libp2p")?;
        let keypair = libp2p::identity::Keypair::from_protobuf_encoding(&protobuf)
            .context("cannot convert the node key for libp2p")?;
        let local_peer = keypair.public().to_peer_id();
        let mdns_on = config.mdns;
        let mut swarm = libp2p::SwarmBuilder::with_existing_identity(keypair)
            .with_tokio()
            .with_tcp(tcp::Config::default().nodelay(true), noise::Config::new, yamux::Config::default)
            .context("cannot set up TCP")?
            .with_quic()
            .with_behaviour(|key| {
                let mdns = if mdns_on {
                    match mdns::tokio::Behaviour::new(mdns::Config::default(), local_peer) {
                        Ok(mdns) => Some(mdns),
                        Err(error) => {
                            warn!(%error, "mDNS is not available here; find peers with --peer");
                            None
                        }
                    }
                } else {
                    None
                };
                let limits = connection_limits::ConnectionLimits::default()
                    .with_max_established(Some(CONNECTIONS_MAX))
                    .with_max_established_per_peer(Some(CONNECTIONS_PER_PEER_MAX));
                Behaviour {
                    gate: gate::MemberGate::default(),
                    limits: connection_limits::Behaviour::new(limits),
                    identify: identify::Behaviour::new(
                        identify::Config::new("/meshwork/1".to_owned(), key.public())
                            .with_agent_version(format!("meshwork/{}", env!("CARGO_PKG_VERSION"))),
                    ),
                    ping: ping::Behaviour::new(
                        ping::Config::new().with_interval(Duration::from_secs(5)).with_timeout(Duration::from_secs(10)),
                    ),
                    mdns: Toggle::from(mdns),
                    streams: libp2p_stream::Behaviour::new(),
                }
            })
            .context("cannot set up the network behaviours")?
            .with_swarm_config(|swarm| swarm.with_idle_connection_timeout(IDLE_CONNECTION_TIMEOUT))
            .build();
        swarm.behaviour_mut().gate.set_allowlist(allow);
        let control = swarm.behaviour().streams.new_control();
        let book_path = book::book_path(&config.home);
        let book = book::AddressBook::load(&book_path);
        let (link_events, link_events_in) = mpsc::channel(LINK_EVENTS_MAX);
        let mut network = Network {
            swarm,
            local: key.node_id(),
            heard,
            net,
            control,
            book,
            book_path,
            book_dirty: false,
            store,
            default_listen: config.listen.is_empty(),
            explicit_peers: config.peers.iter().map(|addr| (addr.clone(), Redial::new(Instant::now()))).collect(),
            redial: HashMap::new(),
            lan: HashMap::new(),
            links: HashMap::new(),
            next_link: 0,
            probation: HashMap::new(),
            pending_join: None,
            connected_since: HashMap::new(),
            last_exchange: Instant::now(),
            link_events,
            link_events_in,
            events,
        };
        network.listen(&config.listen)?;
        Ok(network)
    }

    fn listen(&mut self, explicit: &[Multiaddr]) -> anyhow::Result<()> {
        if !explicit.is_empty() {
            for addr in explicit {
                self.swarm.listen_on(addr.clone()).with_context(|| format!("cannot listen on {addr}"))?;
            }
            return Ok(());
        }
        let quic = |port: u16| -> Multiaddr {
            Multiaddr::empty().with(Protocol::Ip4([0, 0, 0, 0].into())).with(Protocol::Udp(port)).with(Protocol::QuicV1)
        };
        let tcp = |port: u16| -> Multiaddr {
            Multiaddr::empty().with(Protocol::Ip4([0, 0, 0, 0].into())).with(Protocol::Tcp(port))
        };
        for (addr, fallback) in
            [(quic(self.book.quic_port.unwrap_or(0)), quic(0)), (tcp(self.book.tcp_port.unwrap_or(0)), tcp(0))]
        {
            if let Err(error) = self.swarm.listen_on(addr.clone()) {
                warn!(%addr, %error, "cannot listen on the port of the last start; taking a new one");
                self.swarm.listen_on(fallback.clone()).with_context(|| format!("cannot listen on {fallback}"))?;
            }
        }
        Ok(())
    }

    /// Runs until the node stops or the queue actor goes away.
    pub(crate) async fn run(mut self, mut commands: mpsc::UnboundedReceiver<NetCommand>, stop: CancellationToken) {
        let (Ok(mut incoming_sync), Ok(mut incoming_join), Ok(mut incoming_peers)) = (
            self.control.accept(SYNC_PROTOCOL),
            self.control.accept(JOIN_PROTOCOL),
            self.control.accept(PEERS_PROTOCOL),
        ) else {
            warn!("the stream protocols could not be registered; the node stays offline");
            return;
        };
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                event = self.swarm.select_next_some() => self.on_swarm_event(event),
                command = commands.recv() => match command {
                    Some(command) => self.on_command(command),
                    None => break,
                },
                Some((peer, stream)) = incoming_sync.next() => self.accept_sync(peer, stream),
                Some((peer, stream)) = incoming_join.next() => {
                    match NodeId::from_peer_id(&peer) {
                        Ok(node) => { tokio::spawn(link::serve_join(node, stream, self.heard.clone())); }
                        Err(_) => debug!(%peer, "a join from a peer id without an ed25519 key"),
                    }
                }
                Some((peer, stream)) = incoming_peers.next() => self.serve_peers(peer, stream),
                Some(event) = self.link_events_in.recv() => self.on_link_event(event),
                _ = tick.tick() => self.on_tick(),
                () = stop.cancelled() => break,
            }
        }
        self.save_book();
    }

    /// Hands the address book to the store's writer when it changed, at once: a node killed
    /// right after it met its peers must still find them when it starts again (it may listen
    /// on other ports then, so they cannot find it). The book stays dirty when the writer's
    /// queue is full, for the next tick.
    fn save_book(&mut self) {
        if self.book_dirty && self.store.try_replace_file(self.book_path.clone(), self.book.encode()) {
            self.book_dirty = false;
        }
    }

    fn on_command(&mut self, command: NetCommand) {
        match command {
            NetCommand::Allow(allow) => {
                let joining_done = self.pending_join.is_none();
                if joining_done {
                    self.swarm.behaviour_mut().gate.set_joining(None);
                }
                self.swarm.behaviour_mut().gate.set_allowlist(allow);
                let connected: Vec<PeerId> = self.swarm.connected_peers().copied().collect();
                for peer in connected {
                    if self.swarm.behaviour().gate.is_member(&peer) {
                        // The members changed: a new one may be reachable through this one.
                        self.probation.remove(&peer);
                        self.exchange_peers(peer);
                        self.ensure_link(peer);
                    } else if !self.probation.contains_key(&peer) && !self.is_joining(&peer) {
                        info!(%peer, "no longer a member: disconnecting");
                        let _ = self.swarm.disconnect_peer_id(peer);
                    }
                }
            }
            NetCommand::Disconnect(node) => {
                if let Ok(peer) = node.peer_id() {
                    let _ = self.swarm.disconnect_peer_id(peer);
                }
            }
            NetCommand::Join { token, request, reply } => self.start_join(token, request, reply),
        }
    }

    fn is_joining(&self, peer: &PeerId) -> bool {
        self.pending_join.as_ref().is_some_and(|join| join.inviter == *peer)
    }

    fn start_join(
        &mut self,
        token: InviteToken,
        request: JoinRequest,
        reply: oneshot::Sender<Result<Vec<u8>, ErrorBody>>,
    ) {
        let Ok(inviter) = token.inviter.peer_id() else {
            let _ = reply.send(Err(ErrorBody::invalid_input("the invite names an invalid node key")));
            return;
        };
        let addrs: Vec<Multiaddr> = token.addrs.iter().filter_map(|addr| addr.parse().ok()).collect();
        self.swarm.behaviour_mut().gate.set_joining(Some(inviter));
        self.pending_join =
            Some(PendingJoin { inviter, request, reply, deadline: Instant::now() + link::JOIN_TIMEOUT });
        if self.swarm.is_connected(&inviter) {
            self.run_join();
            return;
        }
        let dial =
            DialOpts::peer_id(inviter).addresses(addrs).condition(PeerCondition::DisconnectedAndNotDialing).build();
        if let Err(error) = self.swarm.dial(dial) {
            self.fail_join(format!("cannot dial the inviter: {error}"));
        }
    }

    /// The inviter is connected: run the join exchange on its own task.
    fn run_join(&mut self) {
        let Some(join) = self.pending_join.take() else { return };
        let mut control = self.control.clone();
        tokio::spawn(async move {
            let answer = match control.open_stream(join.inviter, JOIN_PROTOCOL).await {
                Ok(stream) => {
                    match tokio::time::timeout(link::JOIN_TIMEOUT, link::request_join(stream, join.request)).await {
                        Ok(answer) => answer,
                        Err(_) => Err(ErrorBody::new(ErrorCode::NodeUnavailable, "the inviter did not answer in time")
                            .retryable()),
                    }
                }
                Err(error) => Err(ErrorBody::new(
                    ErrorCode::NodeUnavailable,
                    format!("cannot open the join protocol with the inviter: {error}"),
                )
                .retryable()),
            };
            let _ = join.reply.send(answer);
        });
    }

    fn fail_join(&mut self, reason: String) {
        if let Some(join) = self.pending_join.take() {
            let _ = join.reply.send(Err(ErrorBody::new(ErrorCode::NodeUnavailable, reason).retryable()));
        }
        self.swarm.behaviour_mut().gate.set_joining(None);
    }

    fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::NewListenAddr { address, .. } => {
                info!(%address, "listening");
                self.note_listen_port(&address);
                let mut facts = self.net.facts();
                let text = address.to_string();
                if !facts.listen.contains(&text) {
                    facts.listen.push(text);
                }
            }
            SwarmEvent::ExpiredListenAddr { address, .. } => {
                let text = address.to_string();
                self.net.facts().listen.retain(|known| *known != text);
            }
            SwarmEvent::ConnectionEstablished { peer_id, endpoint, num_established, .. } => {
                if num_established.get() == 1 {
                    self.connected_since.insert(peer_id, Instant::now());
                }
                let now = now_ms();
                if endpoint.is_dialer() {
                    let addr = endpoint.get_remote_address().clone();
                    self.book_dirty |= self.book.note(&peer_id.to_string(), &[addr], now);
                    self.save_book();
                }
                self.redial.remove(&peer_id);
                if let Ok(node) = NodeId::from_peer_id(&peer_id) {
                    let mut facts = self.net.facts();
                    let entry = facts.peers.entry(node).or_default();
                    entry.connected = true;
                    entry.last_seen_ms = Some(now);
                    if num_established.get() == 1 {
                        entry.connected_since_ms = Some(now);
                    }
                }
                if self.swarm.behaviour().gate.is_member(&peer_id) {
                    if num_established.get() == 1 {
                        self.events.publish([Event::PeerConnected { node_id: peer_id.to_string() }]);
                    }
                    self.ensure_link(peer_id);
                    self.exchange_peers(peer_id);
                } else if !self.is_joining(&peer_id) {
                    self.probation.entry(peer_id).or_insert_with(Instant::now);
                }
                if self.is_joining(&peer_id) {
                    self.run_join();
                }
            }
            SwarmEvent::ConnectionClosed { peer_id, endpoint, num_established, .. } => {
                self.stop_link_of_closed_connection(peer_id, endpoint.get_remote_address(), num_established);
                if num_established > 0 {
                    return;
                }
                if let Ok(node) = NodeId::from_peer_id(&peer_id) {
                    let mut facts = self.net.facts();
                    let entry = facts.peers.entry(node).or_default();
                    entry.connected = false;
                    entry.connected_since_ms = None;
                    entry.last_seen_ms = Some(now_ms());
                    entry.rtt_ms = None;
                }
                if self.swarm.behaviour().gate.is_member(&peer_id) {
                    self.events.publish([Event::PeerDisconnected { node_id: peer_id.to_string() }]);
                }
                self.probation.remove(&peer_id);
                self.connected_since.remove(&peer_id);
            }
            SwarmEvent::OutgoingConnectionError { peer_id: Some(peer), error, .. } => {
                self.net.facts().refused_connections = self.swarm.behaviour().gate.refused;
                debug!(%peer, %error, "dial failed");
                if self.is_joining(&peer) {
                    self.fail_join(format!("cannot reach the inviter: {error}"));
                }
            }
            SwarmEvent::IncomingConnectionError { error, .. } => {
                self.net.facts().refused_connections = self.swarm.behaviour().gate.refused;
                debug!(%error, "incoming connection failed");
            }
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. })) => {
                let addrs: Vec<Multiaddr> = info.listen_addrs.into_iter().filter(is_dialable).collect();
                self.book_dirty |= self.book.note(&peer_id.to_string(), &addrs, now_ms());
                self.save_book();
                if let Ok(node) = NodeId::from_peer_id(&peer_id) {
                    let mut facts = self.net.facts();
                    facts.peers.entry(node).or_default().addrs = addrs.iter().map(ToString::to_string).collect();
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Ping(ping::Event { peer, connection, result: Err(error) }))
                if ping_failure_means_dead(&error) =>
            {
                // A connection that stopped answering pings (its peer died, or the path to it
                // went, without closing it) goes, so the link on it is opened again on a live one.
                debug!(%peer, %error, "ping failed; closing the connection");
                self.swarm.close_connection(connection);
            }
            SwarmEvent::Behaviour(BehaviourEvent::Ping(ping::Event { peer, result: Ok(rtt), .. })) => {
                if let Ok(node) = NodeId::from_peer_id(&peer) {
                    let mut facts = self.net.facts();
                    let entry = facts.peers.entry(node).or_default();
                    let millis = rtt.as_secs_f64() * 1000.0;
                    entry.rtt_ms = Some(millis);
                    entry.last_seen_ms = Some(now_ms());
                    facts.note_round_trip(node, millis);
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Mdns(mdns::Event::Discovered(found))) => {
                for (peer, addr) in found {
                    let known = self.lan.entry(peer).or_default();
                    if !known.contains(&addr) {
                        known.push(addr);
                    }
                    if self.swarm.behaviour().gate.is_member(&peer) && !self.swarm.is_connected(&peer) {
                        self.redial.remove(&peer);
                    }
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Mdns(mdns::Event::Expired(gone))) => {
                for (peer, addr) in gone {
                    if let Some(known) = self.lan.get_mut(&peer) {
                        known.retain(|known| *known != addr);
                    }
                }
            }
            _ => {}
        }
    }

    /// Records the ports the OS chose on the default listeners, for the next start.
    fn note_listen_port(&mut self, address: &Multiaddr) {
        if !self.default_listen {
            return;
        }
        let protocols: Vec<Protocol<'_>> = address.iter().collect();
        match protocols.as_slice() {
            [_, Protocol::Udp(port), Protocol::QuicV1, ..] if self.book.quic_port != Some(*port) => {
                self.book.quic_port = Some(*port);
                self.book_dirty = true;
            }
            [_, Protocol::Tcp(port), ..] if self.book.tcp_port != Some(*port) => {
                self.book.tcp_port = Some(*port);
                self.book_dirty = true;
            }
            _ => {}
        }
    }

    /// Opens the sync link to a connected member unless one exists. Of two members, the one
    /// with the lower node id opens it, so a pair never ends up with two links; the other opens
    /// it only when none came within [`LINK_GRACE`] of connecting (the lower one may still hold
    /// a link on a dead connection, after the other restarted; the new link replaces it).
    fn ensure_link(&mut self, peer: PeerId) {
        let Ok(node) = NodeId::from_peer_id(&peer) else { return };
        if self.links.contains_key(&peer) || !self.swarm.is_connected(&peer) {
            return;
        }
        let waited = self.connected_since.get(&peer).is_some_and(|since| since.elapsed() > LINK_GRACE);
        if node <= self.local && !waited {
            return;
        }
        let (link, stop) = self.new_link(peer);
        let mut control = self.control.clone();
        let (heard, events) = (self.heard.clone(), self.link_events.clone());
        tokio::spawn(async move {
            match control.open_stream(peer, SYNC_PROTOCOL).await {
                Ok(stream) => {
                    link::run_sync_link_until(node, link, stream, heard, stop).await;
                    let _ = events.send(LinkEvent::Ended { peer, link }).await;
                }
                Err(error) => {
                    debug!(%peer, %error, "cannot open the sync link");
                    let _ = events.send(LinkEvent::OpenFailed { peer, link }).await;
                }
            }
        });
    }

    /// Registers a new link to `peer`; one it replaces is stopped.
    fn new_link(&mut self, peer: PeerId) -> (u64, CancellationToken) {
        self.next_link += 1;
        let stop = CancellationToken::new();
        if let Some(replaced) = self.links.insert(peer, LinkHandle { id: self.next_link, stop: stop.clone() }) {
            replaced.stop.cancel();
        }
        (self.next_link, stop)
    }

    /// Stops the link to `peer` when the connection that closed may have carried it: the
    /// peer's last connection, or any yamux (TCP) one, whose streams would never wake
    /// (see [`LinkHandle::stop`]). A QUIC connection ends its streams itself. The next tick
    /// opens a new link on a live connection, if one is left.
    fn stop_link_of_closed_connection(&mut self, peer: PeerId, remote: &Multiaddr, connections_left: u32) {
        let yamux = remote.iter().any(|protocol| matches!(protocol, Protocol::Tcp(_)));
        if (connections_left == 0 || yamux)
            && let Some(link) = self.links.remove(&peer)
        {
            debug!(%peer, link = link.id, "a connection closed: ending the sync link that may run on it");
            link.stop.cancel();
        }
    }

    fn accept_sync(&mut self, peer: PeerId, stream: libp2p::Stream) {
        let node = match NodeId::from_peer_id(&peer) {
            Ok(node) if self.swarm.behaviour().gate.is_member(&peer) => node,
            _ => {
                // A stranger on probation may only join; nothing it sends is read.
                debug!(%peer, "refused a sync stream from a non-member");
                return;
            }
        };
        let (link, stop) = self.new_link(peer);
        let (heard, events) = (self.heard.clone(), self.link_events.clone());
        tokio::spawn(async move {
            link::run_sync_link_until(node, link, stream, heard, stop).await;
            let _ = events.send(LinkEvent::Ended { peer, link }).await;
        });
    }

    fn on_link_event(&mut self, event: LinkEvent) {
        match event {
            LinkEvent::Ended { peer, link } | LinkEvent::OpenFailed { peer, link } => {
                if self.links.get(&peer).is_some_and(|open| open.id == link) {
                    self.links.remove(&peer);
                }
            }
            LinkEvent::Peers { from, peers } => {
                let local = self.local.to_string();
                let now = now_ms();
                for (node, addrs) in peers {
                    let Ok(peer) = node.parse::<PeerId>() else { continue };
                    // Only members, never this node, and never what a peer says of itself
                    // (identify tells that first hand).
                    if node == local || peer == from || !self.swarm.behaviour().gate.is_member(&peer) {
                        continue;
                    }
                    let addrs: Vec<Multiaddr> =
                        addrs.iter().filter_map(|addr| addr.parse().ok()).filter(is_dialable).collect();
                    if self.book.note(&node, &addrs, now) {
                        self.book_dirty = true;
                        self.redial.remove(&peer);
                    }
                }
            }
        }
    }

    /// Answers a member's peer exchange with the addresses this node knows of the members.
    fn serve_peers(&mut self, peer: PeerId, stream: libp2p::Stream) {
        if !self.swarm.behaviour().gate.is_member(&peer) {
            return;
        }
        let members = &self.swarm.behaviour().gate.allowlist().members;
        let mut peers: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for member in members {
            let text = member.to_string();
            if let Some(entry) = self.book.peers.get(&text) {
                peers.insert(text, entry.addrs.clone());
            }
        }
        tokio::spawn(link::send_peers(stream, peers));
    }

    /// Asks a connected member for the addresses it knows.
    fn exchange_peers(&self, peer: PeerId) {
        let mut control = self.control.clone();
        let events = self.link_events.clone();
        tokio::spawn(async move {
            let Ok(stream) = control.open_stream(peer, PEERS_PROTOCOL).await else { return };
            if let Some(peers) = link::receive_peers(stream).await {
                let _ = events.send(LinkEvent::Peers { from: peer, peers }).await;
            }
        });
    }

    fn on_tick(&mut self) {
        let now = Instant::now();
        self.net.facts().refused_connections = self.swarm.behaviour().gate.refused;
        // Strangers admitted for an invite that did not become members.
        let expired: Vec<PeerId> = self
            .probation
            .iter()
            .filter(|(peer, since)| {
                now.duration_since(**since) > gate::PROBATION && !self.swarm.behaviour().gate.is_member(peer)
            })
            .map(|(peer, _)| *peer)
            .collect();
        for peer in expired {
            self.probation.remove(&peer);
            let _ = self.swarm.disconnect_peer_id(peer);
        }
        if self.pending_join.as_ref().is_some_and(|join| now > join.deadline) {
            self.fail_join("could not reach the inviter at any address of the token".to_owned());
        }
        self.redial_members(now);
        self.redial_explicit(now);
        // Links that ended while the connection stays: open again.
        let connected: Vec<PeerId> = self.swarm.connected_peers().copied().collect();
        let exchange = now.duration_since(self.last_exchange) > PEER_EXCHANGE_EVERY;
        if exchange {
            self.last_exchange = now;
        }
        for peer in connected {
            if self.swarm.behaviour().gate.is_member(&peer) {
                self.ensure_link(peer);
                if exchange {
                    self.exchange_peers(peer);
                }
            }
        }
        self.save_book();
    }

    fn redial_members(&mut self, now: Instant) {
        let local = self.local.peer_id().ok();
        let members: Vec<PeerId> = self.swarm.behaviour().gate.allowlist().members.iter().copied().collect();
        for peer in members {
            if Some(peer) == local || self.swarm.is_connected(&peer) {
                continue;
            }
            let mut addrs = self.book.addrs_of(&peer.to_string());
            addrs.extend(self.lan.get(&peer).cloned().unwrap_or_default());
            if addrs.is_empty() {
                continue;
            }
            if !self.redial.entry(peer).or_insert_with(|| Redial::new(now)).due(now) {
                continue;
            }
            let dial =
                DialOpts::peer_id(peer).addresses(addrs).condition(PeerCondition::DisconnectedAndNotDialing).build();
            if let Err(error) = self.swarm.dial(dial) {
                debug!(%peer, %error, "redial failed");
            }
        }
    }

    fn redial_explicit(&mut self, now: Instant) {
        let connected_addrs: Vec<PeerId> = self.swarm.connected_peers().copied().collect();
        for (addr, redial) in &mut self.explicit_peers {
            let named_peer = addr.iter().find_map(|protocol| match protocol {
                Protocol::P2p(peer) => Some(peer),
                _ => None,
            });
            if named_peer.is_some_and(|peer| connected_addrs.contains(&peer)) {
                continue;
            }
            // An address without a peer id: dialled until some connection came from it.
            if named_peer.is_none()
                && self.book.peers.values().any(|entry| entry.addrs.iter().any(|known| *known == addr.to_string()))
                && !connected_addrs.is_empty()
            {
                continue;
            }
            if redial.due(now)
                && let Err(error) = self.swarm.dial(addr.clone())
            {
                debug!(%addr, %error, "dial of --peer failed");
            }
        }
    }
}

/// Whether a failed ping shows the connection is dead. libp2p-ping swallows the first failure
/// of a connection; over TCP + yamux a cut path then fails every later ping with `Other` ("ping
/// protocol negotiation timed out"), never `Timeout` again, so both count. `Unsupported` only
/// says the peer does not speak ping: its connection is alive.
fn ping_failure_means_dead(failure: &ping::Failure) -> bool {
    match failure {
        ping::Failure::Timeout | ping::Failure::Other { .. } => true,
        ping::Failure::Unsupported => false,
    }
}

/// Addresses worth remembering for a peer: not relayed, not unspecified.
fn is_dialable(addr: &Multiaddr) -> bool {
    !addr.iter().any(|protocol| {
        matches!(protocol, Protocol::P2pCircuit)
            || matches!(protocol, Protocol::Ip4(ip) if ip.is_unspecified())
            || matches!(protocol, Protocol::Ip6(ip) if ip.is_unspecified())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settle_time_is_zero_alone_and_capped_with_slow_peers() {
        let mut facts = NetFacts::default();
        assert_eq!(facts.settle_ms(), 0);
        let node = NodeId::from_public_key_bytes([1; 32]);
        let mut peer = PeerFacts { connected: true, ..PeerFacts::default() };
        peer.rtt_samples.extend([0.2, 0.3, 4.0]);
        facts.peers.insert(node, peer);
        assert_eq!(facts.settle_ms(), 8, "twice the slowest of few samples, rounded up");
        facts.peers.get_mut(&node).unwrap().rtt_samples.push_back(900.0);
        assert_eq!(facts.settle_ms(), SETTLE_MS_MAX);
        facts.peers.get_mut(&node).unwrap().connected = false;
        assert_eq!(facts.settle_ms(), 0, "no connected peer: no wait");
    }

    /// Regression: a TCP connection across a partition was never closed (only `Timeout` closed
    /// one, and yamux reports the cut as `Other` after the first, silent timeout), so the
    /// partition went unnoticed until the kernel gave up on the socket after many minutes.
    #[test]
    fn a_ping_whose_stream_cannot_even_be_negotiated_closes_the_connection() {
        let negotiation = std::io::Error::new(std::io::ErrorKind::TimedOut, "ping protocol negotiation timed out");
        assert!(ping_failure_means_dead(&ping::Failure::Other { error: Box::new(negotiation) }));
        assert!(ping_failure_means_dead(&ping::Failure::Timeout));
        assert!(!ping_failure_means_dead(&ping::Failure::Unsupported), "a peer without ping is alive");
    }

    #[test]
    fn unspecified_and_relayed_addresses_are_not_kept() {
        assert!(is_dialable(&"/ip4/10.0.0.2/udp/4001/quic-v1".parse().unwrap()));
        assert!(!is_dialable(&"/ip4/0.0.0.0/tcp/4001".parse().unwrap()));
    }
}
