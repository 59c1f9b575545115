//! One consumer group's membership as a plain state machine (Kafka's classic group protocol):
//! join, sync, heartbeat, leave and time, each returning the answers it completes. Members
//! join with the assignment protocols they support and opaque metadata; a join round ends when
//! every member has rejoined or the rebalance timeout passes, and starts a new generation whose
//! leader receives every member's metadata; the leader's sync hands out the assignments.
//! Members that stop heartbeating for their session timeout are removed, which starts a round.
//! A static member (with an instance id) that comes back under a new member id takes its old
//! place without a round.

use std::collections::BTreeMap;

use bytes::Bytes;

use crate::error::{CoreError, GroupError};

/// Limits of a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupLimits {
    /// Shortest session timeout a member may ask for (Kafka `group.min.session.timeout.ms`).
    pub session_timeout_min_ms: u64,
    /// Longest (Kafka `group.max.session.timeout.ms`).
    pub session_timeout_max_ms: u64,
    /// Members a group may have (Kafka `group.max.size`).
    pub members_max: usize,
    /// How long the first round of an empty group waits for more members (Kafka
    /// `group.initial.rebalance.delay.ms`), so that consumers starting together share one round.
    pub initial_rebalance_delay_ms: u64,
}

impl Default for GroupLimits {
    fn default() -> Self {
        Self {
            session_timeout_min_ms: 6_000,
            session_timeout_max_ms: 1_800_000,
            members_max: 1_000,
            initial_rebalance_delay_ms: 3_000,
        }
    }
}

/// A join request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Join {
    /// The member's id, or `None` for a new member (the group gives one).
    pub member_id: Option<String>,
    /// A static member's id that survives restarts (Kafka `group.instance.id`).
    pub instance_id: Option<String>,
    pub client_id: String,
    pub session_timeout_ms: u64,
    pub rebalance_timeout_ms: u64,
    /// E.g. `consumer`; every member of a group must use the same.
    pub protocol_type: String,
    /// Assignment protocols the member supports, preferred first, each with its metadata.
    pub protocols: Vec<(String, Bytes)>,
}

/// A member as the leader sees it in a join answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinedMember {
    pub member_id: String,
    pub instance_id: Option<String>,
    /// The member's metadata for the chosen protocol.
    pub metadata: Bytes,
}

/// The answer to a join.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Joined {
    pub generation: i32,
    /// The chosen assignment protocol.
    pub protocol: String,
    pub leader: String,
    pub member_id: String,
    /// Every member with its metadata: for the leader only, empty for the others.
    pub members: Vec<JoinedMember>,
}

/// An answer the group completed, for the member that waits for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// The join of the member with this id (the id given to a new member) is answered.
    Join {
        waiter: u64,
        outcome: Result<Joined, GroupError>,
    },
    /// The sync of the member is answered with its assignment.
    Sync {
        waiter: u64,
        outcome: Result<Bytes, GroupError>,
    },
}

/// A member as `describe` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberDescription {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    /// What the leader assigned it in the current generation.
    pub assignment: Bytes,
}

/// Where the group is in its cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupState {
    /// No members.
    Empty,
    /// A join round is open until every member rejoined or the deadline.
    PreparingRebalance,
    /// A generation started; waiting for the leader's assignments.
    CompletingRebalance,
    /// Members hold their assignments.
    Stable,
}

#[derive(Debug, Clone)]
struct Member {
    instance_id: Option<String>,
    client_id: String,
    session_timeout_ms: u64,
    rebalance_timeout_ms: u64,
    protocols: Vec<(String, Bytes)>,
    session_deadline_ms: i64,
    /// The waiter of its pending join, if it joined this round.
    join_waiter: Option<u64>,
    sync_waiter: Option<u64>,
    assignment: Bytes,
}

impl Member {
    /// A member that just joined, waiting for its answer as `waiter`.
    fn joining(now_ms: i64, join: Join, waiter: u64, assignment: Bytes) -> Self {
        Self {
            instance_id: join.instance_id,
            client_id: join.client_id,
            session_timeout_ms: join.session_timeout_ms,
            rebalance_timeout_ms: join.rebalance_timeout_ms,
            protocols: join.protocols,
            session_deadline_ms: now_ms.saturating_add(join.session_timeout_ms as i64),
            join_waiter: Some(waiter),
            sync_waiter: None,
            assignment,
        }
    }
}

/// One group's membership.
#[derive(Debug)]
pub struct Membership {
    name: String,
    limits: GroupLimits,
    state: GroupState,
    generation: i32,
    protocol_type: Option<String>,
    protocol: Option<String>,
    leader: Option<String>,
    members: BTreeMap<String, Member>,
    /// When the open join round ends.
    round_deadline_ms: Option<i64>,
    next_member: u64,
}

impl Membership {
    /// An empty group.
    #[must_use]
    pub fn new(name: &str, limits: GroupLimits) -> Self {
        Self {
            name: name.to_owned(),
            limits,
            state: GroupState::Empty,
            generation: 0,
            protocol_type: None,
            protocol: None,
            leader: None,
            members: BTreeMap::new(),
            round_deadline_ms: None,
            next_member: 0,
        }
    }

    /// The group's state.
    #[must_use]
    pub fn state(&self) -> GroupState {
        self.state
    }

    /// The current generation (0 before the first round completes).
    #[must_use]
    pub fn generation(&self) -> i32 {
        self.generation
    }

    /// Member ids, sorted.
    #[must_use]
    pub fn member_ids(&self) -> Vec<String> {
        self.members.keys().cloned().collect()
    }

    /// Every member, sorted by id.
    #[must_use]
    pub fn members(&self) -> Vec<MemberDescription> {
        self.members
            .iter()
            .map(|(id, member)| MemberDescription {
                member_id: id.clone(),
                instance_id: member.instance_id.clone(),
                client_id: member.client_id.clone(),
                assignment: member.assignment.clone(),
            })
            .collect()
    }

    /// The chosen assignment protocol of the current generation.
    #[must_use]
    pub fn protocol(&self) -> Option<&str> {
        self.protocol.as_deref()
    }

    /// The leader of the current generation.
    #[must_use]
    pub fn leader(&self) -> Option<&str> {
        self.leader.as_deref()
    }

    /// The earliest time `tick` has something to do.
    #[must_use]
    pub fn next_deadline_ms(&self) -> Option<i64> {
        let sessions = self
            .members
            .values()
            .map(|member| member.session_deadline_ms);
        sessions.chain(self.round_deadline_ms).min()
    }

    fn refuse(&self, error: GroupError) -> CoreError {
        CoreError::Group {
            group: self.name.clone(),
            error,
        }
    }

    /// Checks that `member_id` is a member of `generation`.
    ///
    /// # Errors
    /// `UnknownMember`, `IllegalGeneration`.
    pub fn check_generation(&self, member_id: &str, generation: i32) -> Result<(), GroupError> {
        if !self.members.contains_key(member_id) {
            return Err(GroupError::UnknownMember);
        }
        if generation != self.generation {
            return Err(GroupError::IllegalGeneration);
        }
        Ok(())
    }

    /// A member joins (or rejoins); `waiter` identifies its pending answer. Returns the member
    /// id it has and the answers now complete (its own possibly among them).
    ///
    /// # Errors
    /// `InvalidSessionTimeout`, `InconsistentProtocol`, `UnknownMember` for a member id the
    /// group does not know, `GroupFull`.
    pub fn join(
        &mut self,
        now_ms: i64,
        join: Join,
        waiter: u64,
    ) -> Result<(String, Vec<Answer>), CoreError> {
        let timeout = join.session_timeout_ms;
        if timeout < self.limits.session_timeout_min_ms
            || timeout > self.limits.session_timeout_max_ms
        {
            return Err(self.refuse(GroupError::InvalidSessionTimeout));
        }
        let consistent = join.protocols.iter().any(|(name, _)| {
            self.members.is_empty() || self.members.values().all(|member| supports(member, name))
        });
        if join.protocols.is_empty()
            || self
                .protocol_type
                .as_ref()
                .is_some_and(|kind| *kind != join.protocol_type && !self.members.is_empty())
            || !consistent
        {
            return Err(self.refuse(GroupError::InconsistentProtocol));
        }
        let static_id = join.instance_id.as_ref().and_then(|instance| {
            self.members
                .iter()
                .find(|(_, member)| member.instance_id.as_ref() == Some(instance))
                .map(|(id, _)| id.clone())
        });
        let member_id = match (&join.member_id, static_id) {
            (Some(id), _) if self.members.contains_key(id) => id.clone(),
            (Some(_), None) | (None, None) => {
                if join.member_id.is_some() && join.instance_id.is_none() {
                    return Err(self.refuse(GroupError::UnknownMember));
                }
                if self.members.len() >= self.limits.members_max {
                    return Err(self.refuse(GroupError::GroupFull));
                }
                self.next_member += 1;
                let prefix = join.instance_id.as_deref().unwrap_or(&join.client_id);
                format!("{prefix}-{}-{}", self.generation, self.next_member)
            }
            (_, Some(previous)) => return Ok(self.replace_static(now_ms, previous, join, waiter)),
        };
        self.protocol_type = Some(join.protocol_type.clone());
        let known = self.members.get(&member_id);
        let unchanged = known.is_some_and(|member| member.protocols == join.protocols);
        let member = Member {
            instance_id: join.instance_id,
            client_id: join.client_id,
            session_timeout_ms: join.session_timeout_ms,
            rebalance_timeout_ms: join.rebalance_timeout_ms,
            protocols: join.protocols,
            session_deadline_ms: now_ms.saturating_add(timeout as i64),
            join_waiter: Some(waiter),
            sync_waiter: None,
            assignment: known
                .map(|member| member.assignment.clone())
                .unwrap_or_default(),
        };
        self.members.insert(member_id.clone(), member);
        let mut answers = Vec::new();
        let is_leader = self.leader.as_deref() == Some(member_id.as_str());
        if unchanged && !is_leader && self.state != GroupState::PreparingRebalance {
            // A follower that rejoins with the same metadata gets the current generation.
            let member = self.members.get_mut(&member_id).expect("just inserted");
            member.join_waiter = None;
            answers.push(Answer::Join {
                waiter,
                outcome: Ok(self.joined(&member_id)),
            });
            return Ok((member_id, answers));
        }
        self.prepare(now_ms, &mut answers);
        self.try_complete_round(now_ms, false, &mut answers);
        Ok((member_id, answers))
    }

    /// A static member back under a new member id: it takes the old id's place and assignment;
    /// the old id is fenced. With the same protocols in a stable group no round starts.
    fn replace_static(
        &mut self,
        now_ms: i64,
        previous: String,
        join: Join,
        waiter: u64,
    ) -> (String, Vec<Answer>) {
        let mut old = self.members.remove(&previous).expect("found above");
        let mut answers = Vec::new();
        if let Some(waiter) = old.join_waiter.take() {
            answers.push(Answer::Join {
                waiter,
                outcome: Err(GroupError::FencedInstance),
            });
        }
        if let Some(waiter) = old.sync_waiter.take() {
            answers.push(Answer::Sync {
                waiter,
                outcome: Err(GroupError::FencedInstance),
            });
        }
        self.next_member += 1;
        let instance = join.instance_id.clone().unwrap_or_default();
        let member_id = format!("{instance}-{}-{}", self.generation, self.next_member);
        if self.leader.as_deref() == Some(previous.as_str()) {
            self.leader = Some(member_id.clone());
        }
        let unchanged = old.protocols == join.protocols;
        let member = Member::joining(now_ms, join, waiter, old.assignment);
        self.members.insert(member_id.clone(), member);
        if unchanged && self.state == GroupState::Stable {
            let member = self.members.get_mut(&member_id).expect("just inserted");
            member.join_waiter = None;
            answers.push(Answer::Join {
                waiter,
                outcome: Ok(self.joined(&member_id)),
            });
        } else {
            self.prepare(now_ms, &mut answers);
            self.try_complete_round(now_ms, false, &mut answers);
        }
        (member_id, answers)
    }

    /// Opens a join round unless one is open: members answer `RebalanceInProgress` to syncs
    /// and heartbeats until they rejoin.
    fn prepare(&mut self, now_ms: i64, answers: &mut Vec<Answer>) {
        if self.state == GroupState::PreparingRebalance {
            return;
        }
        let wait_ms = if self.state == GroupState::Empty {
            self.limits.initial_rebalance_delay_ms
        } else {
            self.members
                .values()
                .map(|member| member.rebalance_timeout_ms)
                .max()
                .unwrap_or(0)
        };
        for member in self.members.values_mut() {
            if let Some(waiter) = member.sync_waiter.take() {
                answers.push(Answer::Sync {
                    waiter,
                    outcome: Err(GroupError::RebalanceInProgress),
                });
            }
        }
        self.state = GroupState::PreparingRebalance;
        self.round_deadline_ms = Some(now_ms.saturating_add(wait_ms as i64));
    }

    /// Ends the open round when every member rejoined (and an empty group's initial delay is
    /// over) or its deadline passed (`expired`): members that did not rejoin leave, a new
    /// generation starts, and every joined member is answered.
    fn try_complete_round(&mut self, now_ms: i64, expired: bool, answers: &mut Vec<Answer>) {
        if self.state != GroupState::PreparingRebalance {
            return;
        }
        let all_rejoined = self
            .members
            .values()
            .all(|member| member.join_waiter.is_some());
        let first_round = self.generation == 0 || self.leader.is_none();
        let delay_over = self
            .round_deadline_ms
            .is_none_or(|deadline| now_ms >= deadline);
        if !(expired || (all_rejoined && (!first_round || delay_over))) {
            return;
        }
        self.members
            .retain(|_, member| member.join_waiter.is_some());
        self.round_deadline_ms = None;
        if self.members.is_empty() {
            self.state = GroupState::Empty;
            self.leader = None;
            self.protocol = None;
            self.generation += 1;
            return;
        }
        self.generation += 1;
        self.protocol = Some(self.vote());
        if self
            .leader
            .as_ref()
            .is_none_or(|leader| !self.members.contains_key(leader))
        {
            self.leader = self.members.keys().next().cloned();
        }
        self.state = GroupState::CompletingRebalance;
        let ids: Vec<String> = self.members.keys().cloned().collect();
        for id in ids {
            let joined = self.joined(&id);
            let member = self.members.get_mut(&id).expect("listed above");
            member.assignment = Bytes::new();
            member.session_deadline_ms = now_ms.saturating_add(member.session_timeout_ms as i64);
            let waiter = member
                .join_waiter
                .take()
                .expect("every kept member rejoined");
            answers.push(Answer::Join {
                waiter,
                outcome: Ok(joined),
            });
        }
    }

    /// The protocol every member supports that most members prefer (Kafka's vote: each
    /// member votes for its first protocol all members support).
    fn vote(&self) -> String {
        let mut votes: BTreeMap<&str, usize> = BTreeMap::new();
        for member in self.members.values() {
            let choice = member
                .protocols
                .iter()
                .map(|(name, _)| name.as_str())
                .find(|name| self.members.values().all(|other| supports(other, name)));
            if let Some(choice) = choice {
                *votes.entry(choice).or_default() += 1;
            }
        }
        votes
            .into_iter()
            .max_by_key(|(name, count)| (*count, std::cmp::Reverse(*name)))
            .map(|(name, _)| name.to_owned())
            .expect("joins are refused unless a protocol is shared")
    }

    fn joined(&self, member_id: &str) -> Joined {
        let protocol = self.protocol.clone().unwrap_or_default();
        let leader = self.leader.clone().unwrap_or_default();
        let members = if leader == member_id {
            self.members
                .iter()
                .map(|(id, member)| JoinedMember {
                    member_id: id.clone(),
                    instance_id: member.instance_id.clone(),
                    metadata: member
                        .protocols
                        .iter()
                        .find(|(name, _)| *name == protocol)
                        .map(|(_, metadata)| metadata.clone())
                        .unwrap_or_default(),
                })
                .collect()
        } else {
            Vec::new()
        };
        Joined {
            generation: self.generation,
            protocol,
            leader,
            member_id: member_id.to_owned(),
            members,
        }
    }

    /// A member asks for its assignment; the leader brings everyone's. Returns the answers now
    /// complete.
    ///
    /// # Errors
    /// `UnknownMember`, `IllegalGeneration`, `RebalanceInProgress`.
    pub fn sync(
        &mut self,
        now_ms: i64,
        member_id: &str,
        generation: i32,
        assignments: Vec<(String, Bytes)>,
        waiter: u64,
    ) -> Result<Vec<Answer>, CoreError> {
        self.check_generation(member_id, generation)
            .map_err(|error| self.refuse(error))?;
        self.touch(now_ms, member_id);
        match self.state {
            GroupState::PreparingRebalance | GroupState::Empty => {
                Err(self.refuse(GroupError::RebalanceInProgress))
            }
            GroupState::Stable => Ok(vec![Answer::Sync {
                waiter,
                outcome: Ok(self.members[member_id].assignment.clone()),
            }]),
            GroupState::CompletingRebalance => {
                self.members
                    .get_mut(member_id)
                    .expect("checked above")
                    .sync_waiter = Some(waiter);
                if self.leader.as_deref() != Some(member_id) {
                    return Ok(Vec::new());
                }
                for (id, assignment) in assignments {
                    if let Some(member) = self.members.get_mut(&id) {
                        member.assignment = assignment;
                    }
                }
                self.state = GroupState::Stable;
                Ok(self
                    .members
                    .values_mut()
                    .filter_map(|member| {
                        let waiter = member.sync_waiter.take()?;
                        Some(Answer::Sync {
                            waiter,
                            outcome: Ok(member.assignment.clone()),
                        })
                    })
                    .collect())
            }
        }
    }

    fn touch(&mut self, now_ms: i64, member_id: &str) {
        if let Some(member) = self.members.get_mut(member_id) {
            member.session_deadline_ms = now_ms.saturating_add(member.session_timeout_ms as i64);
        }
    }

    /// A member's heartbeat keeps its session.
    ///
    /// # Errors
    /// `UnknownMember`, `IllegalGeneration`; `RebalanceInProgress` while a round is open (the
    /// member must rejoin).
    pub fn heartbeat(
        &mut self,
        now_ms: i64,
        member_id: &str,
        generation: i32,
    ) -> Result<(), CoreError> {
        self.check_generation(member_id, generation)
            .map_err(|error| self.refuse(error))?;
        self.touch(now_ms, member_id);
        if self.state == GroupState::PreparingRebalance {
            return Err(self.refuse(GroupError::RebalanceInProgress));
        }
        Ok(())
    }

    /// Members leave; the others rebalance. Returns the answers now complete.
    ///
    /// # Errors
    /// `UnknownMember` when none of the ids is a member.
    pub fn leave(&mut self, now_ms: i64, member_ids: &[String]) -> Result<Vec<Answer>, CoreError> {
        let mut answers = Vec::new();
        let mut left = 0;
        for id in member_ids {
            if let Some(member) = self.members.remove(id) {
                left += 1;
                answers.extend(dismiss(member));
            }
        }
        if left == 0 {
            return Err(self.refuse(GroupError::UnknownMember));
        }
        self.after_departure(now_ms, &mut answers);
        Ok(answers)
    }

    fn after_departure(&mut self, now_ms: i64, answers: &mut Vec<Answer>) {
        if self.members.is_empty() && self.state != GroupState::PreparingRebalance {
            self.state = GroupState::Empty;
            self.leader = None;
            self.protocol = None;
            self.round_deadline_ms = None;
            self.generation += 1;
            return;
        }
        self.prepare(now_ms, answers);
        self.try_complete_round(now_ms, false, answers);
    }

    /// Time passes: expired sessions leave, an open round past its deadline completes.
    pub fn tick(&mut self, now_ms: i64) -> Vec<Answer> {
        let mut answers = Vec::new();
        let expired: Vec<String> = self
            .members
            .iter()
            .filter(|(_, member)| {
                member.session_deadline_ms <= now_ms && member.join_waiter.is_none()
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in &expired {
            if let Some(member) = self.members.remove(id) {
                answers.extend(dismiss(member));
            }
        }
        if !expired.is_empty() {
            self.after_departure(now_ms, &mut answers);
        }
        if self
            .round_deadline_ms
            .is_some_and(|deadline| now_ms >= deadline)
        {
            self.try_complete_round(now_ms, true, &mut answers);
        }
        answers
    }
}

fn supports(member: &Member, protocol: &str) -> bool {
    member.protocols.iter().any(|(name, _)| name == protocol)
}

/// The answers owed to a member that is gone.
fn dismiss(member: Member) -> Vec<Answer> {
    let join = member.join_waiter.map(|waiter| Answer::Join {
        waiter,
        outcome: Err(GroupError::UnknownMember),
    });
    let sync = member.sync_waiter.map(|waiter| Answer::Sync {
        waiter,
        outcome: Err(GroupError::UnknownMember),
    });
    join.into_iter().chain(sync).collect()
}
