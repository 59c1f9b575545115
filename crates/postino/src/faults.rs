//! Storage fault injection under the whole server, for the torture harness
//! (`docs/reliability.md`). With `POSTINO_FAULT_INJECTION` naming a file, every log runs on a
//! [`FaultyFs`] whose switches follow that file, read every 50 ms: the words `fail_syncs`,
//! `short_writes`, `flip_reads` and `full` switch a fault on (absent: off), and `scope=FRAGMENT`
//! limits them to paths containing `FRAGMENT` (one queue's directory, say). Without the
//! variable nothing changes.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use postino_storage::fault::{Faults, FaultyFs};
use postino_storage::fs::RealFs;
use tracing::{info, warn};

/// The variable that turns fault injection on.
pub const VARIABLE: &str = "POSTINO_FAULT_INJECTION";

/// The words that switch a fault on.
const SWITCHES: [&str; 4] = ["fail_syncs", "short_writes", "flip_reads", "full"];

/// How often the switch file is read.
const POLL: Duration = Duration::from_millis(50);

/// Puts the process's logs on a fault-injecting file system when the variable is set.
pub fn install_from_env() {
    let Some(path) = std::env::var_os(VARIABLE).map(PathBuf::from) else {
        return;
    };
    let fs = FaultyFs::new(RealFs);
    let faults = fs.faults();
    if postino_storage::fs::set_process_fs(Arc::new(fs)).is_err() {
        warn!("a file system was set for the process already; fault injection stays off");
        return;
    }
    warn!(switches = %path.display(), "storage fault injection is on: this server is for testing");
    std::thread::Builder::new()
        .name("fault-switches".to_owned())
        .spawn(move || {
            let mut last = String::new();
            loop {
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                if text != last {
                    apply(&faults, &text);
                    info!(switches = text.trim(), "storage faults changed");
                    last = text;
                }
                std::thread::sleep(POLL);
            }
        })
        .map(drop)
        .unwrap_or_else(|error| warn!(%error, "could not start the fault switch reader"));
}

/// Sets every switch as `text` says.
fn apply(faults: &Faults, text: &str) {
    let words: Vec<&str> = text.split_whitespace().collect();
    let on = |switch: &str| words.contains(&switch);
    let scope = words.iter().find_map(|word| word.strip_prefix("scope="));
    faults.scope(scope);
    faults.fail_syncs(on("fail_syncs"));
    faults.short_writes(on("short_writes"));
    faults.flip_reads(on("flip_reads"));
    faults.full(on("full"));
    for word in words
        .iter()
        .filter(|word| !word.starts_with("scope=") && !SWITCHES.contains(word))
    {
        warn!(word, "unknown fault switch ignored");
    }
}
