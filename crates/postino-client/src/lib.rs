//! The Rust client of postino's native API, with the names of the lecture notes:
//!
//! - a message queue — [`Queue::put`], [`Queue::get`] (blocking, optionally for a message a
//!   pattern matches: [`Queue::get_matching`]), [`Queue::poll`] (never blocking) and
//!   [`Queue::notify`] (a callback on each arrival);
//! - publish/subscribe — [`PubSub::publish`], [`PubSub::subscribe`] (a [`Filter`], a
//!   callback and an expiry, returning a [`Subscription`]) and [`PubSub::unsubscribe`];
//! - streams — [`Stream::produce`] with keys, [`Stream::fetch`] and [`Stream::follow`] from an
//!   offset or a time, alone or in a consumer group with committed offsets;
//! - the synchronisation points of a put ([`SyncMode`]: none, stored, delivered, replied — with
//!   [`Queue::request`] and [`Client::reply`] for request/reply) and [`Transaction`]s.
//!
//! A [`Client`] talks to a server ([`Client::connect`], `postino server`'s gRPC port 5680)
//! or to a broker it opens in the same process on a data directory ([`Client::embedded`]):
//! the API is the same, so an application moves from one to the other by changing one line.
//! Calls that find the server unreachable are retried with backoff ([`Options::retry_for`]);
//! notify, subscription and follow streams reopen themselves the same way.
//!
//! ```
//! # postino_client::examples::run(|client| async move {
//! use std::time::Duration;
//!
//! let jobs = client.queue("jobs");
//! jobs.declare().await?;
//! jobs.put("resize photo.jpg").await?;
//! let job = jobs.get(Duration::from_secs(5)).await?.expect("a job");
//! assert_eq!(job.message().text(), Some("resize photo.jpg"));
//! job.ack().await?;
//! # Ok(()) });
//! ```
//!
//! Every example of this documentation runs as a test twice: on an embedded broker, and
//! through a server on a loopback socket (see [`examples`]).

/// Calls `$method` of the generated client `$make(channel)` with `$request` as `$client`,
/// retried with backoff while the server is unreachable; the reply's message.
macro_rules! call {
    ($client:expr, $make:path, $method:ident, $request:expr) => {{
        let client: &$crate::Client = $client;
        let request = $request;
        client
            .call(|channel| {
                let request = client.request(request.clone());
                async move { $make(channel).$method(request).await }
            })
            .await
    }};
}
pub(crate) use call;

mod embedded;
#[doc(hidden)]
pub mod examples;
mod message;
mod pubsub;
mod queue;
mod stream;
mod transaction;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};

pub use message::{Message, Properties, Value};
pub use postino_grpc::proto::Sync as SyncMode;
pub use pubsub::{Event, Filter, PubSub, Subscription};
pub use queue::{Delivery, Notification, Queue, Settle};
pub use stream::{Consumer, Record, Start, Stream};
pub use tonic::Code;
pub use transaction::Transaction;

/// What a call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The broker answered with an error: its gRPC status (`Error::code`).
    #[error("{}: {}", .0.code(), .0.message())]
    Status(#[from] Status),
    /// No connection could be made to the server.
    #[error("cannot connect: {0}")]
    Connect(#[from] tonic::transport::Error),
    /// The embedded broker did not open or close.
    #[error("the embedded broker: {0}")]
    Embedded(#[from] postino_core::CoreError),
    #[error("'{0}' is not a server address (http://host:port)")]
    Address(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

impl Error {
    /// The status code of a refusal by the broker.
    #[must_use]
    pub fn code(&self) -> Option<Code> {
        match self {
            Self::Status(status) => Some(status.code()),
            _ => None,
        }
    }
}

/// How a client logs in and how long it keeps trying an unreachable server.
#[derive(Debug, Clone)]
pub struct Options {
    credentials: Option<(String, String)>,
    vhost: String,
    retry_for: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            credentials: None,
            vhost: "/".to_owned(),
            retry_for: Duration::from_secs(30),
        }
    }
}

impl Options {
    /// Logs in as `user` (default: `guest`, which the broker admits from loopback only).
    #[must_use]
    pub fn user(mut self, user: &str, password: &str) -> Self {
        self.credentials = Some((user.to_owned(), password.to_owned()));
        self
    }

    /// The virtual host every call names (default `/`).
    #[must_use]
    pub fn vhost(mut self, vhost: &str) -> Self {
        vhost.clone_into(&mut self.vhost);
        self
    }

    /// How long connecting and each call keep retrying, with backoff, while the server is
    /// unreachable (default 30 s; zero: never retry). A put retried after a connection broke
    /// may arrive twice (at-least-once); give messages an id on a deduplicating queue for
    /// exactly-once.
    #[must_use]
    pub fn retry_for(mut self, retry_for: Duration) -> Self {
        self.retry_for = retry_for;
        self
    }
}

/// The first wait between two attempts; it doubles up to [`BACKOFF_MAX`].
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// Retries `attempt` with exponential backoff while it fails with `retry` and `budget` lasts.
async fn with_backoff<T, E, Fut>(
    budget: Duration,
    retry: impl Fn(&E) -> bool,
    mut attempt: impl FnMut() -> Fut,
) -> Result<T, E>
where
    Fut: Future<Output = Result<T, E>>,
{
    let started = Instant::now();
    let mut backoff = BACKOFF_MIN;
    loop {
        match attempt().await {
            Err(error) if retry(&error) && started.elapsed() + backoff <= budget => {
                tracing::debug!("the server is unreachable; retrying in {backoff:?}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
            outcome => return outcome,
        }
    }
}

fn unreachable(status: &Status) -> bool {
    status.code() == Code::Unavailable
}

/// A connection to a broker (a server, or one embedded in this process). Cheap to clone;
/// clones share the connection.
#[derive(Debug, Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    channel: Channel,
    authorization: Option<MetadataValue<Ascii>>,
    options: Options,
    embedded: Option<embedded::Embedded>,
}

impl Client {
    /// Connects to the server at `url` (`http://host:5680`) as `guest`.
    ///
    /// # Errors
    /// A malformed URL; no connection within [`Options::retry_for`].
    pub async fn connect(url: &str) -> Result<Self, Error> {
        Self::connect_with(url, Options::default()).await
    }

    /// Connects to the server at `url` with `options`.
    ///
    /// # Errors
    /// A malformed URL; no connection within [`Options::retry_for`].
    pub async fn connect_with(url: &str, options: Options) -> Result<Self, Error> {
        let endpoint = Endpoint::from_shared(url.to_owned())
            .map_err(|_| Error::Address(url.to_owned()))?
            .tcp_nodelay(true);
        let channel = with_backoff(options.retry_for, |_| true, || endpoint.connect()).await?;
        Ok(Self::over(channel, options, None))
    }

    /// Opens a broker in this process on the data directory `dir` (created if missing; the
    /// layout `postino server --data-dir` uses, so a server can take it over later) and
    /// connects to it as `guest`. Durable queues, streams and their persistent messages live
    /// there, fsynced before confirmation, as on a server.
    ///
    /// # Errors
    /// The directory or a virtual host in it that does not open.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), postino_client::Error> {
    /// # let data = tempfile::tempdir()?;
    /// use postino_client::Client;
    ///
    /// let client = Client::embedded(data.path()).await?;
    /// // … or, on a server: let client = Client::connect("http://localhost:5680").await?;
    /// client.queue("jobs").declare().await?;
    /// client.queue("jobs").put("job 1").await?;
    /// client.close().await?;
    ///
    /// let reopened = Client::embedded(data.path()).await?;
    /// let job = reopened.queue("jobs").poll().await?.expect("kept across the restart");
    /// assert_eq!(job.message().text(), Some("job 1"));
    /// # Ok(()) }
    /// ```
    pub async fn embedded(dir: impl Into<PathBuf>) -> Result<Self, Error> {
        let (embedded, channel) = embedded::Embedded::open(dir.into()).await?;
        Ok(Self::over(channel, Options::default(), Some(embedded)))
    }

    fn over(channel: Channel, options: Options, embedded: Option<embedded::Embedded>) -> Self {
        let authorization = options.credentials.as_ref().and_then(|(user, password)| {
            let encoded =
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
            format!("Basic {encoded}").parse().ok()
        });
        Self {
            inner: Arc::new(Inner {
                channel,
                authorization,
                options,
                embedded,
            }),
        }
    }

    /// Serves the embedded broker to other processes on `address` (as `postino server`'s
    /// gRPC listener); answers the bound address.
    ///
    /// # Errors
    /// `InvalidInput` for a client of a server; a listener that does not bind.
    pub async fn listen(&self, address: &str) -> Result<std::net::SocketAddr, Error> {
        let embedded = self.inner.embedded.as_ref().ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "only an embedded broker can listen",
            )
        })?;
        Ok(embedded.listen(address).await?)
    }

    /// The queue `name` (declare it with [`Queue::declare`] unless it exists).
    #[must_use]
    pub fn queue(&self, name: &str) -> Queue {
        Queue::new(self.clone(), name)
    }

    /// Publish/subscribe on the exchange `amq.topic`.
    #[must_use]
    pub fn pubsub(&self) -> PubSub {
        self.pubsub_on("amq.topic")
    }

    /// Publish/subscribe on `exchange`.
    #[must_use]
    pub fn pubsub_on(&self, exchange: &str) -> PubSub {
        PubSub::new(self.clone(), exchange)
    }

    /// The stream `name`.
    #[must_use]
    pub fn stream(&self, name: &str) -> Stream {
        Stream::new(self.clone(), name)
    }

    /// Begins a transaction.
    ///
    /// # Errors
    /// The broker's refusal.
    pub async fn begin(&self) -> Result<Transaction, Error> {
        Transaction::begin(self.clone()).await
    }

    /// Answers `request` (a message put with [`Queue::request`], or any with a `reply_to`):
    /// puts `answer` into its `reply_to` queue with its correlation id.
    ///
    /// # Errors
    /// `FAILED_PRECONDITION`-like [`Error::Status`] when the request has no `reply_to`; the
    /// broker's refusal.
    pub async fn reply(&self, request: &Delivery, answer: impl Into<Message>) -> Result<(), Error> {
        let properties = request.message().properties();
        let reply_to = properties.reply_to.ok_or_else(|| {
            Status::failed_precondition("the message has no reply_to: nobody waits for an answer")
        })?;
        let mut answer = answer.into();
        if let Some(correlation) = properties.correlation_id {
            answer = answer.correlation_id(&correlation);
        }
        self.queue(&reply_to).put(answer).await
    }

    /// Closes the client; for an embedded broker, syncs and closes its logs, so that the
    /// data directory can be opened again.
    ///
    /// # Errors
    /// For an embedded broker, `InvalidInput` while other clones of this client (its queues,
    /// streams, deliveries, notifications, subscriptions) are alive — nothing is closed then —
    /// and the broker's failure to close.
    pub async fn close(self) -> Result<(), Error> {
        match Arc::try_unwrap(self.inner) {
            Ok(Inner {
                channel,
                embedded: Some(embedded),
                ..
            }) => {
                // The connection goes first, so that the service lets go of the broker.
                drop(channel);
                embedded.close().await
            }
            Ok(_) => Ok(()),
            Err(shared) if shared.embedded.is_some() => Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "the embedded broker is still in use by other clones of this client",
            )
            .into()),
            Err(_) => Ok(()),
        }
    }

    fn channel(&self) -> Channel {
        self.inner.channel.clone()
    }

    fn vhost(&self) -> String {
        self.inner.options.vhost.clone()
    }

    fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        if let Some(authorization) = &self.inner.authorization {
            request
                .metadata_mut()
                .insert("authorization", authorization.clone());
        }
        request
    }

    /// Runs a unary call, retried with backoff while the server is unreachable.
    async fn call<T, Fut>(&self, mut attempt: impl FnMut(Channel) -> Fut) -> Result<T, Error>
    where
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        let budget = self.inner.options.retry_for;
        let response = with_backoff(budget, unreachable, || attempt(self.channel())).await?;
        Ok(response.into_inner())
    }
}
