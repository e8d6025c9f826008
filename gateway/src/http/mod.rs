//! Lenient HTTP/1.1 for GAgent (placeholder).
