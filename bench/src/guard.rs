//! Process-wide safety net: Ctrl-C/SIGTERM handling, a watchdog for hung plugins, and cleanup
//! from the panic hook (the release profile aborts on panic, so `Drop` guards alone would not
//! run).
//!
//! [`install`] must run first in `main`, before any thread exists: it blocks SIGINT, SIGTERM
//! and SIGHUP in every thread (threads inherit the mask; `std::process::Command` resets it in
//! children) and leaves them to one signal thread. The first signal sets [`interrupted`], kills
//! the running plugins (by pidfd, so never a recycled PID) and lets the main flow unwind through
//! its guards; a second signal, or 20 s without the main flow finishing, removes the scratch
//! directory directly and exits with status 130.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);
static SCRATCH: Mutex<Option<PathBuf>> = Mutex::new(None);
static CHILDREN: Mutex<Vec<Watched>> = Mutex::new(Vec::new());
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// How long the main flow gets to clean up after the first signal.
const GRACE: Duration = Duration::from_secs(20);

struct Watched {
    id: u64,
    pidfd: OwnedFd,
    deadline: Instant,
}

/// Whether SIGINT/SIGTERM/SIGHUP was received; long loops check it between steps.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::Relaxed)
}

/// Records the scratch directory the emergency cleanup removes (`None` once removed).
pub fn set_scratch(root: Option<PathBuf>) {
    *lock(&SCRATCH) = root;
}

/// Blocks the termination signals, starts the signal/watchdog thread and installs the panic
/// hook. Call once, first thing in `main`.
pub fn install() -> std::io::Result<()> {
    let set = signal_set();
    // SAFETY: `set` is an initialised sigset_t; this only changes the calling thread's mask,
    // before any other thread exists.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(std::io::Error::from_raw_os_error(rc));
    }
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || signal_loop(set))?;
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default_hook(info);
        emergency_cleanup();
    }));
    Ok(())
}

/// A running child registered with the watchdog; unregisters on drop.
pub struct ChildWatch {
    id: u64,
}

impl Drop for ChildWatch {
    fn drop(&mut self) {
        lock(&CHILDREN).retain(|c| c.id != self.id);
    }
}

/// Registers child `pid` so that it is killed after `timeout` or on interrupt. Call before
/// reaping the child; `None` when no pidfd can be had (the child then just is not watched).
pub fn watch_child(pid: u32, timeout: Duration) -> Option<ChildWatch> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: the kernel just returned this fd to us; nothing else owns it.
    let pidfd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    lock(&CHILDREN).push(Watched {
        id,
        pidfd,
        deadline: Instant::now() + timeout,
    });
    if interrupted() {
        kill_children(|_| true);
    }
    Some(ChildWatch { id })
}

fn signal_set() -> libc::sigset_t {
    // SAFETY: sigemptyset initialises the set before sigaddset reads it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            libc::sigaddset(&mut set, s);
        }
        set
    }
}

fn signal_loop(set: libc::sigset_t) {
    let mut first: Option<Instant> = None;
    loop {
        let timeout = libc::timespec {
            tv_sec: 1,
            tv_nsec: 0,
        };
        // SAFETY: `set` holds signals blocked in every thread; a null siginfo is allowed.
        let sig = unsafe { libc::sigtimedwait(&set, std::ptr::null_mut(), &timeout) };
        if sig > 0 {
            if first.is_some() {
                eprintln!("netd-bench: second signal, removing everything now");
                force_exit();
            }
            first = Some(Instant::now());
            INTERRUPTED.store(true, Ordering::SeqCst);
            eprintln!("netd-bench: interrupted, stopping and cleaning up (again to force)");
            kill_children(|_| true);
        }
        let now = Instant::now();
        kill_children(|c| c.deadline <= now);
        if first.is_some_and(|t| t.elapsed() > GRACE) {
            eprintln!("netd-bench: cleanup is taking too long, removing everything now");
            force_exit();
        }
    }
}

fn kill_children(which: impl Fn(&Watched) -> bool) {
    for c in lock(&CHILDREN).iter().filter(|c| which(c)) {
        // SAFETY: pidfd_send_signal on a pidfd we own; it targets exactly that process and
        // fails harmlessly (ESRCH) once it has exited.
        unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                c.pidfd.as_raw_fd(),
                libc::SIGKILL,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
    }
}

fn emergency_cleanup() {
    kill_children(|_| true);
    // try_lock: the panic may have happened while the lock was held.
    let root = match SCRATCH.try_lock() {
        Ok(mut g) => g.take(),
        Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner().take(),
        Err(std::sync::TryLockError::WouldBlock) => None,
    };
    if let Some(root) = root {
        eprintln!("netd-bench: removing {}", root.display());
        crate::scratch::remove_all(&root);
    }
}

fn force_exit() -> ! {
    emergency_cleanup();
    // SAFETY: _exit ends the process without running anything else.
    unsafe { libc::_exit(130) }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
