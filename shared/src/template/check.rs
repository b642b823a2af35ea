//! What serde cannot check in a template: the request fields' string rules for every string,
//! unique ids and login ids, references that resolve, stored password hashes, and the
//! access-number ranges with their caps.

use std::collections::HashSet;

use super::{AuditEntry, CallingListEntry, Template, TemplateError};
use crate::{
    domain::{TenantUrl, is_access_number, is_email, is_hidden_char},
    passwords,
};

/// Most access-number ranges, and numbers in all, one template may hold (CONTRACT).
pub const MAX_RANGES: usize = 1_000;
pub const MAX_NUMBERS: u64 = 100_000;
/// Most roles one user may have.
pub const MAX_ROLES: usize = 32;

fn bad<T>(m: String) -> Result<T, TemplateError> {
    Err(TemplateError::InvalidContent(m))
}

/// A request field's rules: not blank, at most `max` characters, no control or Unicode format
/// characters. `what` names the field; the value itself is not repeated (it may be huge).
pub(super) fn text(what: &dyn Fn() -> String, s: &str, max: usize) -> Result<(), TemplateError> {
    if s.trim().is_empty() {
        return bad(format!("{} must not be empty", what()));
    }
    if s.len() > max * 4 || s.chars().count() > max {
        return bad(format!("{} must be at most {max} characters", what()));
    }
    if s.chars().any(is_hidden_char) {
        return bad(format!(
            "{} must not contain control or Unicode format characters",
            what()
        ));
    }
    Ok(())
}

fn host(what: &str, s: &str) -> Result<(), TemplateError> {
    if s.len() > 253 {
        return bad(format!("{what} must be a host name of 1 to 253 characters"));
    }
    TenantUrl::parse(s).map_err(|m| TemplateError::InvalidContent(format!("{what} `{s}` {m}")))?;
    Ok(())
}

impl Template {
    /// Checks every rule; `identity` adds the tenant's own URL, name and SIP domain (kept by
    /// Import Tenant, replaced by create).
    pub(super) fn check(&self, identity: bool) -> Result<(), TemplateError> {
        let source = &self.manifest.source;
        text(
            &|| "manifest source.tenantName".into(),
            &source.tenant_name,
            255,
        )?;
        host("manifest source.tenantUrl", &source.tenant_url)?;
        if identity {
            host("tenant.json url", &self.tenant.url)?;
            text(&|| "tenant.json name".into(), &self.tenant.name, 255)?;
            host("tenant.json sipDomain", &self.tenant.sip_domain)?;
        }
        let object_ids = self.check_objects()?;
        self.check_users(&object_ids)?;
        self.check_numbers()?;
        self.check_history()
    }

    fn check_objects(&self) -> Result<HashSet<uuid::Uuid>, TemplateError> {
        let mut ids = HashSet::new();
        for (i, o) in self.objects.iter().enumerate() {
            text(&|| format!("objects[{i}].kind"), &o.kind, 64)?;
            text(&|| format!("objects[{i}].name"), &o.name, 255)?;
            if !ids.insert(o.id) {
                return bad(format!("object id {} appears twice", o.id));
            }
        }
        for o in &self.objects {
            if let Some(r) = o.refs.iter().find(|r| !ids.contains(r)) {
                return bad(format!("object {} refers to unknown object {r}", o.id));
            }
        }
        Ok(ids)
    }

    fn check_users(&self, object_ids: &HashSet<uuid::Uuid>) -> Result<(), TemplateError> {
        let (mut ids, mut logins) = (HashSet::new(), HashSet::new());
        for (i, u) in self.users.iter().enumerate() {
            text(&|| format!("users[{i}].loginId"), &u.login_id, 255)?;
            text(&|| format!("users[{i}].firstName"), &u.first_name, 255)?;
            text(&|| format!("users[{i}].lastName"), &u.last_name, 255)?;
            text(&|| format!("users[{i}].email"), &u.email, 254)?;
            if !is_email(&u.email) {
                return bad(format!("users[{i}].email must be a valid e-mail address"));
            }
            if u.roles.len() > MAX_ROLES {
                return bad(format!("users[{i}] has more than {MAX_ROLES} roles"));
            }
            for (j, r) in u.roles.iter().enumerate() {
                text(&|| format!("users[{i}].roles[{j}]"), r, 64)?;
            }
            if !ids.insert(u.id) {
                return bad(format!("user id {} appears twice", u.id));
            }
            if !logins.insert(u.login_id.as_str()) {
                return bad(format!("login id `{}` appears twice", u.login_id));
            }
            if let Some(t) = u.teams.iter().find(|t| !object_ids.contains(t)) {
                return bad(format!("user `{}` is in unknown team {t}", u.login_id));
            }
            if let Some(Err(why)) = u.password_hash.as_deref().map(passwords::check_stored) {
                return bad(format!(
                    "user `{}` has a password hash that {why}",
                    u.login_id
                ));
            }
        }
        Ok(())
    }

    fn check_numbers(&self) -> Result<(), TemplateError> {
        let ranges = &self.access_numbers;
        if ranges.len() > MAX_RANGES {
            return bad(format!(
                "the template has {} access-number ranges; at most {MAX_RANGES} are allowed",
                ranges.len()
            ));
        }
        let mut firsts = HashSet::new();
        for (i, n) in ranges.iter().enumerate() {
            text(&|| format!("access_numbers[{i}].media"), &n.media, 32)?;
            if !is_access_number(&n.number) || !(1..=1_000_000).contains(&n.count) {
                return bad(format!(
                    "access number range {} x {} is not 1-20 digits with a count of 1 to 1000000",
                    n.number, n.count
                ));
            }
            if !super::range_fits(&n.number, n.count) {
                return bad(format!(
                    "access number range {} x {} runs past its digit length",
                    n.number, n.count
                ));
            }
            if !firsts.insert(n.number.as_str()) {
                return bad(format!("access number {} starts two ranges", n.number));
            }
        }
        let total: u64 = ranges.iter().map(|r| r.count as u64).sum();
        if total > MAX_NUMBERS {
            return bad(format!(
                "the template's access-number ranges hold {total} numbers; at most {MAX_NUMBERS} are allowed"
            ));
        }
        Ok(())
    }

    /// Calling-list names and audit fields (imported only by Import Tenant).
    fn check_history(&self) -> Result<(), TemplateError> {
        for (i, l) in self.calling_lists.iter().enumerate() {
            calling_list(i, l)?;
        }
        for (i, a) in self.audit.iter().enumerate() {
            audit_entry(i, a)?;
        }
        Ok(())
    }
}

/// The rules of the `i`th calling list's strings (a create, which imports none, checks them too).
pub(super) fn calling_list(i: usize, l: &CallingListEntry) -> Result<(), TemplateError> {
    text(&|| format!("calling_lists[{i}].name"), &l.name, 255)
}

/// The rules of the `i`th audit entry's strings.
pub(super) fn audit_entry(i: usize, a: &AuditEntry) -> Result<(), TemplateError> {
    text(&|| format!("audit[{i}].actor"), &a.actor, 255)?;
    text(&|| format!("audit[{i}].action"), &a.action, 64)?;
    text(&|| format!("audit[{i}].object"), &a.object, 512)
}
