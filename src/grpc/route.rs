//! Which of the server's services a request is for, read once from its path
//! (`/package.Service/Method`) by the middleware that treats them apart:
//! authentication (which role) and limits (which calls are shed, which
//! requests are read whole before their work starts).

use tonic_health::pb::health_server;

use envoy_types::pb::envoy::service::auth::v3::authorization_server;
use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_server;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server;

use super::proto::{access_service_server, admin_service_server};

/// The services the server routes to, as the middleware tells them apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// `grpc.health.v1.Health`: Kubernetes' probes, which carry no
    /// credentials and are never shed nor cut short.
    Health,
    /// `authgate.v1.AccessService`: the `check` role.
    Access,
    /// Envoy's services that ask the same questions (ext_authz, the
    /// rate-limit service): the
    /// `check` role, or a peer in `gateway.trusted_proxies`.
    Gateway,
    /// Envoy's ext_proc: as Gateway, on one stream each way that lives as
    /// long as the HTTP request it processes, the upstream's answer
    /// included.
    Processing,
    /// `authgate.v1.AdminService`: the `admin` role.
    Admin,
    /// Server reflection, and any path the server does not serve (answered
    /// UNIMPLEMENTED): any authenticated caller.
    Other,
}

impl Route {
    pub fn of(path: &str) -> Route {
        let service = path
            .strip_prefix('/')
            .and_then(|p| p.split_once('/'))
            .map_or("", |(service, _)| service);
        match service {
            health_server::SERVICE_NAME => Route::Health,
            access_service_server::SERVICE_NAME => Route::Access,
            authorization_server::SERVICE_NAME | rate_limit_service_server::SERVICE_NAME => {
                Route::Gateway
            }
            external_processor_server::SERVICE_NAME => Route::Processing,
            admin_service_server::SERVICE_NAME => Route::Admin,
            _ => Route::Other,
        }
    }

    /// authgate's own services, whose every method takes one request
    /// message (WatchSecurityEvents streams only its answer): their request
    /// can be read whole before the work starts. Reflection and ext_proc
    /// stream both ways and are left to read their own.
    pub fn takes_one_message(self) -> bool {
        matches!(self, Route::Access | Route::Admin | Route::Gateway)
    }
}

#[cfg(test)]
mod tests {
    use super::Route;

    #[test]
    fn routes_are_read_from_the_service_part_of_the_path() {
        assert_eq!(Route::of("/grpc.health.v1.Health/Check"), Route::Health);
        assert_eq!(
            Route::of("/authgate.v1.AccessService/CheckAccess"),
            Route::Access
        );
        assert_eq!(
            Route::of("/envoy.service.auth.v3.Authorization/Check"),
            Route::Gateway
        );
        assert_eq!(
            Route::of("/envoy.service.ext_proc.v3.ExternalProcessor/Process"),
            Route::Processing
        );
        assert_eq!(
            Route::of("/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit"),
            Route::Gateway
        );
        assert_eq!(
            Route::of("/authgate.v1.AdminService/AdminUnlock"),
            Route::Admin
        );
        assert_eq!(
            Route::of("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"),
            Route::Other
        );
        // A prefix is not the service.
        assert_eq!(Route::of("/grpc.health.v1.HealthX/Check"), Route::Other);
        assert_eq!(Route::of("/authgate.v1.AccessService"), Route::Other);
        assert_eq!(Route::of(""), Route::Other);
    }
}
