//! The real `postino` binary under torture: started on the run's data directory with fixed
//! loopback ports (so clients reconnect to the same addresses), killed with SIGKILL, started
//! again. Its log goes to `server.log` in the run directory.

use std::fs::OpenOptions;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// How long a server has to open its listeners (recovery included).
const START_WAIT: Duration = Duration::from_secs(60);

/// Where a server listens.
#[derive(Debug, Clone)]
pub struct Addresses {
    pub amqp: String,
    pub grpc: String,
}

impl Addresses {
    /// Free loopback ports, chosen once for the run.
    pub fn free() -> Result<Self> {
        let port = || -> Result<String> {
            let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
            Ok(listener.local_addr()?.to_string())
        };
        Ok(Self {
            amqp: port()?,
            grpc: port()?,
        })
    }
}

#[derive(Debug)]
pub struct Server {
    binary: PathBuf,
    data: PathBuf,
    log: PathBuf,
    environment: Vec<(String, String)>,
    pub addresses: Addresses,
    child: Option<Child>,
}

impl Server {
    pub fn new(
        binary: &Path,
        run: &Path,
        environment: Vec<(String, String)>,
        addresses: Addresses,
    ) -> Self {
        Self {
            binary: binary.to_owned(),
            data: run.join("data"),
            log: run.join("server.log"),
            environment,
            addresses,
            child: None,
        }
    }

    /// The same server on another data directory (its log stays in the run directory).
    pub fn with_data(mut self, data: PathBuf) -> Self {
        self.data = data;
        self
    }

    /// Starts the server and waits until both listeners accept connections.
    pub fn start(&mut self) -> Result<()> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .context("open the server log")?;
        let child = Command::new(&self.binary)
            .args(["server", "--http-listen", "off", "--amqp-listen"])
            .arg(&self.addresses.amqp)
            .arg("--grpc-listen")
            .arg(&self.addresses.grpc)
            .arg("--data-dir")
            .arg(&self.data)
            .envs(self.environment.iter().map(|(key, value)| (key, value)))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("start {}", self.binary.display()))?;
        self.child = Some(child);
        let started = Instant::now();
        for address in [&self.addresses.amqp, &self.addresses.grpc] {
            while TcpStream::connect(address).is_err() {
                if let Some(status) = self
                    .child
                    .as_mut()
                    .and_then(|child| child.try_wait().ok().flatten())
                {
                    bail!(
                        "the server exited at start ({status}); see {}",
                        self.log.display()
                    );
                }
                if started.elapsed() > START_WAIT {
                    bail!("the server did not listen on {address} within {START_WAIT:?}");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(())
    }

    /// The running server's process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL: no chance to sync or close anything.
    pub fn kill(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill().context("SIGKILL the server")?;
            child.wait().context("reap the server")?;
        }
        Ok(())
    }

    /// SIGTERM, and a clean exit expected.
    pub fn stop(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            let pid = rustix::process::Pid::from_raw(child.id() as i32)
                .context("a child pid is positive")?;
            rustix::process::kill_process(pid, rustix::process::Signal::TERM)
                .context("SIGTERM the server")?;
            let status = child.wait().context("reap the server")?;
            if !status.success() {
                bail!("the server exited with {status} on SIGTERM");
            }
        }
        Ok(())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
