//! The Kubernetes (k3s) side of node agents: a sandbox becomes Pods on a
//! PersistentVolumeClaim in one namespace, pinned to this agent's node.
//!
//! Built so far: the objects a sandbox revision becomes ([`objects`]),
//! validated against the Kubernetes schemas. The driver that applies them
//! through the API server (`--driver kube`) is the next step of issue 10.

pub mod objects;

#[cfg(test)]
mod schema_tests;
