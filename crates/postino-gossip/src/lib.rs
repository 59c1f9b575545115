//! Epidemic protocols as sans-io state machines: each node's protocol state takes events
//! (a round of its active thread, a message received, an answer) and returns effects (send
//! this, deliver, lose interest); it owns no socket, reads no clock, and takes its randomness
//! from the caller, so a simulator or a real transport can drive it and a seed repeats a run.
//!
//! Every protocol's state implements [`framework::Gossip`], the notes' generic framework (an
//! active thread once a cycle, a passive thread on each message), so one simulator runs any
//! of them over any network model; each also keeps its own events and effects for unit tests
//! and other transports.
//!
//! Protocols: [`rumor`] mongering (Demers et al. 1987) in its four variants, feedback or
//! blind × counter or coin, [`anti_entropy`] (push, pull, push-pull), [`broadcast`] on an
//! overlay (flooding, blind counter rumor mongering) and [`aggregate`] (averages, sums,
//! minimum, maximum), [`death`] certificates for deletions, bimodal multicast ([`pbcast`]) and
//! peer [`sampling`] (partial views exchanged by gossip).
//!
//! This crate must not know sockets, clocks or the simulator.

/// Names the values of a parameter enum: `Display`, `FromStr` (another name is refused with a
/// [`ParamError`] naming the parameter) and `ALL`, every value in the order tables list them.
macro_rules! named {
    ($type:ident, $param:literal, { $($variant:ident => $name:literal),+ $(,)? }) => {
        impl $type {
            /// Every value, in the order tables list them.
            pub const ALL: [$type; [$($name),+].len()] = [$($type::$variant),+];
        }

        impl std::fmt::Display for $type {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(match self {
                    $($type::$variant => $name,)+
                })
            }
        }

        impl std::str::FromStr for $type {
            type Err = $crate::ParamError;

            fn from_str(text: &str) -> Result<Self, Self::Err> {
                match text {
                    $($name => Ok($type::$variant),)+
                    _ => Err($crate::ParamError {
                        name: $param,
                        reason: format!("{text:?} is not one of {}", [$($name),+].join(", ")),
                    }),
                }
            }
        }
    };
}

pub mod aggregate;
pub mod anti_entropy;
pub mod broadcast;
pub mod death;
pub mod framework;
pub mod pbcast;
pub mod rumor;
pub mod sampling;

/// A parameter out of its range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid parameter {name}: {reason}")]
pub struct ParamError {
    pub name: &'static str,
    pub reason: String,
}
