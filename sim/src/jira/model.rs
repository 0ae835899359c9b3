//! The simulated site's data — users, workflow, issues, comments, changelog, JSM approvals — and
//! how it renders as Jira JSON (REST v3 for the API, REST v2 for webhook bodies, where the
//! differences are the `self` URLs and string vs ADF bodies).

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::adf;
use crate::error::SimError;

/// A Jira Cloud user. Jira identifies people by `accountId`; email may be hidden by privacy
/// settings, which is why jitbridge must not rely on it alone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// Opaque account id (e.g. `5b10ac8d82e05b22cc7d4ef5`).
    pub account_id: String,
    /// The user's email address.
    pub email: String,
    /// Display name.
    pub display_name: String,
}

impl User {
    /// Convenience constructor.
    pub fn new(account_id: &str, email: &str, display_name: &str) -> Self {
        Self {
            account_id: account_id.to_owned(),
            email: email.to_owned(),
            display_name: display_name.to_owned(),
        }
    }
}

/// Jira's three fixed status categories; every status belongs to one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum StatusCategory {
    /// `new` ("To Do").
    ToDo,
    /// `indeterminate` ("In Progress").
    InProgress,
    /// `done` ("Done").
    Done,
}

impl StatusCategory {
    fn parts(self) -> (u64, &'static str, &'static str, &'static str) {
        match self {
            StatusCategory::ToDo => (2, "new", "blue-gray", "To Do"),
            StatusCategory::InProgress => (4, "indeterminate", "yellow", "In Progress"),
            StatusCategory::Done => (3, "done", "green", "Done"),
        }
    }

    /// The category key (`new`, `indeterminate`, `done`).
    pub fn key(self) -> &'static str {
        self.parts().1
    }

    pub(crate) fn json(self, base: &str, api: u8) -> Value {
        let (id, key, color, name) = self.parts();
        json!({"self": format!("{base}/rest/api/{api}/statuscategory/{id}"), "id": id, "key": key,
               "colorName": color, "name": name})
    }
}

/// One status of the workflow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// Numeric id as a string (Jira sends status ids as strings).
    pub id: String,
    /// Display name, e.g. "Waiting for approval".
    pub name: String,
    /// Category.
    pub category: StatusCategory,
}

impl Status {
    /// Convenience constructor.
    pub fn new(id: &str, name: &str, category: StatusCategory) -> Self {
        Self {
            id: id.to_owned(),
            name: name.to_owned(),
            category,
        }
    }

    pub(crate) fn json(&self, base: &str, api: u8) -> Value {
        json!({"self": format!("{base}/rest/api/{api}/status/{}", self.id), "description": "",
               "iconUrl": format!("{base}/images/icons/statuses/generic.png"),
               "name": self.name, "id": self.id, "statusCategory": self.category.json(base, api)})
    }
}

/// A workflow transition. Ids are per workflow, which is why clients must list transitions first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transition {
    /// Transition id as a string (e.g. "11").
    pub id: String,
    /// Display name (e.g. "Approve").
    pub name: String,
    /// Status ids this transition is available from; empty means from every status (global).
    pub from: Vec<String>,
    /// Destination status id.
    pub to: String,
}

impl Transition {
    /// Convenience constructor.
    pub fn new(id: &str, name: &str, from: &[&str], to: &str) -> Self {
        Self {
            id: id.to_owned(),
            name: name.to_owned(),
            from: from.iter().map(|s| (*s).to_owned()).collect(),
            to: to.to_owned(),
        }
    }

    fn available_from(&self, status_id: &str) -> bool {
        self.to != status_id && (self.from.is_empty() || self.from.iter().any(|f| f == status_id))
    }
}

/// Status ids of the default "Elevation Request" workflow, so tests can name them.
pub mod ids {
    /// Waiting for approval.
    pub const WAITING_FOR_APPROVAL: &str = "10005";
    /// Approved.
    pub const APPROVED: &str = "10012";
    /// Declined.
    pub const DECLINED: &str = "10013";
    /// In Progress.
    pub const IN_PROGRESS: &str = "3";
    /// Done.
    pub const DONE: &str = "10001";
    /// Cancelled.
    pub const CANCELLED: &str = "10014";
    /// Reopened.
    pub const REOPENED: &str = "4";
    /// The transition JSM runs when the approval is approved.
    pub const APPROVE_TRANSITION: &str = "11";
    /// The transition JSM runs when the approval is declined.
    pub const DECLINE_TRANSITION: &str = "21";
}

/// A validated workflow: statuses, transitions and the status new issues start in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Workflow {
    statuses: Vec<Status>,
    transitions: Vec<Transition>,
    initial: String,
}

impl Workflow {
    /// Builds a workflow, refusing duplicate ids and references to unknown statuses.
    pub fn new(
        statuses: Vec<Status>,
        transitions: Vec<Transition>,
        initial_status_id: &str,
    ) -> Result<Self, SimError> {
        let known = |id: &str| statuses.iter().any(|s| s.id == id);
        for (i, s) in statuses.iter().enumerate() {
            if statuses[..i]
                .iter()
                .any(|o| o.id == s.id || o.name == s.name)
            {
                return Err(SimError::InvalidWorkflow(format!(
                    "duplicate status {:?}",
                    s.name
                )));
            }
        }
        for (i, t) in transitions.iter().enumerate() {
            if transitions[..i].iter().any(|o| o.id == t.id) {
                return Err(SimError::InvalidWorkflow(format!(
                    "duplicate transition id {:?}",
                    t.id
                )));
            }
            if !known(&t.to) || t.from.iter().any(|f| !known(f)) {
                return Err(SimError::InvalidWorkflow(format!(
                    "transition {:?} references an unknown status",
                    t.name
                )));
            }
        }
        if !known(initial_status_id) {
            return Err(SimError::InvalidWorkflow(format!(
                "initial status {initial_status_id:?} is not a status"
            )));
        }
        Ok(Self {
            statuses,
            transitions,
            initial: initial_status_id.to_owned(),
        })
    }

    /// The default JSM "Elevation Request" workflow:
    /// Waiting for approval → Approved | Declined; Approved → In Progress; In Progress → Done;
    /// Waiting for approval | Approved | In Progress → Cancelled; Done | Declined | Cancelled →
    /// Reopened; Reopened → Waiting for approval | In Progress | Cancelled.
    pub fn elevation_request() -> Self {
        use StatusCategory::*;
        use ids::*;
        let statuses = vec![
            Status::new(WAITING_FOR_APPROVAL, "Waiting for approval", ToDo),
            Status::new(APPROVED, "Approved", InProgress),
            Status::new(DECLINED, "Declined", Done),
            Status::new(IN_PROGRESS, "In Progress", InProgress),
            Status::new(DONE, "Done", Done),
            Status::new(CANCELLED, "Cancelled", Done),
            Status::new(REOPENED, "Reopened", ToDo),
        ];
        let transitions = vec![
            Transition::new(
                APPROVE_TRANSITION,
                "Approve",
                &[WAITING_FOR_APPROVAL],
                APPROVED,
            ),
            Transition::new(
                DECLINE_TRANSITION,
                "Decline",
                &[WAITING_FOR_APPROVAL],
                DECLINED,
            ),
            Transition::new("31", "Start progress", &[APPROVED, REOPENED], IN_PROGRESS),
            Transition::new("41", "Resolve", &[IN_PROGRESS], DONE),
            Transition::new(
                "51",
                "Cancel request",
                &[WAITING_FOR_APPROVAL, APPROVED, IN_PROGRESS, REOPENED],
                CANCELLED,
            ),
            Transition::new("61", "Reopen", &[DONE, DECLINED, CANCELLED], REOPENED),
            Transition::new("71", "Request approval", &[REOPENED], WAITING_FOR_APPROVAL),
        ];
        match Self::new(statuses, transitions, WAITING_FOR_APPROVAL) {
            Ok(wf) => wf,
            // The literal above is consistent; a test pins this.
            Err(_) => Self {
                statuses: Vec::new(),
                transitions: Vec::new(),
                initial: String::new(),
            },
        }
    }

    /// All statuses.
    pub fn statuses(&self) -> &[Status] {
        &self.statuses
    }

    /// All transitions.
    pub fn transitions(&self) -> &[Transition] {
        &self.transitions
    }

    /// The status new issues start in.
    pub fn initial(&self) -> &str {
        &self.initial
    }

    /// The status with this id.
    pub fn status(&self, id: &str) -> Option<&Status> {
        self.statuses.iter().find(|s| s.id == id)
    }

    /// The status with this name (case-insensitive).
    pub fn status_named(&self, name: &str) -> Option<&Status> {
        self.statuses
            .iter()
            .find(|s| s.name.eq_ignore_ascii_case(name))
    }

    /// Transitions available from `status_id`.
    pub fn available(&self, status_id: &str) -> Vec<&Transition> {
        self.transitions
            .iter()
            .filter(|t| t.available_from(status_id))
            .collect()
    }
}

/// A JSM approver's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Decision {
    /// Not answered yet.
    Pending,
    /// Approved.
    Approved,
    /// Declined.
    Declined,
}

impl Decision {
    /// The wire string.
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Pending => "pending",
            Decision::Approved => "approved",
            Decision::Declined => "declined",
        }
    }
}

/// How a new issue's JSM approval is set up: who approves and which transitions the answer runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalSpec {
    /// The approval's name, e.g. "Manager approval".
    pub name: String,
    /// Approver account ids.
    pub approvers: Vec<String>,
    /// How many approvals decide "approved" (a single decline decides "declined").
    pub required: usize,
    /// Transition run when approved.
    pub approve_transition: String,
    /// Transition run when declined.
    pub decline_transition: String,
}

impl ApprovalSpec {
    /// One approval from any of `approvers`, wired to the default workflow's transitions.
    pub fn any_of<S: AsRef<str>>(approvers: &[S]) -> Self {
        Self {
            name: "Manager approval".to_owned(),
            approvers: approvers.iter().map(|a| a.as_ref().to_owned()).collect(),
            required: 1,
            approve_transition: ids::APPROVE_TRANSITION.to_owned(),
            decline_transition: ids::DECLINE_TRANSITION.to_owned(),
        }
    }
}

/// A JSM approval on an issue (the `ApprovalDTO`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Approval {
    /// Approval id.
    pub id: String,
    /// Name.
    pub name: String,
    /// Overall decision.
    pub final_decision: Decision,
    /// Each approver and their answer.
    pub approvers: Vec<(String, Decision)>,
    /// Approvals needed.
    pub required: usize,
    /// Transition on approve.
    pub approve_transition: String,
    /// Transition on decline.
    pub decline_transition: String,
    /// Created.
    pub created: Timestamp,
    /// Decided.
    pub completed: Option<Timestamp>,
}

/// A stored comment: the body is kept as ADF, as Jira Cloud does.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Comment {
    /// Comment id.
    pub id: String,
    /// Author account id.
    pub author: String,
    /// ADF body.
    pub body: Value,
    /// Created.
    pub created: Timestamp,
}

/// One changelog item.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChangeItem {
    /// Display name of the field ("status").
    pub field: String,
    /// `jira` or `custom`.
    pub fieldtype: String,
    /// Field id.
    pub field_id: String,
    /// Old raw value (status id for status).
    pub from: Option<String>,
    /// Old display value (status name).
    pub from_string: Option<String>,
    /// New raw value.
    pub to: Option<String>,
    /// New display value.
    pub to_string: Option<String>,
}

impl ChangeItem {
    pub(crate) fn json(&self) -> Value {
        json!({"field": self.field, "fieldtype": self.fieldtype, "fieldId": self.field_id,
               "from": self.from, "fromString": self.from_string, "to": self.to,
               "toString": self.to_string})
    }
}

/// One changelog history entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct History {
    /// History id.
    pub id: String,
    /// Who made the change.
    pub author: Option<String>,
    /// When.
    pub created: Timestamp,
    /// What changed.
    pub items: Vec<ChangeItem>,
}

/// A stored issue.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Issue {
    pub id: u64,
    pub key: String,
    pub status_id: String,
    pub reporter: String,
    pub assignee: Option<String>,
    pub summary: String,
    pub description: Option<String>,
    pub created: Timestamp,
    pub updated: Timestamp,
    pub status_changed: Timestamp,
    pub fields: Map<String, Value>,
    pub comments: Vec<Comment>,
    pub history: Vec<History>,
    pub approvals: Vec<Approval>,
}

/// Site-wide facts needed to render issues.
pub(crate) struct Site<'a> {
    pub base: &'a str,
    pub project_id: &'a str,
    pub project_key: &'a str,
    pub project_name: &'a str,
    pub issue_type_id: &'a str,
    pub issue_type_name: &'a str,
    pub approvals_field: &'a str,
    pub request_type_field: &'a str,
    pub hide_emails: bool,
}

/// Jira's timestamp format: `2024-03-14T08:41:37.640+0000`.
pub(crate) fn jira_time(ts: Timestamp) -> String {
    ts.strftime("%Y-%m-%dT%H:%M:%S%.3f+0000").to_string()
}

/// The servicedesk `DateDTO`.
pub(crate) fn date_dto(ts: Timestamp) -> Value {
    json!({"epochMillis": ts.as_millisecond(),
           "iso8601": ts.strftime("%Y-%m-%dT%H:%M:%S%z").to_string(),
           "jira": jira_time(ts),
           "friendly": ts.strftime("%d/%b/%y %-I:%M %p").to_string()})
}

/// The `user` JSON Jira embeds everywhere.
pub(crate) fn user_json(user: &User, base: &str, api: u8, hide_email: bool) -> Value {
    let mut v = json!({
        "self": format!("{base}/rest/api/{api}/user?accountId={}", user.account_id),
        "accountId": user.account_id,
        "displayName": user.display_name,
        "active": true,
        "timeZone": "Etc/UTC",
        "accountType": "atlassian",
        "avatarUrls": {"48x48": format!("{base}/avatar/{}.png", user.account_id)},
    });
    if !hide_email && let Some(obj) = v.as_object_mut() {
        obj.insert("emailAddress".into(), Value::String(user.email.clone()));
    }
    v
}

/// An account id rendered as a user (or a stub when the user is unknown, as for deleted users).
pub(crate) fn account_json(
    users: &[User],
    account_id: &str,
    base: &str,
    api: u8,
    hide_email: bool,
) -> Value {
    match users.iter().find(|u| u.account_id == account_id) {
        Some(user) => user_json(user, base, api, hide_email),
        None => json!({"accountId": account_id, "displayName": "Former user", "active": false}),
    }
}

impl Approval {
    /// The `ApprovalDTO`; `viewer` decides `canAnswerApproval`.
    pub(crate) fn json(&self, users: &[User], site: &Site<'_>, key: &str, viewer: &str) -> Value {
        let approvers: Vec<Value> = self
            .approvers
            .iter()
            .map(|(account, decision)| {
                let mut approver = account_json(users, account, site.base, 3, false);
                if let Some(obj) = approver.as_object_mut() {
                    obj.retain(|k, _| {
                        matches!(
                            k.as_str(),
                            "accountId" | "displayName" | "emailAddress" | "active" | "timeZone"
                        )
                    });
                }
                json!({"approver": approver, "approverDecision": decision.as_str()})
            })
            .collect();
        let can_answer = self.final_decision == Decision::Pending
            && self
                .approvers
                .iter()
                .any(|(a, d)| a == viewer && *d == Decision::Pending);
        let mut v = json!({
            "id": self.id,
            "name": self.name,
            "finalDecision": self.final_decision.as_str(),
            "canAnswerApproval": can_answer,
            "approvers": approvers,
            "createdDate": date_dto(self.created),
            "_links": {"self": format!("{}/rest/servicedeskapi/request/{key}/approval/{}", site.base, self.id)},
        });
        if let (Some(done), Some(obj)) = (self.completed, v.as_object_mut()) {
            obj.insert("completedDate".into(), date_dto(done));
        }
        v
    }
}

impl Comment {
    /// Comment JSON; v3 carries the ADF body, v2 a plain string.
    pub(crate) fn json(&self, users: &[User], base: &str, issue_id: u64, api: u8) -> Value {
        let author = account_json(users, &self.author, base, api, false);
        let body = if api == 2 {
            Value::String(adf::to_plain_text(&self.body))
        } else {
            self.body.clone()
        };
        json!({
            "self": format!("{base}/rest/api/{api}/issue/{issue_id}/comment/{}", self.id),
            "id": self.id,
            "author": author,
            "body": body,
            "updateAuthor": author,
            "created": jira_time(self.created),
            "updated": jira_time(self.created),
            "jsdPublic": true,
        })
    }
}

impl Issue {
    /// Full issue JSON in the v2 (`api == 2`) or v3 representation, including every field.
    pub(crate) fn json(
        &self,
        users: &[User],
        workflow: &Workflow,
        site: &Site<'_>,
        api: u8,
        viewer: &str,
    ) -> Value {
        let base = site.base;
        let hide = site.hide_emails;
        let status = workflow
            .status(&self.status_id)
            .map(|s| s.json(base, api))
            .unwrap_or(Value::Null);
        let description = match (&self.description, api) {
            (None, _) => Value::Null,
            (Some(text), 2) => Value::String(text.clone()),
            (Some(text), _) => adf::from_plain_text(text),
        };
        let comments: Vec<Value> = self
            .comments
            .iter()
            .map(|c| c.json(users, base, self.id, api))
            .collect();
        let mut fields = Map::new();
        fields.insert(
            "statuscategorychangedate".into(),
            jira_time(self.status_changed).into(),
        );
        fields.insert(
            "issuetype".into(),
            json!({"self": format!("{base}/rest/api/{api}/issuetype/{}", site.issue_type_id),
                   "id": site.issue_type_id, "description": "Request temporary elevated rights",
                   "iconUrl": format!("{base}/images/icons/issuetypes/task.png"),
                   "name": site.issue_type_name, "subtask": false, "hierarchyLevel": 0}),
        );
        fields.insert(
            "project".into(),
            json!({"self": format!("{base}/rest/api/{api}/project/{}", site.project_id),
                   "id": site.project_id, "key": site.project_key, "name": site.project_name,
                   "projectTypeKey": "service_desk", "simplified": false}),
        );
        fields.insert("created".into(), jira_time(self.created).into());
        fields.insert("updated".into(), jira_time(self.updated).into());
        fields.insert(
            "priority".into(),
            json!({"self": format!("{base}/rest/api/{api}/priority/3"), "name": "Medium", "id": "3"}),
        );
        fields.insert("labels".into(), json!([]));
        fields.insert("resolution".into(), Value::Null);
        fields.insert("summary".into(), self.summary.clone().into());
        fields.insert("description".into(), description);
        fields.insert("status".into(), status.clone());
        let reporter = account_json(users, &self.reporter, base, api, hide);
        fields.insert("reporter".into(), reporter.clone());
        fields.insert("creator".into(), reporter);
        fields.insert(
            "assignee".into(),
            self.assignee
                .as_deref()
                .map_or(Value::Null, |a| account_json(users, a, base, api, hide)),
        );
        fields.insert(
            "comment".into(),
            json!({"comments": comments, "maxResults": comments.len(), "total": comments.len(),
                   "startAt": 0, "self": format!("{base}/rest/api/{api}/issue/{}/comment", self.id)}),
        );
        fields.insert(
            site.request_type_field.into(),
            json!({"_links": {"web": format!("{base}/servicedesk/customer/portal/1/{}", self.key)},
                   "requestType": {"id": "17", "name": site.issue_type_name},
                   "currentStatus": {"status": status.get("name").cloned().unwrap_or(Value::Null),
                                     "statusCategory": status.pointer("/statusCategory/key")
                                         .and_then(Value::as_str).map(str::to_uppercase),
                                     "statusDate": date_dto(self.status_changed)}}),
        );
        if !self.approvals.is_empty() {
            let approvals: Vec<Value> = self
                .approvals
                .iter()
                .map(|a| a.json(users, site, &self.key, viewer))
                .collect();
            fields.insert(site.approvals_field.into(), Value::Array(approvals));
        }
        for (k, v) in &self.fields {
            fields.insert(k.clone(), v.clone());
        }
        json!({
            "expand": "renderedFields,names,schema,operations,editmeta,changelog,versionedRepresentations",
            "id": self.id.to_string(),
            "self": format!("{base}/rest/api/{api}/issue/{}", self.id),
            "key": self.key,
            "fields": Value::Object(fields),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_workflow_is_consistent() {
        let wf = Workflow::elevation_request();
        assert_eq!(wf.statuses().len(), 7);
        let from_waiting: Vec<_> = wf
            .available(ids::WAITING_FOR_APPROVAL)
            .iter()
            .map(|t| t.name.clone())
            .collect();
        assert_eq!(from_waiting, ["Approve", "Decline", "Cancel request"]);
        assert!(
            wf.available(ids::DONE)
                .iter()
                .all(|t| t.to == ids::REOPENED)
        );
    }

    #[test]
    fn workflow_with_dangling_status_is_refused() {
        let err = Workflow::new(
            vec![Status::new("1", "Open", StatusCategory::ToDo)],
            vec![Transition::new("11", "Close", &["1"], "2")],
            "1",
        );
        assert!(matches!(err, Err(SimError::InvalidWorkflow(_))));
    }

    #[test]
    fn jira_time_uses_jira_format() {
        let ts = Timestamp::from_millisecond(1741941697640).unwrap();
        assert_eq!(jira_time(ts), "2025-03-14T08:41:37.640+0000");
    }
}
