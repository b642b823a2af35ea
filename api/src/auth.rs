//! OAuth 2.0 client credentials (RFC 6749 section 4.4): scopes, client authentication and token
//! issue (for the token route), the middleware that checks bearer tokens and scopes on every
//! other route, and the bootstrap client.

use std::{net::IpAddr, sync::Arc, time::Duration};

use axum::{
    extract::{Request, State},
    http::{HeaderMap, HeaderValue, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use base64::{
    Engine,
    engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD},
};
use provisioner_shared::{
    db::{self, clients::ClientRow},
    passwords,
};
use rand::RngCore;
use sha2::{Digest, Sha256};
use sqlx::PgPool;

use crate::{AppState, client_rate, error::ApiError, token_guard::Refusal};

/// A permission a client holds and a route needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scope {
    /// Every GET route but Export Tenant.
    TenantsRead,
    /// Every route that changes state.
    TenantsWrite,
    /// Export Tenant, which carries password hashes (`tenants:read` does not grant it).
    TenantsExport,
    /// An operator: sees every client's work. It grants visibility, not the other scopes.
    ProvisionerAdmin,
}

impl Scope {
    pub(crate) const ALL: [Scope; 4] = [
        Scope::TenantsRead,
        Scope::TenantsWrite,
        Scope::TenantsExport,
        Scope::ProvisionerAdmin,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::TenantsRead => "tenants:read",
            Self::TenantsWrite => "tenants:write",
            Self::TenantsExport => "tenants:export",
            Self::ProvisionerAdmin => "provisioner:admin",
        }
    }

    /// What it grants, as the OpenAPI document describes it.
    pub(crate) fn description(self) -> &'static str {
        match self {
            Self::TenantsRead => "read tenants, jobs and numbers",
            Self::TenantsWrite => "change them",
            Self::TenantsExport => "export tenants, password hashes included",
            Self::ProvisionerAdmin => "see every client's work (with the other scopes)",
        }
    }
}

/// Every scope's name, as the bootstrap client and `client create` grant them.
pub(crate) fn all_scope_names() -> Vec<String> {
    Scope::ALL.iter().map(|s| s.as_str().to_owned()).collect()
}

/// The authenticated client of a request.
#[derive(Debug, Clone)]
pub(crate) struct Caller {
    pub(crate) client_id: String,
    /// Its token has `provisioner:admin`: it sees every client's work.
    pub(crate) operator: bool,
}

impl Caller {
    /// Whose work this caller sees: its own, or everyone's (`None`) for an operator.
    pub(crate) fn sees(&self) -> Option<&str> {
        (!self.operator).then_some(self.client_id.as_str())
    }

    /// The caller as a reader of the template store.
    pub(crate) fn viewer(&self) -> db::templates::Viewer<'_> {
        db::templates::Viewer {
            client_id: &self.client_id,
            operator: self.operator,
        }
    }

    /// Who made a change, as the audit history records it.
    pub(crate) fn actor(&self) -> String {
        format!("client:{}", self.client_id)
    }
}

/// How a client's credentials fared (the token endpoint's and the sign-in form's).
pub(crate) enum Credentials {
    /// `id` is an active client and `secret` its secret.
    Valid(ClientRow),
    /// Unknown id, revoked client or wrong secret: which, the answer does not tell.
    Wrong,
    /// Refused before any verification (`TokenGuard`).
    Refused(Refusal),
    Failed(sqlx::Error),
}

/// Verifies `secret` as client `id`'s, from `peer` (the connection's address; the address a
/// trusted proxy names when it is one, `peer::client_address`), through the process's
/// `TokenGuard`: first what needs no database (a verification slot, this id's failures from
/// this address), then the client's row, then the hash. An unknown (or revoked) id is verified
/// against a dummy hash so that timing does not tell it apart, unless the address has named
/// too many unknown ids lately: then nothing is hashed, and the answer comes after as long as
/// a verification takes, the same `Wrong`, counted for the id as a known id's failure is (so
/// the `429` that twenty of them bring tells nothing of which ids exist either).
pub(crate) async fn verify_credentials(
    state: &AppState,
    id: &str,
    secret: String,
    peer: IpAddr,
    headers: &HeaderMap,
) -> Credentials {
    let peer = Some(crate::peer::client_address(
        peer,
        headers,
        &state.settings.trusted_proxies,
    ));
    let guard = &state.token_guard;
    let slot = match guard.admit(id, peer).await {
        Ok(slot) => slot,
        Err(refusal) => return Credentials::Refused(refusal),
    };
    // No client's id holds a NUL (PostgreSQL's text cannot): such an id is unknown, as any.
    let found = if id.contains('\0') {
        Ok(None)
    } else {
        db::clients::find_active(&state.pool, id).await
    };
    let client = match found {
        Ok(client) => client,
        Err(e) => return Credentials::Failed(e),
    };
    let known = client.is_some();
    if !known && guard.unknown_ids_refused(peer) {
        // The slot is held as long as a verification would hold it, so a burst's answers come
        // as for a real id (given back at once, a burst of unknown ids was answered all
        // together, a real id's one after another). The failure is counted for this id from
        // this address as a known id's is: otherwise a known id would be refused (`429`) after
        // twenty wrong secrets and an unknown one never, which tells which ids exist. Counted
        // after the pause, as a known id's failure is counted after its verification: a
        // request abandoned before its answer is counted on neither path. A flood of new ids
        // leaves its single failures first when the guard's table is full.
        guard.as_long_as_a_verification().await;
        guard.failed_unknown_id(id, peer);
        drop(slot);
        return Credentials::Wrong;
    }
    let phc = client
        .as_ref()
        .map_or_else(|| DUMMY_HASH.to_owned(), |c| c.secret_hash.clone());
    let started = std::time::Instant::now();
    // `slot` is held until the hashing ends, even if the request is abandoned.
    let verified = passwords::occasional_pool()
        .verify(secret.into_bytes(), phc, slot)
        .await;
    guard.verification_took(started.elapsed());
    match client.filter(|_| verified) {
        Some(client) => Credentials::Valid(client),
        None => {
            guard.failed(id, peer, known);
            Credentials::Wrong
        }
    }
}

/// Issues a bearer token for `client` (as its secret was verified) with `scopes`, living `ttl`
/// (the workers' sweeper purges expired ones, see `db::retention`); `None` when the client's
/// secret changed or it was revoked since the verification (its credentials are wrong now).
pub(crate) async fn issue_token(
    pool: &PgPool,
    client: &ClientRow,
    scopes: &[String],
    ttl: Duration,
) -> Result<Option<String>, sqlx::Error> {
    let mut raw = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut raw);
    let token = URL_SAFE_NO_PAD.encode(raw);
    let stored = db::clients::insert_token(
        pool,
        &token_digest(&token),
        &client.id,
        &client.secret_hash,
        scopes,
        ttl,
    )
    .await?;
    Ok(stored.then_some(token))
}

/// An Argon2id hash of a random value nobody knows, verified against for unknown clients.
const DUMMY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$bm90LWEtcmVhbC1zYWx0$TG8gTJrXyJ0Jw0gOZz3QYcZRBYw6cJzP0m1GkV1xHhY";

/// `id:secret` from HTTP Basic authentication.
pub(crate) fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let encoded = value
        .strip_prefix("Basic ")
        .or_else(|| value.strip_prefix("basic "))?;
    let decoded = String::from_utf8(STANDARD.decode(encoded.trim()).ok()?).ok()?;
    let (id, secret) = decoded.split_once(':')?;
    Some((id.to_owned(), secret.to_owned()))
}

pub(crate) fn token_digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// The state of the bearer-token middleware: the app's, and the scope its routes need.
#[derive(Debug, Clone)]
pub(crate) struct Gate {
    pub(crate) state: AppState,
    pub(crate) scope: Scope,
}

/// Middleware: a valid bearer token whose client holds the gate's scope. Puts the `Caller`
/// into the request.
pub(crate) async fn require_token(
    State(gate): State<Gate>,
    mut request: Request,
    next: Next,
) -> Response {
    let token = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        // The scheme's name is case-insensitive (RFC 9110, section 11.1).
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
        .filter(|t| !t.is_empty());
    let Some(token) = token else {
        return unauthorized(None);
    };
    let grant = match verify(&gate.state, token).await {
        Ok(grant) => grant,
        Err(e) => return ApiError::from(e).into_response(),
    };
    let Some(grant) = grant else {
        return unauthorized(Some("the token is unknown or expired"));
    };
    let scopes = &grant.scopes;
    let needed = gate.scope.as_str();
    if !scopes.iter().any(|s| s == needed) {
        let mut response =
            ApiError::Forbidden(format!("this route needs the scope {needed}")).into_response();
        let challenge = format!("Bearer error=\"insufficient_scope\", scope=\"{needed}\"");
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, challenge.parse().expect("ascii"));
        return response;
    }
    if let Err(wait) = gate.state.client_rate.take(&grant.client_id) {
        return ApiError::TooManyRequests {
            detail: "this client sent more requests than its rate allows; retry later".into(),
            retry_after: client_rate::retry_after(wait),
        }
        .into_response();
    }
    let operator = scopes.iter().any(|s| s == Scope::ProvisionerAdmin.as_str());
    request.extensions_mut().insert(Caller {
        client_id: grant.client_id.clone(),
        operator,
    });
    next.run(request).await
}

/// The grant of `token`: kept from a recent request, or read from the database (and kept).
async fn verify(
    state: &AppState,
    token: &str,
) -> Result<Option<Arc<db::clients::TokenGrant>>, sqlx::Error> {
    let digest = token_digest(token);
    if let Some(grant) = state.tokens.get(&digest) {
        return Ok(Some(grant));
    }
    let epoch = state.tokens.epoch();
    let read_at = tokio::time::Instant::now();
    let Some(grant) = db::clients::find_token(&state.pool, &digest).await? else {
        return Ok(None);
    };
    let grant = Arc::new(grant);
    if let Some(epoch) = epoch {
        state.tokens.keep(digest, grant.clone(), epoch, read_at);
    }
    Ok(Some(grant))
}

fn unauthorized(reason: Option<&str>) -> Response {
    let mut response =
        ApiError::Unauthorized(reason.unwrap_or("a bearer token is required").to_owned())
            .into_response();
    // The contract's bare challenge whatever the reason (missing, unknown or expired token);
    // why the token was refused is the body's `detail`.
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

/// Makes sure `id:secret` exists with every scope (the bootstrap client), unless an operator
/// revoked it: a revocation outlives restarts. Only what differs is written: missing scopes
/// alone keep the secret's hash (a new hash, with a new salt, would fail the token requests
/// verified against the old one, `db::clients::insert_token`), and a new secret replaces the
/// hash read, ending the client's tokens with it; of several APIs starting at once with the
/// same secret, one writes it.
pub(crate) async fn bootstrap(pool: &PgPool, spec: &str) -> anyhow::Result<()> {
    let (id, secret) = spec.split_once(':').ok_or_else(|| {
        anyhow::anyhow!("PROVISIONER_BOOTSTRAP_CLIENT must be client_id:client_secret")
    })?;
    anyhow::ensure!(
        !id.is_empty() && !secret.is_empty(),
        "PROVISIONER_BOOTSTRAP_CLIENT must be client_id:client_secret"
    );
    let scopes = all_scope_names();
    let hash = |secret: &str| {
        let secret = secret.to_owned();
        async move { passwords::occasional_pool().hash(secret.into_bytes()).await }
    };
    let Some(existing) = db::clients::find(pool, id).await? else {
        // Another API starting at once may make it first: then it is as that one made it.
        db::clients::insert(
            pool,
            id,
            id,
            &hash(secret).await?,
            &scopes,
            db::clients::OnExisting::Keep,
        )
        .await?;
        tracing::info!(client.id = id, "bootstrap client ready");
        return Ok(());
    };
    if existing.revoked_at.is_some() {
        tracing::warn!(
            client.id = id,
            "the bootstrap client was revoked and stays revoked; unset PROVISIONER_BOOTSTRAP_CLIENT or name another id"
        );
        return Ok(());
    }
    let same = passwords::occasional_pool()
        .verify(secret.as_bytes().to_vec(), existing.secret_hash.clone(), ())
        .await;
    if same {
        if !Scope::ALL
            .iter()
            .all(|s| existing.scopes.iter().any(|e| e == s.as_str()))
        {
            db::clients::set_scopes(pool, id, &scopes).await?;
        }
        tracing::info!(client.id = id, "bootstrap client ready");
        return Ok(());
    }
    // A new secret is how an operator rotates one that leaked: the tokens the old one got end
    // with it, in the transaction of the change (a token being stored meanwhile holds the
    // client's row: the change waits for it and ends it, or comes first and the token is not
    // stored; `db::clients::insert_token`).
    let new_hash = hash(secret).await?;
    let mut tx = pool.begin().await?;
    if db::clients::replace_secret(&mut *tx, id, &existing.secret_hash, &new_hash, &scopes).await? {
        let ended = db::clients::end_tokens(&mut *tx, id).await?;
        tracing::info!(
            client.id = id,
            tokens.ended = ended,
            "the bootstrap client's secret changed; its tokens ended"
        );
    }
    tx.commit().await?;
    tracing::info!(client.id = id, "bootstrap client ready");
    Ok(())
}
