//! One test binary (one link) for every integration test: each talks to a
//! real authgate over gRPC, against SQLite and against Postgres.

mod helpers;

mod access;
mod admin;
mod alerts;
mod audit;
mod bad_input;
mod citizenship;
mod cli;
mod concurrency;
mod observability;
mod outage;
mod python;
mod totp;
