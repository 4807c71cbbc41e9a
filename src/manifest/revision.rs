//! Revision hashing: sha256 over the canonical (sorted-key, compact JSON)
//! form of an instance template, first 10 hex characters. Formatting, comments
//! and key order of the source YAML cannot change it; nor can fields outside
//! the template (replicas, strategy, gates, ...).

use super::model::{InstanceTemplate, Revision};
use sha2::{Digest, Sha256};

/// The revision of an instance template.
pub fn revision_of(template: &InstanceTemplate) -> Revision {
    let mut t = template.clone();
    // `allowInPlace` is a rollout policy, not part of what runs.
    if let Some(gpu) = t.resources.gpu.as_mut() {
        gpu.allow_in_place = true;
    }
    // serde_json::Value's maps are BTreeMaps (no `preserve_order` feature), so
    // serialising through Value sorts every key.
    let mut value = serde_json::to_value(&t).expect("templates always serialise");
    // The GPU memory key was serialised `memoryMib` when revisions were first
    // hashed; it is `memoryMiB` now (as in manifests). Hash the old key so
    // that no running service gets a new revision from the rename.
    if let Some(gpu) = value
        .pointer_mut("/resources/gpu")
        .and_then(|g| g.as_object_mut())
        && let Some(m) = gpu.remove("memoryMiB")
    {
        gpu.insert("memoryMib".into(), m);
    }
    let canonical = serde_json::to_vec(&value).expect("values always serialise");
    let digest = Sha256::digest(&canonical);
    Revision(hex::encode(digest)[..10].to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pinned: a GPU template's revision must not change across versions
    /// (renaming the serialised memory key once would have changed it).
    #[test]
    fn gpu_memory_revision_is_pinned() {
        let mut t = InstanceTemplate::command(["x"]);
        t.resources.gpu = Some(crate::manifest::GpuRequest {
            count: 1,
            product: Some("NVIDIA-A100-SXM4-80GB".into()),
            memory_mib: Some(81920),
            sharing: crate::manifest::GpuSharing::Exclusive,
            allow_in_place: true,
        });
        let json = serde_json::to_string(&t).unwrap();
        assert!(json.contains("\"memoryMiB\":81920"), "{json}");
        let old_form = serde_json::to_value(&t)
            .unwrap()
            .to_string()
            .replace("memoryMiB", "memoryMib");
        let old_value: serde_json::Value = serde_json::from_str(&old_form).unwrap();
        let want =
            hex::encode(Sha256::digest(serde_json::to_vec(&old_value).unwrap()))[..10].to_string();
        assert_eq!(revision_of(&t).as_str(), want);
        // And the stored form of earlier versions still reads.
        let back: InstanceTemplate = serde_json::from_str(&old_form).unwrap();
        assert_eq!(back, t);
    }

    #[test]
    fn env_order_does_not_change_revision() {
        let mut a = InstanceTemplate::command(["x"]);
        a.env.insert("A".into(), "1".into());
        a.env.insert("B".into(), "2".into());
        let mut b = InstanceTemplate::command(["x"]);
        b.env.insert("B".into(), "2".into());
        b.env.insert("A".into(), "1".into());
        assert_eq!(revision_of(&a), revision_of(&b));
        b.env.insert("B".into(), "3".into());
        assert_ne!(revision_of(&a), revision_of(&b));
        assert_eq!(revision_of(&a).as_str().len(), 10);
    }
}
