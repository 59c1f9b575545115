//! Peer sampling by gossip (Jelasity et al., "Gossip-based peer sampling", ACM TOCS 2007; the
//! lecture notes' generic framework): each node keeps a partial view of `size` peers, each with
//! an age in rounds. At each round the node ages its view, takes its oldest peer out of it
//! (`select_peer`), and sends it itself (age 0) plus random others, half a view in all
//! (`select_to_send`); the peer answers the same way. Each side merges what it got
//! (`select_to_keep`): itself and duplicates out (keeping the youngest entry), then the
//! youngest `size` entries. Views so stay small, fresh and random, and a node that is gone ages
//! out of every view.

use rand::Rng;
use rand::seq::{IndexedRandom, SliceRandom};

use crate::ParamError;
use crate::framework::{Gossip, Output, To};

/// A peer in a view and how many rounds ago its descriptor was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Descriptor {
    pub node: usize,
    pub age: u32,
}

/// One node's partial view.
#[derive(Debug, Clone)]
pub struct Sampling {
    node: usize,
    size: usize,
    view: Vec<Descriptor>,
}

impl Sampling {
    /// Node `node` with a view of at most `size` peers, starting from the first `size` of
    /// `seeds`.
    ///
    /// # Errors
    /// [`ParamError`] naming `view` for a size below 2.
    pub fn new(node: usize, size: usize, seeds: &[usize]) -> Result<Self, ParamError> {
        if size < 2 {
            return Err(ParamError {
                name: "view",
                reason: format!("{size} is below 2"),
            });
        }
        let mut view: Vec<Descriptor> = Vec::with_capacity(size);
        for seed in seeds {
            if *seed != node && view.len() < size && view.iter().all(|known| known.node != *seed) {
                view.push(Descriptor {
                    node: *seed,
                    age: 0,
                });
            }
        }
        Ok(Self { node, size, view })
    }

    /// The peers in the view.
    #[must_use]
    pub fn view(&self) -> &[Descriptor] {
        &self.view
    }

    /// A uniformly chosen peer of the view, the service the layer offers.
    pub fn sample(&self, rng: &mut impl Rng) -> Option<usize> {
        self.view.choose(rng).map(|descriptor| descriptor.node)
    }

    /// The active thread's round: ages the view and returns the peer to exchange with (the
    /// oldest) and what to send it, or `None` with an empty view.
    pub fn start_exchange(&mut self, rng: &mut impl Rng) -> Option<(usize, Vec<Descriptor>)> {
        for descriptor in &mut self.view {
            descriptor.age = descriptor.age.saturating_add(1);
        }
        let oldest = self
            .view
            .iter()
            .max_by_key(|descriptor| descriptor.age)?
            .node;
        // The peer leaves the view (its answer brings it back, fresh): the next round contacts
        // another, so a node cycles through its view instead of calling one peer forever.
        self.view.retain(|descriptor| descriptor.node != oldest);
        Some((oldest, self.to_send(oldest, rng)))
    }

    /// The passive side: `received` came from `from`; returns the answer and merges.
    pub fn on_exchange(
        &mut self,
        from: usize,
        received: Vec<Descriptor>,
        rng: &mut impl Rng,
    ) -> Vec<Descriptor> {
        let answer = self.to_send(from, rng);
        self.keep(received, rng);
        answer
    }

    /// The active side gets the answer.
    pub fn on_answer(&mut self, received: Vec<Descriptor>, rng: &mut impl Rng) {
        self.keep(received, rng);
    }

    /// This node (age 0) and random peers other than `to`: half a view.
    fn to_send(&self, to: usize, rng: &mut impl Rng) -> Vec<Descriptor> {
        let mut others: Vec<Descriptor> = self
            .view
            .iter()
            .copied()
            .filter(|descriptor| descriptor.node != to)
            .collect();
        others.shuffle(rng);
        others.insert(
            0,
            Descriptor {
                node: self.node,
                age: 0,
            },
        );
        others.truncate(self.size / 2);
        others
    }

    /// Merges `received` into the view: itself and duplicates out (the youngest entry of a
    /// peer stays), then the youngest `size` entries.
    fn keep(&mut self, received: Vec<Descriptor>, rng: &mut impl Rng) {
        let mut merged: Vec<Descriptor> = self.view.drain(..).chain(received).collect();
        merged.retain(|descriptor| descriptor.node != self.node);
        // By peer, youngest first; then one entry a peer. Sorting rather than hashing keeps
        // the order, and so the run, a function of the seed alone.
        merged.sort_unstable_by_key(|descriptor| (descriptor.node, descriptor.age));
        merged.dedup_by_key(|descriptor| descriptor.node);
        // Random among equals: ordering ties by id would keep low ids in every view.
        merged.shuffle(rng);
        merged.sort_by_key(|descriptor| descriptor.age);
        merged.truncate(self.size);
        self.view = merged;
    }
}

/// What nodes send each other: a part of a view, and the answer with a part of the peer's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Exchange(Vec<Descriptor>),
    Answer(Vec<Descriptor>),
}

impl Gossip for Sampling {
    type Message = Message;

    fn active(&mut self, _now: u64, rng: &mut impl Rng) -> Vec<Output<Message>> {
        self.start_exchange(rng)
            .map(|(peer, sent)| Output::Send(To::Node(peer), Message::Exchange(sent)))
            .into_iter()
            .collect()
    }

    fn passive(
        &mut self,
        _now: u64,
        from: usize,
        message: Message,
        rng: &mut impl Rng,
    ) -> Vec<Output<Message>> {
        match message {
            Message::Exchange(received) => {
                let answer = self.on_exchange(from, received, rng);
                vec![Output::Send(To::Reply, Message::Answer(answer))]
            }
            Message::Answer(received) => {
                self.on_answer(received, rng);
                Vec::new()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn an_exchange_introduces_each_side_to_the_other_and_keeps_views_bounded() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let mut a = Sampling::new(0, 4, &[1, 2, 3]).expect("valid");
        let mut b = Sampling::new(1, 4, &[5, 6]).expect("valid");
        let (peer, sent) = a.start_exchange(&mut rng).expect("a non-empty view");
        assert!([1, 2, 3].contains(&peer));
        assert!(
            a.view().iter().all(|descriptor| descriptor.node != peer),
            "the peer left"
        );
        assert_eq!(
            sent[0],
            Descriptor { node: 0, age: 0 },
            "a node sends itself, fresh"
        );
        assert!(sent.len() <= 2);
        let answer = b.on_exchange(0, sent, &mut rng);
        assert_eq!(
            answer[0],
            Descriptor { node: 1, age: 0 },
            "the peer answers with itself"
        );
        a.on_answer(answer, &mut rng);
        assert!(b.view().iter().any(|descriptor| descriptor.node == 0));
        assert!(
            a.view().iter().any(|descriptor| descriptor.node == 1),
            "back, fresh"
        );
        assert!(a.view().len() <= 4 && b.view().len() <= 4);
        assert!(
            a.view().iter().all(|descriptor| descriptor.node != 0),
            "never itself"
        );
    }

    #[test]
    fn a_duplicate_keeps_its_youngest_age() {
        let mut node = Sampling::new(0, 3, &[1]).expect("valid");
        let received = vec![
            Descriptor { node: 1, age: 5 },
            Descriptor { node: 2, age: 3 },
        ];
        node.on_answer(received, &mut ChaCha8Rng::seed_from_u64(2));
        let ages: Vec<(usize, u32)> = node.view().iter().map(|d| (d.node, d.age)).collect();
        assert_eq!(ages, [(1, 0), (2, 3)]);
        assert_eq!(Sampling::new(0, 1, &[]).expect_err("tiny").name, "view");
    }
}
