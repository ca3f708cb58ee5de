//! Diagnostics printed within bounds: a snippet shows a window around each
//! label, never a whole line of a one-line 50 MB file (miette's graphical
//! handler panics on very long lines), and no diagnostic prints more than
//! [`MAX_OUTPUT`] bytes.

use std::fmt;

use miette::{
    Diagnostic, LabeledSpan, MietteError, MietteSpanContents, SourceCode, SourceSpan, SpanContents,
};

/// Bytes of source shown either side of a label.
pub const WINDOW: usize = 160;
/// A snippet this small is shown as it is, context lines and all.
pub const SMALL: usize = 2048;
/// Longest label span drawn.
pub const MAX_LABEL: usize = 80;
/// Longest headline (characters).
pub const MAX_MESSAGE: usize = 2000;
/// Most bytes one diagnostic prints.
pub const MAX_OUTPUT: usize = 8 * 1024;

/// A diagnostic whose snippet, labels and message are bounded.
pub struct Bounded(pub miette::Report);

impl fmt::Debug for Bounded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&bound(&format!("{:?}", self.0), MAX_MESSAGE))
    }
}

impl fmt::Display for Bounded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&bound(&self.0.to_string(), MAX_MESSAGE))
    }
}

impl std::error::Error for Bounded {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

impl Diagnostic for Bounded {
    fn code<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        self.0.code()
    }
    fn severity(&self) -> Option<miette::Severity> {
        self.0.severity()
    }
    fn help<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        self.0.help()
    }
    fn url<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        self.0.url()
    }
    fn source_code(&self) -> Option<&dyn SourceCode> {
        self.0.source_code().map(|_| self as &dyn SourceCode)
    }
    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        let labels = self.0.labels()?;
        Some(Box::new(labels.map(|l| {
            let span = SourceSpan::new(l.offset().into(), l.len().min(MAX_LABEL));
            let label = l.label().map(|t| bound(t, MAX_LABEL * 2));
            if l.primary() {
                LabeledSpan::new_primary_with_span(label, span)
            } else {
                LabeledSpan::new_with_span(label, span)
            }
        })))
    }
    fn related<'a>(&'a self) -> Option<Box<dyn Iterator<Item = &'a dyn Diagnostic> + 'a>> {
        self.0.related()
    }
    fn diagnostic_source(&self) -> Option<&dyn Diagnostic> {
        self.0.diagnostic_source()
    }
}

impl SourceCode for Bounded {
    fn read_span<'a>(
        &'a self,
        span: &SourceSpan,
        before: usize,
        after: usize,
    ) -> Result<Box<dyn SpanContents<'a> + 'a>, MietteError> {
        let source = self.0.source_code().ok_or(MietteError::OutOfBounds)?;
        let inner = source.read_span(span, before, after)?;
        let data = inner.data();
        if data.len() <= SMALL {
            return Ok(inner);
        }
        let start = inner.span().offset();
        let rel = span.offset().saturating_sub(start).min(data.len());
        let lo = char_boundary(data, rel.saturating_sub(WINDOW), false);
        let hi = char_boundary(
            data,
            (rel + span.len().min(MAX_LABEL) + WINDOW).min(data.len()),
            true,
        );
        if lo == 0 && hi == data.len() {
            return Ok(inner);
        }
        let head = &data[..lo];
        let newlines = head.iter().filter(|&&b| b == b'\n').count();
        let column = match head.iter().rposition(|&b| b == b'\n') {
            Some(nl) => lo - nl - 1,
            None => inner.column() + lo,
        };
        let window = &data[lo..hi];
        let line_count = window.iter().filter(|&&b| b == b'\n').count() + 1;
        let span = SourceSpan::new((start + lo).into(), window.len());
        let line = inner.line() + newlines;
        Ok(Box::new(match inner.name() {
            Some(name) => MietteSpanContents::new_named(
                name.to_string(),
                window,
                span,
                line,
                column,
                line_count,
            ),
            None => MietteSpanContents::new(window, span, line, column, line_count),
        }))
    }
}

/// The nearest UTF-8 character boundary at or before (`up`: after) `at`.
fn char_boundary(data: &[u8], mut at: usize, up: bool) -> usize {
    let is_continuation = |i: usize| data.get(i).is_some_and(|b| b & 0xC0 == 0x80);
    while is_continuation(at) {
        if up {
            at += 1;
        } else {
            at -= 1;
        }
    }
    at.min(data.len())
}

/// `text` cut to at most `max` characters, saying how much was left out.
pub fn bound(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        None => text.to_string(),
        Some((cut, _)) => format!(
            "{}… ({} more bytes not shown)",
            &text[..cut],
            text.len() - cut
        ),
    }
}

/// A diagnostic as text, within [`MAX_OUTPUT`] bytes (what the handler
/// installed with `miette::set_hook` renders).
pub fn render(err: miette::Report) -> String {
    let text = format!("{:?}", miette::Report::new(Bounded(err)));
    if text.len() <= MAX_OUTPUT {
        return text;
    }
    let cut = char_boundary(text.as_bytes(), MAX_OUTPUT, false);
    format!(
        "{}\n… ({} more bytes of this diagnostic not shown)",
        &text[..cut],
        text.len() - cut
    )
}

/// The message of a diagnostic for the `--json` document, bounded.
pub fn message(err: &miette::Report) -> String {
    bound(&err.to_string(), MAX_MESSAGE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use miette::NamedSource;

    #[derive(Debug, thiserror::Error, Diagnostic)]
    #[error("bad value")]
    #[diagnostic(code(test::bad))]
    struct Bad {
        #[source_code]
        src: NamedSource<String>,
        #[label("here")]
        span: SourceSpan,
    }

    #[test]
    fn a_label_in_a_huge_line_renders_a_window() {
        let mut text = "é".repeat(40_000);
        let at = text.len();
        text.push_str("\"version\": 99");
        text.push_str(&"x".repeat(100_000));
        let err = miette::Report::new(Bad {
            src: NamedSource::new("flake.lock", text),
            span: SourceSpan::new(at.into(), 100_000),
        });
        let out = render(err);
        assert!(out.len() < MAX_OUTPUT, "{} bytes", out.len());
        assert!(out.contains("\"version\": 99"), "{out}");
        assert!(out.contains("bad value"));
    }

    #[test]
    fn bound_cuts_on_characters() {
        assert_eq!(bound("abc", 5), "abc");
        assert!(bound(&"é".repeat(10), 3).starts_with("ééé…"));
    }
}
