//! Each noun's verbs as management API requests, and how their answers print.

use serde_json::{Value, json};

use super::nouns::{
    BindingVerb, ConnectionVerb, DefinitionsVerb, ExchangeVerb, GroupVerb, Noun, PermissionVerb,
    QueueVerb, StreamVerb, UserVerb, VhostArg, VhostVerb,
};
use super::{Client, Columns, Failure, Outcome, arguments, done, listed, segment, show};

const QUEUE_COLUMNS: Columns = &[
    ("vhost", "vhost"),
    ("name", "name"),
    ("type", "type"),
    ("messages", "messages"),
    ("ready", "messages_ready"),
    ("unacked", "messages_unacknowledged"),
    ("consumers", "consumers"),
];

pub(super) fn execute(client: &Client, json: bool, noun: Noun) -> Outcome<()> {
    match noun {
        Noun::Status => {
            let overview = client.request("GET", "/api/overview", None)?;
            if json {
                show(true, &overview, &[]);
            } else {
                let totals = &overview["object_totals"];
                let messages = &overview["queue_totals"];
                println!(
                    "{} {} on {}\nuptime {} s\nvhosts {}  queues {}  streams {}  exchanges {}  consumers {}\nmessages {} (ready {}, unacked {}, delayed {})\nalarms {}",
                    overview["product_name"].as_str().unwrap_or("postino"),
                    overview["product_version"].as_str().unwrap_or_default(),
                    overview["node"].as_str().unwrap_or_default(),
                    overview["uptime_ms"].as_u64().unwrap_or(0) / 1000,
                    totals["vhosts"],
                    totals["queues"],
                    totals["streams"],
                    totals["exchanges"],
                    totals["consumers"],
                    messages["messages"],
                    messages["messages_ready"],
                    messages["messages_unacknowledged"],
                    messages["messages_delayed"],
                    overview["alarms"]
                        .as_array()
                        .filter(|alarms| !alarms.is_empty())
                        .map_or("none".to_owned(), |alarms| Value::from(alarms.clone())
                            .to_string()),
                );
                if let Some(listeners) = overview["listeners"].as_array() {
                    for listener in listeners {
                        println!(
                            "listening {} {}:{}",
                            listener["protocol"].as_str().unwrap_or_default(),
                            listener["ip_address"].as_str().unwrap_or_default(),
                            listener["port"]
                        );
                    }
                }
            }
            Ok(())
        }
        Noun::Queues(verb) => queues(client, json, verb),
        Noun::Exchanges(verb) => exchanges(client, json, verb),
        Noun::Bindings(verb) => bindings(client, json, verb),
        Noun::Streams(verb) => streams(client, json, verb),
        Noun::Groups(verb) => match verb {
            GroupVerb::List { vhost } => listed(
                client,
                json,
                "groups",
                vhost.as_deref(),
                &[
                    ("vhost", "vhost"),
                    ("name", "name"),
                    ("state", "state"),
                    ("generation", "generation"),
                ],
            ),
            GroupVerb::Delete { name, vhost } => {
                let path = format!("/api/groups/{}/{}", segment(&vhost.vhost), segment(&name));
                done(
                    json,
                    &client.request("DELETE", &path, None)?,
                    &format!("group {name} deleted"),
                );
                Ok(())
            }
        },
        Noun::Users(verb) => users(client, json, verb),
        Noun::Vhosts(verb) => vhosts(client, json, verb),
        Noun::Permissions(verb) => permissions(client, json, verb),
        Noun::Definitions(verb) => definitions(client, json, verb),
        Noun::Connections(verb) => connections(client, json, verb),
    }
}

fn connections(client: &Client, json: bool, verb: ConnectionVerb) -> Outcome<()> {
    match verb {
        ConnectionVerb::List { vhost } => {
            let path = match vhost {
                Some(vhost) => format!("/api/vhosts/{}/connections", segment(&vhost)),
                None => "/api/connections".to_owned(),
            };
            let columns: Columns = &[
                ("name", "name"),
                ("user", "user"),
                ("vhost", "vhost"),
                ("protocol", "protocol"),
                ("tls", "ssl"),
                ("channels", "channels"),
                ("recv_bytes", "recv_oct"),
                ("send_bytes", "send_oct"),
            ];
            show(json, &client.request("GET", &path, None)?, columns);
            Ok(())
        }
        ConnectionVerb::Close { name, reason } => {
            let path = format!("/api/connections/{}", segment(&name));
            let answer = client.request_with("DELETE", &path, None, Some(("x-reason", &reason)))?;
            done(json, &answer, &format!("connection {name} closed"));
            Ok(())
        }
    }
}

fn queues(client: &Client, json: bool, verb: QueueVerb) -> Outcome<()> {
    let path = |vhost: &VhostArg, name: &str| {
        format!("/api/queues/{}/{}", segment(&vhost.vhost), segment(name))
    };
    match verb {
        QueueVerb::List { vhost } => {
            listed(client, json, "queues", vhost.as_deref(), QUEUE_COLUMNS)
        }
        QueueVerb::Declare {
            name,
            vhost,
            durable,
            auto_delete,
            arguments: pairs,
        } => {
            let body = json!({ "durable": durable, "auto_delete": auto_delete, "arguments": arguments(&pairs)? });
            done(
                json,
                &client.request("PUT", &path(&vhost, &name), Some(&body))?,
                &format!("queue {name} declared"),
            );
            Ok(())
        }
        QueueVerb::Delete {
            name,
            vhost,
            if_unused,
            if_empty,
        } => {
            let query = format!("?if-unused={if_unused}&if-empty={if_empty}");
            let answer = client.request("DELETE", &(path(&vhost, &name) + &query), None)?;
            done(json, &answer, &format!("queue {name} deleted"));
            Ok(())
        }
        QueueVerb::Purge { name, vhost } => {
            let answer = client.request("DELETE", &(path(&vhost, &name) + "/contents"), None)?;
            done(json, &answer, &format!("queue {name} purged"));
            Ok(())
        }
    }
}

fn exchanges(client: &Client, json: bool, verb: ExchangeVerb) -> Outcome<()> {
    let path = |vhost: &VhostArg, name: &str| {
        format!("/api/exchanges/{}/{}", segment(&vhost.vhost), segment(name))
    };
    match verb {
        ExchangeVerb::List { vhost } => listed(
            client,
            json,
            "exchanges",
            vhost.as_deref(),
            &[
                ("vhost", "vhost"),
                ("name", "name"),
                ("type", "type"),
                ("durable", "durable"),
                ("internal", "internal"),
            ],
        ),
        ExchangeVerb::Declare {
            name,
            vhost,
            kind,
            durable,
            auto_delete,
            internal,
            arguments: pairs,
        } => {
            let body = json!({
                "type": kind,
                "durable": durable,
                "auto_delete": auto_delete,
                "internal": internal,
                "arguments": arguments(&pairs)?,
            });
            done(
                json,
                &client.request("PUT", &path(&vhost, &name), Some(&body))?,
                &format!("exchange {name} declared"),
            );
            Ok(())
        }
        ExchangeVerb::Delete {
            name,
            vhost,
            if_unused,
        } => {
            let answer = client.request(
                "DELETE",
                &(path(&vhost, &name) + &format!("?if-unused={if_unused}")),
                None,
            )?;
            done(json, &answer, &format!("exchange {name} deleted"));
            Ok(())
        }
    }
}

fn destination_kind(kind: &str) -> Outcome<&'static str> {
    match kind {
        "queue" | "q" => Ok("q"),
        "exchange" | "e" => Ok("e"),
        other => Err(Failure::Usage(format!(
            "destination type {other:?} is not queue or exchange"
        ))),
    }
}

fn bindings(client: &Client, json: bool, verb: BindingVerb) -> Outcome<()> {
    match verb {
        BindingVerb::List { vhost } => listed(
            client,
            json,
            "bindings",
            vhost.as_deref(),
            &[
                ("vhost", "vhost"),
                ("source", "source"),
                ("destination", "destination"),
                ("type", "destination_type"),
                ("routing_key", "routing_key"),
                ("properties_key", "properties_key"),
            ],
        ),
        BindingVerb::Declare {
            vhost,
            source,
            destination,
            destination_type,
            routing_key,
            arguments: pairs,
        } => {
            let path = format!(
                "/api/bindings/{}/e/{}/{}/{}",
                segment(&vhost.vhost),
                segment(&source),
                destination_kind(&destination_type)?,
                segment(&destination)
            );
            let body = json!({ "routing_key": routing_key, "arguments": arguments(&pairs)? });
            let answer = client.request("POST", &path, Some(&body))?;
            done(json, &answer, &format!("bound {source} to {destination}"));
            Ok(())
        }
        BindingVerb::Delete {
            vhost,
            source,
            destination,
            destination_type,
            properties_key,
        } => {
            let path = format!(
                "/api/bindings/{}/e/{}/{}/{}/{}",
                segment(&vhost.vhost),
                segment(&source),
                destination_kind(&destination_type)?,
                segment(&destination),
                segment(&properties_key)
            );
            done(
                json,
                &client.request("DELETE", &path, None)?,
                &format!("unbound {source} from {destination}"),
            );
            Ok(())
        }
    }
}

fn streams(client: &Client, json: bool, verb: StreamVerb) -> Outcome<()> {
    let path = |vhost: &VhostArg, name: &str| {
        format!("/api/streams/{}/{}", segment(&vhost.vhost), segment(name))
    };
    match verb {
        StreamVerb::List { vhost } => listed(
            client,
            json,
            "streams",
            vhost.as_deref(),
            &[
                ("vhost", "vhost"),
                ("name", "name"),
                ("partitions", "partitions"),
                ("messages", "messages"),
                ("bytes", "size_bytes"),
            ],
        ),
        StreamVerb::Declare {
            name,
            vhost,
            partitions,
            retention_ms,
            retention_bytes,
        } => {
            let body = json!({ "partitions": partitions, "retention_ms": retention_ms, "retention_bytes": retention_bytes });
            done(
                json,
                &client.request("PUT", &path(&vhost, &name), Some(&body))?,
                &format!("stream {name} declared"),
            );
            Ok(())
        }
        StreamVerb::Delete { name, vhost } => {
            done(
                json,
                &client.request("DELETE", &path(&vhost, &name), None)?,
                &format!("stream {name} deleted"),
            );
            Ok(())
        }
    }
}

fn users(client: &Client, json: bool, verb: UserVerb) -> Outcome<()> {
    match verb {
        UserVerb::List => {
            let listed = client.request("GET", "/api/users", None)?;
            let rows: Vec<Value> = listed
                .as_array()
                .into_iter()
                .flatten()
                .map(|user| {
                    let tags: Vec<&str> = user["tags"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(Value::as_str)
                        .collect();
                    json!({ "name": user["name"], "tags": tags.join(",") })
                })
                .collect();
            let rows = Value::Array(rows);
            show(
                json,
                if json { &listed } else { &rows },
                &[("name", "name"), ("tags", "tags")],
            );
            Ok(())
        }
        UserVerb::Create { name, secret, tags } => {
            let body = json!({ "password": secret, "tags": tags });
            done(
                json,
                &client.request(
                    "PUT",
                    &format!("/api/users/{}", segment(&name)),
                    Some(&body),
                )?,
                &format!("user {name} saved"),
            );
            Ok(())
        }
        UserVerb::Delete { name } => {
            done(
                json,
                &client.request("DELETE", &format!("/api/users/{}", segment(&name)), None)?,
                &format!("user {name} deleted"),
            );
            Ok(())
        }
    }
}

fn vhosts(client: &Client, json: bool, verb: VhostVerb) -> Outcome<()> {
    match verb {
        VhostVerb::List => listed(client, json, "vhosts", None, &[("name", "name")]),
        VhostVerb::Create { name } => {
            done(
                json,
                &client.request("PUT", &format!("/api/vhosts/{}", segment(&name)), None)?,
                &format!("vhost {name} created"),
            );
            Ok(())
        }
        VhostVerb::Delete { name } => {
            done(
                json,
                &client.request("DELETE", &format!("/api/vhosts/{}", segment(&name)), None)?,
                &format!("vhost {name} deleted"),
            );
            Ok(())
        }
    }
}

fn permissions(client: &Client, json: bool, verb: PermissionVerb) -> Outcome<()> {
    match verb {
        PermissionVerb::List => listed(
            client,
            json,
            "permissions",
            None,
            &[
                ("user", "user"),
                ("vhost", "vhost"),
                ("configure", "configure"),
                ("write", "write"),
                ("read", "read"),
            ],
        ),
        PermissionVerb::Declare {
            grantee: user,
            vhost,
            configure,
            write,
            read,
        } => {
            let path = format!(
                "/api/permissions/{}/{}",
                segment(&vhost.vhost),
                segment(&user)
            );
            let body = json!({ "configure": configure, "write": write, "read": read });
            done(
                json,
                &client.request("PUT", &path, Some(&body))?,
                &format!("permissions of {user} on {} set", vhost.vhost),
            );
            Ok(())
        }
        PermissionVerb::Delete {
            grantee: user,
            vhost,
        } => {
            let path = format!(
                "/api/permissions/{}/{}",
                segment(&vhost.vhost),
                segment(&user)
            );
            done(
                json,
                &client.request("DELETE", &path, None)?,
                &format!("permissions of {user} on {} cleared", vhost.vhost),
            );
            Ok(())
        }
    }
}

fn definitions(client: &Client, json: bool, verb: DefinitionsVerb) -> Outcome<()> {
    match verb {
        DefinitionsVerb::Export { file } => {
            let document = client.request("GET", "/api/definitions", None)?;
            let text = serde_json::to_string_pretty(&document).unwrap_or_default();
            match file {
                Some(path) => {
                    std::fs::write(&path, text + "\n").map_err(|error| {
                        Failure::Usage(format!("write {}: {error}", path.display()))
                    })?;
                    if !json {
                        println!("definitions written to {}", path.display());
                    }
                }
                None => println!("{text}"),
            }
            Ok(())
        }
        DefinitionsVerb::Import { file } => {
            let text = if file.as_os_str() == "-" {
                std::io::read_to_string(std::io::stdin())
                    .map_err(|error| Failure::Usage(format!("read standard input: {error}")))?
            } else {
                std::fs::read_to_string(&file)
                    .map_err(|error| Failure::Usage(format!("read {}: {error}", file.display())))?
            };
            let document: Value = serde_json::from_str(&text).map_err(|error| {
                Failure::Usage(format!("{}: not JSON: {error}", file.display()))
            })?;
            let report = client.request("POST", "/api/definitions", Some(&document))?;
            if json {
                println!("{report}");
            } else {
                let count = |key: &str| report[key].as_u64().unwrap_or(0);
                println!(
                    "imported {} vhosts, {} users, {} permissions, {} exchanges, {} queues, {} streams, {} bindings",
                    count("vhosts"),
                    count("users"),
                    count("permissions"),
                    count("exchanges"),
                    count("queues"),
                    count("streams"),
                    count("bindings")
                );
                for skipped in report["skipped"].as_array().into_iter().flatten() {
                    println!("skipped: {}", skipped.as_str().unwrap_or_default());
                }
            }
            Ok(())
        }
    }
}
