//! A subset of ServiceNow's encoded query language (`sysparm_query`), enough for what an
//! integration sends: conditions joined with `^` (AND) or `^OR` (OR with the previous condition),
//! operators `=`, `!=`, `IN`, `NOT IN`, `STARTSWITH`, `ENDSWITH`, `LIKE`, `NOT LIKE`, `ISEMPTY`,
//! `ISNOTEMPTY`, and `ORDERBY<field>` / `ORDERBYDESC<field>`.
//!
//! Unknown fields make the condition match nothing — the behaviour of an instance with
//! `glide.invalid_query.returns_no_rows=true`, which is the safe setting a client should be
//! tested against (the insecure default returns *every* row).

/// One comparison.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// `field=value`.
    Eq(String),
    /// `field!=value`.
    Ne(String),
    /// `fieldINa,b,c`.
    In(Vec<String>),
    /// `fieldNOT INa,b`.
    NotIn(Vec<String>),
    /// `fieldSTARTSWITHx`.
    StartsWith(String),
    /// `fieldENDSWITHx`.
    EndsWith(String),
    /// `fieldLIKEx` (contains).
    Like(String),
    /// `fieldNOT LIKEx`.
    NotLike(String),
    /// `fieldISEMPTY`.
    IsEmpty,
    /// `fieldISNOTEMPTY`.
    IsNotEmpty,
}

/// A condition on one field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Condition {
    /// Field name.
    pub field: String,
    /// Comparison.
    pub op: Op,
}

impl Condition {
    /// Whether `value` (the raw stored string) satisfies the condition.
    pub fn matches(&self, value: &str) -> bool {
        match &self.op {
            Op::Eq(v) => value == v,
            Op::Ne(v) => value != v,
            Op::In(vs) => vs.iter().any(|v| v == value),
            Op::NotIn(vs) => !vs.iter().any(|v| v == value),
            Op::StartsWith(v) => value.starts_with(v.as_str()),
            Op::EndsWith(v) => value.ends_with(v.as_str()),
            Op::Like(v) => value.to_lowercase().contains(&v.to_lowercase()),
            Op::NotLike(v) => !value.to_lowercase().contains(&v.to_lowercase()),
            Op::IsEmpty => value.is_empty(),
            Op::IsNotEmpty => !value.is_empty(),
        }
    }
}

/// A parsed query: a disjunction of conjunctions (each inner `Vec` is AND-ed; the outer OR-ed
/// per group, so `a=1^ORa=2^b=3` is `(a=1 OR a=2) AND b=3` as on the platform), plus ordering.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Query {
    /// AND of groups; each group is an OR of conditions.
    pub groups: Vec<Vec<Condition>>,
    /// `(field, descending)` sort keys, in order.
    pub order: Vec<(String, bool)>,
}

/// Most conditions a query may hold (bounded work per request).
pub const MAX_CONDITIONS: usize = 64;

/// Why a query could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    /// A term has no recognisable operator.
    #[error("cannot parse query term {0:?}")]
    BadTerm(String),
    /// The query is too long.
    #[error("query has more than {MAX_CONDITIONS} conditions")]
    TooLong,
}

/// Operators in matching order: longer spellings first so `!=` wins over `=` and `NOT IN` over
/// `IN`.
const OPERATORS: &[&str] = &[
    "ISNOTEMPTY",
    "ISEMPTY",
    "NOT IN",
    "NOT LIKE",
    "STARTSWITH",
    "ENDSWITH",
    "LIKE",
    "IN",
    "!=",
    "=",
];

fn parse_term(term: &str) -> Result<Condition, QueryError> {
    // Find the earliest operator position; at equal positions prefer the longer operator.
    let mut best: Option<(usize, &str)> = None;
    for op in OPERATORS {
        if let Some(pos) = term.find(op) {
            let better = match best {
                None => true,
                Some((p, o)) => pos < p || (pos == p && op.len() > o.len()),
            };
            if better {
                best = Some((pos, op));
            }
        }
    }
    let (pos, op) = best.ok_or_else(|| QueryError::BadTerm(term.to_owned()))?;
    let field = term.get(..pos).unwrap_or("").trim();
    let value = term.get(pos + op.len()..).unwrap_or("");
    if field.is_empty()
        || !field
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
    {
        return Err(QueryError::BadTerm(term.to_owned()));
    }
    let list = || value.split(',').map(str::to_owned).collect::<Vec<_>>();
    let op = match op {
        "=" => Op::Eq(value.to_owned()),
        "!=" => Op::Ne(value.to_owned()),
        "IN" => Op::In(list()),
        "NOT IN" => Op::NotIn(list()),
        "STARTSWITH" => Op::StartsWith(value.to_owned()),
        "ENDSWITH" => Op::EndsWith(value.to_owned()),
        "LIKE" => Op::Like(value.to_owned()),
        "NOT LIKE" => Op::NotLike(value.to_owned()),
        "ISEMPTY" => Op::IsEmpty,
        _ => Op::IsNotEmpty,
    };
    Ok(Condition {
        field: field.to_owned(),
        op,
    })
}

/// Parses an encoded query. An empty query matches everything.
pub fn parse(encoded: &str) -> Result<Query, QueryError> {
    let mut query = Query::default();
    let mut count = 0usize;
    for (i, part) in encoded.split('^').enumerate() {
        if part.is_empty() || part == "EQ" {
            continue;
        }
        count += 1;
        if count > MAX_CONDITIONS {
            return Err(QueryError::TooLong);
        }
        if let Some(field) = part.strip_prefix("ORDERBYDESC") {
            query.order.push((field.to_owned(), true));
            continue;
        }
        if let Some(field) = part.strip_prefix("ORDERBY") {
            query.order.push((field.to_owned(), false));
            continue;
        }
        if let Some(rest) = part.strip_prefix("OR")
            && i > 0
            && let Some(last) = query.groups.last_mut()
        {
            last.push(parse_term(rest)?);
            continue;
        }
        query.groups.push(vec![parse_term(part)?]);
    }
    Ok(query)
}

impl Query {
    /// Whether a record matches, given a way to read its raw values; `None` for a field the
    /// table does not have.
    pub fn matches(&self, get: &dyn Fn(&str) -> Option<String>) -> bool {
        self.groups.iter().all(|group| {
            group
                .iter()
                .any(|c| get(&c.field).is_some_and(|v| c.matches(&v)))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn record<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |f: &str| {
            pairs
                .iter()
                .find(|(k, _)| *k == f)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    #[test]
    fn conjunction_of_equalities_filters() {
        let q = parse("sysapproval=abc^state=requested").unwrap();
        assert!(q.matches(&record(&[("sysapproval", "abc"), ("state", "requested")])));
        assert!(!q.matches(&record(&[("sysapproval", "abc"), ("state", "approved")])));
    }

    #[test]
    fn or_binds_to_the_previous_condition() {
        let q = parse("state=1^ORstate=2^active=true").unwrap();
        assert_eq!(q.groups.len(), 2);
        assert!(q.matches(&record(&[("state", "2"), ("active", "true")])));
        assert!(!q.matches(&record(&[("state", "3"), ("active", "true")])));
    }

    #[test]
    fn not_equal_and_not_in_win_over_shorter_operators() {
        let q = parse("state!=3^approvalNOT INrejected,cancelled").unwrap();
        assert_eq!(q.groups[0][0].op, Op::Ne("3".into()));
        assert_eq!(
            q.groups[1][0].op,
            Op::NotIn(vec!["rejected".into(), "cancelled".into()])
        );
    }

    #[test]
    fn unknown_field_matches_nothing() {
        let q = parse("no_such_field=1").unwrap();
        assert!(!q.matches(&record(&[("state", "1")])));
    }

    #[test]
    fn ordering_is_collected_not_matched() {
        let q = parse("ORDERBYDESCsys_updated_on^state=1").unwrap();
        assert_eq!(q.order, vec![("sys_updated_on".to_owned(), true)]);
        assert!(q.matches(&record(&[("state", "1")])));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(parse("justtext").is_err());
        assert!(parse("=x").is_err());
        assert!(parse(&"a=1^".repeat(MAX_CONDITIONS + 1)).is_err());
    }

    proptest! {
        #[test]
        fn parse_never_panics(q in ".{0,200}") {
            let _ = parse(&q);
        }

        #[test]
        fn equality_query_matches_exactly_its_value(
            field in "[a-z_]{1,12}",
            value in "[a-zA-Z0-9 _.-]{0,20}",
            other in "[a-zA-Z0-9 _.-]{0,20}",
        ) {
            let q = parse(&format!("{field}={value}")).unwrap();
            let f = field.clone();
            let v = value.clone();
            prop_assert!(q.matches(&move |k: &str| (k == f).then(|| v.clone())));
            let f = field.clone();
            let o = other.clone();
            prop_assert_eq!(q.matches(&move |k: &str| (k == f).then(|| o.clone())), other == value);
        }
    }
}
