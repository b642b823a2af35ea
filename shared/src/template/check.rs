//! What serde cannot check in a template: the request fields' string rules for every string,
//! unique ids and login ids, references that resolve, stored password hashes, and the
//! access-number ranges with their caps.

use std::collections::HashSet;

use super::{
    AccessNumberEntry, AuditEntry, CallingListEntry, Manifest, Template, TemplateError, UserEntry,
};
use crate::{
    domain::{TenantUrl, is_access_number, is_email, is_hidden_char},
    passwords,
};

/// Most access-number ranges, and numbers in all, one template may hold (CONTRACT). A tenant's
/// ranges added through the API are capped by the same figures, so that its export imports
/// again.
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

/// The faults a check finds, in the order it finds them, up to `most`.
pub(super) struct Faults {
    found: Vec<TemplateError>,
    most: usize,
}

impl Faults {
    fn new(most: usize) -> Self {
        Self {
            found: Vec::new(),
            most: most.max(1),
        }
    }

    /// Enough found: the checks stop.
    fn full(&self) -> bool {
        self.found.len() >= self.most
    }

    fn note(&mut self, checked: Result<(), TemplateError>) {
        if let Err(fault) = checked
            && !self.full()
        {
            self.found.push(fault);
        }
    }

    fn bad(&mut self, m: String) {
        self.note(bad(m));
    }
}

impl Template {
    /// Checks every rule; `identity` adds the tenant's own URL, name and SIP domain (kept by
    /// Import Tenant, replaced by create). The first fault, as [`Template::faults`] finds them.
    pub(super) fn check(&self, identity: bool) -> Result<(), TemplateError> {
        self.faults(identity, 1)
            .into_iter()
            .next()
            .map_or(Ok(()), Err)
    }

    /// Every fault of the rules serde cannot check, in order, at most `most` of them (each
    /// element's first; an element at fault does not stop the others being checked).
    pub fn faults(&self, identity: bool, most: usize) -> Vec<TemplateError> {
        let mut f = Faults::new(most);
        let source = &self.manifest.source;
        f.note(text(
            &|| "manifest source.tenantName".into(),
            &source.tenant_name,
            255,
        ));
        f.note(host("manifest source.tenantUrl", &source.tenant_url));
        if identity {
            f.note(host("tenant.json url", &self.tenant.url));
            f.note(text(&|| "tenant.json name".into(), &self.tenant.name, 255));
            f.note(host("tenant.json sipDomain", &self.tenant.sip_domain));
        }
        let object_ids = self.check_objects(&mut f);
        self.check_users(&object_ids, &mut f);
        self.check_numbers(&mut f);
        self.check_history(&mut f);
        f.found
    }

    fn check_objects(&self, f: &mut Faults) -> HashSet<uuid::Uuid> {
        let mut ids = HashSet::new();
        for (i, o) in self.objects.iter().enumerate() {
            if f.full() {
                return ids;
            }
            f.note(
                text(&|| format!("objects[{i}].kind"), &o.kind, 64)
                    .and_then(|()| text(&|| format!("objects[{i}].name"), &o.name, 255)),
            );
            if !ids.insert(o.id) {
                f.bad(format!("object id {} appears twice", o.id));
            }
        }
        for o in &self.objects {
            if let Some(r) = o.refs.iter().find(|r| !ids.contains(r)) {
                f.bad(format!("object {} refers to unknown object {r}", o.id));
            }
        }
        ids
    }

    fn check_users(&self, object_ids: &HashSet<uuid::Uuid>, f: &mut Faults) {
        let (mut ids, mut logins) = (HashSet::new(), HashSet::new());
        for (i, u) in self.users.iter().enumerate() {
            if f.full() {
                return;
            }
            // A user at fault is not judged further: the faults below quote its login id,
            // which is only shown once it obeys the rules.
            if let Err(fault) = user(i, u) {
                f.note(Err(fault));
                continue;
            }
            if !ids.insert(u.id) {
                f.bad(format!("user id {} appears twice", u.id));
            }
            if !logins.insert(u.login_id.as_str()) {
                f.bad(format!("login id `{}` appears twice", u.login_id));
            }
            if let Some(t) = u.teams.iter().find(|t| !object_ids.contains(t)) {
                f.bad(format!("user `{}` is in unknown team {t}", u.login_id));
            }
            if let Some(Err(why)) = u.password_hash.as_deref().map(passwords::check_stored) {
                f.bad(format!(
                    "user `{}` has a password hash that {why}",
                    u.login_id
                ));
            }
        }
    }

    fn check_numbers(&self, f: &mut Faults) {
        let ranges = &self.access_numbers;
        if ranges.len() > MAX_RANGES {
            return f.bad(format!(
                "the template has {} access-number ranges; at most {MAX_RANGES} are allowed",
                ranges.len()
            ));
        }
        let mut firsts = HashSet::new();
        for (i, n) in ranges.iter().enumerate() {
            if f.full() {
                return;
            }
            if let Err(fault) = range(i, n) {
                f.note(Err(fault));
                continue;
            }
            if !firsts.insert(n.number.as_str()) {
                f.bad(format!("access number {} starts two ranges", n.number));
            }
        }
        // A negative count is a fault above, and no numbers here.
        let total: u64 = ranges
            .iter()
            .map(|r| u64::try_from(r.count).unwrap_or(0))
            .sum();
        if total > MAX_NUMBERS {
            f.bad(format!(
                "the template's access-number ranges hold {total} numbers; at most {MAX_NUMBERS} are allowed"
            ));
        }
    }

    /// Calling-list names and audit fields (imported only by Import Tenant).
    fn check_history(&self, f: &mut Faults) {
        let mut ids = HashSet::new();
        for (i, l) in self.calling_lists.iter().enumerate() {
            if f.full() {
                return;
            }
            f.note(calling_list(i, l).and_then(|()| calling_list_once(&mut ids, l)));
        }
        for (i, a) in self.audit.iter().enumerate() {
            if f.full() {
                return;
            }
            f.note(audit_entry(i, a));
        }
    }
}

impl Manifest {
    /// The manifest's faults against this server's format and format version, and, if given,
    /// its database version (`db_version`), in that order.
    pub fn faults(&self, db_version: Option<i64>) -> Vec<TemplateError> {
        let mut found = Vec::new();
        if self.format != super::FORMAT {
            found.push(TemplateError::Incompatible(
                "format",
                self.format.clone(),
                super::FORMAT.to_owned(),
            ));
        }
        if self.format_version != super::FORMAT_VERSION {
            found.push(TemplateError::Incompatible(
                "formatVersion",
                self.format_version.to_string(),
                super::FORMAT_VERSION.to_string(),
            ));
        }
        if let Some(db) = db_version
            && self.db_version != db
        {
            found.push(TemplateError::Incompatible(
                "dbVersion",
                self.db_version.to_string(),
                db.to_string(),
            ));
        }
        found
    }
}

/// The `i`th user's own strings and role count (the first fault).
fn user(i: usize, u: &UserEntry) -> Result<(), TemplateError> {
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
    Ok(())
}

/// The `i`th access-number range on its own (the first fault).
fn range(i: usize, n: &AccessNumberEntry) -> Result<(), TemplateError> {
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
    Ok(())
}

/// A calling list's id not among `seen`, the ids of the lists before it (then added to them).
pub(super) fn calling_list_once(
    seen: &mut HashSet<uuid::Uuid>,
    l: &CallingListEntry,
) -> Result<(), TemplateError> {
    if seen.insert(l.id) {
        Ok(())
    } else {
        bad(format!("calling list id {} appears twice", l.id))
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
