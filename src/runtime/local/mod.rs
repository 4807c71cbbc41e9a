//! The `local` runtime (the embedded default): instances are real processes
//! in their own process groups, probes are real HTTP/TCP/exec checks, a
//! built-in load balancer per service routes to ready instances, GPUs come
//! from `nvidia-smi` or a declared inventory. Restart-safe: what it runs is
//! persisted in the state directory and adopted again after a restart.
