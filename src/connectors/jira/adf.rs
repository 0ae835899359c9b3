//! Atlassian Document Format (ADF) for comment bodies.
//!
//! Jira's REST API v3 only accepts rich text as an ADF document: a plain string sent as a comment
//! body is rejected with `400`. Writeback texts are rendered from templates as plain text, so this
//! module turns plain text into the smallest faithful ADF: one `paragraph` per block of text
//! separated by blank lines, and a `hardBreak` for every single newline inside a block. It builds
//! nothing else (no marks, links or mentions), so no template output can smuggle markup into the
//! ticket.

use serde_json::{Value, json};

/// The ADF document for `text`, ready to be sent as a v3 comment `body`.
///
/// Exists because Jira v3 rejects plain-string bodies; the writeback worker only has plain text.
/// Line endings may be `\n`, `\r\n` or `\r`. Blank (or whitespace-only) lines separate paragraphs;
/// single newlines become `hardBreak` nodes. Text nodes are never empty (ADF forbids that), so an
/// empty input yields one empty paragraph.
pub fn document(text: &str) -> Value {
    let normalized = text.replace("\r\n", "\n").replace('\r', "\n");
    let mut paragraphs: Vec<Value> = Vec::new();
    let mut current: Vec<&str> = Vec::new();
    for line in normalized.split('\n') {
        if line.trim().is_empty() {
            if !current.is_empty() {
                paragraphs.push(paragraph(&current));
                current.clear();
            }
        } else {
            current.push(line);
        }
    }
    if !current.is_empty() {
        paragraphs.push(paragraph(&current));
    }
    if paragraphs.is_empty() {
        paragraphs.push(json!({"type": "paragraph", "content": []}));
    }
    json!({"type": "doc", "version": 1, "content": paragraphs})
}

/// One paragraph whose lines are joined by `hardBreak` nodes.
fn paragraph(lines: &[&str]) -> Value {
    let mut content = Vec::with_capacity(lines.len() * 2);
    for (i, line) in lines.iter().enumerate() {
        if i > 0 {
            content.push(json!({"type": "hardBreak"}));
        }
        content.push(json!({"type": "text", "text": line}));
    }
    json!({"type": "paragraph", "content": content})
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn single_line_is_one_paragraph_with_one_text_node() {
        assert_eq!(
            document("Local admin granted."),
            json!({"type": "doc", "version": 1, "content": [
                {"type": "paragraph", "content": [{"type": "text", "text": "Local admin granted."}]}
            ]})
        );
    }

    #[test]
    fn single_newlines_become_hard_breaks() {
        let doc = document("line one\r\nline two\nline three");
        assert_eq!(
            doc["content"][0]["content"],
            json!([
                {"type": "text", "text": "line one"},
                {"type": "hardBreak"},
                {"type": "text", "text": "line two"},
                {"type": "hardBreak"},
                {"type": "text", "text": "line three"}
            ])
        );
        assert_eq!(doc["content"].as_array().map(Vec::len), Some(1));
    }

    #[test]
    fn blank_lines_separate_paragraphs_and_runs_of_them_collapse() {
        let doc = document("\n\nfirst\n\n \n\nsecond\nmore\n\n");
        let paragraphs = doc["content"].as_array().cloned().unwrap_or_default();
        assert_eq!(paragraphs.len(), 2);
        assert_eq!(
            paragraphs[0]["content"],
            json!([{"type": "text", "text": "first"}])
        );
        assert_eq!(
            paragraphs[1]["content"],
            json!([{"type": "text", "text": "second"}, {"type": "hardBreak"}, {"type": "text", "text": "more"}])
        );
    }

    #[test]
    fn empty_text_gives_one_empty_paragraph_and_no_empty_text_node() {
        assert_eq!(
            document(""),
            json!({"type": "doc", "version": 1, "content": [{"type": "paragraph", "content": []}]})
        );
    }

    #[test]
    fn markup_like_text_stays_literal_text() {
        let doc = document("*bold* [link|https://evil.example] {code}");
        assert_eq!(
            doc["content"][0]["content"][0]["text"],
            "*bold* [link|https://evil.example] {code}"
        );
    }

    /// Collects the text of `doc`, checking the structural ADF rules on the way.
    fn flatten(doc: &Value) -> String {
        assert_eq!(doc["type"], "doc");
        assert_eq!(doc["version"], 1);
        let mut out = String::new();
        for p in doc["content"].as_array().expect("content array") {
            assert_eq!(p["type"], "paragraph");
            for node in p["content"].as_array().expect("paragraph content") {
                match node["type"].as_str() {
                    Some("text") => {
                        let t = node["text"].as_str().expect("text");
                        assert!(!t.is_empty(), "ADF forbids empty text nodes");
                        assert!(!t.contains(['\n', '\r']), "newlines must be hardBreaks");
                        out.push_str(t);
                    }
                    Some("hardBreak") => {}
                    other => panic!("unexpected node {other:?}"),
                }
            }
        }
        out
    }

    proptest! {
        #[test]
        fn any_text_gives_valid_adf_keeping_every_visible_character(text in "(?s).{0,200}") {
            let doc = document(&text);
            let flat: String = flatten(&doc).chars().filter(|c| !c.is_whitespace()).collect();
            let visible: String = text.chars().filter(|c| !c.is_whitespace()).collect();
            prop_assert_eq!(flat, visible);
        }
    }
}
