//! The `[gateway]` section: how proxied requests map to contexts.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// How requests that proxies forward (Envoy's ext_authz and ext_proc, the
/// HTTP forward-auth endpoint) are mapped to a context and a subject.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewayConfig {
    /// Tried in order; the first that matches the request's host, path and
    /// method names its context.
    pub routes: Vec<GatewayRouteConfig>,
    /// The context of a request that matches no route. Absent: such a
    /// request is refused (403, reason `no_route`), so a path nobody wrote
    /// down is never let through unjudged.
    pub default_context: Option<String>,
    /// Proxies in front of Envoy whose `x-forwarded-for` entries are
    /// trusted, counted from the right (Envoy's `xff_num_trusted_hops`).
    /// 0: the client is Envoy's downstream peer (`source.address`) and the
    /// header, which any client can write, is ignored.
    pub trusted_hops: u32,
    /// The request header holding the user id, written by something the
    /// client cannot forge (Envoy's jwt_authn `claim_to_headers`, an
    /// authenticating proxy). Absent: requests carry no user id.
    pub user_header: Option<String>,
    /// The cookie holding the session id. Absent: requests carry none.
    pub session_cookie: Option<String>,
    /// Networks (CIDRs) of proxies admitted without an API key, to the
    /// gateway front doors only (Envoy's services on the gRPC port, the
    /// forward-auth endpoint), never to AccessService or AdminService:
    /// for proxies that cannot send one (Istio's and Envoy Gateway's
    /// ext_authz providers, Traefik). On HTTP their `Authorization` header
    /// is ignored, since it is their client's; on gRPC a key they do send
    /// decides. Empty: every caller presents a key of the `check` role.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// The HTTP forward-auth endpoint for nginx, Traefik and Caddy.
    pub http: ForwardAuthConfig,
    /// Envoy's rate-limit service (ShouldRateLimit).
    pub rate_limit: RateLimitConfig,
}

/// `[gateway.http]`: the listener nginx's `auth_request`, Traefik's
/// `ForwardAuth` and Caddy's `forward_auth` ask.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ForwardAuthConfig {
    /// Where to listen, plain HTTP/1.1. Absent: no listener, as nothing
    /// but a proxy should ask it. Keep it on loopback or a private network
    /// next to the proxy: answers tell who is locked out.
    pub listen: Option<SocketAddr>,
    /// Proxies whose `X-Forwarded-For` entries are trusted, counted from the
    /// right, the proxy that asks included: its right-most entry is the
    /// address it was connected from. 1 (the default) takes that entry, right
    /// for a proxy that clients reach directly; add one for each load
    /// balancer or CDN in front of it. The listener's own peer is the proxy,
    /// never the client, so it is never the subject.
    pub trusted_hops: u32,
}

impl Default for ForwardAuthConfig {
    fn default() -> Self {
        ForwardAuthConfig {
            listen: None,
            trusted_hops: 1,
        }
    }
}

/// How Envoy's rate-limit descriptors name authgate's keys. A request's
/// `domain` is the context; each descriptor's entries whose keys are listed
/// here make one key (an ip and a user entry: the user+ip key), judged by
/// that context's rate rules of its kind. Other entries are ignored.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitConfig {
    /// Descriptor entry keys and what their values are: `ip`, `user` or
    /// `session`. Replaces the defaults as a whole when given.
    pub entries: BTreeMap<String, EntryKind>,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig {
            // Envoy's remote_address action writes the client's address
            // under this key; `user` is what a request_headers action is
            // usually told to write the user id under.
            entries: [
                ("remote_address".to_owned(), EntryKind::Ip),
                ("user".to_owned(), EntryKind::User),
            ]
            .into_iter()
            .collect(),
        }
    }
}

/// What a descriptor entry's value identifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    Ip,
    User,
    Session,
}

/// One route of the gateway mapping.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayRouteConfig {
    /// Exact host (`login.example.com`) or a suffix wildcard
    /// (`*.example.com`), compared without case and port. Absent: any.
    #[serde(default)]
    pub host: Option<String>,
    /// The path must start with this.
    #[serde(default = "root_path")]
    pub path_prefix: String,
    /// Upper-case HTTP methods. Empty: any.
    #[serde(default)]
    pub methods: Vec<String>,
    pub context: String,
    /// The activity failures on this route are recorded as (ext_proc).
    #[serde(default)]
    pub activity: String,
    /// What a CHALLENGE_CAPTCHA verdict does here: `deny` answers 403
    /// naming the challenge; `pass` lets the request through with
    /// `x-authgate-challenge: captcha` for the upstream to render one.
    #[serde(default)]
    pub captcha: CaptchaAnswer,
    /// Upstream response statuses that are a failure of the request's
    /// subject (ext_proc records them).
    #[serde(default = "unauthorized")]
    pub failure_statuses: Vec<u16>,
    /// Upstream response statuses that are a success (ext_proc records
    /// them, clearing failure counts). Empty: none.
    #[serde(default)]
    pub success_statuses: Vec<u16>,
}

fn root_path() -> String {
    "/".into()
}

fn unauthorized() -> Vec<u16> {
    vec![401]
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CaptchaAnswer {
    #[default]
    Deny,
    Pass,
}
