//! Git: clone/fetch (git2), the cheap "did the branch move" check, webhook
//! signature verification, local directory watch, and revert commit + push
//! with retry on non-fast-forward (never force-push).

pub mod webhook;
