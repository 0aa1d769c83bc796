//! The credential check in front of every service but health: parses the
//! caller once, in an interceptor, and leaves a typed `Caller` in the
//! request's extensions for the handlers.

use std::sync::Arc;

use tonic::service::Interceptor;
use tonic::{Request, Status};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

mod keys;

pub use keys::{AuthError, Authenticator, Caller, Credential, KeyHash, Role, generate_key};

use super::Refusal;
use crate::telemetry::metrics;

#[derive(Clone)]
pub struct Authenticate {
    auth: Arc<Authenticator>,
    /// The role the service needs; `None` lets any authenticated caller in
    /// (reflection).
    role: Option<Role>,
}

impl Authenticate {
    pub fn new(auth: Arc<Authenticator>, role: Option<Role>) -> Self {
        Authenticate { auth, role }
    }
}

impl Interceptor for Authenticate {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let authorization = request
            .metadata()
            .get("authorization")
            .map(|v| v.as_bytes());
        // A key, when sent, decides; the certificate is parsed only without
        // one.
        let names = match authorization {
            Some(_) => Vec::new(),
            None => request
                .peer_certs()
                .and_then(|chain| chain.first().map(|leaf| names_of(leaf.as_ref())))
                .unwrap_or_default(),
        };
        let caller = self.auth.authenticate(authorization, &names).map_err(|e| {
            metrics::auth_rejected(match e {
                AuthError::Missing => "missing",
                AuthError::Malformed => "malformed",
                AuthError::Unknown => "unknown_key",
            });
            Status::from(Refusal::Unauthenticated(e.to_string()))
        })?;
        if let Some(role) = self.role
            && !caller.has(role)
        {
            metrics::auth_rejected("role");
            return Err(Refusal::PermissionDenied(format!(
                "caller {:?} lacks the {role} role",
                caller.name
            ))
            .into());
        }
        request.extensions_mut().insert(caller);
        Ok(request)
    }
}

/// The caller the interceptor left on a request. Every service that reads
/// it sits behind `Authenticate`, so it is always there.
pub fn caller<T>(request: &Request<T>) -> Result<&Caller, Status> {
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
