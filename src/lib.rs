//! Floyd: a GitOps sync controller with its own progressive-delivery engine.
//!
//! Decisions are pure functions over data ([`engine`], [`diff`], most of
//! [`manifest`]); effects live at the edges ([`source`], [`runtime`],
//! [`store`], [`server`]). See `docs/architecture.md`.
#![forbid(unsafe_code)]

pub mod cli;
pub mod controller;
pub mod diff;
pub mod engine;
pub mod githost;
pub mod hub;
pub mod manifest;
pub mod model;
pub mod net;
pub mod notifications;
pub mod placement;
pub mod predict;
pub mod runtime;
pub mod server;
pub mod source;
pub mod store;
pub mod telemetry;
pub mod time;

#[cfg(test)]
mod layers;
