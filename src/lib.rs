//! authgate: may this user do this now? Access checks, brute-force lockouts
//! and admin unlocks over gRPC, backed by Postgres or an embedded SQLite file.

pub mod app;
pub mod cli;
pub mod clock;
pub mod config;
pub mod crypto;
pub mod current;
pub mod domain;
pub mod gateway;
pub mod grpc;
pub mod service;
pub mod store;
pub mod telemetry;
pub mod work;
