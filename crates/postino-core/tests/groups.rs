//! Consumer groups: the membership state machine on its own (rounds, generations, heartbeats,
//! session and rebalance timeouts, static members, refusals) and the host's coordinator with
//! real tasks (consumers that join together, a leader that assigns, durable committed offsets).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use postino_core::group::assign::{Strategy, encode_subscription};
use postino_core::group::{Answer, GroupState, Membership};
use postino_core::{
    Committer, CoreError, GroupError, GroupLimits, Join, OffsetCommit, StreamSpec, VirtualHost,
};
use postino_storage::{Durability, LogConfig};
use postino_types::SystemClock;

fn limits() -> GroupLimits {
    GroupLimits {
        session_timeout_min_ms: 100,
        initial_rebalance_delay_ms: 0,
        ..GroupLimits::default()
    }
}

fn join(member_id: Option<&str>, instance: Option<&str>, metadata: &str) -> Join {
    Join {
        member_id: member_id.map(str::to_owned),
        instance_id: instance.map(str::to_owned),
        client_id: "client".to_owned(),
        session_timeout_ms: 1_000,
        rebalance_timeout_ms: 500,
        protocol_type: "consumer".to_owned(),
        protocols: vec![("range".to_owned(), Bytes::from(metadata.to_owned()))],
    }
}

/// The join answers in `answers`, by waiter.
fn joined(answers: &[Answer]) -> BTreeMap<u64, postino_core::Joined> {
    answers
        .iter()
        .filter_map(|answer| match answer {
            Answer::Join {
                waiter,
                outcome: Ok(joined),
            } => Some((*waiter, joined.clone())),
            _ => None,
        })
        .collect()
}

fn group_error(outcome: Result<impl std::fmt::Debug, CoreError>) -> GroupError {
    match outcome {
        Err(CoreError::Group { error, .. }) => error,
        other => panic!("expected a group error, got {other:?}"),
    }
}

#[test]
fn a_round_ends_when_every_member_rejoined_and_the_leader_hands_out_assignments() {
    let mut group = Membership::new("g", limits());
    let (first, answers) = group.join(0, join(None, None, "m1"), 1).expect("join");
    let round_one = joined(&answers);
    assert_eq!(
        round_one[&1].generation, 1,
        "a lone member completes its round"
    );
    assert_eq!(round_one[&1].leader, first);

    let (second, answers) = group.join(10, join(None, None, "m2"), 2).expect("join");
    assert!(answers.is_empty(), "the round waits for the first member");
    assert_eq!(group.state(), GroupState::PreparingRebalance);
    assert_eq!(
        group_error(group.heartbeat(20, &first, 1)),
        GroupError::RebalanceInProgress
    );
    let (_, answers) = group
        .join(30, join(Some(&first), None, "m1"), 3)
        .expect("rejoin");
    let round_two = joined(&answers);
    assert_eq!(round_two.len(), 2);
    let leader = &round_two[&3];
    assert_eq!(leader.generation, 2);
    assert_eq!(leader.leader, first);
    let metadata: BTreeSet<&[u8]> = leader
        .members
        .iter()
        .map(|member| &member.metadata[..])
        .collect();
    assert_eq!(metadata, BTreeSet::from([&b"m1"[..], &b"m2"[..]]));
    assert!(
        round_two[&2].members.is_empty(),
        "only the leader sees the members"
    );

    let follower = group.sync(40, &second, 2, Vec::new(), 4).expect("sync");
    assert!(follower.is_empty(), "a follower waits for the leader");
    let answers = group
        .sync(
            50,
            &first,
            2,
            vec![
                (first.clone(), Bytes::from_static(b"p0")),
                (second.clone(), Bytes::from_static(b"p1")),
            ],
            5,
        )
        .expect("sync");
    let syncs: BTreeMap<u64, Bytes> = answers
        .into_iter()
        .filter_map(|answer| match answer {
            Answer::Sync {
                waiter,
                outcome: Ok(assignment),
            } => Some((waiter, assignment)),
            _ => None,
        })
        .collect();
    assert_eq!(syncs[&4], Bytes::from_static(b"p1"));
    assert_eq!(syncs[&5], Bytes::from_static(b"p0"));
    assert_eq!(group.state(), GroupState::Stable);
    group.heartbeat(60, &second, 2).expect("heartbeat");
    assert_eq!(
        group_error(group.heartbeat(60, &second, 1)),
        GroupError::IllegalGeneration
    );
}

#[test]
fn silent_members_leave_by_session_timeout_and_stragglers_by_rebalance_timeout() {
    let mut group = Membership::new("g", limits());
    let (first, _) = group.join(0, join(None, None, "a"), 1).expect("join");
    group.join(0, join(None, None, "b"), 2).expect("join");
    let (_, answers) = group
        .join(0, join(Some(&first), None, "a"), 3)
        .expect("rejoin");
    assert_eq!(joined(&answers).len(), 2);
    group
        .sync(0, &first, 2, vec![(first.clone(), Bytes::new())], 4)
        .expect("sync");
    group.heartbeat(900, &first, 2).expect("heartbeat");
    let answers = group.tick(1_100);
    assert!(answers.is_empty());
    assert_eq!(
        group.member_ids(),
        std::slice::from_ref(&first),
        "the silent member left"
    );
    assert_eq!(group.state(), GroupState::PreparingRebalance);
    let (_, answers) = group
        .join(1_200, join(Some(&first), None, "a"), 5)
        .expect("rejoin");
    assert_eq!(joined(&answers)[&5].generation, 3);

    let (_, answers) = group.join(1_300, join(None, None, "c"), 6).expect("join");
    assert!(answers.is_empty());
    let answers = group.tick(1_300 + 500);
    let round = joined(&answers);
    assert_eq!(
        round.len(),
        1,
        "only the newcomer rejoined before the deadline"
    );
    assert!(round.contains_key(&6));
    assert_eq!(group.member_ids().len(), 1);
    assert!(!group.member_ids().contains(&first));
}

#[test]
fn a_static_member_returns_under_a_new_id_without_a_round() {
    let mut group = Membership::new("g", limits());
    let (old, _) = group
        .join(0, join(None, Some("pod-1"), "a"), 1)
        .expect("join");
    group
        .sync(
            0,
            &old,
            1,
            vec![(old.clone(), Bytes::from_static(b"p0,p1"))],
            2,
        )
        .expect("sync");
    let (new, answers) = group
        .join(100, join(None, Some("pod-1"), "a"), 3)
        .expect("rejoin");
    assert_ne!(new, old);
    let round = joined(&answers);
    assert_eq!(round[&3].generation, 1, "no new generation");
    assert_eq!(group.state(), GroupState::Stable);
    let assignment = group.sync(110, &new, 1, Vec::new(), 4).expect("sync");
    assert!(matches!(
        &assignment[..],
        [Answer::Sync { outcome: Ok(bytes), .. }] if &bytes[..] == b"p0,p1"
    ));
    assert_eq!(
        group_error(group.heartbeat(120, &old, 1)),
        GroupError::UnknownMember
    );
}

#[test]
fn bad_joins_are_refused_with_their_reason() {
    let mut group = Membership::new("g", limits());
    let mut short = join(None, None, "a");
    short.session_timeout_ms = 10;
    assert_eq!(
        group_error(group.join(0, short, 1)),
        GroupError::InvalidSessionTimeout
    );
    group.join(0, join(None, None, "a"), 2).expect("join");
    let mut other = join(None, None, "b");
    other.protocols = vec![("roundrobin".to_owned(), Bytes::new())];
    assert_eq!(
        group_error(group.join(0, other, 3)),
        GroupError::InconsistentProtocol
    );
    assert_eq!(
        group_error(group.join(0, join(Some("ghost"), None, "a"), 4)),
        GroupError::UnknownMember
    );
    assert_eq!(
        group_error(group.leave(0, &["ghost".to_owned()])),
        GroupError::UnknownMember
    );
}

fn open(dir: &Path) -> Arc<VirtualHost> {
    let config = LogConfig {
        durability: Durability::Fsync,
        ..LogConfig::default()
    };
    VirtualHost::open("/", Some(dir.to_path_buf()), config, Arc::new(SystemClock))
        .expect("open virtual host")
}

#[tokio::test]
async fn consumers_share_a_stream_and_their_commits_survive_a_restart() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let host = open(dir.path());
    host.groups().set_limits(limits()).await.expect("limits");
    host.declare_stream("orders", StreamSpec::with_partitions(6))
        .expect("declare");
    let mut consumers = Vec::new();
    for _ in 0..3 {
        let host = Arc::clone(&host);
        consumers.push(tokio::spawn(async move {
            let groups = host.groups();
            let mut member = None;
            let subscription =
                encode_subscription(&BTreeSet::from(["orders".to_owned()]), &BTreeSet::new());
            loop {
                let mut request = join(member.as_deref(), None, "");
                request.protocols = vec![("range".to_owned(), subscription.clone())];
                let joined = groups.join("billing", request).await?;
                member = Some(joined.member_id.clone());
                let counts =
                    |stream: &str| host.stream(stream).map(|found| found.partition_count());
                let assignment = match groups
                    .sync_assigned("billing", &joined, Strategy::Range, counts)
                    .await
                {
                    Ok(assignment) => assignment,
                    Err(CoreError::Group { .. }) => continue,
                    Err(error) => return Err(error),
                };
                loop {
                    // Done once the group is stable with all three in this generation.
                    let description = groups.describe("billing").await?.expect("group");
                    if description.state == GroupState::Stable
                        && description.members.len() == 3
                        && description.generation == joined.generation
                    {
                        return Ok::<_, CoreError>((
                            joined.member_id,
                            joined.generation,
                            assignment,
                        ));
                    }
                    match groups
                        .heartbeat("billing", &joined.member_id, joined.generation)
                        .await
                    {
                        Ok(()) => tokio::time::sleep(std::time::Duration::from_millis(10)).await,
                        Err(CoreError::Group {
                            error: GroupError::RebalanceInProgress | GroupError::IllegalGeneration,
                            ..
                        }) => break,
                        Err(error) => return Err(error),
                    }
                }
            }
        }));
    }
    let mut assigned = Vec::new();
    let mut members = Vec::new();
    for consumer in consumers {
        let (member, generation, assignment) =
            consumer.await.expect("consumer task").expect("consumer");
        members.push((member, generation));
        assigned.extend(assignment.into_iter().map(|(_, partition)| partition));
    }
    assigned.sort_unstable();
    let generations: BTreeSet<i32> = members.iter().map(|(_, generation)| *generation).collect();
    assert_eq!(generations.len(), 1, "all three finished in one generation");
    assert_eq!(assigned, [0, 1, 2, 3, 4, 5], "every partition once");
    let description = host
        .groups()
        .describe("billing")
        .await
        .expect("describe")
        .expect("group");
    let generation = description.generation;
    let (member, _) = members
        .iter()
        .find(|(member, _)| {
            description
                .members
                .iter()
                .any(|known| &known.member_id == member)
        })
        .expect("a current member");
    host.groups()
        .commit(
            "billing",
            Committer::Member {
                member_id: member.clone(),
                generation,
            },
            vec![OffsetCommit {
                stream: "orders".to_owned(),
                partition: 2,
                offset: 41,
                metadata: "checkpoint".to_owned(),
            }],
        )
        .await
        .expect("commit");
    assert_eq!(
        group_error(
            host.groups()
                .commit("billing", Committer::Standalone, Vec::new())
                .await
        ),
        GroupError::UnknownMember
    );
    assert_eq!(
        group_error(host.groups().delete("billing").await),
        GroupError::NotEmpty
    );
    host.close().await.expect("close");
    drop(host);

    let host = open(dir.path());
    let offsets = host.groups().offsets("billing").await.expect("offsets");
    assert_eq!(offsets.len(), 1);
    assert_eq!(offsets[0].0, ("orders".to_owned(), 2));
    assert_eq!(offsets[0].1.offset, 41);
    assert_eq!(offsets[0].1.metadata, "checkpoint");
    assert_eq!(host.groups().list().await.expect("list"), ["billing"]);
    host.groups()
        .delete("billing")
        .await
        .expect("delete an empty group");
    assert!(
        host.groups()
            .offsets("billing")
            .await
            .expect("offsets")
            .is_empty()
    );
}
