//! The HTTP API against a real daemon: services and endpoints, leases, attachments from the CNI
//! plugin, the watch stream, and bad input (400 naming the field, nothing stored).

mod common;

use std::time::Duration;

use common::{eventually, Daemon};
use hyper::Method;
use netd_config::netd::{
    AttachmentSpec, EndpointSpec, ErrorBody, Event, Health, Object, RoutesSpec, ServicePort,
    ServiceSpec,
};

fn spec(name: &str, ports: &[u16]) -> ServiceSpec {
    ServiceSpec {
        name: name.into(),
        namespace: "default".into(),
        ports: ports
            .iter()
            .map(|p| ServicePort {
                name: None,
                port: *p,
                protocol: Default::default(),
                host_port: None,
            })
            .collect(),
        health_check: None,
    }
}

fn endpoint(address: &str, port: u16) -> EndpointSpec {
    serde_json::from_value(serde_json::json!({"address": address, "port": port})).unwrap()
}

#[tokio::test]
async fn services_and_endpoints() {
    let d = Daemon::start("svc");
    let c = d.client();
    let web = c.put_service(&spec("web", &[80])).await.unwrap();
    assert!("10.96.0.0/16"
        .parse::<ipnet::IpNet>()
        .unwrap()
        .contains(&web.vip));
    // Replacing the ports keeps the VIP; the answer says 200, not 201.
    let (status, body) = c
        .raw(
            Method::POST,
            "/v1/services",
            Some(serde_json::to_vec(&spec("web", &[80, 443])).unwrap()),
        )
        .await
        .unwrap();
    assert_eq!(status, 200);
    let web2: netd_config::netd::Service = serde_json::from_slice(&body).unwrap();
    assert_eq!(web2.vip, web.vip);
    assert_eq!(web2.ports.len(), 2);
    let db = c.put_service(&spec("db", &[5432])).await.unwrap();
    assert_ne!(db.vip, web.vip);

    let mut e = endpoint("10.89.0.5", 8080);
    e.weight = 3;
    e.health = Health::Healthy;
    e.labels.insert("zone".into(), "a".into());
    let ep = c.register_endpoint("default", "web", &e).await.unwrap();
    assert_eq!(ep.id, "10.89.0.5:8080");
    assert_eq!(ep.node, "test-node");
    assert_eq!(ep.weight, 3);
    c.register_endpoint("default", "web", &endpoint("fd00:89::5", 8080))
        .await
        .unwrap();
    let eps = c.endpoints("default", "web").await.unwrap();
    assert_eq!(eps.len(), 2);
    // Ids with brackets and colons go through the path.
    c.delete_endpoint("default", "web", "[fd00:89::5]:8080")
        .await
        .unwrap();
    assert_eq!(c.endpoints("default", "web").await.unwrap().len(), 1);

    // Endpoints of a missing service, or with a missing lease, are refused.
    let err = c
        .register_endpoint("default", "nope", &endpoint("10.0.0.1", 1))
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(404));
    let mut e = endpoint("10.0.0.1", 1);
    e.lease = Some(999_999);
    let err = c.register_endpoint("default", "web", &e).await.unwrap_err();
    assert!(
        matches!(&err, netd::client::ClientError::Api { status: 400, field: Some(f), .. } if f == "lease"),
        "{err:?}"
    );

    // Deleting a service takes its endpoints along.
    c.delete_service("default", "web").await.unwrap();
    assert!(c.service("default", "web").await.unwrap().is_none());
    assert!(c.all_endpoints().await.unwrap().is_empty());
    assert_eq!(c.services(None).await.unwrap().len(), 1);
    // Re-creating the service gives it the same VIP back (derived from its name).
    assert_eq!(
        c.put_service(&spec("web", &[80])).await.unwrap().vip,
        web.vip
    );
}

#[tokio::test]
async fn bad_input_is_refused_naming_the_field_and_nothing_is_stored() {
    let d = Daemon::start("badinput");
    let c = d.client();
    let rev = c.status().await.unwrap().revision;
    let cases: &[(&str, &str, u16, Option<&str>)] = &[
        (
            "/v1/services",
            r#"{"name":"web","ports":[{"port":80}],"colour":"red"}"#,
            400,
            Some("colour"),
        ),
        (
            "/v1/services",
            r#"{"name":"web","ports":[{"port":"eighty"}]}"#,
            400,
            Some("ports[0].port"),
        ),
        ("/v1/services", r#"{"name":"web"}"#, 400, Some("ports")),
        (
            "/v1/services",
            r#"{"ports":[{"port":80}]}"#,
            400,
            Some("name"),
        ),
        (
            "/v1/services",
            r#"{"name":"web","ports":[{"port":0}]}"#,
            400,
            Some("ports[0].port"),
        ),
        (
            "/v1/services",
            r#"{"name":"web","ports":[{"port":70000}]}"#,
            400,
            Some("ports[0].port"),
        ),
        (
            "/v1/services",
            r#"{"name":"web","ports":[{"port":80,"protocol":"udp"}]}"#,
            400,
            Some("ports[0].protocol"),
        ),
        (
            "/v1/services",
            r#"{"name":"Web!","ports":[{"port":80}]}"#,
            400,
            Some("name"),
        ),
        (
            "/v1/services",
            r#"{"name":"web","ports":[{"port":80},{"port":80}]}"#,
            400,
            Some("ports[1].port"),
        ),
        (
            "/v1/services",
            r#"{"name":"web","ports":[]}"#,
            400,
            Some("ports"),
        ),
        ("/v1/services", r#"{"name":"web","#, 400, None),
        ("/v1/services", "", 400, None),
        (
            "/v1/networks",
            r#"{"name":"dev","subnets":["10.300.0.0/24"]}"#,
            400,
            Some("subnets[0]"),
        ),
        (
            "/v1/networks",
            r#"{"name":"dev","subnets":["10.90.0.0/24"],"mtu":9000}"#,
            400,
            Some("mtu"),
        ),
        (
            "/v1/networks",
            r#"{"name":"dev","subnets":["10.89.0.0/25"]}"#,
            409,
            Some("subnets[0]"),
        ),
        (
            "/v1/networks",
            r#"{"name":"netd","subnets":["10.91.0.0/24"]}"#,
            409,
            Some("name"),
        ),
        (
            "/v1/leases",
            r#"{"ttl_seconds":0}"#,
            400,
            Some("ttl_seconds"),
        ),
        ("/v1/leases", r#"{"ttl":5}"#, 400, Some("ttl")),
        (
            "/v1/attachments",
            r#"{"container_id":"abc","ifname":"eth0","network":"netd","ips":["10.89.0.9/24"],"service":"web"}"#,
            400,
            Some("service"),
        ),
        (
            "/v1/attachments",
            r#"{"container_id":"abc","ifname":"eth0","network":"nope"}"#,
            404,
            Some("network"),
        ),
    ];
    for (path, body, status, field) in cases {
        let (got, bytes) = c
            .raw(Method::POST, path, Some(body.as_bytes().to_vec()))
            .await
            .unwrap();
        let err: ErrorBody = serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            panic!(
                "{path} {body}: not an error body ({e}): {}",
                String::from_utf8_lossy(&bytes)
            )
        });
        assert_eq!(got, *status, "{path} {body}: {err:?}");
        assert_eq!(err.field.as_deref(), *field, "{path} {body}: {err:?}");
        assert!(!err.error.is_empty());
    }
    // Endpoint input goes through the same checks.
    c.put_service(&spec("web", &[80])).await.unwrap();
    let rev = rev + 1;
    for (body, field) in [
        (r#"{"address":"10.0.0.1","port":70000}"#, "port"),
        (r#"{"address":"10.0.0.1","port":0}"#, "port"),
        (r#"{"address":"10.0.0.300","port":80}"#, "address"),
        (r#"{"address":"10.0.0.1"}"#, "port"),
        (r#"{"address":"10.0.0.1","port":80,"weight":0}"#, "weight"),
        (
            r#"{"address":"10.0.0.1","port":80,"health":"great"}"#,
            "health",
        ),
        (r#"{"address":"10.0.0.1","port":80,"id":"a/b"}"#, "id"),
        (
            r#"{"address":"10.0.0.1","port":80,"labels":{"a":1}}"#,
            "labels.a",
        ),
    ] {
        let (got, bytes) = c
            .raw(
                Method::POST,
                "/v1/services/default/web/endpoints",
                Some(body.as_bytes().to_vec()),
            )
            .await
            .unwrap();
        let err: ErrorBody = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(got, 400, "{body}: {err:?}");
        assert_eq!(err.field.as_deref(), Some(field), "{body}: {err:?}");
    }
    // Nothing of any of that was stored.
    let s = c.status().await.unwrap();
    assert_eq!(s.revision, rev);
    assert_eq!(
        (s.services, s.endpoints, s.leases, s.attachments),
        (1, 0, 0, 0)
    );
    assert_eq!(s.networks, ["netd"]);
    // Unknown paths and methods.
    assert_eq!(c.raw(Method::GET, "/v2/status", None).await.unwrap().0, 404);
    assert_eq!(
        c.raw(Method::DELETE, "/v1/status", None).await.unwrap().0,
        405
    );
    assert_eq!(
        c.raw(Method::GET, "/v1/watch?since=x", None)
            .await
            .unwrap()
            .0,
        400
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_expire_and_take_their_endpoints() {
    let d = Daemon::start("leases");
    let c = d.client();
    c.put_service(&spec("web", &[80])).await.unwrap();
    let short = c.grant_lease(1).await.unwrap();
    let long = c.grant_lease(600).await.unwrap();
    assert!(long.expires_at > short.expires_at);
    let mut e = endpoint("10.0.0.1", 80);
    e.lease = Some(short.id);
    c.register_endpoint("default", "web", &e).await.unwrap();
    let mut e = endpoint("10.0.0.2", 80);
    e.lease = Some(long.id);
    c.register_endpoint("default", "web", &e).await.unwrap();
    c.register_endpoint("default", "web", &endpoint("10.0.0.3", 80))
        .await
        .unwrap();

    // The short lease expires (checked at least every second) and takes 10.0.0.1 along.
    assert!(
        eventually(Duration::from_secs(10), || async {
            c.endpoints("default", "web").await.unwrap().len() == 2
        })
        .await
    );
    assert_eq!(c.keepalive(short.id).await.unwrap_err().status(), Some(404));
    // Keepalive extends; revoke removes at once.
    let k = c.keepalive(long.id).await.unwrap();
    assert!(k.expires_at >= long.expires_at);
    c.revoke_lease(long.id).await.unwrap();
    let left = c.endpoints("default", "web").await.unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].address.to_string(), "10.0.0.3");
    assert!(c.leases().await.unwrap().is_empty());
    assert_eq!(
        c.revoke_lease(long.id).await.unwrap_err().status(),
        Some(404)
    );
}

#[tokio::test]
async fn attachments_register_names_and_service_endpoints() {
    let d = Daemon::start("attach");
    let c = d.client();
    let att = c
        .attach(&AttachmentSpec {
            container_id: "c0ffee1234567890".into(),
            ifname: "eth0".into(),
            network: "netd".into(),
            // A namespace that lives as long as this test: the liveness sweep keeps it.
            netns: format!("/proc/{}/ns/net", std::process::id()),
            ips: vec!["10.89.0.7/24".into(), "fd00:89::7/64".into()],
            names: vec!["shop".into(), "shop.local".into()],
            service: Some("web:8080,cart:9090".into()),
        })
        .await
        .unwrap();
    assert_eq!(att.endpoints.len(), 4);
    assert_eq!(att.names, ["shop", "shop.local"]);
    // Missing services were created with a VIP; each serves both addresses.
    let web = c
        .service("default", "web")
        .await
        .unwrap()
        .expect("web created");
    assert_eq!(web.ports[0].port, 8080);
    let eps = c.endpoints("default", "web").await.unwrap();
    assert_eq!(eps.len(), 2);
    assert!(eps
        .iter()
        .all(|e| e.container_id.as_deref() == Some("c0ffee1234567890")));
    // The network cannot be removed while the container is attached.
    let err = c.delete_network("netd").await.unwrap_err();
    assert_eq!(err.status(), Some(409), "{err}");
    // Re-attaching (same container and interface) replaces the old registration.
    c.attach(&AttachmentSpec {
        container_id: "c0ffee1234567890".into(),
        ifname: "eth0".into(),
        network: "netd".into(),
        netns: String::new(),
        ips: vec!["10.89.0.8".into()],
        names: vec!["shop".into()],
        service: Some("web:8080".into()),
    })
    .await
    .unwrap();
    assert_eq!(c.endpoints("default", "web").await.unwrap().len(), 1);
    assert!(c.endpoints("default", "cart").await.unwrap().is_empty());
    // Detach removes endpoints and record; a second detach is fine (CNI DEL is idempotent).
    assert!(c.detach("c0ffee1234567890", "eth0").await.unwrap().existed);
    assert!(!c.detach("c0ffee1234567890", "eth0").await.unwrap().existed);
    assert!(c.all_endpoints().await.unwrap().is_empty());
    assert!(c.attachments().await.unwrap().is_empty());
    c.delete_network("netd").await.unwrap();
}

#[tokio::test]
async fn watch_streams_snapshot_then_live_changes() {
    let d = Daemon::start("watch");
    let c = d.client();
    c.put_service(&spec("before", &[1])).await.unwrap();
    let mut w = c.watch(0).await.unwrap();
    let mut snapshot = Vec::new();
    let synced_at = loop {
        match tokio::time::timeout(Duration::from_secs(10), w.next())
            .await
            .unwrap()
            .unwrap()
        {
            Some(Event::Synced { revision }) => break revision,
            Some(e) => snapshot.push(e),
            None => panic!("stream ended"),
        }
    };
    assert!(matches!(snapshot[0], Event::Reset { .. }));
    assert!(snapshot
        .iter()
        .any(|e| matches!(e, Event::Put { object: Object::Network(n), .. } if n.name == "netd")));
    assert!(snapshot
        .iter()
        .any(|e| matches!(e, Event::Put { object: Object::Service(s), .. } if s.name == "before")));

    // A change is pushed while the stream is open.
    let svc = c.put_service(&spec("live", &[2])).await.unwrap();
    let e = tokio::time::timeout(Duration::from_secs(10), w.next())
        .await
        .expect("pushed in time")
        .unwrap()
        .unwrap();
    match e {
        Event::Put {
            revision,
            object: Object::Service(s),
        } => {
            assert_eq!(s, svc);
            assert_eq!(revision, synced_at + 1);
        }
        other => panic!("unexpected {other:?}"),
    }
    c.delete_service("default", "before").await.unwrap();
    let e = tokio::time::timeout(Duration::from_secs(10), w.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(
        matches!(e, Event::Delete { object: Object::Service(ref s), .. } if s.name == "before"),
        "{e:?}"
    );

    // Reconnecting with since=REV replays only what came after, then synced.
    let mut w2 = c.watch(synced_at).await.unwrap();
    let mut seen = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(10), w2.next())
            .await
            .unwrap()
            .unwrap()
        {
            Some(Event::Synced { revision }) => {
                assert_eq!(revision, synced_at + 2);
                break;
            }
            Some(e) => seen.push(e),
            None => panic!("stream ended"),
        }
    }
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(matches!(seen[0], Event::Put { .. }) && matches!(seen[1], Event::Delete { .. }));
    assert_eq!(c.status().await.unwrap().watchers, 2);
}

#[tokio::test]
async fn routes_round_trip_survive_service_replacement_and_reach_watchers() {
    let mut d = Daemon::start("routes");
    let c = d.client();
    let web = c.put_service(&spec("web", &[80])).await.unwrap();
    assert!(web.routes.is_empty());
    assert_eq!(
        c.routes("default", "web").await.unwrap(),
        RoutesSpec::default()
    );
    let mut w = c.watch(web.revision).await.unwrap();

    let routes: RoutesSpec = serde_json::from_value(serde_json::json!({"routes": [
        {"name": "users", "path_prefix": "/users", "methods": ["GET", "POST"]},
        {"name": "admin", "path_prefix": "/admin/"}
    ]}))
    .unwrap();
    let stored = c.put_routes("default", "web", &routes).await.unwrap();
    assert_eq!(stored.routes, routes.routes);
    assert_eq!(
        (stored.vip, stored.ports.clone()),
        (web.vip, web.ports.clone())
    );
    assert!(stored.revision > web.revision);
    assert_eq!(c.routes("default", "web").await.unwrap(), routes);
    // Sidecars learn routes from the service objects on the watch stream.
    let pushed = loop {
        match tokio::time::timeout(Duration::from_secs(10), w.next())
            .await
            .expect("pushed in time")
            .unwrap()
        {
            Some(Event::Put {
                object: Object::Service(s),
                ..
            }) => break s,
            Some(_) => continue,
            None => panic!("stream ended"),
        }
    };
    assert_eq!(pushed.routes, routes.routes);
    // The same routes again write nothing.
    let again = c.put_routes("default", "web", &routes).await.unwrap();
    assert_eq!(again.revision, stored.revision);

    // Replacing the service's ports keeps its routes, as it keeps its VIP.
    let replaced = c.put_service(&spec("web", &[80, 8080])).await.unwrap();
    assert_eq!(replaced.routes, routes.routes);
    let listed = c.services(None).await.unwrap();
    assert_eq!(listed[0].routes, routes.routes);
    // They are stored: a restarted daemon has them.
    drop(w);
    d.kill9();
    d.spawn();
    assert_eq!(c.routes("default", "web").await.unwrap(), routes);

    // Bad routes are refused naming the field, and nothing changes.
    let rev = c.status().await.unwrap().revision;
    for (body, field) in [
        (
            r#"{"routes":[{"name":"a","path_prefix":"/a"},{"name":"a","path_prefix":"/b"}]}"#,
            "routes[1].name",
        ),
        (
            r#"{"routes":[{"name":"default","path_prefix":"/a"}]}"#,
            "routes[0].name",
        ),
        (
            r#"{"routes":[{"name":"a","path_prefix":"a"}]}"#,
            "routes[0].path_prefix",
        ),
        (
            r#"{"routes":[{"name":"a","path_prefix":"/a","methods":["GET","FETCH"]}]}"#,
            "routes[0].methods[1]",
        ),
        (
            r#"{"routes":[{"name":"a","path_prefix":"/a","verbs":["GET"]}]}"#,
            "routes[0].verbs",
        ),
        (
            r#"{"routes":[{"name":"a","path_prefix":"/a"},{"name":"b","path_prefix":"/a"}]}"#,
            "routes[1].path_prefix",
        ),
    ] {
        let (status, bytes) = c
            .raw(
                Method::PUT,
                "/v1/services/default/web/routes",
                Some(body.as_bytes().to_vec()),
            )
            .await
            .unwrap();
        assert_eq!(status, 400, "{body}: {}", String::from_utf8_lossy(&bytes));
        let e: ErrorBody = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(e.field.as_deref(), Some(field), "{body}: {}", e.error);
    }
    assert_eq!(c.status().await.unwrap().revision, rev);
    assert_eq!(c.routes("default", "web").await.unwrap(), routes);

    // Routes of a missing service: 404. An empty list removes them.
    let err = c.put_routes("default", "nope", &routes).await.unwrap_err();
    assert_eq!(err.status(), Some(404));
    let cleared = c
        .put_routes("default", "web", &RoutesSpec::default())
        .await
        .unwrap();
    assert!(cleared.routes.is_empty());
    let (status, bytes) = c
        .raw(Method::GET, "/v1/services/default/web", None)
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert!(!String::from_utf8_lossy(&bytes).contains("routes"));
}
