//! Deletion under anti-entropy with death certificates (Demers et al. 1987; the lecture notes'
//! section on removing data). Replicas reconcile one item by push-pull exchanges. Deleting by
//! simply dropping the item does not work: the next exchange with a replica that still holds it
//! brings it back (a *resurrection*). A deleting replica instead writes a **death certificate**,
//! which spreads like an update and makes every replica drop the item; a certificate lives for
//! a TTL, after which replicas forget it, except a few that keep a **dormant** copy: when an
//! obsolete copy of the item meets a dormant certificate, the certificate wakes up and spreads
//! again.

use rand::Rng;

use crate::framework::{Gossip, Output, To};

/// What a replica knows of the item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Item {
    /// The replica holds the item at this version.
    Held { version: u64 },
    /// The replica has nothing: never had it, deleted it without a certificate, or forgot an
    /// expired certificate.
    Absent,
    /// A death certificate for every version up to `version`, active until `expires_at`
    /// (rounds).
    Certificate { version: u64, expires_at: u64 },
    /// An expired certificate kept dormant.
    Dormant { version: u64 },
}

/// One replica's state for the item.
#[derive(Debug, Clone)]
pub struct Replica {
    item: Item,
    ttl: u64,
    /// This replica keeps a dormant copy when its certificate expires.
    keeps_dormant: bool,
}

impl Replica {
    /// A replica holding the item at `version`; certificates it makes or adopts live `ttl`
    /// rounds.
    #[must_use]
    pub fn holding(version: u64, ttl: u64, keeps_dormant: bool) -> Self {
        Self {
            item: Item::Held { version },
            ttl,
            keeps_dormant,
        }
    }

    /// What the replica knows.
    #[must_use]
    pub fn item(&self) -> Item {
        self.item
    }

    /// Deletes the item at `now`: with a certificate, or (the naive way) by dropping it.
    pub fn delete(&mut self, now: u64, certificate: bool) {
        let Item::Held { version } = self.item else {
            return;
        };
        self.item = if certificate {
            Item::Certificate {
                version,
                expires_at: now + self.ttl,
            }
        } else {
            Item::Absent
        };
    }

    /// Time passes: an expired certificate is forgotten or turns dormant.
    pub fn tick(&mut self, now: u64) {
        if let Item::Certificate {
            version,
            expires_at,
        } = self.item
            && now >= expires_at
        {
            self.item = if self.keeps_dormant {
                Item::Dormant { version }
            } else {
                Item::Absent
            };
        }
    }

    /// An exchange with a replica that knew `peer`, at `now`: keeps what wins. A certificate
    /// beats every copy it covers; a copy beats absence; a copy covered by a dormant
    /// certificate wakes it up.
    ///
    /// A certificate that expired by `now` counts as nothing, on either side: otherwise one
    /// could pass from replica to replica ahead of their ticks and never die.
    pub fn on_exchange(&mut self, now: u64, peer: Item) {
        self.tick(now);
        let peer = match peer {
            Item::Certificate { expires_at, .. } if now >= expires_at => Item::Absent,
            other => other,
        };
        self.item = match (self.item, peer) {
            (
                Item::Held { version },
                Item::Certificate {
                    version: dead,
                    expires_at,
                },
            ) if dead >= version => Item::Certificate {
                version: dead,
                expires_at,
            },
            (
                Item::Absent,
                Item::Certificate {
                    version,
                    expires_at,
                },
            ) => Item::Certificate {
                version,
                expires_at,
            },
            (Item::Absent, Item::Held { version }) => Item::Held { version },
            (Item::Held { version }, Item::Held { version: newer }) if newer > version => {
                Item::Held { version: newer }
            }
            (Item::Dormant { version: dead }, Item::Held { version }) if dead >= version => {
                Item::Certificate {
                    version: dead,
                    expires_at: now + self.ttl,
                }
            }
            (own, _) => own,
        };
    }
}

/// What replicas send each other in a push-pull exchange: what each knew of the item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Message {
    Offer(Item),
    Answer(Item),
}

impl Gossip for Replica {
    type Message = Message;

    /// Time passes, then the replica offers what it knows to a peer.
    fn active(&mut self, now: u64, _rng: &mut impl Rng) -> Vec<Output<Message>> {
        self.tick(now);
        vec![Output::Send(To::Peer, Message::Offer(self.item))]
    }

    fn passive(
        &mut self,
        now: u64,
        _from: usize,
        message: Message,
        _rng: &mut impl Rng,
    ) -> Vec<Output<Message>> {
        match message {
            Message::Offer(item) => {
                let own = self.item;
                self.on_exchange(now, item);
                vec![Output::Send(To::Reply, Message::Answer(own))]
            }
            Message::Answer(item) => {
                self.on_exchange(now, item);
                Vec::new()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_deletion_is_undone_by_the_next_exchange() {
        let mut deleter = Replica::holding(1, 10, false);
        deleter.delete(0, false);
        deleter.on_exchange(1, Item::Held { version: 1 });
        assert_eq!(deleter.item(), Item::Held { version: 1 }, "resurrected");
    }

    #[test]
    fn a_certificate_removes_copies_until_it_expires() {
        let mut deleter = Replica::holding(1, 10, false);
        deleter.delete(0, true);
        let certificate = deleter.item();
        deleter.on_exchange(1, Item::Held { version: 1 });
        assert_eq!(deleter.item(), certificate, "the certificate wins");
        let mut holder = Replica::holding(1, 10, false);
        holder.on_exchange(2, certificate);
        assert_eq!(holder.item(), certificate, "the copy is dropped");
        holder.tick(10);
        assert_eq!(holder.item(), Item::Absent, "forgotten after its TTL");
        let mut newer = Replica::holding(2, 10, false);
        newer.on_exchange(3, certificate);
        assert_eq!(
            newer.item(),
            Item::Held { version: 2 },
            "a newer version survives"
        );
    }

    #[test]
    fn a_dormant_certificate_wakes_up_when_an_old_copy_returns() {
        let mut keeper = Replica::holding(1, 10, true);
        keeper.delete(0, true);
        keeper.tick(10);
        assert_eq!(keeper.item(), Item::Dormant { version: 1 });
        keeper.on_exchange(50, Item::Held { version: 1 });
        assert_eq!(
            keeper.item(),
            Item::Certificate {
                version: 1,
                expires_at: 60
            }
        );
    }

    #[test]
    fn an_expired_certificate_is_not_adopted_nor_kept_past_its_time() {
        let mut stale = Replica::holding(1, 5, false);
        stale.delete(0, true);
        let mut absent = Replica::holding(1, 5, false);
        absent.delete(0, false);
        absent.on_exchange(7, stale.item());
        assert_eq!(absent.item(), Item::Absent, "it died at 5");
        stale.on_exchange(7, Item::Absent);
        assert_eq!(
            stale.item(),
            Item::Absent,
            "its holder forgets it when it exchanges"
        );
    }
}
