//! Revert commit messages in CONTRACT.md's format ("Revert commits") and
//! the trailers Floyd reads back from them. Pure.

/// The revert commit message of CONTRACT.md ("Revert commits").
pub fn revert_message(
    services: &[String],
    reverted: &[String],
    summaries: &[String],
    failed_revision: &str,
    rolled_back_to: &str,
    reason: &str,
) -> String {
    let service = services.first().map(String::as_str).unwrap_or("");
    message_of_revert(
        services,
        reverted,
        summaries,
        service,
        &format!("Floyd rolled back {service} from revision {failed_revision} to {rolled_back_to}"),
        reason,
    )
}

/// The message of a revert of commits that made the branch stop rendering
/// (no rollout ran): the same format as [`revert_message`], with a sentence
/// saying which commit kept running; `services` are those whose rendered
/// spec differs from that commit's after the revert.
pub fn render_revert_message(
    services: &[String],
    reverted: &[String],
    summaries: &[String],
    kept: &str,
    reason: &str,
) -> String {
    message_of_revert(
        services,
        reverted,
        summaries,
        "rendering",
        &format!("Floyd kept commit {kept} running: the branch does not render"),
        reason,
    )
}

/// Title, one `This reverts commit` line per commit, `what happened:
/// reason.`, then the trailers (`Floyd-Revert-Of`, `Floyd-Service`,
/// `Floyd-Reason`). `broke` names what several reverted commits broke.
fn message_of_revert(
    services: &[String],
    reverted: &[String],
    summaries: &[String],
    broke: &str,
    what_happened: &str,
    reason: &str,
) -> String {
    let one_line: String = reason.split_whitespace().collect::<Vec<_>>().join(" ");
    let title = if reverted.len() == 1 {
        format!(
            "Revert \"{}\"",
            summaries.first().map(String::as_str).unwrap_or("")
        )
    } else {
        format!("Revert {} commits that broke {broke}", reverted.len())
    };
    let mut m = format!("{title}\n\n");
    for sha in reverted {
        m.push_str(&format!("This reverts commit {sha}.\n"));
    }
    let sentence_end = if one_line.ends_with('.') { "" } else { "." };
    m.push_str(&format!("\n{what_happened}: {one_line}{sentence_end}\n\n"));
    for sha in reverted {
        m.push_str(&format!("Floyd-Revert-Of: {sha}\n"));
    }
    for s in services {
        m.push_str(&format!("Floyd-Service: {s}\n"));
    }
    m.push_str(&format!("Floyd-Reason: {one_line}\n"));
    m
}

/// The shas named by `Floyd-Revert-Of:` trailers: non-empty for Floyd's own reverts.
pub fn revert_of(message: &str) -> Vec<String> {
    message
        .lines()
        .filter_map(|l| l.strip_prefix("Floyd-Revert-Of:"))
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_single_and_many() {
        let one = revert_message(
            &["web".into()],
            &["aaa".into()],
            &["web: v2".into()],
            "r2",
            "r1",
            "progress deadline exceeded:\n0 of 2 ready",
        );
        assert_eq!(
            one,
            "Revert \"web: v2\"\n\nThis reverts commit aaa.\n\nFloyd rolled back web from revision r2 to r1: progress deadline exceeded: 0 of 2 ready.\n\nFloyd-Revert-Of: aaa\nFloyd-Service: web\nFloyd-Reason: progress deadline exceeded: 0 of 2 ready\n"
        );
        let many = revert_message(
            &["web".into(), "api".into()],
            &["bbb".into(), "aaa".into()],
            &[],
            "r3",
            "r1",
            "x.",
        );
        assert!(many.ends_with("Floyd-Service: web\nFloyd-Service: api\nFloyd-Reason: x.\n"));
        assert!(many.starts_with("Revert 2 commits that broke web\n\nThis reverts commit bbb.\nThis reverts commit aaa.\n\n"));
        assert!(many.contains("to r1: x.\n"));
        assert_eq!(revert_of(&many), vec!["bbb".to_string(), "aaa".to_string()]);
        assert!(revert_of("Revert \"x\"\n\nThis reverts commit a.").is_empty());
    }
}
