//! Integration tests for `safeguard-core`.
