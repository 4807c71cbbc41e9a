//! Benchmark: engine. Results and the command to reproduce them are in docs/benchmarks.md.
fn main() {}
