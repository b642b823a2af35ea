//! What every job handler may use, and the leases this process holds.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use provisioner_shared::{config::Settings, seal::Sealer, template::Limits};
use sqlx::PgPool;
use uuid::Uuid;

use super::template::TemplateBudget;
use crate::fetch::Fetcher;

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
    pub(crate) template_budget: TemplateBudget,
    /// Jobs this process holds a lease on, so shutdown can hand them back.
    pub(crate) leases: Leases,
}

impl Context {
    pub(crate) fn new(
        pool: PgPool,
        settings: Settings,
        sealer: Sealer,
        db_version: i64,
    ) -> Arc<Self> {
        let fetcher = Fetcher::new(
            settings.template_allow_private,
            settings.template_timeout,
            settings.template_max_bytes,
        );
        let limits = Limits::default();
        let template_budget = TemplateBudget::new(settings.template_memory_budget);
        Arc::new(Self {
            pool,
            settings,
            sealer,
            fetcher,
            db_version,
            limits,
            template_budget,
            leases: Leases::default(),
        })
    }
}

/// Job id -> lease token of the jobs this process runs.
#[derive(Debug, Default)]
pub(crate) struct Leases(Mutex<HashMap<Uuid, Uuid>>);

impl Leases {
    pub(crate) fn hold(&self, id: Uuid, token: Uuid) {
        self.0.lock().expect("lease map").insert(id, token);
    }

    pub(crate) fn release(&self, id: Uuid) {
        self.0.lock().expect("lease map").remove(&id);
    }

    /// Empties the map, returning what it held.
    pub(crate) fn take_all(&self) -> Vec<(Uuid, Uuid)> {
        self.0.lock().expect("lease map").drain().collect()
    }
}
