//! One child process, killed on drop.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// A binary of this workspace, next to the test executable's `deps/` dir
/// (or in `BERTH_BIN_DIR`).
pub fn bin_path(name: &str) -> PathBuf {
    if let Ok(dir) = std::env::var("BERTH_BIN_DIR") {
        return PathBuf::from(dir).join(name);
    }
    let exe = std::env::current_exe().unwrap_or_default();
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir.join(name)
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// A running (or stopped) child process with its log file.
pub struct NodeProcess {
    pub name: String,
    pub log: PathBuf,
    child: Option<Child>,
    /// Stopped with SIGSTOP and not resumed since.
    paused: std::sync::atomic::AtomicBool,
}

impl NodeProcess {
    /// Starts `program args...`, appending stdout and stderr to `log`.
    pub fn spawn(name: &str, program: &Path, args: &[String], log: &Path) -> anyhow::Result<Self> {
        Self::spawn_with_env(name, program, args, &[], log)
    }

    /// Like [`NodeProcess::spawn`], with extra environment variables.
    pub fn spawn_with_env(
        name: &str,
        program: &Path,
        args: &[String],
        env: &[(String, String)],
        log: &Path,
    ) -> anyhow::Result<Self> {
        let out = OpenOptions::new().create(true).append(true).open(log)?;
        let err = out.try_clone()?;
        let child = Command::new(program)
            .args(args)
            .env(
                "RUST_LOG",
                std::env::var("BERTH_TEST_LOG")
                    .unwrap_or_else(|_| "info,openraft=error,openraft::replication=off".into()),
            )
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("spawn {}", program.display()))?;
        Ok(Self {
            name: name.to_string(),
            log: log.to_path_buf(),
            child: Some(child),
            paused: std::sync::atomic::AtomicBool::new(false),
        })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// `kill -9`.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends SIGSTOP (the process freezes, keeping its sockets).
    pub fn pause(&self) -> anyhow::Result<()> {
        self.signal(Signal::SIGSTOP)?;
        self.paused.store(true, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }

    /// Sends SIGCONT.
    pub fn resume(&self) -> anyhow::Result<()> {
        self.signal(Signal::SIGCONT)?;
        self.paused
            .store(false, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }

    /// Paused with [`NodeProcess::pause`] and not resumed since.
    pub fn is_paused(&self) -> bool {
        self.paused.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn signal(&self, signal: Signal) -> anyhow::Result<()> {
        let pid = self.pid().context("process not running")?;
        kill(Pid::from_raw(pid as i32), signal)?;
        Ok(())
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn terminate(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        self.signal(Signal::SIGTERM)?;
        let deadline = Instant::now() + timeout;
        let mut child = self.child.take().context("process not running")?;
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "{} did not exit within {timeout:?} after SIGTERM",
                    self.name
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The last `lines` lines of the log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        let tail = all.len().saturating_sub(lines);
        // A panic is usually far above the tail: show where it happened.
        let panics: Vec<&str> = all[..tail]
            .iter()
            .enumerate()
            .filter(|(_, l)| l.contains("panicked at"))
            .flat_map(|(i, _)| all[i..(i + 3).min(tail)].iter().copied())
            .take(12)
            .collect();
        let mut out = panics.join("\n");
        if !out.is_empty() {
            out.push_str("\n[...]\n");
        }
        out.push_str(&all[tail..].join("\n"));
        out
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGCONT);
        }
        self.kill9();
    }
}
