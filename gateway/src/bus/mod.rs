//! Message bus behind the MQTT edge (placeholder).
