//! Chart tests: see below.
