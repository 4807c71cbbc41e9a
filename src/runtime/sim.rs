//! The `sim` runtime: the [`super::Runtime`] trait over a virtual clock and
//! scripted instance behaviour (start-up time, readiness failures, crash
//! loops, termination grace, GPU inventory), deterministic for a seed.
