//! The entries of a template, as typed structures. Free-form JSON (settings, object data,
//! calling-list entries, audit details) is kept as checked text (`json::JsonDoc`).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::json::{self, JsonDoc};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub format: String,
    pub format_version: u32,
    pub db_version: i64,
    pub exported_at: DateTime<Utc>,
    #[serde(deserialize_with = "json::object")]
    pub source: ManifestSource,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ManifestSource {
    pub tenant_id: Uuid,
    pub tenant_url: String,
    pub tenant_name: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TenantEntry {
    pub id: Uuid,
    pub url: String,
    pub name: String,
    pub sip_domain: String,
    #[serde(default, deserialize_with = "json::settings")]
    pub settings: JsonDoc,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UserEntry {
    pub id: Uuid,
    pub login_id: String,
    pub first_name: String,
    pub last_name: String,
    pub email: String,
    #[serde(default, deserialize_with = "json::roles")]
    pub roles: Vec<String>,
    #[serde(default)]
    pub password_hash: Option<String>,
    #[serde(default)]
    pub teams: Vec<Uuid>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ObjectEntry {
    pub id: Uuid,
    pub kind: String,
    pub name: String,
    #[serde(default, deserialize_with = "json::object_data")]
    pub data: JsonDoc,
    #[serde(default)]
    pub refs: Vec<Uuid>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessNumberEntry {
    pub number: String,
    pub count: i32,
    pub media: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallingListEntry {
    pub id: Uuid,
    pub name: String,
    #[serde(default = "JsonDoc::empty_list", deserialize_with = "json::objects")]
    pub entries: JsonDoc,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub at: DateTime<Utc>,
    pub actor: String,
    pub action: String,
    pub object: String,
    #[serde(default, deserialize_with = "json::audit_details")]
    pub details: JsonDoc,
}
