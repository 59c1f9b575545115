//! The generic gossip framework of the lecture notes, the shape every protocol here shares.
//! A node runs two threads. The **active thread** wakes once a cycle, selects a peer
//! (`select_peer`) and what to send it (`select_to_send`); the **passive thread** receives,
//! keeps what it selects of it (`select_to_keep`) and may answer. Both are functions from an
//! event to outputs: messages for the transport and deliveries for the application.
//!
//! `select_peer` belongs to whoever knows the overlay: a protocol that asks for [`To::Peer`]
//! lets its transport pick a random neighbour; one that keeps its own view (peer sampling, an
//! overlay broadcast) names the node.

use rand::Rng;

/// Where an output message goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum To {
    /// A random neighbour the transport selects (`select_peer` over its overlay).
    Peer,
    /// This node.
    Node(usize),
    /// The node whose message is being handled: the second half of an exchange.
    Reply,
}

/// What a thread asks of its transport or application.
#[derive(Debug, Clone, PartialEq)]
pub enum Output<M> {
    /// Send `M` there.
    Send(To, M),
    /// The information is new here: hand it to the application.
    Deliver,
}

/// A gossip protocol's state at one node, seen through the framework.
pub trait Gossip {
    /// What travels between nodes.
    type Message;

    /// A cycle of the active thread at time `now` (cycles since the start).
    fn active(&mut self, now: u64, rng: &mut impl Rng) -> Vec<Output<Self::Message>>;

    /// The passive thread: `message` arrived from node `from` at time `now`.
    fn passive(
        &mut self,
        now: u64,
        from: usize,
        message: Self::Message,
        rng: &mut impl Rng,
    ) -> Vec<Output<Self::Message>>;
}
