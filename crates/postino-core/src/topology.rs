//! Exchanges and bindings of one virtual host, and routing: from (exchange, routing key,
//! headers) to the set of queues a message goes to.
//!
//! Exchange kinds are RabbitMQ's: `direct` (key equals binding key), `fanout` (every binding),
//! `topic` (`.`-separated words; `*` is one word, `#` zero or more), `headers` (`x-match` of
//! `all`, `any`, `all-with-x`, `any-with-x` over the binding arguments). The default exchange
//! `""` routes to the queue named by the key. Exchange-to-exchange bindings are followed once
//! per exchange (cycles end); an exchange with no matching binding hands the message to its
//! alternate exchange. A binding with an `x-filter` argument (a [`Filter`] over the message's
//! properties and headers) matches only the messages its filter holds for, on top of its
//! exchange's rule.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::str::FromStr;

use postino_types::{HeaderValue, Headers, Message};

use crate::error::CoreError;
use crate::filter::Filter;

/// How an exchange matches bindings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExchangeKind {
    Direct,
    Fanout,
    Topic,
    Headers,
}

impl FromStr for ExchangeKind {
    type Err = CoreError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "direct" => Ok(ExchangeKind::Direct),
            "fanout" => Ok(ExchangeKind::Fanout),
            "topic" => Ok(ExchangeKind::Topic),
            "headers" => Ok(ExchangeKind::Headers),
            other => Err(CoreError::InvalidArgument {
                name: "type".to_owned(),
                reason: format!("unknown exchange type '{other}'"),
            }),
        }
    }
}

impl fmt::Display for ExchangeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ExchangeKind::Direct => "direct",
            ExchangeKind::Fanout => "fanout",
            ExchangeKind::Topic => "topic",
            ExchangeKind::Headers => "headers",
        })
    }
}

/// What a declaration asks for; declaring an existing exchange with a different spec fails.
#[derive(Debug, Clone, PartialEq)]
pub struct ExchangeSpec {
    pub kind: ExchangeKind,
    pub durable: bool,
    pub auto_delete: bool,
    /// Clients cannot publish to it directly; only other exchanges route to it.
    pub internal: bool,
    /// Where messages go that match no binding.
    pub alternate: Option<String>,
    pub arguments: Headers,
}

impl ExchangeSpec {
    /// A durable exchange of `kind` with no options.
    #[must_use]
    pub fn new(kind: ExchangeKind) -> Self {
        Self {
            kind,
            durable: true,
            auto_delete: false,
            internal: false,
            alternate: None,
            arguments: Headers::new(),
        }
    }
}

impl ExchangeSpec {
    /// The exchange a declaration asks for; its alternate exchange comes from the
    /// `alternate-exchange` argument, as in RabbitMQ.
    #[must_use]
    pub fn declared(
        kind: ExchangeKind,
        durable: bool,
        auto_delete: bool,
        internal: bool,
        arguments: Headers,
    ) -> Self {
        let alternate = match arguments.get("alternate-exchange") {
            Some(HeaderValue::Text(alternate)) => Some(alternate.clone()),
            _ => None,
        };
        Self {
            kind,
            durable,
            auto_delete,
            internal,
            alternate,
            arguments,
        }
    }
}

/// Where a binding leads.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Destination {
    Queue(String),
    Exchange(String),
}

/// A binding from an exchange to a destination.
#[derive(Debug, Clone, PartialEq)]
pub struct Binding {
    pub source: String,
    pub destination: Destination,
    pub key: String,
    pub arguments: Headers,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HeadersMatch {
    All,
    Any,
    AllWithX,
    AnyWithX,
}

impl HeadersMatch {
    fn of(arguments: &Headers) -> Result<Self, CoreError> {
        match arguments.get("x-match") {
            None => Ok(HeadersMatch::All),
            Some(HeaderValue::Text(text)) => match text.as_str() {
                "all" => Ok(HeadersMatch::All),
                "any" => Ok(HeadersMatch::Any),
                "all-with-x" => Ok(HeadersMatch::AllWithX),
                "any-with-x" => Ok(HeadersMatch::AnyWithX),
                other => Err(CoreError::InvalidArgument {
                    name: "x-match".to_owned(),
                    reason: format!("'{other}' is not all, any, all-with-x or any-with-x"),
                }),
            },
            Some(other) => Err(CoreError::InvalidArgument {
                name: "x-match".to_owned(),
                reason: format!("expected a string, found {other}"),
            }),
        }
    }

    fn matches(self, arguments: &Headers, headers: &Headers) -> bool {
        let with_x = matches!(self, HeadersMatch::AllWithX | HeadersMatch::AnyWithX);
        let mut wanted = arguments
            .iter()
            .filter(|(name, _)| *name != "x-match" && (with_x || !name.starts_with("x-")));
        let hit = |(name, value): (&String, &HeaderValue)| match headers.get(name) {
            None => false,
            Some(_) if *value == HeaderValue::Void => true,
            Some(found) => found == value,
        };
        match self {
            HeadersMatch::All | HeadersMatch::AllWithX => wanted.all(hit),
            HeadersMatch::Any | HeadersMatch::AnyWithX => wanted.any(hit),
        }
    }
}

/// Whether a topic binding `pattern` matches routing `key`.
#[must_use]
pub fn topic_matches(pattern: &str, key: &str) -> bool {
    let pattern: Vec<&str> = pattern.split('.').collect();
    let key: Vec<&str> = key.split('.').collect();
    // reachable[k]: the pattern prefix seen so far can consume the first k words of the key.
    let mut reachable = vec![false; key.len() + 1];
    reachable[0] = true;
    for word in &pattern {
        let mut next = vec![false; key.len() + 1];
        for consumed in 0..=key.len() {
            if !reachable[consumed] {
                continue;
            }
            match *word {
                "#" => next[consumed..].iter_mut().for_each(|cell| *cell = true),
                "*" if consumed < key.len() => next[consumed + 1] = true,
                literal if consumed < key.len() && key[consumed] == literal => {
                    next[consumed + 1] = true;
                }
                _ => {}
            }
        }
        reachable = next;
    }
    reachable[key.len()]
}

/// The binding or consumer argument holding a [`Filter`].
pub const FILTER_ARGUMENT: &str = "x-filter";

#[derive(Debug, Clone)]
struct Exchange {
    spec: ExchangeSpec,
    bindings: Vec<Bound>,
}

/// A binding and its parsed filter.
#[derive(Debug, Clone)]
struct Bound {
    binding: Binding,
    filter: Option<Filter>,
}

/// The filter of a binding's or consumer's `x-filter` argument, if it has one.
///
/// # Errors
/// `InvalidArgument` when it is not a string or does not parse (the reason names the position).
pub fn filter_argument(arguments: &Headers) -> Result<Option<Filter>, CoreError> {
    let invalid = |reason: String| CoreError::InvalidArgument {
        name: FILTER_ARGUMENT.to_owned(),
        reason,
    };
    match arguments.get(FILTER_ARGUMENT) {
        None => Ok(None),
        Some(HeaderValue::Text(text)) => Filter::parse(text)
            .map(Some)
            .map_err(|error| invalid(error.to_string())),
        Some(other) => Err(invalid(format!("a filter is a string, not {other}"))),
    }
}

/// The exchanges, bindings and queue names of one virtual host.
#[derive(Debug, Clone)]
pub struct Topology {
    exchanges: BTreeMap<String, Exchange>,
    queues: BTreeSet<String>,
}

impl Default for Topology {
    fn default() -> Self {
        Self::new()
    }
}

impl Topology {
    /// A virtual host with the predeclared exchanges: the default exchange `""`, `amq.direct`,
    /// `amq.fanout`, `amq.topic`, `amq.headers` and `amq.match`.
    #[must_use]
    pub fn new() -> Self {
        let mut topology = Self {
            exchanges: BTreeMap::new(),
            queues: BTreeSet::new(),
        };
        for (name, kind) in [
            ("", ExchangeKind::Direct),
            ("amq.direct", ExchangeKind::Direct),
            ("amq.fanout", ExchangeKind::Fanout),
            ("amq.topic", ExchangeKind::Topic),
            ("amq.headers", ExchangeKind::Headers),
            ("amq.match", ExchangeKind::Headers),
        ] {
            topology.exchanges.insert(
                name.to_owned(),
                Exchange {
                    spec: ExchangeSpec::new(kind),
                    bindings: Vec::new(),
                },
            );
        }
        topology
    }

    /// Declares an exchange; returns whether it was created. Declaring an existing one with the
    /// same spec succeeds and changes nothing.
    ///
    /// # Errors
    /// `AccessRefused` for a new name starting with `amq.` or the empty name;
    /// `PreconditionFailed` when it exists with a different spec.
    pub fn declare_exchange(&mut self, name: &str, spec: ExchangeSpec) -> Result<bool, CoreError> {
        if let Some(existing) = self.exchanges.get(name) {
            if existing.spec != spec {
                return Err(CoreError::PreconditionFailed {
                    reason: format!("exchange '{name}' exists with different properties"),
                });
            }
            return Ok(false);
        }
        if name.is_empty() || name.starts_with("amq.") {
            return Err(CoreError::AccessRefused {
                reason: format!("exchange name '{name}' is reserved"),
            });
        }
        self.exchanges.insert(
            name.to_owned(),
            Exchange {
                spec,
                bindings: Vec::new(),
            },
        );
        Ok(true)
    }

    /// The names of every exchange, in order.
    pub fn exchange_names(&self) -> impl Iterator<Item = &str> {
        self.exchanges.keys().map(String::as_str)
    }

    /// The spec of an exchange, if it exists.
    #[must_use]
    pub fn exchange(&self, name: &str) -> Option<&ExchangeSpec> {
        self.exchanges.get(name).map(|exchange| &exchange.spec)
    }

    /// Deletes an exchange and every binding from or to it.
    ///
    /// # Errors
    /// `NotFound`; `AccessRefused` for a predeclared one; `PreconditionFailed` with `if_unused`
    /// when it has bindings.
    pub fn delete_exchange(&mut self, name: &str, if_unused: bool) -> Result<(), CoreError> {
        let exchange = self
            .exchanges
            .get(name)
            .ok_or_else(|| not_found("exchange", name))?;
        if name.is_empty() || name.starts_with("amq.") {
            return Err(CoreError::AccessRefused {
                reason: format!("exchange '{name}' cannot be deleted"),
            });
        }
        if if_unused && !exchange.bindings.is_empty() {
            return Err(CoreError::PreconditionFailed {
                reason: format!("exchange '{name}' in use"),
            });
        }
        self.exchanges.remove(name);
        let gone = Destination::Exchange(name.to_owned());
        for exchange in self.exchanges.values_mut() {
            exchange
                .bindings
                .retain(|bound| bound.binding.destination != gone);
        }
        Ok(())
    }

    /// Registers a queue name, so that the default exchange and bindings can reach it.
    pub fn add_queue(&mut self, name: &str) {
        self.queues.insert(name.to_owned());
    }

    /// Forgets a queue and every binding to it.
    pub fn remove_queue(&mut self, name: &str) {
        self.queues.remove(name);
        let gone = Destination::Queue(name.to_owned());
        for exchange in self.exchanges.values_mut() {
            exchange
                .bindings
                .retain(|bound| bound.binding.destination != gone);
        }
    }

    /// Whether a queue of that name is registered.
    #[must_use]
    pub fn has_queue(&self, name: &str) -> bool {
        self.queues.contains(name)
    }

    /// Adds a binding; binding twice with the same key and arguments is a no-op.
    ///
    /// # Errors
    /// `NotFound` for a missing source or destination; `AccessRefused` when binding to or from
    /// the default exchange; `InvalidArgument` for a bad `x-match` or `x-filter`.
    pub fn bind(&mut self, binding: Binding) -> Result<(), CoreError> {
        self.check_binding(&binding)?;
        let filter = filter_argument(&binding.arguments)?;
        let exchange = self
            .exchanges
            .get_mut(&binding.source)
            .ok_or_else(|| not_found("exchange", &binding.source))?;
        if exchange.spec.kind == ExchangeKind::Headers {
            HeadersMatch::of(&binding.arguments)?;
        }
        if !exchange
            .bindings
            .iter()
            .any(|bound| bound.binding == binding)
        {
            exchange.bindings.push(Bound { binding, filter });
        }
        Ok(())
    }

    /// Removes a binding; removing one that does not exist is a no-op.
    ///
    /// # Errors
    /// As [`Topology::bind`] for missing or reserved endpoints.
    pub fn unbind(&mut self, binding: &Binding) -> Result<(), CoreError> {
        self.check_binding(binding)?;
        if let Some(exchange) = self.exchanges.get_mut(&binding.source) {
            exchange.bindings.retain(|bound| bound.binding != *binding);
        }
        Ok(())
    }

    fn check_binding(&self, binding: &Binding) -> Result<(), CoreError> {
        if binding.source.is_empty() || binding.destination == Destination::Exchange(String::new())
        {
            return Err(CoreError::AccessRefused {
                reason: "the default exchange cannot be bound".to_owned(),
            });
        }
        if !self.exchanges.contains_key(&binding.source) {
            return Err(not_found("exchange", &binding.source));
        }
        match &binding.destination {
            Destination::Queue(queue) if !self.queues.contains(queue) => {
                Err(not_found("queue", queue))
            }
            Destination::Exchange(exchange) if !self.exchanges.contains_key(exchange) => {
                Err(not_found("exchange", exchange))
            }
            _ => Ok(()),
        }
    }

    /// The bindings whose source is `exchange`.
    pub fn bindings(&self, exchange: &str) -> impl Iterator<Item = &Binding> {
        self.exchanges
            .get(exchange)
            .into_iter()
            .flat_map(|exchange| exchange.bindings.iter().map(|bound| &bound.binding))
    }

    /// The queues `message` published to `exchange` with `routing_key` goes to, each once, in
    /// name order. Empty when it is unroutable.
    ///
    /// # Errors
    /// `NotFound` for a missing exchange; `AccessRefused` for an internal one.
    pub fn route(
        &self,
        exchange: &str,
        routing_key: &str,
        message: &Message,
    ) -> Result<Vec<String>, CoreError> {
        let spec = self
            .exchange(exchange)
            .ok_or_else(|| not_found("exchange", exchange))?;
        if spec.internal {
            return Err(CoreError::AccessRefused {
                reason: format!("cannot publish to internal exchange '{exchange}'"),
            });
        }
        let mut queues = BTreeSet::new();
        let mut seen = BTreeSet::new();
        let mut pending = VecDeque::from([exchange.to_owned()]);
        while let Some(name) = pending.pop_front() {
            if !seen.insert(name.clone()) {
                continue;
            }
            let Some(current) = self.exchanges.get(&name) else {
                continue;
            };
            if name.is_empty() {
                if self.queues.contains(routing_key) {
                    queues.insert(routing_key.to_owned());
                }
                continue;
            }
            let mut matched = false;
            let headers = &message.properties.headers;
            for bound in current.bindings.iter().filter(|bound| {
                binding_matches(current.spec.kind, &bound.binding, routing_key, headers)
                    && bound
                        .filter
                        .as_ref()
                        .is_none_or(|filter| filter.matches(message, exchange, routing_key))
            }) {
                matched = true;
                match &bound.binding.destination {
                    Destination::Queue(queue) => {
                        queues.insert(queue.clone());
                    }
                    Destination::Exchange(next) => pending.push_back(next.clone()),
                }
            }
            if !matched && let Some(alternate) = &current.spec.alternate {
                pending.push_back(alternate.clone());
            }
        }
        Ok(queues.into_iter().collect())
    }
}

fn binding_matches(kind: ExchangeKind, binding: &Binding, key: &str, headers: &Headers) -> bool {
    match kind {
        ExchangeKind::Direct => binding.key == key,
        ExchangeKind::Fanout => true,
        ExchangeKind::Topic => topic_matches(&binding.key, key),
        ExchangeKind::Headers => HeadersMatch::of(&binding.arguments)
            .is_ok_and(|mode| mode.matches(&binding.arguments, headers)),
    }
}

fn not_found(kind: &'static str, name: &str) -> CoreError {
    CoreError::NotFound {
        kind,
        name: name.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn to_queue(source: &str, queue: &str, key: &str) -> Binding {
        Binding {
            source: source.to_owned(),
            destination: Destination::Queue(queue.to_owned()),
            key: key.to_owned(),
            arguments: Headers::new(),
        }
    }

    fn topology(queues: &[&str]) -> Topology {
        let mut topology = Topology::new();
        for queue in queues {
            topology.add_queue(queue);
        }
        topology
    }

    #[test]
    fn topic_patterns_match_like_rabbitmq() {
        let cases = [
            ("a.b.c", "a.b.c", true),
            ("a.*.c", "a.b.c", true),
            ("a.*.c", "a.c", false),
            ("a.#", "a", true),
            ("a.#", "a.b.c", true),
            ("#", "", true),
            ("#", "anything.at.all", true),
            ("#.c", "c", true),
            ("#.c", "a.b.c", true),
            ("#.c", "a.b.d", false),
            ("a.#.c", "a.c", true),
            ("a.#.c", "a.x.y.c", true),
            ("*", "", true),
            ("*", "a.b", false),
            ("*.*", "a", false),
            ("a.#.#.b", "a.b", true),
            ("", "", true),
            ("", "a", false),
        ];
        for (pattern, key, expected) in cases {
            assert_eq!(topic_matches(pattern, key), expected, "{pattern} ~ {key}");
        }
    }

    #[test]
    fn default_exchange_routes_to_the_queue_named_by_the_key() {
        let topology = topology(&["orders"]);
        assert_eq!(
            topology
                .route("", "orders", &Message::default())
                .expect("route"),
            ["orders"]
        );
        assert!(
            topology
                .route("", "nobody", &Message::default())
                .expect("route")
                .is_empty()
        );
    }

    #[test]
    fn direct_fanout_and_topic_exchanges_route_by_their_rules() {
        let mut topology = topology(&["a", "b", "c"]);
        topology
            .bind(to_queue("amq.direct", "a", "red"))
            .expect("bind");
        topology
            .bind(to_queue("amq.direct", "b", "red"))
            .expect("bind");
        topology
            .bind(to_queue("amq.fanout", "c", "ignored"))
            .expect("bind");
        topology
            .bind(to_queue("amq.topic", "a", "*.error"))
            .expect("bind");
        topology
            .bind(to_queue("amq.topic", "b", "kern.#"))
            .expect("bind");
        let none = Message::default();
        assert_eq!(
            topology.route("amq.direct", "red", &none).expect("route"),
            ["a", "b"]
        );
        assert!(
            topology
                .route("amq.direct", "blue", &none)
                .expect("route")
                .is_empty()
        );
        assert_eq!(
            topology.route("amq.fanout", "x", &none).expect("route"),
            ["c"]
        );
        assert_eq!(
            topology
                .route("amq.topic", "kern.error", &none)
                .expect("route"),
            ["a", "b"]
        );
        assert_eq!(
            topology
                .route("amq.topic", "app.error", &none)
                .expect("route"),
            ["a"]
        );
    }

    #[test]
    fn headers_exchange_honours_every_x_match_mode() {
        let mut topology = topology(&["all", "any", "allx", "anyx", "present"]);
        let binding = |queue: &str, mode: &str, extra: &[(&str, HeaderValue)]| {
            let mut arguments = Headers::new();
            arguments.insert("x-match".into(), HeaderValue::Text(mode.into()));
            arguments.insert("format".into(), HeaderValue::Text("pdf".into()));
            arguments.insert("type".into(), HeaderValue::Text("report".into()));
            for (name, value) in extra {
                arguments.insert((*name).into(), value.clone());
            }
            Binding {
                arguments,
                ..to_queue("amq.headers", queue, "")
            }
        };
        topology.bind(binding("all", "all", &[])).expect("bind");
        topology.bind(binding("any", "any", &[])).expect("bind");
        let x = [("x-tenant", HeaderValue::Text("t1".into()))];
        topology
            .bind(binding("allx", "all-with-x", &x))
            .expect("bind");
        topology
            .bind(binding("anyx", "any-with-x", &x))
            .expect("bind");
        let mut presence = Headers::new();
        presence.insert("flag".into(), HeaderValue::Void);
        topology
            .bind(Binding {
                arguments: presence,
                ..to_queue("amq.headers", "present", "")
            })
            .expect("bind");
        let headers = |pairs: &[(&str, &str)]| -> Message {
            let mut message = Message::default();
            message.properties.headers = pairs
                .iter()
                .map(|(name, value)| ((*name).to_owned(), HeaderValue::Text((*value).to_owned())))
                .collect();
            message
        };
        let route = |pairs: &[(&str, &str)]| {
            topology
                .route("amq.headers", "", &headers(pairs))
                .expect("route")
        };
        assert_eq!(
            route(&[("format", "pdf"), ("type", "report")]),
            ["all", "any", "anyx"]
        );
        assert_eq!(route(&[("format", "pdf")]), ["any", "anyx"]);
        assert_eq!(route(&[("x-tenant", "t1")]), ["anyx"]);
        assert_eq!(
            route(&[("format", "pdf"), ("type", "report"), ("x-tenant", "t1")]),
            ["all", "allx", "any", "anyx"]
        );
        assert_eq!(route(&[("flag", "anything")]), ["present"]);
        let mut bad = Headers::new();
        bad.insert("x-match".into(), HeaderValue::Text("most".into()));
        assert!(matches!(
            topology.bind(Binding {
                arguments: bad,
                ..to_queue("amq.headers", "all", "")
            }),
            Err(CoreError::InvalidArgument { .. })
        ));
    }

    #[test]
    fn exchange_to_exchange_bindings_and_alternates_are_followed_without_looping() {
        let mut topology = topology(&["q1", "q2", "unrouted"]);
        let mut spec = ExchangeSpec::new(ExchangeKind::Direct);
        spec.alternate = Some("ae".into());
        topology.declare_exchange("front", spec).expect("declare");
        topology
            .declare_exchange("back", ExchangeSpec::new(ExchangeKind::Fanout))
            .expect("declare");
        topology
            .declare_exchange("ae", ExchangeSpec::new(ExchangeKind::Fanout))
            .expect("declare");
        let e2e = |source: &str, destination: &str, key: &str| Binding {
            source: source.into(),
            destination: Destination::Exchange(destination.into()),
            key: key.into(),
            arguments: Headers::new(),
        };
        topology.bind(e2e("front", "back", "k")).expect("bind");
        topology
            .bind(e2e("back", "front", "k"))
            .expect("a cycle is allowed");
        topology.bind(to_queue("back", "q1", "")).expect("bind");
        topology.bind(to_queue("front", "q2", "k")).expect("bind");
        topology.bind(to_queue("ae", "unrouted", "")).expect("bind");
        let none = Message::default();
        assert_eq!(
            topology.route("front", "k", &none).expect("route"),
            ["q1", "q2"]
        );
        assert_eq!(
            topology.route("front", "other", &none).expect("route"),
            ["unrouted"]
        );
    }

    #[test]
    fn declarations_are_checked_for_equivalence_and_reserved_names() {
        let mut topology = topology(&[]);
        assert!(
            topology
                .declare_exchange("x", ExchangeSpec::new(ExchangeKind::Topic))
                .expect("declare")
        );
        assert!(
            !topology
                .declare_exchange("x", ExchangeSpec::new(ExchangeKind::Topic))
                .expect("again")
        );
        assert!(matches!(
            topology.declare_exchange("x", ExchangeSpec::new(ExchangeKind::Fanout)),
            Err(CoreError::PreconditionFailed { .. })
        ));
        assert!(matches!(
            topology.declare_exchange("amq.mine", ExchangeSpec::new(ExchangeKind::Fanout)),
            Err(CoreError::AccessRefused { .. })
        ));
        assert!(matches!(
            topology.bind(to_queue("x", "missing", "")),
            Err(CoreError::NotFound { kind: "queue", .. })
        ));
        assert!(matches!(
            topology.bind(to_queue("nope", "missing", "")),
            Err(CoreError::NotFound {
                kind: "exchange",
                ..
            })
        ));
        let mut internal = ExchangeSpec::new(ExchangeKind::Fanout);
        internal.internal = true;
        topology
            .declare_exchange("hidden", internal)
            .expect("declare");
        assert!(matches!(
            topology.route("hidden", "", &Message::default()),
            Err(CoreError::AccessRefused { .. })
        ));
        topology.add_queue("q");
        topology.bind(to_queue("x", "q", "#")).expect("bind");
        assert!(matches!(
            topology.delete_exchange("x", true),
            Err(CoreError::PreconditionFailed { .. })
        ));
        topology.remove_queue("q");
        topology.delete_exchange("x", true).expect("unused now");
        assert!(topology.exchange("x").is_none());
    }

    #[test]
    fn a_filter_argument_narrows_what_its_exchange_routes() {
        let mut topology = topology(&["italy", "big", "all"]);
        let filtered = |queue: &str, filter: &str| {
            let mut arguments = Headers::new();
            arguments.insert(FILTER_ARGUMENT.into(), HeaderValue::Text(filter.into()));
            Binding {
                arguments,
                ..to_queue("amq.topic", queue, "orders.#")
            }
        };
        topology
            .bind(filtered("italy", "country = 'IT'"))
            .expect("bind");
        topology
            .bind(filtered(
                "big",
                "amount > 100 AND properties.routing_key LIKE '%.new'",
            ))
            .expect("bind");
        topology
            .bind(to_queue("amq.topic", "all", "orders.#"))
            .expect("bind");
        let order = |country: &str, amount: i64| {
            Message::default()
                .with_header("country", HeaderValue::Text(country.into()))
                .with_header("amount", HeaderValue::Int(amount))
        };
        let route = |topology: &Topology, key: &str, message: &Message| {
            topology.route("amq.topic", key, message)
        };
        assert_eq!(
            route(&topology, "orders.new", &order("IT", 500)).expect("route"),
            ["all", "big", "italy"]
        );
        assert_eq!(
            route(&topology, "orders.old", &order("IT", 500)).expect("route"),
            ["all", "italy"]
        );
        assert_eq!(
            route(&topology, "orders.new", &order("FR", 5)).expect("route"),
            ["all"]
        );
        assert_eq!(
            route(&topology, "orders.new", &Message::default()).expect("route"),
            ["all"],
            "missing headers make the filters unknown, so false"
        );
        assert_eq!(
            route(&topology, "invoices", &order("IT", 500)).expect("route"),
            Vec::<String>::new(),
            "the filter comes on top of the key"
        );
        match topology.bind(filtered("all", "country = ")) {
            Err(CoreError::InvalidArgument { name, reason }) => {
                assert_eq!(name, FILTER_ARGUMENT);
                assert!(reason.contains("position 11"), "{reason}");
            }
            other => panic!("a bad filter is refused: {other:?}"),
        }
        let mut not_text = Headers::new();
        not_text.insert(FILTER_ARGUMENT.into(), HeaderValue::Int(1));
        assert!(matches!(
            topology.bind(Binding {
                arguments: not_text,
                ..to_queue("amq.topic", "all", "x")
            }),
            Err(CoreError::InvalidArgument { .. })
        ));
        topology
            .unbind(&filtered("italy", "country = 'IT'"))
            .expect("unbind");
        assert_eq!(
            route(&topology, "orders.old", &order("IT", 500)).expect("route"),
            ["all"]
        );
    }
}
