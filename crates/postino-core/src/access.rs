//! Users, their passwords and tags, and their permissions per virtual host — RabbitMQ's model:
//! three regular expressions per (user, virtual host), `configure`, `write` and `read`, matched
//! against the names of exchanges and queues an operation touches.
//!
//! Passwords are kept only as argon2id hashes (PHC strings). Verifying one costs tens of
//! milliseconds by design, so a successful login is remembered, process-wide, as a keyed
//! BLAKE2 digest of (stored hash, password) with a key random per process: the next login with
//! the same password against the same hash costs microseconds, a wrong password still pays for
//! argon2, and a changed password (a new hash, with a new salt) matches nothing remembered.
//!
//! State lives in `<data>/users.json`, rewritten atomically on every change. When the file does
//! not exist yet (a new broker), the default user is created as administrator with every
//! permission on `/`, as RabbitMQ creates `guest`. The default user may be limited to loopback
//! connections (RabbitMQ's `loopback_users`).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError, RwLock};

use argon2::Argon2;
use argon2::password_hash::rand_core::{OsRng, RngCore};
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use blake2::Blake2bMac512;
use blake2::digest::{FixedOutput, KeyInit, Update};
use regex::Regex;
use serde_json::{Value, json};

use crate::broker::DEFAULT_VHOST;
use crate::definitions::write_atomically;
use crate::error::CoreError;
use crate::logins::{LoginGuard, LoginLimits};

/// The user a new broker starts with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DefaultUser {
    pub name: String,
    pub password: String,
    /// It may log in only over a loopback address.
    pub loopback_only: bool,
}

impl Default for DefaultUser {
    fn default() -> Self {
        Self {
            name: "guest".to_owned(),
            password: "guest".to_owned(),
            loopback_only: true,
        }
    }
}

/// What an operation does to a resource (RabbitMQ's three permissions).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Action {
    /// Create or delete it, or change what it is.
    Configure,
    /// Put messages into it (publish to an exchange, bind a queue to receive).
    Write,
    /// Take messages out of it (consume, get, purge, bind from an exchange).
    Read,
}

impl Action {
    fn as_str(self) -> &'static str {
        match self {
            Action::Configure => "configure",
            Action::Write => "write",
            Action::Read => "read",
        }
    }
}

/// A user as listed: name, tags and password hash (never the password).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserInfo {
    pub name: String,
    pub password_hash: String,
    pub tags: Vec<String>,
}

/// One user's permissions on one virtual host, as the regular expressions' sources.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PermissionInfo {
    pub user: String,
    pub vhost: String,
    pub configure: String,
    pub write: String,
    pub read: String,
}

#[derive(Debug)]
struct User {
    password_hash: String,
    tags: Vec<String>,
}

#[derive(Debug)]
struct Permission {
    configure: Regex,
    write: Regex,
    read: Regex,
}

impl Permission {
    fn new(configure: &str, write: &str, read: &str) -> Result<Self, CoreError> {
        let compile = |name: &str, source: &str| {
            Regex::new(source).map_err(|error| CoreError::InvalidArgument {
                name: name.to_owned(),
                reason: format!("{source:?} is not a regular expression: {error}"),
            })
        };
        Ok(Self {
            configure: compile("configure", configure)?,
            write: compile("write", write)?,
            read: compile("read", read)?,
        })
    }

    fn pattern(&self, action: Action) -> &Regex {
        match action {
            Action::Configure => &self.configure,
            Action::Write => &self.write,
            Action::Read => &self.read,
        }
    }
}

#[derive(Debug, Default)]
struct State {
    users: BTreeMap<String, User>,
    /// Keyed by (vhost, user).
    permissions: BTreeMap<(String, String), Permission>,
}

/// The broker's users and permissions.
#[derive(Debug)]
pub struct Access {
    path: Option<PathBuf>,
    state: RwLock<State>,
    loopback_only: BTreeSet<String>,
    /// Raised by every change, so that front-ends can drop what they cached of earlier checks.
    generation: AtomicU64,
    /// Failed logins per source address.
    logins: LoginGuard,
}

/// Digests remembered process-wide; past this many the set starts again (each entry is a
/// verified login, so a flood of distinct logins costs argon2 each, nothing more).
const VERIFIED_MAX: usize = 65_536;

/// What argon2 work a process remembers: logins verified, and the hash made for each default
/// password (every broker of a process — tests, fuzzing — creating `guest` reuses one hash).
struct Memo {
    key: [u8; 64],
    verified: HashSet<[u8; 64]>,
    default_hashes: HashMap<[u8; 64], String>,
}

impl Memo {
    fn digest(&self, parts: &[&str]) -> [u8; 64] {
        let mut mac = <Blake2bMac512 as KeyInit>::new_from_slice(&self.key)
            .expect("64 bytes is a valid BLAKE2b key length");
        for part in parts {
            mac.update(part.as_bytes());
            mac.update(&[0]);
        }
        mac.finalize_fixed().into()
    }
}

fn memo() -> MutexGuard<'static, Memo> {
    static MEMO: OnceLock<Mutex<Memo>> = OnceLock::new();
    MEMO.get_or_init(|| {
        let mut key = [0; 64];
        OsRng.fill_bytes(&mut key);
        Mutex::new(Memo {
            key,
            verified: HashSet::new(),
            default_hashes: HashMap::new(),
        })
    })
    .lock()
    .unwrap_or_else(PoisonError::into_inner)
}

/// The hash of a default password, made once per process and password.
fn default_hash(password: &str) -> Result<String, CoreError> {
    let digest = memo().digest(&[password]);
    if let Some(hash) = memo().default_hashes.get(&digest) {
        return Ok(hash.clone());
    }
    let hash = hash_password(password)?;
    memo().default_hashes.insert(digest, hash.clone());
    Ok(hash)
}

/// Runs argon2 work one at a time in the process: each run takes 19 MiB and tens of
/// milliseconds, so a burst of logins neither multiplies the memory (the allocator keeps what
/// concurrent runs took) nor starves the other cores; logins waiting for the same password
/// find it verified when their turn comes.
fn one_at_a_time<T>(work: impl FnOnce() -> T) -> T {
    static ARGON2: Mutex<()> = Mutex::new(());
    let _turn = ARGON2.lock().unwrap_or_else(PoisonError::into_inner);
    work()
}

fn hash_password(password: &str) -> Result<String, CoreError> {
    let salt = SaltString::generate(&mut OsRng);
    one_at_a_time(|| Argon2::default().hash_password(password.as_bytes(), &salt))
        .map(|hash| hash.to_string())
        .map_err(|error| CoreError::InvalidArgument {
            name: "password".to_owned(),
            reason: error.to_string(),
        })
}

/// Whether `hash` is an argon2 password hash in PHC form.
pub(crate) fn hash_is_argon2(hash: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|parsed| parsed.algorithm.as_str().starts_with("argon2"))
}

fn check_name(name: &str) -> Result<(), CoreError> {
    if name.is_empty() {
        return Err(CoreError::InvalidArgument {
            name: "name".to_owned(),
            reason: "a user name must not be empty".to_owned(),
        });
    }
    Ok(())
}

fn refused(reason: String) -> CoreError {
    CoreError::AccessRefused { reason }
}

impl Access {
    /// Opens the users kept at `path` (in memory with `None`), creating `default` when there is
    /// no file yet.
    ///
    /// # Errors
    /// `Definitions` for a file that does not read or parse, or that cannot be written.
    pub fn open(path: Option<PathBuf>, default: &DefaultUser) -> Result<Self, CoreError> {
        let mut loopback_only = BTreeSet::new();
        if default.loopback_only {
            loopback_only.insert(default.name.clone());
        }
        let access = Self {
            path,
            state: RwLock::new(State::default()),
            loopback_only,
            generation: AtomicU64::new(0),
            logins: LoginGuard::default(),
        };
        match access.path.as_ref().filter(|path| path.exists()) {
            Some(path) => {
                let fail = |reason: String| CoreError::Definitions {
                    path: path.display().to_string(),
                    reason,
                };
                let text =
                    std::fs::read_to_string(path).map_err(|error| fail(error.to_string()))?;
                let value: Value =
                    serde_json::from_str(&text).map_err(|error| fail(error.to_string()))?;
                *access.write() = state_from_json(&value).map_err(fail)?;
            }
            None => {
                access.put_hashed_user(
                    &default.name,
                    Some(default_hash(&default.password)?),
                    vec!["administrator".to_owned()],
                )?;
                access.set_permissions(&default.name, DEFAULT_VHOST, ".*", ".*", ".*")?;
            }
        }
        Ok(access)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// Saves the state and raises the generation; called with the write lock held so that
    /// saves happen in the order of the changes.
    fn changed(&self, state: &State) -> Result<(), CoreError> {
        self.generation.fetch_add(1, Ordering::Release);
        let Some(path) = &self.path else {
            return Ok(());
        };
        write_atomically(path, state_to_json(state).to_string().as_bytes()).map_err(|error| {
            CoreError::Definitions {
                path: path.display().to_string(),
                reason: error.to_string(),
            }
        })
    }

    /// Changes with every change of users or permissions.
    #[must_use]
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Sets how many failed logins a source address may have in a window.
    pub fn set_login_limits(&self, limits: LoginLimits) {
        self.logins.set_limits(limits);
    }

    /// Checks a login from `peer` (`None`: a connection inside the process, counted as local)
    /// at `now_ms`: refused at once while the address is over its failed-login limit, else as
    /// [`Access::authenticate`] with a loopback peer counted as local, and the outcome counted
    /// for the address. Blocking, as [`Access::authenticate`].
    ///
    /// # Errors
    /// `TooManyLogins`; as [`Access::authenticate`].
    pub fn authenticate_from(
        &self,
        user: &str,
        password: &str,
        peer: Option<IpAddr>,
        now_ms: i64,
    ) -> Result<(), CoreError> {
        let Some(address) = peer else {
            return self.authenticate(user, password, true);
        };
        if let Some(retry_after_ms) = self.logins.blocked_for(address, now_ms) {
            return Err(CoreError::TooManyLogins {
                address: address.to_string(),
                retry_after_ms,
            });
        }
        let outcome = self.authenticate(user, password, address.is_loopback());
        if outcome.is_ok() {
            self.logins.succeeded(address);
        } else {
            self.logins.failed(address, now_ms);
        }
        outcome
    }

    /// Checks a login by a client certificate the TLS handshake verified (AMQP's `EXTERNAL`
    /// mechanism): `user` is the name the certificate gives ([`crate::user_of_certificate`]);
    /// it must be a broker user, and a loopback-only one must come from a loopback address.
    /// No password is involved, so nothing counts against the failed-login limit.
    ///
    /// # Errors
    /// `AccessRefused`.
    pub fn authenticate_certificate(
        &self,
        user: &str,
        peer: Option<IpAddr>,
    ) -> Result<(), CoreError> {
        let loopback = peer.is_none_or(|address| address.is_loopback());
        if !loopback && self.loopback_only.contains(user) {
            return Err(refused(format!(
                "user '{user}' may only connect via localhost"
            )));
        }
        if !self.read().users.contains_key(user) {
            return Err(refused(format!(
                "the client certificate names '{user}', who is not a user"
            )));
        }
        Ok(())
    }

    /// Whether checking this login runs argon2 (blocking work, for a thread off the async
    /// runtime's workers): false only when this user's password was verified before.
    #[must_use]
    pub fn needs_hashing(&self, user: &str, password: &str) -> bool {
        let Some(hash) = self
            .read()
            .users
            .get(user)
            .map(|found| found.password_hash.clone())
        else {
            return true;
        };
        let digest = memo().digest(&[&hash, password]);
        !memo().verified.contains(&digest)
    }

    /// Checks a login. Blocking: argon2 runs here unless this password was verified before.
    ///
    /// # Errors
    /// `AccessRefused` for an unknown user, a wrong password, or a loopback-only user
    /// connecting from elsewhere; the reason does not say which of the first two.
    pub fn authenticate(
        &self,
        user: &str,
        password: &str,
        loopback: bool,
    ) -> Result<(), CoreError> {
        let refusal = || refused(format!("login refused for user '{user}'"));
        if !loopback && self.loopback_only.contains(user) {
            return Err(refused(format!(
                "user '{user}' may only connect via localhost"
            )));
        }
        let Some(hash) = self
            .read()
            .users
            .get(user)
            .map(|found| found.password_hash.clone())
        else {
            // Spend the same time as for a known user, so timing does not tell names apart.
            let _ = hash_password(password);
            return Err(refusal());
        };
        let digest = memo().digest(&[&hash, password]);
        if memo().verified.contains(&digest) {
            return Ok(());
        }
        let parsed = PasswordHash::new(&hash).map_err(|_| refusal())?;
        one_at_a_time(|| {
            if memo().verified.contains(&digest) {
                return Ok(());
            }
            Argon2::default().verify_password(password.as_bytes(), &parsed)
        })
        .map_err(|_| refusal())?;
        let mut memo = memo();
        if memo.verified.len() >= VERIFIED_MAX {
            memo.verified.clear();
        }
        memo.verified.insert(digest);
        Ok(())
    }

    /// Checks that `user` has any permission on `vhost` (what opening a connection on it needs).
    ///
    /// # Errors
    /// `AccessRefused`.
    pub fn check_vhost(&self, user: &str, vhost: &str) -> Result<(), CoreError> {
        if self
            .read()
            .permissions
            .contains_key(&(vhost.to_owned(), user.to_owned()))
        {
            Ok(())
        } else {
            Err(refused(format!(
                "access to vhost '{vhost}' refused for user '{user}'"
            )))
        }
    }

    /// Checks that `user` may `action` the resource `name` (of `kind`, for the message) on
    /// `vhost`. The default exchange is checked as `amq.default`, as in RabbitMQ.
    ///
    /// # Errors
    /// `AccessRefused` naming the permission, the resource and the user.
    pub fn authorize(
        &self,
        user: &str,
        vhost: &str,
        action: Action,
        kind: &str,
        name: &str,
    ) -> Result<(), CoreError> {
        let checked = if kind == "exchange" && name.is_empty() {
            "amq.default"
        } else {
            name
        };
        let state = self.read();
        let allowed = state
            .permissions
            .get(&(vhost.to_owned(), user.to_owned()))
            .is_some_and(|permission| permission.pattern(action).is_match(checked));
        if allowed {
            Ok(())
        } else {
            Err(refused(format!(
                "{} access to {kind} '{checked}' in vhost '{vhost}' refused for user '{user}'",
                action.as_str()
            )))
        }
    }

    /// The tags of `user`, if it exists.
    #[must_use]
    pub fn tags(&self, user: &str) -> Option<Vec<String>> {
        self.read().users.get(user).map(|found| found.tags.clone())
    }

    /// Creates or updates a user; `None` keeps the password of an existing user (and leaves a
    /// new one unable to log in with a password).
    ///
    /// # Errors
    /// `InvalidArgument` for an empty name; `Definitions` when the change cannot be saved.
    pub fn put_user(
        &self,
        name: &str,
        password: Option<&str>,
        tags: Vec<String>,
    ) -> Result<(), CoreError> {
        check_name(name)?;
        let hash = password.map(hash_password).transpose()?;
        self.put_hashed_user(name, hash, tags)
    }

    /// Creates or updates a user from a password hash in PHC form (an export's
    /// `password_hash`).
    ///
    /// # Errors
    /// `InvalidArgument` for an empty name or a hash that is not an argon2 PHC string;
    /// `Definitions` when the change cannot be saved.
    pub fn put_user_hashed(
        &self,
        name: &str,
        password_hash: &str,
        tags: Vec<String>,
    ) -> Result<(), CoreError> {
        check_name(name)?;
        if !hash_is_argon2(password_hash) {
            return Err(CoreError::InvalidArgument {
                name: "password_hash".to_owned(),
                reason: "not an argon2 hash in PHC form ($argon2id$…)".to_owned(),
            });
        }
        self.put_hashed_user(name, Some(password_hash.to_owned()), tags)
    }

    fn put_hashed_user(
        &self,
        name: &str,
        hash: Option<String>,
        tags: Vec<String>,
    ) -> Result<(), CoreError> {
        let mut state = self.write();
        let user = state.users.entry(name.to_owned()).or_insert_with(|| User {
            password_hash: String::new(),
            tags: Vec::new(),
        });
        if let Some(hash) = hash {
            user.password_hash = hash;
        }
        user.tags = tags;
        self.changed(&state)
    }

    /// Deletes a user and its permissions.
    ///
    /// # Errors
    /// `NotFound`; `Definitions` when the change cannot be saved.
    pub fn delete_user(&self, name: &str) -> Result<(), CoreError> {
        let mut state = self.write();
        if state.users.remove(name).is_none() {
            return Err(CoreError::NotFound {
                kind: "user",
                name: name.to_owned(),
            });
        }
        state.permissions.retain(|(_, user), _| user != name);
        self.changed(&state)
    }

    /// Sets `user`'s permissions on `vhost` (the caller checks that the host exists).
    ///
    /// # Errors
    /// `NotFound` for an unknown user; `InvalidArgument` naming a pattern that is not a
    /// regular expression; `Definitions` when the change cannot be saved.
    pub fn set_permissions(
        &self,
        user: &str,
        vhost: &str,
        configure: &str,
        write: &str,
        read: &str,
    ) -> Result<(), CoreError> {
        let permission = Permission::new(configure, write, read)?;
        let mut state = self.write();
        if !state.users.contains_key(user) {
            return Err(CoreError::NotFound {
                kind: "user",
                name: user.to_owned(),
            });
        }
        state
            .permissions
            .insert((vhost.to_owned(), user.to_owned()), permission);
        self.changed(&state)
    }

    /// Removes `user`'s permissions on `vhost`.
    ///
    /// # Errors
    /// `NotFound` when there were none; `Definitions` when the change cannot be saved.
    pub fn clear_permissions(&self, user: &str, vhost: &str) -> Result<(), CoreError> {
        let mut state = self.write();
        if state
            .permissions
            .remove(&(vhost.to_owned(), user.to_owned()))
            .is_none()
        {
            return Err(CoreError::NotFound {
                kind: "permission",
                name: format!("{user} on {vhost}"),
            });
        }
        self.changed(&state)
    }

    /// Removes every permission on a deleted virtual host.
    ///
    /// # Errors
    /// `Definitions` when the change cannot be saved.
    pub fn forget_vhost(&self, vhost: &str) -> Result<(), CoreError> {
        let mut state = self.write();
        state.permissions.retain(|(host, _), _| host != vhost);
        self.changed(&state)
    }

    /// Every user, by name.
    #[must_use]
    pub fn users(&self) -> Vec<UserInfo> {
        self.read()
            .users
            .iter()
            .map(|(name, user)| UserInfo {
                name: name.clone(),
                password_hash: user.password_hash.clone(),
                tags: user.tags.clone(),
            })
            .collect()
    }

    /// Every permission, by virtual host then user.
    #[must_use]
    pub fn permissions(&self) -> Vec<PermissionInfo> {
        self.read()
            .permissions
            .iter()
            .map(|((vhost, user), permission)| PermissionInfo {
                user: user.clone(),
                vhost: vhost.clone(),
                configure: permission.configure.as_str().to_owned(),
                write: permission.write.as_str().to_owned(),
                read: permission.read.as_str().to_owned(),
            })
            .collect()
    }
}

fn state_to_json(state: &State) -> Value {
    let users: Vec<Value> = state
        .users
        .iter()
        .map(|(name, user)| json!({"name": name, "password_hash": user.password_hash, "tags": user.tags}))
        .collect();
    let permissions: Vec<Value> = state
        .permissions
        .iter()
        .map(|((vhost, user), permission)| {
            json!({
                "user": user,
                "vhost": vhost,
                "configure": permission.configure.as_str(),
                "write": permission.write.as_str(),
                "read": permission.read.as_str(),
            })
        })
        .collect();
    json!({"users": users, "permissions": permissions})
}

fn state_from_json(value: &Value) -> Result<State, String> {
    let text = |entry: &Value, key: &str| {
        entry
            .get(key)
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| format!("an entry has no string {key:?}"))
    };
    let list = |key: &str| {
        value
            .get(key)
            .and_then(Value::as_array)
            .ok_or_else(|| format!("no {key:?} list"))
    };
    let mut state = State::default();
    for entry in list("users")? {
        let tags = entry
            .get("tags")
            .and_then(Value::as_array)
            .map(|tags| {
                tags.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        state.users.insert(
            text(entry, "name")?,
            User {
                password_hash: text(entry, "password_hash")?,
                tags,
            },
        );
    }
    for entry in list("permissions")? {
        let permission = Permission::new(
            &text(entry, "configure")?,
            &text(entry, "write")?,
            &text(entry, "read")?,
        )
        .map_err(|error| error.to_string())?;
        state
            .permissions
            .insert((text(entry, "vhost")?, text(entry, "user")?), permission);
    }
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_broker_has_the_default_user_with_every_permission_on_the_default_host() {
        let access = Access::open(None, &DefaultUser::default()).expect("open");
        access
            .authenticate("guest", "guest", true)
            .expect("guest from loopback");
        access.check_vhost("guest", "/").expect("guest on /");
        access
            .authorize("guest", "/", Action::Configure, "queue", "anything")
            .expect("every permission");
        assert_eq!(access.tags("guest"), Some(vec!["administrator".to_owned()]));
        assert!(
            access.authenticate("guest", "guest", false).is_err(),
            "loopback only"
        );
        assert!(access.authenticate("guest", "wrong", true).is_err());
        assert!(access.authenticate("nobody", "guest", true).is_err());
        assert!(access.check_vhost("guest", "/other").is_err());
    }

    #[test]
    fn permissions_are_unanchored_regular_expressions_per_action() {
        let access = Access::open(None, &DefaultUser::default()).expect("open");
        access
            .put_user("app", Some("secret"), vec![])
            .expect("user");
        access
            .set_permissions("app", "/", "^app-", "^(app-|amq\\.default$)", "")
            .expect("permissions");
        access
            .authenticate("app", "secret", false)
            .expect("any address");
        access
            .authorize("app", "/", Action::Configure, "queue", "app-orders")
            .expect("own queue");
        let refused = access
            .authorize("app", "/", Action::Configure, "queue", "orders")
            .expect_err("not matching");
        assert_eq!(
            refused.to_string(),
            "access refused: configure access to queue 'orders' in vhost '/' refused for user 'app'"
        );
        access
            .authorize("app", "/", Action::Write, "exchange", "")
            .expect("the default exchange");
        assert!(
            access
                .authorize("app", "/", Action::Read, "queue", "app-orders")
                .is_ok(),
            "an empty pattern matches"
        );
        access
            .set_permissions("app", "/", "^app-", "^app-", "^$")
            .expect("permissions");
        assert!(
            access
                .authorize("app", "/", Action::Read, "queue", "app-orders")
                .is_err(),
            "^$ matches no name"
        );
        let bad = access
            .set_permissions("app", "/", "(", ".*", ".*")
            .expect_err("bad pattern");
        assert!(
            matches!(bad, CoreError::InvalidArgument { ref name, .. } if name == "configure"),
            "{bad}"
        );
    }

    #[test]
    fn users_and_permissions_survive_a_restart_and_passwords_are_hashed() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("users.json");
        let default = DefaultUser::default();
        {
            let access = Access::open(Some(path.clone()), &default).expect("open");
            access
                .put_user("ops", Some("s3cret"), vec!["monitoring".to_owned()])
                .expect("user");
            access
                .set_permissions("ops", "/", "", "", ".*")
                .expect("permissions");
            access.delete_user("guest").expect("delete guest");
        }
        let saved = std::fs::read_to_string(&path).expect("saved");
        assert!(!saved.contains("s3cret"), "{saved}");
        assert!(saved.contains("$argon2id$"), "{saved}");
        let access = Access::open(Some(path), &default).expect("reopen");
        access
            .authenticate("ops", "s3cret", false)
            .expect("login after restart");
        assert!(
            access.authenticate("guest", "guest", true).is_err(),
            "a deleted default user is not re-created"
        );
        assert_eq!(access.permissions().len(), 1);
        assert_eq!(access.users()[0].tags, vec!["monitoring".to_owned()]);
    }

    #[test]
    fn a_changed_password_takes_effect_at_once() {
        let access = Access::open(None, &DefaultUser::default()).expect("open");
        access.put_user("app", Some("one"), vec![]).expect("user");
        access
            .authenticate("app", "one", true)
            .expect("first login");
        access
            .authenticate("app", "one", true)
            .expect("cached login");
        let before = access.generation();
        access
            .put_user("app", Some("two"), vec![])
            .expect("new password");
        assert!(access.generation() > before);
        assert!(
            access.authenticate("app", "one", true).is_err(),
            "the old password is refused"
        );
        access
            .authenticate("app", "two", true)
            .expect("the new password");
    }

    #[test]
    fn an_address_past_its_failed_logins_is_refused_without_a_check() {
        let access = Access::open(None, &DefaultUser::default()).expect("open");
        access.set_login_limits(LoginLimits {
            failures_max: 2,
            window_ms: 10_000,
        });
        let remote: IpAddr = [192, 0, 2, 7].into();
        let local: IpAddr = [127, 0, 0, 1].into();
        for at in [0, 1] {
            assert!(
                access
                    .authenticate_from("guest", "wrong", Some(local), at)
                    .is_err()
            );
        }
        assert!(matches!(
            access.authenticate_from("guest", "guest", Some(local), 2),
            Err(CoreError::TooManyLogins {
                retry_after_ms: 9_998,
                ..
            })
        ));
        access
            .authenticate_from("guest", "guest", Some(local), 10_000)
            .expect("the window ended");
        access
            .authenticate_from("guest", "guest", None, 3)
            .expect("inside the process nothing is counted");
        assert!(
            matches!(
                access.authenticate_from("guest", "guest", Some(remote), 3),
                Err(CoreError::AccessRefused { .. })
            ),
            "guest is loopback-only: a remote address is refused, and counted"
        );
    }
}
