//! The membership gate: a libp2p behaviour that refuses, right after the handshake, every
//! connection from or to a peer that is not a current member of the mesh.
//!
//! Two exceptions, both narrow: while an invite of this node is open, a stranger may connect
//! (it can only speak the join protocol, and is dropped after [`PROBATION`] unless it became
//! a member); and while this node joins a mesh, it may connect to its inviter.

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::fmt;
use std::task::{Context, Poll};
use std::time::Duration;

use libp2p::core::Endpoint;
use libp2p::core::transport::PortUse;
use libp2p::swarm::{
    ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, THandler, THandlerInEvent, THandlerOutEvent, ToSwarm,
    dummy,
};
use libp2p::{Multiaddr, PeerId};

/// How long a stranger admitted under an open invite may stay without becoming a member.
pub(crate) const PROBATION: Duration = Duration::from_secs(15);

/// Who may connect.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Allowlist {
    /// Current members of the mesh (this node included).
    pub(crate) members: BTreeSet<PeerId>,
    /// Until when (ms since the epoch) strangers may connect to present an invite.
    pub(crate) invites_open_until_ms: u64,
}

/// The refusal a denied connection carries.
#[derive(Debug)]
pub(crate) struct NotAMember(PeerId);

impl fmt::Display for NotAMember {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} is not a member of this mesh", self.0)
    }
}

impl std::error::Error for NotAMember {}

#[derive(Debug, Default)]
pub(crate) struct MemberGate {
    allow: Allowlist,
    /// The inviter this node is joining through, if any.
    joining: Option<PeerId>,
    /// Connections refused since start.
    pub(crate) refused: u64,
}

impl MemberGate {
    pub(crate) fn set_allowlist(&mut self, allow: Allowlist) {
        self.allow = allow;
    }

    pub(crate) fn allowlist(&self) -> &Allowlist {
        &self.allow
    }

    pub(crate) fn set_joining(&mut self, inviter: Option<PeerId>) {
        self.joining = inviter;
    }

    pub(crate) fn is_member(&self, peer: &PeerId) -> bool {
        self.allow.members.contains(peer)
    }

    fn admits(&mut self, peer: &PeerId) -> Result<(), ConnectionDenied> {
        let invites_open = self.allow.invites_open_until_ms > crate::clock::now_ms();
        if self.is_member(peer) || invites_open || self.joining.as_ref() == Some(peer) {
            Ok(())
        } else {
            self.refused += 1;
            Err(ConnectionDenied::new(NotAMember(*peer)))
        }
    }
}

impl NetworkBehaviour for MemberGate {
    type ConnectionHandler = dummy::ConnectionHandler;
    type ToSwarm = Infallible;

    fn handle_established_inbound_connection(
        &mut self,
        _: ConnectionId,
        peer: PeerId,
        _: &Multiaddr,
        _: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.admits(&peer)?;
        Ok(dummy::ConnectionHandler)
    }

    fn handle_established_outbound_connection(
        &mut self,
        _: ConnectionId,
        peer: PeerId,
        _: &Multiaddr,
        _: Endpoint,
        _: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.admits(&peer)?;
        Ok(dummy::ConnectionHandler)
    }

    fn on_swarm_event(&mut self, _: FromSwarm<'_>) {}

    fn on_connection_handler_event(&mut self, _: PeerId, _: ConnectionId, event: THandlerOutEvent<Self>) {
        match event {}
    }

    fn poll(&mut self, _: &mut Context<'_>) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        Poll::Pending
    }
}
