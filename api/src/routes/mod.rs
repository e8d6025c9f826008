pub mod account;
pub mod adoption;
pub mod devices;
pub mod firmware;
pub mod health;
pub mod products;
pub mod rules;
pub mod verification;
