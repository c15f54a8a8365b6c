//! The versioned routes (`/v1/...`) and their handlers. Each handler decodes strictly, calls
//! the registry (which validates before writing, one transaction per request), and answers
//! JSON. The route table is the `match` in [`handle`]; README's API section mirrors it.

use std::sync::Arc;

use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use netd_config::netd::{
    service_key, AttachmentSpec, EndpointSpec, LeaseGrant, NetworkSpec, RoutesSpec, ServiceSpec,
    Status, StoreStatus,
};

use super::body::{json, read_json, Body};
use super::error::ApiError;
use super::{watch, ApiState};

type Result<T> = std::result::Result<T, ApiError>;

/// Routes one request.
pub async fn handle(state: Arc<ApiState>, req: Request<Incoming>) -> Response<Body> {
    match route(&state, req).await {
        Ok(r) => r,
        Err(e) => super::body::error(&e),
    }
}

async fn route(state: &Arc<ApiState>, req: Request<Incoming>) -> Result<Response<Body>> {
    let segments = split_path(req.uri().path())?;
    let seg: Vec<&str> = segments.iter().map(String::as_str).collect();
    let query = req.uri().query().unwrap_or("").to_string();
    let m = req.method().clone();
    let reg = &state.registry;
    match seg.as_slice() {
        ["v1", "status"] => {
            allow(&m, &[Method::GET])?;
            Ok(json(StatusCode::OK, &status(state)))
        }

        ["v1", "networks"] => match m {
            Method::GET => {
                let snap = reg.snapshot();
                let list: Vec<_> = snap.networks.values().map(|n| &**n).collect();
                Ok(json(StatusCode::OK, &list))
            }
            Method::POST => {
                let spec: NetworkSpec = read_json(req.into_body()).await?;
                let net = state.networks.create(spec).await?;
                Ok(json(StatusCode::CREATED, &*net))
            }
            _ => Err(not_allowed(&[Method::GET, Method::POST])),
        },
        ["v1", "networks", name] => match m {
            Method::GET => {
                let snap = reg.snapshot();
                let net = snap
                    .networks
                    .get(*name)
                    .ok_or_else(|| not_found(format!("network {name} does not exist")))?;
                Ok(json(StatusCode::OK, &**net))
            }
            Method::DELETE => Ok(json(StatusCode::OK, &state.networks.delete(name).await?)),
            _ => Err(not_allowed(&[Method::GET, Method::DELETE])),
        },

        ["v1", "services"] => match m {
            Method::GET => {
                let ns = query_param(&query, "namespace");
                let snap = reg.snapshot();
                let list: Vec<_> = snap
                    .services
                    .values()
                    .filter(|s| ns.as_deref().is_none_or(|n| s.namespace == n))
                    .map(|s| &**s)
                    .collect();
                Ok(json(StatusCode::OK, &list))
            }
            Method::POST | Method::PUT => {
                let spec: ServiceSpec = read_json(req.into_body()).await?;
                let (svc, created) = reg.put_service(spec).await?;
                let code = if created {
                    StatusCode::CREATED
                } else {
                    StatusCode::OK
                };
                Ok(json(code, &*svc))
            }
            _ => Err(not_allowed(&[Method::GET, Method::POST, Method::PUT])),
        },
        ["v1", "services", ns, name] => match m {
            Method::GET => {
                let snap = reg.snapshot();
                let key = service_key(ns, name);
                let svc = snap.services.get(&key).ok_or_else(|| service_missing(&key))?;
                Ok(json(StatusCode::OK, &**svc))
            }
            Method::DELETE => Ok(json(StatusCode::OK, &reg.delete_service(ns, name).await?)),
            _ => Err(not_allowed(&[Method::GET, Method::DELETE])),
        },
        ["v1", "services", ns, name, "routes"] => match m {
            Method::GET => {
                let snap = reg.snapshot();
                let key = service_key(ns, name);
                let svc = snap.services.get(&key).ok_or_else(|| service_missing(&key))?;
                let routes = RoutesSpec {
                    routes: svc.routes.clone(),
                };
                Ok(json(StatusCode::OK, &routes))
            }
            Method::PUT => {
                let spec: RoutesSpec = read_json(req.into_body()).await?;
                Ok(json(StatusCode::OK, &*reg.put_routes(ns, name, spec).await?))
            }
            _ => Err(not_allowed(&[Method::GET, Method::PUT])),
        },
        ["v1", "services", ns, name, "endpoints"] => match m {
            Method::GET => {
                let snap = reg.snapshot();
                let key = service_key(ns, name);
                if !snap.services.contains_key(&key) {
                    return Err(service_missing(&key));
                }
                let list: Vec<_> = snap.endpoints_of(&key).map(|e| &**e).collect();
                Ok(json(StatusCode::OK, &list))
            }
            Method::POST => {
                let spec: EndpointSpec = read_json(req.into_body()).await?;
                let ep = reg.register_endpoint(ns, name, spec).await?;
                Ok(json(StatusCode::CREATED, &*ep))
            }
            _ => Err(not_allowed(&[Method::GET, Method::POST])),
        },
        ["v1", "services", ns, name, "endpoints", id] => {
            allow(&m, &[Method::DELETE])?;
            Ok(json(StatusCode::OK, &reg.delete_endpoint(ns, name, id).await?))
        }
        ["v1", "endpoints"] => {
            allow(&m, &[Method::GET])?;
            let snap = reg.snapshot();
            let list: Vec<_> = snap.all_endpoints().map(|e| &**e).collect();
            Ok(json(StatusCode::OK, &list))
        }

        ["v1", "leases"] => match m {
            Method::GET => Ok(json(StatusCode::OK, &reg.leases())),
            Method::POST => {
                let grant: LeaseGrant = read_json(req.into_body()).await?;
                Ok(json(StatusCode::CREATED, &reg.grant_lease(grant).await?))
            }
            _ => Err(not_allowed(&[Method::GET, Method::POST])),
        },
        ["v1", "leases", id] => {
            let id = lease_id(id)?;
            match m {
                Method::GET => Ok(json(StatusCode::OK, &reg.lease(id)?)),
                Method::DELETE => Ok(json(StatusCode::OK, &reg.revoke_lease(id).await?)),
                _ => Err(not_allowed(&[Method::GET, Method::DELETE])),
            }
        }
        ["v1", "leases", id, "keepalive"] => {
            allow(&m, &[Method::POST])?;
            Ok(json(StatusCode::OK, &reg.keepalive(lease_id(id)?)?))
        }

        ["v1", "attachments"] => match m {
            Method::GET => {
                let snap = reg.snapshot();
                let list: Vec<_> = snap.attachments.values().map(|a| &**a).collect();
                Ok(json(StatusCode::OK, &list))
            }
            Method::POST => {
                let spec: AttachmentSpec = read_json(req.into_body()).await?;
                Ok(json(StatusCode::CREATED, &*reg.attach(spec).await?))
            }
            _ => Err(not_allowed(&[Method::GET, Method::POST])),
        },
        ["v1", "attachments", container_id, ifname] => {
            allow(&m, &[Method::DELETE])?;
            Ok(json(StatusCode::OK, &reg.detach(container_id, ifname).await?))
        }

        ["v1", "sidecars"] => {
            allow(&m, &[Method::GET])?;
            let list = state
                .mesh
                .as_ref()
                .map(crate::mesh::MeshHandle::sidecars)
                .unwrap_or_default();
            Ok(json(StatusCode::OK, &list))
        }

        ["v1", "watch"] => {
            allow(&m, &[Method::GET])?;
            let since = match query_param(&query, "since") {
                None => 0,
                Some(s) => s.parse().map_err(|_| {
                    ApiError::bad_field("since", format!("{s:?} is not a revision number"))
                })?,
            };
            Ok(watch::stream(reg.clone(), since, state.drain.clone()))
        }

        _ => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!(
                "no such API path {}: the API is under /v1 (status, networks, services, endpoints, leases, attachments, sidecars, watch)",
                req.uri().path()
            ),
        )),
    }
}

fn status(state: &ApiState) -> Status {
    let reg = &state.registry;
    let snap = reg.snapshot();
    let store = reg.store_info();
    let cfg = reg.config();
    Status {
        version: env!("CARGO_PKG_VERSION").to_string(),
        node: cfg.node.clone(),
        socket: state.socket.display().to_string(),
        store: StoreStatus {
            backend: store.backend.to_string(),
            location: store.location,
        },
        revision: snap.revision,
        networks: snap.networks.keys().cloned().collect(),
        services: snap.services.len(),
        endpoints: snap.endpoint_count(),
        leases: snap.leases.len(),
        attachments: snap.attachments.len(),
        watchers: reg.hub().watchers(),
        vip_range: cfg.vip_range.to_string(),
        domain: cfg.domain.clone(),
        uptime_seconds: state.started.elapsed().as_secs(),
        dns: state.dns.status(),
    }
}

fn allow(m: &Method, allowed: &[Method]) -> Result<()> {
    if allowed.contains(m) {
        Ok(())
    } else {
        Err(not_allowed(allowed))
    }
}

fn not_allowed(allowed: &[Method]) -> ApiError {
    let names: Vec<&str> = allowed.iter().map(Method::as_str).collect();
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("method not allowed here; use {}", names.join(" or ")),
    )
}

fn not_found(message: String) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, message)
}

fn service_missing(key: &str) -> ApiError {
    not_found(format!("service {key} does not exist"))
}

fn lease_id(s: &str) -> Result<u64> {
    s.parse().map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("{s:?} is not a lease id (a number)"),
        )
    })
}

/// Splits a path into percent-decoded segments (empty segments dropped).
fn split_path(path: &str) -> Result<Vec<String>> {
    path.split('/')
        .filter(|s| !s.is_empty())
        .map(|s| {
            percent_decode(s).ok_or_else(|| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    format!("bad percent-encoding in {path:?}"),
                )
            })
        })
        .collect()
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The first value of `name` in a query string.
fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == name).then(|| percent_decode(v).unwrap_or_else(|| v.to_string()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_queries() {
        assert_eq!(
            split_path("/v1/services/default/web/endpoints/%5B%3A%3A1%5D%3A80").unwrap(),
            ["v1", "services", "default", "web", "endpoints", "[::1]:80"]
        );
        assert!(split_path("/v1/%zz").is_err());
        assert_eq!(query_param("a=1&since=42", "since").as_deref(), Some("42"));
        assert_eq!(query_param("a=1", "since"), None);
    }
}
