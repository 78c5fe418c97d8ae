//! The federation stream behaviour: opens and accepts `/matrix/federation/1` streams.
//!
//! Written for the carriage's needs instead of using `libp2p-stream`: that crate hands
//! inbound streams over a channel with room for one, so a burst of concurrent requests
//! on one connection lost all but the first; and it opens one outbound stream per
//! connection at a time. Here inbound streams queue (bounded; the carriage's per-peer
//! limits decide what to serve) and outbound opens run in parallel.

use std::collections::{HashMap, VecDeque};
use std::task::{Context, Poll};

use libp2p::core::transport::PortUse;
use libp2p::core::upgrade::ReadyUpgrade;
use libp2p::core::{Endpoint, Multiaddr};
use libp2p::swarm::handler::{
    ConnectionEvent, DialUpgradeError, FullyNegotiatedInbound, FullyNegotiatedOutbound,
};
use libp2p::swarm::{
    ConnectionDenied, ConnectionHandler, ConnectionHandlerEvent, ConnectionId, FromSwarm,
    NetworkBehaviour, NotifyHandler, Stream, StreamUpgradeError, SubstreamProtocol, THandler,
    THandlerInEvent, THandlerOutEvent, ToSwarm,
};
use libp2p::{PeerId, StreamProtocol};
use tokio::sync::{mpsc, oneshot};

use crate::addr::{endpoint_is_relayed, is_quic};

/// Inbound streams waiting for the carriage to pick them up. Past this the newest are
/// dropped: the carriage accepts far faster than a peer can open streams unless the
/// node is overloaded, and then shedding is right.
const INBOUND_QUEUE: usize = 256;
/// Open requests waiting for the swarm task to route them. Past it callers of
/// [`Control::open_stream`] wait for room (they are bounded by the outbound request
/// limit anyway).
const CONTROL_QUEUE: usize = 256;
/// Outbound streams one connection may be opening at once (queued or negotiating).
/// Past it an open fails at once with "busy".
pub(crate) const MAX_PENDING_OPENS: usize = 64;

/// The answer to an open request.
pub(crate) type OpenReply = oneshot::Sender<Result<Stream, String>>;

/// A request to open an outbound stream, routed to one connection's handler.
pub struct OpenRequest(OpenReply);

impl std::fmt::Debug for OpenRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OpenRequest")
    }
}

/// Handle used outside the swarm to open streams.
#[derive(Clone)]
pub(crate) struct Control {
    requests: mpsc::Sender<(PeerId, OpenReply)>,
}

impl Control {
    /// Open a stream to a connected peer (direct QUIC preferred, then other direct
    /// connections, then relayed ones).
    pub(crate) async fn open_stream(&self, peer: PeerId) -> Result<Stream, String> {
        let (tx, rx) = oneshot::channel();
        self.requests
            .send((peer, tx))
            .await
            .map_err(|_| "the P2P transport is shut down".to_owned())?;
        rx.await
            .map_err(|_| "the connection closed while opening a stream".to_owned())?
    }
}

/// The behaviour.
pub struct Behaviour {
    protocol: StreamProtocol,
    inbound: mpsc::Sender<(PeerId, Stream)>,
    requests: mpsc::Receiver<(PeerId, OpenReply)>,
    /// Open connections per peer, each with its rank: 0 direct QUIC, 1 other direct, 2
    /// relayed. New streams go to the best-ranked (oldest among equals).
    connections: HashMap<PeerId, Vec<(ConnectionId, u8)>>,
    to_swarm: VecDeque<ToSwarm<(), OpenRequest>>,
}

impl Behaviour {
    /// A behaviour for `protocol`, its control handle and the inbound stream queue.
    pub(crate) fn new(
        protocol: StreamProtocol,
    ) -> (Behaviour, Control, mpsc::Receiver<(PeerId, Stream)>) {
        let (inbound, inbound_rx) = mpsc::channel(INBOUND_QUEUE);
        let (requests_tx, requests) = mpsc::channel(CONTROL_QUEUE);
        let behaviour = Behaviour {
            protocol,
            inbound,
            requests,
            connections: HashMap::new(),
            to_swarm: VecDeque::new(),
        };
        (
            behaviour,
            Control {
                requests: requests_tx,
            },
            inbound_rx,
        )
    }

    fn handler(&self, peer: PeerId) -> Handler {
        Handler {
            peer,
            protocol: self.protocol.clone(),
            inbound: self.inbound.clone(),
            pending: VecDeque::new(),
            opening: 0,
        }
    }

    fn route(&mut self, peer: PeerId, reply: OpenReply) {
        // The caller gave up (timed out) while the request waited: nothing to open.
        if reply.is_closed() {
            return;
        }
        let chosen = self.connections.get(&peer).and_then(|conns| {
            conns
                .iter()
                .enumerate()
                .min_by_key(|(i, (_, rank))| (*rank, *i))
                .map(|(_, (id, _))| *id)
        });
        match chosen {
            Some(connection) => self.to_swarm.push_back(ToSwarm::NotifyHandler {
                peer_id: peer,
                handler: NotifyHandler::One(connection),
                event: OpenRequest(reply),
            }),
            None => {
                let _ = reply.send(Err(format!("not connected to {peer}")));
            }
        }
    }
}

impl NetworkBehaviour for Behaviour {
    type ConnectionHandler = Handler;
    type ToSwarm = ();

    fn handle_established_inbound_connection(
        &mut self,
        _: ConnectionId,
        peer: PeerId,
        _: &Multiaddr,
        _: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(self.handler(peer))
    }

    fn handle_established_outbound_connection(
        &mut self,
        _: ConnectionId,
        peer: PeerId,
        _: &Multiaddr,
        _: Endpoint,
        _: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(self.handler(peer))
    }

    fn on_swarm_event(&mut self, event: FromSwarm<'_>) {
        match event {
            FromSwarm::ConnectionEstablished(e) => {
                let rank = if endpoint_is_relayed(e.endpoint) {
                    2
                } else if is_quic(e.endpoint.get_remote_address()) {
                    0
                } else {
                    1
                };
                self.connections
                    .entry(e.peer_id)
                    .or_default()
                    .push((e.connection_id, rank));
            }
            FromSwarm::ConnectionClosed(e) => {
                if let Some(conns) = self.connections.get_mut(&e.peer_id) {
                    conns.retain(|(id, _)| *id != e.connection_id);
                    if conns.is_empty() {
                        self.connections.remove(&e.peer_id);
                    }
                }
            }
            _ => {}
        }
    }

    fn on_connection_handler_event(
        &mut self,
        _: PeerId,
        _: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        match event {}
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<ToSwarm<(), THandlerInEvent<Self>>> {
        while let Poll::Ready(Some((peer, reply))) = self.requests.poll_recv(cx) {
            self.route(peer, reply);
        }
        match self.to_swarm.pop_front() {
            Some(e) => Poll::Ready(e),
            None => Poll::Pending,
        }
    }
}

/// One connection's side.
pub struct Handler {
    peer: PeerId,
    protocol: StreamProtocol,
    inbound: mpsc::Sender<(PeerId, Stream)>,
    /// Opens not yet handed to the connection.
    pending: VecDeque<OpenReply>,
    /// Opens handed to the connection and not yet negotiated or failed.
    opening: usize,
}

impl ConnectionHandler for Handler {
    type FromBehaviour = OpenRequest;
    type ToBehaviour = std::convert::Infallible;
    type InboundProtocol = ReadyUpgrade<StreamProtocol>;
    type OutboundProtocol = ReadyUpgrade<StreamProtocol>;
    type InboundOpenInfo = ();
    type OutboundOpenInfo = OpenReply;

    fn listen_protocol(&self) -> SubstreamProtocol<Self::InboundProtocol> {
        SubstreamProtocol::new(ReadyUpgrade::new(self.protocol.clone()), ())
    }

    fn poll(
        &mut self,
        _: &mut Context<'_>,
    ) -> Poll<ConnectionHandlerEvent<Self::OutboundProtocol, OpenReply, Self::ToBehaviour>> {
        while let Some(reply) = self.pending.pop_front() {
            if reply.is_closed() {
                continue;
            }
            self.opening += 1;
            return Poll::Ready(ConnectionHandlerEvent::OutboundSubstreamRequest {
                protocol: SubstreamProtocol::new(ReadyUpgrade::new(self.protocol.clone()), reply),
            });
        }
        Poll::Pending
    }

    fn on_behaviour_event(&mut self, OpenRequest(reply): OpenRequest) {
        if self.pending.len() + self.opening >= MAX_PENDING_OPENS {
            let _ = reply.send(Err(format!(
                "busy: {MAX_PENDING_OPENS} streams already being opened to {}",
                self.peer
            )));
            return;
        }
        self.pending.push_back(reply);
    }

    fn on_connection_event(
        &mut self,
        event: ConnectionEvent<'_, Self::InboundProtocol, Self::OutboundProtocol, (), OpenReply>,
    ) {
        match event {
            ConnectionEvent::FullyNegotiatedInbound(FullyNegotiatedInbound {
                protocol: stream,
                ..
            }) => {
                let queued = self.inbound.try_send((self.peer, stream));
                if queued.is_err() {
                    tracing::warn!(peer = %self.peer, "inbound federation queue full; stream dropped");
                }
            }
            ConnectionEvent::FullyNegotiatedOutbound(FullyNegotiatedOutbound {
                protocol: stream,
                info: reply,
            }) => {
                self.opening = self.opening.saturating_sub(1);
                let _ = reply.send(Ok(stream));
            }
            ConnectionEvent::DialUpgradeError(DialUpgradeError { info: reply, error }) => {
                self.opening = self.opening.saturating_sub(1);
                let reason = match error {
                    StreamUpgradeError::NegotiationFailed => {
                        "the peer does not speak the federation protocol".to_owned()
                    }
                    StreamUpgradeError::Timeout => "opening a stream timed out".to_owned(),
                    StreamUpgradeError::Io(e) => format!("opening a stream failed: {e}"),
                    StreamUpgradeError::Apply(never) => match never {},
                };
                let _ = reply.send(Err(reason));
            }
            _ => {}
        }
    }
}
