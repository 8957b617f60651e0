//! OpenTelemetry traces and metrics for the tower-reuse layers.
//!
//! This crate is planned and has no public items yet; see the workspace
//! README for the layers that are ready to use today.
