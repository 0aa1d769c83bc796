//! From a proxied HTTP request to the context and subject authgate judges:
//! the first configured route that matches its host, path and method, then
//! the client's address, user header and session cookie.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use crate::config::{CaptchaAnswer, ConfigError, GatewayConfig, GatewayRouteConfig};
use crate::domain::{FieldError, Policy, Subject};

/// The per-route keys of Envoy's `context_extensions` that override the
/// route table for one request.
pub const CONTEXT_EXTENSION: &str = "authgate.context";
pub const ACTIVITY_EXTENSION: &str = "authgate.activity";
pub const CAPTCHA_EXTENSION: &str = "authgate.captcha";

#[derive(Debug, Clone, PartialEq)]
enum HostMatch {
    Exact(String),
    /// `*.example.com`, held as `.example.com`.
    Suffix(String),
}

impl HostMatch {
    fn matches(&self, host: &str) -> bool {
        match self {
            HostMatch::Exact(h) => host == h,
            HostMatch::Suffix(s) => host.len() > s.len() && host.ends_with(s.as_str()),
        }
    }
}

/// One validated route: what it matches and how requests on it are judged.
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    host: Option<HostMatch>,
    path_prefix: String,
    methods: Vec<String>,
    pub context: String,
    pub activity: String,
    pub captcha: CaptchaAnswer,
    pub failure_statuses: Vec<u16>,
    pub success_statuses: Vec<u16>,
}

impl Route {
    fn matches(&self, req: &Request<'_>) -> bool {
        self.host.as_ref().is_none_or(|h| h.matches(&req.host()))
            && req.path().starts_with(&self.path_prefix)
            && (self.methods.is_empty() || self.methods.iter().any(|m| m == req.method))
    }

    /// The route a request matching none is judged by.
    fn fallback(context: &str) -> Route {
        Route {
            host: None,
            path_prefix: "/".into(),
            methods: Vec::new(),
            context: context.to_owned(),
            activity: String::new(),
            captcha: CaptchaAnswer::Deny,
            failure_statuses: vec![401],
            success_statuses: Vec::new(),
        }
    }
}

/// A request as a proxy describes it. Header names are compared in lower
/// case, as HTTP/2 (and so Envoy) writes them.
pub struct Request<'a> {
    pub method: &'a str,
    /// The Host (`:authority`), possibly with a port.
    pub host: &'a str,
    /// The path as the proxy routes it (`path::normalized`), possibly
    /// with a query string.
    pub path: &'a str,
    /// The address of the proxy's downstream peer, when known.
    pub source: Option<IpAddr>,
    pub header: &'a (dyn Fn(&str) -> Option<&'a str> + Sync),
    /// Envoy's per-route `context_extensions`.
    pub extension: &'a (dyn Fn(&str) -> Option<&'a str> + Sync),
}

impl Request<'_> {
    fn host(&self) -> String {
        let host = self.host.trim_end_matches('.');
        // An IPv6 literal keeps its brackets; only a trailing port goes.
        let bare = match host.rsplit_once(':') {
            Some((h, port)) if !h.ends_with(':') && port.bytes().all(|b| b.is_ascii_digit()) => h,
            _ => host,
        };
        bare.to_ascii_lowercase()
    }

    fn path(&self) -> &str {
        self.path.split(['?', '#']).next().unwrap_or("")
    }
}

/// Why a request could not be mapped.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MapError {
    /// No route matched and no default context is configured.
    #[error("no route matches the request and no gateway.default_context is configured")]
    NoRoute,
    /// Something the proxy sent is missing or malformed.
    #[error(transparent)]
    Invalid(#[from] FieldError),
}

/// A request mapped: the route it is judged by (its context possibly
/// overridden per request) and who made it.
#[derive(Debug, Clone)]
pub struct Mapped {
    /// Shared with the mapping unless the request overrides a setting.
    pub route: Arc<Route>,
    pub subject: Subject,
}

/// The validated `[gateway]` section.
#[derive(Debug, Clone)]
pub struct Mapping {
    routes: Vec<Arc<Route>>,
    default: Option<Arc<Route>>,
    /// The route of a request whose context Envoy names and no route
    /// matches, ready for every configured context.
    fallbacks: BTreeMap<String, Arc<Route>>,
    trusted_hops: usize,
    user_header: Option<String>,
    session_cookie: Option<String>,
}

fn invalid(key: impl Into<String>, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        problem: problem.into(),
    }
}

fn known_context(policy: &Policy, key: &str, name: &str) -> Result<(), ConfigError> {
    policy
        .context(key, name)
        .map(|_| ())
        .map_err(|e| invalid(e.field, e.problem))
}

fn header_name(key: &str, raw: &str) -> Result<String, ConfigError> {
    http::HeaderName::from_bytes(raw.as_bytes())
        .map(|h| h.as_str().to_owned())
        .map_err(|_| invalid(key, format!("{raw:?} is not an HTTP header name")))
}

/// An activity as RecordFailure takes it: at most 64 bytes, no control
/// characters.
fn activity(field: &str, raw: &str) -> Result<(), FieldError> {
    if raw.len() > 64 || raw.chars().any(char::is_control) {
        return Err(FieldError::new(
            field,
            "must be at most 64 bytes without control characters",
        ));
    }
    Ok(())
}

fn route(policy: &Policy, key: &str, rc: &GatewayRouteConfig) -> Result<Route, ConfigError> {
    known_context(policy, &format!("{key}.context"), &rc.context)?;
    activity(&format!("{key}.activity"), &rc.activity).map_err(|e| invalid(e.field, e.problem))?;
    if !rc.path_prefix.starts_with('/') {
        return Err(invalid(format!("{key}.path_prefix"), "must start with /"));
    }
    let host = rc
        .host
        .as_deref()
        .map(|h| {
            let h = h.to_ascii_lowercase();
            match h.strip_prefix("*.") {
                Some(rest) if !rest.is_empty() && !rest.contains('*') => {
                    Ok(HostMatch::Suffix(format!(".{rest}")))
                }
                _ if h.is_empty() || h.contains('*') => Err(invalid(
                    format!("{key}.host"),
                    "must be a host name or *.suffix",
                )),
                _ => Ok(HostMatch::Exact(h)),
            }
        })
        .transpose()?;
    for (i, m) in rc.methods.iter().enumerate() {
        if m.is_empty() || !m.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(invalid(
                format!("{key}.methods[{i}]"),
                format!("{m:?} must be an upper-case HTTP method"),
            ));
        }
    }
    for (name, statuses) in [
        ("failure_statuses", &rc.failure_statuses),
        ("success_statuses", &rc.success_statuses),
    ] {
        if let Some(s) = statuses.iter().find(|s| !(100..600).contains(*s)) {
            return Err(invalid(
                format!("{key}.{name}"),
                format!("{s} is not an HTTP status"),
            ));
        }
    }
    if let Some(s) = rc
        .failure_statuses
        .iter()
        .find(|s| rc.success_statuses.contains(s))
    {
        return Err(invalid(
            format!("{key}.success_statuses"),
            format!("{s} is also a failure status"),
        ));
    }
    Ok(Route {
        host,
        path_prefix: rc.path_prefix.clone(),
        methods: rc.methods.clone(),
        context: rc.context.clone(),
        activity: rc.activity.clone(),
        captcha: rc.captcha,
        failure_statuses: rc.failure_statuses.clone(),
        success_statuses: rc.success_statuses.clone(),
    })
}

impl Mapping {
    /// Validates the section against the policy's contexts.
    pub fn new(config: &GatewayConfig, policy: &Policy) -> Result<Mapping, ConfigError> {
        let routes = config
            .routes
            .iter()
            .enumerate()
            .map(|(i, rc)| route(policy, &format!("gateway.routes[{i}]"), rc).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()?;
        let default = config
            .default_context
            .as_deref()
            .map(|c| {
                known_context(policy, "gateway.default_context", c)
                    .map(|()| Arc::new(Route::fallback(c)))
            })
            .transpose()?;
        Ok(Mapping {
            routes,
            default,
            fallbacks: policy
                .context_names()
                .map(|c| (c.to_owned(), Arc::new(Route::fallback(c))))
                .collect(),
            trusted_hops: config.trusted_hops as usize,
            user_header: config
                .user_header
                .as_deref()
                .map(|h| header_name("gateway.user_header", h))
                .transpose()?,
            session_cookie: config.session_cookie.clone(),
        })
    }

    /// Whether the client's address may come from `x-forwarded-for`, so a
    /// request whose proxy did not say who its peer was can still be
    /// told apart.
    pub fn trusts_forwarded_for(&self) -> bool {
        self.trusted_hops > 0
    }

    /// The route and subject of `req`.
    pub fn map(&self, req: &Request<'_>) -> Result<Mapped, MapError> {
        if !req.path.starts_with('/') {
            return Err(FieldError::new("request.path", "must be an absolute path").into());
        }
        let matched = self
            .routes
            .iter()
            .find(|r| r.matches(req))
            .or(self.default.as_ref());
        // Envoy's per-route configuration names the context outright, so it
        // needs no route of authgate's own.
        let mut route = match ((req.extension)(CONTEXT_EXTENSION), matched) {
            (Some(context), Some(r)) if r.context == context => r.clone(),
            (Some(context), Some(r)) => Arc::new(Route {
                context: context.to_owned(),
                ..Route::clone(r)
            }),
            (Some(context), None) => self
                .fallbacks
                .get(context)
                .cloned()
                .unwrap_or_else(|| Arc::new(Route::fallback(context))),
            (None, Some(r)) => r.clone(),
            (None, None) => return Err(MapError::NoRoute),
        };
        if let Some(a) = (req.extension)(ACTIVITY_EXTENSION) {
            activity(&format!("context_extensions[{ACTIVITY_EXTENSION}]"), a)?;
            Arc::make_mut(&mut route).activity = a.to_owned();
        }
        match (req.extension)(CAPTCHA_EXTENSION) {
            Some("pass") => Arc::make_mut(&mut route).captcha = CaptchaAnswer::Pass,
            Some("deny") => Arc::make_mut(&mut route).captcha = CaptchaAnswer::Deny,
            Some(other) => {
                return Err(FieldError::new(
                    format!("context_extensions[{CAPTCHA_EXTENSION}]"),
                    format!("{other:?} must be deny or pass"),
                )
                .into());
            }
            None => {}
        }
        let ip = self.client(req)?;
        let user = self
            .user_header
            .as_deref()
            .and_then(|h| (req.header)(h))
            .unwrap_or("");
        let session = self
            .session_cookie
            .as_deref()
            .and_then(|name| cookie((req.header)("cookie")?, name))
            .unwrap_or("");
        let ip = ip.map(|a| a.to_string()).unwrap_or_default();
        let subject = Subject::parse("request", user, &ip, session)?;
        Ok(Mapped { route, subject })
    }

    /// The client's address: the proxy's peer, or with trusted hops the
    /// `x-forwarded-for` entry the nearest untrusted hop is known by.
    fn client(&self, req: &Request<'_>) -> Result<Option<IpAddr>, FieldError> {
        if self.trusted_hops == 0 {
            return Ok(req.source);
        }
        let entries: Vec<&str> = (req.header)("x-forwarded-for")
            .unwrap_or("")
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .collect();
        // Fewer entries than trusted hops: the request did not come through
        // them all, so its peer is the only address known to be real.
        let Some(entry) = entries
            .len()
            .checked_sub(self.trusted_hops)
            .map(|i| entries[i])
        else {
            return Ok(req.source);
        };
        forwarded_address(entry).map(Some).ok_or_else(|| {
            FieldError::new("x-forwarded-for", "the trusted entry is not an IP address")
        })
    }
}

/// An `x-forwarded-for` entry: an address, possibly with a port
/// (`192.0.2.1:4711`, `[2001:db8::1]:4711`).
pub fn forwarded_address(entry: &str) -> Option<IpAddr> {
    if let Ok(ip) = entry.parse() {
        return Some(ip);
    }
    if let Ok(sock) = entry.parse::<std::net::SocketAddr>() {
        return Some(sock.ip());
    }
    entry
        .strip_prefix('[')
        .and_then(|e| e.strip_suffix(']'))
        .and_then(|e| e.parse().ok())
}

/// The value of cookie `name` in a `Cookie` header.
fn cookie<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header
        .split(';')
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim_matches('"'))
        .filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use figment::providers::Format;

    fn mapping(toml: &str) -> Mapping {
        let config: Config =
            figment::Figment::from(figment::providers::Serialized::defaults(Config::default()))
                .merge(figment::providers::Toml::string(toml))
                .extract()
                .unwrap();
        Mapping::new(&config.gateway, &config.policy().unwrap()).unwrap()
    }

    struct Req {
        method: &'static str,
        host: &'static str,
        path: &'static str,
        source: Option<IpAddr>,
        headers: Vec<(&'static str, &'static str)>,
        extensions: Vec<(&'static str, &'static str)>,
    }

    fn req(method: &'static str, host: &'static str, path: &'static str) -> Req {
        Req {
            method,
            host,
            path,
            source: Some("203.0.113.9".parse().unwrap()),
            headers: Vec::new(),
            extensions: Vec::new(),
        }
    }

    fn map(m: &Mapping, r: &Req) -> Result<Mapped, MapError> {
        let header = |name: &str| r.headers.iter().find(|(k, _)| *k == name).map(|(_, v)| *v);
        let extension = |name: &str| {
            r.extensions
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| *v)
        };
        m.map(&Request {
            method: r.method,
            host: r.host,
            path: r.path,
            source: r.source,
            header: &header,
            extension: &extension,
        })
    }

    const ROUTES: &str = r#"
        [gateway]
        default_context = "bot"
        [[gateway.routes]]
        host = "login.example.com"
        path_prefix = "/login"
        methods = ["POST"]
        context = "login"
        activity = "password"
        [[gateway.routes]]
        host = "*.example.com"
        path_prefix = "/admin"
        context = "admin"
    "#;

    #[test]
    fn the_first_matching_route_wins_and_the_default_takes_the_rest() {
        let m = mapping(ROUTES);
        let ctx = |r: &Req| map(&m, r).unwrap().route.context.clone();
        assert_eq!(
            ctx(&req("POST", "Login.Example.com:8443", "/login?next=/")),
            "login"
        );
        assert_eq!(ctx(&req("GET", "login.example.com", "/login")), "bot");
        assert_eq!(ctx(&req("GET", "a.example.com", "/admin/users")), "admin");
        // A suffix wildcard needs a label before the suffix.
        assert_eq!(ctx(&req("GET", "example.com", "/admin")), "bot");
        assert_eq!(ctx(&req("GET", "evil-example.com", "/admin")), "bot");
        assert_eq!(
            map(&m, &req("POST", "x", "/login")).unwrap().route.activity,
            ""
        );
    }

    #[test]
    fn without_a_default_an_unrouted_request_is_refused() {
        let m = mapping(
            r#"[[gateway.routes]]
            path_prefix = "/login"
            context = "login""#,
        );
        assert_eq!(
            map(&m, &req("GET", "h", "/other")).unwrap_err(),
            MapError::NoRoute
        );
    }

    #[test]
    fn context_extensions_take_precedence() {
        let m = mapping(ROUTES);
        let mut r = req("GET", "h", "/x");
        r.extensions = vec![(CONTEXT_EXTENSION, "login"), (ACTIVITY_EXTENSION, "otp")];
        let mapped = map(&m, &r).unwrap();
        assert_eq!(
            (
                mapped.route.context.as_str(),
                mapped.route.activity.as_str()
            ),
            ("login", "otp")
        );
        r.extensions = vec![(CAPTCHA_EXTENSION, "maybe")];
        assert!(matches!(map(&m, &r), Err(MapError::Invalid(_))));
        r.extensions = vec![(ACTIVITY_EXTENSION, "a\u{7}")];
        assert!(matches!(map(&m, &r), Err(MapError::Invalid(_))));
    }

    #[test]
    fn forwarded_for_is_trusted_only_as_far_as_configured() {
        let mut r = req("GET", "h", "/");
        r.headers = vec![("x-forwarded-for", "198.51.100.7, 192.0.2.10:4711, 10.0.0.2")];
        let ip = |m: &Mapping, r: &Req| map(m, r).unwrap().subject.ip.unwrap().to_string();
        // By default the header is anyone's to write.
        assert_eq!(ip(&mapping(ROUTES), &r), "203.0.113.9");
        let hops = |n: u32| {
            mapping(&ROUTES.replacen("[gateway]", &format!("[gateway]\ntrusted_hops = {n}"), 1))
        };
        assert_eq!(ip(&hops(1), &r), "10.0.0.2");
        assert_eq!(ip(&hops(2), &r), "192.0.2.10");
        assert_eq!(ip(&hops(3), &r), "198.51.100.7");
        // More hops than entries: the peer.
        assert_eq!(ip(&hops(4), &r), "203.0.113.9");
        r.headers = vec![("x-forwarded-for", "not-an-ip")];
        assert!(matches!(map(&hops(1), &r), Err(MapError::Invalid(_))));
    }

    #[test]
    fn user_and_session_come_from_the_configured_header_and_cookie() {
        let m = mapping(&ROUTES.replacen(
            "[gateway]",
            "[gateway]\nuser_header = \"X-User\"\nsession_cookie = \"sid\"",
            1,
        ));
        let mut r = req("GET", "h", "/");
        r.headers = vec![("x-user", "alice"), ("cookie", "theme=dark; sid=s-123")];
        let s = map(&m, &r).unwrap().subject;
        assert_eq!(s.user.unwrap().as_str(), "alice");
        assert_eq!(s.session.unwrap().as_str(), "s-123");
    }

    #[test]
    fn a_request_with_nothing_to_count_is_invalid() {
        let m = mapping(ROUTES);
        let mut r = req("GET", "h", "/");
        r.source = None;
        assert!(matches!(map(&m, &r), Err(MapError::Invalid(_))));
    }

    #[test]
    fn routes_are_checked_against_the_contexts() {
        let config: Config =
            figment::Figment::from(figment::providers::Serialized::defaults(Config::default()))
                .merge(figment::providers::Toml::string(
                    "[[gateway.routes]]\ncontext = \"nope\"",
                ))
                .extract()
                .unwrap();
        let err = Mapping::new(&config.gateway, &config.policy().unwrap()).unwrap_err();
        assert!(
            err.to_string().contains("gateway.routes[0].context"),
            "{err}"
        );
    }
}
