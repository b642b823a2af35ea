//! Template download: bounded in time and bytes, no proxy, at most `MAX_REDIRECTS` redirects
//! (each hop checked as the first URL is), and no connection to a loopback, private or
//! link-local address unless the operator allows it.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use url::{Host, Url};

/// Why a download failed: `Permanent` ends the job with code 400, `Transient` is retried.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum FetchError {
    #[error("{0}")]
    Permanent(String),
    #[error("{0}")]
    Transient(String),
}

/// The one detail for a host (`whose`: `templateUrl`, or `the redirect`) that may not be
/// fetched from, whatever the reason (it does not resolve, or it resolves to a non-public
/// address): a job's error must not let a client map internal names.
fn unreachable(whose: &str) -> String {
    format!("{whose}'s host does not resolve to a public address, so no template was fetched")
}

/// The detail of a redirect not followed, `why`.
fn redirected(why: &str) -> String {
    format!("the template server redirected: {why}")
}

/// A host name not fetched from: it does not resolve, or resolves to a non-public address.
#[derive(Debug, thiserror::Error)]
#[error("{0} does not resolve to a public address")]
struct Blocked(String);

/// A host name whose lookup failed for the moment (no answer in time, the DNS server's
/// failure: `EAI_AGAIN`) or for want of a resource: asked again later, it may resolve.
#[derive(Debug, thiserror::Error)]
#[error("{0} could not be resolved for now")]
struct LookupFailed(String);

/// The error of `host`'s lookup that failed with `kind`: only a failure that may pass is
/// `LookupFailed` (retried); a name that does not exist, or that no lookup could resolve, is
/// `Blocked`, as a name of a private address is.
fn lookup_failure(
    host: String,
    kind: dns_lookup::LookupErrorKind,
) -> Box<dyn std::error::Error + Send + Sync> {
    use dns_lookup::LookupErrorKind as Kind;
    match kind {
        Kind::Again | Kind::Memory | Kind::System => Box::new(LookupFailed(host)),
        _ => Box::new(Blocked(host)),
    }
}

/// Redirects followed per download: a store's signed link or a CDN's is one or two.
const MAX_REDIRECTS: usize = 5;

/// A redirect that is not followed, and why (the detail a job's error shows).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct RedirectRefused(String);

/// Where a download may go, for the first URL and every redirect alike.
#[derive(Debug, Clone)]
struct Reach {
    allow_private: bool,
    /// The ports downloads may use; `None`: any.
    ports: Option<Vec<u16>>,
}

impl Reach {
    /// `Err` with the reason when `url` (`whose`: `templateUrl`, or `the redirect`) may not be
    /// asked. A host name is checked as it is resolved (`GuardedResolver`), here only an
    /// address written in the URL.
    fn check(&self, url: &Url, whose: &str) -> Result<(), String> {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!("{whose} must be http or https"));
        }
        // A service that is not a web server is not asked, even on a public host (the port
        // is the URL's own: saying so tells the client nothing of the network).
        if let (Some(ports), Some(port)) = (&self.ports, url.port_or_known_default())
            && !ports.contains(&port)
        {
            let allowed: Vec<String> = ports.iter().map(u16::to_string).collect();
            return Err(format!(
                "{whose}'s port {port} is not one templates are downloaded from ({})",
                allowed.join(", ")
            ));
        }
        let literal = match url.host() {
            Some(Host::Ipv4(ip)) => Some(IpAddr::V4(ip)),
            Some(Host::Ipv6(ip)) => Some(IpAddr::V6(ip)),
            _ => None,
        };
        if literal.is_some_and(|ip| !self.allow_private && !is_public(ip)) {
            return Err(unreachable(whose));
        }
        Ok(())
    }

    /// Whether a redirect from the chain `previous` (the first URL first) to `next` is
    /// followed: as a first URL would be asked, not from `https` to `http`, and within
    /// `MAX_REDIRECTS`.
    fn hop(&self, previous: &[Url], next: &Url) -> Result<(), String> {
        if previous.len() > MAX_REDIRECTS {
            return Err(redirected(&format!("more than {MAX_REDIRECTS} redirects")));
        }
        if previous.last().is_some_and(|u| u.scheme() == "https") && next.scheme() == "http" {
            return Err(redirected("from https to http, which is not followed"));
        }
        self.check(next, "the redirect")
            .map_err(|why| redirected(&why))
    }

    /// The client's redirect policy (`hop`).
    fn redirects(self) -> reqwest::redirect::Policy {
        reqwest::redirect::Policy::custom(move |attempt| {
            match self.hop(attempt.previous(), attempt.url()) {
                Ok(()) => attempt.follow(),
                Err(why) => attempt.error(RedirectRefused(why)),
            }
        })
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Fetcher {
    client: reqwest::Client,
    reach: Reach,
    max_bytes: u64,
}

impl Fetcher {
    pub(crate) fn new(
        allow_private: bool,
        ports: Option<Vec<u16>>,
        timeout: Duration,
        max_bytes: u64,
    ) -> Self {
        Self::resolving_with(
            Arc::new(GuardedResolver { allow_private }),
            Reach {
                allow_private,
                ports,
            },
            timeout,
            max_bytes,
        )
    }

    /// As `new`, with host names resolved by `resolver` (a test's, standing for the web).
    fn resolving_with(
        resolver: Arc<impl Resolve + 'static>,
        reach: Reach,
        timeout: Duration,
        max_bytes: u64,
    ) -> Self {
        let client = reqwest::Client::builder()
            .no_proxy()
            // A signed link's query is its secret: the next host is not told it.
            .referer(false)
            .redirect(reach.clone().redirects())
            .connect_timeout(Duration::from_secs(5).min(timeout))
            .timeout(timeout)
            .dns_resolver(resolver)
            .user_agent("provisioner-worker")
            .build()
            .expect("the HTTP client configuration is static");
        Self {
            client,
            reach,
            max_bytes,
        }
    }

    pub(crate) async fn get(&self, raw: &str) -> Result<Bytes, FetchError> {
        let url = Url::parse(raw)
            .map_err(|e| FetchError::Permanent(format!("templateUrl is not a URL: {e}")))?;
        self.reach
            .check(&url, "templateUrl")
            .map_err(FetchError::Permanent)?;
        let response = self
            .client
            .get(url.clone())
            .send()
            .await
            .map_err(|e| classify(e, &url))?;
        let status = response.status();
        if status.is_redirection() {
            // A redirect without a `Location`, or a `300` or `304`: nothing to follow.
            return Err(FetchError::Permanent(format!(
                "the template server answered {status}: neither a template nor a redirect \
                 (301, 302, 303, 307 or 308 with a Location) to one"
            )));
        }
        if status.is_server_error() {
            return Err(FetchError::Transient(format!(
                "the template server answered {status}"
            )));
        }
        if !status.is_success() {
            return Err(FetchError::Permanent(format!(
                "the template server answered {status}"
            )));
        }
        let too_large = || {
            FetchError::Permanent(format!(
                "the template is larger than {} bytes",
                self.max_bytes
            ))
        };
        // A type that cannot be an archive: its first bytes decide (a misconfigured server
        // may still send a ZIP as text), and the rest is not read unless they are a ZIP's.
        let mut suspect = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(not_an_archive);
        let not_a_zip = |kind: &str| {
            FetchError::Permanent(format!("the template server answered {kind}, not a ZIP"))
        };
        if response
            .content_length()
            .is_some_and(|n| n > self.max_bytes)
        {
            return Err(too_large());
        }
        let mut body = BytesMut::new();
        let mut stream = response.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| classify(e, &url))?;
            if (body.len() + chunk.len()) as u64 > self.max_bytes {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
            if body.len() >= ZIP_SIGNATURE_LEN
                && let Some(kind) = suspect.take()
                && !starts_as_zip(&body)
            {
                return Err(not_a_zip(&kind));
            }
        }
        if let Some(kind) = suspect {
            return Err(not_a_zip(&kind));
        }
        Ok(body.freeze())
    }
}

const ZIP_SIGNATURE_LEN: usize = 4;

/// Do `bytes` begin as a ZIP does: a local file header, or the end record of an empty archive?
fn starts_as_zip(bytes: &[u8]) -> bool {
    bytes.starts_with(b"PK\x03\x04") || bytes.starts_with(b"PK\x05\x06")
}

/// The media type of a `Content-Type` that cannot be a ZIP (text, such as an error or sign-in
/// page served with `200`; JSON or XML; images, sound, video, fonts), so that nothing of it is
/// downloaded past its first bytes, unless they are a ZIP's. Any other (`application/zip`,
/// `application/octet-stream`, a store's own name for bytes) may be, and the archive's reading
/// decides. Shown only when it is a short token pair: the text comes from the template server.
fn not_an_archive(content_type: &str) -> Option<String> {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    let (top, sub) = essence.split_once('/')?;
    let refused = matches!(top, "text" | "image" | "audio" | "video" | "font")
        || matches!(sub, "json" | "xml" | "html")
        || sub.ends_with("+json")
        || sub.ends_with("+xml");
    if !refused {
        return None;
    }
    let shown = essence.len() <= 64
        && essence
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/.+-_".contains(&b));
    Some(if shown {
        essence
    } else {
        "a media type that is not an archive".to_owned()
    })
}

/// Why a download of `asked` failed, as the job's error says it.
fn classify(e: reqwest::Error, asked: &Url) -> FetchError {
    let mut source: Option<&dyn std::error::Error> = Some(&e);
    // Another host than the one asked is a redirect's.
    let redirects_host = |host: &str| asked.host_str() != Some(host);
    while let Some(s) = source {
        if let Some(Blocked(host)) = s.downcast_ref::<Blocked>() {
            let detail = if redirects_host(host) {
                redirected(&unreachable("the redirect"))
            } else {
                unreachable("templateUrl")
            };
            return FetchError::Permanent(detail);
        }
        if let Some(LookupFailed(host)) = s.downcast_ref::<LookupFailed>() {
            let whose = if redirects_host(host) {
                "the redirect"
            } else {
                "templateUrl"
            };
            return FetchError::Transient(format!(
                "{whose}'s host name could not be looked up for now"
            ));
        }
        if let Some(refused) = s.downcast_ref::<RedirectRefused>() {
            return FetchError::Permanent(refused.0.clone());
        }
        // An answer the client cannot parse is the same answer when asked again.
        if let Some(http) = s.downcast_ref::<hyper::Error>() {
            if http.is_parse_too_large() {
                return FetchError::Permanent(
                    "the template server's answer is not HTTP this service reads: its head is too large or has too many headers"
                        .to_owned(),
                );
            }
            if http.is_parse() {
                return FetchError::Permanent(
                    "the template server's answer is not HTTP this service reads".to_owned(),
                );
            }
        }
        source = s.source();
    }
    if e.is_timeout() {
        FetchError::Transient("the template download timed out".to_owned())
    } else if e.is_connect() {
        // Refused and unreachable alike: the detail does not tell ports apart.
        FetchError::Transient("the template server could not be reached".to_owned())
    } else {
        tracing::warn!(error = %e, "template download failed");
        FetchError::Transient("the template download failed".to_owned())
    }
}

/// Resolves with the system resolver and refuses names with any non-public address, so a
/// name cannot smuggle a connection to an internal host (DNS rebinding included: the checked
/// addresses are the ones connected to).
struct GuardedResolver {
    allow_private: bool,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let allow_private = self.allow_private;
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let blocked =
                |host| Box::new(Blocked(host)) as Box<dyn std::error::Error + Send + Sync>;
            // getaddrinfo, as the standard library's lookup, but with its error's kind.
            let name = host.clone();
            let looked = tokio::task::spawn_blocking(move || {
                dns_lookup::lookup_host(&name).map(|ips| ips.collect::<Vec<IpAddr>>())
            })
            .await;
            let ips = match looked {
                Ok(Ok(ips)) => ips,
                Ok(Err(e)) => return Err(lookup_failure(host, e.kind())),
                Err(_) => return Err(lookup_failure(host, dns_lookup::LookupErrorKind::System)),
            };
            let addrs: Vec<SocketAddr> = ips.into_iter().map(|ip| SocketAddr::new(ip, 0)).collect();
            if !allow_private && addrs.iter().any(|a| !is_public(a.ip())) {
                return Err(blocked(host));
            }
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

/// Is `ip` a globally routable unicast address?
fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => is_public_v4(v4),
            None => is_public_v6(v6),
        },
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_private()
        || ip.is_loopback()
        || ip.is_link_local()
        || ip.is_broadcast()
        || ip.is_documentation()
        || ip.is_unspecified()
        || ip.is_multicast()
        || a == 0
        || (a == 100 && (64..128).contains(&b)) // shared address space
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 198 && (18..20).contains(&b)) // benchmarking
        || a >= 240)
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let s = ip.segments();
    !(ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        || (s[0] & 0xfe00) == 0xfc00 // unique local
        || (s[0] & 0xffc0) == 0xfe80 // link local
        || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
        || (s[0] == 0x64 && s[1] == 0xff9b) // NAT64 (may reach IPv4 private space)
        || (s[..4] == [0, 0, 0, 0] && s[4] == 0xffff && s[5] == 0) // SIIT: ::ffff:0:a.b.c.d
        || s[0] == 0x2002 // 6to4: tunnels to an embedded IPv4 address
        || (s[0] == 0x2001 && s[1] == 0) // Teredo: tunnels to an embedded IPv4 address
        || (s[0] & 0xffc0) == 0xfec0 // site local (deprecated, still routed inside sites)
        || (s[0] == 0x100 && s[1..4] == [0, 0, 0]) // discard only
        || ip.to_ipv4().is_some_and(|v4| !is_public_v4(v4)))
}

#[cfg(test)]
mod tests {
    #[test]
    fn text_json_and_media_types_are_no_archive_and_bytes_may_be() {
        for (content_type, refused) in [
            ("text/html; charset=utf-8", Some("text/html")),
            ("TEXT/PLAIN", Some("text/plain")),
            ("application/json", Some("application/json")),
            ("application/problem+json", Some("application/problem+json")),
            ("application/xml", Some("application/xml")),
            ("image/png", Some("image/png")),
            ("application/zip", None),
            ("application/x-zip-compressed", None),
            ("application/octet-stream", None),
            ("binary/octet-stream", None),
            ("application/download", None),
            ("nonsense", None),
            ("", None),
        ] {
            assert_eq!(
                super::not_an_archive(content_type).as_deref(),
                refused,
                "{content_type}"
            );
        }
        let long = format!("text/{}", "x".repeat(100));
        assert_eq!(
            super::not_an_archive(&long).as_deref(),
            Some("a media type that is not an archive")
        );
    }

    use super::*;

    #[test]
    fn non_public_addresses_are_recognised() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "::1",
            "::ffff:127.0.0.1",
            "fe80::1",
            "fd00::1",
            "::",
            "2002:7f00:1::1",
            "2002:a00:1::",
            "2001:0:4136:e378:8000:63bf:3fff:fdd2",
            "fec0::1",
            "100::1",
            "::ffff:0:127.0.0.1",
            "::ffff:0:a00:1",
        ] {
            assert!(!is_public(ip.parse().unwrap()), "{ip} treated as public");
        }
        for ip in ["93.184.216.34", "8.8.8.8", "2606:4700::1111"] {
            assert!(is_public(ip.parse().unwrap()), "{ip} treated as private");
        }
    }

    /// The details of a refused host, as a job's error shows them.
    const UNREACHABLE_HOST: &str =
        "templateUrl's host does not resolve to a public address, so no template was fetched";
    const UNREACHABLE_REDIRECT: &str = "the template server redirected: the redirect's host does not resolve to a public address, so no template was fetched";

    #[tokio::test]
    async fn obfuscated_loopback_urls_are_refused_before_connecting() {
        let fetcher = Fetcher::new(false, Some(vec![80, 443]), Duration::from_secs(2), 1024);
        for url in [
            "http://127.0.0.1/t.zip",
            "http://2130706433/t.zip",
            "http://0x7f.1/t.zip",
            "http://[::ffff:127.0.0.1]/t.zip",
            "http://169.254.169.254/latest/meta-data",
            "http://localhost/t.zip",
        ] {
            match fetcher.get(url).await {
                Err(FetchError::Permanent(msg)) => assert_eq!(msg, UNREACHABLE_HOST, "{url}"),
                other => panic!("{url} was not refused: {other:?}"),
            }
        }
        assert!(matches!(
            fetcher.get("ftp://example.com/t.zip").await,
            Err(FetchError::Permanent(_))
        ));
        // A name that does not resolve reads exactly like an internal one.
        assert_eq!(
            fetcher.get("http://no-such-host.invalid/t.zip").await,
            Err(FetchError::Permanent(UNREACHABLE_HOST.to_owned()))
        );
    }

    #[test]
    fn a_redirect_is_followed_only_where_a_first_url_could_go() {
        let url = |s: &str| Url::parse(s).unwrap();
        let reach = Reach {
            allow_private: false,
            ports: Some(vec![80, 443]),
        };
        let from = |s: &str| vec![url(s)];
        let refused = |why: &str| Err(format!("the template server redirected: {why}"));
        let https = from("https://store.example/t.zip");
        assert_eq!(
            reach.hop(&https, &url("https://cdn.example/a/t.zip")),
            Ok(())
        );
        assert_eq!(
            reach.hop(
                &from("http://store.example/t.zip"),
                &url("https://cdn.example/t.zip")
            ),
            Ok(())
        );
        assert_eq!(
            reach.hop(&https, &url("http://cdn.example/t.zip")),
            refused("from https to http, which is not followed")
        );
        for inside in [
            "https://127.0.0.1/t.zip",
            "https://[::1]/t.zip",
            "https://169.254.169.254/",
        ] {
            assert_eq!(
                reach.hop(&https, &url(inside)),
                Err(UNREACHABLE_REDIRECT.to_owned()),
                "{inside}"
            );
        }
        assert_eq!(
            reach.hop(&https, &url("https://cdn.example:8443/t.zip")),
            refused("the redirect's port 8443 is not one templates are downloaded from (80, 443)")
        );
        assert_eq!(
            reach.hop(&https, &url("ftp://cdn.example/t.zip")),
            refused("the redirect must be http or https")
        );
        // The first URL and five redirects behind: the sixth is not followed.
        let six: Vec<Url> = (0..=MAX_REDIRECTS)
            .map(|i| url(&format!("https://cdn{i}.example/t.zip")))
            .collect();
        assert_eq!(
            reach.hop(&six[..MAX_REDIRECTS], &url("https://next.example/")),
            Ok(())
        );
        assert_eq!(
            reach.hop(&six, &url("https://next.example/")),
            refused("more than 5 redirects")
        );
        // Private addresses allowed (development): the address no longer stops a redirect.
        let open = Reach {
            allow_private: true,
            ports: None,
        };
        assert_eq!(
            open.hop(&https, &url("https://127.0.0.1:8443/t.zip")),
            Ok(())
        );
    }

    /// Resolves `public.test` to a listener on this machine, as if it were a public host, and
    /// every other name as the worker does.
    struct PublicTest(SocketAddr);

    impl Resolve for PublicTest {
        fn resolve(&self, name: Name) -> Resolving {
            if name.as_str() == "public.test" {
                let addr = self.0;
                return Box::pin(async move { Ok(Box::new(std::iter::once(addr)) as Addrs) });
            }
            GuardedResolver {
                allow_private: false,
            }
            .resolve(name)
        }
    }

    /// A listener on 127.0.0.1 that answers every request with `reply`; the heads of the
    /// requests it was sent, one per connection.
    async fn answering(reply: String) -> (SocketAddr, Arc<std::sync::Mutex<Vec<String>>>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let heads = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = heads.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                // The request's head first: an answer sent before it is not one to it.
                let mut head = Vec::new();
                let mut buf = [0; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                seen.lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&head).into_owned());
                let _ = stream.write_all(reply.as_bytes()).await;
                let _ = stream.shutdown().await;
            }
        });
        (addr, heads)
    }

    /// A fetcher that refuses private addresses and takes `public.test` for a public host
    /// whose address is `public`.
    fn public_test_fetcher(public: SocketAddr) -> Fetcher {
        fetcher_resolving_with(PublicTest(public))
    }

    /// A fetcher that refuses private addresses, any port, with names resolved by `resolver`.
    fn fetcher_resolving_with(resolver: impl Resolve + 'static) -> Fetcher {
        let reach = Reach {
            allow_private: false,
            ports: None,
        };
        Fetcher::resolving_with(Arc::new(resolver), reach, Duration::from_secs(5), 1024)
    }

    /// A signed link's query does not go to the host it redirects to (no `Referer`).
    #[tokio::test]
    async fn a_redirect_does_not_tell_the_next_host_where_it_came_from() {
        let (cdn, seen) = answering("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n".into()).await;
        let (store, _) = answering(format!(
            "HTTP/1.1 302 Found\r\nLocation: http://public.test:{}/t.zip\r\nContent-Length: 0\r\n\r\n",
            cdn.port()
        ))
        .await;
        let url = format!("http://public.test:{}/t.zip?sig=SECRET", store.port());
        assert_eq!(public_test_fetcher(store).get(&url).await, Ok(Bytes::new()));
        let heads = seen.lock().unwrap().clone();
        assert_eq!(heads.len(), 1, "the redirect was followed");
        assert!(
            !heads[0].to_ascii_lowercase().contains("referer") && !heads[0].contains("SECRET"),
            "{}",
            heads[0]
        );
    }

    /// With private addresses refused, a public host's redirect to an internal address (written
    /// as one, or a name that resolves to one) is refused before anything connects to it.
    #[tokio::test]
    async fn a_public_hosts_redirect_inside_is_refused_before_connecting() {
        let (inside, reached) =
            answering("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n".into()).await;
        let port = inside.port();
        for location in [
            format!("http://127.0.0.1:{port}/t.zip"),
            format!("http://[::ffff:7f00:1]:{port}/t.zip"),
            format!("http://[::ffff:0:127.0.0.1]:{port}/t.zip"),
            format!("http://localhost:{port}/t.zip"),
        ] {
            let (public, asked) = answering(format!(
                "HTTP/1.1 302 Found\r\nLocation: {location}\r\nContent-Length: 0\r\n\r\n"
            ))
            .await;
            let url = format!("http://public.test:{}/t.zip", public.port());
            assert_eq!(
                public_test_fetcher(public).get(&url).await,
                Err(FetchError::Permanent(UNREACHABLE_REDIRECT.to_owned())),
                "{location}"
            );
            assert_eq!(asked.lock().unwrap().len(), 1, "the public host was asked");
        }
        assert!(
            reached.lock().unwrap().is_empty(),
            "a redirect reached inside"
        );
    }

    /// Fails every lookup as getaddrinfo would with `kind`.
    struct FailingLookup(dns_lookup::LookupErrorKind);

    impl Resolve for FailingLookup {
        fn resolve(&self, name: Name) -> Resolving {
            let failure = lookup_failure(name.as_str().to_owned(), self.0);
            Box::pin(async move { Err(failure) })
        }
    }

    /// A lookup that fails for the moment (a DNS server slow or failing: `EAI_AGAIN`) is a
    /// transient fault, retried; a name that does not exist is final, as before.
    #[tokio::test]
    async fn a_lookup_that_fails_for_now_is_retried_and_a_name_that_does_not_exist_is_not() {
        use dns_lookup::LookupErrorKind as Kind;
        let get = |kind| async move {
            fetcher_resolving_with(FailingLookup(kind))
                .get("http://templates.example/t.zip")
                .await
        };
        for kind in [Kind::Again, Kind::Memory, Kind::System] {
            assert_eq!(
                get(kind).await,
                Err(FetchError::Transient(
                    "templateUrl's host name could not be looked up for now".to_owned()
                )),
                "{kind:?}"
            );
        }
        for kind in [Kind::NoName, Kind::NoData, Kind::Fail] {
            assert_eq!(
                get(kind).await,
                Err(FetchError::Permanent(unreachable("templateUrl"))),
                "{kind:?}"
            );
        }
    }

    #[tokio::test]
    async fn a_port_not_listed_is_refused_before_connecting() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        // A listener that counts connections and closes each at once.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counted = accepted.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                drop(stream);
            }
        });
        let url = format!("http://127.0.0.1:{port}/t.zip");
        let only_web = Fetcher::new(true, Some(vec![80, 443]), Duration::from_secs(2), 1024);
        assert_eq!(
            only_web.get(&url).await,
            Err(FetchError::Permanent(format!(
                "templateUrl's port {port} is not one templates are downloaded from (80, 443)"
            )))
        );
        assert_eq!(accepted.load(Ordering::SeqCst), 0, "nothing connected");
        // Listed, or any port: the download is tried (and fails: the listener says nothing).
        for (ports, tries) in [(Some(vec![443, port]), 1), (None, 2)] {
            let fetcher = Fetcher::new(true, ports, Duration::from_secs(2), 1024);
            assert!(matches!(
                fetcher.get(&url).await,
                Err(FetchError::Transient(_))
            ));
            assert_eq!(accepted.load(Ordering::SeqCst), tries);
        }
    }
}
