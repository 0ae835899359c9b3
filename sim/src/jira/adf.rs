//! Atlassian Document Format (ADF), as much of it as comment bodies need: validation with the
//! strictness of Jira's v3 API (a plain string or a malformed document is a 400), conversion of
//! plain text to ADF (for v2 comments and simulator actions), and flattening back to plain text
//! so tests can assert on what a human would read.

use serde_json::{Map, Value, json};

/// Deepest node nesting accepted; real documents are shallow, and this bounds recursion.
pub const MAX_DEPTH: usize = 32;

/// Block nodes allowed as children of `doc` and of container blocks.
const BLOCK_NODES: &[&str] = &[
    "paragraph",
    "heading",
    "bulletList",
    "orderedList",
    "codeBlock",
    "blockquote",
    "rule",
    "panel",
    "mediaSingle",
    "table",
    "expand",
];

/// Inline nodes allowed inside paragraphs and headings.
const INLINE_NODES: &[&str] = &[
    "text",
    "hardBreak",
    "mention",
    "emoji",
    "inlineCard",
    "date",
    "status",
];

/// Text marks accepted on `text` nodes.
const MARKS: &[&str] = &[
    "strong",
    "em",
    "code",
    "link",
    "strike",
    "underline",
    "subsup",
    "textColor",
];

/// Why a value is not a valid ADF document; the message is what the 400 body reports.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct AdfError(pub String);

fn err(msg: impl Into<String>) -> AdfError {
    AdfError(msg.into())
}

/// Checks that `value` is `{"type":"doc","version":1,"content":[block...]}` made of known nodes.
pub fn validate(value: &Value) -> Result<(), AdfError> {
    let obj = value
        .as_object()
        .ok_or_else(|| err("Comment body is not valid! Expected an ADF document object"))?;
    if obj.get("type").and_then(Value::as_str) != Some("doc") {
        return Err(err("ADF root node must have type \"doc\""));
    }
    if obj.get("version").and_then(Value::as_u64) != Some(1) {
        return Err(err("ADF document must have version 1"));
    }
    let content = obj
        .get("content")
        .and_then(Value::as_array)
        .ok_or_else(|| err("ADF document must have a content array"))?;
    for node in content {
        validate_node(node, Context::Block, 1)?;
    }
    Ok(())
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Context {
    Block,
    Inline,
    ListItems,
    TableRows,
    TableCells,
    Any,
}

fn validate_node(node: &Value, ctx: Context, depth: usize) -> Result<(), AdfError> {
    if depth > MAX_DEPTH {
        return Err(err("ADF document is nested too deeply"));
    }
    let obj = node
        .as_object()
        .ok_or_else(|| err("ADF node must be an object"))?;
    let kind = obj
        .get("type")
        .and_then(Value::as_str)
        .ok_or_else(|| err("ADF node must have a string type"))?;
    let allowed = match ctx {
        Context::Block => BLOCK_NODES.contains(&kind),
        Context::Inline => INLINE_NODES.contains(&kind),
        Context::ListItems => kind == "listItem",
        Context::TableRows => kind == "tableRow",
        Context::TableCells => kind == "tableCell" || kind == "tableHeader",
        Context::Any => {
            BLOCK_NODES.contains(&kind) || INLINE_NODES.contains(&kind) || kind == "media"
        }
    };
    if !allowed {
        return Err(err(format!("ADF node type \"{kind}\" is not allowed here")));
    }
    match kind {
        "text" => validate_text(obj),
        "hardBreak" | "rule" | "emoji" | "inlineCard" | "date" | "status" | "media" => Ok(()),
        "mention" => match obj
            .get("attrs")
            .and_then(|a| a.get("id"))
            .and_then(Value::as_str)
        {
            Some(_) => Ok(()),
            None => Err(err("ADF mention needs attrs.id")),
        },
        "heading" => {
            let level = obj
                .get("attrs")
                .and_then(|a| a.get("level"))
                .and_then(Value::as_u64);
            if !matches!(level, Some(1..=6)) {
                return Err(err("ADF heading needs attrs.level between 1 and 6"));
            }
            children(obj, Context::Inline, depth, false)
        }
        "paragraph" => children(obj, Context::Inline, depth, false),
        "codeBlock" => children(obj, Context::Inline, depth, false),
        "bulletList" | "orderedList" => children(obj, Context::ListItems, depth, true),
        "table" => children(obj, Context::TableRows, depth, true),
        "tableRow" => children(obj, Context::TableCells, depth, true),
        "mediaSingle" => children(obj, Context::Any, depth, true),
        // listItem, blockquote, panel, expand, table cells hold blocks.
        _ => children(obj, Context::Block, depth, true),
    }
}

fn children(
    obj: &Map<String, Value>,
    ctx: Context,
    depth: usize,
    required: bool,
) -> Result<(), AdfError> {
    match obj.get("content") {
        None if !required => Ok(()),
        None => Err(err("ADF container node needs a content array")),
        Some(Value::Array(items)) => items
            .iter()
            .try_for_each(|child| validate_node(child, ctx, depth + 1)),
        Some(_) => Err(err("ADF content must be an array")),
    }
}

fn validate_text(obj: &Map<String, Value>) -> Result<(), AdfError> {
    match obj.get("text").and_then(Value::as_str) {
        Some(text) if !text.is_empty() => {}
        _ => return Err(err("ADF text node needs a non-empty text")),
    }
    match obj.get("marks") {
        None => Ok(()),
        Some(Value::Array(marks)) => marks.iter().try_for_each(|mark| {
            let kind = mark.get("type").and_then(Value::as_str).unwrap_or_default();
            if MARKS.contains(&kind) {
                Ok(())
            } else {
                Err(err(format!("ADF mark \"{kind}\" is not allowed")))
            }
        }),
        Some(_) => Err(err("ADF marks must be an array")),
    }
}

/// Converts plain text to ADF: one paragraph per blank-line-separated block, single newlines as
/// `hardBreak`s. Empty text becomes an empty document.
pub fn from_plain_text(text: &str) -> Value {
    let paragraphs: Vec<Value> = text
        .split("\n\n")
        .filter(|block| !block.is_empty())
        .map(|block| {
            let mut inline = Vec::new();
            for (i, line) in block.split('\n').enumerate() {
                if i > 0 {
                    inline.push(json!({"type": "hardBreak"}));
                }
                if !line.is_empty() {
                    inline.push(json!({"type": "text", "text": line}));
                }
            }
            json!({"type": "paragraph", "content": inline})
        })
        .collect();
    json!({"type": "doc", "version": 1, "content": paragraphs})
}

/// Flattens ADF to readable text: blocks separated by blank lines, `hardBreak` as newline,
/// mentions as `@name`, emoji by short name. Unknown shapes contribute nothing (never panics).
pub fn to_plain_text(doc: &Value) -> String {
    let mut blocks = Vec::new();
    if let Some(content) = doc.get("content").and_then(Value::as_array) {
        for block in content {
            let mut out = String::new();
            flatten(block, &mut out, 0);
            blocks.push(out.trim_end_matches('\n').to_owned());
        }
    }
    blocks.join("\n\n")
}

fn flatten(node: &Value, out: &mut String, depth: usize) {
    if depth > MAX_DEPTH {
        return;
    }
    match node.get("type").and_then(Value::as_str) {
        Some("text") => out.push_str(node.get("text").and_then(Value::as_str).unwrap_or("")),
        Some("hardBreak") => out.push('\n'),
        Some("mention") => {
            let attrs = node.get("attrs");
            let name = attrs
                .and_then(|a| a.get("text"))
                .or_else(|| attrs.and_then(|a| a.get("id")))
                .and_then(Value::as_str)
                .unwrap_or("");
            if !name.starts_with('@') {
                out.push('@');
            }
            out.push_str(name);
        }
        Some("emoji") => out.push_str(
            node.get("attrs")
                .and_then(|a| a.get("shortName"))
                .and_then(Value::as_str)
                .unwrap_or(""),
        ),
        Some("inlineCard") => out.push_str(
            node.get("attrs")
                .and_then(|a| a.get("url"))
                .and_then(Value::as_str)
                .unwrap_or(""),
        ),
        Some(kind) => {
            let separate = matches!(
                kind,
                "paragraph" | "heading" | "listItem" | "codeBlock" | "tableRow"
            );
            if let Some(content) = node.get("content").and_then(Value::as_array) {
                for child in content {
                    flatten(child, out, depth + 1);
                }
            }
            if separate && !out.ends_with('\n') {
                out.push('\n');
            }
        }
        None => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn minimal_comment_document_is_valid() {
        let doc = json!({"type":"doc","version":1,"content":[
            {"type":"paragraph","content":[{"type":"text","text":"Granted"}]}]});
        assert!(validate(&doc).is_ok());
        assert_eq!(to_plain_text(&doc), "Granted");
    }

    #[test]
    fn plain_string_body_is_not_adf() {
        assert!(validate(&json!("Granted")).is_err());
    }

    #[test]
    fn wrong_version_unknown_node_and_empty_text_are_rejected() {
        let bad_version = json!({"type":"doc","version":2,"content":[]});
        let unknown = json!({"type":"doc","version":1,"content":[{"type":"script"}]});
        let inline_at_top =
            json!({"type":"doc","version":1,"content":[{"type":"text","text":"x"}]});
        let empty_text = json!({"type":"doc","version":1,"content":[
            {"type":"paragraph","content":[{"type":"text","text":""}]}]});
        let bad_mark = json!({"type":"doc","version":1,"content":[
            {"type":"paragraph","content":[{"type":"text","text":"x","marks":[{"type":"blink"}]}]}]});
        for doc in [bad_version, unknown, inline_at_top, empty_text, bad_mark] {
            assert!(validate(&doc).is_err(), "{doc}");
        }
    }

    #[test]
    fn lists_mentions_and_breaks_flatten_readably() {
        let doc = json!({"type":"doc","version":1,"content":[
            {"type":"paragraph","content":[
                {"type":"text","text":"Hi "},
                {"type":"mention","attrs":{"id":"abc","text":"@Bob"}},
                {"type":"hardBreak"},
                {"type":"text","text":"line two","marks":[{"type":"strong"}]}]},
            {"type":"bulletList","content":[
                {"type":"listItem","content":[{"type":"paragraph","content":[{"type":"text","text":"one"}]}]},
                {"type":"listItem","content":[{"type":"paragraph","content":[{"type":"text","text":"two"}]}]}]}]});
        assert!(validate(&doc).is_ok());
        assert_eq!(to_plain_text(&doc), "Hi @Bob\nline two\n\none\ntwo");
    }

    #[test]
    fn absurdly_deep_nesting_is_rejected_without_stack_overflow() {
        let mut node = json!({"type":"paragraph","content":[{"type":"text","text":"x"}]});
        for _ in 0..200 {
            node = json!({"type":"blockquote","content":[node]});
        }
        let doc = json!({"type":"doc","version":1,"content":[node]});
        assert!(validate(&doc).is_err());
        let _ = to_plain_text(&doc);
    }

    proptest! {
        #[test]
        fn plain_text_roundtrips_through_adf(text in "[a-zA-Z0-9 .,:]{1,20}(\n[a-zA-Z0-9 .,:]{1,20}){0,3}") {
            let doc = from_plain_text(&text);
            prop_assert!(validate(&doc).is_ok());
            prop_assert_eq!(to_plain_text(&doc), text);
        }

        #[test]
        fn validation_never_panics_on_arbitrary_json(s in ".{0,200}") {
            if let Ok(value) = serde_json::from_str::<Value>(&s) {
                let _ = validate(&value);
                let _ = to_plain_text(&value);
            }
        }
    }
}
