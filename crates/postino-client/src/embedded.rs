//! A broker in the client's process: the core opened on a data directory, served by the
//! native API's own service over in-memory pipes, so that an embedded client goes through
//! exactly the code a server runs.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use hyper_util::rt::TokioIo;
use postino_core::{Broker, FlowLimits};
use postino_storage::LogConfig;
use postino_types::SystemClock;
use tokio::io::DuplexStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::Error;

/// How long closing waits for the service's connections to let go of the broker.
const RELEASE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);
/// Bytes a pipe between the client and the embedded service buffers each way.
const PIPE_BYTES: usize = 1 << 20;

#[derive(Debug)]
pub(crate) struct Embedded {
    broker: Arc<Broker>,
    /// The service's tasks: the pipe server, and any TCP listener.
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl Embedded {
    /// Opens the broker on `dir` and a channel to it.
    pub(crate) async fn open(dir: PathBuf) -> Result<(Self, Channel), Error> {
        std::fs::create_dir_all(&dir)?;
        let broker = Broker::open(
            Some(dir),
            LogConfig::default(),
            Arc::new(SystemClock),
            FlowLimits::default(),
        )?;
        let (pipes, incoming) = mpsc::channel::<DuplexStream>(16);
        let served = Arc::clone(&broker);
        let server = tokio::spawn(async move {
            use tokio_stream::StreamExt;
            let incoming =
                tokio_stream::wrappers::ReceiverStream::new(incoming).map(Ok::<_, std::io::Error>);
            if let Err(error) = postino_grpc::serve_incoming(incoming, served).await {
                tracing::error!(%error, "the embedded broker's service stopped");
            }
        });
        let connector = tower::service_fn(move |_: Uri| {
            let pipes = pipes.clone();
            async move {
                let (client, server) = tokio::io::duplex(PIPE_BYTES);
                pipes
                    .send(server)
                    .await
                    .map_err(|_| std::io::Error::other("the embedded broker stopped"))?;
                Ok::<_, std::io::Error>(TokioIo::new(client))
            }
        });
        let channel = Endpoint::from_static("http://embedded.postino")
            .connect_with_connector(connector)
            .await?;
        let embedded = Self {
            broker,
            tasks: Mutex::new(vec![server]),
        };
        Ok((embedded, channel))
    }

    /// Serves the broker on a TCP listener at `address` too.
    pub(crate) async fn listen(&self, address: &str) -> std::io::Result<std::net::SocketAddr> {
        let listener = tokio::net::TcpListener::bind(address).await?;
        let bound = listener.local_addr()?;
        let broker = Arc::clone(&self.broker);
        let task = tokio::spawn(async move {
            if let Err(error) = postino_grpc::serve(listener, broker).await {
                tracing::error!(%error, "the embedded broker's listener stopped");
            }
        });
        self.tasks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(task);
        Ok(bound)
    }

    /// Stops serving and closes the broker's logs; returns once the service's connections
    /// have let go of it (at most [`RELEASE_WAIT`]), so that the directory can be opened
    /// again.
    pub(crate) async fn close(self) -> Result<(), Error> {
        self.stop();
        self.broker.close().await?;
        let started = std::time::Instant::now();
        while Arc::strong_count(&self.broker) > 1 && started.elapsed() < RELEASE_WAIT {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        Ok(())
    }

    fn stop(&self) {
        for task in self
            .tasks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain(..)
        {
            task.abort();
        }
    }
}

impl Drop for Embedded {
    fn drop(&mut self) {
        self.stop();
    }
}
