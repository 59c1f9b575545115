//! The admin CLI's nouns and verbs.

use clap::{Args, Subcommand};

#[derive(Debug, Args)]
pub struct VhostArg {
    /// The virtual host.
    #[arg(long, default_value = "/")]
    pub vhost: String,
}

/// The nouns.
#[derive(Debug, Subcommand)]
pub enum Noun {
    /// The node: version, totals, listeners, alarms.
    Status,
    /// Queues.
    #[command(subcommand)]
    Queues(QueueVerb),
    /// Exchanges.
    #[command(subcommand)]
    Exchanges(ExchangeVerb),
    /// Bindings.
    #[command(subcommand)]
    Bindings(BindingVerb),
    /// Streams.
    #[command(subcommand)]
    Streams(StreamVerb),
    /// Consumer groups.
    #[command(subcommand)]
    Groups(GroupVerb),
    /// Users.
    #[command(subcommand)]
    Users(UserVerb),
    /// Virtual hosts.
    #[command(subcommand)]
    Vhosts(VhostVerb),
    /// Permissions of users on virtual hosts.
    #[command(subcommand)]
    Permissions(PermissionVerb),
    /// The whole topology as one JSON document.
    #[command(subcommand)]
    Definitions(DefinitionsVerb),
    /// Client connections.
    #[command(subcommand)]
    Connections(ConnectionVerb),
}

#[derive(Debug, Subcommand)]
pub enum ConnectionVerb {
    /// List client connections (to one vhost with --vhost).
    List {
        #[arg(long)]
        vhost: Option<String>,
    },
    /// Close a connection, by the name `connections list` shows; its client is told why.
    #[command(alias = "delete")]
    Close {
        name: String,
        /// What the client is told.
        #[arg(long, default_value = "Closed via the postino CLI")]
        reason: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum QueueVerb {
    /// List queues (of one vhost with --vhost).
    List {
        #[arg(long)]
        vhost: Option<String>,
    },
    /// Declare a queue.
    #[command(alias = "create")]
    Declare {
        name: String,
        #[command(flatten)]
        vhost: VhostArg,
        /// Survive a restart (default true).
        #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
        durable: bool,
        #[arg(long)]
        auto_delete: bool,
        /// An argument `name=value` (value read as JSON when it parses, else as text), e.g.
        /// `x-max-length=1000` or `x-queue-type=stream`.
        #[arg(long = "argument", value_name = "NAME=VALUE")]
        arguments: Vec<String>,
    },
    /// Delete a queue.
    Delete {
        name: String,
        #[command(flatten)]
        vhost: VhostArg,
        /// Only if it has no consumers.
        #[arg(long)]
        if_unused: bool,
        /// Only if it holds no messages.
        #[arg(long)]
        if_empty: bool,
    },
    /// Remove a queue's ready messages.
    Purge {
        name: String,
        #[command(flatten)]
        vhost: VhostArg,
    },
}

#[derive(Debug, Subcommand)]
pub enum ExchangeVerb {
    /// List exchanges (of one vhost with --vhost).
    List {
        #[arg(long)]
        vhost: Option<String>,
    },
    /// Declare an exchange.
    #[command(alias = "create")]
    Declare {
        name: String,
        #[command(flatten)]
        vhost: VhostArg,
        /// direct, fanout, topic or headers.
        #[arg(long = "type")]
        kind: String,
        #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
        durable: bool,
        #[arg(long)]
        auto_delete: bool,
        #[arg(long)]
        internal: bool,
        #[arg(long = "argument", value_name = "NAME=VALUE")]
        arguments: Vec<String>,
    },
    /// Delete an exchange.
    Delete {
        name: String,
        #[command(flatten)]
        vhost: VhostArg,
        #[arg(long)]
        if_unused: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum BindingVerb {
    /// List bindings (of one vhost with --vhost).
    List {
        #[arg(long)]
        vhost: Option<String>,
    },
    /// Bind an exchange to a queue or another exchange.
    #[command(alias = "create")]
    Declare {
        #[command(flatten)]
        vhost: VhostArg,
        #[arg(long)]
        source: String,
        #[arg(long)]
        destination: String,
        /// queue or exchange.
        #[arg(long, default_value = "queue")]
        destination_type: String,
        #[arg(long, default_value = "")]
        routing_key: String,
        #[arg(long = "argument", value_name = "NAME=VALUE")]
        arguments: Vec<String>,
    },
    /// Remove a binding, named by its properties key (the routing key when it has no
    /// arguments; `list` shows it).
    Delete {
        #[command(flatten)]
        vhost: VhostArg,
        #[arg(long)]
        source: String,
        #[arg(long)]
        destination: String,
        #[arg(long, default_value = "queue")]
        destination_type: String,
        #[arg(long, default_value = "")]
        properties_key: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum StreamVerb {
    /// List streams (of one vhost with --vhost).
    List {
        #[arg(long)]
        vhost: Option<String>,
    },
    /// Declare a stream, or add partitions to one.
    #[command(alias = "create")]
    Declare {
        name: String,
        #[command(flatten)]
        vhost: VhostArg,
        #[arg(long, default_value_t = 1)]
        partitions: u32,
        /// Keep records this many milliseconds.
        #[arg(long)]
        retention_ms: Option<u64>,
        /// Keep at most this many bytes per partition.
        #[arg(long)]
        retention_bytes: Option<u64>,
    },
    /// Delete a stream and its records.
    Delete {
        name: String,
        #[command(flatten)]
        vhost: VhostArg,
    },
}

#[derive(Debug, Subcommand)]
pub enum GroupVerb {
    /// List consumer groups (of one vhost with --vhost).
    List {
        #[arg(long)]
        vhost: Option<String>,
    },
    /// Delete an empty consumer group and its committed offsets.
    Delete {
        name: String,
        #[command(flatten)]
        vhost: VhostArg,
    },
}

#[derive(Debug, Subcommand)]
pub enum UserVerb {
    /// List users.
    List,
    /// Create or update a user.
    #[command(alias = "declare")]
    Create {
        name: String,
        /// The new user's password.
        #[arg(value_name = "PASSWORD")]
        secret: String,
        /// Comma-separated tags: administrator, monitoring, management.
        #[arg(long, default_value = "")]
        tags: String,
    },
    /// Delete a user.
    Delete { name: String },
}

#[derive(Debug, Subcommand)]
pub enum VhostVerb {
    /// List virtual hosts.
    List,
    /// Create a virtual host.
    #[command(alias = "declare")]
    Create { name: String },
    /// Delete a virtual host and everything in it.
    Delete { name: String },
}

#[derive(Debug, Subcommand)]
pub enum PermissionVerb {
    /// List every permission.
    List,
    /// Set a user's permissions on a virtual host (regular expressions over resource names).
    #[command(alias = "create", alias = "set")]
    Declare {
        /// The user.
        #[arg(value_name = "USER")]
        grantee: String,
        #[command(flatten)]
        vhost: VhostArg,
        #[arg(long, default_value = ".*")]
        configure: String,
        #[arg(long, default_value = ".*")]
        write: String,
        #[arg(long, default_value = ".*")]
        read: String,
    },
    /// Clear a user's permissions on a virtual host.
    Delete {
        /// The user.
        #[arg(value_name = "USER")]
        grantee: String,
        #[command(flatten)]
        vhost: VhostArg,
    },
}

#[derive(Debug, Subcommand)]
pub enum DefinitionsVerb {
    /// Print the definitions document (or write it to --file).
    Export {
        #[arg(long)]
        file: Option<std::path::PathBuf>,
    },
    /// Import a definitions document (`-` reads standard input).
    Import { file: std::path::PathBuf },
}
