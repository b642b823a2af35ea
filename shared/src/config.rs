//! Typed settings, loaded once from the environment; every error names its variable.

use std::{net::SocketAddr, str::FromStr, time::Duration};

use secrecy::SecretString;

/// `PROVISIONER_TEMPLATE_MAX_BYTES` when unset: the largest template download or upload.
pub const DEFAULT_TEMPLATE_MAX_BYTES: u64 = 64 << 20;

#[derive(Debug, thiserror::Error)]
#[error("{variable}: {message}")]
pub struct SettingsError {
    pub variable: &'static str,
    pub message: String,
}

/// Which advisory locks an import takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImportLockMode {
    /// One lock per tenant URL: imports of different tenants run in parallel.
    Tenant,
    /// One import at a time cluster-wide (then the tenant's lock), as the original.
    Global,
}

/// Output format of the logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Pretty,
    Json,
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub database_url: SecretString,
    pub amqp_url: SecretString,
    pub listen: SocketAddr,
    pub bootstrap_client: Option<SecretString>,
    pub import_lock: ImportLockMode,
    pub template_allow_private: bool,
    /// The ports templates are downloaded from; `None`: any.
    pub template_ports: Option<Vec<u16>>,
    pub worker_concurrency: u16,
    pub token_ttl: Duration,
    pub job_max_attempts: u32,
    pub template_timeout: Duration,
    pub template_max_bytes: u64,
    /// Memory one process may spend on templates at once: a worker on reading and writing the
    /// templates of the jobs it runs (each template's costs, see `Template::costs`), the API on
    /// uploads in flight and on the templates it checks.
    pub template_memory_budget: u64,
    pub log_format: LogFormat,
    /// Base64 of 32 bytes; seals administrator passwords between API and worker.
    pub seal_key: Option<SecretString>,
    /// A database session of the API or a worker idle inside a transaction this long is ended
    /// by PostgreSQL, with its locks (a hung or partitioned process never keeps one).
    pub idle_in_transaction_timeout: Duration,
    /// How long a worker owns a running job without renewing its lease.
    pub job_lease: Duration,
    /// First retry delay after a transient failure; doubles per attempt.
    pub retry_base_delay: Duration,
    pub shutdown_timeout: Duration,
    /// Queued and running jobs one client may have; past it, creates answer 429.
    pub client_max_active_jobs: u32,
    /// A client's first this many queued and running single jobs go to the interactive queue;
    /// the rest to the backlog's tiers by their rank (`queue::Lane::Backlog`), which workers take
    /// only when no interactive work waits, a tier only when no lower one waits.
    pub client_interactive_jobs: u32,
    /// Templates one client may keep in the template store, and their bytes together; past
    /// either, storing another answers 409.
    pub client_max_stored_templates: u32,
    pub client_max_stored_bytes: u64,
    /// Requests one client may make per second to one API process (as many at once), past
    /// which they answer 429; `None`: no limit.
    pub client_request_rate: Option<std::num::NonZeroU32>,
    /// Connections the API serves at once; more wait in the kernel's backlog.
    pub max_connections: u32,
    /// Connections one peer address may have served at once; one more is closed as soon as it
    /// is accepted. `None`: no cap (a proxy in front makes every client one peer).
    pub max_connections_per_peer: Option<std::num::NonZeroU32>,
    /// Proxies in front of the API whose `X-Forwarded-For` is believed: a request from one of
    /// them counts as from the address it names (for the token endpoint's and the sign-in's
    /// failure counts); empty: every request counts as from its connection's address.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Long-polls (`?wait=`, `Prefer: wait`) one client may hold open at once; past it they are
    /// answered without waiting.
    pub client_max_waits: u32,
    /// A request body not fully received this long after its headers ends the request with
    /// `408`, however steadily it trickles (a stalled one ends after 30 s of silence already).
    pub body_timeout: Duration,
    /// How often the worker's sweeper rescues expired leases and re-sends stranded jobs;
    /// `None`: a third of `job_lease`, from 1 to 10 seconds.
    pub sweep_interval: Option<Duration>,
    /// A queued job whose message was sent this long ago with no pending outbox message is
    /// sent again (its broker message may be lost).
    pub reconcile_after: Duration,
    /// Most items one batch may hold (`413` past it; a JSON body holds at most 1,000).
    pub batch_max_items: u32,
    /// Bytes an NDJSON batch body may have; past them: 413.
    pub batch_max_bytes: u64,
    /// Unfinished batch items one client may have; a batch that would pass it is `429`.
    pub client_max_batch_items: u32,
    /// Batch items on the broker or running at once, cluster-wide: the dispatcher releases
    /// held items fairly across clients within this window.
    pub dispatch_window: u32,
    /// Ended jobs (and ended batches with their jobs) are purged this long after they ended;
    /// at least a day, so an idempotency key stays valid as long as the contract says.
    pub job_retention: Duration,
    /// Where a worker answers orchestrators' probes (`/healthz`, `/readyz`, the latter `503` once
    /// it drains); `None`: no listener.
    pub worker_health_listen: Option<SocketAddr>,
}

/// The shortest retention: the contract keeps idempotency keys at least 24 hours.
pub const MIN_JOB_RETENTION: Duration = Duration::from_secs(24 * 3600);

impl Settings {
    pub fn from_env() -> Result<Self, SettingsError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Builds settings from any variable source (tests pass a map).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, SettingsError> {
        let var = |name: &'static str, default: &str| -> String {
            get(name)
                .filter(|v| !v.trim().is_empty())
                .unwrap_or_else(|| default.to_owned())
        };
        let template_allow_private = parse_bool(
            "PROVISIONER_TEMPLATE_ALLOW_PRIVATE",
            &var("PROVISIONER_TEMPLATE_ALLOW_PRIVATE", "false"),
        )?;
        let max_connections: u32 = positive(
            "PROVISIONER_MAX_CONNECTIONS",
            &var("PROVISIONER_MAX_CONNECTIONS", "1024"),
        )?;
        Ok(Self {
            database_url: SecretString::from(var(
                "DATABASE_URL",
                "postgres://postgres@127.0.0.1:5432/provisioner",
            )),
            amqp_url: SecretString::from(var("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f")),
            listen: listen_address(
                "PROVISIONER_LISTEN",
                &var("PROVISIONER_LISTEN", "127.0.0.1:8080"),
            )?,
            bootstrap_client: get("PROVISIONER_BOOTSTRAP_CLIENT")
                .filter(|v| !v.is_empty())
                .map(SecretString::from),
            import_lock: match var("PROVISIONER_IMPORT_LOCK", "tenant").as_str() {
                "tenant" => ImportLockMode::Tenant,
                "global" => ImportLockMode::Global,
                other => {
                    return Err(invalid(
                        "PROVISIONER_IMPORT_LOCK",
                        other,
                        "`tenant` or `global`",
                    ));
                }
            },
            template_allow_private,
            template_ports: template_ports(
                get("PROVISIONER_TEMPLATE_PORTS").filter(|v| !v.trim().is_empty()),
                template_allow_private,
            )?,
            worker_concurrency: positive(
                "PROVISIONER_WORKER_CONCURRENCY",
                &var("PROVISIONER_WORKER_CONCURRENCY", "4"),
            )?,
            token_ttl: token_ttl(&var("PROVISIONER_TOKEN_TTL", "3600"))?,
            job_max_attempts: positive(
                "PROVISIONER_JOB_MAX_ATTEMPTS",
                &var("PROVISIONER_JOB_MAX_ATTEMPTS", "5"),
            )?,
            template_timeout: seconds(
                "PROVISIONER_TEMPLATE_TIMEOUT",
                &var("PROVISIONER_TEMPLATE_TIMEOUT", "60"),
            )?,
            template_max_bytes: positive(
                "PROVISIONER_TEMPLATE_MAX_BYTES",
                &var(
                    "PROVISIONER_TEMPLATE_MAX_BYTES",
                    &DEFAULT_TEMPLATE_MAX_BYTES.to_string(),
                ),
            )?,
            template_memory_budget: positive(
                "PROVISIONER_TEMPLATE_MEMORY_BUDGET",
                &var("PROVISIONER_TEMPLATE_MEMORY_BUDGET", "1073741824"),
            )?,
            log_format: match var("PROVISIONER_LOG_FORMAT", "pretty").as_str() {
                "pretty" => LogFormat::Pretty,
                "json" => LogFormat::Json,
                other => {
                    return Err(invalid(
                        "PROVISIONER_LOG_FORMAT",
                        other,
                        "`pretty` or `json`",
                    ));
                }
            },
            seal_key: get("PROVISIONER_SEAL_KEY")
                .filter(|v| !v.is_empty())
                .map(SecretString::from),
            job_lease: seconds("PROVISIONER_JOB_LEASE", &var("PROVISIONER_JOB_LEASE", "30"))?,
            retry_base_delay: millis(
                "PROVISIONER_RETRY_BASE_DELAY_MS",
                &var("PROVISIONER_RETRY_BASE_DELAY_MS", "1000"),
            )?,
            shutdown_timeout: seconds(
                "PROVISIONER_SHUTDOWN_TIMEOUT",
                &var("PROVISIONER_SHUTDOWN_TIMEOUT", "30"),
            )?,
            client_max_active_jobs: positive(
                "PROVISIONER_CLIENT_MAX_ACTIVE_JOBS",
                &var("PROVISIONER_CLIENT_MAX_ACTIVE_JOBS", "10000"),
            )?,
            client_interactive_jobs: positive(
                "PROVISIONER_CLIENT_INTERACTIVE_JOBS",
                &var("PROVISIONER_CLIENT_INTERACTIVE_JOBS", "4"),
            )?,
            client_max_stored_templates: positive(
                "PROVISIONER_CLIENT_MAX_STORED_TEMPLATES",
                &var("PROVISIONER_CLIENT_MAX_STORED_TEMPLATES", "1000"),
            )?,
            client_max_stored_bytes: positive(
                "PROVISIONER_CLIENT_MAX_STORED_BYTES",
                &var("PROVISIONER_CLIENT_MAX_STORED_BYTES", "4294967296"),
            )?,
            idle_in_transaction_timeout: idle_in_transaction(&var(
                "PROVISIONER_IDLE_IN_TRANSACTION_TIMEOUT",
                "60",
            ))?,
            client_request_rate: std::num::NonZeroU32::new(parse(
                "PROVISIONER_CLIENT_REQUEST_RATE",
                &var("PROVISIONER_CLIENT_REQUEST_RATE", "0"),
            )?),
            max_connections,
            max_connections_per_peer: std::num::NonZeroU32::new(parse(
                "PROVISIONER_MAX_CONNECTIONS_PER_PEER",
                &var(
                    "PROVISIONER_MAX_CONNECTIONS_PER_PEER",
                    &(max_connections / 2).max(1).to_string(),
                ),
            )?),
            trusted_proxies: trusted_proxies(&var("PROVISIONER_TRUSTED_PROXIES", ""))?,
            client_max_waits: positive(
                "PROVISIONER_CLIENT_MAX_WAITS",
                &var("PROVISIONER_CLIENT_MAX_WAITS", "64"),
            )?,
            body_timeout: seconds(
                "PROVISIONER_BODY_TIMEOUT",
                &var("PROVISIONER_BODY_TIMEOUT", "300"),
            )?,
            sweep_interval: get("PROVISIONER_SWEEP_INTERVAL")
                .filter(|v| !v.trim().is_empty())
                .map(|v| seconds("PROVISIONER_SWEEP_INTERVAL", &v))
                .transpose()?,
            reconcile_after: seconds(
                "PROVISIONER_RECONCILE_AFTER",
                &var("PROVISIONER_RECONCILE_AFTER", "90"),
            )?,
            batch_max_items: positive(
                "PROVISIONER_BATCH_MAX_ITEMS",
                &var("PROVISIONER_BATCH_MAX_ITEMS", "100000"),
            )?,
            batch_max_bytes: positive(
                "PROVISIONER_BATCH_MAX_BYTES",
                &var("PROVISIONER_BATCH_MAX_BYTES", "1073741824"),
            )?,
            client_max_batch_items: positive(
                "PROVISIONER_CLIENT_MAX_BATCH_ITEMS",
                &var("PROVISIONER_CLIENT_MAX_BATCH_ITEMS", "1000000"),
            )?,
            dispatch_window: positive(
                "PROVISIONER_DISPATCH_WINDOW",
                &var("PROVISIONER_DISPATCH_WINDOW", "32"),
            )?,
            job_retention: retention(&var("PROVISIONER_JOB_RETENTION", "604800"))?,
            worker_health_listen: get("PROVISIONER_WORKER_HEALTH_LISTEN")
                .filter(|v| !v.trim().is_empty())
                .map(|v| listen_address("PROVISIONER_WORKER_HEALTH_LISTEN", &v))
                .transpose()?,
        })
    }
}

/// `host:port`, or `:port` for every interface (`:0` picks a free port).
fn listen_address(variable: &'static str, value: &str) -> Result<SocketAddr, SettingsError> {
    match value.trim().strip_prefix(':') {
        Some(port) => parse::<u16>(variable, port).map(|p| SocketAddr::from(([0, 0, 0, 0], p))),
        None => value.trim().parse().map_err(|_| {
            invalid(
                variable,
                value,
                "an IP address and a port (`127.0.0.1:8080`, `[::1]:8080`) or `:PORT` for every \
                 interface; not a host name such as `localhost`",
            )
        }),
    }
}

/// Address blocks (`10.0.0.0/8`) or single addresses, separated by commas or spaces. IPv4
/// blocks written mapped into IPv6 (`::ffff:10.0.0.0/104`) are taken as IPv4 (peers are
/// compared as IPv4); a block of every address is refused (whoever connects would choose the
/// address it counts as).
fn trusted_proxies(value: &str) -> Result<Vec<ipnet::IpNet>, SettingsError> {
    const VARIABLE: &str = "PROVISIONER_TRUSTED_PROXIES";
    value
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|p| !p.is_empty())
        .map(|p| {
            let net = p
                .parse::<ipnet::IpNet>()
                .or_else(|_| p.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map(|net| net.trunc())
                .map_err(|_| invalid(VARIABLE, p, "IP addresses or blocks such as `10.0.0.0/8`"))?;
            let net = match net {
                ipnet::IpNet::V6(v6) if v6.prefix_len() >= 96 => {
                    match v6.network().to_ipv4_mapped() {
                        Some(v4) => ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96)
                            .map(ipnet::IpNet::V4)
                            .unwrap_or(net),
                        None => net,
                    }
                }
                net => net,
            };
            if net.prefix_len() == 0 {
                return Err(invalid(
                    VARIABLE,
                    p,
                    "the proxies' own addresses: trusting every address lets any client choose the address it counts as",
                ));
            }
            Ok(net)
        })
        .collect()
}

fn invalid(variable: &'static str, value: &str, expected: &str) -> SettingsError {
    SettingsError {
        variable,
        message: format!("`{value}` is not valid; expected {expected}"),
    }
}

fn parse<T: FromStr>(variable: &'static str, value: &str) -> Result<T, SettingsError>
where
    T::Err: std::fmt::Display,
{
    value.trim().parse().map_err(|e| SettingsError {
        variable,
        message: format!("`{value}`: {e}"),
    })
}

fn parse_bool(variable: &'static str, value: &str) -> Result<bool, SettingsError> {
    match value.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" => Ok(true),
        "false" | "0" | "no" => Ok(false),
        _ => Err(invalid(variable, value, "`true` or `false`")),
    }
}

fn positive<T: FromStr + Default + PartialEq>(
    variable: &'static str,
    value: &str,
) -> Result<T, SettingsError>
where
    T::Err: std::fmt::Display,
{
    let n: T = parse(variable, value)?;
    if n == T::default() {
        return Err(invalid(variable, value, "a positive integer"));
    }
    Ok(n)
}

fn seconds(variable: &'static str, value: &str) -> Result<Duration, SettingsError> {
    positive::<u64>(variable, value).map(Duration::from_secs)
}

/// Longest token lifetime: a year (a token's expiry must stay a date PostgreSQL can hold).
const MAX_TOKEN_TTL: Duration = Duration::from_secs(366 * 86_400);

fn token_ttl(value: &str) -> Result<Duration, SettingsError> {
    const VARIABLE: &str = "PROVISIONER_TOKEN_TTL";
    let ttl = seconds(VARIABLE, value)?;
    if ttl > MAX_TOKEN_TTL {
        return Err(invalid(
            VARIABLE,
            value,
            "at most 31622400 seconds (a year)",
        ));
    }
    Ok(ttl)
}

fn retention(value: &str) -> Result<Duration, SettingsError> {
    const VARIABLE: &str = "PROVISIONER_JOB_RETENTION";
    let retention = seconds(VARIABLE, value)?;
    if retention < MIN_JOB_RETENTION {
        return Err(invalid(
            VARIABLE,
            value,
            "at least 86400 seconds (idempotency keys are kept 24 hours)",
        ));
    }
    Ok(retention)
}

/// The bounds of `PROVISIONER_IDLE_IN_TRANSACTION_TIMEOUT`: above the 10 s an export's session
/// may rest between two pages, and at most a day (a longer wait is no bound on a lost process).
const IDLE_IN_TRANSACTION: std::ops::RangeInclusive<u64> = 15..=86_400;

fn idle_in_transaction(value: &str) -> Result<Duration, SettingsError> {
    const VARIABLE: &str = "PROVISIONER_IDLE_IN_TRANSACTION_TIMEOUT";
    let idle = seconds(VARIABLE, value)?;
    if !IDLE_IN_TRANSACTION.contains(&idle.as_secs()) {
        return Err(invalid(VARIABLE, value, "from 15 to 86400 seconds"));
    }
    Ok(idle)
}

/// The web's ports, which templates are downloaded from unless the operator says otherwise.
pub const DEFAULT_TEMPLATE_PORTS: [u16; 2] = [80, 443];

/// `PROVISIONER_TEMPLATE_PORTS`: ports separated by commas, or `any`. Unset: the web's ports,
/// or any port where private addresses are allowed (development and tests, whose template
/// servers listen on local ports of every kind).
fn template_ports(
    value: Option<String>,
    allow_private: bool,
) -> Result<Option<Vec<u16>>, SettingsError> {
    const VARIABLE: &str = "PROVISIONER_TEMPLATE_PORTS";
    let Some(value) = value else {
        return Ok((!allow_private).then(|| DEFAULT_TEMPLATE_PORTS.to_vec()));
    };
    if value.trim().eq_ignore_ascii_case("any") {
        return Ok(None);
    }
    value
        .split(',')
        .map(|port| match port.trim().parse::<u16>() {
            Ok(port) if port > 0 => Ok(port),
            _ => Err(invalid(
                VARIABLE,
                &value,
                "ports separated by commas, or `any`",
            )),
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

fn millis(variable: &'static str, value: &str) -> Result<Duration, SettingsError> {
    positive::<u64>(variable, value).map(Duration::from_millis)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn settings(vars: &[(&str, &str)]) -> Result<Settings, SettingsError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Settings::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn defaults_point_at_local_services() {
        let s = settings(&[]).unwrap();
        assert_eq!(s.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(s.import_lock, ImportLockMode::Tenant);
        assert_eq!(s.worker_concurrency, 4);
        assert_eq!(s.job_max_attempts, 5);
        assert_eq!(s.template_max_bytes, 64 * 1024 * 1024);
        assert!(!s.template_allow_private);
    }

    #[test]
    fn a_bare_port_listens_on_every_interface() {
        let s = settings(&[("PROVISIONER_LISTEN", ":0")]).unwrap();
        assert_eq!(s.listen.to_string(), "0.0.0.0:0");
        assert_eq!(
            settings(&[("PROVISIONER_LISTEN", "nope")])
                .unwrap_err()
                .variable,
            "PROVISIONER_LISTEN"
        );
    }

    #[test]
    fn the_worker_health_listener_is_off_unless_an_address_is_given() {
        assert_eq!(settings(&[]).unwrap().worker_health_listen, None);
        let s = settings(&[("PROVISIONER_WORKER_HEALTH_LISTEN", ":9090")]).unwrap();
        assert_eq!(s.worker_health_listen.unwrap().to_string(), "0.0.0.0:9090");
        let err = settings(&[("PROVISIONER_WORKER_HEALTH_LISTEN", "nope")]).unwrap_err();
        assert_eq!(err.variable, "PROVISIONER_WORKER_HEALTH_LISTEN");
        let err = settings(&[("PROVISIONER_LISTEN", "localhost:8080")]).unwrap_err();
        assert!(
            err.message.contains("not a host name such as `localhost`"),
            "{}",
            err.message
        );
    }

    #[test]
    fn trusted_proxies_are_blocks_or_addresses() {
        assert!(settings(&[]).unwrap().trusted_proxies.is_empty());
        let s = settings(&[(
            "PROVISIONER_TRUSTED_PROXIES",
            "10.1.2.3/8, 192.0.2.7 2001:db8::/32",
        )])
        .unwrap();
        let shown: Vec<String> = s.trusted_proxies.iter().map(ToString::to_string).collect();
        assert_eq!(shown, ["10.0.0.0/8", "192.0.2.7/32", "2001:db8::/32"]);
        let mapped = settings(&[("PROVISIONER_TRUSTED_PROXIES", "::ffff:10.0.0.0/104")]).unwrap();
        assert_eq!(mapped.trusted_proxies[0].to_string(), "10.0.0.0/8");
        for everyone in ["0.0.0.0/0", "::/0"] {
            let err = settings(&[("PROVISIONER_TRUSTED_PROXIES", everyone)]).unwrap_err();
            assert!(err.message.contains("any client"), "{}", err.message);
        }
        let err =
            settings(&[("PROVISIONER_TRUSTED_PROXIES", "10.0.0.0/8,proxy.local")]).unwrap_err();
        assert_eq!(err.variable, "PROVISIONER_TRUSTED_PROXIES");
        assert!(err.message.contains("proxy.local"), "{}", err.message);
    }

    #[test]
    fn one_peer_has_half_the_connections_unless_told_otherwise() {
        let cap = |vars: &[(&str, &str)]| {
            settings(vars)
                .unwrap()
                .max_connections_per_peer
                .map(|n| n.get())
        };
        assert_eq!(cap(&[]), Some(512));
        assert_eq!(cap(&[("PROVISIONER_MAX_CONNECTIONS", "1")]), Some(1));
        assert_eq!(cap(&[("PROVISIONER_MAX_CONNECTIONS", "10")]), Some(5));
        assert_eq!(cap(&[("PROVISIONER_MAX_CONNECTIONS_PER_PEER", "0")]), None);
        assert_eq!(
            cap(&[("PROVISIONER_MAX_CONNECTIONS_PER_PEER", "3")]),
            Some(3)
        );
        assert!(settings(&[("PROVISIONER_MAX_CONNECTIONS_PER_PEER", "-1")]).is_err());
    }

    #[test]
    fn errors_name_the_variable() {
        let err = settings(&[("PROVISIONER_IMPORT_LOCK", "cluster")]).unwrap_err();
        assert_eq!(err.variable, "PROVISIONER_IMPORT_LOCK");
        let err = settings(&[("PROVISIONER_WORKER_CONCURRENCY", "0")]).unwrap_err();
        assert_eq!(err.variable, "PROVISIONER_WORKER_CONCURRENCY");
    }

    #[test]
    fn retention_keeps_idempotency_keys_a_day_at_least() {
        assert_eq!(
            settings(&[]).unwrap().job_retention,
            Duration::from_secs(7 * 86400)
        );
        let day = settings(&[("PROVISIONER_JOB_RETENTION", "86400")]).unwrap();
        assert_eq!(day.job_retention, MIN_JOB_RETENTION);
        let err = settings(&[("PROVISIONER_JOB_RETENTION", "86399")]).unwrap_err();
        assert_eq!(err.variable, "PROVISIONER_JOB_RETENTION");
        assert!(err.message.contains("24 hours"), "{}", err.message);
    }

    #[test]
    fn a_token_lives_a_year_at_most() {
        let year = settings(&[("PROVISIONER_TOKEN_TTL", "31622400")]).unwrap();
        assert_eq!(year.token_ttl, MAX_TOKEN_TTL);
        for too_long in ["31622401", "9000000000000"] {
            let err = settings(&[("PROVISIONER_TOKEN_TTL", too_long)]).unwrap_err();
            assert_eq!(err.variable, "PROVISIONER_TOKEN_TTL");
        }
    }

    #[test]
    fn templates_come_from_the_webs_ports_unless_private_addresses_are_allowed() {
        assert_eq!(settings(&[]).unwrap().template_ports, Some(vec![80, 443]));
        let dev = settings(&[("PROVISIONER_TEMPLATE_ALLOW_PRIVATE", "true")]).unwrap();
        assert_eq!(dev.template_ports, None);
        let listed = settings(&[("PROVISIONER_TEMPLATE_PORTS", "443, 8443")]).unwrap();
        assert_eq!(listed.template_ports, Some(vec![443, 8443]));
        let any = settings(&[("PROVISIONER_TEMPLATE_PORTS", "Any")]).unwrap();
        assert_eq!(any.template_ports, None);
        for bad in ["0", "80,", "http", "70000"] {
            let err = settings(&[("PROVISIONER_TEMPLATE_PORTS", bad)]).unwrap_err();
            assert_eq!(err.variable, "PROVISIONER_TEMPLATE_PORTS", "{bad}");
        }
    }

    #[test]
    fn the_idle_in_transaction_timeout_is_bounded() {
        assert_eq!(
            settings(&[]).unwrap().idle_in_transaction_timeout,
            Duration::from_secs(60)
        );
        for (value, ok) in [
            ("15", true),
            ("86400", true),
            ("14", false),
            ("86401", false),
        ] {
            let parsed = settings(&[("PROVISIONER_IDLE_IN_TRANSACTION_TIMEOUT", value)]);
            assert_eq!(parsed.is_ok(), ok, "{value}");
        }
    }
}
