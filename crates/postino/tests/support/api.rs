//! A client of the management API for the integration tests: status, JSON body and headers
//! of each request.

use std::process::{Command, Output};

use base64::Engine;
use serde_json::Value;

/// A client of one server's API as `user`.
pub struct Api {
    agent: ureq::Agent,
    base: String,
    authorization: Option<String>,
}

impl Api {
    pub fn new(http: &str, user: Option<(&str, &str)>) -> Self {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        Self {
            agent,
            base: format!("http://{http}"),
            authorization: user.map(|(name, password)| {
                let pair = format!("{name}:{password}");
                format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(pair)
                )
            }),
        }
    }

    /// Sends a request; returns the status, the body as JSON (`null` when empty) and the
    /// response's headers.
    pub fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> (u16, Value, ureq::http::HeaderMap) {
        let url = format!("{}{path}", self.base);
        let mut request = ureq::http::Request::builder().method(method).uri(&url);
        if let Some(authorization) = &self.authorization {
            request = request.header("authorization", authorization);
        }
        let request = request
            .header("content-type", "application/json")
            .body(body.unwrap_or_default().to_owned())
            .expect("a request");
        let mut response = self.agent.run(request).expect("the server answers");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.body_mut().read_to_string().expect("a body");
        let value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (status, value, headers)
    }

    pub fn status(&self, method: &str, path: &str, body: Option<&str>) -> u16 {
        self.call(method, path, body).0
    }

    pub fn get(&self, path: &str) -> Value {
        let (status, value, _) = self.call("GET", path, None);
        assert_eq!(status, 200, "GET {path}: {value}");
        value
    }
}

/// Runs the admin CLI against the API at `http`.
#[allow(dead_code, reason = "each test binary uses the helpers it needs")]
pub fn cli(http: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_postino"))
        .arg("--url")
        .arg(format!("http://{http}"))
        .args(args)
        .env_remove("POSTINO_USER")
        .env_remove("POSTINO_PASSWORD")
        .output()
        .expect("run the CLI")
}

/// Runs the admin CLI and checks it exits 0; returns what it printed.
#[allow(dead_code, reason = "each test binary uses the helpers it needs")]
pub fn succeeds(http: &str, args: &[&str]) -> String {
    let output = cli(http, args);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("UTF-8")
}
