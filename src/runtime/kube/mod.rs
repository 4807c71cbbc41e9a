//! The `kube` runtime: one ReplicaSet per revision (`<service>-<revision>`),
//! a Service for active traffic and one for preview, readiness from Pod
//! conditions, GPU capacity from Nodes, server-side apply with field manager
//! `floyd`, Lease-based leader election.
