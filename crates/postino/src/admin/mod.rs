//! The admin CLI: `postino [--url URL] [--user U --password P] [--json] <noun> <verb>`, a client
//! of the management HTTP API. Table output by default, the API's JSON with `--json`. Exit
//! codes: 0 success, 1 the server reported an error, 2 bad usage, 3 the server cannot be
//! reached.

use std::process::ExitCode;

use base64::Engine;
use clap::Args;
use serde_json::{Value, json};

mod commands;
mod nouns;

pub use nouns::Noun;

/// How to reach the management API; every admin command takes these.
#[derive(Debug, Clone, Args)]
pub struct Target {
    /// The management API (also `POSTINO_URL`).
    #[arg(
        long,
        global = true,
        env = "POSTINO_URL",
        default_value = "http://127.0.0.1:15672"
    )]
    url: String,
    /// The user to authenticate as (also `POSTINO_USER`; default `guest`, or with
    /// `--client-cert` the user the certificate names).
    #[arg(long, global = true, env = "POSTINO_USER")]
    user: Option<String>,
    /// Its password (also `POSTINO_PASSWORD`).
    #[arg(
        long,
        global = true,
        env = "POSTINO_PASSWORD",
        default_value = "guest",
        hide_env_values = true
    )]
    password: String,
    /// JSON instead of a table: the API's JSON for admin commands, one object per row for
    /// `bench` and `sim`.
    #[arg(long, global = true)]
    json: bool,
    /// With an `https://` URL: the CA certificates (PEM) the server's certificate must chain
    /// to, instead of the public web's roots (also `POSTINO_CA_CERT`).
    #[arg(long, global = true, env = "POSTINO_CA_CERT", value_name = "FILE")]
    ca_cert: Option<std::path::PathBuf>,
    /// With an `https://` URL: a client certificate chain (PEM) to present; with no
    /// `--user` given, the server takes the user it names (also `POSTINO_CLIENT_CERT`).
    #[arg(
        long,
        global = true,
        env = "POSTINO_CLIENT_CERT",
        value_name = "FILE",
        requires = "client_key"
    )]
    client_cert: Option<std::path::PathBuf>,
    /// The private key (PEM) of `--client-cert` (also `POSTINO_CLIENT_KEY`).
    #[arg(
        long,
        global = true,
        env = "POSTINO_CLIENT_KEY",
        value_name = "FILE",
        requires = "client_cert"
    )]
    client_key: Option<std::path::PathBuf>,
}

impl Target {
    /// Whether `--json` was given.
    pub fn json(&self) -> bool {
        self.json
    }

    /// `--user`, if given.
    pub fn user(&self) -> Option<&str> {
        self.user.as_deref()
    }

    /// `--password`.
    pub fn password(&self) -> &str {
        &self.password
    }
}

/// Why a command failed, and its exit code.
#[derive(Debug)]
enum Failure {
    /// The server answered with an error.
    Server(String),
    /// The command's input is wrong.
    Usage(String),
    /// No answer from the server.
    Unreachable(String),
}

type Outcome<T> = Result<T, Failure>;

/// A path segment with every byte outside RFC 3986's unreserved set percent-encoded (so
/// that the vhost `/` is `%2F`).
fn segment(text: &str) -> String {
    text.bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                char::from(byte).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}

/// `name=value` pairs as a JSON object; a value that parses as JSON is taken as such.
fn arguments(pairs: &[String]) -> Outcome<Value> {
    let mut object = serde_json::Map::new();
    for pair in pairs {
        let (name, value) = pair
            .split_once('=')
            .ok_or_else(|| Failure::Usage(format!("argument {pair:?} is not NAME=VALUE")))?;
        let value = serde_json::from_str(value).unwrap_or_else(|_| Value::from(value));
        object.insert(name.to_owned(), value);
    }
    Ok(Value::Object(object))
}

struct Client {
    agent: ureq::Agent,
    base: String,
    /// Basic credentials (none when a client certificate stands for them).
    authorization: Option<String>,
}

impl Client {
    fn new(target: &Target) -> Outcome<Self> {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(std::time::Duration::from_secs(120)))
            .tls_config(tls_config(target)?)
            .build()
            .into();
        // A client certificate without a user: the server takes the user it names.
        let user = match (&target.user, &target.client_cert) {
            (Some(user), _) => Some(user.as_str()),
            (None, Some(_)) => None,
            (None, None) => Some("guest"),
        };
        let authorization = user.map(|user| {
            let credentials = format!("{user}:{}", target.password);
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(credentials)
            )
        });
        Ok(Self {
            agent,
            base: target.url.trim_end_matches('/').to_owned(),
            authorization,
        })
    }

    /// Sends a request; a 2xx answer's JSON body (`null` when empty), else the server's
    /// reason.
    fn request(&self, method: &str, path: &str, body: Option<&Value>) -> Outcome<Value> {
        self.request_with(method, path, body, None)
    }

    /// [`Client::request`] with one more header (a GET or DELETE only).
    fn request_with(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
        header: Option<(&str, &str)>,
    ) -> Outcome<Value> {
        let url = format!("{}{path}", self.base);
        let unreachable = |error: ureq::Error| Failure::Unreachable(format!("{url}: {error}"));
        let bodiless = match method {
            "GET" => Some(self.agent.get(&url)),
            "DELETE" => Some(self.agent.delete(&url)),
            _ => None,
        };
        let response = match (bodiless, body) {
            (Some(request), _) => {
                let mut request = request;
                if let Some(authorization) = &self.authorization {
                    request = request.header("authorization", authorization);
                }
                if let Some((name, value)) = header {
                    request = request.header(name, value);
                }
                request.call()
            }
            (None, body) => {
                let request = if method == "PUT" {
                    self.agent.put(&url)
                } else {
                    self.agent.post(&url)
                };
                let request = match &self.authorization {
                    Some(authorization) => request.header("authorization", authorization),
                    None => request,
                };
                request
                    .header("content-type", "application/json")
                    .send(body.unwrap_or(&Value::Null).to_string())
            }
        };
        let mut response = response.map_err(unreachable)?;
        let status = response.status();
        let text = response
            .body_mut()
            .read_to_string()
            .map_err(|error| Failure::Unreachable(format!("{url}: {error}")))?;
        let value = if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        if status.is_success() {
            Ok(value)
        } else {
            let reason = value["reason"]
                .as_str()
                .map_or_else(|| value.to_string(), str::to_owned);
            Err(Failure::Server(format!("{} {status}: {reason}", method)))
        }
    }
}

/// Reads a PEM file the TLS options name.
fn pem(path: &std::path::Path) -> Outcome<Vec<u8>> {
    std::fs::read(path).map_err(|error| Failure::Usage(format!("{}: {error}", path.display())))
}

/// The TLS settings the options ask for (the public web's roots by default).
fn tls_config(target: &Target) -> Outcome<ureq::tls::TlsConfig> {
    use ureq::tls::{Certificate, ClientCert, PemItem, PrivateKey, RootCerts, TlsConfig};
    let bad = |path: &std::path::Path, error: ureq::Error| {
        Failure::Usage(format!("{}: {error}", path.display()))
    };
    let certificates = |path: &std::path::Path| -> Outcome<Vec<Certificate<'static>>> {
        let text = pem(path)?;
        let mut found = Vec::new();
        for item in ureq::tls::parse_pem(&text) {
            if let PemItem::Certificate(certificate) = item.map_err(|error| bad(path, error))? {
                found.push(certificate);
            }
        }
        if found.is_empty() {
            return Err(Failure::Usage(format!(
                "{}: no PEM certificate",
                path.display()
            )));
        }
        Ok(found)
    };
    let mut config = TlsConfig::builder();
    if let Some(path) = &target.ca_cert {
        config = config.root_certs(RootCerts::new_with_certs(&certificates(path)?));
    }
    if let (Some(cert), Some(key)) = (&target.client_cert, &target.client_key) {
        let private = PrivateKey::from_pem(&pem(key)?).map_err(|error| bad(key, error))?;
        config = config.client_cert(Some(ClientCert::new_with_certs(
            &certificates(cert)?,
            private,
        )));
    }
    Ok(config.build())
}

/// Runs one admin command; the exit code follows the module's documentation.
pub fn run(target: &Target, noun: Noun) -> ExitCode {
    let outcome =
        Client::new(target).and_then(|client| commands::execute(&client, target.json, noun));
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Server(reason)) => {
            eprintln!("postino: {reason}");
            ExitCode::from(1)
        }
        Err(Failure::Usage(reason)) => {
            eprintln!("postino: {reason}");
            ExitCode::from(2)
        }
        Err(Failure::Unreachable(reason)) => {
            eprintln!("postino: cannot reach the management API: {reason}");
            ExitCode::from(3)
        }
    }
}

/// Columns of a listing: header and JSON field.
type Columns = &'static [(&'static str, &'static str)];

fn show(json: bool, value: &Value, columns: Columns) {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(value).unwrap_or_default()
        );
        return;
    }
    let rows: Vec<Vec<String>> = value
        .as_array()
        .map(|items| {
            items
                .iter()
                .map(|item| {
                    columns
                        .iter()
                        .map(|(_, field)| match &item[*field] {
                            Value::String(text) => text.clone(),
                            Value::Null => String::new(),
                            other => other.to_string(),
                        })
                        .collect()
                })
                .collect()
        })
        .unwrap_or_default();
    print!("{}", table(columns, &rows));
}

/// Rows under their headers, each column as wide as its widest cell.
fn table(columns: Columns, rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = columns.iter().map(|(header, _)| header.len()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        format!("{}\n", padded.join("  ").trim_end())
    };
    let mut text = line(columns.iter().map(|(header, _)| *header).collect());
    for row in rows {
        text.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    text
}

fn done(json: bool, value: &Value, message: &str) {
    if json {
        println!(
            "{}",
            if value.is_null() {
                json!({})
            } else {
                value.clone()
            }
        );
    } else {
        println!("{message}");
    }
}

fn listed(
    client: &Client,
    json: bool,
    kind: &str,
    vhost: Option<&str>,
    columns: Columns,
) -> Outcome<()> {
    let path = match vhost {
        Some(vhost) => format!("/api/{kind}/{}", segment(vhost)),
        None => format!("/api/{kind}"),
    };
    show(json, &client.request("GET", &path, None)?, columns);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_encode_the_default_vhost_and_arguments_read_json() {
        assert_eq!(segment("/"), "%2F");
        assert_eq!(segment("orders.v1"), "orders.v1");
        assert_eq!(segment("a b"), "a%20b");
        let parsed =
            arguments(&["x-max-length=10".into(), "x-queue-type=stream".into()]).expect("pairs");
        assert_eq!(
            parsed,
            json!({ "x-max-length": 10, "x-queue-type": "stream" })
        );
        assert!(matches!(
            arguments(&["novalue".into()]),
            Err(Failure::Usage(_))
        ));
    }

    #[test]
    fn tables_align_columns() {
        let text = table(
            &[("name", "name"), ("n", "n")],
            &[vec!["orders".into(), "3".into()]],
        );
        assert_eq!(text, "name    n\norders  3\n");
    }
}
