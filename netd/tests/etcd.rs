//! The etcd store across nodes: a real 3-member etcd cluster (Debian's `etcd-server`) on
//! loopback ports, and two `netd up --store etcd://...` daemons as two nodes. Each node sees
//! the other's services and endpoints (API, watch, status) and networks (their conflists);
//! concurrent writers from both nodes share etcd transactions and leave one consistent
//! registry; a killed node's leased endpoints expire on the other; one etcd member down
//! changes nothing, nor does one that hangs; an unreachable cluster fails startup with a clear
//! message.
//!
//! Everything runs as child processes of the test, on 127.0.0.1 only, in temporary
//! directories; every process is killed by its PID when its guard drops, even on failure.

mod common;

use std::fs::File;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{cli, eventually, ok, send_signal, stderr, wait_until, TempDir, BIN};
use netd::client::Client;
use netd_config::netd::{
    AttachmentSpec, EndpointSpec, Event, Object, RoutesSpec, ServicePort, ServiceSpec, Status,
};

/// Generous bound for anything that crosses etcd and a watch.
const SEEN: Duration = Duration::from_secs(20);

/// A free TCP port on 127.0.0.1 (released again; etcd binds it right after).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// One POST to an etcd member's gateway; the body of a 200 answer.
fn etcd_post(addr: &str, path: &str, body: &str) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&addr.parse().ok()?, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    out.starts_with("HTTP/1.1 200")
        .then(|| out.split("\r\n\r\n").nth(1).unwrap_or("").to_string())
}

/// A 3-member etcd cluster on loopback; every member is killed by PID on drop.
struct EtcdCluster {
    members: Vec<Option<Child>>,
    clients: Vec<String>,
    dir: TempDir,
}

impl EtcdCluster {
    fn start(tag: &str) -> Self {
        let dir = TempDir::new(&format!("etcd-{tag}"));
        let peers: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let clients: Vec<String> = (0..3)
            .map(|_| format!("127.0.0.1:{}", free_port()))
            .collect();
        let initial: Vec<String> = peers
            .iter()
            .enumerate()
            .map(|(i, p)| format!("m{i}=http://127.0.0.1:{p}"))
            .collect();
        let mut cluster = EtcdCluster {
            members: Vec::new(),
            clients,
            dir,
        };
        for (i, peer) in peers.iter().enumerate() {
            let log = File::create(cluster.dir.0.join(format!("m{i}.log"))).expect("log");
            let client_url = format!("http://{}", cluster.clients[i]);
            let child = Command::new("etcd")
                .args(["--name", &format!("m{i}")])
                .arg("--data-dir")
                .arg(cluster.dir.0.join(format!("m{i}")))
                .args(["--listen-client-urls", &client_url])
                .args(["--advertise-client-urls", &client_url])
                .args(["--listen-peer-urls", &format!("http://127.0.0.1:{peer}")])
                .args([
                    "--initial-advertise-peer-urls",
                    &format!("http://127.0.0.1:{peer}"),
                ])
                .args(["--initial-cluster", &initial.join(",")])
                .args(["--initial-cluster-state", "new"])
                .args([
                    "--initial-cluster-token",
                    &format!("netd-test-{tag}-{}", std::process::id()),
                ])
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log"))
                .stderr(log)
                .spawn()
                .expect("spawn etcd (apt-get install etcd-server)");
            cluster.members.push(Some(child));
        }
        // Ready when every member serves a linearizable read (a leader is elected).
        let ready = wait_until(Duration::from_secs(30), || {
            cluster
                .clients
                .iter()
                .all(|c| etcd_post(c, "/v3/kv/range", r#"{"key":"eA=="}"#).is_some())
        });
        assert!(ready, "etcd cluster did not come up:\n{}", cluster.logs());
        cluster
    }

    /// `etcd://m0,m1,m2`.
    fn url(&self) -> String {
        format!("etcd://{}", self.clients.join(","))
    }

    /// The same members, member `first` first (the one a node starts with, watch included).
    fn url_from(&self, first: usize) -> String {
        let mut members = self.clients.clone();
        members.rotate_left(first);
        format!("etcd://{}", members.join(","))
    }

    /// Sends `sig` to member `i` (SIGSTOP hangs it with its connections open; SIGCONT
    /// resumes it).
    fn signal(&self, i: usize, sig: i32) {
        let child = self.members[i].as_ref().expect("member running");
        send_signal(child.id() as i32, sig);
    }

    /// Kills member `i` (SIGKILL by PID) and reaps it.
    fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn logs(&self) -> String {
        (0..3)
            .map(|i| {
                std::fs::read_to_string(self.dir.0.join(format!("m{i}.log"))).unwrap_or_default()
            })
            .collect::<Vec<_>>()
            .join("\n---\n")
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        // A stopped member dies of SIGKILL too; resumed first so nothing is left stopped if
        // killing fails.
        for i in 0..self.members.len() {
            if self.members[i].is_some() {
                self.signal(i, libc::SIGCONT);
            }
        }
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}

/// A `netd up --store etcd://...` node; killed by PID on drop.
struct Node {
    child: Option<Child>,
    socket: PathBuf,
    dir: TempDir,
}

impl Node {
    fn start(name: &str, store: &str) -> Self {
        Self::start_with(name, store, &[])
    }

    fn start_with(name: &str, store: &str, extra: &[&str]) -> Self {
        let dir = TempDir::new(&format!("etcd-node-{name}"));
        let socket = dir.0.join("netd.sock");
        let log = File::create(dir.0.join("netd.log")).expect("log");
        let child = Command::new(BIN)
            .arg("--socket")
            .arg(&socket)
            .arg("up")
            .arg("--data-dir")
            .arg(dir.0.join("data"))
            .arg("--cni-conf-dir")
            .arg(dir.0.join("cni"))
            .args(["--node", name, "--store", store])
            // The machine's own namespace: no nf_tables, no DNS on gateway addresses.
            .args(["--no-vip", "--no-network-dns"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn netd up");
        let node = Node {
            child: Some(child),
            socket,
            dir,
        };
        let up = wait_until(Duration::from_secs(30), || {
            std::os::unix::net::UnixStream::connect(&node.socket).is_ok()
        });
        assert!(up, "netd node {name} did not come up:\n{}", node.log());
        node
    }

    fn client(&self) -> Client {
        Client::new(&self.socket)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.0.join("netd.log")).unwrap_or_default()
    }

    /// `kill -9` by PID, and reap.
    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn service(name: &str, port: u16) -> ServiceSpec {
    ServiceSpec {
        name: name.into(),
        namespace: "default".into(),
        ports: vec![ServicePort {
            name: None,
            port,
            protocol: Default::default(),
            host_port: None,
        }],
        health_check: None,
    }
}

fn endpoint(address: &str, port: u16, lease: Option<u64>) -> EndpointSpec {
    serde_json::from_value(serde_json::json!({
        "address": address, "port": port, "lease": lease,
    }))
    .expect("endpoint spec")
}

/// Keeps lease `id` alive through `node` every 500 ms (as `netd expose` does) until the
/// returned sender says stop; the task fails if a keepalive is refused.
fn keep_alive(
    node: &Client,
    id: u64,
) -> (
    tokio::sync::watch::Sender<bool>,
    tokio::task::JoinHandle<()>,
) {
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    let node = node.clone();
    let task = tokio::spawn(async move {
        loop {
            node.keepalive(id).await.expect("keepalive");
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                _ = stopped.changed() => return,
            }
        }
    });
    (stop, task)
}

/// Endpoint ids of `default/svc` as `node` sees them.
async fn endpoint_ids(node: &Client, svc: &str) -> Vec<String> {
    let mut ids: Vec<String> = node
        .endpoints("default", svc)
        .await
        .map(|eps| eps.into_iter().map(|e| e.id).collect())
        .unwrap_or_default();
    ids.sort();
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_share_one_registry() {
    let etcd = EtcdCluster::start("share");
    let a = Node::start("node-a", &etcd.url());
    let b = Node::start("node-b", &etcd.url());
    let (ca, cb) = (a.client(), b.client());

    // B watches from now on; A's changes must reach B's watchers through B's registry.
    let mut watch = cb.watch(0).await.unwrap();
    while !matches!(watch.next().await.unwrap(), Some(Event::Synced { .. })) {}

    let web = ca.put_service(&service("web", 80)).await.unwrap();
    ca.register_endpoint("default", "web", &endpoint("10.1.0.1", 8080, None))
        .await
        .unwrap();
    let seen = tokio::time::timeout(SEEN, async {
        loop {
            match watch.next().await.unwrap() {
                Some(Event::Put {
                    object: Object::Endpoint(e),
                    ..
                }) if e.service == "web" => return e,
                Some(_) => {}
                None => panic!("watch ended"),
            }
        }
    })
    .await
    .expect("B's watch got A's endpoint");
    assert_eq!((seen.node.as_str(), seen.port), ("node-a", 8080));

    // B sees A's service with the same VIP, registers its own endpoint; A sees both.
    let on_b = cb
        .service("default", "web")
        .await
        .unwrap()
        .expect("web on B");
    assert_eq!(on_b.vip, web.vip);
    // Routes set on B reach A (they live in the service's record).
    let routes: RoutesSpec = serde_json::from_value(serde_json::json!({"routes": [
        {"name": "users", "path_prefix": "/users", "methods": ["GET"]}
    ]}))
    .unwrap();
    cb.put_routes("default", "web", &routes).await.unwrap();
    assert!(
        eventually(SEEN, || async {
            ca.routes("default", "web").await.ok().as_ref() == Some(&routes)
        })
        .await,
        "A sees B's routes"
    );
    cb.register_endpoint("default", "web", &endpoint("10.2.0.1", 8080, None))
        .await
        .unwrap();
    assert!(
        eventually(SEEN, || async {
            endpoint_ids(&ca, "web").await == ["10.1.0.1:8080", "10.2.0.1:8080"]
        })
        .await,
        "A sees both endpoints: {:?}",
        endpoint_ids(&ca, "web").await
    );
    let eps = ca.endpoints("default", "web").await.unwrap();
    let nodes: Vec<&str> = eps.iter().map(|e| e.node.as_str()).collect();
    assert_eq!(nodes, ["node-a", "node-b"]);

    // Both nodes converge on the same revision; status names the backend and the members.
    assert!(
        eventually(SEEN, || async {
            let (sa, sb) = (ca.status().await.unwrap(), cb.status().await.unwrap());
            sa.revision == sb.revision && sa.endpoints == 2 && sb.endpoints == 2
        })
        .await
    );
    let s: Status = serde_json::from_str(&ok(&cli(&b.socket, &["-o", "json", "status"]))).unwrap();
    assert_eq!(s.store.backend, "etcd");
    assert_eq!(s.store.location, etcd.url());
    assert_eq!(s.node, "node-b");
    let text = ok(&cli(&a.socket, &["status"]));
    assert!(
        text.contains(&format!("store:        etcd {}", etcd.url())),
        "{text}"
    );

    // Concurrent writers on both nodes: every write lands once, VIPs stay distinct, and both
    // nodes end with the same registry.
    let writers = [(ca.clone(), "a"), (cb.clone(), "b")].map(|(c, tag)| {
        tokio::spawn(async move {
            for i in 0..15u16 {
                c.put_service(&service(&format!("svc-{tag}-{i}"), 1000 + i))
                    .await
                    .expect("put service");
                c.register_endpoint(
                    "default",
                    "shared",
                    &endpoint(&format!("10.9.{}.{i}", u8::from(tag == "b")), 80, None),
                )
                .await
                .ok();
                c.put_service(&service("shared", 80)).await.expect("shared");
            }
        })
    });
    for w in writers {
        w.await.unwrap();
    }
    assert!(
        eventually(SEEN, || async {
            let (sa, sb) = (ca.status().await.unwrap(), cb.status().await.unwrap());
            sa.revision == sb.revision
        })
        .await
    );
    let (la, lb) = (
        ca.services(None).await.unwrap(),
        cb.services(None).await.unwrap(),
    );
    assert_eq!(la, lb, "both nodes hold the same services");
    assert_eq!(la.len(), 32, "web + shared + 30: {la:?}");
    let mut vips: Vec<_> = la.iter().map(|s| s.vip).collect();
    vips.sort();
    vips.dedup();
    assert_eq!(vips.len(), la.len(), "every service has its own VIP");
    assert_eq!(
        ca.all_endpoints().await.unwrap(),
        cb.all_endpoints().await.unwrap()
    );
}

/// What a writer of `concurrent_writers_share_transactions_and_stay_consistent` got.
#[derive(Default)]
struct Outcome {
    /// Revisions of its acknowledged writes.
    revisions: Vec<u64>,
    /// It won its host port (and registered an endpoint in its service).
    won: bool,
}

/// 64 writers on each node at once, racing for eight host ports and adding endpoints to a
/// service the other node deletes meanwhile. Each node sends its writers' changes to etcd
/// together (several writes share a revision), yet every acknowledged write is applied, in
/// the order it was made, and none validated against a state the other node had changed
/// since: one service per host port, no endpoint outlives its service, both nodes agree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_share_transactions_and_stay_consistent() {
    let etcd = EtcdCluster::start("batch");
    let a = Node::start("node-a", &etcd.url());
    let b = Node::start("node-b", &etcd.url());
    let (ca, cb) = (a.client(), b.client());
    ca.put_service(&service("victim", 80)).await.unwrap();
    let mut watch = cb.watch(0).await.unwrap();
    while !matches!(watch.next().await.unwrap(), Some(Event::Synced { .. })) {}

    let started = std::sync::Arc::new(tokio::sync::Semaphore::new(0));
    let mut writers = tokio::task::JoinSet::new();
    for i in 0..128u16 {
        let (c, tag) = if i % 2 == 0 {
            (ca.clone(), "a")
        } else {
            (cb.clone(), "b")
        };
        let started = started.clone();
        writers.spawn(async move {
            let mut out = Outcome::default();
            let name = format!("w-{tag}-{i}");
            let mut spec = service(&name, 80);
            // Eight host ports, each wanted by eight writers on each node.
            spec.ports[0].host_port = Some(31000 + (i / 2) % 8);
            match c.put_service(&spec).await {
                Ok(s) => {
                    out.revisions.push(s.revision);
                    out.won = true;
                }
                Err(e) => assert!(e.to_string().contains("already published"), "{name}: {e}"),
            }
            started.add_permits(1);
            if out.won {
                let address = format!("10.7.{}.{}", i / 256, i % 256);
                let e = c
                    .register_endpoint("default", &name, &endpoint(&address, 80, None))
                    .await
                    .unwrap_or_else(|e| panic!("{name}'s endpoint: {e}"));
                out.revisions.push(e.revision);
            }
            let address = format!("10.8.{}.{}", i / 256, i % 256);
            match c
                .register_endpoint("default", "victim", &endpoint(&address, 80, None))
                .await
            {
                Ok(e) => out.revisions.push(e.revision),
                Err(e) => assert!(e.to_string().contains("does not exist"), "victim: {e}"),
            }
            out
        });
    }
    // B deletes `victim` while the writers are busy.
    let half = tokio::time::timeout(SEEN, started.acquire_many(32)).await;
    drop(half.expect("32 writers made their first write").unwrap());
    let gone = cb.delete_service("default", "victim").await.unwrap();
    let mut outcomes = Vec::new();
    while let Some(out) = writers.join_next().await {
        outcomes.push(out.unwrap());
    }
    assert!(
        eventually(SEEN, || async {
            let (sa, sb) = (ca.status().await.unwrap(), cb.status().await.unwrap());
            sa.revision == sb.revision
        })
        .await
    );

    // One service per host port; both nodes hold the same registry.
    assert_eq!(outcomes.iter().filter(|o| o.won).count(), 8);
    let (la, lb) = (
        ca.services(None).await.unwrap(),
        cb.services(None).await.unwrap(),
    );
    assert_eq!(la, lb, "both nodes hold the same services");
    let mut ports: Vec<u16> = la.iter().filter_map(|s| s.ports[0].host_port).collect();
    ports.sort_unstable();
    assert_eq!(ports, (31000..31008).collect::<Vec<_>>(), "{la:?}");
    let (ea, eb) = (
        ca.all_endpoints().await.unwrap(),
        cb.all_endpoints().await.unwrap(),
    );
    assert_eq!(ea, eb, "both nodes hold the same endpoints");
    // Every endpoint's service exists: the winners' own, none of `victim`'s.
    assert!(la.iter().all(|s| s.name != "victim"));
    assert_eq!(ea.len(), 8, "{ea:?}");
    assert!(ea.iter().all(|e| la.iter().any(|s| s.name == e.service)));

    // Writes shared etcd transactions: fewer revisions than acknowledged writes.
    let mut revisions: Vec<u64> = outcomes.iter().flat_map(|o| o.revisions.clone()).collect();
    let writes = revisions.len();
    revisions.sort_unstable();
    revisions.dedup();
    assert!(
        revisions.len() < writes,
        "{writes} writes in {} etcd revisions",
        revisions.len()
    );

    // B's watch saw each winner's service before its endpoint, and `victim` go, in
    // revision order.
    let winners: Vec<String> = la
        .iter()
        .filter(|s| s.name != "victim")
        .map(|s| s.name.clone())
        .collect();
    let mut seen: Vec<(&str, String, u64)> = Vec::new();
    let complete = |seen: &[(&str, String, u64)]| {
        let has = |kind: &str, what: &str| seen.iter().any(|e| e.0 == kind && e.1 == what);
        has("delete", "service victim")
            && winners.iter().all(|w| has("put", &format!("endpoint {w}")))
    };
    let caught_up = tokio::time::timeout(SEEN, async {
        while !complete(&seen) {
            let (kind, object, revision) = match watch.next().await.unwrap() {
                Some(Event::Put { object, revision }) => ("put", object, revision),
                Some(Event::Delete { object, revision }) => ("delete", object, revision),
                Some(_) => continue,
                None => panic!("watch ended"),
            };
            let name = match object {
                Object::Service(s) => format!("service {}", s.name),
                Object::Endpoint(e) => format!("endpoint {}", e.service),
                other => format!("{other:?}"),
            };
            seen.push((kind, name, revision));
        }
    });
    caught_up.await.expect("B's watch caught up");
    assert!(seen.windows(2).all(|w| w[0].2 <= w[1].2), "{seen:?}");
    assert!(seen.contains(&("delete", "service victim".into(), gone.revision)));
    for w in &winners {
        let at = |what: String| seen.iter().position(|e| e.0 == "put" && e.1 == what);
        let (service, endpoint) = (at(format!("service {w}")), at(format!("endpoint {w}")));
        assert!(service.is_some() && service < endpoint, "{w}: {seen:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_nodes_leased_endpoints_expire_on_the_other() {
    let etcd = EtcdCluster::start("expire");
    let mut a = Node::start("node-a", &etcd.url());
    let b = Node::start("node-b", &etcd.url());
    let (ca, cb) = (a.client(), b.client());
    const TTL: u64 = 4;

    ca.put_service(&service("api", 80)).await.unwrap();
    let lease = ca.grant_lease(TTL).await.unwrap();
    // While a client keeps the lease alive through A, A keeps it alive in etcd.
    let (stop, keeper) = keep_alive(&ca, lease.id);
    ca.register_endpoint("default", "api", &endpoint("10.1.0.1", 80, Some(lease.id)))
        .await
        .unwrap();
    ca.register_endpoint("default", "api", &endpoint("10.1.0.2", 80, None))
        .await
        .unwrap();
    assert!(
        eventually(SEEN, || async {
            endpoint_ids(&cb, "api").await == ["10.1.0.1:80", "10.1.0.2:80"]
        })
        .await
    );
    // Two TTLs later it still exists, on both nodes.
    tokio::time::sleep(Duration::from_secs(2 * TTL)).await;
    assert!(cb.leases().await.unwrap().iter().any(|l| l.id == lease.id));
    assert_eq!(endpoint_ids(&cb, "api").await.len(), 2);
    stop.send(true).unwrap();
    keeper.await.expect("the lease stayed alive");

    // A dies: nobody keeps the lease alive, etcd expires it, B drops the leased endpoint and
    // keeps the other.
    a.kill9();
    assert!(
        eventually(SEEN, || async {
            endpoint_ids(&cb, "api").await == ["10.1.0.2:80"]
        })
        .await,
        "B still sees {:?}; B's log:\n{}",
        endpoint_ids(&cb, "api").await,
        b.log()
    );
    assert!(cb.leases().await.unwrap().is_empty());
    // B keeps working alone.
    cb.register_endpoint("default", "api", &endpoint("10.2.0.1", 80, None))
        .await
        .unwrap();
    assert_eq!(
        endpoint_ids(&cb, "api").await,
        ["10.1.0.2:80", "10.2.0.1:80"]
    );

    // A lease revoked on purpose (and one left to lapse on a live node) goes the same way.
    let short = cb.grant_lease(TTL).await.unwrap();
    cb.register_endpoint("default", "api", &endpoint("10.2.0.9", 80, Some(short.id)))
        .await
        .unwrap();
    cb.revoke_lease(short.id).await.unwrap();
    assert_eq!(
        endpoint_ids(&cb, "api").await,
        ["10.1.0.2:80", "10.2.0.1:80"]
    );
    let lapse = cb.grant_lease(TTL).await.unwrap();
    cb.register_endpoint("default", "api", &endpoint("10.2.0.8", 80, Some(lapse.id)))
        .await
        .unwrap();
    assert!(
        eventually(SEEN, || async {
            endpoint_ids(&cb, "api").await == ["10.1.0.2:80", "10.2.0.1:80"]
        })
        .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_etcd_member_down_changes_nothing() {
    let mut etcd = EtcdCluster::start("member");
    let a = Node::start("node-a", &etcd.url());
    let b = Node::start("node-b", &etcd.url());
    let (ca, cb) = (a.client(), b.client());
    ca.put_service(&service("before", 80)).await.unwrap();
    let lease = ca.grant_lease(3).await.unwrap();
    // A client keeps the lease alive through A all along.
    let (stop, keeper) = keep_alive(&ca, lease.id);
    ca.register_endpoint(
        "default",
        "before",
        &endpoint("10.1.0.1", 80, Some(lease.id)),
    )
    .await
    .unwrap();
    assert!(
        eventually(SEEN, || async {
            endpoint_ids(&cb, "before").await.len() == 1
        })
        .await
    );

    // The first member is the one both nodes talk to and watch through.
    etcd.kill(0);

    // Writes on either node still succeed and reach the other.
    ca.put_service(&service("after-a", 81)).await.unwrap();
    cb.put_service(&service("after-b", 82)).await.unwrap();
    cb.register_endpoint("default", "after-a", &endpoint("10.2.0.1", 81, None))
        .await
        .unwrap();
    for (c, name) in [(&cb, "after-a"), (&ca, "after-b")] {
        assert!(
            eventually(SEEN, || async {
                c.service("default", name).await.ok().flatten().is_some()
            })
            .await,
            "{name} not seen across nodes with member 0 down\nA:\n{}\nB:\n{}",
            a.log(),
            b.log()
        );
    }
    assert!(
        eventually(SEEN, || async {
            endpoint_ids(&ca, "after-a").await.len() == 1
        })
        .await
    );

    // A keeps the lease alive in etcd through the remaining members: two TTLs later the
    // leased endpoint is still there.
    tokio::time::sleep(Duration::from_secs(6)).await;
    stop.send(true).unwrap();
    keeper.await.expect("the lease stayed alive");
    assert_eq!(endpoint_ids(&cb, "before").await, ["10.1.0.1:80"]);
    let s = cb.status().await.unwrap();
    assert_eq!((s.services, s.endpoints), (3, 2));
}

/// A network created on one node gets its conflist on the other without a restart (same
/// content as on the node that created it), and goes from both when removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn networks_reach_every_nodes_cni_config_dir() {
    let etcd = EtcdCluster::start("networks");
    let a = Node::start("node-a", &etcd.url());
    let b = Node::start("node-b", &etcd.url());
    let conflist =
        |node: &Node, name: &str| node.dir.0.join("cni").join(format!("{name}.conflist"));
    let read = |path: PathBuf| std::fs::read_to_string(path).ok();

    ok(&cli(
        &a.socket,
        &[
            "network",
            "create",
            "blue",
            "--subnet",
            "10.93.0.0/24",
            "--isolate",
        ],
    ));
    let on_a = read(conflist(&a, "blue")).expect("A wrote its own conflist");
    assert!(
        wait_until(SEEN, || read(conflist(&b, "blue")).as_ref() == Some(&on_a)),
        "B's conflist: {:?}\nB's log:\n{}",
        read(conflist(&b, "blue")),
        b.log()
    );
    assert!(
        on_a.contains("10.93.0.0/24") && on_a.contains("\"isolate\": true"),
        "{on_a}"
    );

    // Created on B, it reaches A the same way; removed on A, it leaves B.
    ok(&cli(
        &b.socket,
        &["network", "create", "green", "--subnet", "10.94.0.0/24"],
    ));
    assert!(
        wait_until(SEEN, || conflist(&a, "green").exists()),
        "{}",
        a.log()
    );
    ok(&cli(&a.socket, &["network", "rm", "blue"]));
    assert!(!conflist(&a, "blue").exists());
    assert!(
        wait_until(SEEN, || !conflist(&b, "blue").exists()),
        "B kept blue's conflist; B's log:\n{}",
        b.log()
    );
    ok(&cli(&a.socket, &["network", "rm", "green"]));
    assert!(wait_until(SEEN, || !conflist(&b, "green").exists()));
    // The default network's conflist stays on both.
    assert!(conflist(&a, "netd").exists() && conflist(&b, "netd").exists());
}

/// A member that hangs (SIGSTOP: connections stay open, nothing answers) does not stall the
/// watch of the node that follows the registry through it: the node notices the silence,
/// moves its watch to another member and catches up with what another node wrote meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_member_does_not_stall_a_nodes_watch() {
    let etcd = EtcdCluster::start("hung");
    // B talks to and watches through member 1; A through member 0.
    let a = Node::start("node-a", &etcd.url_from(0));
    let b = Node::start("node-b", &etcd.url_from(1));
    let (ca, cb) = (a.client(), b.client());
    ca.put_service(&service("before", 80)).await.unwrap();
    assert!(
        eventually(SEEN, || async {
            cb.service("default", "before")
                .await
                .ok()
                .flatten()
                .is_some()
        })
        .await
    );

    etcd.signal(1, libc::SIGSTOP);
    ca.put_service(&service("during", 81)).await.unwrap();
    ca.register_endpoint("default", "during", &endpoint("10.1.0.9", 81, None))
        .await
        .unwrap();
    let seen = eventually(SEEN, || async {
        endpoint_ids(&cb, "during").await == ["10.1.0.9:81"]
    })
    .await;
    etcd.signal(1, libc::SIGCONT);
    assert!(
        seen,
        "B's watch stalled on the stopped member; B's log:\n{}",
        b.log()
    );
    assert!(b.log().contains("stopped answering"), "{}", b.log());

    // Member 1 back: both nodes keep following each other.
    cb.put_service(&service("after", 82)).await.unwrap();
    assert!(
        eventually(SEEN, || async {
            ca.service("default", "after")
                .await
                .ok()
                .flatten()
                .is_some()
        })
        .await
    );
}

fn attachment(id: &str, ip: &str) -> AttachmentSpec {
    AttachmentSpec {
        container_id: id.into(),
        ifname: "eth0".into(),
        network: "netd".into(),
        // A namespace path that exists nowhere: only the reporting node may judge it.
        netns: format!("/nonexistent/netd-etcd-test/{id}"),
        ips: vec![ip.into()],
        names: vec![format!("ctr-{id}")],
        service: Some("db:5432".into()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attachments_are_judged_only_by_their_own_node() {
    let etcd = EtcdCluster::start("liveness");
    // A sweeps for dead containers once an hour, B ten times a second.
    let a = Node::start_with("node-a", &etcd.url(), &["--netns-sweep-ms", "3600000"]);
    let b = Node::start_with("node-b", &etcd.url(), &["--netns-sweep-ms", "100"]);
    let (ca, cb) = (a.client(), b.client());

    let on_a = ca
        .attach(&attachment("aaaa1111", "10.89.0.5"))
        .await
        .unwrap();
    assert_eq!(on_a.node, "node-a");
    assert!(
        eventually(SEEN, || async {
            cb.attachments().await.unwrap().len() == 1
        })
        .await
    );
    assert_eq!(endpoint_ids(&cb, "db").await, ["10.89.0.5:5432"]);

    // B's sweep does remove B's own attachment whose namespace is gone...
    cb.attach(&attachment("bbbb2222", "10.89.0.6"))
        .await
        .unwrap();
    assert!(
        eventually(SEEN, || async {
            let atts = cb.attachments().await.unwrap();
            atts.len() == 1 && atts[0].container_id == "aaaa1111"
        })
        .await,
        "B's sweep did not remove B's dead container: {:?}",
        cb.attachments().await
    );
    // ...and has run many times since A's attachment arrived, without touching it: the path
    // is A's to judge.
    tokio::time::sleep(Duration::from_secs(1)).await;
    for c in [&ca, &cb] {
        let atts = c.attachments().await.unwrap();
        assert_eq!(atts.len(), 1, "{atts:?}");
        assert_eq!(atts[0].container_id, "aaaa1111");
    }
    assert_eq!(endpoint_ids(&ca, "db").await, ["10.89.0.5:5432"]);
}

#[test]
fn unreachable_etcd_fails_startup_with_a_clear_message() {
    let dir = TempDir::new("etcd-unreachable");
    // Nothing listens on these ports (bound and released).
    let (p1, p2) = (free_port(), free_port());
    let url = format!("etcd://127.0.0.1:{p1},127.0.0.1:{p2}");
    let out = Command::new(BIN)
        .arg("--socket")
        .arg(dir.0.join("netd.sock"))
        .args(["up", "--data-dir"])
        .arg(dir.0.join("data"))
        .arg("--cni-conf-dir")
        .arg(dir.0.join("cni"))
        .args(["--store", &url, "--no-vip", "--no-network-dns"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("cannot use the etcd cluster"), "{err}");
    assert!(
        err.contains(&format!("127.0.0.1:{p1}")) && err.contains(&format!("127.0.0.1:{p2}")),
        "{err}"
    );
    assert!(err.contains("--store"), "{err}");
    assert!(!dir.0.join("netd.sock").exists());

    // A malformed URL is a usage error.
    let out = Command::new(BIN)
        .arg("--socket")
        .arg(dir.0.join("netd.sock"))
        .args(["up", "--store", "etcd://nohost"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--store"), "{}", stderr(&out));
}
