//! The states and names the system stores as text: job status and kind, tenant status, audit
//! actions. Each is an enum whose rows decode into it (`sqlx::Type` over a `text` column) and
//! whose JSON form is the same text; the text of a variant is written once, here.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Declares a text-valued enum: serde and sqlx use the given text for each variant, and
/// `as_str`, `parse`, `ALL` and `Display` agree with it.
macro_rules! text_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $( $(#[doc = $doc:literal])* $variant:ident = $text:tt, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, sqlx::Type)]
        #[sqlx(type_name = "text")]
        pub enum $name {
            $( $(#[doc = $doc])* #[serde(rename = $text)] #[sqlx(rename = $text)] $variant, )+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [Self] = &[$(Self::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $text,)+
                }
            }

            pub fn parse(s: &str) -> Option<Self> {
                Self::ALL.iter().copied().find(|v| v.as_str() == s)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

text_enum! {
    /// Where a batch is: running while any item is queued or running.
    #[derive(utoipa::ToSchema)]
    pub enum BatchStatus {
        /// Some item is queued or running.
        Running = "running",
        /// Every item ended.
        Completed = "completed",
        /// Every item ended after a cancel was asked for while the batch ran.
        Cancelled = "cancelled",
    }
}

text_enum! {
    /// Where a job is in its life (drawn in `docs/job-lifecycle.md`).
    #[derive(utoipa::ToSchema)]
    pub enum JobStatus {
        /// Waiting for a worker (new, or after a transient failure).
        Queued = "queued",
        /// Claimed by a worker that holds its lease.
        Running = "running",
        /// The tenant and the job's success committed together.
        Succeeded = "succeeded",
        /// Ended with a failure code (400, 409, 500, 503).
        Failed = "failed",
        /// Cancelled by its client while still queued.
        Cancelled = "cancelled",
    }
}

impl JobStatus {
    /// Ended: no transition leaves this status.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Cancelled)
    }

    /// Why a job in this status cannot be cancelled, after "job ID": "is running", "has
    /// already succeeded", ...
    pub fn uncancellable_because(self) -> &'static str {
        match self {
            Self::Queued => "is queued",
            Self::Running => "is running",
            Self::Succeeded => "has already succeeded",
            Self::Failed => "has already failed",
            Self::Cancelled => "was already cancelled",
        }
    }
}

text_enum! {
    /// The kinds of job, by their stable wire names.
    pub enum JobKind {
        /// A new tenant from a template, with new ids.
        CreateTenant = "createTenant",
        /// A tenant moved from another cluster, ids and history kept.
        ImportTenant = "importTenant",
    }
}

text_enum! {
    /// A tenant's lifecycle state.
    #[derive(utoipa::ToSchema)]
    pub enum TenantStatus {
        /// In service.
        Active = "Active",
        /// Out of service: how a tenant is made, and the only state it may be deleted in.
        Inactive = "Inactive",
    }
}

text_enum! {
    /// What a tenant's audit history records this system doing. Imported histories may hold
    /// other actions, so entries read back keep their text.
    pub enum AuditAction {
        /// Inactive -> Active.
        Activate = "activate",
        /// Active -> Inactive.
        Deactivate = "deactivate",
        /// An access-number range made for the tenant.
        AccessNumbersCreate = "accessNumbers.create",
        /// One of the tenant's access-number ranges deleted.
        AccessNumbersDelete = "accessNumbers.delete",
        /// The tenant arrived by Import Tenant.
        Import = "import",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_and_text_forms_agree() {
        for s in JobStatus::ALL {
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
            assert_eq!(JobStatus::parse(s.as_str()), Some(*s));
        }
        assert_eq!(
            serde_json::to_value(JobKind::CreateTenant).unwrap(),
            "createTenant"
        );
        assert_eq!(
            serde_json::to_value(TenantStatus::Inactive).unwrap(),
            "Inactive"
        );
        assert_eq!(
            AuditAction::AccessNumbersCreate.to_string(),
            "accessNumbers.create"
        );
    }
}
