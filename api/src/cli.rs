//! Operator commands of `provisioner-api`: `client create | list | revoke`.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use provisioner_shared::{
    config::Settings,
    db::{self, PoolConfig},
    passwords,
    seal::Sealer,
};
use rand::RngCore;

use crate::{auth::all_scope_names, metrics::client_label};

pub(crate) const USAGE: &str = "usage:
  provisioner-api                      run the API
  provisioner-api openapi              print the OpenAPI document
  provisioner-api client create --name NAME [--scopes tenants:read,tenants:write] [--id ID]
  provisioner-api client list          id, name, scopes, created, state, /metrics label
  provisioner-api client revoke ID";

/// Whether `args` (without the program name) ask for the usage: `help`, or `-h`/`--help`
/// anywhere (`client create --help`), never taken as an option's value.
pub(crate) fn asks_for_help(args: &[String]) -> bool {
    args.first().is_some_and(|a| a == "help") || args.iter().any(|a| a == "-h" || a == "--help")
}

/// An operator command, read before anything is connected to.
enum Command<'a> {
    Create {
        name: &'a str,
        scopes: Vec<String>,
        id: Option<&'a str>,
    },
    List,
    Revoke(&'a str),
}

impl<'a> Command<'a> {
    fn parse(args: &[&'a str]) -> anyhow::Result<Self> {
        Ok(match args {
            ["client", "create", rest @ ..] => {
                // Options in pairs, each known and given once: a mistyped `--scope` would
                // otherwise give the client the default scopes, writing included.
                let mut given: Vec<(&str, &'a str)> = Vec::new();
                for pair in rest.chunks(2) {
                    match pair {
                        [option @ ("--name" | "--scopes" | "--id"), value]
                            if !value.starts_with("--") =>
                        {
                            if given.iter().any(|(o, _)| o == option) {
                                anyhow::bail!("{option} is given twice\n{USAGE}");
                            }
                            given.push((option, value));
                        }
                        [option @ ("--name" | "--scopes" | "--id"), ..] => {
                            anyhow::bail!("{option} needs a value\n{USAGE}")
                        }
                        [other, ..] => anyhow::bail!("unknown option `{other}`\n{USAGE}"),
                        [] => {}
                    }
                }
                let opt = |name: &str| given.iter().find(|(o, _)| *o == name).map(|(_, v)| *v);
                let name =
                    opt("--name").ok_or_else(|| anyhow::anyhow!("--name is required\n{USAGE}"))?;
                let scopes: Vec<String> = opt("--scopes")
                    .unwrap_or("tenants:read,tenants:write")
                    .split(',')
                    .map(|s| s.trim().to_owned())
                    .collect();
                let known = all_scope_names();
                if let Some(bad) = scopes.iter().find(|s| !known.contains(s)) {
                    anyhow::bail!("unknown scope `{bad}`; scopes are {}", known.join(", "));
                }
                Self::Create {
                    name,
                    scopes,
                    id: opt("--id"),
                }
            }
            ["client", "list"] => Self::List,
            ["client", "revoke", id] => Self::Revoke(id),
            ["client", "revoke"] => anyhow::bail!("client revoke needs the client's id\n{USAGE}"),
            [] => anyhow::bail!("{USAGE}"),
            _ => anyhow::bail!("unknown command `{}`\n{USAGE}", args.join(" ")),
        })
    }
}

/// Runs the command in `args` (without the program name); prints to stdout. A command is read
/// whole before the database is connected to (so a mistyped one creates nothing; `--help` is
/// answered before, see `asks_for_help`).
pub(crate) async fn run(settings: &Settings, args: &[String]) -> anyhow::Result<()> {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let command = Command::parse(&args)?;
    db::require_database(&settings.database_url).await?;
    let pool = db::connect(
        &settings.database_url,
        &PoolConfig {
            max_connections: 2,
            application_name: "provisioner-cli",
            idle_in_transaction_timeout: None,
            silences: None,
        },
    )
    .await?;
    match command {
        Command::Create { name, scopes, id } => {
            let id = match id {
                Some(id) => id.to_owned(),
                None => format!("cl_{}", &random_token()[..16]),
            };
            let secret = random_token();
            let hash = {
                let secret = secret.clone();
                tokio::task::spawn_blocking(move || passwords::hash(secret.as_bytes())).await?
            };
            db::clients::insert(
                &pool,
                &id,
                name,
                &hash,
                &scopes,
                db::clients::OnExisting::Refuse,
            )
            .await?;
            println!(
                "client_id={id}\nclient_secret={secret}\nscopes={}\n(the secret is shown once; it is stored hashed)",
                scopes.join(",")
            );
        }
        Command::List => {
            // The key the API processes label clients with in `/metrics` (as each loads it at
            // start), for the last column.
            let sealer = Sealer::load(settings.seal_key.as_ref(), &pool).await?;
            for c in db::clients::list(&pool).await? {
                let state = if c.revoked_at.is_some() {
                    "revoked"
                } else {
                    "active"
                };
                println!(
                    "{}\t{}\t{}\t{}\t{}\t{}",
                    c.id,
                    c.name,
                    c.scopes.join(","),
                    c.created_at.to_rfc3339(),
                    state,
                    client_label(&sealer, &c.id)
                );
            }
        }
        Command::Revoke(id) => {
            let mut conn = pool.acquire().await?;
            if !db::clients::revoke(&mut conn, id).await? {
                anyhow::bail!("no active client {id}");
            }
            println!("revoked {id}");
        }
    }
    pool.close().await;
    Ok(())
}

fn random_token() -> String {
    let mut raw = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut raw);
    URL_SAFE_NO_PAD.encode(raw)
}
