//! One test binary (one link) for every integration test: each talks to a
//! real authgate over gRPC, against SQLite and against Postgres.

mod envoy;
mod helpers;

mod access;
mod admin;
mod admission;
mod alerts;
mod audit;
mod auth;
mod bad_input;
mod bans;
mod bench_baseline;
mod cache;
mod citizenship;
mod cli;
mod clients;
mod clock;
mod concurrency;
mod connections;
mod contract;
mod ext_authz;
mod ext_proc;
mod faults;
mod forward_auth;
mod gateway_envoy;
mod networks;
mod observability;
mod operator;
mod outage;
mod passwords;
mod prefixes;
mod python;
mod rate_limit;
mod recovery;
mod reload;
mod shadow;
mod shutdown;
mod tls;
mod totp;
mod upgrade;
