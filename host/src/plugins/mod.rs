//! Stage libraries and the stages they offer: the [`loader`] checks and loads library files,
//! the [`registry`] is the one lookup by name for every stage type (the host's own, in
//! [`builtin`], and the libraries'), and [`callbacks`] is what the host hands each stage.

pub mod builtin;
pub mod callbacks;
pub mod loader;
pub mod registry;
