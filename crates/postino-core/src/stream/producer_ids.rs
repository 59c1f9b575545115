//! Producer ids for idempotent producers (Kafka's InitProducerId), never handed out twice, even
//! across restarts: ids are reserved in blocks, and the end of the reserved block is written
//! (atomically, synced) to `<host dir>/producer-ids` before any id of the block is given. A
//! restart starts at the saved end, so at most one block of ids is skipped.

use std::path::PathBuf;

use crate::definitions::write_atomically;
use crate::error::CoreError;

/// Ids reserved per write of the file: one sync per this many producers.
const BLOCK: i64 = 1000;

/// The next producer id of a host.
#[derive(Debug)]
pub(crate) struct ProducerIds {
    path: Option<PathBuf>,
    next: i64,
    reserved_until: i64,
}

impl ProducerIds {
    /// Reads the reservation saved at `path` (`None`: in memory, from 0).
    pub(crate) fn open(path: Option<PathBuf>) -> Result<Self, CoreError> {
        let saved = match &path {
            Some(path) if path.exists() => {
                let text =
                    std::fs::read_to_string(path).map_err(|error| CoreError::Definitions {
                        path: path.display().to_string(),
                        reason: error.to_string(),
                    })?;
                text.trim()
                    .parse::<i64>()
                    .ok()
                    .filter(|end| *end >= 0)
                    .ok_or_else(|| CoreError::Definitions {
                        path: path.display().to_string(),
                        reason: format!("{:?} is not a producer id", text.trim()),
                    })?
            }
            _ => 0,
        };
        Ok(Self {
            path,
            next: saved,
            reserved_until: saved,
        })
    }

    /// A producer id no producer of this host had before.
    pub(crate) fn allocate(&mut self) -> Result<i64, CoreError> {
        if self.next == self.reserved_until {
            let end = self.reserved_until + BLOCK;
            if let Some(path) = &self.path {
                write_atomically(path, end.to_string().as_bytes()).map_err(|error| {
                    CoreError::Definitions {
                        path: path.display().to_string(),
                        reason: error.to_string(),
                    }
                })?;
            }
            self.reserved_until = end;
        }
        let id = self.next;
        self.next += 1;
        Ok(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_never_reused_across_reopening() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().join("producer-ids");
        let mut ids = ProducerIds::open(Some(path.clone())).expect("opens");
        let first: Vec<i64> = (0..3).map(|_| ids.allocate().expect("allocated")).collect();
        assert_eq!(first, [0, 1, 2]);
        let mut reopened = ProducerIds::open(Some(path)).expect("reopens");
        let next = reopened.allocate().expect("allocated");
        assert!(next > 2, "id {next} was handed out before");
    }

    #[test]
    fn a_garbled_file_is_an_error_not_a_reset() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().join("producer-ids");
        std::fs::write(&path, "twelve").expect("written");
        assert!(matches!(
            ProducerIds::open(Some(path)),
            Err(CoreError::Definitions { .. })
        ));
    }
}
