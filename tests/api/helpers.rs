//! The real server on port 0 against real databases: a fresh SQLite file or a
//! fresh database in a throwaway Postgres cluster this harness starts itself.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use authgate::app::{Application, Time};
use authgate::clock::ManualClock;
use authgate::config::{Config, DatabaseUrl};
use authgate::domain::UnixMillis;
use authgate::grpc::proto;
use authgate::grpc::proto::access_service_client::AccessServiceClient;
use authgate::grpc::proto::admin_service_client::AdminServiceClient;
use sqlx::Connection;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

pub const MINUTE: Duration = Duration::from_secs(60);

/// The audit retention tests purge with: long enough to keep everything.
pub const RETENTION: Duration = Duration::from_secs(90 * 24 * 3600);

/// The TOTP encryption key of test servers (base64 of 32 bytes).
pub const TEST_KEY: &str = "YXV0aGdhdGUtdGVzdC1rZXktMzItYnl0ZXMtbG9uZyE=";
/// `passwords.keys` for a child process, as an environment value.
pub const PASSWORD_KEYS_ENV: &str =
    "[{id=\"test\",key=\"YXV0aGdhdGUtdGVzdC1rZXktMzItYnl0ZXMtbG9uZyE=\"}]";

/// 2026-01-01T00:00:00Z: tests start their clocks here and move them.
pub const EPOCH: UnixMillis = UnixMillis(1_767_225_600_000);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Where the Postgres binaries are: PG_BIN, PATH, or Debian's layout.
pub fn pg_bin(name: &str) -> PathBuf {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Ok(dir) = std::env::var("PG_BIN") {
        candidates.push(Path::new(&dir).join(name));
    }
    if let Ok(path) = std::env::var("PATH") {
        candidates.extend(std::env::split_paths(&path).map(|d| d.join(name)));
    }
    if let Ok(entries) = std::fs::read_dir("/usr/lib/postgresql") {
        let mut versions: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path().join("bin").join(name))
            .collect();
        versions.sort();
        candidates.extend(versions.into_iter().rev());
    }
    candidates
        .into_iter()
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "Postgres server binaries ({name}) not found. Install them (Debian: \
             `apt-get install postgresql`) or point PG_BIN at their directory."
            )
        })
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Runs a Postgres tool, as the `postgres` user when we are root (Postgres
/// refuses to run as root).
fn pg_command(name: &str) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(pg_bin(name));
        c
    } else {
        Command::new(pg_bin(name))
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

fn run(cmd: &mut Command, what: &str) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A throwaway Postgres cluster. A watchdog process stops it and deletes
/// its files when the test process exits, however it exits.
pub struct PgCluster {
    dir: PathBuf,
    pub port: u16,
}

impl PgCluster {
    pub fn start() -> PgCluster {
        let dir = tempfile::Builder::new()
            .prefix("authgate-pg-")
            .tempdir()
            .expect("temp dir")
            .keep();
        if is_root() {
            run(
                Command::new("chown")
                    .args(["-R", "postgres:postgres"])
                    .arg(&dir),
                "chown",
            );
        }
        let data = dir.join("data");
        run(
            pg_command("initdb").arg("-D").arg(&data).args([
                "-U",
                "postgres",
                "-A",
                "trust",
                "--no-sync",
                "-E",
                "UTF8",
            ]),
            "initdb",
        );
        let cluster = PgCluster {
            dir,
            port: free_port(),
        };
        cluster.pg_ctl_start();
        let watchdog = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 1; done; \
             {stop} -D '{data}' -m immediate stop; rm -rf '{dir}'",
            pid = std::process::id(),
            stop = if is_root() {
                format!("runuser -u postgres -- '{}'", pg_bin("pg_ctl").display())
            } else {
                format!("'{}'", pg_bin("pg_ctl").display())
            },
            data = data.display(),
            dir = cluster.dir.display(),
        );
        // Deliberately never waited for: it must outlive this process.
        #[allow(clippy::zombie_processes)]
        Command::new("sh")
            .args(["-c", &watchdog])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("watchdog");
        cluster
    }

    fn pg_ctl_start(&self) {
        let opts = format!(
            "-k '{}' -p {} -c listen_addresses=127.0.0.1 -c max_connections=400 -c fsync=off",
            self.dir.display(),
            self.port
        );
        run(
            pg_command("pg_ctl")
                .arg("-D")
                .arg(self.dir.join("data"))
                .args(["-w", "-l"])
                .arg(self.dir.join("log"))
                .args(["-o", &opts, "start"]),
            "pg_ctl start",
        );
    }

    /// Stops the server, to see how authgate behaves without its store.
    pub fn stop(&self) {
        run(
            pg_command("pg_ctl")
                .arg("-D")
                .arg(self.dir.join("data"))
                .args(["-w", "-m", "fast", "stop"]),
            "pg_ctl stop",
        );
    }

    pub fn restart(&self) {
        self.pg_ctl_start();
    }

    fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// A fresh, empty database, dropped when the handle is.
    pub async fn database(&self) -> TestDb {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "t_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        );
        let mut admin = sqlx::PgConnection::connect(&self.url("postgres"))
            .await
            .expect("connect to cluster");
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut admin)
            .await
            .expect("create database");
        TestDb::Postgres {
            url: self.url(&name),
            admin_url: self.url("postgres"),
            name,
        }
    }
}

/// The cluster most tests share, started on first use.
pub fn shared_cluster() -> &'static PgCluster {
    static CLUSTER: OnceLock<PgCluster> = OnceLock::new();
    CLUSTER.get_or_init(PgCluster::start)
}

pub enum TestDb {
    Sqlite {
        _dir: tempfile::TempDir,
        url: String,
    },
    Postgres {
        url: String,
        admin_url: String,
        name: String,
    },
    /// Another handle on a database some other `TestDb` owns (and drops).
    Shared { url: String },
}

impl TestDb {
    pub async fn new(backend: Backend) -> TestDb {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("temp dir");
                let url = format!("sqlite://{}", dir.path().join("authgate.db").display());
                TestDb::Sqlite { _dir: dir, url }
            }
            Backend::Postgres => shared_cluster().database().await,
        }
    }

    pub fn url(&self) -> &str {
        match self {
            TestDb::Sqlite { url, .. } | TestDb::Postgres { url, .. } | TestDb::Shared { url } => {
                url
            }
        }
    }

    /// Every byte the database keeps on disk: the SQLite file with its WAL,
    /// or every file of the Postgres cluster (its WAL included) and a
    /// pg_dump of the database.
    pub fn everything_on_disk(&self) -> Vec<Vec<u8>> {
        fn files_under(dir: &Path, out: &mut Vec<Vec<u8>>) {
            for entry in std::fs::read_dir(dir).expect("read dir").flatten() {
                let path = entry.path();
                if path.is_dir() {
                    files_under(&path, out);
                } else if let Ok(bytes) = std::fs::read(&path) {
                    out.push(bytes);
                }
            }
        }
        let mut out = Vec::new();
        match self {
            TestDb::Sqlite { _dir, .. } => files_under(_dir.path(), &mut out),
            _ => {
                files_under(&shared_cluster().dir.join("data"), &mut out);
                let dump = Command::new(pg_bin("pg_dump"))
                    .arg(self.url())
                    .output()
                    .expect("pg_dump runs");
                assert!(dump.status.success(), "pg_dump: {:?}", dump);
                out.push(dump.stdout);
            }
        }
        out
    }

    /// A handle for a second replica on the same database.
    pub fn share(&self) -> TestDb {
        TestDb::Shared {
            url: self.url().to_owned(),
        }
    }

    /// Runs a `SELECT name, number ...` straight against the database.
    pub async fn pairs(&self, sql: &'static str) -> Vec<(String, i64)> {
        let url = self.url();
        if url.starts_with("sqlite:") {
            let mut c = sqlx::SqliteConnection::connect(url).await.expect("connect");
            sqlx::query_as(sql).fetch_all(&mut c).await.expect("pairs")
        } else {
            let mut c = sqlx::PgConnection::connect(url).await.expect("connect");
            sqlx::query_as(sql).fetch_all(&mut c).await.expect("pairs")
        }
    }

    /// Runs a `SELECT COUNT(*) ...` straight against the database.
    pub async fn count(&self, sql: &'static str) -> i64 {
        let url = self.url();
        if url.starts_with("sqlite:") {
            let mut c = sqlx::SqliteConnection::connect(url).await.expect("connect");
            sqlx::query_scalar(sql)
                .fetch_one(&mut c)
                .await
                .expect("count")
        } else {
            let mut c = sqlx::PgConnection::connect(url).await.expect("connect");
            sqlx::query_scalar(sql)
                .fetch_one(&mut c)
                .await
                .expect("count")
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let TestDb::Postgres {
            admin_url, name, ..
        } = self
        {
            let (admin_url, name) = (admin_url.clone(), name.clone());
            // Drop cannot await; a short-lived runtime on its own thread can.
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .ok()?;
                rt.block_on(async {
                    let mut c = sqlx::PgConnection::connect(&admin_url).await.ok()?;
                    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                    )))
                    .execute(&mut c)
                    .await
                    .ok()
                })
            })
            .join();
        }
    }
}

/// A running server with a clock the test moves.
pub struct TestServer {
    pub addr: SocketAddr,
    /// The forward-auth listener, when the test's TOML sets
    /// `gateway.http.listen`.
    pub forward_auth: Option<SocketAddr>,
    pub clock: Arc<ManualClock>,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<()>>,
    pub db: TestDb,
}

/// The test configuration: the shipped defaults, an admin called "admin",
/// then whatever TOML the test adds (which wins).
pub fn config(extra: &str, db: &TestDb) -> (Config, authgate::domain::Policy) {
    use figment::providers::{Format, Toml};
    let figment = figment::Figment::new()
        .merge(Toml::string(&format!(
            "[access]\nadmin_user_ids = [\"admin\"]\n[totp]\nkeys = [{{ id = \"test\", key = \"{TEST_KEY}\" }}]\n[passwords]\nkeys = [{{ id = \"test\", key = \"{TEST_KEY}\" }}]"
        )))
        .merge(Toml::string(extra));
    let (mut config, policy) = Config::from_figment(figment).expect("test config is valid");
    config.server.listen = "127.0.0.1:0".parse().expect("addr");
    config.metrics.listen = "127.0.0.1:0".parse().expect("addr");
    config.database.url = DatabaseUrl::new(db.url());
    (config, policy)
}

impl TestServer {
    pub async fn spawn(backend: Backend) -> TestServer {
        Self::spawn_with(backend, "").await
    }

    pub async fn spawn_with(backend: Backend, extra_toml: &str) -> TestServer {
        let db = TestDb::new(backend).await;
        Self::spawn_on(db, extra_toml).await
    }

    pub async fn spawn_on(db: TestDb, extra_toml: &str) -> TestServer {
        let (config, policy) = config(extra_toml, &db);
        let clock = Arc::new(ManualClock::new(EPOCH));
        let app = Application::build(&config, policy, Time::Manual(clock.clone()))
            .await
            .expect("server starts");
        let addr = app.local_addr();
        let forward_auth = app.forward_auth_addr();
        let (tx, rx) = oneshot::channel();
        let handle = tokio::spawn(async move {
            app.run_until(async {
                let _ = rx.await;
            })
            .await
            .expect("server runs");
        });
        TestServer {
            addr,
            forward_auth,
            clock,
            shutdown: Some(tx),
            handle: Some(handle),
            db,
        }
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr))
            .expect("uri")
            .connect()
            .await
            .expect("connect")
    }

    pub async fn access(&self) -> AccessServiceClient<Channel> {
        AccessServiceClient::new(self.channel().await)
    }

    pub async fn admin(&self) -> AdminServiceClient<Channel> {
        AdminServiceClient::new(self.channel().await)
    }

    pub async fn stop(self) {
        self.stop_keeping_db().await;
    }

    /// Stops the server and hands back its database, for a restart.
    pub async fn stop_keeping_db(mut self) -> TestDb {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.handle.take() {
            h.await.expect("server task");
        }
        self.db
    }
}

pub fn subject(user: &str, ip: &str) -> Option<proto::Subject> {
    Some(proto::Subject {
        user_id: user.into(),
        ip: ip.into(),
        session_id: String::new(),
        ..proto::Subject::default()
    })
}

pub async fn check(
    c: &mut AccessServiceClient<Channel>,
    context: &str,
    s: Option<proto::Subject>,
) -> proto::Verdict {
    c.check_access(proto::CheckAccessRequest {
        context: context.into(),
        subject: s,
    })
    .await
    .expect("CheckAccess")
    .into_inner()
    .verdict
    .expect("verdict")
}

pub async fn fail(
    c: &mut AccessServiceClient<Channel>,
    context: &str,
    s: Option<proto::Subject>,
) -> proto::RecordFailureResponse {
    c.record_failure(proto::RecordFailureRequest {
        context: context.into(),
        subject: s,
        activity: String::new(),
    })
    .await
    .expect("RecordFailure")
    .into_inner()
}

pub async fn success(
    c: &mut AccessServiceClient<Channel>,
    context: &str,
    s: Option<proto::Subject>,
) -> proto::Verdict {
    c.record_success(proto::RecordSuccessRequest {
        context: context.into(),
        subject: s,
    })
    .await
    .expect("RecordSuccess")
    .into_inner()
    .verdict
    .expect("verdict")
}

/// The security alert stream, as the test admin.
pub async fn watch(a: &mut AdminServiceClient<Channel>) -> tonic::Streaming<proto::SecurityAlert> {
    a.watch_security_events(proto::WatchSecurityEventsRequest {
        actor_user_id: "admin".into(),
    })
    .await
    .expect("WatchSecurityEvents")
    .into_inner()
}

/// Two authgate processes on one fresh Postgres database, "admin" an admin,
/// with `env` on top.
pub async fn two_replicas(env: &[(&str, &str)]) -> (TestDb, tempfile::TempDir, [ChildServer; 2]) {
    let db = TestDb::new(Backend::Postgres).await;
    let dir = tempfile::tempdir().unwrap();
    let replicas = [
        replica(&db, dir.path(), Wall::True, env),
        replica(&db, dir.path(), Wall::True, env),
    ];
    (db, dir, replicas)
}

/// One authgate process on `db`, "admin" an admin, its wall clock as
/// `wall` says, with `env` on top.
pub fn replica(db: &TestDb, cwd: &Path, wall: Wall<'_>, env: &[(&str, &str)]) -> ChildServer {
    let mut all = vec![
        ("AUTHGATE_DATABASE__URL", db.url()),
        ("AUTHGATE_SERVER__LISTEN", "127.0.0.1:0"),
        ("AUTHGATE_ACCESS__ADMIN_USER_IDS", "[\"admin\"]"),
    ];
    all.extend_from_slice(env);
    ChildServer::spawn_with_wall(cwd, &[], &all, wall)
}

/// A child process's wall clock, as libfaketime (Debian's faketime) moves
/// it: its monotonic clock is left alone, as after an NTP step or a VM
/// resume.
#[derive(Clone, Copy)]
pub enum Wall<'a> {
    True,
    /// Shifted by a libfaketime offset such as "+2h" or "-2h".
    Shifted(&'a str),
    /// Shifted by the offset the file holds, read again on every clock
    /// call, so a test steps the clock by rewriting it.
    FromFile(&'a Path),
}

/// libfaketime's thread-safe build, wherever Debian put it for this
/// architecture.
fn libfaketime() -> PathBuf {
    std::fs::read_dir("/usr/lib")
        .into_iter()
        .flatten()
        .flatten()
        .map(|d| d.path().join("faketime/libfaketimeMT.so.1"))
        .find(|p| p.is_file())
        .expect("libfaketime is installed (apt-get install faketime; scripts/test.sh does)")
}

/// A metric's value in a Prometheus scrape (0 when absent).
pub fn metric(scrape: &str, series: &str) -> f64 {
    scrape
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

/// Awaits every task, in order.
pub async fn futures_join_all<T: Send + 'static>(
    tasks: impl Iterator<Item = tokio::task::JoinHandle<T>>,
) -> Vec<T> {
    let handles: Vec<_> = tasks.collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        out.push(h.await.expect("task"));
    }
    out
}

/// GetSubject as the test admin.
pub async fn report(
    a: &mut AdminServiceClient<Channel>,
    s: Option<proto::Subject>,
) -> proto::GetSubjectResponse {
    a.get_subject(proto::GetSubjectRequest {
        actor_user_id: "admin".into(),
        subject: s,
    })
    .await
    .expect("GetSubject")
    .into_inner()
}

/// Every lock in force, as the admin sees them (first page).
pub async fn locked(a: &mut AdminServiceClient<Channel>) -> Vec<proto::Lock> {
    a.list_locked(proto::ListLockedRequest {
        actor_user_id: "admin".into(),
        ..Default::default()
    })
    .await
    .expect("ListLocked")
    .into_inner()
    .locks
}

/// The audit trail, newest first, of `kind` ('' for every kind).
pub async fn audit_events(
    a: &mut AdminServiceClient<Channel>,
    kind: &str,
) -> Vec<proto::AuditEvent> {
    a.list_audit_events(proto::ListAuditEventsRequest {
        actor_user_id: "admin".into(),
        kind: kind.into(),
        ..Default::default()
    })
    .await
    .expect("ListAuditEvents")
    .into_inner()
    .events
}

pub fn decision(v: &proto::Verdict) -> proto::Decision {
    proto::Decision::try_from(v.decision).expect("known decision")
}

/// authgate as its own process, as it runs in production.
pub struct ChildServer {
    child: std::process::Child,
    pub addr: SocketAddr,
    /// The Prometheus endpoint's URL.
    pub metrics_url: String,
    /// Collects everything the process logs, until it exits.
    log: Option<std::thread::JoinHandle<Vec<String>>>,
}

impl ChildServer {
    /// Starts the real binary with `env` on top of an otherwise empty
    /// environment for AUTHGATE_*, listening on a free port, and waits for
    /// its "listening" line.
    pub fn spawn(cwd: &Path, args: &[&str], env: &[(&str, &str)]) -> ChildServer {
        Self::spawn_with_wall(cwd, args, env, Wall::True)
    }

    /// `spawn`, with the process's wall clock as `wall` says.
    pub fn spawn_with_wall(
        cwd: &Path,
        args: &[&str],
        env: &[(&str, &str)],
        wall: Wall<'_>,
    ) -> ChildServer {
        use std::io::BufRead;
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_authgate"));
        match wall {
            Wall::True => {}
            Wall::Shifted(offset) => {
                cmd.env("FAKETIME", offset);
            }
            Wall::FromFile(file) => {
                cmd.env("FAKETIME_TIMESTAMP_FILE", file)
                    .env("FAKETIME_NO_CACHE", "1");
            }
        }
        if !matches!(wall, Wall::True) {
            cmd.env("LD_PRELOAD", libfaketime())
                .env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
        }
        cmd.current_dir(cwd)
            .args(args)
            .env("AUTHGATE_LOG__LEVEL", "info")
            .env("AUTHGATE_METRICS__LISTEN", "127.0.0.1:0")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // The shipped login context's password rule needs a key on
        // Postgres; SQLite generates its own when none is given.
        if env
            .iter()
            .any(|(k, v)| *k == "AUTHGATE_DATABASE__URL" && v.starts_with("postgres"))
        {
            cmd.env("AUTHGATE_PASSWORDS__KEYS", PASSWORD_KEYS_ENV);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("authgate binary starts");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = std::io::BufReader::new(stdout).lines();
        let mut seen = Vec::new();
        let (addr, metrics_url) = loop {
            let Some(Ok(line)) = lines.next() else {
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    let _ = std::io::Read::read_to_string(&mut e, &mut err);
                }
                panic!(
                    "authgate exited before listening:\n{}\n{err}",
                    seen.join("\n")
                );
            };
            if line.contains("authgate listening") {
                let event: serde_json::Value = serde_json::from_str(&line).expect("JSON log lines");
                let field = |name: &str| {
                    event[name]
                        .as_str()
                        .expect("listening line fields")
                        .to_owned()
                };
                break (
                    field("addr").parse().expect("socket address"),
                    field("metrics"),
                );
            }
            seen.push(line);
        };
        let log = std::thread::spawn(move || {
            seen.extend(lines.map_while(Result::ok));
            seen
        });
        ChildServer {
            child,
            addr,
            metrics_url,
            log: Some(log),
        }
    }

    pub async fn access(&self) -> AccessServiceClient<Channel> {
        AccessServiceClient::connect(format!("http://{}", self.addr))
            .await
            .expect("connect")
    }

    pub async fn admin(&self) -> AdminServiceClient<Channel> {
        AdminServiceClient::connect(format!("http://{}", self.addr))
            .await
            .expect("connect")
    }

    /// Sends SIGTERM, as Kubernetes does, and returns the exit status and
    /// everything the process logged.
    pub fn terminate(mut self) -> (std::process::ExitStatus, Vec<String>) {
        run(
            Command::new("kill").args(["-TERM", &self.child.id().to_string()]),
            "kill -TERM",
        );
        let status = self.child.wait().expect("wait");
        let log = self
            .log
            .take()
            .map(|h| h.join().expect("log reader"))
            .unwrap_or_default();
        (status, log)
    }
}

impl ChildServer {
    /// The process's resident memory (VmRSS), in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("the server runs");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc/PID/status")
    }

    /// SIGHUP: reload the configuration.
    pub fn hangup(&self) {
        run(
            Command::new("kill").args(["-HUP", &self.child.id().to_string()]),
            "kill -HUP",
        );
    }

    /// kill -9: no drain, no goodbye.
    pub fn kill(self) {
        drop(self);
    }
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends an API key as `authorization: Bearer <key>` on every call.
#[derive(Clone)]
pub struct Bearer(tonic::metadata::MetadataValue<tonic::metadata::Ascii>);

impl Bearer {
    pub fn new(key: &str) -> Self {
        Bearer(format!("Bearer {key}").parse().expect("ASCII key"))
    }
}

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut r: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        r.metadata_mut().insert("authorization", self.0.clone());
        Ok(r)
    }
}

pub type Keyed = tonic::service::interceptor::InterceptedService<Channel, Bearer>;

/// API keys for a test server: `check` for a bot, `admin` for an operator,
/// and the [auth] TOML that configures their hashes.
pub struct TestKeys {
    pub check: String,
    pub admin: String,
    pub toml: String,
}

impl TestKeys {
    pub fn new() -> TestKeys {
        let (check, check_hash) = authgate::grpc::auth::generate_key();
        let (admin, admin_hash) = authgate::grpc::auth::generate_key();
        TestKeys {
            check: check.to_string(),
            admin: admin.to_string(),
            toml: format!(
                "[auth]\nkeys = [\
                 {{ name = \"chat-bot\", hash = \"{check_hash}\", roles = [\"check\"] }}, \
                 {{ name = \"ops\", hash = \"{admin_hash}\", roles = [\"admin\"] }}]\n"
            ),
        }
    }
}

pub fn keyed_access(channel: Channel, key: &str) -> AccessServiceClient<Keyed> {
    AccessServiceClient::with_interceptor(channel, Bearer::new(key))
}

pub fn keyed_admin(channel: Channel, key: &str) -> AdminServiceClient<Keyed> {
    AdminServiceClient::with_interceptor(channel, Bearer::new(key))
}

/// A client that never gives up on its own: unlike tonic's channel, it does
/// not enforce `grpc-timeout`, so what a caller with a deadline receives is
/// the server's own answer.
pub type Patient = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    tonic::body::Body,
>;

pub fn patient_access(addr: SocketAddr) -> AccessServiceClient<Patient> {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http();
    AccessServiceClient::with_origin(client, format!("http://{addr}").parse().expect("origin"))
}

/// Puts a deadline on `request` the way gRPC clients do, as `grpc-timeout`.
pub fn with_deadline<T>(message: T, millis: u64) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("grpc-timeout", format!("{millis}m").parse().expect("ASCII"));
    request
}

/// Passes bytes through as the message, unchecked: for requests no
/// generated client would send.
#[derive(Clone, Copy, Default)]
pub struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn encode(
        &mut self,
        item: Vec<u8>,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        bytes::BufMut::put_slice(dst, &item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Vec<u8>>, tonic::Status> {
        let bytes = bytes::Buf::copy_to_bytes(src, bytes::Buf::remaining(src));
        Ok(Some(bytes.to_vec()))
    }
}

/// Sends `body` as the request message of the method at `path`.
pub async fn raw_call(
    channel: Channel,
    path: &'static str,
    body: Vec<u8>,
) -> Result<Vec<u8>, tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unknown(e.to_string()))?;
    grpc.unary(
        tonic::Request::new(body),
        http::uri::PathAndQuery::from_static(path),
        RawCodec,
    )
    .await
    .map(tonic::Response::into_inner)
}

/// A plain HTTP/1.0 GET; enough for /metrics and Prometheus's API.
pub fn http_get(url: &str) -> String {
    let rest = url.strip_prefix("http://").expect("http URL");
    let (host, path) = rest
        .split_once('/')
        .map_or((rest, "/".to_owned()), |(h, p)| (h, format!("/{p}")));
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(host).expect("connect");
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(conn, "GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n").unwrap();
    let mut response = String::new();
    conn.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("HTTP response");
    assert!(
        head.starts_with("HTTP/1.") && head.contains(" 200 "),
        "{head}"
    );
    body.to_owned()
}

/// `authgate admin` against `server`, as an operator runs it.
pub fn admin_cli(server: &TestServer, args: &[&str]) -> std::process::Output {
    let addr = format!("http://{}", server.addr);
    std::process::Command::new(env!("CARGO_BIN_EXE_authgate"))
        .args(["admin", "--addr", &addr, "--actor", "admin"])
        .args(args)
        .env_remove("AUTHGATE_API_KEY")
        .output()
        .expect("authgate runs")
}

pub fn succeeded(out: std::process::Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    String::from_utf8(out.stdout).expect("UTF-8")
}
