//! Everything both provisioner binaries agree on: settings, domain types, SQL, the broker's wire
//! contract, the template format, sealing of secrets, telemetry and process plumbing.

pub mod broker_figures;
pub mod budget;
pub mod config;
pub mod db;
pub mod domain;
pub mod passwords;
pub mod queue;
pub mod relay;
pub mod runtime;
pub mod seal;
pub mod telemetry;
pub mod template;
pub mod trace;
