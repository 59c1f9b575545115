//! The management HTTP API and the admin CLI of the real `postino` binary, over real sockets:
//! status codes and bodies, what users' tags and permissions allow, the definitions round
//! trip between two servers, and the CLI's output and exit codes.

#[path = "support/api.rs"]
mod api;
mod support;

use std::process::Command;

use api::{Api, cli, succeeds};
use serde_json::{Value, json};

/// A server whose log is drained so that it never blocks on a full pipe.
fn server(dir: &std::path::Path) -> (std::process::Child, String, String) {
    let started = support::start_server(dir, &[]);
    let lines = started.lines;
    std::thread::spawn(move || lines.for_each(drop));
    (started.child, started.amqp, started.http)
}

#[test]
fn endpoints_answer_with_rabbitmq_codes_and_shapes() {
    let dir = tempfile::tempdir().expect("dir");
    let (child, _amqp, http) = server(dir.path());
    let anonymous = Api::new(&http, None);
    let (status, body, headers) = anonymous.call("GET", "/api/overview", None);
    assert_eq!(status, 401);
    assert_eq!(body["error"], "not_authorized");
    assert!(headers.contains_key("www-authenticate"));
    assert_eq!(
        Api::new(&http, Some(("guest", "wrong"))).status("GET", "/api/overview", None),
        401
    );

    let api = Api::new(&http, Some(("guest", "guest")));
    let overview = api.get("/api/overview");
    assert_eq!(overview["product_name"], "postino");
    assert!(
        overview["listeners"]
            .as_array()
            .is_some_and(|listeners| listeners.len() == 3)
    );

    let queue = "/api/queues/%2F/orders";
    let declare = r#"{"durable": true, "arguments": {"x-max-length": 100}}"#;
    assert_eq!(api.status("PUT", queue, Some(declare)), 201);
    assert_eq!(api.status("PUT", queue, Some(declare)), 204);
    let (status, body, _) = api.call("PUT", queue, Some(r#"{"arguments": {"x-max-length": 5}}"#));
    assert_eq!(status, 400, "a different declaration is refused: {body}");
    let (status, body, _) = api.call("PUT", "/api/queues/%2F/bad", Some("{not json"));
    assert_eq!((status, body["error"].as_str()), (400, Some("bad_request")));
    let (status, body, _) = api.call(
        "PUT",
        "/api/queues/%2F/bad",
        Some(r#"{"arguments": {"x-max-length": "ten"}}"#),
    );
    assert_eq!(status, 400);
    assert!(
        body["reason"]
            .as_str()
            .is_some_and(|reason| reason.contains("x-max-length"))
    );

    assert_eq!(
        api.status(
            "PUT",
            "/api/exchanges/%2F/events",
            Some(r#"{"type": "topic"}"#)
        ),
        201
    );
    assert_eq!(
        api.status(
            "PUT",
            "/api/exchanges/%2F/odd",
            Some(r#"{"type": "sideways"}"#)
        ),
        400
    );
    let (status, _, headers) = api.call(
        "POST",
        "/api/bindings/%2F/e/events/q/orders",
        Some(r#"{"routing_key": "order.*"}"#),
    );
    assert_eq!(status, 201);
    assert_eq!(
        headers
            .get("location")
            .and_then(|value| value.to_str().ok()),
        Some("order.*")
    );
    let bindings = api.get("/api/bindings/%2F/e/events/q/orders");
    assert_eq!(bindings[0]["properties_key"], "order.*");

    for key in ["order.created", "order.paid", "invoice.sent"] {
        let (status, body, _) = api.call(
            "POST",
            "/api/exchanges/%2F/events/publish",
            Some(&json!({ "routing_key": key, "payload": key, "properties": { "delivery_mode": 2 } }).to_string()),
        );
        assert_eq!(status, 200);
        assert_eq!(body["routed"], key.starts_with("order."), "{key}");
    }
    let described = api.get(queue);
    assert_eq!(described["messages_ready"], 2);
    assert_eq!(described["arguments"]["x-max-length"], 100);
    assert_eq!(described["message_stats"]["publish"], 2);

    let (status, got, _) = api.call(
        "POST",
        &format!("{queue}/get"),
        Some(r#"{"count": 1, "ackmode": "ack_requeue_false", "encoding": "auto"}"#),
    );
    assert_eq!(status, 200);
    assert_eq!(got[0]["payload"], "order.created");
    assert_eq!(got[0]["properties"]["delivery_mode"], 2);
    assert_eq!(got[0]["message_count"], 1);
    let (status, got, _) = api.call(
        "POST",
        &format!("{queue}/get"),
        Some(r#"{"count": 5, "ackmode": "ack_requeue_true"}"#),
    );
    assert_eq!((status, got.as_array().map(Vec::len)), (200, Some(1)));
    assert_eq!(api.get(queue)["messages_ready"], 1, "requeued");
    assert_eq!(
        api.status(
            "POST",
            &format!("{queue}/get"),
            Some(r#"{"ackmode": "keep"}"#)
        ),
        400
    );
    assert_eq!(
        api.status("DELETE", &format!("{queue}/contents"), None),
        204
    );
    assert_eq!(api.get(queue)["messages_ready"], 0);

    // A binding with a content filter: only orders over 100 go through it.
    let (status, body, _) = api.call(
        "POST",
        "/api/bindings/%2F/e/events/q/orders",
        Some(r#"{"routing_key": "big.*", "arguments": {"x-filter": "amount >"}}"#),
    );
    assert_eq!(status, 400, "a filter that does not parse: {body}");
    assert!(
        body["reason"]
            .as_str()
            .is_some_and(|reason| reason.contains("position 9")),
        "{body}"
    );
    let (status, _, _) = api.call(
        "POST",
        "/api/bindings/%2F/e/events/q/orders",
        Some(r#"{"routing_key": "big.*", "arguments": {"x-filter": "amount > 100"}}"#),
    );
    assert_eq!(status, 201);
    for (amount, routed) in [(500, true), (5, false)] {
        let (status, body, _) = api.call(
            "POST",
            "/api/exchanges/%2F/events/publish",
            Some(&json!({ "routing_key": "big.order", "payload": "x", "properties": { "headers": { "amount": amount } } }).to_string()),
        );
        assert_eq!(status, 200);
        assert_eq!(body["routed"], routed, "amount {amount}");
    }
    assert_eq!(api.get(queue)["messages_ready"], 1);
    assert_eq!(
        api.status("DELETE", &format!("{queue}/contents"), None),
        204
    );

    for index in 0..5 {
        assert_eq!(
            api.status("PUT", &format!("/api/queues/%2F/page.{index}"), None),
            201
        );
    }
    let page = api.get("/api/queues/%2F?page=3&page_size=2&name=page.");
    assert_eq!(page["filtered_count"], 5);
    assert_eq!(page["total_count"], 6);
    assert_eq!(page["items"][0]["name"], "page.4");
    assert_eq!(
        api.status("GET", "/api/queues/%2F?page=9&page_size=2", None),
        400
    );

    assert_eq!(
        api.status(
            "PUT",
            "/api/streams/%2F/clicks",
            Some(r#"{"partitions": 2}"#)
        ),
        201
    );
    assert_eq!(
        api.status(
            "PUT",
            "/api/streams/%2F/clicks",
            Some(r#"{"partitions": 3}"#)
        ),
        204
    );
    let stream = api.get("/api/streams/%2F/clicks");
    assert_eq!(
        stream["partition_offsets"].as_array().map(Vec::len),
        Some(3)
    );
    assert_eq!(
        api.status("PUT", "/api/streams/%2F/zero", Some(r#"{"partitions": 0}"#)),
        400
    );
    let queues = api.get("/api/queues/%2F");
    assert!(queues.as_array().is_some_and(|queues| {
        queues
            .iter()
            .any(|queue| queue["name"] == "clicks" && queue["type"] == "stream")
    }));

    assert_eq!(api.status("GET", "/api/queues/nowhere", None), 404);
    assert_eq!(api.status("GET", "/api/queues/%2F/missing", None), 404);
    assert_eq!(api.status("GET", "/api/no/such/thing", None), 404);
    assert_eq!(
        api.status("DELETE", "/api/exchanges/%2F/amq.direct", None),
        403
    );
    assert_eq!(
        api.status("DELETE", "/api/queues/%2F/page.0?if-empty=true", None),
        204
    );
    assert_eq!(api.status("DELETE", "/api/queues/%2F/page.0", None), 404);

    let document = api.get("/api/openapi.json");
    let paths = document["paths"].as_object().expect("paths");
    assert!(paths.len() >= 30, "{} paths", paths.len());
    for (path, operations) in paths {
        if operations.get("get").is_some() && !path.contains('{') {
            let status = api.status("GET", path, None);
            assert!(
                status == 200 || status == 503,
                "GET {path} answered {status}"
            );
        }
    }
    let metrics = ureq::get(format!("http://{http}/metrics"))
        .call()
        .expect("metrics")
        .body_mut()
        .read_to_string()
        .expect("text");
    assert!(
        metrics.contains("postino_queue_messages_published_total{vhost=\"/\",queue=\"orders\"} 3"),
        "{metrics}"
    );
    assert!(metrics.contains("# TYPE postino_alarm gauge"));
    support::stop(child);
}

#[test]
fn tags_and_permissions_decide_what_a_user_may_do() {
    let dir = tempfile::tempdir().expect("dir");
    let (child, _amqp, http) = server(dir.path());
    let admin = Api::new(&http, Some(("guest", "guest")));
    for (user, tags) in [
        ("watcher", "monitoring"),
        ("dev", "management"),
        ("app", ""),
    ] {
        let body = json!({ "password": "secret", "tags": tags }).to_string();
        assert_eq!(
            admin.status("PUT", &format!("/api/users/{user}"), Some(&body)),
            201
        );
    }
    assert_eq!(
        admin.status("PUT", "/api/users/nobody", Some("{}")),
        400,
        "a new user needs a password"
    );
    let patterns = r#"{"configure": "^dev\\.", "write": "^dev\\.", "read": ".*"}"#;
    assert_eq!(
        admin.status("PUT", "/api/permissions/%2F/dev", Some(patterns)),
        201
    );
    assert_eq!(
        admin.status(
            "PUT",
            "/api/permissions/%2F/dev",
            Some(r#"{"configure": "(", "write": "", "read": ""}"#)
        ),
        400
    );
    assert_eq!(admin.status("PUT", "/api/vhosts/hidden", None), 201);
    assert_eq!(admin.status("PUT", "/api/queues/%2F/shared", None), 201);

    let app = Api::new(&http, Some(("app", "secret")));
    assert_eq!(
        app.status("GET", "/api/overview", None),
        403,
        "no management tag"
    );

    let watcher = Api::new(&http, Some(("watcher", "secret")));
    assert_eq!(watcher.get("/api/vhosts").as_array().map(Vec::len), Some(2));
    assert_eq!(watcher.status("GET", "/api/queues/%2F/shared", None), 200);
    assert_eq!(watcher.status("PUT", "/api/queues/%2F/mine", None), 403);
    assert_eq!(watcher.status("GET", "/api/users", None), 403);
    assert_eq!(watcher.status("GET", "/api/definitions", None), 403);

    let dev = Api::new(&http, Some(("dev", "secret")));
    assert_eq!(
        dev.get("/api/vhosts"),
        json!([{ "name": "/", "description": "", "tags": [] }])
    );
    assert_eq!(dev.status("GET", "/api/queues/hidden", None), 403);
    assert_eq!(dev.status("PUT", "/api/queues/%2F/dev.jobs", None), 201);
    let (status, body, _) = dev.call("PUT", "/api/queues/%2F/other", None);
    assert_eq!(status, 403);
    assert!(
        body["reason"]
            .as_str()
            .is_some_and(|reason| reason.contains("configure")),
        "{body}"
    );
    assert_eq!(dev.status("DELETE", "/api/queues/%2F/shared", None), 403);
    assert_eq!(dev.status("PUT", "/api/vhosts/mine", None), 403);
    assert_eq!(
        dev.status(
            "POST",
            "/api/exchanges/%2F/amq.default/publish",
            Some(r#"{"routing_key": "shared", "payload": "x"}"#)
        ),
        403
    );
    assert_eq!(
        dev.status(
            "POST",
            "/api/queues/%2F/shared/get",
            Some(r#"{"ackmode": "ack_requeue_true"}"#)
        ),
        200,
        "read is .*"
    );

    assert_eq!(admin.status("DELETE", "/api/users/dev", None), 204);
    assert_eq!(
        dev.status("GET", "/api/overview", None),
        401,
        "a deleted user cannot log in"
    );
    assert_eq!(
        admin.status("DELETE", "/api/permissions/%2F/dev", None),
        404,
        "its permissions went with it"
    );
    support::stop(child);
}

#[test]
fn cli_commands_drive_a_running_server_with_reliable_exit_codes() {
    let dir = tempfile::tempdir().expect("dir");
    let (child, _amqp, http) = server(dir.path());
    succeeds(
        &http,
        &[
            "queues",
            "declare",
            "orders",
            "--argument",
            "x-max-length=10",
        ],
    );
    succeeds(
        &http,
        &["exchanges", "declare", "events", "--type", "fanout"],
    );
    succeeds(
        &http,
        &[
            "bindings",
            "declare",
            "--source",
            "events",
            "--destination",
            "orders",
        ],
    );
    succeeds(
        &http,
        &["streams", "declare", "clicks", "--partitions", "2"],
    );
    let table = succeeds(&http, &["queues", "list"]);
    let header = table.lines().next().expect("a header");
    assert!(
        header.starts_with("vhost") && header.contains("messages"),
        "{table}"
    );
    assert!(
        table
            .lines()
            .any(|line| line.contains("orders") && line.contains("classic")),
        "{table}"
    );
    let listed: Value =
        serde_json::from_str(&succeeds(&http, &["--json", "queues", "list"])).expect("JSON");
    let orders = listed
        .as_array()
        .and_then(|queues| queues.iter().find(|queue| queue["name"] == "orders"))
        .expect("orders is listed");
    assert_eq!(orders["arguments"]["x-max-length"], 10);
    let streams = succeeds(&http, &["streams", "list"]);
    assert!(
        streams
            .lines()
            .any(|line| line.contains("clicks") && line.contains(" 2 ")),
        "{streams}"
    );
    let status = succeeds(&http, &["status"]);
    assert!(
        status.contains("queues 1") && status.contains("listening http"),
        "{status}"
    );

    let missing = cli(&http, &["queues", "delete", "nope"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("queue 'nope' not found"));
    assert_eq!(cli(&http, &["queues", "frobnicate"]).status.code(), Some(2));
    assert_eq!(
        cli(&http, &["queues", "declare", "q", "--argument", "novalue"])
            .status
            .code(),
        Some(2)
    );
    let wrong = Command::new(env!("CARGO_BIN_EXE_postino"))
        .args([
            "--url",
            &format!("http://{http}"),
            "--password",
            "wrong",
            "status",
        ])
        .output()
        .expect("run");
    assert_eq!(
        wrong.status.code(),
        Some(1),
        "refused credentials are a server error"
    );
    let unused = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let closed = unused.local_addr().expect("address").to_string();
    drop(unused);
    let unreachable = cli(&closed, &["status"]);
    assert_eq!(unreachable.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&unreachable.stderr).contains("cannot reach"));

    succeeds(&http, &["queues", "purge", "orders"]);
    succeeds(&http, &["queues", "delete", "orders", "--if-empty"]);
    assert!(!succeeds(&http, &["queues", "list"]).contains("orders"));
    support::stop(child);
}

#[test]
fn definitions_exported_from_one_server_recreate_its_topology_on_another() {
    let first_dir = tempfile::tempdir().expect("dir");
    let (first, _amqp, first_http) = server(first_dir.path());
    succeeds(&first_http, &["vhosts", "create", "shop"]);
    succeeds(
        &first_http,
        &["users", "create", "clerk", "s3cret", "--tags", "management"],
    );
    succeeds(
        &first_http,
        &[
            "permissions",
            "declare",
            "clerk",
            "--vhost",
            "shop",
            "--configure",
            "^cart",
        ],
    );
    succeeds(
        &first_http,
        &[
            "queues",
            "declare",
            "carts",
            "--vhost",
            "shop",
            "--argument",
            "x-message-ttl=60000",
        ],
    );
    succeeds(
        &first_http,
        &[
            "queues",
            "declare",
            "ledger",
            "--vhost",
            "shop",
            "--argument",
            "x-queue-type=stream",
        ],
    );
    succeeds(
        &first_http,
        &[
            "exchanges",
            "declare",
            "checkout",
            "--vhost",
            "shop",
            "--type",
            "direct",
        ],
    );
    succeeds(
        &first_http,
        &[
            "bindings",
            "declare",
            "--vhost",
            "shop",
            "--source",
            "checkout",
            "--destination",
            "carts",
            "--routing-key",
            "new",
            "--argument",
            "x-filter=total > 0 AND currency IN ('EUR', 'CHF')",
        ],
    );
    succeeds(
        &first_http,
        &[
            "streams",
            "declare",
            "audit",
            "--vhost",
            "shop",
            "--partitions",
            "4",
            "--retention-ms",
            "86400000",
        ],
    );
    let file = first_dir.path().join("definitions.json");
    succeeds(
        &first_http,
        &[
            "definitions",
            "export",
            "--file",
            file.to_str().expect("UTF-8"),
        ],
    );
    let exported: Value =
        serde_json::from_str(&std::fs::read_to_string(&file).expect("read")).expect("JSON");
    support::stop(first);

    let second_dir = tempfile::tempdir().expect("dir");
    let (second, _amqp, second_http) = server(second_dir.path());
    let report = succeeds(
        &second_http,
        &["definitions", "import", file.to_str().expect("UTF-8")],
    );
    assert!(
        report.contains("1 queues, 2 streams, 1 bindings"),
        "{report}"
    );
    let api = Api::new(&second_http, Some(("guest", "guest")));
    let again = api.get("/api/definitions");
    for key in [
        "users",
        "vhosts",
        "permissions",
        "exchanges",
        "queues",
        "bindings",
        "streams",
    ] {
        assert_eq!(
            again[key], exported[key],
            "{key} differ after the round trip"
        );
    }
    assert_eq!(
        api.get("/api/streams/shop/audit")["retention_ms"],
        86_400_000
    );
    let clerk = Api::new(&second_http, Some(("clerk", "s3cret")));
    assert_eq!(
        clerk.status("GET", "/api/queues/shop", None),
        200,
        "the password hash came along"
    );

    let (status, body, _) = api.call(
        "POST",
        "/api/definitions",
        Some(r#"{"queues": [{"name": "q", "vhost": "nowhere"}]}"#),
    );
    assert_eq!(status, 400);
    assert!(
        body["reason"]
            .as_str()
            .is_some_and(|reason| reason.contains("queues[0]")),
        "{body}"
    );
    assert_eq!(
        api.status(
            "POST",
            "/api/definitions",
            Some(
                r#"{"exchanges": [{"name": "x", "type": "nope"}], "queues": [{"name": "never"}]}"#
            )
        ),
        400
    );
    assert_eq!(
        api.status("GET", "/api/queues/%2F/never", None),
        404,
        "a malformed document changes nothing"
    );
    support::stop(second);
}
