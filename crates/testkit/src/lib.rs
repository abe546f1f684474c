//! Test and benchmark doubles for sessiongate: one fake Kratos whoami upstream, one driver of
//! real Kratos' self-service flows, and the upstream call counters both the fake and the bench's
//! counting proxy expose. Used by the integration tests (`tests/support`) and `sessiongate-bench`.
#![forbid(unsafe_code)]

pub mod fake_kratos;
pub mod kratos;
pub mod stats;
