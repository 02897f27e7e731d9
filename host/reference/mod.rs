//! Plain-Rust CPU reference forward.
