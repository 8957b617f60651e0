//! Affinity routing over dedicated connection pools: hot and cold tiers, sticky endpoints by rendezvous hashing with bounded load.
//!
//! This crate is planned and has no public items yet; see the workspace
//! README for the layers that are ready to use today. It has no cargo
//! features.

// On docs.rs: label each item with the features it needs.
#![cfg_attr(docsrs, feature(doc_cfg))]
