//! monitor (in progress)
