//! The queue actor's side of the mesh: it runs the sync engine over the links the network
//! opens, admits joining nodes with invites, joins a mesh, tells agents whose claims lost,
//! and keeps the network's allowlist in step with the membership records.
//!
//! Everything here runs on the actor task, so the replica, the sync engine and the invites
//! change one operation at a time.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use meshwork_crdt::sync::{SyncInput, SyncOutput};
use meshwork_crdt::{QueueDoc, Replica, Touched};
use meshwork_protocol::api::{InviteView, JoinedView};
use meshwork_protocol::api::{MemberView, MessageView};
use meshwork_protocol::error::ErrorBody;
use meshwork_protocol::hlc::HLC_DRIFT_MS_MAX;
use meshwork_protocol::identity::hex;
use meshwork_protocol::invite::{InviteToken, secret_hash};
use meshwork_protocol::limits::{INVITE_TTL_MS_DEFAULT, INVITE_TTL_MS_MAX};
use meshwork_protocol::record::{Membership, MembershipAction};
use meshwork_protocol::storage::Frame;
use meshwork_protocol::time::format_rfc3339_ms;
use meshwork_protocol::wire::{JoinRefusal, JoinRequest};
use meshwork_protocol::{AgentId, AgentName, ErrorCode, NodeId};
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

/// How long a node gathers the duties of merges before it does them together (its votes and
/// notices, one change): short beside a claim's confirmation bound (250 ms by default) and the
/// lost-claim notice's second, long beside a merge in a busy mesh (about a millisecond).
pub(crate) const DUTIES_BATCH_MS: u64 = 10;

use crate::clock::now_ms;
use crate::home::MeshFile;
use crate::invites::{InviteEntry, Invites};
use crate::net::{Allowlist, NetCommand, NetEvent};
use crate::queue::{Command, Link, MeshCommand, QueueActor, QueueHandle, Reply};
use crate::store;

impl QueueHandle {
    async fn mesh(&self, command: MeshCommand) -> bool {
        self.commands.send(Command::Mesh(Box::new(command))).await.is_ok()
    }

    pub(crate) async fn invite(&self, ttl_ms: Option<u64>) -> Result<InviteView, ErrorBody> {
        self.ask(|reply| MeshCommand::Invite { ttl_ms, reply }).await
    }

    pub(crate) async fn join(&self, token: String) -> Result<JoinedView, ErrorBody> {
        self.ask(|reply| MeshCommand::Join { token, reply }).await
    }

    pub(crate) async fn remove_member(&self, node: NodeId) -> Result<Vec<MemberView>, ErrorBody> {
        self.ask(|reply| MeshCommand::Remove { node, reply }).await
    }

    pub(crate) async fn inbox_read(&self, agent: AgentName, unread: bool) -> Result<Vec<MessageView>, ErrorBody> {
        self.ask(|reply| MeshCommand::InboxRead { agent, unread, reply }).await
    }

    async fn ask<T>(&self, command: impl FnOnce(Reply<T>) -> MeshCommand) -> Result<T, ErrorBody> {
        let (reply, answer) = oneshot::channel();
        if !self.mesh(command(reply)).await {
            return Err(crate::queue::unavailable());
        }
        answer.await.unwrap_or_else(|_| Err(crate::queue::unavailable()))
    }
}

/// How long an invite lives: `--ttl`, within its limits.
fn invite_ttl(ttl_ms: Option<u64>) -> Result<u64, ErrorBody> {
    let ttl = ttl_ms.unwrap_or(INVITE_TTL_MS_DEFAULT);
    if ttl == 0 || ttl > INVITE_TTL_MS_MAX {
        return Err(ErrorBody::invalid_input(format!(
            "an invite lives between 1 ms and INVITE_TTL_MS_MAX ({INVITE_TTL_MS_MAX} ms, 7 days)"
        )));
    }
    Ok(ttl)
}

/// Whether a joiner may refuse an invite as expired without asking the inviter. The inviter's
/// clock decides (it refuses an expired invite itself); this node's clock may run ahead of it,
/// so only an invite expired by more than the clock skew the mesh tolerates
/// ([`HLC_DRIFT_MS_MAX`]) is refused here.
fn expired_beyond_doubt(expires_ms: u64, now_ms: u64) -> bool {
    expires_ms.saturating_add(HLC_DRIFT_MS_MAX) <= now_ms
}

/// The answer to a join the inviter did not answer. When the invite has expired by this
/// machine's clock as well, that is the likely reason (an inviter admits strangers only while
/// one of its invites is open) and the token will not work again: `GATE_REFUSED`.
fn unreachable_or_expired(error: ErrorBody, expires_ms: u64, now_ms: u64) -> ErrorBody {
    if error.code == ErrorCode::NodeUnavailable && expires_ms <= now_ms {
        return ErrorBody::new(
            ErrorCode::GateRefused,
            format!("this invite expired at {}", format_rfc3339_ms(expires_ms)),
        );
    }
    error
}

fn refuse(code: ErrorCode, message: impl Into<String>) -> JoinRefusal {
    JoinRefusal { code, message: message.into() }
}

impl QueueActor {
    /// What the network heard: links opening, frames, links closing, joiners.
    pub(crate) async fn on_net(&mut self, event: NetEvent) {
        match event {
            NetEvent::SyncOpened { peer, link, sender, reply } => {
                let accepted = self.sync_opened(peer, link, sender).await;
                let _ = reply.send(accepted);
            }
            NetEvent::SyncFrame { peer, link, bytes } => {
                let Some(open) = self.links.get_mut(&peer).filter(|open| open.id == link) else { return };
                if let Some(since) = open.awaiting_since.take() {
                    self.net.facts().note_round_trip(peer, since.elapsed().as_secs_f64() * 1000.0);
                }
                self.sync(SyncInput::Frame { peer, bytes }).await;
            }
            NetEvent::SyncBadFrame { peer, link, reason } => {
                if self.links.get(&peer).is_some_and(|open| open.id == link) {
                    *self.engine.bad_frames.entry(peer).or_default() += 1;
                    self.close_link(peer, &format!("bad frame: {reason}"));
                }
            }
            NetEvent::SyncClosed { peer, link } => {
                if self.links.get(&peer).is_some_and(|open| open.id == link) {
                    self.links.remove(&peer);
                    self.sync(SyncInput::Disconnected { peer }).await;
                }
            }
            NetEvent::Admit { peer, request, reply } => {
                let answer = self.admit(peer, request).await;
                let _ = reply.send(answer);
            }
        }
    }

    pub(super) async fn on_mesh(&mut self, command: MeshCommand) {
        match command {
            MeshCommand::Push => {
                self.push_queued.store(false, Ordering::Release);
                if !self.links.is_empty() {
                    self.sync(SyncInput::LocalChange).await;
                }
            }
            MeshCommand::Invite { ttl_ms, reply } => {
                let _ = reply.send(self.invite(ttl_ms).await);
            }
            MeshCommand::Join { token, reply } => self.join(token, reply),
            MeshCommand::Adopt { token, document, reply } => {
                let answer = self.adopt(&token, document).await;
                let _ = reply.send(answer);
            }
            MeshCommand::Remove { node, reply } => {
                let answer = self.remove_member(node).await;
                let _ = reply.send(answer);
            }
            MeshCommand::InboxRead { agent, unread, reply } => {
                let answer = self.inbox_read(agent, unread).await;
                let _ = reply.send(answer);
            }
        }
    }

    async fn sync_opened(&mut self, peer: NodeId, link: u64, sender: mpsc::Sender<Vec<u8>>) -> bool {
        if !self.replica.members().get(&peer).is_some_and(|member| member.is_current()) {
            return false;
        }
        if self.links.contains_key(&peer) {
            // A newer link replaces the old one: the peer reconnected.
            self.sync(SyncInput::Disconnected { peer }).await;
        }
        self.links.insert(peer, Link { id: link, sender, awaiting_since: None });
        let saved_state = std::fs::read(self.sync_state_path(&peer)).ok();
        self.sync(SyncInput::Connected { peer, saved_state }).await;
        self.links.contains_key(&peer)
    }

    fn sync_state_path(&self, peer: &NodeId) -> PathBuf {
        self.home.root().join("sync").join(format!("{peer}.state"))
    }

    /// Feeds the sync engine and carries out what it says, in order.
    pub(super) async fn sync(&mut self, input: SyncInput) {
        let outputs = self.engine.handle(&mut self.replica, input, now_ms());
        for output in outputs {
            match output {
                SyncOutput::Send { peer, frame, expects_reply } => {
                    let Some(open) = self.links.get_mut(&peer) else { continue };
                    if expects_reply {
                        open.awaiting_since.get_or_insert_with(std::time::Instant::now);
                    }
                    if let Err(error) = open.sender.try_send(frame) {
                        let reason = match error {
                            mpsc::error::TrySendError::Full(_) => "the peer fell too far behind",
                            mpsc::error::TrySendError::Closed(_) => "the link closed",
                        };
                        self.close_link(peer, reason);
                    }
                }
                SyncOutput::Close { peer, reason } => self.close_link(peer, &reason),
                SyncOutput::Persist { changes } => self.persist_received(changes).await,
                SyncOutput::PersistPeerState { peer, state } => self.save_sync_state(&peer, &state).await,
                SyncOutput::Changed(touched) => self.after_merge(&touched).await,
            }
        }
    }

    fn close_link(&mut self, peer: NodeId, reason: &str) {
        if self.links.remove(&peer).is_some() {
            info!(%peer, reason, "closing the sync link");
        }
        self.net.send(NetCommand::Disconnect(peer));
    }

    /// Hands the peer's sync state to the store's thread; a write that fails is logged there
    /// and costs only a fresh sync next time.
    async fn save_sync_state(&self, peer: &NodeId, state: &[u8]) {
        let _durable = self.store.replace_file(self.sync_state_path(peer), state.to_vec()).await;
    }

    /// Changes from a peer: queued to the log now, in the order received (before any later
    /// local change that may depend on them). The actor does not wait for the fsync; a failed
    /// write makes the next write a whole snapshot.
    async fn persist_received(&mut self, changes: Vec<u8>) {
        let durable = self.store.submit(vec![Frame::Changes(changes)]).await;
        let failed = Arc::clone(&self.write_failed);
        tokio::spawn(async move {
            if !matches!(durable.await, Ok(Ok(()))) {
                failed.store(true, Ordering::Release);
            }
        });
    }

    /// After a merge: keep the allowlist in step (the engine ends removed members' sessions),
    /// then do this node's duties for the touched tasks.
    async fn after_merge(&mut self, touched: &Touched) {
        if touched.members {
            self.send_allowlist();
        }
        // The merge's events at once. Its duties at once too when none were done in the last
        // `DUTIES_BATCH_MS`; else together with those of every merge until then.
        self.publish_events(touched, &[]);
        if self.duties_at.is_none() {
            self.fulfil_duties(touched).await;
            self.duties_at = Some(tokio::time::Instant::now() + std::time::Duration::from_millis(DUTIES_BATCH_MS));
        } else {
            self.defer_duties(touched);
        }
        if !self.claims_waiting.is_empty() {
            self.recheck_claims_waiting().await;
        }
    }

    /// Adds what a merge touched to the duties due at `duties_at`. In a busy mesh a node merges
    /// many times a second, and each batch of votes is an Automerge change every node takes
    /// in: one change per merge made a storm of claims ten times slower (docs/BENCHMARKS.md,
    /// "Mesh").
    fn defer_duties(&mut self, touched: &Touched) {
        self.duties_due.absorb(touched);
    }

    /// `duties_at` came: does the duties deferred since, if any, and waits another
    /// `DUTIES_BATCH_MS` before doing any at once again; with none, the next merge's are done
    /// at once.
    pub(super) async fn fulfil_deferred_duties(&mut self) {
        let due = std::mem::take(&mut self.duties_due);
        if due.is_empty() {
            self.duties_at = None;
            return;
        }
        self.duties_at = Some(tokio::time::Instant::now() + std::time::Duration::from_millis(DUTIES_BATCH_MS));
        self.fulfil_duties(&due).await;
        if !self.claims_waiting.is_empty() {
            self.recheck_claims_waiting().await;
        }
    }

    /// Signs this node's votes on pending quorum claims of the touched tasks and writes the
    /// lost-claim notices owed to its agents ([`meshwork_crdt::duties`]), each exactly once.
    pub(super) async fn fulfil_duties(&mut self, touched: &Touched) {
        let key = Arc::clone(&self.key);
        let duties = self.replica.fulfil_duties_after(&key, touched, now_ms());
        for error in &duties.errors {
            warn!(%error, "a duty after the merge was not written");
        }
        // The events of the merge and of the duties' own changes (votes can make a quorum
        // claim count), told before the duties are durable: they describe the replica.
        let mut told = touched.clone();
        told.tasks.extend(duties.acks.iter().map(|ack| ack.task.clone()));
        self.publish_events(&told, &duties.notices);
        if duties.changes.is_empty() {
            return;
        }
        if !duties.acks.is_empty() {
            info!(acks = duties.acks.len(), "acknowledged quorum claims");
        }
        for notice in &duties.notices {
            info!(to = %notice.to, subject = %notice.message.subject, "told an agent its claim lost");
        }
        // Nobody waits for a duty: the actor goes on at once, and the changes are offered to
        // peers once durable (a failed write makes the next write a whole snapshot).
        let (durable, _nobody_waits) = oneshot::channel();
        self.write_then_answer(duties.changes.into_iter().map(Frame::Changes).collect(), Ok(()), durable).await;
    }

    /// The members' peer ids and whether invites are open, for the network's gate.
    pub(super) fn allowlist(&self) -> Allowlist {
        Allowlist {
            members: self.replica.members().current().filter_map(|member| member.node.peer_id().ok()).collect(),
            invites_open_until_ms: self.invites.open_until_ms(now_ms()),
        }
    }

    pub(super) fn send_allowlist(&self) {
        self.net.send(NetCommand::Allow(self.allowlist()));
    }

    async fn invite(&mut self, ttl_ms: Option<u64>) -> Result<InviteView, ErrorBody> {
        let ttl = invite_ttl(ttl_ms)?;
        if self.net.facts().offline {
            return Err(ErrorBody::new(
                ErrorCode::Usage,
                "this node runs --offline: nobody can reach it to join; start it without --offline",
            ));
        }
        let node = self.replica.node();
        if !self.replica.members().get(&node).is_some_and(|member| member.is_current()) {
            return Err(ErrorBody::new(ErrorCode::GateRefused, "this node is not a member of its mesh"));
        }
        let mesh =
            self.replica.mesh().ok_or_else(|| ErrorBody::new(ErrorCode::Internal, "the document has no mesh"))?;
        let addrs = self.invite_addrs();
        if addrs.is_empty() {
            return Err(
                ErrorBody::new(ErrorCode::NodeUnavailable, "the node is not listening yet; try again").retryable()
            );
        }
        let mut secret = [0u8; 32];
        rand::fill(&mut secret);
        let now = now_ms();
        let expires_ms = now.saturating_add(ttl);
        let entry = InviteEntry { secret_hash: hex(&secret_hash(&secret)), created_ms: now, expires_ms, used_by: None };
        self.invites.add(entry, now);
        self.invites.save(&self.store, &Invites::path(self.home.root())).await?;
        self.send_allowlist();
        let token = InviteToken { mesh, inviter: node, addrs, secret, expires_ms };
        info!(expires = %format_rfc3339_ms(expires_ms), "issued an invite");
        Ok(InviteView { token: token.encode(), mesh_id: mesh.to_string(), expires_at: format_rfc3339_ms(expires_ms) })
    }

    /// The addresses a joiner should try, loopback last (it only works on this machine).
    fn invite_addrs(&self) -> Vec<String> {
        let mut addrs = self.net.facts().listen.clone();
        addrs.sort_by_key(|addr| (addr.contains("/127.0.0.1/") || addr.contains("/::1/"), !addr.contains("/quic")));
        addrs
    }

    async fn admit(&mut self, peer: NodeId, request: JoinRequest) -> Result<Vec<u8>, JoinRefusal> {
        let now = now_ms();
        let hash = hex(&secret_hash(&request.secret));
        let Some(index) = self.invites.entries.iter().position(|entry| entry.secret_hash == hash) else {
            return Err(refuse(ErrorCode::GateRefused, "this invite is unknown to the inviter"));
        };
        let entry = self.invites.entries[index].clone();
        let peer_text = peer.to_string();
        match &entry.used_by {
            // The same node asking again (its answer was lost): the document again.
            Some(user) if *user == peer_text => return Ok(self.replica.doc().save()),
            Some(_) => return Err(refuse(ErrorCode::GateRefused, "this invite was already used")),
            None if entry.expires_ms <= now => {
                return Err(refuse(
                    ErrorCode::GateRefused,
                    format!("this invite expired at {}", format_rfc3339_ms(entry.expires_ms)),
                ));
            }
            None => {}
        }
        if let Err(error) = meshwork_protocol::identity::validate_name("a node name", &request.name) {
            return Err(refuse(ErrorCode::InvalidInput, error.to_string()));
        }
        // Used before anything else: a crash from here on leaves it used, never reusable.
        self.invites.entries[index].used_by = Some(peer_text);
        if let Err(error) = self.invites.save(&self.store, &Invites::path(self.home.root())).await {
            self.invites.entries[index].used_by = None;
            return Err(refuse(error.code, error.message));
        }
        let membership = Membership { action: MembershipAction::Add, member: peer, name: request.name, roles: vec![] };
        let key = Arc::clone(&self.key);
        let changes = match self.replica.change_membership(&key, membership, now) {
            Ok(changes) => changes,
            Err(error) => {
                let body = error.to_error_body();
                return Err(refuse(body.code, body.message));
            }
        };
        if !self.write_and_push(vec![Frame::Changes(changes)]).await {
            return Err(refuse(ErrorCode::Internal, "the inviter could not store the membership record"));
        }
        info!(%peer, "admitted a new member");
        self.publish_events(&Touched { members: true, ..Touched::default() }, &[]);
        self.send_allowlist();
        Ok(self.replica.doc().save())
    }

    fn join(&mut self, token_text: String, reply: Reply<JoinedView>) {
        let token = match InviteToken::decode(&token_text) {
            Ok(token) => token,
            Err(error) => {
                let _ = reply.send(Err(ErrorBody::invalid_input(error.to_string())));
                return;
            }
        };
        let checked = self.check_join(&token);
        match checked {
            Err(error) => {
                let _ = reply.send(Err(error));
            }
            Ok(Some(view)) => {
                let _ = reply.send(Ok(view));
            }
            Ok(None) => {
                let (net_reply, document) = oneshot::channel();
                let request =
                    meshwork_protocol::wire::JoinRequest { secret: token.secret, name: self.facts.name.clone() };
                if !self.net.send(NetCommand::Join { token: token.clone(), request, reply: net_reply }) {
                    let _ = reply.send(Err(ErrorBody::new(ErrorCode::NodeUnavailable, "the network is not running")));
                    return;
                }
                let Some(commands) = self.commands.upgrade() else { return };
                tokio::spawn(async move {
                    match document.await {
                        Ok(Ok(document)) => {
                            let adopt = MeshCommand::Adopt { token, document, reply };
                            let _ = commands.send(Command::Mesh(Box::new(adopt))).await;
                        }
                        Ok(Err(error)) => {
                            let _ = reply.send(Err(unreachable_or_expired(error, token.expires_ms, now_ms())));
                        }
                        Err(_) => {
                            let _ = reply.send(Err(crate::queue::unavailable()));
                        }
                    }
                });
            }
        }
    }

    /// Whether a join may go ahead: `Ok(Some)` when this node already belongs to that mesh.
    fn check_join(&self, token: &InviteToken) -> Result<Option<JoinedView>, ErrorBody> {
        if self.replica.mesh() == Some(token.mesh) {
            return Ok(Some(self.joined_view(&token.inviter)));
        }
        if expired_beyond_doubt(token.expires_ms, now_ms()) {
            return Err(ErrorBody::new(
                ErrorCode::GateRefused,
                format!("this invite expired at {}", format_rfc3339_ms(token.expires_ms)),
            ));
        }
        if self.net.facts().offline {
            return Err(ErrorBody::new(
                ErrorCode::Usage,
                "this node runs --offline; start it without --offline to join",
            ));
        }
        let tasks = self.replica.tasks().len();
        if tasks > 0 {
            return Err(ErrorBody::new(
                ErrorCode::Conflict,
                format!(
                    "this node already holds {tasks} tasks of its own mesh; a node joins with an empty queue \
                     (export them first, then start from a fresh home)"
                ),
            ));
        }
        Ok(None)
    }

    fn joined_view(&self, inviter: &NodeId) -> JoinedView {
        JoinedView {
            node_id: self.replica.node().to_string(),
            mesh_id: self.replica.mesh().map(|mesh| mesh.to_string()).unwrap_or_default(),
            inviter: inviter.to_string(),
            members: self.replica.members().current().count(),
            tasks: self.replica.tasks().len(),
        }
    }

    /// Takes the inviter's document as this node's own: checks it, stores it as a snapshot
    /// under a fresh boot (a new actor id), and starts syncing with the mesh.
    async fn adopt(&mut self, token: &InviteToken, document: Vec<u8>) -> Result<JoinedView, ErrorBody> {
        let invalid = |what: String| ErrorBody::new(ErrorCode::InvalidInput, what);
        let (doc, bad) = QueueDoc::load(Some(&document), &[])
            .map_err(|error| invalid(format!("the inviter's document does not load: {error}")))?;
        if !bad.is_empty() {
            return Err(invalid("the inviter's document is damaged".to_owned()));
        }
        doc.check_schema().map_err(|error| invalid(error.to_string()))?;
        let node = self.replica.node();
        let boot = store::next_boot(self.home.root())
            .map_err(|error| ErrorBody::new(ErrorCode::Internal, format!("cannot persist a boot number: {error}")))?;
        let mut replica = Replica::open(node, boot, doc);
        if replica.mesh() != Some(token.mesh) {
            return Err(invalid("the inviter sent the document of another mesh".to_owned()));
        }
        let is_member = |replica: &Replica, who: &NodeId| replica.members().get(who).is_some_and(|m| m.is_current());
        if !is_member(&replica, &node) || !is_member(&replica, &token.inviter) {
            return Err(ErrorBody::new(
                ErrorCode::GateRefused,
                "the inviter's document does not list this node as a member",
            ));
        }
        // This machine's probe, signed again for the new mesh.
        let probe = self.replica.probes().latest(&node).map(|(_, entry)| entry.probe.clone());
        let key = Arc::clone(&self.key);
        if let Some(probe) = probe
            && let Err(error) = replica.publish_probe(&key, probe, now_ms())
        {
            warn!(%error, "could not publish this machine's probe in the new mesh");
        }
        let old = std::mem::replace(&mut self.replica, replica);
        self.links.clear();
        self.engine = meshwork_crdt::sync::SyncEngine::default();
        if !self.write_snapshot().await {
            self.replica = old;
            return Err(ErrorBody::new(ErrorCode::Internal, "could not store the mesh's document").retryable());
        }
        let mesh_file = MeshFile {
            mesh_id: token.mesh.to_string(),
            mesh_name: self.replica.doc().meta_str("mesh_name").unwrap_or_default(),
        };
        if let Err(error) = self.home.write_mesh(&mesh_file) {
            warn!(error = %format!("{error:#}"), "could not update mesh.json");
        }
        info!(mesh = %token.mesh, inviter = %token.inviter, "joined the mesh");
        // Another mesh's queue: its state is the starting point, not news.
        self.digest = meshwork_crdt::events::EventDigest::of(&self.replica);
        self.send_allowlist();
        Ok(self.joined_view(&token.inviter))
    }

    /// Writes frames and waits until they are durable; then has them offered to peers.
    pub(super) async fn write_and_push(&mut self, frames: Vec<Frame>) -> bool {
        if !self.repair_after_failed_write().await {
            return false;
        }
        let durable = self.store.write(frames).await;
        if durable.is_err() {
            self.write_failed.store(true, Ordering::Release);
            return false;
        }
        self.request_push().await;
        true
    }

    /// Asks the actor (itself, through its channel) to offer new changes to peers once the
    /// current command is done.
    pub(super) async fn request_push(&self) {
        if let (false, Some(commands)) = (self.links.is_empty(), self.commands.upgrade())
            && !self.push_queued.swap(true, Ordering::AcqRel)
            && commands.try_send(Command::Mesh(Box::new(MeshCommand::Push))).is_err()
        {
            self.push_queued.store(false, Ordering::Release);
        }
    }

    /// `mesh remove NODE`: a membership record that removes it; its link is cut at once.
    async fn remove_member(&mut self, node: NodeId) -> Result<Vec<MemberView>, ErrorBody> {
        let Some(member) = self.replica.members().get(&node).cloned() else {
            return Err(ErrorBody::new(ErrorCode::NotFound, format!("{node} is not a member of this mesh")));
        };
        if member.is_current() {
            if node == self.replica.node() {
                return Err(ErrorBody::new(ErrorCode::Usage, "a node cannot remove itself; ask another member"));
            }
            let membership =
                Membership { action: MembershipAction::Remove, member: node, name: member.name.clone(), roles: vec![] };
            let key = Arc::clone(&self.key);
            let changes = self.replica.change_membership(&key, membership, now_ms()).map_err(|e| e.to_error_body())?;
            if !self.write_and_push(vec![Frame::Changes(changes)]).await {
                return Err(ErrorBody::new(ErrorCode::Internal, "could not store the membership record").retryable());
            }
            info!(%node, "removed a member");
            // Its records signed after the removal stop counting: claims may lose anywhere.
            self.fulfil_duties(&Touched { members: true, ..Touched::default() }).await;
            self.send_allowlist();
            self.close_link(node, "removed from the mesh");
        }
        Ok(self.member_views())
    }

    /// `inbox read`: the agent's messages; those returned are marked read.
    async fn inbox_read(&mut self, agent: AgentName, unread: bool) -> Result<Vec<MessageView>, ErrorBody> {
        let to = AgentId { agent, node: self.replica.node() };
        let entries: Vec<_> = self.replica.inbox(&to).into_iter().filter(|entry| !unread || !entry.read).collect();
        let views: Vec<MessageView> = entries
            .iter()
            .map(|entry| MessageView {
                id: entry.id.clone(),
                from: entry.message.from.clone(),
                to: entry.to.to_string(),
                subject: entry.message.subject.clone(),
                body: entry.message.body.clone(),
                priority: entry.message.priority.clone(),
                at: format_rfc3339_ms(entry.message.at_ms),
                read: entry.read,
                acked: entry.acked,
                task: entry.message.task.clone(),
            })
            .collect();
        let ids: Vec<String> = entries.iter().filter(|entry| !entry.read).map(|entry| entry.id.clone()).collect();
        match self.replica.mark_messages(&to, &ids, false, now_ms()) {
            Ok(Some(changes)) => {
                if !self.write_and_push(vec![Frame::Changes(changes)]).await {
                    return Err(ErrorBody::new(ErrorCode::Internal, "could not store the read marks").retryable());
                }
            }
            Ok(None) => {}
            Err(error) => warn!(%error, "could not mark messages read"),
        }
        Ok(views)
    }

    /// Peers for `node status`: every other member, with what the network knows of it.
    pub(super) fn peer_views(&self) -> Vec<meshwork_protocol::api::PeerView> {
        let facts = self.net.facts();
        let node = self.replica.node();
        let mut views: BTreeMap<NodeId, meshwork_protocol::api::PeerView> = BTreeMap::new();
        for member in self.replica.members().current().filter(|member| member.node != node) {
            let seen = facts.peers.get(&member.node);
            views.insert(
                member.node,
                meshwork_protocol::api::PeerView {
                    node_id: member.node.to_string(),
                    name: member.name.clone(),
                    addrs: seen.map(|peer| peer.addrs.clone()).unwrap_or_default(),
                    connected: seen.is_some_and(|peer| peer.connected),
                    last_seen: seen.and_then(|peer| peer.last_seen_ms).map(format_rfc3339_ms),
                    rtt_ms: seen.and_then(|peer| peer.rtt_ms),
                    connected_since: seen.and_then(|peer| peer.connected_since_ms).map(format_rfc3339_ms),
                    bad_frames: self.engine.bad_frames.get(&member.node).copied().unwrap_or(0),
                },
            );
        }
        views.into_values().collect()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use libp2p::futures::{AsyncReadExt as _, AsyncWriteExt as _};
    use meshwork_protocol::NodeKey;
    use meshwork_protocol::wire::FRAME_BYTES_MAX;
    use tokio_util::compat::TokioAsyncReadCompatExt as _;

    use super::*;
    use crate::home::Home;
    use crate::net::{NetEvents, NetHandle};
    use crate::queue::{ExportFormat, Query};
    use crate::store::StoreHandle;
    use crate::{init, queue_actor, recover};

    /// A node whose mesh has `peer` as a member, running its queue actor.
    async fn node_with_member(
        peer: NodeId,
    ) -> (tempfile::TempDir, QueueHandle, NetEvents, mpsc::UnboundedReceiver<NetCommand>, NetHandle, StoreHandle) {
        let dir = tempfile::tempdir().unwrap();
        init(dir.path(), Some("receiver")).unwrap();
        let home = Home::new(dir.path().to_path_buf());
        let key = Arc::new(home.load_key().unwrap());
        let config = home.load_config().unwrap();
        let mut recovery = recover(&home, &key).unwrap();
        let membership =
            Membership { action: MembershipAction::Add, member: peer, name: "sender".to_owned(), roles: vec![] };
        let changes = recovery.replica.change_membership(&key, membership, now_ms()).unwrap();
        recovery.store.write(vec![Frame::Changes(changes)]).await.unwrap();
        let (net, commands) = NetHandle::new(false);
        let events = crate::events::EventBus::new(recovery.boot);
        let (heard, heard_in) = NetEvents::new();
        let store = recovery.store.clone();
        let (queue, _task) = queue_actor(&home, key, &config, recovery, net.clone(), events).spawn(heard_in);
        (dir, queue, heard, commands, net, store)
    }

    async fn export(queue: &QueueHandle) -> serde_json::Value {
        let bytes = queue.query(|reply| Query::Export(ExportFormat::Json, reply)).await.unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    async fn bad_frames_of(queue: &QueueHandle, peer: &NodeId) -> u64 {
        let status = queue.query(Query::Status).await.unwrap();
        let peer = peer.to_string();
        status.peers.iter().find(|entry| entry.node_id == peer).map_or(0, |entry| entry.bad_frames)
    }

    /// Sends `bytes` on a fresh sync link and returns once the node has cut the link off.
    async fn send_and_expect_cut_off(heard: &NetEvents, peer: NodeId, link: u64, bytes: Vec<u8>) {
        let (ours, theirs) = tokio::io::duplex(64 * 1024);
        tokio::spawn(crate::net::link::run_sync_link(peer, link, theirs.compat(), heard.clone()));
        let (mut reader, mut writer) = ours.compat().split();
        writer.write_all(&bytes).await.unwrap();
        writer.flush().await.unwrap();
        // The node first offers its own sync message, then closes: read to the end.
        let mut received = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), reader.read_to_end(&mut received)).await;
        assert!(read.is_ok(), "the node did not close the link");
    }

    /// A frame over the cap and a garbage frame: each cuts the sender off, is counted, and
    /// leaves the document as it was.
    #[tokio::test]
    async fn oversize_and_garbage_frames_cut_the_sender_off_and_change_nothing() {
        let peer = NodeKey::from_seed([7; 32]).node_id();
        let (_home, queue, heard, mut net, _, _) = node_with_member(peer).await;
        let before = export(&queue).await;

        let mut garbage = 3u32.to_be_bytes().to_vec();
        garbage.extend([1, 0, 0xff]);
        send_and_expect_cut_off(&heard, peer, 1, garbage).await;
        assert_eq!(bad_frames_of(&queue, &peer).await, 1, "the garbage frame is counted");

        let oversize = u32::try_from(FRAME_BYTES_MAX + 1).unwrap().to_be_bytes().to_vec();
        send_and_expect_cut_off(&heard, peer, 2, oversize).await;
        assert_eq!(bad_frames_of(&queue, &peer).await, 2, "the oversize frame is counted");

        assert_eq!(export(&queue).await, before, "the receiver's document is unchanged");
        let mut disconnects = 0;
        while let Ok(command) = net.try_recv() {
            if matches!(command, NetCommand::Disconnect(node) if node == peer) {
                disconnects += 1;
            }
        }
        assert!(disconnects >= 2, "the network is told to drop the peer each time");
    }

    /// A node that is not a member cannot open a sync link: nothing it sends is read.
    #[tokio::test]
    async fn a_sync_link_from_a_non_member_is_refused() {
        let member = NodeKey::from_seed([7; 32]).node_id();
        let stranger = NodeKey::from_seed([8; 32]).node_id();
        let (_home, _queue, heard, _net, _, _) = node_with_member(member).await;
        let (sender, _frames) = mpsc::channel(1);
        assert!(!heard.sync_opened(stranger, 1, sender).await);
        let (sender, _frames) = mpsc::channel(1);
        assert!(heard.sync_opened(member, 2, sender).await);
    }

    /// A node on loopback TCP that admits `member`, its network running: its home, key and
    /// network handle, the token that stops it, and the address it listens on.
    async fn listening_node_with_member(
        member: NodeId,
    ) -> (tempfile::TempDir, NodeKey, NetHandle, tokio_util::sync::CancellationToken, libp2p::Multiaddr) {
        let (home, queue, heard, commands, net, store) = node_with_member(member).await;
        let key = Home::new(home.path().to_path_buf()).load_key().unwrap();
        let config = crate::net::NetConfig {
            listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
            peers: Vec::new(),
            mdns: false,
            home: home.path().to_path_buf(),
        };
        let allow = Allowlist {
            members: [key.node_id(), member].iter().map(|node| node.peer_id().unwrap()).collect(),
            invites_open_until_ms: 0,
        };
        let network =
            crate::net::Network::new(&key, &config, heard, net.clone(), allow, crate::events::EventBus::new(1), store)
                .unwrap();
        let stop = tokio_util::sync::CancellationToken::new();
        // The actor runs while a handle on it lives: keep one until the node is stopped.
        let stopped = stop.clone();
        tokio::spawn(async move {
            stopped.cancelled().await;
            drop(queue);
        });
        tokio::spawn(network.run(commands, stop.clone()));
        let mut listen = None;
        for _ in 0..200 {
            listen = net.facts().listen.first().and_then(|addr| addr.parse::<libp2p::Multiaddr>().ok());
            if listen.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        (home, key, net, stop, listen.expect("the node listens"))
    }

    /// A libp2p client that speaks as the member `key`, over TCP with noise and yamux.
    fn member_client<B: libp2p::swarm::NetworkBehaviour>(key: &NodeKey, behaviour: B) -> libp2p::Swarm<B> {
        let keypair = libp2p::identity::Keypair::from_protobuf_encoding(&key.to_libp2p_protobuf().unwrap()).unwrap();
        libp2p::SwarmBuilder::with_existing_identity(keypair)
            .with_tokio()
            .with_tcp(libp2p::tcp::Config::default(), libp2p::noise::Config::new, libp2p::yamux::Config::default)
            .unwrap()
            .with_behaviour(|_| behaviour)
            .unwrap()
            .with_swarm_config(|config| config.with_idle_connection_timeout(Duration::from_secs(60)))
            .build()
    }

    /// The connection limits hold: a member's third connection at once is refused.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_members_third_connection_is_refused() {
        use libp2p::futures::StreamExt as _;
        use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
        use meshwork_protocol::limits::CONNECTIONS_PER_PEER_MAX;

        let member_key = NodeKey::from_seed([7; 32]);
        let (_home, key, _net, stop, listen) = listening_node_with_member(member_key.node_id()).await;
        let mut client = member_client(&member_key, libp2p::swarm::dummy::Behaviour);
        let node = key.node_id().peer_id().unwrap();
        for _ in 0..3 {
            let dial = DialOpts::peer_id(node).addresses(vec![listen.clone()]).condition(PeerCondition::Always).build();
            client.dial(dial).unwrap();
        }
        // Let the three dials play out: two stay, the third is closed by the node.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
        while let Ok(Some(_)) = tokio::time::timeout_at(deadline, client.next()).await {}
        let established = client.network_info().connection_counters().num_established();
        assert_eq!(established, CONNECTIONS_PER_PEER_MAX, "a member holds at most two connections");
        stop.cancel();
    }

    /// Regression: a joiner whose clock ran an hour ahead refused a fresh one-hour invite as
    /// expired by its own clock, though the inviter, whose clock decides, would admit it.
    #[test]
    fn a_joiner_whose_clock_runs_ahead_leaves_the_expiry_to_the_inviter() {
        let hour_ms = 3600 * 1000;
        let expires_ms = 1_800_000_000_000;
        assert!(!expired_beyond_doubt(expires_ms, expires_ms + hour_ms), "an hour of skew: ask the inviter");
        assert!(!expired_beyond_doubt(expires_ms, expires_ms - 1));
        assert!(expired_beyond_doubt(expires_ms, expires_ms + HLC_DRIFT_MS_MAX), "beyond any tolerated skew");
        // An inviter that does not answer a token expired here too: the token is spent.
        let unreachable = || ErrorBody::new(ErrorCode::NodeUnavailable, "cannot reach the inviter").retryable();
        assert_eq!(unreachable_or_expired(unreachable(), expires_ms, expires_ms).code, ErrorCode::GateRefused);
        assert_eq!(unreachable_or_expired(unreachable(), expires_ms, expires_ms - 1).code, ErrorCode::NodeUnavailable);
    }

    /// A sync link ends with the connection the node closed, and a new one opens on the
    /// member's next connection. Method: a member client reaches the node through a proxy that
    /// can freeze a connection (nothing passes, nothing closes, as across a cut cable) and keeps
    /// every sync stream it is given; the node drops the frozen connection; the client dials
    /// again and must be given a new link. (Across a real partition yamux left the old link
    /// waiting forever, rust-yamux#216; the netns test `a_two_one_partition_heals_to_one_holder_
    /// per_task` pins that. Here the old link happens to be woken, so this test alone would not.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_sync_link_ends_with_its_closed_connection_and_opens_on_the_next() {
        use libp2p::futures::StreamExt as _;
        use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};

        let member_key = NodeKey::from_seed([7; 32]);
        let member = member_key.node_id();
        let (_home, key, net, stop, listen) = listening_node_with_member(member).await;
        let port = listen.iter().find_map(|protocol| match protocol {
            libp2p::multiaddr::Protocol::Tcp(port) => Some(port),
            _ => None,
        });
        let (proxy, frozen) = freezing_proxy(std::net::SocketAddr::from(([127, 0, 0, 1], port.unwrap()))).await;
        let proxy: libp2p::Multiaddr = format!("/ip4/127.0.0.1/tcp/{}", proxy.port()).parse().unwrap();

        let mut client = member_client(&member_key, libp2p_stream::Behaviour::new());
        let mut links = client.behaviour().new_control().accept(crate::net::SYNC_PROTOCOL).unwrap();
        let (dial, mut dials) = mpsc::unbounded_channel::<()>();
        let node = key.node_id().peer_id().unwrap();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    Some(()) = dials.recv() => {
                        let options = DialOpts::peer_id(node).addresses(vec![proxy.clone()]);
                        client.dial(options.condition(PeerCondition::Always).build()).unwrap();
                    }
                    _ = client.select_next_some() => {}
                }
            }
        });
        // The client keeps its streams open: only the node's side may end them.
        let mut kept = Vec::new();
        dial.send(()).unwrap();
        let first = tokio::time::timeout(Duration::from_secs(10), links.next()).await;
        kept.push(first.expect("the node opens a sync link").expect("a stream"));

        frozen.store(1, Ordering::SeqCst);
        assert!(net.send(NetCommand::Disconnect(member)), "the network runs");
        for _ in 0..500 {
            if !net.facts().peers.get(&member).is_some_and(|peer| peer.connected) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(!net.facts().peers.get(&member).is_some_and(|peer| peer.connected), "the node dropped the member");
        dial.send(()).unwrap();
        let second = tokio::time::timeout(Duration::from_secs(10), links.next()).await;
        kept.push(second.expect("a new sync link on the next connection").expect("a stream"));
        stop.cancel();
    }

    /// A TCP proxy to `target`. Its connection number `i` (from 0) stops carrying bytes either
    /// way, without closing, once the caller sets `frozen` above `i`: a cut cable.
    async fn freezing_proxy(
        target: std::net::SocketAddr,
    ) -> (std::net::SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let frozen = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let frozen_count = Arc::clone(&frozen);
        tokio::spawn(async move {
            for index in 0.. {
                let Ok((inbound, _)) = listener.accept().await else { return };
                let outbound = tokio::net::TcpStream::connect(target).await.unwrap();
                let (inbound_read, inbound_write) = inbound.into_split();
                let (outbound_read, outbound_write) = outbound.into_split();
                for (mut from, mut to) in [(inbound_read, outbound_write), (outbound_read, inbound_write)] {
                    let frozen = Arc::clone(&frozen_count);
                    tokio::spawn(async move {
                        let mut buffer = vec![0; 64 * 1024];
                        loop {
                            let Ok(read) = from.read(&mut buffer).await else { return };
                            if index < frozen.load(Ordering::SeqCst) {
                                // Hold both sockets open and carry nothing more.
                                std::future::pending::<()>().await;
                            }
                            if read == 0 || to.write_all(&buffer[..read]).await.is_err() {
                                return;
                            }
                        }
                    });
                }
            }
        });
        (address, frozen)
    }
}
