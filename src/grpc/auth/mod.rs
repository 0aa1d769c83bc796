//! The credential check in front of every service but health: a layer that
//! parses the caller once, from the `authorization` header or the client
//! certificate of the connection, and leaves a typed `Caller` in the
//! request's extensions, which tonic hands to the handlers. It sits before
//! the limits, so a call without a valid credential is answered at once and
//! never holds a permit: an unauthenticated connection holds nothing.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use ipnet::IpNet;
use tonic::Status;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tower::{Layer, Service};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

mod keys;

pub use keys::{AuthError, Authenticator, Caller, Credential, KeyHash, Role, generate_key};

/// The callers' keys in force, swapped whole by a reload: a key removed
/// stops authenticating with the next call.
pub type Callers = crate::current::Current<Authenticator>;

use super::Refusal;
use super::limits::connection_of;
use super::route::Route;
use crate::telemetry::metrics;

#[derive(Clone)]
pub struct AuthenticateLayer {
    auth: Callers,
    trusted_proxies: Arc<[IpNet]>,
}

impl AuthenticateLayer {
    pub fn new(auth: Callers, trusted_proxies: Vec<IpNet>) -> Self {
        AuthenticateLayer {
            auth,
            trusted_proxies: trusted_proxies.into(),
        }
    }
}

impl<S> Layer<S> for AuthenticateLayer {
    type Service = Authenticate<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Authenticate {
            inner,
            auth: self.auth.clone(),
            trusted_proxies: self.trusted_proxies.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Authenticate<S> {
    inner: S,
    auth: Callers,
    trusted_proxies: Arc<[IpNet]>,
}

impl<S> Authenticate<S> {
    /// A gateway call without a key from a peer in `gateway.trusted_proxies`:
    /// Istio's and Envoy Gateway's ext_authz providers cannot send one.
    fn trusted_proxy<B>(&self, request: &Request<B>) -> Option<Caller> {
        if request.headers().contains_key("authorization") {
            return None;
        }
        let peer = connection_of(request)?.ip().to_canonical();
        self.trusted_proxies
            .iter()
            .any(|n| n.contains(&peer))
            .then(|| Caller::trusted_proxy(peer))
    }

    /// The caller of `request`, when it has `role`, the role of the service
    /// called (`None`: any authenticated caller may, as for reflection).
    fn caller<B>(&self, request: &Request<B>, role: Option<Role>) -> Result<Caller, Status> {
        let authorization = request.headers().get("authorization").map(|v| v.as_bytes());
        // A key, when sent, decides; the certificate is parsed only without
        // one.
        let names = match authorization {
            Some(_) => Vec::new(),
            None => request
                .extensions()
                .get::<TlsConnectInfo<TcpConnectInfo>>()
                .and_then(TlsConnectInfo::peer_certs)
                .and_then(|chain| chain.first().map(|leaf| names_of(leaf.as_ref())))
                .unwrap_or_default(),
        };
        let caller = self
            .auth
            .load()
            .authenticate(authorization, &names)
            .map_err(|e| {
                metrics::auth_rejected(e.label());
                Status::from(Refusal::Unauthenticated(e.to_string()))
            })?;
        if let Some(role) = role
            && !caller.has(role)
        {
            metrics::auth_rejected("role");
            return Err(Refusal::PermissionDenied(format!(
                "caller {:?} lacks the {role} role",
                caller.name
            ))
            .into());
        }
        Ok(caller)
    }
}

impl<S, B, RB> Service<Request<B>> for Authenticate<S>
where
    S: Service<Request<B>, Response = Response<RB>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    RB: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let route = Route::of(request.uri().path());
        let role = match route {
            // Kubernetes' probes carry no credentials.
            Route::Health => return Box::pin(self.inner.call(request)),
            Route::Access | Route::Gateway | Route::Processing => Some(Role::Check),
            Route::Admin => Some(Role::Admin),
            Route::Other => None,
        };
        let trusted = matches!(route, Route::Gateway | Route::Processing)
            .then(|| self.trusted_proxy(&request))
            .flatten();
        match trusted.map_or_else(|| self.caller(&request, role), Ok) {
            Ok(caller) => {
                request.extensions_mut().insert(caller);
                Box::pin(self.inner.call(request))
            }
            Err(refused) => Box::pin(std::future::ready(Ok(refused.into_http()))),
        }
    }
}

/// The caller `Authenticate` left on a request. Every service that reads
/// it sits behind it, so it is always there.
pub fn caller<T>(request: &tonic::Request<T>) -> Result<&Caller, Status> {
    request
        .extensions()
        .get::<Caller>()
        .ok_or_else(|| Refusal::Unauthenticated(AuthError::Missing.to_string()).into())
}

/// The names a client certificate speaks for: its subject common names and
/// DNS subject-alternative names. The TLS layer has already verified it.
fn names_of(der: &[u8]) -> Vec<String> {
    let Ok((_, cert)) = X509Certificate::from_der(der) else {
        return Vec::new();
    };
    let mut names: Vec<String> = cert
        .subject()
        .iter_common_name()
        .filter_map(|cn| cn.as_str().ok().map(str::to_owned))
        .collect();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        names.extend(san.value.general_names.iter().filter_map(|n| match n {
            GeneralName::DNSName(d) => Some((*d).to_owned()),
            _ => None,
        }));
    }
    names
}
