//! The device gateway: the HTTP calls GAgent makes and the MQTT edge devices log in to.

pub mod bus;
pub mod http;
