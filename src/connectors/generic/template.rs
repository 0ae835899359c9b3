//! The minijinja templates of a generic connector file: request URLs, headers and JSON bodies.
//!
//! Two environments keep two kinds of text apart. In **URL** templates every interpolated value
//! is percent-encoded as one path segment or query component (so a ticket id like
//! `1/../users/me` cannot change which endpoint is called), except `base_url`, which is trusted;
//! a rendered URL must also stay on `base_url`'s scheme, host and port ([`pin`]), so an event can
//! never steer our credentials to another server. In **body** templates values are printed as
//! they are, and `tojson` produces JSON-escaped text. Both environments are strict: an undefined
//! name or a `null` is an error, never an empty string.

use std::fmt::Write as _;
use std::sync::Arc;

use minijinja::value::Value;
use minijinja::{AutoEscape, Environment, Error, ErrorKind, UndefinedBehavior, escape_formatter};
use reqwest::Url;

/// Which environment a template belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Interpolated values are percent-encoded.
    Url,
    /// Interpolated values are printed verbatim (use `tojson` in JSON).
    Text,
}

/// Every compiled template of one connector file, by name (the key path of its source).
#[derive(Clone)]
pub(crate) struct Templates {
    url: Arc<Environment<'static>>,
    text: Arc<Environment<'static>>,
}

impl std::fmt::Debug for Templates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Templates")
            .field(
                "url",
                &self.url.templates().map(|(n, _)| n).collect::<Vec<_>>(),
            )
            .field(
                "text",
                &self.text.templates().map(|(n, _)| n).collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// Collects templates while a file is validated.
pub(crate) struct Builder {
    url: Environment<'static>,
    text: Environment<'static>,
}

impl Builder {
    /// Empty environments with the URL and text formatters installed.
    pub(crate) fn new() -> Self {
        let mut url = Environment::new();
        url.set_undefined_behavior(UndefinedBehavior::Strict);
        url.set_auto_escape_callback(|_| AutoEscape::None);
        url.set_formatter(|out, _state, value| {
            if value.is_safe() {
                return out
                    .write_str(value.as_str().unwrap_or_default())
                    .map_err(fmt_error);
            }
            let text = printable(value)?;
            if matches!(text.as_str(), "" | "." | "..") {
                return Err(Error::new(
                    ErrorKind::InvalidOperation,
                    format!("the value {text:?} cannot be placed in a URL"),
                ));
            }
            out.write_str(&percent_encode(&text)).map_err(fmt_error)
        });
        let mut text = Environment::new();
        text.set_undefined_behavior(UndefinedBehavior::Strict);
        text.set_auto_escape_callback(|_| AutoEscape::None);
        text.set_formatter(|out, state, value| {
            printable(value)?;
            escape_formatter(out, state, value)
        });
        Self { url, text }
    }

    /// Compiles `source` under `name`; returns the top-level names it uses, or minijinja's
    /// syntax error as one line.
    pub(crate) fn add(
        &mut self,
        kind: Kind,
        name: &str,
        source: &str,
    ) -> Result<Vec<String>, String> {
        let env = match kind {
            Kind::Url => &mut self.url,
            Kind::Text => &mut self.text,
        };
        env.add_template_owned(name.to_owned(), source.to_owned())
            .map_err(|e| describe(&e))?;
        let template = env.get_template(name).map_err(|e| describe(&e))?;
        let mut names: Vec<String> = template.undeclared_variables(false).into_iter().collect();
        names.sort();
        Ok(names)
    }

    /// Renders an already added template (a trial render during validation).
    pub(crate) fn render(&self, kind: Kind, name: &str, ctx: &Value) -> Result<String, String> {
        let env = match kind {
            Kind::Url => &self.url,
            Kind::Text => &self.text,
        };
        env.get_template(name)
            .and_then(|t| t.render(ctx))
            .map_err(|e| describe(&e))
    }

    /// Freezes the environments.
    pub(crate) fn build(self) -> Templates {
        Templates {
            url: Arc::new(self.url),
            text: Arc::new(self.text),
        }
    }
}

impl Templates {
    /// Renders template `name` of `kind` with `ctx`.
    pub(crate) fn render(&self, kind: Kind, name: &str, ctx: &Value) -> Result<String, String> {
        let env = match kind {
            Kind::Url => &self.url,
            Kind::Text => &self.text,
        };
        env.get_template(name)
            .and_then(|t| t.render(ctx))
            .map_err(|e| describe(&e))
    }
}

/// `base_url` as templates see it: trusted (not encoded), without a trailing `/`, so that
/// `{{ base_url }}/api/v2/...` reads naturally.
pub(crate) fn base_url_value(base: &Url) -> Value {
    Value::from_safe_string(base.as_str().trim_end_matches('/').to_owned())
}

/// Parses a rendered URL and refuses it unless it has `base`'s scheme, host and port and carries
/// no credentials of its own.
pub(crate) fn pin(rendered: &str, base: &Url) -> Result<Url, String> {
    let url =
        Url::parse(rendered.trim()).map_err(|e| format!("the rendered URL is not a URL ({e})"))?;
    let same_origin = url.scheme() == base.scheme()
        && url.host_str().map(str::to_ascii_lowercase)
            == base.host_str().map(str::to_ascii_lowercase)
        && url.port_or_known_default() == base.port_or_known_default();
    if !same_origin {
        return Err(format!(
            "the rendered URL points to {}://{}, not to base_url's {}://{}; refusing to send credentials elsewhere",
            url.scheme(),
            url.host_str().unwrap_or("?"),
            base.scheme(),
            base.host_str().unwrap_or("?")
        ));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("the rendered URL carries credentials; they belong in [outbound]".to_owned());
    }
    Ok(url)
}

/// The text of a printable value; `null` and undefined are errors.
fn printable(value: &Value) -> Result<String, Error> {
    if value.is_undefined() || value.is_none() {
        return Err(Error::new(
            ErrorKind::InvalidOperation,
            "a value printed here is missing or null",
        ));
    }
    Ok(value.to_string())
}

fn fmt_error(_: std::fmt::Error) -> Error {
    Error::new(ErrorKind::WriteFailure, "cannot write template output")
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
pub(crate) fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// A template error as one line: minijinja's message plus its detail.
pub(crate) fn describe(error: &Error) -> String {
    let mut text = error.to_string();
    if let Some(detail) = error.detail()
        && !text.contains(detail)
    {
        text.push_str(": ");
        text.push_str(detail);
    }
    text.replace(['\n', '\r'], " ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn base() -> Url {
        Url::parse("https://acme.zendesk.com/").expect("url")
    }

    fn render_url(source: &str, id: &str) -> Result<String, String> {
        let mut b = Builder::new();
        b.add(Kind::Url, "u", source)?;
        let t = b.build();
        let ctx = minijinja::context! { base_url => base_url_value(&base()), ticket => minijinja::context!{ id => id } };
        t.render(Kind::Url, "u", &ctx)
    }

    #[test]
    fn values_in_urls_are_encoded_but_base_url_is_not() {
        assert_eq!(
            render_url(
                "{{ base_url }}/api/v2/tickets/{{ ticket.id }}.json",
                "35436"
            )
            .as_deref(),
            Ok("https://acme.zendesk.com/api/v2/tickets/35436.json")
        );
        assert_eq!(
            render_url(
                "{{ base_url }}/api/v2/tickets/{{ ticket.id }}.json",
                "1/../../users/me?x=1#f"
            )
            .as_deref(),
            Ok("https://acme.zendesk.com/api/v2/tickets/1%2F..%2F..%2Fusers%2Fme%3Fx%3D1%23f.json")
        );
        assert!(render_url("{{ base_url }}/t/{{ ticket.id }}", "..").is_err());
        assert!(render_url("{{ base_url }}/t/{{ ticket.nope }}", "1").is_err());
    }

    #[test]
    fn rendered_urls_must_stay_on_the_base_host() {
        let b = base();
        assert!(pin("https://acme.zendesk.com/api/v2/tickets/1.json", &b).is_ok());
        assert!(pin("https://ACME.zendesk.com:443/x", &b).is_ok());
        assert!(pin("https://evil.example/api", &b).is_err());
        assert!(
            pin("http://acme.zendesk.com/api", &b).is_err(),
            "scheme downgrade"
        );
        assert!(pin("https://acme.zendesk.com:8443/api", &b).is_err());
        assert!(pin("https://acme.zendesk.com.evil.example/api", &b).is_err());
        assert!(pin("https://user:pw@acme.zendesk.com/api", &b).is_err());
        assert!(
            pin("/api/v2/tickets", &b).is_err(),
            "relative URLs are not URLs"
        );
    }

    #[test]
    fn text_templates_refuse_null_and_tojson_escapes() {
        let mut b = Builder::new();
        b.add(Kind::Text, "body", r#"{"body": {{ text | tojson }}}"#)
            .expect("compiles");
        b.add(Kind::Text, "raw", "{{ text }}").expect("compiles");
        let t = b.build();
        let out = t
            .render(
                Kind::Text,
                "body",
                &minijinja::context! { text => "a \"quoted\"\nline" },
            )
            .expect("renders");
        let v: serde_json::Value = serde_json::from_str(&out).expect("valid JSON");
        assert_eq!(v["body"], "a \"quoted\"\nline");
        assert!(
            t.render(Kind::Text, "raw", &minijinja::context! { text => () })
                .is_err()
        );
    }

    #[test]
    fn syntax_errors_and_names_used_are_reported() {
        let mut b = Builder::new();
        assert!(b.add(Kind::Url, "bad", "{{ base_url ").is_err());
        assert_eq!(
            b.add(
                Kind::Url,
                "ok",
                "{{ base_url }}/u/{{ item }}/{{ ticket.id }}"
            ),
            Ok(vec![
                "base_url".to_owned(),
                "item".to_owned(),
                "ticket".to_owned()
            ])
        );
    }

    proptest! {
        #[test]
        fn encoded_values_never_leave_their_segment(id in "(?s).{1,40}") {
            prop_assume!(id != "." && id != "..");
            let url = render_url("{{ base_url }}/api/v2/tickets/{{ ticket.id }}.json", &id).expect("renders");
            let parsed = pin(&url, &base()).expect("same host");
            prop_assert_eq!(parsed.path_segments().map(|s| s.count()), Some(4));
            prop_assert!(parsed.query().is_none() && parsed.fragment().is_none());
        }
    }
}
