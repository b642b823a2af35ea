//! Reading a tenant for Export Tenant a page at a time: its head, then each list in keyset
//! pages (in the order the whole lists were always read), so no more than a page is held
//! whatever the tenant's size. Free-form JSON comes back as the database's text, never as a
//! tree. The caller reads inside one snapshot (`snapshot`), so the pages agree with each other.

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::value::RawValue;
use sqlx::{PgConnection, PgPool, Postgres, Transaction};
use uuid::Uuid;

use crate::template::{
    AccessNumberEntry, AuditEntry, CallingListEntry, JsonDoc, ObjectEntry, Page, TenantEntry,
    UserEntry, compact_json,
};

/// A read-only REPEATABLE READ transaction: every statement in it sees the database as of its
/// first statement.
pub async fn snapshot(pool: &PgPool) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
    pool.begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .await
}

/// The tenant's own entry (settings as text; anything but an object reads as `{}`).
pub async fn head(conn: &mut PgConnection, url: &str) -> Result<Option<TenantEntry>, sqlx::Error> {
    let row: Option<(Uuid, String, String, String, String)> = sqlx::query_as(
        "SELECT id, url, name, sip_domain,
                (CASE WHEN jsonb_typeof(settings) = 'object' THEN settings ELSE '{}' END)::text
         FROM tenants WHERE url = $1",
    )
    .bind(url)
    .fetch_optional(conn)
    .await?;
    row.map(|(id, url, name, sip_domain, settings)| {
        Ok(TenantEntry {
            id,
            url,
            name,
            sip_domain,
            settings: json(settings)?,
        })
    })
    .transpose()
}

/// Where the next page of a list starts: after this row of it.
#[derive(Debug, Clone)]
enum After {
    /// The part of the document last read.
    Users(i32),
    Objects(i32),
    AccessNumbers(i32, String),
    CallingLists(i32, Uuid),
    Audit(i64),
}

/// Which list comes next, and where in it.
#[derive(Debug, Clone)]
enum Next {
    Start(usize),
    After(After),
    Done,
}

/// The pages of one tenant's lists, in archive order: users, objects, access numbers, calling
/// lists, audit. Every list gives at least one page, possibly empty.
#[derive(Debug, Clone)]
pub struct Pages {
    tenant: Uuid,
    per_page: i64,
    next: Next,
}

impl Pages {
    pub fn new(tenant: Uuid, per_page: u16) -> Self {
        Self {
            tenant,
            per_page: per_page.max(1).into(),
            next: Next::Start(0),
        }
    }

    /// The next page; `None` after the last.
    pub async fn next(&mut self, conn: &mut PgConnection) -> Result<Option<Page>, sqlx::Error> {
        let (list, after) = match std::mem::replace(&mut self.next, Next::Done) {
            Next::Done => return Ok(None),
            Next::Start(list) => (list, None),
            Next::After(after) => (after.list(), Some(after)),
        };
        let (page, last) = match list {
            0 => self.users(conn, after).await?,
            1 => self.objects(conn, after).await?,
            2 => self.access_numbers(conn, after).await?,
            3 => self.calling_lists(conn, after).await?,
            _ => self.audit(conn, after).await?,
        };
        self.next = match last {
            // A document's part is a page whatever its length; a later part may follow.
            Some(after @ (After::Users(_) | After::Objects(_))) => Next::After(after),
            Some(after) if page.len() as i64 == self.per_page => Next::After(after),
            _ if list < 4 => Next::Start(list + 1),
            _ => Next::Done,
        };
        Ok(Some(page))
    }

    async fn users(
        &self,
        conn: &mut PgConnection,
        after: Option<After>,
    ) -> Result<(Page, Option<After>), sqlx::Error> {
        let after = match after {
            Some(After::Users(part)) => Some(part),
            _ => None,
        };
        let part = self.part(conn, "users", after).await?;
        let last = part.as_ref().map(|(n, _)| After::Users(*n));
        let users = part.map(|(_, text)| entries(text)).transpose()?;
        let users = users.unwrap_or_default().into_iter().map(StoredUser::entry);
        Ok((Page::Users(users.collect()), last))
    }

    async fn objects(
        &self,
        conn: &mut PgConnection,
        after: Option<After>,
    ) -> Result<(Page, Option<After>), sqlx::Error> {
        let after = match after {
            Some(After::Objects(part)) => Some(part),
            _ => None,
        };
        let part = self.part(conn, "objects", after).await?;
        let last = part.as_ref().map(|(n, _)| After::Objects(*n));
        let objects = part.map(|(_, text)| entries(text)).transpose()?;
        let objects = objects
            .unwrap_or_default()
            .into_iter()
            .map(StoredObject::entry);
        Ok((Page::Objects(objects.collect()), last))
    }

    /// The tenant's next part of the `kind` document after part `after` (the first without
    /// it): its number and text; `None` past the last.
    async fn part(
        &self,
        conn: &mut PgConnection,
        kind: &str,
        after: Option<i32>,
    ) -> Result<Option<(i32, String)>, sqlx::Error> {
        sqlx::query_as(
            "SELECT part, entries::text FROM tenant_documents
             WHERE tenant_id = $1 AND kind = $2 AND part > $3 ORDER BY part LIMIT 1",
        )
        .bind(self.tenant)
        .bind(kind)
        .bind(after.unwrap_or(-1))
        .fetch_optional(conn)
        .await
    }

    async fn access_numbers(
        &self,
        conn: &mut PgConnection,
        after: Option<After>,
    ) -> Result<(Page, Option<After>), sqlx::Error> {
        let after = match after {
            Some(After::AccessNumbers(d, s)) => Some((d, s)),
            _ => None,
        };
        let sql = format!(
            // The cursor's text is not named `span`: `ORDER BY span` would sort by that text
            // (`[10,15)` before `[9,10)`) while the cursor compares ranges, and pages would skip
            // and repeat ranges.
            "SELECT digits, span::text AS cursor, number, count, media FROM access_numbers
             WHERE tenant_id = $1 {} ORDER BY digits, span LIMIT $2",
            later(after.is_some(), "AND (digits, span) > ($3, $4::numrange)")
        );
        let mut query = sqlx::query_as(&sql).bind(self.tenant).bind(self.per_page);
        if let Some((digits, span)) = after {
            query = query.bind(digits).bind(span);
        }
        let rows: Vec<(i32, String, String, i32, String)> = query.fetch_all(conn).await?;
        let last = rows.last().map(|r| After::AccessNumbers(r.0, r.1.clone()));
        let items = rows
            .into_iter()
            .map(|(_, _, number, count, media)| AccessNumberEntry {
                number,
                count,
                media,
            })
            .collect();
        Ok((Page::AccessNumbers(items), last))
    }

    async fn calling_lists(
        &self,
        conn: &mut PgConnection,
        after: Option<After>,
    ) -> Result<(Page, Option<After>), sqlx::Error> {
        let after = match after {
            Some(After::CallingLists(p, id)) => Some((p, id)),
            _ => None,
        };
        let sql = format!(
            "SELECT position, id, name, entries::text FROM calling_lists
             WHERE tenant_id = $1 {} ORDER BY position, id LIMIT $2",
            later(after.is_some(), "AND (position, id) > ($3, $4)")
        );
        let mut query = sqlx::query_as(&sql).bind(self.tenant).bind(self.per_page);
        if let Some((position, id)) = after {
            query = query.bind(position).bind(id);
        }
        let rows: Vec<(i32, Uuid, String, String)> = query.fetch_all(conn).await?;
        let last = rows.last().map(|r| After::CallingLists(r.0, r.1));
        let items = rows
            .into_iter()
            .map(|(_, id, name, entries)| {
                Ok(CallingListEntry {
                    id,
                    name,
                    entries: json(entries)?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()?;
        Ok((Page::CallingLists(items), last))
    }

    async fn audit(
        &self,
        conn: &mut PgConnection,
        after: Option<After>,
    ) -> Result<(Page, Option<After>), sqlx::Error> {
        let after = match after {
            Some(After::Audit(id)) => Some(id),
            _ => None,
        };
        let sql = format!(
            "SELECT id, at, actor, action, object, details::text FROM audit_log
             WHERE tenant_id = $1 {} ORDER BY id LIMIT $2",
            later(after.is_some(), "AND id > $3")
        );
        let mut query = sqlx::query_as(&sql).bind(self.tenant).bind(self.per_page);
        if let Some(id) = after {
            query = query.bind(id);
        }
        let rows: Vec<(i64, DateTime<Utc>, String, String, String, String)> =
            query.fetch_all(conn).await?;
        let last = rows.last().map(|r| After::Audit(r.0));
        let items = rows
            .into_iter()
            .map(|(_, at, actor, action, object, details)| {
                Ok(AuditEntry {
                    at,
                    actor,
                    action,
                    object,
                    details: json(details)?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()?;
        Ok((Page::Audit(items), last))
    }
}

impl After {
    /// The index of its list in archive order.
    fn list(&self) -> usize {
        match self {
            After::Users(..) => 0,
            After::Objects(..) => 1,
            After::AccessNumbers(..) => 2,
            After::CallingLists(..) => 3,
            After::Audit(..) => 4,
        }
    }
}

/// The keyset condition of a later page; none on a list's first page. A condition the planner
/// can use as an index range (not `$n IS NULL OR ...`, which a generic plan cannot), so each
/// page costs its own rows, not the list's.
fn later(later_page: bool, condition: &'static str) -> &'static str {
    if later_page { condition } else { "" }
}

/// A user as its tenant's document holds it: read back as it was written, with none of the
/// template reader's checks (they held when it was imported; data written before a check was
/// added exports as it is, as when it was a row).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct StoredUser {
    id: Uuid,
    login_id: String,
    first_name: String,
    last_name: String,
    email: String,
    #[serde(default)]
    roles: Vec<String>,
    #[serde(default)]
    password_hash: Option<String>,
    #[serde(default)]
    teams: Vec<Uuid>,
}

impl StoredUser {
    fn entry(self) -> UserEntry {
        UserEntry {
            id: self.id,
            login_id: self.login_id,
            first_name: self.first_name,
            last_name: self.last_name,
            email: self.email,
            roles: self.roles,
            password_hash: self.password_hash,
            teams: self.teams,
        }
    }
}

/// An object as its tenant's document holds it (see `StoredUser`): its `data` any JSON.
#[derive(Deserialize)]
struct StoredObject {
    id: Uuid,
    kind: String,
    name: String,
    /// Any JSON, `null` included, as it was stored; `{}` when absent.
    #[serde(default = "no_data")]
    data: Box<RawValue>,
    #[serde(default)]
    refs: Vec<Uuid>,
}

impl StoredObject {
    fn entry(self) -> ObjectEntry {
        ObjectEntry {
            id: self.id,
            kind: self.kind,
            name: self.name,
            data: JsonDoc::from(self.data),
            refs: self.refs,
        }
    }
}

fn no_data() -> Box<RawValue> {
    RawValue::from_string("{}".to_owned()).expect("valid JSON")
}

/// A document part's text (a `jsonb` array of entries) as entries.
fn entries<T: serde::de::DeserializeOwned>(mut text: String) -> Result<Vec<T>, sqlx::Error> {
    compact_json(&mut text);
    serde_json::from_str(&text).map_err(|e| sqlx::Error::Decode(Box::new(e)))
}

/// A `jsonb` column's text as a `JsonDoc`.
fn json(text: String) -> Result<JsonDoc, sqlx::Error> {
    JsonDoc::from_database(text).map_err(|e| sqlx::Error::Decode(Box::new(e)))
}
