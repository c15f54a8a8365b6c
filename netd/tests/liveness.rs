//! Attachment liveness with real network namespaces: an attachment (and the endpoints it
//! registered) goes away on its own once the container's namespace is deleted — with no CNI
//! DEL, and also when the namespace went while netd was down — while attachments whose
//! namespace lives on are kept.

mod common;

use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{eventually, Daemon};
use netd::client::Client;
use netd_config::netd::AttachmentSpec;

const WAIT: Duration = Duration::from_secs(20);

/// A named network namespace (`ip netns add`), deleted on drop.
struct Netns {
    name: String,
    deleted: bool,
}

impl Netns {
    fn new() -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "netd-h-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let out = Command::new("ip")
            .args(["netns", "add", &name])
            .output()
            .expect("run ip netns add");
        assert!(
            out.status.success(),
            "ip netns add {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self {
            name,
            deleted: false,
        }
    }

    fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    /// Deletes the namespace now (what a runtime does when the container is gone).
    fn delete(&mut self) {
        let out = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output()
            .expect("run ip netns del");
        assert!(
            out.status.success(),
            "ip netns del {}: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
        self.deleted = true;
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if !self.deleted {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.name])
                .output();
        }
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

fn attachment(id: &str, ns: &Netns, ip: &str, service: &str) -> AttachmentSpec {
    AttachmentSpec {
        container_id: id.into(),
        ifname: "eth0".into(),
        network: "netd".into(),
        netns: ns.path(),
        ips: vec![format!("{ip}/24")],
        names: vec![id.into()],
        service: Some(service.into()),
    }
}

async fn attachment_ids(c: &Client) -> Vec<String> {
    c.attachments()
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.container_id)
        .collect()
}

async fn endpoint_addrs(c: &Client, svc: &str) -> Vec<String> {
    c.endpoints("default", svc)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.address.to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attachments_go_when_their_namespace_goes() {
    if !is_root() {
        eprintln!("skipped: needs root for ip netns");
        return;
    }
    let d = Daemon::start("liveness");
    let c = d.client();
    let mut dying = Netns::new();
    let staying = Netns::new();
    c.attach(&attachment("dying", &dying, "10.89.0.50", "web:8080"))
        .await
        .unwrap();
    c.attach(&attachment("staying", &staying, "10.89.0.51", "web:8080"))
        .await
        .unwrap();
    assert_eq!(
        endpoint_addrs(&c, "web").await,
        ["10.89.0.50", "10.89.0.51"]
    );
    // Both namespaces exist: a few sweeps later both attachments are still there.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(attachment_ids(&c).await, ["dying", "staying"]);

    // The container dies without a CNI DEL: its namespace disappears.
    dying.delete();
    let gone = eventually(WAIT, || async {
        attachment_ids(&c).await == ["staying"] && endpoint_addrs(&c, "web").await == ["10.89.0.51"]
    })
    .await;
    assert!(gone, "attachment not swept; daemon log:\n{}", d.log());
    assert!(d.log().contains("is gone"), "{}", d.log());
    // The service itself stays (other endpoints, or later ones, keep using its VIP).
    assert!(c.service("default", "web").await.unwrap().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_that_went_while_netd_was_down_is_swept_after_restart() {
    if !is_root() {
        eprintln!("skipped: needs root for ip netns");
        return;
    }
    let mut d = Daemon::start("liveness-restart");
    let mut ns = Netns::new();
    d.client()
        .attach(&attachment("ghost", &ns, "10.89.0.60", "api:9000"))
        .await
        .unwrap();
    d.kill9();
    ns.delete();
    d.spawn();
    let c = d.client();
    let gone = eventually(WAIT, || async {
        attachment_ids(&c).await.is_empty() && endpoint_addrs(&c, "api").await.is_empty()
    })
    .await;
    assert!(gone, "attachment not swept; daemon log:\n{}", d.log());
}
