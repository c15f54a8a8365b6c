//! Long-running helper processes a test starts (a DHCP server, the reference `dhcp` daemon).
//!
//! A [`Background`] process runs inside one of the test's namespaces with stdout and stderr in
//! a log file under the test's temp dir. Dropping it kills it by PID (SIGKILL) and reaps it;
//! when the test is panicking, the log is printed first, so a failure shows what the process
//! said. It also dies with the thread that started it (`PR_SET_PDEATHSIG`), so a test binary
//! killed from outside leaves no helper behind.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};

use crate::ns::Ns;

/// A helper process owned by the test; killed (by PID) and reaped on drop.
#[derive(Debug)]
pub struct Background {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Background {
    /// Starts `args` inside `ns` with its output in `log`. Panics when it cannot be started.
    pub fn spawn(ns: &Ns, args: &[&str], log: &Path) -> Background {
        let (program, rest) = args.split_first().expect("a command");
        let out = File::create(log)
            .unwrap_or_else(|e| panic!("cannot create log {}: {e}", log.display()));
        let err = out
            .try_clone()
            .unwrap_or_else(|e| panic!("cannot clone log {}: {e}", log.display()));
        let mut cmd = ns.command(program);
        cmd.args(rest)
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err));
        // SAFETY: between fork and exec the child only calls prctl(2), which is
        // async-signal-safe and touches no memory.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {program} in {}: {e}", ns.name()));
        Background {
            name: (*program).to_string(),
            child,
            log: log.to_path_buf(),
        }
    }

    /// The process ID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether it is still running (an exited process is reaped here).
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Everything it has written so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Panics, with its log, unless it is still running.
    #[track_caller]
    pub fn assert_running(&mut self) {
        assert!(
            self.running(),
            "{} (pid {}) exited early; its log:\n{}",
            self.name,
            self.pid(),
            self.log()
        );
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- log of {} (pid {}) ---\n{}--- end of log ---",
                self.name,
                self.pid(),
                self.log()
            );
        }
        // Kills this PID only (no-op if it already exited and was reaped).
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
