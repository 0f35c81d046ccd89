//! Integration tests for the `safeguard` binary.
