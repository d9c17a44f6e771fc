//! tbkit's runtime integrity probe: does what this process has loaded still match what is on disk?
//!
//! The plain-Rust core lives in the sibling modules (tested with `cargo test`, no Python needed);
//! `bindings.rs` is the only file that knows about Python (compiled with the `python` feature).
pub mod distinfo;
pub mod elf;
pub mod identity;
pub mod maps;
pub mod paths;
pub mod probe;
pub mod verdict;

#[cfg(feature = "python")]
mod bindings;
