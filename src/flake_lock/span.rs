//! Finding spans in the lock file's text: a small JSON scanner that locates
//! object members, and conversions between line/column and byte offsets.

use miette::SourceSpan;

/// If the byte at `at` is `}` or `]` preceded (ignoring whitespace) by a
/// comma, returns the comma's offset.
pub(super) fn trailing_comma(bytes: &[u8], at: usize) -> Option<usize> {
    if !matches!(bytes.get(at), Some(b'}' | b']')) {
        return None;
    }
    let before = bytes.get(..at)?;
    let i = before
        .iter()
        .rposition(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'))?;
    (before.get(i) == Some(&b',')).then_some(i)
}

pub(super) fn skip_json_ws(bytes: &[u8], mut i: usize) -> usize {
    while matches!(bytes.get(i), Some(b' ' | b'\t' | b'\n' | b'\r')) {
        i += 1;
    }
    i
}

/// Byte offset at which 1-based `line` starts, or `None` if `text` has
/// fewer lines (or `line` is 0). The line after a final newline starts at
/// `text.len()`.
pub(crate) fn line_start(text: &str, line: usize) -> Option<usize> {
    match line {
        0 => None,
        1 => Some(0),
        _ => text
            .bytes()
            .enumerate()
            .filter(|&(_, b)| b == b'\n')
            .nth(line - 2)
            .map(|(i, _)| i + 1),
    }
}

/// Converts serde_json's 1-based line and byte column to the offset of the
/// byte after the one it points at, clamped to the end of that line.
pub(super) fn next_unread_offset(text: &str, line: usize, column: usize) -> usize {
    let Some(line_start) = line_start(text, line.max(1)) else {
        return text.len();
    };
    let line_end = text
        .get(line_start..)
        .and_then(|rest| rest.find('\n'))
        .map_or(text.len(), |i| line_start + i + 1);
    line_start.saturating_add(column).min(line_end)
}

/// Byte offset of the byte a 1-based line and column point at, clamped to
/// the text and moved back onto a character boundary. A line past the
/// text's last (non-empty) line points at its last byte.
pub(crate) fn offset_of(text: &str, line: usize, column: usize) -> usize {
    let offset = match line_start(text, line) {
        Some(start) if start < text.len() => (start + column.saturating_sub(1)).min(text.len()),
        _ => text.len().saturating_sub(1),
    };
    floor_char_boundary(text, offset)
}

/// 1-based line and column (in characters) of byte `offset`.
pub(super) fn offset_to_line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before.get(line_start..).map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

pub(crate) fn floor_char_boundary(text: &str, mut offset: usize) -> usize {
    offset = offset.min(text.len());
    while offset > 0 && !text.is_char_boundary(offset) {
        offset -= 1;
    }
    offset
}

/// Which part of a located JSON member to point at.
#[derive(Clone, Copy)]
pub(super) enum Part {
    Key,
    Value,
}

/// Byte spans of an object member found by [`locate`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Located {
    pub(super) key: SourceSpan,
    pub(super) value: SourceSpan,
}

/// Finds the member at `path` (a sequence of object keys from the top-level
/// object) in JSON `text`. Returns `None` if it is not there or the text is
/// not well-formed enough to tell. Never panics; does not recurse.
pub(super) fn locate(text: &str, path: &[&str]) -> Option<Located> {
    let mut sc = Scanner {
        bytes: text.as_bytes(),
        pos: 0,
    };
    let (last, parents) = path.split_last()?;
    sc.skip_ws();
    for segment in parents {
        sc.find_member(text, segment)?;
        sc.skip_ws();
    }
    let key = sc.find_member(text, last)?;
    sc.skip_ws();
    let start = sc.pos;
    sc.skip_value()?;
    Some(Located {
        key: (key.0, key.1 - key.0).into(),
        value: (start, sc.pos - start).into(),
    })
}

pub(super) struct Scanner<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Scanner<'_> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.pos += 1;
        }
    }

    fn expect(&mut self, b: u8) -> Option<()> {
        if self.peek() == Some(b) {
            self.pos += 1;
            Some(())
        } else {
            None
        }
    }

    /// Skips a string starting at the current `"`; returns its span (with quotes).
    fn skip_string(&mut self) -> Option<(usize, usize)> {
        let start = self.pos;
        self.expect(b'"')?;
        loop {
            match self.peek()? {
                b'\\' => self.pos += 2,
                b'"' => {
                    self.pos += 1;
                    return Some((start, self.pos));
                }
                _ => self.pos += 1,
            }
        }
    }

    /// Skips one JSON value of any kind, tracking nesting without recursion.
    fn skip_value(&mut self) -> Option<()> {
        match self.peek()? {
            b'"' => self.skip_string().map(|_| ()),
            b'{' | b'[' => {
                let mut depth = 0usize;
                loop {
                    match self.peek()? {
                        b'"' => {
                            self.skip_string()?;
                        }
                        b'{' | b'[' => {
                            depth += 1;
                            self.pos += 1;
                        }
                        b'}' | b']' => {
                            depth = depth.checked_sub(1)?;
                            self.pos += 1;
                            if depth == 0 {
                                return Some(());
                            }
                        }
                        _ => self.pos += 1,
                    }
                }
            }
            _ => {
                let start = self.pos;
                while let Some(b) = self.peek() {
                    if matches!(b, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r') {
                        break;
                    }
                    self.pos += 1;
                }
                (self.pos > start).then_some(())
            }
        }
    }

    /// With the scanner at an object, finds the member `name` and leaves the
    /// scanner at its value. Returns the span of the key (with quotes).
    fn find_member(&mut self, text: &str, name: &str) -> Option<(usize, usize)> {
        self.expect(b'{')?;
        loop {
            self.skip_ws();
            if self.peek()? == b'}' {
                return None;
            }
            let (start, end) = self.skip_string()?;
            let key: String = serde_json::from_str(text.get(start..end)?).ok()?;
            self.skip_ws();
            self.expect(b':')?;
            self.skip_ws();
            if key == name {
                return Some((start, end));
            }
            self.skip_value()?;
            self.skip_ws();
            match self.peek()? {
                b',' => self.pos += 1,
                _ => return None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locate_finds_nested_members() {
        let text =
            r#"{ "a": [1, {"b": "}"}], "n\u0061me": { "x": "a\"b", "y" : { "z": -1.5e3 } } }"#;
        let loc = locate(text, &["name", "y", "z"]).unwrap();
        assert_eq!(&text[loc.value.offset()..][..loc.value.len()], "-1.5e3");
        assert_eq!(&text[loc.key.offset()..][..loc.key.len()], "\"z\"");
        let loc = locate(text, &["name", "x"]).unwrap();
        assert_eq!(&text[loc.value.offset()..][..loc.value.len()], "\"a\\\"b\"");
        let loc = locate(text, &["a"]).unwrap();
        assert_eq!(
            &text[loc.value.offset()..][..loc.value.len()],
            "[1, {\"b\": \"}\"}]"
        );
        assert_eq!(locate(text, &["name", "q"]), None);
        assert_eq!(locate(text, &["a", "b"]), None);
        assert_eq!(locate(text, &[]), None);
        assert_eq!(locate("{\"a\": ", &["a"]), None);
    }

    #[test]
    fn offsets_and_positions_are_clamped() {
        let text = "ab\ncé\n";
        assert_eq!(next_unread_offset(text, 1, 0), 0);
        assert_eq!(next_unread_offset(text, 1, 1), 1);
        assert_eq!(next_unread_offset(text, 2, 2), 5);
        assert_eq!(next_unread_offset(text, 2, 99), 7);
        assert_eq!(next_unread_offset(text, 9, 1), text.len());
        assert_eq!(next_unread_offset(text, 0, 0), 0);
        assert_eq!(next_unread_offset("", 1, 5), 0);
        assert_eq!(offset_of(text, 1, 1), 0);
        assert_eq!(offset_of(text, 1, 0), 0);
        assert_eq!(offset_of(text, 2, 2), 4);
        assert_eq!(offset_of(text, 2, 3), 4); // inside `é`
        assert_eq!(offset_of(text, 2, 99), text.len());
        assert_eq!(offset_of(text, 3, 1), text.len() - 1); // after the last newline
        assert_eq!(offset_of(text, 0, 1), text.len() - 1);
        assert_eq!(offset_of("", 1, 1), 0);
        assert_eq!(line_start(text, 3), Some(text.len()));
        assert_eq!(line_start(text, 4), None);
        assert_eq!(floor_char_boundary(text, 5), 4); // inside `é`
        assert_eq!(floor_char_boundary(text, 99), text.len());
        assert_eq!(offset_to_line_col(text, 0), (1, 1));
        assert_eq!(offset_to_line_col(text, 3), (2, 1));
        assert_eq!(offset_to_line_col(text, 6), (2, 3));
        assert_eq!(offset_to_line_col(text, 7), (3, 1));
        assert_eq!(trailing_comma(b"[1, ]", 4), Some(2));
        assert_eq!(trailing_comma(b"[1 ]", 3), None);
        assert_eq!(trailing_comma(b",", 0), None);
    }
}
