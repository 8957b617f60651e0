//! Shared pieces of the tower-reuse examples and of `reuse-lab`.
