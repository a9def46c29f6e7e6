//! Test databases: a SQLite file, or a database on a real PostgreSQL that
//! the tests start themselves (Debian's `postgresql`: `initdb` into a
//! temporary directory, a free loopback port, run as the `postgres` user when
//! the tests run as root).
//!
//! The server tests take their store from [`TestDb::new`], which follows
//! `EDGEML_TEST_DB` (`sqlite`, the default, or `postgres`); `.ci/run` runs
//! them once with each. The store tests in `tests/store.rs` run on both
//! every time. Without PostgreSQL the PostgreSQL tests are skipped, with the
//! reason printed, except under `CI=1`, where that fails.

use edgeml_collector::Store;
use std::hash::{Hash, Hasher};
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Which database a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    /// The backend the server tests use (`EDGEML_TEST_DB`).
    pub fn configured() -> Backend {
        match std::env::var("EDGEML_TEST_DB").as_deref() {
            Ok("postgres") => Backend::Postgres,
            Ok("sqlite") | Err(_) => Backend::Sqlite,
            Ok(other) => panic!("EDGEML_TEST_DB={other}: use `sqlite` or `postgres`"),
        }
    }
}

/// One test's database: a file in the test's directory, or a fresh
/// database on the shared PostgreSQL cluster.
#[derive(Debug, Clone)]
pub struct TestDb {
    /// What `edgeml-server --db` takes.
    pub url: String,
    pub backend: Backend,
}

impl TestDb {
    /// The database of a server test whose files live in `dir`, on the
    /// configured backend: the same `dir` is the same database (a test that
    /// restarts its server finds its data again).
    pub fn new(dir: &Path) -> TestDb {
        match Backend::configured() {
            Backend::Sqlite => TestDb::sqlite(dir),
            Backend::Postgres => {
                let mut h = std::collections::hash_map::DefaultHasher::new();
                dir.hash(&mut h);
                TestDb::postgres_named(&format!("d{:016x}", h.finish()))
                    .expect("EDGEML_TEST_DB=postgres, but PostgreSQL cannot start here")
            }
        }
    }

    /// A SQLite file in `dir`.
    pub fn sqlite(dir: &Path) -> TestDb {
        TestDb {
            url: dir.join("fleet.db").to_string_lossy().into_owned(),
            backend: Backend::Sqlite,
        }
    }

    /// A new, empty database on the test cluster; `None` (with the reason
    /// printed) when PostgreSQL is not installed, outside CI.
    pub fn postgres() -> Option<TestDb> {
        static N: AtomicUsize = AtomicUsize::new(0);
        TestDb::postgres_named(&format!("t{}", N.fetch_add(1, Ordering::SeqCst)))
    }

    /// The database `name` on the test cluster, created the first time.
    fn postgres_named(name: &str) -> Option<TestDb> {
        let cluster = match cluster() {
            Ok(c) => c,
            Err(why) if std::env::var_os("CI").is_none() => {
                eprintln!("skipping the PostgreSQL part of this test: {why}");
                return None;
            }
            Err(why) => panic!("PostgreSQL is required in CI (.ci/run installs it): {why}"),
        };
        let mut created = cluster.created.lock().unwrap_or_else(|p| p.into_inner());
        if created.insert(name.to_string()) {
            let mut admin = postgres::Client::connect(&cluster.url("postgres"), postgres::NoTls)
                .expect("connecting to the test cluster");
            admin
                .batch_execute(&format!("CREATE DATABASE {name}"))
                .expect("creating a test database");
        }
        Some(TestDb {
            url: cluster.url(name),
            backend: Backend::Postgres,
        })
    }

    /// Run SQL statements on the database directly, as someone with access
    /// to it (not the server) would.
    pub fn execute(&self, sql: &str) -> Result<(), String> {
        match self.backend {
            Backend::Sqlite => rusqlite::Connection::open(&self.url)
                .and_then(|c| c.execute_batch(sql))
                .map_err(|e| e.to_string()),
            Backend::Postgres => postgres::Client::connect(&self.url, postgres::NoTls)
                .and_then(|mut c| c.batch_execute(sql))
                .map_err(|e| format!("{e:?}")),
        }
    }

    /// Open (and migrate) the store, as the server does.
    pub fn open(&self) -> Arc<dyn Store> {
        edgeml_collector::store::open(&self.url)
            .unwrap_or_else(|e| panic!("opening {}: {e}", self.url))
    }
}

/// The PostgreSQL cluster the test process shares.
struct Cluster {
    port: u16,
    bin: PathBuf,
    /// Databases made so far (named after the test process and directory).
    created: Mutex<std::collections::HashSet<String>>,
    // Closing this pipe (when the test process ends) stops the server and
    // removes its directory: see `start`.
    _lifeline: Mutex<std::process::ChildStdin>,
    _child: Mutex<Child>,
}

impl Cluster {
    fn url(&self, database: &str) -> String {
        format!("postgres://edgeml@127.0.0.1:{}/{database}", self.port)
    }
}

fn cluster() -> Result<&'static Cluster, String> {
    static CLUSTER: OnceLock<Result<Cluster, String>> = OnceLock::new();
    CLUSTER.get_or_init(start).as_ref().map_err(Clone::clone)
}

/// Debian's versioned PostgreSQL programs (`/usr/lib/postgresql/N/bin`),
/// newest first, or the ones on PATH.
fn pg_bin() -> Result<PathBuf, String> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse().ok()?;
            Some((v, e.path().join("bin")))
        })
        .filter(|(_, p)| p.join("initdb").is_file())
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Ok(bin);
    }
    let found = Command::new("sh")
        .args(["-c", "command -v initdb"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    match found.and_then(|p| p.parent().map(Path::to_path_buf)) {
        Some(bin) => Ok(bin),
        None => Err("no initdb (Debian: apt-get install postgresql)".into()),
    }
}

fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    // /proc/self belongs to the process's effective user.
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// A command run as the `postgres` user when we are root (PostgreSQL
/// refuses to run as root), else as ourselves.
fn as_postgres_user(program: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn start() -> Result<Cluster, String> {
    let bin = pg_bin()?;
    let dir = tempfile::Builder::new()
        .prefix("edgeml-pg-")
        .tempdir()
        .map_err(|e| e.to_string())?
        .keep();
    if is_root() {
        let st = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(&dir)
            .status()
            .map_err(|e| format!("chown: {e}"))?;
        if !st.success() {
            return Err("chown of the cluster directory to the postgres user failed (is there a postgres user?)".into());
        }
    }
    let data = dir.join("data");
    let out = as_postgres_user(&bin.join("initdb"))
        .args([
            "-U",
            "edgeml",
            "--auth=trust",
            "--no-locale",
            "-E",
            "UTF8",
            "--no-sync",
            "-D",
        ])
        .arg(&data)
        .output()
        .map_err(|e| format!("initdb: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| e.to_string())?
        .port();
    // The server runs under a shell that waits for its stdin to close: when
    // the test process exits (however it exits), the pipe closes, the shell
    // stops PostgreSQL (fast shutdown) and deletes the directory.
    let script = format!(
        "{postgres} -D {data} -p {port} -k {dir} -c listen_addresses=127.0.0.1 -c fsync=off \
         -c max_connections=200 -c shared_buffers=32MB >{dir}/log 2>&1 & pid=$!; \
         cat >/dev/null; kill -INT $pid; wait $pid; rm -rf {dir}",
        postgres = bin.join("postgres").display(),
        data = data.display(),
        dir = dir.display(),
    );
    let mut child = as_postgres_user(Path::new("/bin/sh"))
        .arg("-c")
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .map_err(|e| format!("starting postgres: {e}"))?;
    let lifeline = child.stdin.take().ok_or("no stdin pipe")?;
    let cluster = Cluster {
        port,
        bin,
        created: Mutex::default(),
        _lifeline: Mutex::new(lifeline),
        _child: Mutex::new(child),
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ready = as_postgres_user(&cluster.bin.join("pg_isready"))
            .args(["-q", "-h", "127.0.0.1", "-p"])
            .arg(port.to_string())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if ready {
            return Ok(cluster);
        }
        if Instant::now() > deadline {
            let mut log = String::new();
            if let Ok(f) = std::fs::File::open(dir.join("log")) {
                let _ = BufReader::new(f).take(4096).read_to_string(&mut log);
            }
            return Err(format!("PostgreSQL did not start within 30 s: {log}"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
