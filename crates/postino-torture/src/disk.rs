//! The disk-full test: the data directory on a tmpfs of its own size, filled by a file of the
//! harness's while publishers with confirms run.
//!
//! 1. With a free-space limit (the disk alarm): the filler takes the space down below the
//!    limit; the broker must block its AMQP publishers (`connection.blocked`), and unblock them
//!    and confirm again once the filler is deleted. Then SIGKILL.
//! 2. Without a limit, the filler takes every byte: appends fail, and the broker must refuse
//!    publishes (AMQP `basic.nack`, native `RESOURCE_EXHAUSTED`) rather than fail or stop;
//!    once the filler is deleted, it confirms again. Then a clean stop.
//! 3. A restart, a drain of every queue and the ledger's checks: nothing confirmed is lost or
//!    corrupt, and nothing refused was stored.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, ensure};

use crate::ledger::{Ledger, Report};
use crate::server::{Addresses, Server};
use crate::workload::{self, Shared, until};

/// The free-space limit of the first phase, in bytes.
const FREE_MIN_BYTES: u64 = 16 << 20;
/// Confirmations each phase waits for before filling, and after freeing.
const CONFIRMS: u64 = 500;
/// Publisher ids of the disk test start here (a ledger of its own).
const FIRST_PUBLISHER: u32 = 1_000_000;

/// What the disk-full test saw.
#[derive(Debug)]
pub struct DiskReport {
    pub mib: u64,
    /// Confirmations that arrived in the second after the publishers were blocked.
    pub confirmed_while_blocked: u64,
    /// Publishes refused while the file system was full.
    pub refused_while_full: u64,
    pub checks: Report,
}

/// A tmpfs mounted for the test, unmounted when dropped.
struct Mount(PathBuf);

impl Mount {
    fn new(dir: &Path, mib: u64) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(dir)
            .status()
            .context("run mount")?;
        ensure!(
            status.success(),
            "mount -t tmpfs on {} failed ({status}): the disk-full test needs root",
            dir.display()
        );
        Ok(Self(dir.to_owned()))
    }

    fn free_bytes(&self) -> Result<u64> {
        let stat = rustix::fs::statvfs(&self.0).context("statvfs")?;
        Ok(stat.f_bavail * stat.f_frsize)
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// Writes the filler until the file system has `leave` bytes free or less (0: until it is
/// full).
fn fill(mount: &Mount, filler: &Path, leave: u64) -> Result<()> {
    let mut file = File::create(filler).context("create the filler")?;
    let chunk = vec![0xa5u8; 256 << 10];
    while mount.free_bytes()? > leave {
        match file.write(&chunk) {
            Ok(0) => break,
            Ok(_) => {}
            Err(error) if error.kind() == std::io::ErrorKind::StorageFull => break,
            Err(error) => return Err(error).context("write the filler"),
        }
    }
    Ok(())
}

fn answers(ledger: &Shared) -> (u64, u64) {
    workload::lock(ledger).answers()
}

/// Runs the three phases on a tmpfs of `mib` MiB at `run/disk`.
pub fn run(
    binary: &Path,
    run: &Path,
    runtime: &tokio::runtime::Runtime,
    mib: u64,
    message_bytes: usize,
) -> Result<DiskReport> {
    let mount = Mount::new(&run.join("disk"), mib)?;
    let data = mount.0.join("data");
    let filler = mount.0.join("filler");
    let addresses = Addresses::free()?;
    let server = |free_min: u64| {
        let environment = [
            ("POSTINO_STORAGE_SEGMENT_BYTES_MAX", "65536".to_owned()),
            ("POSTINO_FLOW_DISK_FREE_BYTES_MIN", free_min.to_string()),
            ("POSTINO_FLOW_CHECK_INTERVAL_MS", "100".to_owned()),
        ]
        .map(|(key, value)| (key.to_owned(), value))
        .to_vec();
        Server::new(binary, run, environment, addresses.clone()).with_data(data.clone())
    };
    let ledger: Shared = Arc::new(Mutex::new(Ledger::default()));

    eprintln!(
        "disk: phase 1, the free-space alarm ({} MiB limit)",
        FREE_MIN_BYTES >> 20
    );
    let mut alarmed = server(FREE_MIN_BYTES);
    alarmed.start().context("start for the alarm phase")?;
    let confirmed_while_blocked = runtime.block_on(async {
        workload::declare(&addresses).await?;
        let probe = workload::amqp(&addresses).await?;
        let tasks = workload::spawn_publishers(&addresses, &ledger, FIRST_PUBLISHER, message_bytes);
        until("no publish was confirmed", || {
            answers(&ledger).0 >= CONFIRMS
        })
        .await?;
        fill(&mount, &filler, FREE_MIN_BYTES / 2)?;
        until("the broker did not block its publishers", || {
            probe.status().blocked()
        })
        .await?;
        let blocked_at = answers(&ledger).0;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let confirmed_while_blocked = answers(&ledger).0 - blocked_at;
        std::fs::remove_file(&filler).context("remove the filler")?;
        until("the broker did not unblock its publishers", || {
            !probe.status().blocked()
        })
        .await?;
        let resumed_from = answers(&ledger).0;
        until("publishing did not resume after the alarm", || {
            answers(&ledger).0 >= resumed_from + CONFIRMS
        })
        .await?;
        tasks.iter().for_each(tokio::task::JoinHandle::abort);
        anyhow::Ok(confirmed_while_blocked)
    })?;
    alarmed.kill()?;

    eprintln!("disk: phase 2, a full file system (no limit)");
    let mut unlimited = server(0);
    unlimited.start().context("start for the full phase")?;
    let refused_while_full = runtime.block_on(async {
        let tasks =
            workload::spawn_publishers(&addresses, &ledger, FIRST_PUBLISHER + 16, message_bytes);
        let (before, _) = answers(&ledger);
        until("no publish was confirmed", || {
            answers(&ledger).0 >= before + CONFIRMS
        })
        .await?;
        fill(&mount, &filler, 0)?;
        let (_, refused_before) = answers(&ledger);
        until("the broker refused nothing on a full file system", || {
            answers(&ledger).1 >= refused_before + CONFIRMS
        })
        .await?;
        std::fs::remove_file(&filler).context("remove the filler")?;
        let (resumed_from, refused) = answers(&ledger);
        until("publishing did not resume after space was freed", || {
            answers(&ledger).0 >= resumed_from + CONFIRMS
        })
        .await?;
        tasks.iter().for_each(tokio::task::JoinHandle::abort);
        anyhow::Ok(refused - refused_before)
    })?;
    unlimited
        .stop()
        .context("a clean stop after the full phase")?;

    eprintln!("disk: phase 3, restart and drain");
    let mut last = server(0);
    last.start().context("start for the drain")?;
    let read = runtime.block_on(workload::drain(&addresses, &ledger))?;
    last.stop().context("the clean stop after the drain")?;
    let checks = workload::lock(&ledger).report(&read);
    Ok(DiskReport {
        mib,
        confirmed_while_blocked,
        refused_while_full,
        checks,
    })
}
