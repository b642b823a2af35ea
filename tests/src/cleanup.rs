//! What a test system leaves behind: its database, vhost and upload directory go when the test
//! ends, even when it fails (`TestApp`'s `Drop`), and those of runs that were killed are swept
//! once they are an hour old. Names carry their creation time; a database's age is also read
//! from its directory, so databases named otherwise (by older harnesses) are swept too.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use uuid::Uuid;

use crate::rabbitmqctl;

const PREFIX: &str = "provisioner_test_";
/// Older than this, a test system's leftovers belong to no running test.
const STALE: Duration = Duration::from_secs(3600);
const ADMIN_DATABASE: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// A new name for a test system's database and vhost, telling when it was made.
pub(crate) fn new_name() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is past 1970")
        .as_secs();
    format!(
        "{PREFIX}{secs}_{}",
        &Uuid::new_v4().simple().to_string()[..16]
    )
}

/// How old a name made by `new_name` is; `None` for any other name.
fn age_of_name(name: &str) -> Option<Duration> {
    let (secs, _) = name.strip_prefix(PREFIX)?.split_once('_')?;
    let made = UNIX_EPOCH + Duration::from_secs(secs.parse().ok()?);
    Some(SystemTime::now().duration_since(made).unwrap_or_default())
}

/// A test system's leftovers.
#[derive(Debug, Clone)]
pub(crate) struct Leftovers {
    pub(crate) database: String,
    pub(crate) vhost: String,
}

impl Leftovers {
    /// Removes them (what is already gone is skipped).
    pub(crate) async fn remove(&self) {
        drop_database(&self.database).await;
        let vhost = self.vhost.clone();
        tokio::task::spawn_blocking(move || delete_vhost(&vhost))
            .await
            .expect("deleting the vhost");
    }

    /// `remove` from synchronous code (a `Drop`), on a thread with a runtime of its own.
    pub(crate) fn remove_now(&self) {
        let leftovers = self.clone();
        let removed = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime for the cleanup")
                .block_on(leftovers.remove());
        })
        .join();
        if removed.is_err() {
            eprintln!("could not remove the test system {}", self.database);
        }
    }
}

async fn drop_database(name: &str) {
    let Ok(admin) = sqlx::PgPool::connect(ADMIN_DATABASE).await else {
        return;
    };
    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
        .execute(&admin)
        .await;
    admin.close().await;
}

/// Deletes a vhost; one already gone is no failure.
fn delete_vhost(name: &str) {
    let _ = crate::process::tool("rabbitmqctl")
        .args(["delete_vhost", name])
        .output();
}

static SWEPT: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();

/// Once per test run: removes the leftovers of test systems older than an hour.
pub(crate) async fn sweep_once() {
    SWEPT.get_or_init(sweep).await;
}

async fn sweep() {
    let stale_databases = stale_databases().await;
    for name in &stale_databases {
        drop_database(name).await;
    }
    tokio::task::spawn_blocking(move || {
        let vhosts = rabbitmqctl(&["list_vhosts", "--quiet", "--no-table-headers", "name"]);
        for vhost in vhosts.lines().map(str::trim) {
            let stale = match age_of_name(vhost) {
                Some(age) => age > STALE,
                // Named otherwise: its database (of the same name) tells its age.
                None => stale_databases.iter().any(|d| d == vhost),
            };
            if stale {
                delete_vhost(vhost);
            }
        }
    })
    .await
    .expect("sweeping vhosts");
}

/// Test databases older than an hour, by their name or by their directory.
async fn stale_databases() -> Vec<String> {
    let Ok(admin) = sqlx::PgPool::connect(ADMIN_DATABASE).await else {
        return vec![];
    };
    let all: Vec<(String, f64)> = sqlx::query_as(
        "SELECT datname, EXTRACT(EPOCH FROM now() - (pg_stat_file('base/' || oid || '/PG_VERSION')).modification)::float8
         FROM pg_database WHERE datname LIKE 'provisioner\\_test\\_%'",
    )
    .fetch_all(&admin)
    .await
    .unwrap_or_default();
    admin.close().await;
    all.into_iter()
        .filter(|(name, secs)| {
            *secs > STALE.as_secs_f64() || age_of_name(name).is_some_and(|age| age > STALE)
        })
        .map(|(name, _)| name)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn databases() -> Vec<String> {
        let admin = sqlx::PgPool::connect(ADMIN_DATABASE).await.unwrap();
        sqlx::query_scalar("SELECT datname FROM pg_database")
            .fetch_all(&admin)
            .await
            .unwrap()
    }

    fn vhosts() -> String {
        rabbitmqctl(&["list_vhosts", "--quiet", "--no-table-headers", "name"])
    }

    #[tokio::test]
    async fn the_sweep_removes_leftovers_older_than_an_hour_and_nothing_younger() {
        let old = format!(
            "{PREFIX}1000000000_{}",
            &Uuid::new_v4().simple().to_string()[..16]
        );
        let young = new_name();
        let admin = sqlx::PgPool::connect(ADMIN_DATABASE).await.unwrap();
        for name in [&old, &young] {
            sqlx::query(&format!("CREATE DATABASE \"{name}\""))
                .execute(&admin)
                .await
                .unwrap();
            rabbitmqctl(&["add_vhost", name]);
        }
        sweep().await;
        let (dbs, hosts) = (databases().await, vhosts());
        assert!(!dbs.contains(&old) && !hosts.lines().any(|l| l.trim() == old));
        assert!(dbs.contains(&young) && hosts.lines().any(|l| l.trim() == young));
        Leftovers {
            database: young.clone(),
            vhost: young.clone(),
        }
        .remove()
        .await;
        assert!(!databases().await.contains(&young));
        assert!(!vhosts().lines().any(|l| l.trim() == young));
    }

    #[test]
    fn names_tell_their_age_and_others_do_not() {
        let name = new_name();
        assert!(name.len() <= 48, "{name}");
        assert!(age_of_name(&name).unwrap() < Duration::from_secs(5));
        let old = format!("{PREFIX}{}_0123456789abcdef", 1_000_000_000);
        assert!(age_of_name(&old).unwrap() > STALE);
        assert_eq!(
            age_of_name("provisioner_test_0123456789abcdef0123456789abcdef"),
            None
        );
        assert_eq!(age_of_name("%2f"), None);
    }
}
