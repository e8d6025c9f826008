//! Property and soak tests of the public API, in one test binary.
//!
//! Golden examples from `proto-docs/device-protocol.md` live next to the code as unit tests.

mod mqtt;
mod no_panic;
mod roundtrip;
mod soak;
mod strategies;
