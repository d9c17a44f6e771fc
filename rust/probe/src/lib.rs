//! tbkit's runtime integrity probe. The plain-Rust core lives in the sibling modules;
//! `bindings.rs` is the only file that knows about Python (compiled with the `python` feature).
#[cfg(feature = "python")]
mod bindings;
