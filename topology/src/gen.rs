//! Deterministic generated fleets (work in progress).
