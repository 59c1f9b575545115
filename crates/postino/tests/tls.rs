//! TLS on the real `postino` binary, with certificates made by rcgen: AMQPS with pika (a
//! client certificate logging in with EXTERNAL), HTTPS with ureq and with the admin CLI
//! (`--ca-cert`, `--client-cert`), client-certificate checks, and the configuration errors a
//! bad `[tls]` section gives.

#[path = "support/api.rs"]
mod api;
mod support;

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};

use api::Api;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};

/// A CA, and PEM files of certificates it signed, in a temporary directory.
struct Certificates {
    dir: tempfile::TempDir,
}

impl Certificates {
    fn new() -> Self {
        let certificates = Self {
            dir: tempfile::tempdir().expect("dir"),
        };
        let (ca, ca_key) = certificates.authority("ca", "postino test CA");
        let issuer = Issuer::new(ca, ca_key);
        certificates.leaf("server", &["localhost", "127.0.0.1"], "localhost", &issuer);
        certificates.leaf("ann", &[], "ann", &issuer);
        let (rogue, rogue_key) = certificates.authority("rogue-ca", "someone else's CA");
        certificates.leaf("rogue", &[], "ann", &Issuer::new(rogue, rogue_key));
        certificates
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn text(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }

    fn write(&self, name: &str, certificate: &str, key: &KeyPair) {
        std::fs::write(self.path(&format!("{name}.pem")), certificate).expect("write");
        std::fs::write(self.path(&format!("{name}.key")), key.serialize_pem()).expect("write");
    }

    /// A self-signed CA, written as `NAME.pem` and `NAME.key`.
    fn authority(&self, name: &str, common_name: &str) -> (CertificateParams, KeyPair) {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        let certificate = params.self_signed(&key).expect("self-signed");
        self.write(name, &certificate.pem(), &key);
        (params, key)
    }

    /// A certificate for `names` with subject CN `common_name`, signed by `issuer`.
    fn leaf(&self, name: &str, names: &[&str], common_name: &str, issuer: &Issuer<'_, KeyPair>) {
        let key = KeyPair::generate().expect("key");
        let names: Vec<String> = names.iter().map(|name| (*name).to_owned()).collect();
        let mut params = CertificateParams::new(names).expect("params");
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        let certificate = params.signed_by(&key, issuer).expect("signed");
        self.write(name, &certificate.pem(), &key);
    }

    /// The server's `[tls]` settings as environment variables.
    fn environment(&self, verify: &str) -> Vec<(String, String)> {
        vec![
            ("POSTINO_AMQP_TLS_LISTEN".into(), "127.0.0.1:0".into()),
            ("POSTINO_HTTP_TLS_LISTEN".into(), "127.0.0.1:0".into()),
            ("POSTINO_GRPC_TLS_LISTEN".into(), "127.0.0.1:0".into()),
            ("POSTINO_TLS_CERT_FILE".into(), self.text("server.pem")),
            ("POSTINO_TLS_KEY_FILE".into(), self.text("server.key")),
            ("POSTINO_TLS_CA_FILE".into(), self.text("ca.pem")),
            ("POSTINO_TLS_VERIFY".into(), verify.into()),
        ]
    }
}

/// A ureq agent trusting the test CA, presenting `client` (a name of [`Certificates`]).
fn https_agent(certificates: &Certificates, client: Option<&str>) -> ureq::Agent {
    use ureq::tls::{Certificate, ClientCert, PrivateKey, RootCerts, TlsConfig};
    let pem = |name: &str| std::fs::read(certificates.path(name)).expect("read");
    let ca = Certificate::from_pem(&pem("ca.pem")).expect("ca");
    let mut tls = TlsConfig::builder().root_certs(RootCerts::new_with_certs(&[ca]));
    if let Some(client) = client {
        let chain = Certificate::from_pem(&pem(&format!("{client}.pem"))).expect("cert");
        let key = PrivateKey::from_pem(&pem(&format!("{client}.key"))).expect("key");
        tls = tls.client_cert(Some(ClientCert::new_with_certs(&[chain], key)));
    }
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .tls_config(tls.build())
        .build()
        .into()
}

fn port(address: &str) -> &str {
    address.rsplit(':').next().expect("a port")
}

fn cli(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_postino"))
        .args(args)
        .env_remove("POSTINO_USER")
        .env_remove("POSTINO_PASSWORD")
        .output()
        .expect("run the CLI")
}

#[test]
fn amqps_and_https_serve_clients_with_and_without_certificates() {
    let certificates = Certificates::new();
    let data = tempfile::tempdir().expect("dir");
    let environment = certificates.environment("optional");
    let environment: Vec<(&str, &str)> = environment
        .iter()
        .map(|(name, value)| (name.as_str(), value.as_str()))
        .collect();
    let server = support::start_listening(
        data.path(),
        &environment,
        &["amqp", "amqps", "http", "https", "grpcs"],
    );
    let lines = server.lines;
    std::thread::spawn(move || lines.for_each(drop));
    let (amqps, https) = (&server.addresses["amqps"], &server.addresses["https"]);
    let admin = Api::new(&server.http, Some(("guest", "guest")));
    let body = r#"{"password": "ann-password", "tags": "management"}"#;
    assert_eq!(admin.status("PUT", "/api/users/ann", Some(body)), 201);
    let everything = r#"{"configure": ".*", "write": ".*", "read": ".*"}"#;
    assert_eq!(
        admin.status("PUT", "/api/permissions/%2F/ann", Some(everything)),
        201
    );

    // HTTPS: a client certificate without credentials is its user; none is 401.
    let whoami = format!("https://localhost:{}/api/whoami", port(https));
    let mut answer = https_agent(&certificates, Some("ann"))
        .get(&whoami)
        .call()
        .expect("an answer over TLS");
    assert_eq!(answer.status().as_u16(), 200);
    let text = answer.body_mut().read_to_string().expect("body");
    assert!(text.contains("\"ann\""), "{text}");
    let anonymous = https_agent(&certificates, None)
        .get(&whoami)
        .call()
        .expect("an answer");
    assert_eq!(
        anonymous.status().as_u16(),
        401,
        "no certificate, no credentials"
    );
    assert!(
        https_agent(&certificates, Some("rogue"))
            .get(&whoami)
            .call()
            .is_err(),
        "a certificate from another CA fails the handshake"
    );

    // The CLI over HTTPS: the test CA must be given; a client certificate stands for a user.
    let url = format!("https://localhost:{}", port(https));
    let ca = certificates.text("ca.pem");
    let status = cli(&["--url", &url, "--ca-cert", &ca, "status"]);
    assert_eq!(
        status.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    assert!(String::from_utf8_lossy(&status.stdout).contains("listening https"));
    let untrusted = cli(&["--url", &url, "status"]);
    assert_eq!(
        untrusted.status.code(),
        Some(3),
        "the public roots do not know the test CA"
    );
    let (cert, key) = (certificates.text("ann.pem"), certificates.text("ann.key"));
    let listed = cli(&[
        "--url",
        &url,
        "--ca-cert",
        &ca,
        "--client-cert",
        &cert,
        "--client-key",
        &key,
        "queues",
        "list",
    ]);
    assert_eq!(
        listed.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&listed.stderr)
    );

    // gRPC over TLS: the client certificate is the caller (ann may use `annex`, guest may not).
    assert_eq!(admin.status("PUT", "/api/vhosts/annex", None), 201);
    assert_eq!(
        admin.status("PUT", "/api/permissions/annex/ann", Some(everything)),
        201
    );
    assert_eq!(admin.status("PUT", "/api/queues/annex/inbox", None), 201);
    grpc_over_tls(&certificates, port(&server.addresses["grpcs"]));

    // AMQPS with pika: EXTERNAL as the certificate's user.
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/pika_tls.py");
    let mut pika = Command::new("python3")
        .arg(script)
        .args([port(amqps), port(&server.amqp), &ca, &cert, &key])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run python3 (installed with pika by .ci/run)");
    let mut output = BufReader::new(pika.stdout.take().expect("stdout")).lines();
    let first = output.next().and_then(Result::ok).unwrap_or_default();
    assert_eq!(first, "connected", "pika logged in over TLS");
    let connections = admin.get("/api/connections");
    let tls = connections
        .as_array()
        .and_then(|all| {
            all.iter()
                .find(|each| each["user_provided_name"] == "pika-tls")
        })
        .unwrap_or_else(|| panic!("pika's connection is listed: {connections}"));
    assert_eq!(tls["ssl"], true);
    assert_eq!(tls["user"], "ann");
    assert_eq!(tls["auth_mechanism"], "EXTERNAL");
    pika.stdin
        .take()
        .expect("stdin")
        .write_all(b"done\n")
        .expect("tell pika to go on");
    let rest: Vec<String> = output.map_while(Result::ok).collect();
    let exit = pika.wait().expect("pika ends");
    assert!(exit.success(), "{rest:?}");
    assert!(
        rest.iter()
            .any(|line| line.starts_with("plain TCP refused EXTERNAL")),
        "{rest:?}"
    );
    assert_eq!(rest.last().map(String::as_str), Some("tls ok"));
    support::stop(server.child);
}

/// The server's stderr when it refuses to start, and its exit code.
fn refused(environment: &[(&str, &str)]) -> (Option<i32>, String) {
    let data = tempfile::tempdir().expect("dir");
    let output = Command::new(env!("CARGO_BIN_EXE_postino"))
        .args([
            "server",
            "--amqp-listen",
            "127.0.0.1:0",
            "--http-listen",
            "off",
            "--grpc-listen",
            "off",
            "--data-dir",
        ])
        .arg(data.path())
        .envs(environment.iter().copied())
        .output()
        .expect("run the server");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn a_bad_tls_section_stops_the_server_naming_the_key() {
    let certificates = Certificates::new();
    let (cert, key, ca) = (
        certificates.text("server.pem"),
        certificates.text("server.key"),
        certificates.text("ca.pem"),
    );
    let listen = ("POSTINO_AMQP_TLS_LISTEN", "127.0.0.1:0");
    let cases: [(&[(&str, &str)], &str); 5] = [
        (&[listen], "tls.cert_file"),
        (&[listen, ("POSTINO_TLS_CERT_FILE", &cert)], "tls.key_file"),
        (
            &[
                listen,
                ("POSTINO_TLS_CERT_FILE", &ca),
                ("POSTINO_TLS_KEY_FILE", &key),
            ],
            "tls.key_file",
        ),
        (
            &[
                listen,
                ("POSTINO_TLS_CERT_FILE", &cert),
                ("POSTINO_TLS_KEY_FILE", &key),
                ("POSTINO_TLS_VERIFY", "required"),
            ],
            "tls.ca_file",
        ),
        (
            &[
                listen,
                ("POSTINO_TLS_CERT_FILE", "/nonexistent/server.pem"),
                ("POSTINO_TLS_KEY_FILE", &key),
            ],
            "tls.cert_file",
        ),
    ];
    for (environment, key) in cases {
        let (code, stderr) = refused(environment);
        assert_eq!(code, Some(2), "{environment:?}: {stderr}");
        assert!(
            stderr.contains(key),
            "{environment:?} names {key}: {stderr}"
        );
    }
    let (code, stderr) = refused(&[("POSTINO_TLS_VERIFY", "sometimes")]);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("tls.verify"), "{stderr}");
}

#[test]
fn required_client_certificates_refuse_a_client_without_one() {
    let certificates = Certificates::new();
    let data = tempfile::tempdir().expect("dir");
    let environment = certificates.environment("required");
    let environment: Vec<(&str, &str)> = environment
        .iter()
        .map(|(name, value)| (name.as_str(), value.as_str()))
        .collect();
    let server = support::start_listening(data.path(), &environment, &["amqp", "https"]);
    let lines = server.lines;
    std::thread::spawn(move || lines.for_each(drop));
    let whoami = format!(
        "https://localhost:{}/api/whoami",
        port(&server.addresses["https"])
    );
    assert!(
        https_agent(&certificates, None)
            .get(&whoami)
            .call()
            .is_err(),
        "without a client certificate the handshake fails"
    );
    let answer = https_agent(&certificates, Some("ann"))
        .get(&whoami)
        .call()
        .expect("an answer over TLS");
    assert_eq!(
        answer.status().as_u16(),
        401,
        "a certified user the broker does not know is not logged in"
    );
    support::stop(server.child);
}

/// Polls `annex/inbox` over gRPC with TLS on `port`: as ann by her certificate, then as guest
/// (no certificate, no credentials), whom the vhost refuses.
fn grpc_over_tls(certificates: &Certificates, port: &str) {
    use postino_grpc::QueuesClient;
    use postino_grpc::proto::PollRequest;
    use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
    let pem = |name: &str| std::fs::read(certificates.path(name)).expect("read");
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(pem("ca.pem")))
        .domain_name("localhost");
    let endpoint = format!("https://127.0.0.1:{port}");
    let poll = || PollRequest {
        vhost: "annex".into(),
        queue: "inbox".into(),
        ..PollRequest::default()
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let ann = Identity::from_pem(pem("ann.pem"), pem("ann.key"));
        let channel = Channel::from_shared(endpoint.clone())
            .expect("endpoint")
            .tls_config(tls.clone().identity(ann))
            .expect("tls")
            .connect()
            .await
            .expect("a TLS connection with a client certificate");
        let polled = QueuesClient::new(channel)
            .poll(poll())
            .await
            .expect("ann polls her vhost");
        assert!(polled.into_inner().delivery.is_none());
        let channel = Channel::from_shared(endpoint)
            .expect("endpoint")
            .tls_config(tls)
            .expect("tls")
            .connect()
            .await
            .expect("a TLS connection without one");
        let refused = QueuesClient::new(channel)
            .poll(poll())
            .await
            .expect_err("guest has no permission on annex");
        assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    });
}
