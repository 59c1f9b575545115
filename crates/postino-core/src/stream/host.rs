//! A virtual host's streams: declare, look up, delete, reopen after a restart, and producer
//! ids. Streams share the host's namespace with queues (as RabbitMQ's stream queues do), so a
//! name is a queue or a stream, never both.

use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError};

use crate::error::CoreError;
use crate::stream::{Stream, StreamSpec};
use crate::vhost::{VirtualHost, escape_name, unescape_name};

fn streams_dir(dir: &Path) -> PathBuf {
    dir.join("streams")
}

impl VirtualHost {
    /// Declares a stream and starts its partitions' owners; returns it and whether it was
    /// created. A stream of a host with a directory is durable.
    ///
    /// # Errors
    /// `InvalidArgument` for a bad spec; `PreconditionFailed` when a queue has the name or the
    /// stream exists with a different spec (grow it with [`Stream::add_partitions`]); storage
    /// errors; `Definitions` when its spec cannot be saved.
    pub fn declare_stream(
        &self,
        name: &str,
        spec: StreamSpec,
    ) -> Result<(Arc<Stream>, bool), CoreError> {
        let mut state = self.lock();
        if let Some(existing) = state.streams.get(name) {
            if existing.spec() != spec {
                return Err(CoreError::PreconditionFailed {
                    reason: format!("stream '{name}' exists with different properties"),
                });
            }
            return Ok((Arc::clone(existing), false));
        }
        if state.queues.contains_key(name) {
            return Err(CoreError::PreconditionFailed {
                reason: format!("'{name}' is a queue, not a stream"),
            });
        }
        let dir = self
            .dir
            .as_deref()
            .map(|dir| streams_dir(dir).join(escape_name(name)));
        let stream = Stream::create(name, dir, spec, &self.log_config, Arc::clone(&self.clock))?;
        state.topology.add_queue(name);
        state.streams.insert(name.to_owned(), Arc::clone(&stream));
        Ok((stream, true))
    }

    /// A stream, if it exists.
    #[must_use]
    pub fn stream(&self, name: &str) -> Option<Arc<Stream>> {
        self.lock().streams.get(name).cloned()
    }

    /// The names of the host's streams, sorted.
    #[must_use]
    pub fn stream_names(&self) -> Vec<String> {
        self.lock().streams.keys().cloned().collect()
    }

    /// Deletes a stream, its bindings and its records; its partitions' owners stop first.
    ///
    /// # Errors
    /// `NotFound`; `Definitions` when saving fails.
    pub async fn delete_stream(&self, name: &str) -> Result<(), CoreError> {
        let stream = {
            let mut state = self.lock();
            let stream = state
                .streams
                .remove(name)
                .ok_or_else(|| CoreError::NotFound {
                    kind: "stream",
                    name: name.to_owned(),
                })?;
            state.topology.remove_queue(name);
            self.save_definitions(&state)?;
            stream
        };
        if let Err(error) = stream.close().await {
            tracing::warn!(stream = name, %error, "deleted stream did not close cleanly");
        }
        if let Some(dir) = stream.dir()
            && let Err(error) = std::fs::remove_dir_all(dir)
        {
            tracing::warn!(path = %dir.display(), %error, "could not remove a deleted stream's data");
        }
        Ok(())
    }

    /// A producer id for an idempotent producer (Kafka's InitProducerId), never given before
    /// on this host.
    ///
    /// # Errors
    /// `Definitions` when the reservation cannot be saved.
    pub fn init_producer_id(&self) -> Result<i64, CoreError> {
        self.producer_ids
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .allocate()
    }

    /// Reopens the streams saved in the host's directory.
    pub(crate) fn open_streams(&self) -> Result<(), CoreError> {
        let Some(dir) = self.dir.as_deref().map(streams_dir) else {
            return Ok(());
        };
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(error) => {
                return Err(CoreError::Definitions {
                    path: dir.display().to_string(),
                    reason: error.to_string(),
                });
            }
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Some(name) = path
                .file_name()
                .and_then(|name| name.to_str())
                .and_then(unescape_name)
            else {
                tracing::warn!(path = %path.display(), "ignoring a stream directory whose name does not decode");
                continue;
            };
            if !path.join("stream.json").exists() {
                // A declaration that crashed before saving its spec: nothing was produced.
                tracing::warn!(path = %path.display(), "ignoring a stream directory without stream.json");
                continue;
            }
            let stream = Stream::open(&name, path, &self.log_config, Arc::clone(&self.clock))?;
            let mut state = self.lock();
            state.topology.add_queue(&name);
            state.streams.insert(name, stream);
        }
        Ok(())
    }
}
