//! Who may use the API socket: root, the daemon's own user, and members of the socket's group
//! (`netd` when that group exists, else the daemon's group).
//!
//! The socket file's mode (0660) and group already keep others out; this checks the peer's
//! credentials (`SO_PEERCRED`) on every connection as well, so a socket made world-writable by
//! mistake, or a descriptor passed to another process, does not open the registry to everyone.

use netd_config::netd::SOCKET_GROUP;
use tokio::net::unix::UCred;

/// The access rule of one daemon.
#[derive(Debug, Clone)]
pub struct Access {
    /// Group allowed besides root (the socket file's group).
    pub gid: u32,
    /// Its name, for messages.
    pub group: String,
    own_uid: u32,
}

impl Access {
    /// The rule for this process: group `netd` if it exists, else the process's own group.
    pub fn for_this_process() -> Self {
        // SAFETY: geteuid/getegid cannot fail and touch no memory of ours.
        let (own_uid, own_gid) = unsafe { (libc::geteuid(), libc::getegid()) };
        match lookup_group(SOCKET_GROUP) {
            Some(gid) => Self {
                gid,
                group: SOCKET_GROUP.to_string(),
                own_uid,
            },
            None => Self {
                gid: own_gid,
                group: group_name(own_gid).unwrap_or_else(|| own_gid.to_string()),
                own_uid,
            },
        }
    }

    /// Whether the `netd` group exists (then the socket is chowned to it).
    pub fn uses_netd_group(&self) -> bool {
        self.group == SOCKET_GROUP
    }

    /// Checks a peer; the error says why it is refused.
    pub fn check(&self, cred: &UCred) -> Result<(), String> {
        let uid = cred.uid();
        if uid == 0 || uid == self.own_uid || cred.gid() == self.gid {
            return Ok(());
        }
        if let Some(pid) = cred.pid() {
            if supplementary_groups(pid).contains(&self.gid) {
                return Ok(());
            }
        }
        Err(format!(
            "permission denied: uid {uid} is neither root nor a member of group {} (gid {}); run as root or add the user to that group",
            self.group, self.gid
        ))
    }
}

/// Looks a group up in `/etc/group`.
pub fn lookup_group(name: &str) -> Option<u32> {
    let text = std::fs::read_to_string("/etc/group").ok()?;
    text.lines().find_map(|l| {
        let mut f = l.split(':');
        (f.next()? == name).then_some(())?;
        f.nth(1)?.parse().ok()
    })
}

fn group_name(gid: u32) -> Option<String> {
    let text = std::fs::read_to_string("/etc/group").ok()?;
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() > 2 && f[2].parse() == Ok(gid)).then(|| f[0].to_string())
    })
}

/// Supplementary groups of a process, from `/proc/PID/status`.
fn supplementary_groups(pid: i32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| l.strip_prefix("Groups:")).map(|g| {
                g.split_whitespace()
                    .filter_map(|x| x.parse().ok())
                    .collect()
            })
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_group_is_known() {
        assert_eq!(lookup_group("root"), Some(0));
        assert_eq!(group_name(0).as_deref(), Some("root"));
        assert!(supplementary_groups(std::process::id() as i32).len() < 1024);
    }
}
