//! Consumer groups: membership (Kafka's classic join/sync/heartbeat protocol, in
//! [`membership`]), assignment strategies (in [`assign`]) and committed offsets (in
//! [`offsets`], an internal compacted log). One coordinator task per virtual host owns every
//! group's membership and the offsets store; [`GroupHandle`] talks to it over a bounded mailbox.
//! The offsets log lives in `<host dir>/groups/offsets/`.

pub mod assign;
pub mod membership;
pub mod offsets;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use postino_storage::Durable;
use postino_types::Clock;
use tokio::sync::mpsc;

use crate::error::{CoreError, GroupError};
use crate::owner::{Reply, call};
use assign::{
    Strategy, StreamPartition, Subscription, decode_assignment, decode_subscription,
    encode_assignment,
};
pub use membership::{
    Answer, GroupLimits, GroupState, Join, Joined, JoinedMember, MemberDescription, Membership,
};
pub use offsets::{CommittedOffset, OffsetCommit, OffsetStore};

/// Commands waiting in the coordinator's mailbox before senders must wait.
const MAILBOX_CAPACITY: usize = 1024;

/// Who commits offsets: a member of the current generation, a client outside any group
/// membership (Kafka's "simple" consumer, generation -1), which only an empty group accepts, or
/// a committed transaction (its offsets were accepted when it was open).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Committer {
    Member { member_id: String, generation: i32 },
    Standalone,
    Transaction,
}

/// A group as `describe` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupDescription {
    pub state: GroupState,
    pub generation: i32,
    pub protocol: Option<String>,
    pub leader: Option<String>,
    pub members: Vec<MemberDescription>,
}

enum Command {
    Join {
        group: String,
        join: Join,
        reply: Reply<Joined>,
    },
    Sync {
        group: String,
        member_id: String,
        generation: i32,
        assignments: Vec<(String, Bytes)>,
        reply: Reply<Bytes>,
    },
    Heartbeat {
        group: String,
        member_id: String,
        generation: i32,
        reply: Reply<()>,
    },
    Leave {
        group: String,
        member_ids: Vec<String>,
        reply: Reply<()>,
    },
    Commit {
        group: String,
        committer: Committer,
        offsets: Vec<OffsetCommit>,
        reply: Reply<Durable>,
    },
    Offsets {
        group: String,
        reply: Reply<Vec<((String, u32), CommittedOffset)>>,
    },
    Describe {
        group: String,
        reply: Reply<Option<GroupDescription>>,
    },
    List {
        reply: Reply<Vec<String>>,
    },
    Delete {
        group: String,
        reply: Reply<Durable>,
    },
    SetLimits {
        limits: GroupLimits,
        reply: Reply<()>,
    },
    Close {
        reply: Reply<()>,
    },
}

/// How other tasks talk to a host's group coordinator. Cheap to clone.
#[derive(Debug, Clone)]
pub struct GroupHandle {
    mailbox: mpsc::Sender<Command>,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Command::Join { .. } => "Join",
            Command::Sync { .. } => "Sync",
            Command::Heartbeat { .. } => "Heartbeat",
            Command::Leave { .. } => "Leave",
            Command::Commit { .. } => "Commit",
            Command::Offsets { .. } => "Offsets",
            Command::Describe { .. } => "Describe",
            Command::List { .. } => "List",
            Command::Delete { .. } => "Delete",
            Command::SetLimits { .. } => "SetLimits",
            Command::Close { .. } => "Close",
        })
    }
}

fn stopped() -> CoreError {
    CoreError::Storage(postino_storage::LogError::Failed {
        reason: "the group coordinator has stopped".into(),
    })
}

impl GroupHandle {
    /// Starts the coordinator task over `offsets` on the current tokio runtime.
    pub fn spawn(offsets: OffsetStore, limits: GroupLimits, clock: Arc<dyn Clock>) -> Self {
        let (mailbox, inbox) = mpsc::channel(MAILBOX_CAPACITY);
        let coordinator = Coordinator {
            offsets: Some(offsets),
            limits,
            clock,
            groups: HashMap::new(),
            joins: HashMap::new(),
            syncs: HashMap::new(),
            next_waiter: 0,
        };
        tokio::spawn(coordinator.run(inbox));
        Self { mailbox }
    }

    async fn call<T>(&self, command: impl FnOnce(Reply<T>) -> Command) -> Result<T, CoreError> {
        call(&self.mailbox, command, stopped).await
    }

    /// Joins `group` (see [`Membership::join`]); answers when the join round ends.
    ///
    /// # Errors
    /// `Group` errors.
    pub async fn join(&self, group: &str, join: Join) -> Result<Joined, CoreError> {
        let group = group.to_owned();
        self.call(|reply| Command::Join { group, join, reply })
            .await
    }

    /// Asks for this member's assignment; the leader brings every member's. Answers when the
    /// leader's sync arrived.
    ///
    /// # Errors
    /// `Group` errors (`RebalanceInProgress`: join again).
    pub async fn sync(
        &self,
        group: &str,
        member_id: &str,
        generation: i32,
        assignments: Vec<(String, Bytes)>,
    ) -> Result<Bytes, CoreError> {
        let (group, member_id) = (group.to_owned(), member_id.to_owned());
        self.call(|reply| Command::Sync {
            group,
            member_id,
            generation,
            assignments,
            reply,
        })
        .await
    }

    /// Syncs a generation `joined` as a postino client does: members' metadata is their
    /// subscription (`assign::encode_subscription`); the leader assigns the partitions of the
    /// subscribed streams (`partitions` gives each stream's count) with `strategy`. Returns
    /// this member's partitions.
    ///
    /// # Errors
    /// As [`GroupHandle::sync`] (`RebalanceInProgress`: join again); `InvalidArgument` for a
    /// member whose metadata is not a subscription or an assignment that does not decode.
    pub async fn sync_assigned(
        &self,
        group: &str,
        joined: &Joined,
        strategy: Strategy,
        partitions: impl Fn(&str) -> Option<u32>,
    ) -> Result<BTreeSet<StreamPartition>, CoreError> {
        let mut assignments = Vec::new();
        if joined.leader == joined.member_id {
            let subscriptions = joined
                .members
                .iter()
                .map(|member| {
                    decode_subscription(&member.member_id, &member.metadata).ok_or_else(|| {
                        CoreError::InvalidArgument {
                            name: "metadata".to_owned(),
                            reason: format!("member {} sent no subscription", member.member_id),
                        }
                    })
                })
                .collect::<Result<Vec<Subscription>, CoreError>>()?;
            let counts: BTreeMap<String, u32> = subscriptions
                .iter()
                .flat_map(|subscription| subscription.streams.iter())
                .filter_map(|stream| Some((stream.clone(), partitions(stream)?)))
                .collect();
            assignments = strategy
                .assign(&subscriptions, &counts)
                .iter()
                .map(|(member, given)| (member.clone(), encode_assignment(given)))
                .collect();
        }
        let assignment = self
            .sync(group, &joined.member_id, joined.generation, assignments)
            .await?;
        decode_assignment(&assignment).ok_or_else(|| CoreError::InvalidArgument {
            name: "assignment".to_owned(),
            reason: "the leader's assignment does not decode".to_owned(),
        })
    }

    /// Keeps a member's session.
    ///
    /// # Errors
    /// `Group` errors (`RebalanceInProgress`: join again).
    pub async fn heartbeat(
        &self,
        group: &str,
        member_id: &str,
        generation: i32,
    ) -> Result<(), CoreError> {
        let (group, member_id) = (group.to_owned(), member_id.to_owned());
        self.call(|reply| Command::Heartbeat {
            group,
            member_id,
            generation,
            reply,
        })
        .await
    }

    /// Members leave the group.
    ///
    /// # Errors
    /// `Group(UnknownMember)`.
    pub async fn leave(&self, group: &str, member_ids: Vec<String>) -> Result<(), CoreError> {
        let group = group.to_owned();
        self.call(|reply| Command::Leave {
            group,
            member_ids,
            reply,
        })
        .await
    }

    /// Commits offsets for `group`, all or none; returns once they are durable.
    ///
    /// # Errors
    /// `Group` errors for a committer outside the current generation; storage errors.
    pub async fn commit(
        &self,
        group: &str,
        committer: Committer,
        offsets: Vec<OffsetCommit>,
    ) -> Result<(), CoreError> {
        let group = group.to_owned();
        let ticket = self
            .call(|reply| Command::Commit {
                group,
                committer,
                offsets,
                reply,
            })
            .await?;
        Ok(ticket.await?)
    }

    /// The committed offsets of `group`: (stream, partition) → offset, sorted.
    ///
    /// # Errors
    /// When the coordinator stopped.
    pub async fn offsets(
        &self,
        group: &str,
    ) -> Result<Vec<((String, u32), CommittedOffset)>, CoreError> {
        let group = group.to_owned();
        self.call(|reply| Command::Offsets { group, reply }).await
    }

    /// The state of a group, `None` when it has neither members nor committed offsets.
    ///
    /// # Errors
    /// When the coordinator stopped.
    pub async fn describe(&self, group: &str) -> Result<Option<GroupDescription>, CoreError> {
        let group = group.to_owned();
        self.call(|reply| Command::Describe { group, reply }).await
    }

    /// Groups with members or committed offsets, sorted.
    ///
    /// # Errors
    /// When the coordinator stopped.
    pub async fn list(&self) -> Result<Vec<String>, CoreError> {
        self.call(|reply| Command::List { reply }).await
    }

    /// Deletes an empty group and its committed offsets; returns once that is durable.
    ///
    /// # Errors
    /// `Group(NotEmpty)` while it has members; storage errors.
    pub async fn delete(&self, group: &str) -> Result<(), CoreError> {
        let group = group.to_owned();
        let ticket = self.call(|reply| Command::Delete { group, reply }).await?;
        Ok(ticket.await?)
    }

    /// Changes the limits of groups created from now on (configuration).
    ///
    /// # Errors
    /// When the coordinator stopped.
    pub async fn set_limits(&self, limits: GroupLimits) -> Result<(), CoreError> {
        self.call(|reply| Command::SetLimits { limits, reply })
            .await
    }

    /// Stops the coordinator, syncing and closing the offsets log.
    ///
    /// # Errors
    /// Storage errors while closing.
    pub async fn close(&self) -> Result<(), CoreError> {
        self.call(|reply| Command::Close { reply }).await
    }
}

struct Coordinator {
    /// `None` once closed.
    offsets: Option<OffsetStore>,
    limits: GroupLimits,
    clock: Arc<dyn Clock>,
    groups: HashMap<String, Membership>,
    joins: HashMap<u64, Reply<Joined>>,
    syncs: HashMap<u64, Reply<Bytes>>,
    next_waiter: u64,
}

impl Coordinator {
    async fn run(mut self, mut inbox: mpsc::Receiver<Command>) {
        loop {
            let wake = self
                .groups
                .values()
                .filter_map(Membership::next_deadline_ms)
                .min();
            let command = match wake {
                Some(at_ms) => {
                    let delay_ms = at_ms.saturating_sub(self.clock.now_ms()).max(0) as u64;
                    tokio::select! {
                        command = inbox.recv() => command,
                        () = tokio::time::sleep(Duration::from_millis(delay_ms)) => {
                            self.on_tick();
                            continue;
                        }
                    }
                }
                None => inbox.recv().await,
            };
            let Some(command) = command else { break };
            if let Command::Close { reply } = command {
                // Every commit was acknowledged only once durable: dropping loses nothing.
                self.offsets = None;
                let _ = reply.send(Ok(()));
                return;
            }
            self.on_command(command);
            self.forget_empty();
        }
    }

    fn on_tick(&mut self) {
        let now = self.clock.now_ms();
        let mut answers = Vec::new();
        for (name, group) in &mut self.groups {
            answers.extend(
                group
                    .tick(now)
                    .into_iter()
                    .map(|answer| (name.clone(), answer)),
            );
        }
        self.forget_empty();
        for (name, answer) in answers {
            self.deliver(&name, answer);
        }
    }

    /// Drops groups without members: their committed offsets stay in the store.
    fn forget_empty(&mut self) {
        self.groups
            .retain(|_, group| group.state() != GroupState::Empty);
    }

    fn deliver(&mut self, group: &str, answer: Answer) {
        let refuse = |error: GroupError| CoreError::Group {
            group: group.to_owned(),
            error,
        };
        match answer {
            Answer::Join { waiter, outcome } => {
                if let Some(reply) = self.joins.remove(&waiter) {
                    let _ = reply.send(outcome.map_err(refuse));
                }
            }
            Answer::Sync { waiter, outcome } => {
                if let Some(reply) = self.syncs.remove(&waiter) {
                    let _ = reply.send(outcome.map_err(refuse));
                }
            }
        }
    }

    /// On success hands `reply` to `park` (to answer later or now) and delivers the answers
    /// the request completed; on failure answers the error.
    fn respond<T>(
        &mut self,
        group: &str,
        outcome: Result<Vec<Answer>, CoreError>,
        reply: Reply<T>,
        park: impl FnOnce(&mut Self, Reply<T>),
    ) {
        match outcome {
            Ok(answers) => {
                park(self, reply);
                for answer in answers {
                    self.deliver(group, answer);
                }
            }
            Err(error) => {
                let _ = reply.send(Err(error));
            }
        }
    }

    fn group(&mut self, name: &str) -> &mut Membership {
        let limits = self.limits;
        self.groups
            .entry(name.to_owned())
            .or_insert_with(|| Membership::new(name, limits))
    }

    fn waiter(&mut self) -> u64 {
        self.next_waiter += 1;
        self.next_waiter
    }

    fn on_command(&mut self, command: Command) {
        let now = self.clock.now_ms();
        match command {
            Command::Join { group, join, reply } => {
                let waiter = self.waiter();
                let outcome = self
                    .group(&group)
                    .join(now, join, waiter)
                    .map(|(_, answers)| answers);
                self.respond(&group, outcome, reply, |this, reply| {
                    this.joins.insert(waiter, reply);
                });
            }
            Command::Sync {
                group,
                member_id,
                generation,
                assignments,
                reply,
            } => {
                let waiter = self.waiter();
                let outcome =
                    self.group(&group)
                        .sync(now, &member_id, generation, assignments, waiter);
                self.respond(&group, outcome, reply, |this, reply| {
                    this.syncs.insert(waiter, reply);
                });
            }
            Command::Heartbeat {
                group,
                member_id,
                generation,
                reply,
            } => {
                let _ = reply.send(self.group(&group).heartbeat(now, &member_id, generation));
            }
            Command::Leave {
                group,
                member_ids,
                reply,
            } => {
                let outcome = self.group(&group).leave(now, &member_ids);
                self.respond(&group, outcome, reply, |_, reply| {
                    let _ = reply.send(Ok(()));
                });
            }
            Command::Commit {
                group,
                committer,
                offsets,
                reply,
            } => {
                let _ = reply.send(self.commit(now, &group, &committer, &offsets));
            }
            Command::Offsets { group, reply } => {
                let offsets = self
                    .offsets
                    .as_ref()
                    .map(|store| store.group_offsets(&group))
                    .unwrap_or_default();
                let _ = reply.send(Ok(offsets));
            }
            Command::Describe { group, reply } => {
                let known = self
                    .offsets
                    .as_ref()
                    .is_some_and(|store| !store.group_offsets(&group).is_empty());
                let description = match self.groups.get(&group) {
                    Some(membership) => Some(describe(membership)),
                    None if known => Some(GroupDescription {
                        state: GroupState::Empty,
                        generation: 0,
                        protocol: None,
                        leader: None,
                        members: Vec::new(),
                    }),
                    None => None,
                };
                let _ = reply.send(Ok(description));
            }
            Command::List { reply } => {
                let mut names: Vec<String> = self
                    .offsets
                    .as_ref()
                    .map(OffsetStore::groups)
                    .unwrap_or_default();
                names.extend(
                    self.groups
                        .iter()
                        .filter(|(_, group)| !group.member_ids().is_empty())
                        .map(|(name, _)| name.clone()),
                );
                names.sort_unstable();
                names.dedup();
                let _ = reply.send(Ok(names));
            }
            Command::Delete { group, reply } => {
                let busy = self
                    .groups
                    .get(&group)
                    .is_some_and(|membership| !membership.member_ids().is_empty());
                let outcome = if busy {
                    Err(CoreError::Group {
                        group: group.clone(),
                        error: GroupError::NotEmpty,
                    })
                } else {
                    self.groups.remove(&group);
                    match self.offsets.as_mut() {
                        Some(store) => store.delete_group(now, &group),
                        None => Err(stopped()),
                    }
                };
                let _ = reply.send(outcome);
            }
            Command::SetLimits { limits, reply } => {
                self.limits = limits;
                let _ = reply.send(Ok(()));
            }
            Command::Close { .. } => unreachable!("the run loop handles Close"),
        }
    }

    fn commit(
        &mut self,
        now: i64,
        group: &str,
        committer: &Committer,
        offsets: &[OffsetCommit],
    ) -> Result<Durable, CoreError> {
        let refuse = |error: GroupError| CoreError::Group {
            group: group.to_owned(),
            error,
        };
        let membership = self.groups.get(group);
        match (committer, membership) {
            (
                Committer::Member {
                    member_id,
                    generation,
                },
                Some(membership),
            ) => {
                membership
                    .check_generation(member_id, *generation)
                    .map_err(refuse)?;
                if membership.state() == GroupState::CompletingRebalance {
                    return Err(refuse(GroupError::RebalanceInProgress));
                }
            }
            (Committer::Member { .. }, None) => return Err(refuse(GroupError::UnknownMember)),
            (Committer::Standalone, Some(membership)) if !membership.member_ids().is_empty() => {
                return Err(refuse(GroupError::UnknownMember));
            }
            (Committer::Standalone | Committer::Transaction, _) => {}
        }
        match self.offsets.as_mut() {
            Some(store) => store.commit(now, group, offsets),
            None => Err(stopped()),
        }
    }
}

fn describe(membership: &Membership) -> GroupDescription {
    GroupDescription {
        state: membership.state(),
        generation: membership.generation(),
        protocol: membership.protocol().map(str::to_owned),
        leader: membership.leader().map(str::to_owned),
        members: membership.members(),
    }
}
