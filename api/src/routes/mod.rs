pub mod account;
pub mod firmware;
pub mod health;
pub mod products;
