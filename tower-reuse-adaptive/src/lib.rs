//! A sliding-window controller that tunes a tower-reuse pool from live signals without oscillating.
//!
//! This crate is planned and has no public items yet; see the workspace
//! README for the layers that are ready to use today. It has no cargo
//! features.

// On docs.rs: label each item with the features it needs.
#![cfg_attr(docsrs, feature(doc_cfg))]
