//! Access policy (shared/DESIGN.md §5): who may read what, for which destination.

pub mod host;
