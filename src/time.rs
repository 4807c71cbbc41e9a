//! Time as data. The engine never reads a clock: callers pass [`Time`] in.
//! Real runtimes use milliseconds since the Unix epoch; the `sim` runtime
//! starts its virtual clock at 0.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::time::Duration;

/// A point in time, in milliseconds since an origin (the Unix epoch for real
/// runtimes, the start of a simulation for `sim`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
#[serde(transparent)]
pub struct Time(pub u64);

impl Time {
    pub const ZERO: Time = Time(0);

    pub fn from_secs(s: u64) -> Time {
        Time(s.saturating_mul(1000))
    }
    pub fn from_millis(ms: u64) -> Time {
        Time(ms)
    }
    pub fn as_millis(self) -> u64 {
        self.0
    }
    pub fn as_secs_f64(self) -> f64 {
        self.0 as f64 / 1000.0
    }
    /// The wall clock, for the edges (controller, runtimes). Never call this from the engine.
    pub fn now_wall() -> Time {
        let d = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Time(d.as_millis() as u64)
    }
    pub fn plus(self, d: Duration) -> Time {
        Time(self.0.saturating_add(d.as_millis() as u64))
    }
    pub fn add_secs(self, s: u64) -> Time {
        Time(self.0.saturating_add(s.saturating_mul(1000)))
    }
    /// `self - earlier`, zero when `earlier` is later.
    pub fn since(self, earlier: Time) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }
}

impl fmt::Display for Time {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:.3}s", self.as_secs_f64())
    }
}
