//! nri (in progress)
