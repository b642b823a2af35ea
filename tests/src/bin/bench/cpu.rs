//! CPU time read from `/proc`: of one process, and of a local service's whole process tree (the
//! server and everything it started, live or already reaped).

use std::collections::HashMap;

use provisioner_tests::process::tool;

/// Seconds of CPU (user and system) process `pid` has used.
pub fn process_seconds(pid: u32) -> f64 {
    let stat = read_stat(pid).expect("the process runs");
    (stat.own as f64) / clock_ticks()
}

/// Seconds of CPU the threads of process `pid` whose names start with `prefix` have used (the
/// hashing pool's `argon2-N`), live threads only.
pub fn threads_seconds(pid: u32, prefix: &str) -> f64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0.0;
    };
    let ticks: u64 = tasks
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|tid| {
            std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm"))
                .is_ok_and(|c| c.starts_with(prefix))
        })
        .filter_map(|tid| read_stat_at(&format!("/proc/{pid}/task/{tid}/stat")))
        .map(|s| s.own)
        .sum();
    ticks as f64 / clock_ticks()
}

/// Seconds of CPU the tree of processes under `root` has used: each live process in it, and
/// the children each has already reaped. `None` when `root` is no live process here.
///
/// A process that exits while the tree is read may be missed or counted twice (in itself and
/// in its reaped parent); the tree is read in one pass, so this happens only within that pass.
pub fn tree_seconds(root: u32) -> Option<f64> {
    let stats: HashMap<u32, Stat> = std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .filter_map(|pid| Some((pid, read_stat(pid)?)))
        .collect();
    stats.get(&root)?;
    let mut ticks = 0;
    let mut pending = vec![root];
    while let Some(pid) = pending.pop() {
        let stat = &stats[&pid];
        ticks += stat.own + stat.reaped;
        pending.extend(
            stats
                .iter()
                .filter(|(_, s)| s.parent == pid)
                .map(|(child, _)| *child),
        );
    }
    Some(ticks as f64 / clock_ticks())
}

/// The local PostgreSQL's and RabbitMQ's process trees, found once (`rabbitmqctl` takes a
/// while, so before a clock starts).
pub struct Services([Option<u32>; 2]);

impl Services {
    /// The services behind `db` and the local broker; either is `None` when not a local process.
    pub async fn find(db: &sqlx::PgPool) -> Self {
        let backend: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(db)
            .await
            .expect("PostgreSQL answers");
        Self([
            u32::try_from(backend).ok().and_then(postmaster_of),
            rabbitmq_server(),
        ])
    }

    /// Seconds of CPU each tree has used so far: PostgreSQL's, then RabbitMQ's.
    pub fn seconds(&self) -> [Option<f64>; 2] {
        self.0.map(|root| root.and_then(tree_seconds))
    }
}

/// CPU per item, ms, between two readings of a service (`None` when it was not measured).
pub fn per_item_ms(before: Option<f64>, after: Option<f64>, items: usize) -> Option<f64> {
    Some((after? - before?) * 1e3 / items as f64)
}

/// The PostgreSQL server process (the postmaster) of the backend `backend_pid`, if it runs
/// here.
pub fn postmaster_of(backend_pid: u32) -> Option<u32> {
    let parent = read_stat(backend_pid)?.parent;
    (read_comm(parent)? == "postgres").then_some(parent)
}

/// The RabbitMQ server process on this machine, as `rabbitmqctl` reports it.
pub fn rabbitmq_server() -> Option<u32> {
    let out = tool("rabbitmqctl")
        .args(["eval", "os:getpid()."])
        .output()
        .ok()?;
    let pid: u32 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .trim_matches('"')
        .parse()
        .ok()?;
    (read_comm(pid)? == "beam.smp").then_some(pid)
}

/// What `/proc/PID/stat` says of a process's CPU, in clock ticks, and its parent.
struct Stat {
    parent: u32,
    /// User and system time of the process itself.
    own: u64,
    /// User and system time of the children it has waited for.
    reaped: u64,
}

fn read_stat(pid: u32) -> Option<Stat> {
    read_stat_at(&format!("/proc/{pid}/stat"))
}

fn read_stat_at(path: &str) -> Option<Stat> {
    let stat = std::fs::read_to_string(path).ok()?;
    // The fields after the command name, which may hold spaces and parentheses: state, ppid...
    let fields: Vec<&str> = stat[stat.rfind(')')? + 2..].split_whitespace().collect();
    let field = |i: usize| -> Option<u64> { fields.get(i)?.parse().ok() };
    Some(Stat {
        parent: u32::try_from(field(1)?).ok()?,
        own: field(11)? + field(12)?,
        reaped: field(13)? + field(14)?,
    })
}

fn read_comm(pid: u32) -> Option<String> {
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    Some(comm.trim().to_owned())
}

fn clock_ticks() -> f64 {
    let out = tool("getconf")
        .arg("CLK_TCK")
        .output()
        .expect("getconf runs");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("a tick rate")
}
