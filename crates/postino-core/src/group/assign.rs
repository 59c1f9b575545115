//! Partition assignment strategies for consumer groups, as pure functions: Kafka's `range`,
//! `roundrobin` and `cooperative-sticky` (with the plain `sticky` they build on). A group's
//! leader (a client, or a front-end on a client's behalf) runs one of them over the members'
//! subscriptions and hands the result to the coordinator's sync.
//!
//! Invariants (property-tested): every partition of a stream that some member subscribes to is
//! given to exactly one member subscribed to that stream, except the partitions the cooperative
//! strategy withholds for one round while their old owner releases them; no partition goes to
//! a member not subscribed to its stream.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;

/// A stream partition: stream name and partition number.
pub type StreamPartition = (String, u32);

/// Member id → the partitions it is given.
pub type Assignment = BTreeMap<String, BTreeSet<StreamPartition>>;

/// One member's part in an assignment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Subscription {
    pub member: String,
    /// Streams the member reads.
    pub streams: BTreeSet<String>,
    /// Partitions the member holds now (what `sticky` tries to keep).
    pub owned: BTreeSet<StreamPartition>,
}

/// The strategies, by their Kafka protocol names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    Range,
    RoundRobin,
    Sticky,
    CooperativeSticky,
}

impl Strategy {
    /// The strategy of a Kafka `partition.assignment.strategy` protocol name.
    #[must_use]
    pub fn from_protocol(name: &str) -> Option<Self> {
        match name {
            "range" => Some(Strategy::Range),
            "roundrobin" => Some(Strategy::RoundRobin),
            "sticky" => Some(Strategy::Sticky),
            "cooperative-sticky" => Some(Strategy::CooperativeSticky),
            _ => None,
        }
    }

    /// Assigns the partitions of `partitions` (stream → partition count) to `members`.
    #[must_use]
    pub fn assign(
        self,
        members: &[Subscription],
        partitions: &BTreeMap<String, u32>,
    ) -> Assignment {
        match self {
            Strategy::Range => range(members, partitions),
            Strategy::RoundRobin => round_robin(members, partitions),
            Strategy::Sticky => sticky(members, partitions),
            Strategy::CooperativeSticky => cooperative_sticky(members, partitions),
        }
    }
}

fn empty_assignment(members: &[Subscription]) -> Assignment {
    members
        .iter()
        .map(|member| (member.member.clone(), BTreeSet::new()))
        .collect()
}

/// Kafka's `range`: per stream, its partitions in order split into contiguous ranges over the
/// subscribed members sorted by id; the first `count % members` get one more.
#[must_use]
pub fn range(members: &[Subscription], partitions: &BTreeMap<String, u32>) -> Assignment {
    let mut assignment = empty_assignment(members);
    for (stream, count) in partitions {
        let mut readers: Vec<&str> = members
            .iter()
            .filter(|member| member.streams.contains(stream))
            .map(|member| member.member.as_str())
            .collect();
        if readers.is_empty() {
            continue;
        }
        readers.sort_unstable();
        let share = *count as usize / readers.len();
        let extra = *count as usize % readers.len();
        let mut next = 0u32;
        for (index, reader) in readers.iter().enumerate() {
            let take = share + usize::from(index < extra);
            let given = assignment
                .get_mut(*reader)
                .expect("every member has an entry");
            for _ in 0..take {
                given.insert((stream.clone(), next));
                next += 1;
            }
        }
    }
    assignment
}

/// Kafka's `roundrobin`: every partition of every stream in (stream, partition) order dealt in
/// turn to the members sorted by id, skipping members not subscribed to its stream.
#[must_use]
pub fn round_robin(members: &[Subscription], partitions: &BTreeMap<String, u32>) -> Assignment {
    let mut assignment = empty_assignment(members);
    let mut sorted: Vec<&Subscription> = members.iter().collect();
    sorted.sort_unstable_by(|a, b| a.member.cmp(&b.member));
    if sorted.is_empty() {
        return assignment;
    }
    let mut turn = 0usize;
    for (stream, count) in partitions {
        if !sorted.iter().any(|member| member.streams.contains(stream)) {
            continue;
        }
        for partition in 0..*count {
            while !sorted[turn % sorted.len()].streams.contains(stream) {
                turn += 1;
            }
            let member = &sorted[turn % sorted.len()].member;
            assignment
                .get_mut(member)
                .expect("every member has an entry")
                .insert((stream.clone(), partition));
            turn += 1;
        }
    }
    assignment
}

/// A balanced assignment that keeps each member's owned partitions where it can: owned
/// partitions stay (the first claimant by id wins a partition two members claim), the rest go
/// one by one to the subscribed member holding fewest, then partitions move from the fullest to
/// the emptiest eligible member only while their counts differ by more than one.
#[must_use]
pub fn sticky(members: &[Subscription], partitions: &BTreeMap<String, u32>) -> Assignment {
    let mut sorted: Vec<&Subscription> = members.iter().collect();
    sorted.sort_unstable_by(|a, b| a.member.cmp(&b.member));
    let mut assignment = empty_assignment(members);
    let mut taken: BTreeSet<StreamPartition> = BTreeSet::new();
    let exists = |(stream, partition): &StreamPartition| {
        partitions
            .get(stream)
            .is_some_and(|count| partition < count)
    };
    for member in &sorted {
        for owned in &member.owned {
            if exists(owned) && member.streams.contains(&owned.0) && taken.insert(owned.clone()) {
                assignment
                    .get_mut(&member.member)
                    .expect("every member has an entry")
                    .insert(owned.clone());
            }
        }
    }
    for (stream, count) in partitions {
        for partition in 0..*count {
            let key = (stream.clone(), partition);
            if taken.contains(&key) {
                continue;
            }
            let fewest = sorted
                .iter()
                .filter(|member| member.streams.contains(stream))
                .min_by_key(|member| (assignment[&member.member].len(), member.member.as_str()));
            if let Some(member) = fewest {
                assignment
                    .get_mut(&member.member)
                    .expect("every member has an entry")
                    .insert(key.clone());
                taken.insert(key);
            }
        }
    }
    balance(&sorted, &mut assignment);
    assignment
}

/// Moves partitions from the fullest member to the emptiest member subscribed to their stream
/// while the two differ by more than one. Each move lowers the sum of squared counts, so it
/// ends.
fn balance(sorted: &[&Subscription], assignment: &mut Assignment) {
    loop {
        let mut best: Option<(usize, String, String, StreamPartition)> = None;
        for giver in sorted {
            let given = &assignment[&giver.member];
            for partition in given.iter().rev() {
                let taker = sorted
                    .iter()
                    .filter(|member| member.streams.contains(&partition.0))
                    .min_by_key(|member| {
                        (assignment[&member.member].len(), member.member.as_str())
                    });
                let Some(taker) = taker else { continue };
                let gap = given.len().saturating_sub(assignment[&taker.member].len());
                if gap > 1 && best.as_ref().is_none_or(|(best_gap, ..)| gap > *best_gap) {
                    best = Some((
                        gap,
                        giver.member.clone(),
                        taker.member.clone(),
                        partition.clone(),
                    ));
                }
            }
        }
        let Some((_, giver, taker, partition)) = best else {
            return;
        };
        assignment
            .get_mut(&giver)
            .expect("the giver has an entry")
            .remove(&partition);
        assignment
            .get_mut(&taker)
            .expect("the taker has an entry")
            .insert(partition);
    }
}

/// Kafka's `cooperative-sticky`: the `sticky` target, except that a partition still owned by
/// another member of the group is withheld from its new owner this round. Its old owner sees
/// it missing from its own assignment, releases it and rejoins; the next round gives it to the
/// new owner. No partition is ever held by two members at once.
#[must_use]
pub fn cooperative_sticky(
    members: &[Subscription],
    partitions: &BTreeMap<String, u32>,
) -> Assignment {
    let mut target = sticky(members, partitions);
    let owner: BTreeMap<&StreamPartition, &str> = members
        .iter()
        .flat_map(|member| {
            member
                .owned
                .iter()
                .map(move |partition| (partition, member.member.as_str()))
        })
        .collect();
    for (member, given) in &mut target {
        given.retain(|partition| {
            owner
                .get(partition)
                .is_none_or(|current| *current == member.as_str())
        });
    }
    target
}

/// Writes a string with a u16 length.
fn put_text(out: &mut Vec<u8>, text: &str) {
    out.extend_from_slice(&(text.len().min(usize::from(u16::MAX)) as u16).to_be_bytes());
    out.extend_from_slice(&text.as_bytes()[..text.len().min(usize::from(u16::MAX))]);
}

/// Reads what `put_text` wrote.
fn take_text(input: &mut &[u8]) -> Option<String> {
    let length = usize::from(u16::from_be_bytes(take::<2>(input)?));
    let text = input.get(..length)?;
    *input = &input[length..];
    String::from_utf8(text.to_vec()).ok()
}

fn take<const N: usize>(input: &mut &[u8]) -> Option<[u8; N]> {
    let bytes: [u8; N] = input.get(..N)?.try_into().ok()?;
    *input = &input[N..];
    Some(bytes)
}

fn put_partitions(out: &mut Vec<u8>, partitions: &BTreeSet<StreamPartition>) {
    out.extend_from_slice(&(partitions.len() as u32).to_be_bytes());
    for (stream, partition) in partitions {
        put_text(out, stream);
        out.extend_from_slice(&partition.to_be_bytes());
    }
}

fn take_partitions(input: &mut &[u8]) -> Option<BTreeSet<StreamPartition>> {
    let count = u32::from_be_bytes(take::<4>(input)?);
    (0..count)
        .map(|_| Some((take_text(input)?, u32::from_be_bytes(take::<4>(input)?))))
        .collect()
}

/// A member's subscription as join metadata for postino's own clients (version 0: `u16 0`,
/// `u32` stream count, each stream as `u16` length + UTF-8, then the owned partitions as `u32`
/// count, each stream + `u32` partition).
#[must_use]
pub fn encode_subscription(streams: &BTreeSet<String>, owned: &BTreeSet<StreamPartition>) -> Bytes {
    let mut out = vec![0, 0];
    out.extend_from_slice(&(streams.len() as u32).to_be_bytes());
    for stream in streams {
        put_text(&mut out, stream);
    }
    put_partitions(&mut out, owned);
    Bytes::from(out)
}

/// The subscription `member` joined with, `None` when the metadata is not version 0.
#[must_use]
pub fn decode_subscription(member: &str, metadata: &[u8]) -> Option<Subscription> {
    let mut input = metadata;
    if take::<2>(&mut input)? != [0, 0] {
        return None;
    }
    let count = u32::from_be_bytes(take::<4>(&mut input)?);
    let streams = (0..count)
        .map(|_| take_text(&mut input))
        .collect::<Option<BTreeSet<String>>>()?;
    let owned = take_partitions(&mut input)?;
    input.is_empty().then(|| Subscription {
        member: member.to_owned(),
        streams,
        owned,
    })
}

/// A member's partitions as the sync carries them (version 0: `u16 0` then the partitions).
#[must_use]
pub fn encode_assignment(partitions: &BTreeSet<StreamPartition>) -> Bytes {
    let mut out = vec![0, 0];
    put_partitions(&mut out, partitions);
    Bytes::from(out)
}

/// The partitions of an assignment; empty bytes (no assignment) are no partitions.
#[must_use]
pub fn decode_assignment(bytes: &[u8]) -> Option<BTreeSet<StreamPartition>> {
    if bytes.is_empty() {
        return Some(BTreeSet::new());
    }
    let mut input = bytes;
    if take::<2>(&mut input)? != [0, 0] {
        return None;
    }
    let partitions = take_partitions(&mut input)?;
    input.is_empty().then_some(partitions)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscriptions_and_assignments_survive_their_encoding() {
        let streams = BTreeSet::from(["a".to_owned(), "é".to_owned()]);
        let owned = BTreeSet::from([("a".to_owned(), 3)]);
        let decoded =
            decode_subscription("m", &encode_subscription(&streams, &owned)).expect("decodes");
        assert_eq!((decoded.streams, decoded.owned), (streams, owned.clone()));
        assert_eq!(decode_assignment(&encode_assignment(&owned)), Some(owned));
        assert_eq!(decode_assignment(b""), Some(BTreeSet::new()));
        assert_eq!(decode_subscription("m", b"\x00\x01"), None);
        assert_eq!(decode_assignment(b"\x00\x00\x00\x00\x00\x09"), None);
    }

    fn member(id: &str, streams: &[&str]) -> Subscription {
        Subscription {
            member: id.to_owned(),
            streams: streams.iter().map(|stream| (*stream).to_owned()).collect(),
            owned: BTreeSet::new(),
        }
    }

    fn names(assignment: &Assignment, member: &str) -> Vec<String> {
        assignment[member]
            .iter()
            .map(|(stream, partition)| format!("{stream}-{partition}"))
            .collect()
    }

    #[test]
    fn range_gives_contiguous_runs_and_the_first_members_the_extra() {
        let members = [member("b", &["t"]), member("a", &["t"])];
        let partitions = BTreeMap::from([("t".to_owned(), 5)]);
        let assignment = range(&members, &partitions);
        assert_eq!(names(&assignment, "a"), ["t-0", "t-1", "t-2"]);
        assert_eq!(names(&assignment, "b"), ["t-3", "t-4"]);
    }

    #[test]
    fn round_robin_deals_partitions_in_turn_skipping_non_subscribers() {
        let members = [member("a", &["t", "u"]), member("b", &["t"])];
        let partitions = BTreeMap::from([("t".to_owned(), 3), ("u".to_owned(), 2)]);
        let assignment = round_robin(&members, &partitions);
        assert_eq!(names(&assignment, "a"), ["t-0", "t-2", "u-0", "u-1"]);
        assert_eq!(names(&assignment, "b"), ["t-1"]);
    }

    #[test]
    fn sticky_keeps_what_a_member_owns_when_a_member_joins() {
        let mut first = member("a", &["t"]);
        first.owned = (0..4)
            .map(|partition| ("t".to_owned(), partition))
            .collect();
        let members = [first, member("b", &["t"])];
        let partitions = BTreeMap::from([("t".to_owned(), 4)]);
        let assignment = sticky(&members, &partitions);
        assert_eq!(assignment["a"].len(), 2);
        assert_eq!(assignment["b"].len(), 2);
        assert!(assignment["a"].is_subset(&members[0].owned));
    }

    #[test]
    fn cooperative_sticky_withholds_a_moving_partition_for_one_round() {
        let mut first = member("a", &["t"]);
        first.owned = (0..4)
            .map(|partition| ("t".to_owned(), partition))
            .collect();
        let partitions = BTreeMap::from([("t".to_owned(), 4)]);
        let round_one = cooperative_sticky(&[first.clone(), member("b", &["t"])], &partitions);
        assert_eq!(round_one["a"].len(), 2);
        assert!(round_one["b"].is_empty(), "b waits until a has released");
        first.owned = round_one["a"].clone();
        let round_two = cooperative_sticky(&[first, member("b", &["t"])], &partitions);
        assert_eq!(round_two["a"], round_one["a"]);
        assert_eq!(round_two["b"].len(), 2);
    }

    #[test]
    fn protocol_names_map_to_strategies() {
        assert_eq!(Strategy::from_protocol("range"), Some(Strategy::Range));
        assert_eq!(
            Strategy::from_protocol("cooperative-sticky"),
            Some(Strategy::CooperativeSticky)
        );
        assert_eq!(Strategy::from_protocol("mystery"), None);
    }
}
