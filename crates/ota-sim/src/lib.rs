//! A faithful GAgent device simulator (placeholder until written).
