//! The HTTP side of the fake API server: routing of the Kubernetes REST
//! paths the driver uses, JSON bodies and `Status` errors, watch streams
//! (newline-delimited events), logs (plain text, optionally followed) and
//! `exec` over a websocket in the `v4.channel.k8s.io` protocol.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::io::AsyncReadExt;
use tokio_tungstenite::tungstenite::{self, Message};

use crate::kubelet;
use crate::store::{matches_fields, matches_labels, now, ApiError, Change, Key, Resource};
use crate::{lock, Shared};

type Body = BoxBody<Bytes, Infallible>;

pub async fn serve(listener: tokio::net::TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(handle(shared, req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades()
                .await;
        });
    }
}

fn full(code: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Body> {
    let mut res = Response::new(Full::new(body.into()).boxed());
    *res.status_mut() = code;
    if let Ok(v) = header::HeaderValue::from_str(content_type) {
        res.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    res
}

fn json_response(code: StatusCode, value: &Value) -> Response<Body> {
    full(code, "application/json", value.to_string())
}

fn error(e: &ApiError) -> Response<Body> {
    let code = StatusCode::from_u16(e.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    json_response(code, &e.status())
}

/// The parsed query string (repeated keys kept in order).
struct Query(Vec<(String, String)>);

impl Query {
    fn parse(query: Option<&str>) -> Self {
        let decode = |s: &str| {
            let s = s.replace('+', " ");
            percent_decode(&s)
        };
        Self(
            query
                .unwrap_or_default()
                .split('&')
                .filter(|p| !p.is_empty())
                .map(|p| match p.split_once('=') {
                    Some((k, v)) => (decode(k), decode(v)),
                    None => (decode(p), String::new()),
                })
                .collect(),
        )
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn all(&self, key: &str) -> Vec<String> {
        self.0
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
            .collect()
    }

    fn flag(&self, key: &str) -> bool {
        matches!(self.get(key), Some("true" | "1"))
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A request's target: resource, namespace, name and subresource.
struct Target {
    resource: Resource,
    namespace: String,
    name: Option<String>,
    sub: Option<String>,
}

fn route(path: &str) -> Option<Target> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group_version, rest) = match parts.as_slice() {
        ["api", "v1", rest @ ..] => ("v1".to_string(), rest),
        ["apis", group, version, rest @ ..] => (format!("{group}/{version}"), rest),
        _ => return None,
    };
    let ["namespaces", namespace, plural, rest @ ..] = rest else {
        return None;
    };
    let resource = Resource::from_plural(&group_version, plural)?;
    let (name, sub) = match rest {
        [] => (None, None),
        [name] => (Some(name.to_string()), None),
        [name, sub] => (Some(name.to_string()), Some(sub.to_string())),
        _ => return None,
    };
    Some(Target {
        resource,
        namespace: namespace.to_string(),
        name,
        sub,
    })
}

async fn handle(shared: Arc<Shared>, mut req: Request<Incoming>) -> Response<Body> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query = Query::parse(req.uri().query());
    lock(&shared.requests).push(format!("{method} {path}"));
    let Some(target) = route(&path) else {
        return error(&ApiError::new(
            404,
            "NotFound",
            format!("the server could not find {path}"),
        ));
    };
    if let Some(code) = shared.fault(method.as_str(), target.resource.plural()) {
        return error(&ApiError::new(
            code,
            "InternalError",
            format!("injected failure {code}"),
        ));
    }
    let key = |name: &str| -> Key { (target.resource, target.namespace.clone(), name.to_string()) };
    match (&method, target.name.as_deref(), target.sub.as_deref()) {
        (&Method::GET, None, None) if query.flag("watch") => watch(&shared, &target, &query),
        (&Method::GET, None, None) => list(&shared, &target, &query),
        (&Method::GET, Some(name), None) => match shared.get(&key(name)) {
            Some(o) => json_response(StatusCode::OK, &o),
            None => error(&ApiError::not_found(&key(name))),
        },
        (&Method::POST, None, None) => {
            let body = match read_json(req.into_body()).await {
                Ok(b) => b,
                Err(e) => return error(&e),
            };
            let Some(name) = body["metadata"]["name"].as_str().map(str::to_string) else {
                return error(&ApiError::new(
                    422,
                    "Invalid",
                    "metadata.name: Required value",
                ));
            };
            match create(&shared, key(&name), body) {
                Ok(o) => json_response(StatusCode::CREATED, &o),
                Err(e) => error(&e),
            }
        }
        (&Method::PUT, Some(name), None) => {
            let body = match read_json(req.into_body()).await {
                Ok(b) => b,
                Err(e) => return error(&e),
            };
            let body = normalize(target.resource, body);
            match shared.store().replace(&key(name), body) {
                Ok(o) => json_response(StatusCode::OK, &o),
                Err(e) => error(&e),
            }
        }
        (&Method::DELETE, Some(name), None) => {
            let options = read_json(req.into_body()).await.unwrap_or(Value::Null);
            let grace = options["gracePeriodSeconds"]
                .as_u64()
                .or_else(|| query.get("gracePeriodSeconds").and_then(|g| g.parse().ok()));
            match delete(&shared, key(name), &options, grace) {
                Ok(o) => json_response(StatusCode::OK, &o),
                Err(e) => error(&e),
            }
        }
        (&Method::GET, Some(name), Some("log")) => logs(&shared, key(name), &query),
        (&Method::GET | &Method::POST, Some(name), Some("exec")) => {
            let upgrade = hyper::upgrade::on(&mut req);
            exec(&shared, key(name), &query, req.headers(), upgrade)
        }
        _ => error(&ApiError::new(
            405,
            "MethodNotAllowed",
            format!("{method} {path}"),
        )),
    }
}

async fn read_json(body: Incoming) -> Result<Value, ApiError> {
    let bytes = body
        .collect()
        .await
        .map_err(|e| ApiError::new(400, "BadRequest", e.to_string()))?
        .to_bytes();
    if bytes.is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_slice(&bytes).map_err(|e| ApiError::new(400, "BadRequest", e.to_string()))
}

/// What the API server does to a written object: a Secret's `stringData`
/// becomes base64 `data`.
fn normalize(resource: Resource, mut object: Value) -> Value {
    if resource == Resource::Secrets {
        if let Some(plain) = object
            .as_object_mut()
            .and_then(|o| o.remove("stringData"))
            .and_then(|v| v.as_object().cloned())
        {
            for (k, v) in plain {
                let encoded = base64::engine::general_purpose::STANDARD
                    .encode(v.as_str().unwrap_or_default());
                object["data"][k] = json!(encoded);
            }
        }
    }
    object
}

/// Create an object, with the server-side effects of its kind.
pub fn create(shared: &Arc<Shared>, key: Key, body: Value) -> Result<Value, ApiError> {
    let mut body = normalize(key.0, body);
    match key.0 {
        Resource::PersistentVolumeClaims => {
            body["status"] = json!({"phase": "Bound"});
            let _ = std::fs::create_dir_all(shared.workspace(&key.1, &key.2));
        }
        Resource::Pods => {
            body["status"] = json!({"phase": "Pending"});
            if let Some(claim) = crate::claim_of(&body) {
                let holders: Vec<String> = shared
                    .store()
                    .list(Resource::Pods, &key.1)
                    .iter()
                    .filter(|p| crate::claim_of(p).as_deref() == Some(&claim))
                    .filter_map(|p| p["metadata"]["name"].as_str().map(str::to_string))
                    .collect();
                for old in holders {
                    lock(&shared.overlaps).push(format!("{} over {old}", key.2));
                }
            }
        }
        _ => {}
    }
    let created = shared.store().create(key.clone(), body)?;
    if key.0 == Resource::Pods {
        tokio::spawn(kubelet::run_pod(shared.clone(), key));
    }
    Ok(created)
}

fn delete(
    shared: &Arc<Shared>,
    key: Key,
    options: &Value,
    grace: Option<u64>,
) -> Result<Value, ApiError> {
    let mut store = shared.store();
    let current = store.check_preconditions(&key, options)?.clone();
    if key.0 == Resource::Pods && grace != Some(0) {
        if !current["metadata"]["deletionTimestamp"].is_null() {
            return Ok(current); // already terminating
        }
        let grace = grace.unwrap_or(30);
        let marked = store
            .modify(&key, |pod| {
                pod["metadata"]["deletionTimestamp"] = json!(now());
                pod["metadata"]["deletionGracePeriodSeconds"] = json!(grace);
            })
            .ok_or_else(|| ApiError::not_found(&key))?;
        drop(store);
        tokio::spawn(kubelet::terminate(
            shared.clone(),
            key,
            Duration::from_secs(grace),
        ));
        return Ok(marked);
    }
    let removed = store
        .remove(&key)
        .ok_or_else(|| ApiError::not_found(&key))?;
    drop(store);
    if key.0 == Resource::PersistentVolumeClaims {
        let _ = std::fs::remove_dir_all(shared.workspace(&key.1, &key.2));
    }
    Ok(removed)
}

fn selected(query: &Query, object: &Value) -> bool {
    query
        .get("labelSelector")
        .is_none_or(|s| matches_labels(object, s))
        && query
            .get("fieldSelector")
            .is_none_or(|s| matches_fields(object, s))
}

fn list(shared: &Shared, target: &Target, query: &Query) -> Response<Body> {
    let store = shared.store();
    let items: Vec<Value> = store
        .list(target.resource, &target.namespace)
        .into_iter()
        .filter(|o| selected(query, o))
        .collect();
    json_response(
        StatusCode::OK,
        &json!({
            "kind": format!("{}List", target.resource.kind()),
            "apiVersion": target.resource.api_version(),
            "metadata": {"resourceVersion": store.version().to_string()},
            "items": items,
        }),
    )
}

fn event(kind: &str, object: &Value) -> Bytes {
    let mut line = json!({"type": kind, "object": object}).to_string();
    line.push('\n');
    Bytes::from(line)
}

fn watch(shared: &Shared, target: &Target, query: &Query) -> Response<Body> {
    let since: u64 = query
        .get("resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let timeout = query
        .get("timeoutSeconds")
        .and_then(|t| t.parse().ok())
        .map_or(Duration::from_secs(300), Duration::from_secs);
    let (backlog, mut changes, mut last) = {
        let store = shared.store();
        let changes = store.subscribe();
        let backlog = if since == 0 {
            // No version: the current objects as ADDED, then what follows.
            Ok(store
                .list(target.resource, &target.namespace)
                .into_iter()
                .map(|object| Change {
                    resource: target.resource,
                    namespace: target.namespace.clone(),
                    kind: "ADDED",
                    version: store.version(),
                    object,
                })
                .collect())
        } else {
            store.since(since)
        };
        (backlog, changes, since.max(store.version()))
    };
    let backlog = match backlog {
        Ok(changes) => changes,
        Err(gone) => {
            let body = event("ERROR", &gone.status());
            return full(StatusCode::OK, "application/json", body);
        }
    };
    let resource = target.resource;
    let namespace = target.namespace.clone();
    let labels = query.get("labelSelector").map(str::to_string);
    let fields = query.get("fieldSelector").map(str::to_string);
    let wanted = move |c: &Change| {
        c.resource == resource
            && c.namespace == namespace
            && labels
                .as_deref()
                .is_none_or(|s| matches_labels(&c.object, s))
            && fields
                .as_deref()
                .is_none_or(|s| matches_fields(&c.object, s))
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(256);
    let mut epoch = shared.watch_epoch.subscribe();
    epoch.mark_unchanged();
    tokio::spawn(async move {
        for c in backlog.iter().filter(|c| wanted(c)) {
            if tx.send(event(c.kind, &c.object)).await.is_err() {
                return;
            }
        }
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                _ = &mut deadline => return,
                _ = tx.closed() => return,
                _ = epoch.changed() => return,
                change = changes.recv() => match change {
                    Ok(c) if c.version > last => {
                        last = c.version;
                        if wanted(&c) && tx.send(event(c.kind, &c.object)).await.is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    // Fell behind: end the watch; the client resumes from
                    // its last version (or lists again on 410).
                    Err(_) => return,
                },
            }
        }
    });
    stream_response(rx, "application/json")
}

fn stream_response(rx: tokio::sync::mpsc::Receiver<Bytes>, content_type: &str) -> Response<Body> {
    let frames = tokio_stream::wrappers::ReceiverStream::new(rx).map(|b| Ok(Frame::data(b)));
    let mut res = Response::new(BodyExt::boxed(StreamBody::new(frames)));
    if let Ok(v) = header::HeaderValue::from_str(content_type) {
        res.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    res
}

fn logs(shared: &Arc<Shared>, key: Key, query: &Query) -> Response<Body> {
    if shared.get(&key).is_none() {
        return error(&ApiError::not_found(&key));
    }
    let mut lines_rx = shared.log_lines.subscribe();
    let backlog: Vec<String> = lock(&shared.logs).get(&key).cloned().unwrap_or_default();
    let follow = query.flag("follow");
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(256);
    let shared = shared.clone();
    tokio::spawn(async move {
        for line in backlog {
            if tx.send(Bytes::from(format!("{line}\n"))).await.is_err() {
                return;
            }
        }
        if !follow {
            return;
        }
        loop {
            tokio::select! {
                _ = tx.closed() => return,
                _ = tokio::time::sleep(Duration::from_millis(100)) => {
                    if shared.get(&key).is_none() { return; }
                }
                line = lines_rx.recv() => match line {
                    Ok((k, line)) if k == key => {
                        if tx.send(Bytes::from(format!("{line}\n"))).await.is_err() { return; }
                    }
                    Ok(_) => {}
                    Err(_) => return,
                },
            }
        }
    });
    stream_response(rx, "text/plain")
}

/// The Pod's env as its container would see it: plain values, and
/// `secretKeyRef`s resolved from the namespace's Secrets.
fn pod_env(shared: &Shared, key: &Key, pod: &Value) -> Result<Vec<(String, String)>, ApiError> {
    let mut env = Vec::new();
    for var in pod["spec"]["containers"][0]["env"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let name = var["name"].as_str().unwrap_or_default().to_string();
        if let Some(v) = var["value"].as_str() {
            env.push((name, v.to_string()));
        } else if let Some(r) = var.pointer("/valueFrom/secretKeyRef") {
            let secret = (
                Resource::Secrets,
                key.1.clone(),
                r["name"].as_str().unwrap_or_default().to_string(),
            );
            let data = shared
                .get(&secret)
                .and_then(|s| {
                    s["data"][r["key"].as_str().unwrap_or_default()]
                        .as_str()
                        .map(str::to_string)
                })
                .ok_or_else(|| {
                    ApiError::new(
                        400,
                        "BadRequest",
                        format!("secret {:?} key {:?} not found", secret.2, r["key"]),
                    )
                })?;
            let value = base64::engine::general_purpose::STANDARD
                .decode(data)
                .map_err(|e| ApiError::new(500, "InternalError", e.to_string()))?;
            env.push((name, String::from_utf8_lossy(&value).into_owned()));
        }
    }
    Ok(env)
}

fn exec(
    shared: &Arc<Shared>,
    key: Key,
    query: &Query,
    headers: &http::HeaderMap,
    upgrade: hyper::upgrade::OnUpgrade,
) -> Response<Body> {
    let Some(pod) = shared.get(&key) else {
        return error(&ApiError::not_found(&key));
    };
    let running = pod
        .pointer("/status/containerStatuses/0/state/running")
        .is_some()
        && pod["metadata"]["deletionTimestamp"].is_null();
    if !running {
        return error(&ApiError::new(
            400,
            "BadRequest",
            format!("container not found or not running in pod {:?}", key.2),
        ));
    }
    let command = query.all("command");
    if command.is_empty() {
        return error(&ApiError::new(
            400,
            "BadRequest",
            "you must specify at least 1 command",
        ));
    }
    let env = match pod_env(shared, &key, &pod) {
        Ok(env) => env,
        Err(e) => return error(&e),
    };
    let claim = crate::claim_of(&pod);
    let cwd = claim.map_or_else(std::env::temp_dir, |c| shared.workspace(&key.1, &c));
    let Some(ws_key) = headers.get(header::SEC_WEBSOCKET_KEY) else {
        return error(&ApiError::new(
            400,
            "BadRequest",
            "exec needs a websocket upgrade",
        ));
    };
    let accept = tungstenite::handshake::derive_accept_key(ws_key.as_bytes());
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else { return };
        let ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
            TokioIo::new(upgraded),
            tungstenite::protocol::Role::Server,
            None,
        )
        .await;
        run_exec(ws, command, cwd, env).await;
    });
    let mut res = Response::new(Full::new(Bytes::new()).boxed());
    *res.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = res.headers_mut();
    h.insert(
        header::UPGRADE,
        header::HeaderValue::from_static("websocket"),
    );
    h.insert(
        header::CONNECTION,
        header::HeaderValue::from_static("Upgrade"),
    );
    h.insert(
        header::SEC_WEBSOCKET_PROTOCOL,
        header::HeaderValue::from_static("v4.channel.k8s.io"),
    );
    if let Ok(v) = header::HeaderValue::from_str(&accept) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    res
}

async fn run_exec<S>(
    mut ws: tokio_tungstenite::WebSocketStream<S>,
    command: Vec<String>,
    cwd: std::path::PathBuf,
    env: Vec<(String, String)>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    // The workspace is "mounted" at /sandbox: paths under it, in any
    // argument (a shell script too), are pointed at the claim's directory.
    let args: Vec<String> = command[1..].iter().map(|a| mount(a, &cwd)).collect();
    let spawned = tokio::process::Command::new(&command[0])
        .args(args)
        .current_dir(&cwd)
        .envs(env)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn();
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => {
            let status = json!({"status": "Failure", "message": format!("exec: {e}"), "reason": "InternalError"});
            let _ = ws.send(channel(3, status.to_string().as_bytes())).await;
            let _ = ws.close(None).await;
            return;
        }
    };
    let (Some(mut out), Some(mut err)) = (child.stdout.take(), child.stderr.take()) else {
        return;
    };
    let (mut out_buf, mut err_buf) = ([0u8; 8192], [0u8; 8192]);
    let (mut out_open, mut err_open) = (true, true);
    while out_open || err_open {
        tokio::select! {
            n = out.read(&mut out_buf), if out_open => match n {
                Ok(0) | Err(_) => out_open = false,
                Ok(n) => if ws.send(channel(1, &out_buf[..n])).await.is_err() { return },
            },
            n = err.read(&mut err_buf), if err_open => match n {
                Ok(0) | Err(_) => err_open = false,
                Ok(n) => if ws.send(channel(2, &err_buf[..n])).await.is_err() { return },
            },
        }
    }
    let code = child.wait().await.ok().and_then(|s| s.code()).unwrap_or(-1);
    let status = if code == 0 {
        json!({"metadata": {}, "status": "Success"})
    } else {
        json!({
            "metadata": {}, "status": "Failure",
            "message": format!("command terminated with non-zero exit code: {code}"),
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
        })
    };
    let _ = ws.send(channel(3, status.to_string().as_bytes())).await;
    let _ = ws.close(None).await;
}

/// `arg` with every `/sandbox` path pointed into `dir`.
fn mount(arg: &str, dir: &std::path::Path) -> String {
    let mut out = String::new();
    let mut rest = arg;
    while let Some(i) = rest.find("/sandbox") {
        let after = &rest[i + "/sandbox".len()..];
        let whole = after
            .chars()
            .next()
            .is_none_or(|c| !(c.is_alphanumeric() || c == '_' || c == '-' || c == '.'));
        out.push_str(&rest[..i]);
        if whole {
            out.push_str(&dir.display().to_string());
        } else {
            out.push_str("/sandbox");
        }
        rest = after;
    }
    out.push_str(rest);
    out
}

fn channel(n: u8, data: &[u8]) -> Message {
    let mut frame = Vec::with_capacity(data.len() + 1);
    frame.push(n);
    frame.extend_from_slice(data);
    Message::binary(frame)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_route_to_resources() {
        let t = route("/api/v1/namespaces/ns/pods/p/exec").unwrap();
        assert_eq!((t.resource, t.namespace.as_str()), (Resource::Pods, "ns"));
        assert_eq!(
            (t.name.as_deref(), t.sub.as_deref()),
            (Some("p"), Some("exec"))
        );
        let t = route("/apis/networking.k8s.io/v1/namespaces/ns/networkpolicies").unwrap();
        assert_eq!((t.resource, t.name), (Resource::NetworkPolicies, None));
        assert!(route("/api/v1/nodes").is_none());
        assert!(route("/apis/apps/v1/namespaces/ns/deployments").is_none());
    }

    #[test]
    fn the_workspace_is_mounted_at_sandbox() {
        let dir = std::path::Path::new("/tmp/ws");
        assert_eq!(mount("/sandbox", dir), "/tmp/ws");
        assert_eq!(
            mount("echo x > /sandbox/note; cat /sandbox/a", dir),
            "echo x > /tmp/ws/note; cat /tmp/ws/a"
        );
        assert_eq!(mount("/sandboxes/x", dir), "/sandboxes/x");
    }

    #[test]
    fn queries_decode() {
        let q = Query::parse(Some(
            "command=sh&command=-c&command=echo%20hi%3Dx&watch=true",
        ));
        assert_eq!(q.all("command"), ["sh", "-c", "echo hi=x"]);
        assert!(q.flag("watch"));
    }
}
