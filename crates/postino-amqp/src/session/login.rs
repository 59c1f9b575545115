//! Connection methods on channel 0: login (PLAIN or AMQPLAIN against the broker's users),
//! tune, `open` on a virtual host the user has permissions on, close, and the
//! `connection.blocked` watcher; and the permission check every resource operation makes.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use amq_protocol::frame::AMQPFrame;
use amq_protocol::protocol::{AMQPClass, connection};
use amq_protocol::types::{AMQPValue, FieldTable, LongString, ShortString};
use postino_core::{Action, Alarm, CoreError, VirtualHost};
use postino_types::{Clock, SystemClock};
use tracing::info;

use super::{ACCESS_REFUSED, NOT_ALLOWED, NOT_IMPLEMENTED, Next, Out, Session, short};

/// Resource names whose permission checks a connection remembers; past this the cache is
/// cleared (a client touching more names pays a regex match per operation, nothing worse).
const ALLOWED_NAMES_MAX: usize = 1024;

/// What a connection has been allowed, per resource name (a bit per [`Action`]), valid while
/// the broker's access generation does not change.
#[derive(Debug, Default)]
pub(super) struct Allowed {
    generation: u64,
    names: HashMap<String, u8>,
}

fn bit(action: Action) -> u8 {
    match action {
        Action::Configure => 1,
        Action::Write => 2,
        Action::Read => 4,
    }
}

/// `connection.start`; `EXTERNAL` is offered to a client whose certificate was verified.
pub(super) fn start(external: bool) -> AMQPClass {
    let mut capabilities = FieldTable::default();
    for capability in [
        "publisher_confirms",
        "exchange_exchange_bindings",
        "basic.nack",
        "consumer_cancel_notify",
        "connection.blocked",
        "per_consumer_qos",
        "direct_reply_to",
        "authentication_failure_close",
    ] {
        capabilities.insert(short(capability), AMQPValue::Boolean(true));
    }
    let mut properties = FieldTable::default();
    properties.insert(
        short("product"),
        AMQPValue::LongString(LongString::from("postino")),
    );
    properties.insert(
        short("version"),
        AMQPValue::LongString(LongString::from(env!("CARGO_PKG_VERSION"))),
    );
    properties.insert(short("capabilities"), AMQPValue::FieldTable(capabilities));
    AMQPClass::Connection(connection::AMQPMethod::Start(connection::Start {
        version_major: 0,
        version_minor: 9,
        server_properties: properties,
        mechanisms: LongString::from(if external {
            "PLAIN AMQPLAIN EXTERNAL"
        } else {
            "PLAIN AMQPLAIN"
        }),
        locales: LongString::from("en_US"),
    }))
}

impl Session {
    pub(super) async fn on_connection(&mut self, method: connection::AMQPMethod) -> Next {
        match method {
            connection::AMQPMethod::StartOk(start_ok) => {
                self.wants_blocked = capability(&start_ok.client_properties, "connection.blocked");
                let checked = if start_ok.mechanism.as_str() == "EXTERNAL" {
                    self.certificate_login()
                } else {
                    self.password_login(&start_ok).await
                };
                let user = match checked {
                    Ok(user) => user,
                    Err(reason) => {
                        info!(connection = self.connection, %reason, "amqp login refused");
                        self.close_connection(ACCESS_REFUSED, &reason);
                        return Next::Stop;
                    }
                };
                self.listed.describe(|session| {
                    session.user.clone_from(&user);
                    session.auth_mechanism = start_ok.mechanism.as_str().to_owned();
                    session.client_properties = client_properties(&start_ok.client_properties);
                });
                self.user = user;
                self.send(
                    0,
                    AMQPClass::Connection(connection::AMQPMethod::Tune(connection::Tune {
                        channel_max: self.limits.channel_max,
                        frame_max: self.limits.frame_max,
                        heartbeat: self.limits.heartbeat_s,
                    })),
                );
                Next::Continue
            }
            connection::AMQPMethod::TuneOk(tune_ok) => {
                // The client may lower the heartbeat or turn it off (0).
                let heartbeat_s = tune_ok.heartbeat.min(self.limits.heartbeat_s);
                self.heartbeat.store(heartbeat_s, Ordering::Relaxed);
                if tune_ok.frame_max > 0 {
                    self.frame_max = tune_ok.frame_max.min(self.limits.frame_max).max(4096);
                }
                let channel_max = match tune_ok.channel_max {
                    0 => self.limits.channel_max,
                    asked => asked.min(self.limits.channel_max),
                };
                let frame_max = self.frame_max;
                self.listed.describe(|session| {
                    session.heartbeat_s = heartbeat_s;
                    session.frame_max = frame_max;
                    session.channel_max = channel_max;
                });
                Next::Continue
            }
            connection::AMQPMethod::Open(open) => self.open(open.virtual_host.as_str()),
            connection::AMQPMethod::Close(_) => {
                self.send(
                    0,
                    AMQPClass::Connection(connection::AMQPMethod::CloseOk(connection::CloseOk {})),
                );
                Next::Stop
            }
            connection::AMQPMethod::CloseOk(_) => Next::Stop,
            _ => {
                self.close_connection(NOT_IMPLEMENTED, "connection method not supported");
                Next::Stop
            }
        }
    }

    /// A login by PLAIN or AMQPLAIN: the user, or why it is refused.
    async fn password_login(&self, start_ok: &connection::StartOk) -> Result<String, String> {
        let Some((user, password)) = credentials(start_ok) else {
            return Err("login refused: use PLAIN, AMQPLAIN or EXTERNAL".to_owned());
        };
        let checked = self
            .broker
            .login(&user, &password, self.peer, SystemClock.now_ms())
            .await;
        checked.map(|()| user).map_err(|error| error.to_string())
    }

    /// A login by EXTERNAL: the user the verified client certificate names.
    fn certificate_login(&self) -> Result<String, String> {
        let Some(user) = self.listed.origin().certificate_user.clone() else {
            return Err("login refused: EXTERNAL needs a verified client certificate".to_owned());
        };
        self.broker
            .access()
            .authenticate_certificate(&user, self.peer)
            .map(|()| user)
            .map_err(|error| error.to_string())
    }

    fn open(&mut self, vhost: &str) -> Next {
        if self.user.is_empty() {
            // `open` before a successful `start-ok`: nobody is logged in.
            self.close_connection(ACCESS_REFUSED, "connection.open before login");
            return Next::Stop;
        }
        let Some(host) = self.broker.vhost(vhost) else {
            self.close_connection(NOT_ALLOWED, &format!("vhost '{vhost}' not found"));
            return Next::Stop;
        };
        // RabbitMQ answers a host the user has no permissions on with 530, as a missing one.
        if let Err(error) = self.broker.access().check_vhost(&self.user, vhost) {
            let reason = match error {
                CoreError::AccessRefused { reason } => reason,
                other => other.to_string(),
            };
            self.close_connection(NOT_ALLOWED, &reason);
            return Next::Stop;
        }
        self.listed
            .describe(|session| session.vhost = vhost.to_owned());
        self.host = Some(host);
        self.send(
            0,
            AMQPClass::Connection(connection::AMQPMethod::OpenOk(connection::OpenOk {})),
        );
        if self.wants_blocked {
            let alarm = self.broker.alarm();
            let out = self.out.clone();
            self.alarm_watcher = Some(tokio::spawn(watch_alarm(alarm, out)));
        }
        Next::Continue
    }

    /// Checks that the connection's user may `action` the `kind` named `name` on `host`
    /// (RabbitMQ's table: declare and delete configure, publish and the queue end of a binding
    /// write, consume, get, purge and the exchange end of a binding read).
    ///
    /// # Errors
    /// `AccessRefused`, which closes the channel with 403.
    pub(super) fn authorize(
        &mut self,
        host: &VirtualHost,
        action: Action,
        kind: &str,
        name: &str,
    ) -> Result<(), CoreError> {
        let access = self.broker.access();
        let generation = access.generation();
        if self.allowed.generation != generation || self.allowed.names.len() >= ALLOWED_NAMES_MAX {
            self.allowed.names.clear();
            self.allowed.generation = generation;
        }
        if self
            .allowed
            .names
            .get(name)
            .is_some_and(|bits| bits & bit(action) != 0)
        {
            return Ok(());
        }
        access.authorize(&self.user, host.name(), action, kind, name)?;
        *self.allowed.names.entry(name.to_owned()).or_default() |= bit(action);
        Ok(())
    }
}

/// Sends `connection.blocked` while the broker's flow-control alarm holds (publishers then
/// wait in the core anyway) and `connection.unblocked` when it clears.
async fn watch_alarm(mut alarm: tokio::sync::watch::Receiver<Alarm>, out: Out) {
    let mut blocked = false;
    loop {
        let current = *alarm.borrow_and_update();
        let method = match (current, blocked) {
            (Alarm::Clear, true) => {
                Some(connection::AMQPMethod::Unblocked(connection::Unblocked {}))
            }
            (Alarm::Memory | Alarm::Disk, false) => {
                let reason = if current == Alarm::Memory {
                    "low on memory"
                } else {
                    "low on disk"
                };
                Some(connection::AMQPMethod::Blocked(connection::Blocked {
                    reason: short(reason),
                }))
            }
            _ => None,
        };
        if let Some(method) = method {
            blocked = !blocked;
            if !out.send(AMQPFrame::Method(0, AMQPClass::Connection(method))) {
                return;
            }
        }
        if alarm.changed().await.is_err() {
            return;
        }
    }
}

/// What a client says of itself, for the connection listing: its text properties.
fn client_properties(properties: &FieldTable) -> std::collections::BTreeMap<String, String> {
    properties
        .inner()
        .iter()
        .filter_map(|(name, value)| {
            let text = match value {
                AMQPValue::LongString(text) => {
                    String::from_utf8_lossy(text.as_bytes()).into_owned()
                }
                AMQPValue::ShortString(text) => text.as_str().to_owned(),
                _ => return None,
            };
            Some((name.as_str().to_owned(), text))
        })
        .collect()
}

/// Whether a client's properties list `name` among its capabilities.
fn capability(properties: &FieldTable, name: &str) -> bool {
    let Some(AMQPValue::FieldTable(capabilities)) = properties.inner().get("capabilities") else {
        return false;
    };
    matches!(
        capabilities.inner().get(name),
        Some(AMQPValue::Boolean(true))
    )
}

/// The user name and password of a `start-ok`: PLAIN (`authzid NUL user NUL password`) or
/// AMQPLAIN (a field table, without its length prefix, holding `LOGIN` and `PASSWORD`).
fn credentials(start_ok: &connection::StartOk) -> Option<(String, String)> {
    let response = start_ok.response.as_bytes();
    match start_ok.mechanism.as_str() {
        "PLAIN" => {
            let mut parts = response.split(|byte| *byte == 0);
            let _authzid = parts.next();
            let user = String::from_utf8(parts.next()?.to_vec()).ok()?;
            let password = String::from_utf8(parts.next()?.to_vec()).ok()?;
            Some((user, password))
        }
        "AMQPLAIN" => {
            let mut table = u32::try_from(response.len()).ok()?.to_be_bytes().to_vec();
            table.extend_from_slice(response);
            let (_, table) =
                amq_protocol::types::parsing::parse_field_table(table.as_slice()).ok()?;
            let text = |name: &str| match table.inner().get(&ShortString::from(name))? {
                AMQPValue::LongString(text) => String::from_utf8(text.as_bytes().to_vec()).ok(),
                AMQPValue::ShortString(text) => Some(text.as_str().to_owned()),
                _ => None,
            };
            Some((text("LOGIN")?, text("PASSWORD")?))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_and_amqplain_logins_are_read() {
        let start_ok = |mechanism: &str, response: LongString| connection::StartOk {
            client_properties: FieldTable::default(),
            mechanism: ShortString::from(mechanism),
            response,
            locale: ShortString::from("en_US"),
        };
        let guest = Some(("guest".to_owned(), "guest".to_owned()));
        let credentials_of = amq_protocol::auth::Credentials::default();
        let amqplain = credentials_of.sasl_auth_string(amq_protocol::auth::SASLMechanism::AMQPlain);
        assert_eq!(credentials(&start_ok("AMQPLAIN", amqplain)), guest);
        let plain = credentials_of.sasl_auth_string(amq_protocol::auth::SASLMechanism::Plain);
        assert_eq!(credentials(&start_ok("PLAIN", plain)), guest);
        let other = amq_protocol::auth::Credentials::new("app".into(), "nope".into())
            .sasl_auth_string(amq_protocol::auth::SASLMechanism::AMQPlain);
        assert_eq!(
            credentials(&start_ok("AMQPLAIN", other)),
            Some(("app".to_owned(), "nope".to_owned()))
        );
        assert_eq!(
            credentials(&start_ok("AMQPLAIN", LongString::from("\u{5}LOG"))),
            None
        );
        assert_eq!(
            credentials(&start_ok("EXTERNAL", LongString::from(""))),
            None
        );
    }
}
