//! End-to-end tests of the OTA server live in `it/` (one test binary, `cargo test -p ota-e2e`).
