//! Auto-approval: a mapping may mark some requests low-risk (`[mapping.auto_approve]`), so that
//! the grant is issued when the ticket is raised, without a person approving it. Everything else
//! still applies — the ticket is confirmed through the ITSM's API, every policy rule that does
//! not concern approvers runs — and the ticket is told that (and why) it was auto-approved.
//!
//! Pure: [`AutoApprove::decide`] looks at the rendered grant and the ticket's names and says
//! whether this request qualifies, and for how long; [`without_approver_rules`] drops from a
//! [`Verdict`] the rules that only make sense for a human approval.
//!
//! `local-admin` is the broadest scope there is, so it is never auto-approved through a glob:
//! only an entry that is exactly `local-admin` in `scopes` allows it, a deliberate, visible choice.

use jiff::SignedDuration;
use serde::Deserialize;

use super::{DURATION_CEILING, GlobList, Verdict};
use crate::mapping::condition::{CelVariables, Condition, ConditionFailure};

/// The scope that is only auto-approved when listed literally.
pub const BROADEST_SCOPE: &str = "local-admin";

/// Policy rules about who approved: they do not apply to an auto-approval, where nobody did.
pub const APPROVER_RULES: [&str; 3] = ["distinct_approver", "approvers", "min_approvals"];

/// `[mapping.auto_approve]` as an administrator writes it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AutoApproveConfig {
    /// Off unless set to `true`: auto-approval is always an explicit choice.
    #[serde(default)]
    pub enabled: bool,
    /// A CEL expression over the ticket's names (as in `when`) that must be true, e.g.
    /// `'fields.customfield_10050.value == "Printer driver"'`. Required.
    pub condition: String,
    /// Globs on the rendered `grant.scope` that may be auto-approved (case-insensitive), e.g.
    /// `["app:*", "driver-install"]`. Required and non-empty; `local-admin` only when listed
    /// exactly.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// The longest auto-approved grant; defaults to the mapping's `grant.max_duration`. An
    /// auto-approved grant is never longer than either.
    #[serde(default)]
    pub max_duration: Option<String>,
}

/// A configuration that cannot be used; names the key for a precise problem report.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {why}")]
pub struct AutoApproveError {
    /// The key inside `[mapping.auto_approve]`.
    pub key: &'static str,
    /// What is wrong and how to fix it.
    pub why: String,
}

/// `[mapping.auto_approve]`, compiled.
#[derive(Debug, Clone)]
pub struct AutoApprove {
    condition: std::sync::Arc<Condition>,
    scopes: GlobList,
    max_duration: SignedDuration,
}

/// What an auto-approval grants: the duration after the auto-approval cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AutoGrant {
    /// The duration to grant.
    pub duration: SignedDuration,
    /// True when the auto-approval cap cut the duration the ticket asked for.
    pub capped: bool,
}

impl AutoApprove {
    /// Compiles `config` for a mapping whose cap is `mapping_max`; `Ok(None)` when it is not
    /// enabled (a disabled table is still checked, so turning it on later cannot surprise).
    pub fn compile(
        config: &AutoApproveConfig,
        mapping_max: SignedDuration,
    ) -> Result<Option<AutoApprove>, AutoApproveError> {
        let condition = Condition::compile(&config.condition).map_err(|why| AutoApproveError {
            key: "condition",
            why: format!("the CEL expression does not compile: {why}"),
        })?;
        if config.scopes.is_empty() {
            return Err(AutoApproveError {
                key: "scopes",
                why: "list the scopes that may be auto-approved, e.g. scopes = [\"app:*\"]; \
                      local-admin must be listed exactly"
                    .to_owned(),
            });
        }
        let scopes = GlobList::compile("auto_approve.scopes", &config.scopes).map_err(|e| {
            AutoApproveError {
                key: "scopes",
                why: e.why(),
            }
        })?;
        let max_duration = match &config.max_duration {
            None => mapping_max,
            Some(text) => {
                let d = crate::config::parse_duration(text).map_err(|why| AutoApproveError {
                    key: "max_duration",
                    why,
                })?;
                if d.is_zero() || d.is_negative() {
                    return Err(AutoApproveError {
                        key: "max_duration",
                        why: "must be longer than zero".to_owned(),
                    });
                }
                if d > mapping_max {
                    return Err(AutoApproveError {
                        key: "max_duration",
                        why: format!(
                            "{d:#} is longer than grant.max_duration ({mapping_max:#}); an \
                             auto-approved grant is never longer than an approved one"
                        ),
                    });
                }
                d
            }
        };
        if !config.enabled {
            return Ok(None);
        }
        Ok(Some(AutoApprove {
            condition: std::sync::Arc::new(condition),
            scopes,
            max_duration: max_duration.min(DURATION_CEILING),
        }))
    }

    /// The condition as written (for the audit trail and the ticket comment).
    pub fn condition_source(&self) -> &str {
        self.condition.source()
    }

    /// The longest auto-approved grant.
    pub fn max_duration(&self) -> SignedDuration {
        self.max_duration
    }

    /// Whether `scope` may be auto-approved: a glob match, except that `local-admin` needs an
    /// entry that is exactly `local-admin`.
    pub fn allows_scope(&self, scope: &str) -> bool {
        let scope = scope.trim();
        if scope.eq_ignore_ascii_case(BROADEST_SCOPE) {
            return self
                .scopes
                .patterns
                .iter()
                .any(|p| p.eq_ignore_ascii_case(BROADEST_SCOPE));
        }
        self.scopes.matches(scope)
    }

    /// The condition's value for the ticket's template `context` (for [`Self::decide`] and for
    /// `explain`, which shows it on its own).
    pub(crate) fn evaluate_condition(
        &self,
        context: &serde_json::Value,
    ) -> Result<bool, ConditionFailure> {
        self.condition.evaluate(&CelVariables::new(context))
    }

    /// Whether this request qualifies for auto-approval, given the ticket's template `context`
    /// (as the ITSM confirmed it), the rendered `scope` and `duration` (already capped by the
    /// mapping). `Err` says, for the audit trail, why a person must approve it instead.
    pub fn decide(
        &self,
        context: &serde_json::Value,
        scope: &str,
        duration: SignedDuration,
    ) -> Result<AutoGrant, String> {
        if !self.allows_scope(scope) {
            return Err(format!(
                "scope {scope:?} is not one auto_approve.scopes allows ({})",
                self.scopes.describe()
            ));
        }
        match self.evaluate_condition(context) {
            Ok(true) => {}
            Ok(false) => {
                return Err(format!(
                    "the auto-approval condition {} is not met by this ticket",
                    self.condition.source()
                ));
            }
            Err(ConditionFailure::Runtime(m)) => {
                return Err(format!(
                    "the auto-approval condition {} could not be evaluated ({m})",
                    self.condition.source()
                ));
            }
            Err(ConditionFailure::NotBool(got)) => {
                return Err(format!(
                    "the auto-approval condition {} gave a {got} instead of true or false",
                    self.condition.source()
                ));
            }
        }
        let capped = duration > self.max_duration;
        Ok(AutoGrant {
            duration: if capped { self.max_duration } else { duration },
            capped,
        })
    }
}

/// `verdict` without the rules about approvers, which an auto-approval (nobody approved) cannot
/// pass and need not: every other rule still decides.
pub fn without_approver_rules(mut verdict: Verdict) -> Verdict {
    verdict.checks.retain(|c| !APPROVER_RULES.contains(&c.rule));
    verdict
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Check;
    use serde_json::json;

    fn config(condition: &str, scopes: &[&str], max: Option<&str>) -> AutoApproveConfig {
        AutoApproveConfig {
            enabled: true,
            condition: condition.to_owned(),
            scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
            max_duration: max.map(str::to_owned),
        }
    }

    fn compiled(condition: &str, scopes: &[&str], max: Option<&str>) -> AutoApprove {
        AutoApprove::compile(
            &config(condition, scopes, max),
            SignedDuration::from_hours(4),
        )
        .unwrap()
        .unwrap()
    }

    const HOUR: SignedDuration = SignedDuration::from_hours(1);

    #[test]
    fn auto_approval_decisions_table() {
        let ctx = json!({"fields": {"kind": "printer"}, "ticket": {"type": "Elevation Request"}});
        /// (condition, scopes, auto max, scope, asked, (seconds, capped) or refusal, why)
        type Case = (
            &'static str,
            &'static [&'static str],
            Option<&'static str>,
            &'static str,
            SignedDuration,
            Result<(i64, bool), &'static str>,
            &'static str,
        );
        let cases: &[Case] = &[
            (
                "fields.kind == \"printer\"",
                &["app:*"],
                None,
                "app:printer",
                HOUR,
                Ok((3600, false)),
                "scope glob and condition hold",
            ),
            (
                "fields.kind == \"printer\"",
                &["app:*"],
                Some("30m"),
                "app:printer",
                HOUR,
                Ok((1800, true)),
                "auto cap cuts the duration",
            ),
            (
                "fields.kind == \"scanner\"",
                &["app:*"],
                None,
                "app:printer",
                HOUR,
                Err("is not met"),
                "condition false waits for a person",
            ),
            (
                "fields.missing.deep == 1",
                &["app:*"],
                None,
                "app:printer",
                HOUR,
                Err("could not be evaluated"),
                "condition error waits for a person",
            ),
            (
                "fields.kind",
                &["app:*"],
                None,
                "app:printer",
                HOUR,
                Err("instead of true or false"),
                "non-boolean condition",
            ),
            (
                "true",
                &["app:*"],
                None,
                "service:spooler",
                HOUR,
                Err("not one auto_approve.scopes allows"),
                "scope not listed",
            ),
            (
                "true",
                &["*"],
                None,
                "local-admin",
                HOUR,
                Err("not one auto_approve.scopes allows"),
                "local-admin never through a glob",
            ),
            (
                "true",
                &["local-*"],
                None,
                "local-admin",
                HOUR,
                Err("not one auto_approve.scopes allows"),
                "local-admin never through a prefix glob",
            ),
            (
                "true",
                &["local-admin"],
                None,
                "Local-Admin",
                HOUR,
                Ok((3600, false)),
                "local-admin when listed exactly",
            ),
            (
                "true",
                &["APP:*"],
                None,
                "app:Notepad",
                HOUR,
                Ok((3600, false)),
                "scope globs ignore case",
            ),
        ];
        for (cond, scopes, max, scope, duration, want, why) in cases {
            let got = compiled(cond, scopes, *max).decide(&ctx, scope, *duration);
            match (got, want) {
                (Ok(g), Ok((secs, capped))) => {
                    assert_eq!((g.duration.as_secs(), g.capped), (*secs, *capped), "{why}")
                }
                (Err(e), Err(needle)) => assert!(e.contains(needle), "{why}: {e}"),
                (got, want) => panic!("{why}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn bad_auto_approve_tables_name_the_key() {
        let max = SignedDuration::from_hours(4);
        let cases: &[(AutoApproveConfig, &str, &str)] = &[
            (
                config("ticket.", &["app:*"], None),
                "condition",
                "does not compile",
            ),
            (config("true", &[], None), "scopes", "list the scopes"),
            (
                config("true", &["app:[x"], None),
                "scopes",
                "not a valid glob",
            ),
            (
                config("true", &["app:*"], Some("5h")),
                "max_duration",
                "longer than grant.max_duration",
            ),
            (
                config("true", &["app:*"], Some("0s")),
                "max_duration",
                "longer than zero",
            ),
            (config("true", &["app:*"], Some("soon")), "max_duration", ""),
        ];
        for (cfg, key, needle) in cases {
            let err = AutoApprove::compile(cfg, max).unwrap_err();
            assert_eq!(err.key, *key, "{cfg:?}");
            assert!(err.why.contains(needle), "{cfg:?}: {}", err.why);
        }
    }

    #[test]
    fn a_disabled_table_is_checked_but_grants_nothing() {
        let mut cfg = config("true", &["app:*"], None);
        cfg.enabled = false;
        assert!(
            AutoApprove::compile(&cfg, SignedDuration::from_hours(1))
                .unwrap()
                .is_none()
        );
        cfg.condition = "(".into();
        assert!(AutoApprove::compile(&cfg, SignedDuration::from_hours(1)).is_err());
    }

    proptest::proptest! {
        /// Whatever the ticket asks and whatever the caps, an auto-approved grant is never longer
        /// than the auto-approval cap, which is never longer than the mapping's.
        #[test]
        fn no_auto_approval_exceeds_its_cap(
            asked in 1i64..10 * 86_400,
            auto_max in proptest::option::of(1i64..86_400),
            mapping_max in 1i64..86_400,
        ) {
            let mapping_max = SignedDuration::from_secs(mapping_max);
            let cfg = config("true", &["app:*"], auto_max.map(|s| format!("{s}s")).as_deref());
            let Ok(Some(auto)) = AutoApprove::compile(&cfg, mapping_max) else {
                // Only an auto cap above the mapping's is refused.
                proptest::prop_assert!(auto_max.is_some_and(|m| m > mapping_max.as_secs()));
                return Ok(());
            };
            let g = auto.decide(&json!({}), "app:x", SignedDuration::from_secs(asked)).unwrap();
            proptest::prop_assert!(g.duration <= auto.max_duration());
            proptest::prop_assert!(g.duration <= mapping_max);
            proptest::prop_assert_eq!(g.capped, SignedDuration::from_secs(asked) > auto.max_duration());
        }
    }

    #[test]
    fn approver_rules_are_dropped_and_the_rest_kept() {
        let check = |rule: &'static str, passed| Check {
            rule,
            passed,
            detail: String::new(),
        };
        let v = without_approver_rules(Verdict {
            checks: vec![
                check("distinct_approver", false),
                check("approvers", false),
                check("min_approvals", false),
                check("targets", true),
                check("hours", false),
            ],
        });
        let rules: Vec<&str> = v.checks.iter().map(|c| c.rule).collect();
        assert_eq!(rules, ["targets", "hours"]);
        assert!(!v.allowed(), "a failing non-approver rule still refuses");
    }
}
