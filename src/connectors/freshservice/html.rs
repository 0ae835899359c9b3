//! Plain text to the small, safe HTML a Freshservice note body needs.
//!
//! Freshservice note bodies are HTML. Writeback texts are rendered from templates that include
//! ticket data (requester names, targets, reasons), so every character that means something in
//! HTML is escaped: no template output can inject markup, links or scripts into the ticket.
//! Structure is kept: blank lines separate `<p>` paragraphs, single newlines become `<br>`.

/// The note body for `text`.
///
/// Exists because the writeback worker only has plain text and Freshservice renders HTML.
/// Line endings may be `\n`, `\r\n` or `\r`; an empty text gives one empty paragraph.
pub(crate) fn note_body(text: &str) -> String {
    let normalized = text.replace("\r\n", "\n").replace('\r', "\n");
    let mut out = String::with_capacity(normalized.len() + 16);
    let mut paragraph: Vec<&str> = Vec::new();
    let flush = |lines: &mut Vec<&str>, out: &mut String| {
        if lines.is_empty() {
            return;
        }
        out.push_str("<p>");
        for (i, line) in lines.iter().enumerate() {
            if i > 0 {
                out.push_str("<br>");
            }
            escape_into(line, out);
        }
        out.push_str("</p>");
        lines.clear();
    };
    for line in normalized.split('\n') {
        if line.trim().is_empty() {
            flush(&mut paragraph, &mut out);
        } else {
            paragraph.push(line);
        }
    }
    flush(&mut paragraph, &mut out);
    if out.is_empty() {
        out.push_str("<p></p>");
    }
    out
}

/// Appends `s` with `& < > " '` escaped and other control characters dropped.
fn escape_into(s: &str, out: &mut String) {
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            '\t' => out.push(' '),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn one_line_is_one_paragraph() {
        assert_eq!(
            note_body("Local admin granted."),
            "<p>Local admin granted.</p>"
        );
    }

    #[test]
    fn newlines_become_breaks_and_blank_lines_paragraphs() {
        assert_eq!(
            note_body("Granted to a@example.com\r\nuntil 18:00.\n\n\nAudit id: 42\n"),
            "<p>Granted to a@example.com<br>until 18:00.</p><p>Audit id: 42</p>"
        );
    }

    #[test]
    fn markup_in_ticket_data_is_escaped() {
        assert_eq!(
            note_body("<script>alert('x')</script> & \"quotes\""),
            "<p>&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;quotes&quot;</p>"
        );
    }

    #[test]
    fn empty_text_is_an_empty_paragraph() {
        assert_eq!(note_body(""), "<p></p>");
        assert_eq!(note_body("\n \n"), "<p></p>");
    }

    proptest! {
        #[test]
        fn output_never_contains_unescaped_markup(s in "(?s).{0,200}") {
            let html = note_body(&s);
            let inner = html.replace("<p>", "").replace("</p>", "").replace("<br>", "");
            prop_assert!(!inner.contains('<') && !inner.contains('>') && !inner.contains('"'));
            prop_assert!(html.starts_with("<p>") && html.ends_with("</p>"));
        }
    }
}
