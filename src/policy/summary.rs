//! The summary comment written to a ticket as soon as it matches a mapping, so the approver sees
//! exactly what approving would grant — subject, target, scope with its path and hash, duration,
//! who may approve — and what would block it right now. Pure text from plain data.

use jiff::SignedDuration;

use super::Check;
use super::scope::ScopeDefinition;

/// What the summary says; the engine fills it from the rendered grant and the policy.
#[derive(Debug, Clone)]
pub struct Summary<'a> {
    /// Who would receive the privilege.
    pub subject: &'a str,
    /// Where.
    pub target: &'a str,
    /// The scope's full definition, or the scope string when it does not resolve.
    pub scope: Result<&'a ScopeDefinition, &'a str>,
    /// The duration that would be granted (capped).
    pub duration: SignedDuration,
    /// What the ticket asked for, when the cap cut it.
    pub asked: Option<SignedDuration>,
    /// Who may approve, in words (see [`super::Policy::who_may_approve`]).
    pub approvers: String,
    /// Distinct approvals needed.
    pub approvals_needed: u32,
    /// The checks that fail now (from [`super::check_before_approval`]).
    pub blockers: Vec<&'a Check>,
}

/// The comment text. Plain lines, readable in every ITSM's comment box.
pub fn summary_text(s: &Summary<'_>) -> String {
    let scope = match &s.scope {
        Ok(def) => def.describe(),
        Err(scope) => format!("{scope} (not defined in the allow-list)"),
    };
    let duration = match s.asked {
        Some(asked) => format!(
            "{:#} (the ticket asked for {asked:#}; this elevation lasts at most {:#})",
            s.duration, s.duration
        ),
        None => format!("{:#}", s.duration),
    };
    let approvals = if s.approvals_needed <= 1 {
        "1 approval".to_owned()
    } else {
        format!("{} approvals from different people", s.approvals_needed)
    };
    let mut text = format!(
        "Elevation request received. If approved, jitbridge will grant:\n\
         - Subject: {}\n- Target: {}\n- Scope: {scope}\n- Duration: {duration}\n\
         - Who may approve: {}\n- Needs: {approvals}\n",
        s.subject, s.target, s.approvers
    );
    if s.blockers.is_empty() {
        text.push_str("Nothing would block this request right now.");
    } else {
        text.push_str("What would block it right now:");
        for check in &s.blockers {
            text.push_str(&format!("\n- {} ({})", check.detail, check.rule));
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::scope::{ScopeDefinition, ScopeKind};

    fn app() -> ScopeDefinition {
        ScopeDefinition {
            kind: ScopeKind::App,
            name: "7zip".into(),
            path: Some(r"C:\Program Files\7-Zip\7z.exe".into()),
            sha256: Some("ab".repeat(32)),
            args: vec!["x".into()],
            interpreter: None,
            service: None,
            actions: Vec::new(),
        }
    }

    #[test]
    fn the_summary_shows_everything_the_approver_grants() {
        let def = app();
        let text = summary_text(&Summary {
            subject: r"CORP\alice",
            target: "WS-0101",
            scope: Ok(&def),
            duration: SignedDuration::from_hours(4),
            asked: Some(SignedDuration::from_hours(8)),
            approvers: "group helpdesk-leads (CORP\\bob)".into(),
            approvals_needed: 2,
            blockers: Vec::new(),
        });
        for needle in [
            r"Subject: CORP\alice",
            "Target: WS-0101",
            r"Scope: app:7zip (C:\Program Files\7-Zip\7z.exe, SHA-256 abab",
            "arguments: x",
            "Duration: 4h (the ticket asked for 8h; this elevation lasts at most 4h)",
            "Who may approve: group helpdesk-leads",
            "Needs: 2 approvals from different people",
            "Nothing would block this request right now.",
        ] {
            assert!(text.contains(needle), "{needle:?} missing in:\n{text}");
        }
    }

    #[test]
    fn the_summary_lists_what_would_block_the_request() {
        let failing = Check {
            rule: "targets",
            passed: false,
            detail: "target DC01 is not allowed for this elevation (allowed targets: WS-*)".into(),
        };
        let text = summary_text(&Summary {
            subject: "alice@example.com",
            target: "DC01",
            scope: Err("app:foo"),
            duration: SignedDuration::from_mins(60),
            asked: None,
            approvers: "anyone".into(),
            approvals_needed: 1,
            blockers: vec![&failing],
        });
        assert!(
            text.contains("Scope: app:foo (not defined in the allow-list)"),
            "{text}"
        );
        assert!(text.contains("Duration: 1h\n"), "{text}");
        assert!(text.contains("Needs: 1 approval\n"), "{text}");
        assert!(
            text.ends_with(
                "What would block it right now:\n- target DC01 is not allowed for this elevation \
                 (allowed targets: WS-*) (targets)"
            ),
            "{text}"
        );
    }
}
