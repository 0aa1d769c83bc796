//! The CPU time a row's requests cost, read from /proc over its measured
//! window: authgate's, its store's (Postgres's processes) and this load
//! generator's, and the share of the machine's time the hypervisor took
//! (steal). On a two-core machine these say which resource a row's
//! throughput is bound by: the sum of the three per request, times req/s,
//! is what the cores left after steal can give.

use std::collections::HashMap;

/// Clock ticks a second in /proc's CPU times: USER_HZ, which Linux fixes at
/// 100 for user space whatever the kernel's own tick.
const TICKS_PER_SECOND: f64 = 100.0;

/// The processes to account for: a root each, with all its descendants.
#[derive(Clone, Copy)]
pub(super) struct Meter {
    pub(super) server: Option<u32>,
    pub(super) store: Option<u32>,
}

/// CPU ticks spent so far, and the machine's.
#[derive(Clone, Copy)]
pub(super) struct Reading {
    server: Option<u64>,
    store: Option<u64>,
    client: u64,
    steal: u64,
    all: u64,
}

/// What a window cost, per request, in microseconds of CPU; `steal` is the
/// hypervisor's share of the machine's time.
#[derive(Clone, Copy)]
pub(super) struct Cost {
    pub(super) server: Option<f64>,
    pub(super) store: Option<f64>,
    pub(super) client: f64,
    pub(super) steal: f64,
}

impl Meter {
    /// The ticks of each of `pids` with its descendants, then the
    /// machine's steal and total ticks, space-separated.
    pub(super) fn ticks(pids: &[u32]) -> String {
        let table = processes();
        let (steal, all) = machine();
        let trees: Vec<String> = pids.iter().map(|&p| tree(&table, p).to_string()).collect();
        format!("{} {steal} {all}", trees.join(" "))
    }

    pub(super) fn read(self) -> Reading {
        let table = processes();
        let (steal, all) = machine();
        Reading {
            server: self.server.map(|p| tree(&table, p)),
            store: self.store.map(|p| tree(&table, p)),
            client: table.get(&std::process::id()).map_or(0, |p| p.own),
            steal,
            all,
        }
    }
}

impl Reading {
    /// The cost of each of `requests` made between `self` and `later`.
    pub(super) fn cost(self, later: Reading, requests: u64) -> Cost {
        let per = |before: u64, after: u64| {
            after.saturating_sub(before) as f64 * 1e6 / TICKS_PER_SECOND / requests.max(1) as f64
        };
        let both = |a: Option<u64>, b: Option<u64>| Some(per(a?, b?));
        let all = later.all.saturating_sub(self.all).max(1) as f64;
        Cost {
            server: both(self.server, later.server),
            store: both(self.store, later.store),
            client: per(self.client, later.client),
            steal: later.steal.saturating_sub(self.steal) as f64 / all,
        }
    }
}

/// authgate's key cache lookups so far, hits and misses, from its
/// /metrics at `addr`; None when it cannot be read.
pub(super) async fn cache_lookups(addr: &str) -> Option<(f64, f64)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: authgate\r\n\r\n")
        .await
        .ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).await.ok()?;
    let count = |result: &str| {
        let label = format!("result=\"{result}\"");
        text.lines()
            .filter(|l| l.starts_with("authgate_key_cache_lookups_total{") && l.contains(&label))
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
            .sum::<f64>()
    };
    Some((count("hit"), count("miss")))
}

/// What /proc/PID/stat tells of one process.
struct Process {
    parent: u32,
    /// Its own user and system ticks.
    own: u64,
    /// Its reaped children's (Postgres's backends that ended).
    reaped: u64,
}

fn processes() -> HashMap<u32, Process> {
    let mut table = HashMap::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return table;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // The command name, in parentheses, may hold spaces: the fields
        // that follow its last ')' are plain numbers.
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let fields: Vec<u64> = rest
            .split_whitespace()
            .skip(1)
            .map(|f| f.parse().unwrap_or(0))
            .collect();
        // From the parent on: ppid is the first; utime, stime, cutime and
        // cstime the 11th to 14th.
        if fields.len() > 13 {
            table.insert(
                pid,
                Process {
                    parent: u32::try_from(fields[0]).unwrap_or(0),
                    own: fields[10] + fields[11],
                    reaped: fields[12] + fields[13],
                },
            );
        }
    }
    table
}

/// Ticks of `root` and everything below it.
fn tree(table: &HashMap<u32, Process>, root: u32) -> u64 {
    let below = |mut pid: u32| {
        while pid > 1 {
            if pid == root {
                return true;
            }
            pid = table.get(&pid).map_or(0, |p| p.parent);
        }
        false
    };
    let reaped = table.get(&root).map_or(0, |p| p.reaped);
    reaped
        + table
            .iter()
            .filter(|(pid, _)| below(**pid))
            .map(|(_, p)| p.own)
            .sum::<u64>()
}

/// The machine's steal ticks and all its ticks, from /proc/stat.
fn machine() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = stat.lines().find(|l| l.starts_with("cpu ")) else {
        return (0, 0);
    };
    // user nice system idle iowait irq softirq steal (guest time is
    // counted in user already).
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    (ticks.get(7).copied().unwrap_or(0), ticks.iter().sum())
}
