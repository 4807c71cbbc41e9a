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
    let value = serde_json::to_value(&t).expect("templates always serialise");
    let canonical = serde_json::to_vec(&value).expect("values always serialise");
    let digest = Sha256::digest(&canonical);
    Revision(hex::encode(digest)[..10].to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

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
