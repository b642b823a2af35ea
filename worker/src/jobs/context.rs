//! What every job handler may use, and the leases this process holds.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, Ordering},
    },
};

use anyhow::Context as _;
use provisioner_shared::{
    budget::MemoryBudget, config::Settings, relay::Notifications, seal::Sealer, template::Limits,
};
use sqlx::PgPool;
use uuid::Uuid;

use super::recent::Recent;
use crate::{fetch::Fetcher, horizons::Horizons, slots::Slots};

/// What every job handler may use.
#[derive(Debug)]
pub(crate) struct Context {
    pub(crate) pool: PgPool,
    pub(crate) settings: Settings,
    pub(crate) sealer: Sealer,
    pub(crate) fetcher: Fetcher,
    /// The server's template `dbVersion`.
    pub(crate) db_version: i64,
    pub(crate) limits: Limits,
    /// Memory for templates being read and held by running jobs.
    pub(crate) template_budget: MemoryBudget,
    /// Jobs this process holds a lease on, so shutdown can hand them back.
    pub(crate) leases: Leases,
    /// One permit per job this process may run at once (`worker_concurrency`), held until the
    /// delivery is settled: it outlives broker sessions, so jobs left running by a lost channel
    /// still count against the bound after the consumer reconnects.
    pub(crate) slots: Arc<Slots>,
    /// Panics a test asked for (`PROVISIONER_TEST_PANIC`); none otherwise.
    pub(crate) faults: Faults,
    /// Stored templates and batch pins read recently.
    pub(crate) recent: Recent,
    /// The process's hub: the job changes it commits are announced through it.
    pub(crate) notifications: Notifications,
    /// How far each job queue has delivered to this process.
    pub(crate) horizons: Horizons,
}

impl Context {
    pub(crate) fn new(
        pool: PgPool,
        settings: Settings,
        sealer: Sealer,
        db_version: i64,
        notifications: Notifications,
    ) -> anyhow::Result<Arc<Self>> {
        let fetcher = Fetcher::new(
            settings.template_allow_private,
            settings.template_ports.clone(),
            settings.template_timeout,
            settings.template_max_bytes,
        );
        let limits = Limits::default();
        let template_budget = MemoryBudget::new(settings.template_memory_budget);
        let faults = Faults::parse(std::env::var(Faults::VARIABLE).ok().as_deref())
            .with_context(|| format!("reading {}", Faults::VARIABLE))?;
        Ok(Arc::new(Self {
            slots: Slots::new(usize::from(settings.worker_concurrency)),
            pool,
            settings,
            sealer,
            fetcher,
            db_version,
            limits,
            template_budget,
            leases: Leases::default(),
            faults,
            recent: Recent::default(),
            notifications,
            horizons: Horizons::default(),
        }))
    }
}

/// Job id -> lease token of the jobs this process runs.
#[derive(Debug, Default)]
pub(crate) struct Leases(Mutex<HashMap<Uuid, Uuid>>);

impl Leases {
    pub(crate) fn hold(&self, id: Uuid, token: Uuid) {
        self.0.lock().expect("lease map").insert(id, token);
    }

    /// Forgets the lease on `id` if `token` is the one held.
    pub(crate) fn release_token(&self, id: Uuid, token: Uuid) {
        let mut held = self.0.lock().expect("lease map");
        if held.get(&id) == Some(&token) {
            held.remove(&id);
        }
    }

    /// Whether `token` holds the lease on `id`.
    pub(crate) fn holds(&self, id: Uuid, token: Uuid) -> bool {
        self.0.lock().expect("lease map").get(&id) == Some(&token)
    }
}

/// The stages of handling a delivery at which a test may inject a panic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stage {
    /// Just after the claim committed.
    Claim,
    /// As the job's handler starts.
    Handler,
    /// Just after the tenant's write transaction committed, inside the handler.
    Commit,
    /// Before the attempt's outcome is recorded.
    Record,
    /// Before the delivery is acknowledged, rejected or requeued.
    Settle,
}

impl Stage {
    fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "claim" => Self::Claim,
            "handler" => Self::Handler,
            "commit" => Self::Commit,
            "record" => Self::Record,
            "settle" => Self::Settle,
            _ => return None,
        })
    }
}

/// A fault injected by a test: `PROVISIONER_TEST_PANIC=STAGE[:TIMES]` panics at `STAGE` the
/// first `TIMES` times it is reached (default 1; `always` for every time). Unset in production,
/// where each stage costs one `None` check.
#[derive(Debug, Default)]
pub(crate) struct Faults(Option<(Stage, AtomicU32)>);

impl Faults {
    const VARIABLE: &'static str = "PROVISIONER_TEST_PANIC";

    fn parse(value: Option<&str>) -> anyhow::Result<Self> {
        let Some(value) = value.map(str::trim).filter(|v| !v.is_empty()) else {
            return Ok(Self(None));
        };
        let (stage, times) = value.split_once(':').unwrap_or((value, "1"));
        let stage = Stage::parse(stage).with_context(|| {
            format!("`{stage}` is not a stage (claim, handler, commit, record, settle)")
        })?;
        let times = match times {
            "always" => u32::MAX,
            n => n
                .parse()
                .with_context(|| format!("`{n}` is not a count or `always`"))?,
        };
        Ok(Self(Some((stage, AtomicU32::new(times)))))
    }

    /// Panics if a test asked for a panic at `stage` and has panics left.
    pub(crate) fn at(&self, stage: Stage) {
        let Some((at, left)) = &self.0 else { return };
        let fire = *at == stage
            && left
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| match n {
                    0 => None,
                    u32::MAX => Some(u32::MAX),
                    n => Some(n - 1),
                })
                .is_ok();
        assert!(!fire, "injected panic at {stage:?} ({})", Self::VARIABLE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_fire_at_their_stage_as_many_times_as_asked() {
        let none = Faults::parse(None).unwrap();
        none.at(Stage::Claim);
        let twice = Faults::parse(Some("claim:2")).unwrap();
        twice.at(Stage::Settle);
        for _ in 0..2 {
            let fired = std::panic::catch_unwind(|| twice.at(Stage::Claim));
            assert!(fired.is_err());
        }
        twice.at(Stage::Claim);
        assert!(Faults::parse(Some("ack")).is_err());
        assert!(Faults::parse(Some("claim:x")).is_err());
        let always = Faults::parse(Some("handler:always")).unwrap();
        for _ in 0..3 {
            assert!(std::panic::catch_unwind(|| always.at(Stage::Handler)).is_err());
        }
    }
}
