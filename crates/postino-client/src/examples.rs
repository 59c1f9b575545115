//! What the documentation's examples run on: each example is a closure over a [`Client`],
//! run twice — on an embedded broker, then through a server on a loopback socket (the
//! native API's service on another broker, as `postino server` runs it) — each on a data
//! directory of its own that is removed afterwards.

use std::future::Future;

use crate::{Client, Error};

/// Runs `example` on an embedded client and on a client of a server; panics on a failure.
pub fn run<F, Fut>(example: F)
where
    F: Fn(Client) -> Fut,
    Fut: Future<Output = Result<(), Error>>,
{
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let root = std::env::temp_dir().join(format!(
            "postino-example-{}-{:x}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |since| since.as_nanos())
        ));
        let embedded = Client::embedded(root.join("embedded"))
            .await
            .expect("an embedded broker");
        example(embedded.clone())
            .await
            .expect("the example on an embedded broker");
        embedded.close().await.expect("close");

        let server = Client::embedded(root.join("server"))
            .await
            .expect("a broker to serve");
        let address = server.listen("127.0.0.1:0").await.expect("listen");
        let remote = Client::connect(&format!("http://{address}"))
            .await
            .expect("connect");
        example(remote).await.expect("the example through a server");
        server.close().await.expect("close");
        let _ = std::fs::remove_dir_all(&root);
    });
}
