//! Epidemic protocols as sans-io state machines: each node's protocol state takes events
//! (a round of its active thread, a message received, an answer) and returns effects (send
//! this, deliver, lose interest); it owns no socket, reads no clock, and takes its randomness
//! from the caller, so a simulator or a real transport can drive it and a seed repeats a run.
//!
//! Protocols so far: [`rumor`] mongering (Demers et al. 1987) in its four variants, feedback or
//! blind × counter or coin, [`anti_entropy`] (push, pull, push-pull) and [`broadcast`] on an
//! overlay (flooding, blind counter rumor mongering). The other protocols of the lecture notes
//! (bimodal multicast, death certificates, peer sampling, aggregation) come next, on the same
//! shape.
//!
//! This crate must not know sockets, clocks or the simulator.

pub mod anti_entropy;
pub mod broadcast;
pub mod rumor;

/// A parameter out of its range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid parameter {name}: {reason}")]
pub struct ParamError {
    pub name: &'static str,
    pub reason: String,
}
