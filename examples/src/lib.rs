//! Shared pieces of the tower-reuse examples and of `reuse-lab`: the embedded
//! test server, the client stacks under comparison, the load driver, the
//! scenarios, the reports, and OTLP export with a loopback receiver.

pub mod driver;
pub mod lab;
pub mod otlp;
pub mod relay;
pub mod report;
pub mod results;
pub mod scenarios;
pub mod server;
pub mod stacks;
pub mod target;
pub mod tls;
