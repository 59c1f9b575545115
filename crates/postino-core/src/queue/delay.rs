//! Delayed delivery: messages published with an `x-delay` header (ms, as RabbitMQ's delayed
//! message plugin names it) wait in a time-ordered index until they are due.
//!
//! The index is split into slots of `SLOT_MS`. In a queue with a directory, every slot is a
//! file of 16-byte entries (`offset: u64, due_ms: i64`, big-endian) that is read only when the
//! slot comes due, so memory holds one map entry per non-empty slot, not one per message: ten
//! million delayed messages cost disk. The files are a cache of what the log holds: a delayed
//! message's record carries its delay and its publish time, and opening a queue rebuilds the
//! slots from the log, so they need no sync.

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use postino_storage::LogError;
use postino_types::{HeaderValue, Message};

use crate::error::CoreError;

/// The application header that asks for a delay, in ms.
pub(crate) const HEADER: &str = "x-delay";
/// Width of one slot of the index.
const SLOT_MS: i64 = 1_000;
const ENTRY_BYTES: usize = 16;

/// The delay a message asks for, if positive.
pub(crate) fn delay_of(message: &Message) -> Option<u64> {
    let delay = match message.properties.headers.get(HEADER)? {
        HeaderValue::Int(delay) => *delay,
        HeaderValue::Text(text) => text.trim().parse().ok()?,
        _ => return None,
    };
    u64::try_from(delay).ok().filter(|delay| *delay > 0)
}

#[derive(Debug)]
enum Slot {
    /// Entries kept in memory (a queue without a directory, or the slot being drained).
    Memory(Vec<(u64, i64)>),
    /// Entries in the slot's file.
    File,
}

/// The delay index of one queue.
#[derive(Debug)]
pub(crate) struct Delays {
    dir: Option<PathBuf>,
    slots: BTreeMap<i64, Slot>,
    count: u64,
    /// No waiting message has a smaller offset (conservative: it only falls back when the
    /// index empties), so the queue keeps the log segments they are in.
    lowest_offset: Option<u64>,
}

fn io_error(path: &Path, error: std::io::Error) -> CoreError {
    CoreError::Storage(LogError::Io {
        op: "delay index",
        path: path.to_path_buf(),
        source: Arc::new(error),
    })
}

impl Delays {
    /// An empty index keeping its slots in `dir` (in memory without one); slot files left
    /// from before are removed, since the log they cache is read again on open.
    pub(crate) fn open(dir: Option<PathBuf>) -> Result<Self, CoreError> {
        if let Some(dir) = &dir {
            if dir.exists() {
                fs::remove_dir_all(dir).map_err(|error| io_error(dir, error))?;
            }
            fs::create_dir_all(dir).map_err(|error| io_error(dir, error))?;
        }
        Ok(Self {
            dir,
            slots: BTreeMap::new(),
            count: 0,
            lowest_offset: None,
        })
    }

    /// Messages waiting.
    pub(crate) fn len(&self) -> u64 {
        self.count
    }

    fn slot_path(&self, slot: i64) -> Option<PathBuf> {
        self.dir
            .as_ref()
            .map(|dir| dir.join(format!("{slot}.delay")))
    }

    /// An offset at or below every waiting message's, if any waits.
    pub(crate) fn lowest_offset(&self) -> Option<u64> {
        self.lowest_offset
    }

    /// Files `offset` as due at `due_ms`.
    pub(crate) fn add(&mut self, offset: u64, due_ms: i64) -> Result<(), CoreError> {
        let slot = due_ms.div_euclid(SLOT_MS);
        self.count += 1;
        self.lowest_offset = Some(
            self.lowest_offset
                .map_or(offset, |lowest| lowest.min(offset)),
        );
        // A slot already in memory (no directory, or a slot partly drained) stays there.
        if let Some(Slot::Memory(entries)) = self.slots.get_mut(&slot) {
            entries.push((offset, due_ms));
            return Ok(());
        }
        let Some(path) = self.slot_path(slot) else {
            self.slots
                .insert(slot, Slot::Memory(vec![(offset, due_ms)]));
            return Ok(());
        };
        let mut entry = [0u8; ENTRY_BYTES];
        entry[..8].copy_from_slice(&offset.to_be_bytes());
        entry[8..].copy_from_slice(&due_ms.to_be_bytes());
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut file| file.write_all(&entry))
            .map_err(|error| io_error(&path, error))?;
        self.slots.insert(slot, Slot::File);
        Ok(())
    }

    /// When the earliest slot starts, for the owner to wake up at.
    pub(crate) fn next_due(&self) -> Option<i64> {
        let (slot, state) = self.slots.first_key_value()?;
        Some(match state {
            Slot::Memory(entries) => entries
                .iter()
                .map(|(_, due)| *due)
                .min()
                .unwrap_or(slot * SLOT_MS),
            Slot::File => slot * SLOT_MS,
        })
    }

    /// Takes every entry due at `now_ms`, in due order.
    pub(crate) fn take_due(&mut self, now_ms: i64) -> Result<Vec<u64>, CoreError> {
        let mut due = Vec::new();
        while let Some(entry) = self.slots.first_entry() {
            let slot = *entry.key();
            if slot * SLOT_MS > now_ms {
                break;
            }
            let mut entries = match entry.remove() {
                Slot::Memory(entries) => entries,
                Slot::File => self.load(slot)?,
            };
            entries.sort_by_key(|(offset, due)| (*due, *offset));
            let later = entries.split_off(entries.partition_point(|(_, due)| *due <= now_ms));
            due.extend(entries.iter().map(|(offset, _)| *offset));
            if !later.is_empty() {
                self.slots.insert(slot, Slot::Memory(later));
                break;
            }
        }
        self.count -= due.len() as u64;
        if self.count == 0 {
            self.lowest_offset = None;
        }
        Ok(due)
    }

    fn load(&self, slot: i64) -> Result<Vec<(u64, i64)>, CoreError> {
        let path = self
            .slot_path(slot)
            .expect("file slots exist only with a directory");
        let bytes = fs::read(&path).map_err(|error| io_error(&path, error))?;
        fs::remove_file(&path).map_err(|error| io_error(&path, error))?;
        Ok(bytes
            .chunks_exact(ENTRY_BYTES)
            .map(|entry| {
                let mut offset = [0u8; 8];
                let mut due = [0u8; 8];
                offset.copy_from_slice(&entry[..8]);
                due.copy_from_slice(&entry[8..]);
                (u64::from_be_bytes(offset), i64::from_be_bytes(due))
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(delays: &mut Delays, now: i64) -> Vec<u64> {
        delays.take_due(now).expect("take")
    }

    #[test]
    fn entries_come_out_in_due_order_from_memory_and_from_files() {
        let dir = tempfile::tempdir().expect("dir");
        for store in [None, Some(dir.path().join("delays"))] {
            let mut delays = Delays::open(store).expect("open");
            delays.add(1, 5_500).expect("add");
            delays.add(2, 1_200).expect("add");
            delays.add(3, 1_100).expect("add");
            delays.add(4, 90_000).expect("add");
            assert_eq!(delays.len(), 4);
            assert!(delays.next_due().is_some_and(|due| due <= 1_100));
            assert!(drain(&mut delays, 1_000).is_empty());
            assert_eq!(drain(&mut delays, 1_150), vec![3]);
            assert_eq!(delays.next_due(), Some(1_200));
            assert_eq!(drain(&mut delays, 6_000), vec![2, 1]);
            assert_eq!(delays.len(), 1);
            assert_eq!(drain(&mut delays, 100_000), vec![4]);
        }
    }

    #[test]
    fn x_delay_is_read_from_integers_and_digits() {
        let delayed = |value| Message::new(&b""[..]).with_header(HEADER, value);
        assert_eq!(delay_of(&delayed(HeaderValue::Int(500))), Some(500));
        assert_eq!(
            delay_of(&delayed(HeaderValue::Text("250".into()))),
            Some(250)
        );
        assert_eq!(delay_of(&delayed(HeaderValue::Int(-5))), None);
        assert_eq!(delay_of(&Message::new(&b""[..])), None);
    }
}
