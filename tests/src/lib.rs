//! Support code for the tower-reuse integration tests.
