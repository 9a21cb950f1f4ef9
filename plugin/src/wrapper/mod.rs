//! wrapper (in progress)
