//! The broker: its virtual hosts, and flow control — a node over its memory or disk limit
//! makes publishers wait (what front-ends show as AMQP `connection.blocked`, a paused TCP
//! read, or a Kafka throttle time) instead of growing without bound.
//!
//! Each virtual host keeps its data in `<dir>/vhosts/<escaped name>/`; the default host `/`
//! always exists.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use postino_storage::LogConfig;
use postino_types::{Clock, HistogramSnapshot};
use tokio::sync::watch;

use crate::access::{Access, DefaultUser};
use crate::connections::Connections;
use crate::error::CoreError;
use crate::vhost::{VirtualHost, escape_name, unescape_name};

/// The virtual host that always exists.
pub const DEFAULT_VHOST: &str = "/";

/// Why publishers are told to wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alarm {
    Clear,
    /// The process uses more memory than `FlowLimits::memory_bytes_max`.
    Memory,
    /// The data directory's file system has less free space than `disk_free_bytes_min`.
    Disk,
}

/// The limits flow control enforces, and how often it checks them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowLimits {
    /// Resident memory above this raises the memory alarm (default: 40% of the machine's
    /// memory, RabbitMQ's `vm_memory_high_watermark`).
    pub memory_bytes_max: u64,
    /// Free space below this raises the disk alarm (default 50 MB, RabbitMQ's
    /// `disk_free_limit`).
    pub disk_free_bytes_min: u64,
    /// How often the limits are checked (default 1 s).
    pub check_every: Duration,
}

impl Default for FlowLimits {
    fn default() -> Self {
        let total = total_memory_bytes().unwrap_or(4 << 30);
        Self {
            memory_bytes_max: total / 10 * 4,
            disk_free_bytes_min: 50_000_000,
            check_every: Duration::from_secs(1),
        }
    }
}

/// The machine's memory, from `/proc/meminfo`.
#[must_use]
pub fn total_memory_bytes() -> Option<u64> {
    let meminfo = fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|line| line.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn resident_bytes() -> Option<u64> {
    let statm = fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

fn free_disk_bytes(dir: &Path) -> Option<u64> {
    let stats = rustix::fs::statvfs(dir).ok()?;
    Some(stats.f_bavail.saturating_mul(stats.f_frsize))
}

/// The alarm the current readings call for.
fn assess(limits: &FlowLimits, dir: Option<&Path>) -> Alarm {
    if resident_bytes().is_some_and(|bytes| bytes > limits.memory_bytes_max) {
        return Alarm::Memory;
    }
    if dir
        .and_then(free_disk_bytes)
        .is_some_and(|free| free < limits.disk_free_bytes_min)
    {
        return Alarm::Disk;
    }
    Alarm::Clear
}

/// A node's resource readings against its flow limits, as the management API shows them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resources {
    /// Resident memory, when `/proc` tells it.
    pub memory_bytes: Option<u64>,
    pub memory_bytes_max: u64,
    /// Free space on the data directory's file system (none without a directory).
    pub disk_free_bytes: Option<u64>,
    pub disk_free_bytes_min: u64,
    pub alarm: Alarm,
}

/// Virtual hosts and the flow-control alarm of one node.
#[derive(Debug)]
pub struct Broker {
    dir: Option<PathBuf>,
    log_config: LogConfig,
    clock: Arc<dyn Clock>,
    vhosts: Mutex<BTreeMap<String, Arc<VirtualHost>>>,
    alarm: watch::Sender<Alarm>,
    limits: watch::Sender<FlowLimits>,
    access: Access,
    connections: Connections,
}

impl Broker {
    /// Opens the broker over `dir` (nothing is durable with `None`): re-opens every virtual
    /// host found there, creates `/`, and starts checking the flow limits. Must run inside a
    /// tokio runtime.
    ///
    /// # Errors
    /// A virtual host that does not open.
    pub fn open(
        dir: Option<PathBuf>,
        log_config: LogConfig,
        clock: Arc<dyn Clock>,
        limits: FlowLimits,
    ) -> Result<Arc<Self>, CoreError> {
        Self::open_with_default_user(dir, log_config, clock, limits, &DefaultUser::default())
    }

    /// [`Broker::open`] with the user a new broker starts with (`guest`/`guest` by default);
    /// users are kept in `<dir>/users.json`.
    ///
    /// # Errors
    /// A virtual host or the users file that does not open.
    pub fn open_with_default_user(
        dir: Option<PathBuf>,
        log_config: LogConfig,
        clock: Arc<dyn Clock>,
        limits: FlowLimits,
        default_user: &DefaultUser,
    ) -> Result<Arc<Self>, CoreError> {
        let access = Access::open(dir.as_ref().map(|dir| dir.join("users.json")), default_user)?;
        let (alarm, _) = watch::channel(Alarm::Clear);
        let (limits, limits_changed) = watch::channel(limits);
        let broker = Arc::new(Self {
            dir,
            log_config,
            clock,
            vhosts: Mutex::new(BTreeMap::new()),
            alarm,
            limits,
            access,
            connections: Connections::default(),
        });
        let mut names = vec![DEFAULT_VHOST.to_owned()];
        if let Some(entries) = broker.vhosts_dir().and_then(|root| fs::read_dir(root).ok()) {
            names.extend(
                entries
                    .filter_map(Result::ok)
                    .filter_map(|entry| entry.file_name().to_str().and_then(unescape_name)),
            );
        }
        for name in names {
            broker.create_vhost(&name)?;
        }
        tokio::spawn(watch_limits(Arc::downgrade(&broker), limits_changed));
        Ok(broker)
    }

    fn vhosts_dir(&self) -> Option<PathBuf> {
        self.dir.as_ref().map(|dir| dir.join("vhosts"))
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, Arc<VirtualHost>>> {
        self.vhosts.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Users and permissions.
    #[must_use]
    pub fn access(&self) -> &Access {
        &self.access
    }

    /// Checks a password login from `peer` like [`Access::authenticate_from`], for async
    /// front-ends: argon2 takes tens of milliseconds, so it runs on a blocking thread, unless
    /// this password was verified before (a reconnecting client).
    ///
    /// # Errors
    /// As [`Access::authenticate_from`]; `AccessRefused` when the check could not run.
    pub async fn login(
        self: &Arc<Self>,
        user: &str,
        password: &str,
        peer: Option<std::net::IpAddr>,
        now_ms: i64,
    ) -> Result<(), CoreError> {
        if !self.access.needs_hashing(user, password) {
            return self.access.authenticate_from(user, password, peer, now_ms);
        }
        let broker = Arc::clone(self);
        let (user, password) = (user.to_owned(), password.to_owned());
        tokio::task::spawn_blocking(move || {
            broker
                .access
                .authenticate_from(&user, &password, peer, now_ms)
        })
        .await
        .map_err(|error| CoreError::AccessRefused {
            reason: format!("the login could not be checked: {error}"),
        })?
    }

    /// The client connections of every front-end.
    #[must_use]
    pub fn connections(&self) -> &Connections {
        &self.connections
    }

    /// How long the logs' group-commit syncs have taken, over the whole process.
    #[must_use]
    pub fn fsync_latency(&self) -> HistogramSnapshot {
        postino_storage::SYNC_LATENCY.snapshot()
    }

    /// A virtual host, if it exists.
    #[must_use]
    pub fn vhost(&self, name: &str) -> Option<Arc<VirtualHost>> {
        self.lock().get(name).cloned()
    }

    /// The names of the virtual hosts.
    #[must_use]
    pub fn vhost_names(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }

    /// Creates a virtual host (or returns the existing one).
    ///
    /// # Errors
    /// A host whose saved definitions do not load.
    pub fn create_vhost(&self, name: &str) -> Result<Arc<VirtualHost>, CoreError> {
        let mut vhosts = self.lock();
        if let Some(existing) = vhosts.get(name) {
            return Ok(Arc::clone(existing));
        }
        let dir = self.vhosts_dir().map(|root| root.join(escape_name(name)));
        let host = VirtualHost::open_with_flow(
            name,
            dir,
            self.log_config.clone(),
            Arc::clone(&self.clock),
            self.alarm.subscribe(),
        )?;
        vhosts.insert(name.to_owned(), Arc::clone(&host));
        Ok(host)
    }

    /// Deletes a virtual host with everything in it.
    ///
    /// # Errors
    /// `NotFound`; `AccessRefused` for the default host; a queue that does not close.
    pub async fn delete_vhost(&self, name: &str) -> Result<(), CoreError> {
        if name == DEFAULT_VHOST {
            return Err(CoreError::AccessRefused {
                reason: "the default virtual host cannot be deleted".to_owned(),
            });
        }
        let host = self
            .lock()
            .remove(name)
            .ok_or_else(|| CoreError::NotFound {
                kind: "vhost",
                name: name.to_owned(),
            })?;
        host.close().await?;
        self.access.forget_vhost(name)?;
        if let Some(root) = self.vhosts_dir() {
            let path = root.join(escape_name(name));
            if path.exists() {
                fs::remove_dir_all(&path).map_err(|error| CoreError::Definitions {
                    path: path.display().to_string(),
                    reason: error.to_string(),
                })?;
            }
        }
        Ok(())
    }

    /// The current alarm, to watch (front-ends block and unblock their publishers with it).
    #[must_use]
    pub fn alarm(&self) -> watch::Receiver<Alarm> {
        self.alarm.subscribe()
    }

    /// Memory and disk now, the limits, and the alarm in force.
    #[must_use]
    pub fn resources(&self) -> Resources {
        let limits = *self.limits.borrow();
        Resources {
            memory_bytes: resident_bytes(),
            memory_bytes_max: limits.memory_bytes_max,
            disk_free_bytes: self.dir.as_deref().and_then(free_disk_bytes),
            disk_free_bytes_min: limits.disk_free_bytes_min,
            alarm: *self.alarm.borrow(),
        }
    }

    /// Replaces the flow limits; they apply at the next check.
    pub fn set_limits(&self, limits: FlowLimits) {
        self.limits.send_replace(limits);
    }

    /// Closes every virtual host (their queues sync and close their logs).
    ///
    /// # Errors
    /// The first error met.
    pub async fn close(&self) -> Result<(), CoreError> {
        let hosts: Vec<Arc<VirtualHost>> = self.lock().values().cloned().collect();
        let mut outcome = Ok(());
        for host in hosts {
            if let Err(error) = host.close().await
                && outcome.is_ok()
            {
                outcome = Err(error);
            }
        }
        outcome
    }
}

/// Checks the limits every `check_every` (or when they change) until the broker is dropped.
async fn watch_limits(broker: std::sync::Weak<Broker>, mut limits: watch::Receiver<FlowLimits>) {
    loop {
        let current = *limits.borrow_and_update();
        let Some(node) = broker.upgrade() else { return };
        let alarm = assess(&current, node.dir.as_deref());
        let changed = node.alarm.send_if_modified(|state| {
            let changed = *state != alarm;
            *state = alarm;
            changed
        });
        if changed {
            tracing::warn!(?alarm, "flow control alarm changed");
        }
        drop(node);
        tokio::select! {
            () = tokio::time::sleep(current.check_every) => {}
            changed = limits.changed() => if changed.is_err() { return },
        }
    }
}
