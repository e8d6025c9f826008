//! The device gateway: the HTTP calls GAgent makes and the MQTT edge devices log in to.
//!
//! Not built yet: the device-plane work adds the codec-backed HTTP service and MQTT edge here.
//! The crate exists so the workspace has its final shape and the API never grows a
//! dependency on device code.
