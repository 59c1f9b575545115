//! Every protocol, driven through the framework by an arbitrary sequence of cycles and
//! messages — duplicates, answers nobody asked for, messages from nodes that are not its
//! neighbours or do not exist, a peer that never answers — never panics, and its outputs stay
//! well formed: an answer only to a message, never from an active thread.

use postino_gossip::aggregate::{self, Aggregate, Function};
use postino_gossip::anti_entropy::{self, Mode, Replica};
use postino_gossip::broadcast::{Broadcast, Protocol};
use postino_gossip::death::{self, Item};
use postino_gossip::framework::{Gossip, Output, To};
use postino_gossip::pbcast::{self, Pbcast};
use postino_gossip::rumor::{self, Rumor, Variant};
use postino_gossip::sampling::{self, Descriptor, Sampling};
use proptest::prelude::*;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// One step of a node's life: a cycle of its active thread, or message `choice` (a protocol
/// maps it onto one of its messages) from node `from`.
#[derive(Debug, Clone)]
enum Step {
    Cycle,
    Message { from: usize, choice: u8 },
}

fn steps() -> impl Strategy<Value = Vec<Step>> {
    proptest::collection::vec(
        prop_oneof![
            Just(Step::Cycle),
            (0usize..12, any::<u8>()).prop_map(|(from, choice)| Step::Message { from, choice }),
        ],
        0..200,
    )
}

/// Drives `node` through `steps`, `message` making each protocol message, and checks the
/// outputs' shape.
fn drive<G: Gossip>(mut node: G, steps: &[Step], seed: u64, message: impl Fn(u8) -> G::Message) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    for (now, step) in steps.iter().enumerate() {
        let now = now as u64;
        match step {
            Step::Cycle => {
                for output in node.active(now, &mut rng) {
                    assert!(
                        !matches!(output, Output::Send(To::Reply, _)),
                        "an active thread has nobody to answer"
                    );
                }
            }
            Step::Message { from, choice } => {
                node.passive(now, *from, message(*choice), &mut rng);
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn rumor_mongering_takes_any_message(steps in steps(), seed in any::<u64>(), variant in 0usize..4, k in 1u32..5) {
        let mut node = Rumor::new(Variant::ALL[variant], k).expect("k >= 1");
        if seed % 2 == 0 {
            node.originate();
        }
        drive(node, &steps, seed, |choice| match choice % 3 {
            0 => rumor::Message::Push,
            1 => rumor::Message::Answer { already_knew: true },
            _ => rumor::Message::Answer { already_knew: false },
        });
    }

    #[test]
    fn anti_entropy_takes_any_message(steps in steps(), seed in any::<u64>(), mode in 0usize..3) {
        let mut replica = Replica::new(Mode::ALL[mode]);
        if seed % 2 == 0 {
            replica.write();
        }
        drive(replica, &steps, seed, |choice| match choice % 3 {
            0 => anti_entropy::Message::Contact { update: choice & 8 != 0, asks: choice & 16 != 0 },
            _ => anti_entropy::Message::Answer { update: choice & 8 != 0 },
        });
    }

    #[test]
    fn broadcast_takes_any_message(steps in steps(), seed in any::<u64>(), flooding in any::<bool>()) {
        let protocol = if flooding { Protocol::Flooding } else { Protocol::blind_counter(2, 2).expect("valid") };
        let mut node = Broadcast::new(protocol, vec![1, 2, 3]);
        if seed % 2 == 0 {
            node.originate(&mut ChaCha8Rng::seed_from_u64(seed));
        }
        drive(node, &steps, seed, |_| ());
    }

    #[test]
    fn aggregation_takes_any_message(steps in steps(), seed in any::<u64>(), function in 0usize..4) {
        let node = Aggregate::new(Function::ALL[function], 42.0, seed % 2 == 0);
        drive(node, &steps, seed, |choice| {
            let state = aggregate::State { value: f64::from(choice), weight: f64::from(choice % 2) };
            if choice % 2 == 0 { aggregate::Message::Offer(state) } else { aggregate::Message::Answer(state) }
        });
    }

    #[test]
    fn death_certificates_take_any_message(steps in steps(), seed in any::<u64>()) {
        let mut replica = death::Replica::holding(2, 5, seed % 2 == 0);
        if seed % 3 == 0 {
            replica.delete(0, true);
        }
        drive(replica, &steps, seed, |choice| {
            let version = u64::from(choice % 4);
            let item = match choice % 4 {
                0 => Item::Held { version },
                1 => Item::Absent,
                2 => Item::Certificate { version, expires_at: u64::from(choice) },
                _ => Item::Dormant { version },
            };
            if choice & 64 == 0 { death::Message::Offer(item) } else { death::Message::Answer(item) }
        });
    }

    #[test]
    fn pbcast_takes_any_message(steps in steps(), seed in any::<u64>()) {
        drive(Pbcast::new(2, 3), &steps, seed, |choice| match choice % 3 {
            0 => pbcast::Message::Data,
            1 => pbcast::Message::Digest,
            _ => pbcast::Message::Solicit,
        });
    }

    #[test]
    fn peer_sampling_takes_any_message(steps in steps(), seed in any::<u64>()) {
        let node = Sampling::new(0, 4, &[1, 2]).expect("view of 4");
        drive(node, &steps, seed, |choice| {
            // Descriptors of itself, of unknown nodes and duplicates, at any age.
            let descriptors: Vec<Descriptor> = (0..usize::from(choice % 7))
                .map(|index| Descriptor { node: (index * usize::from(choice)) % 9, age: u32::from(choice) })
                .collect();
            if choice % 2 == 0 { sampling::Message::Exchange(descriptors) } else { sampling::Message::Answer(descriptors) }
        });
    }
}
