//! Showing input back to a person safely: control characters (and the invisible characters
//! that reorder text) in echoed input are written as `\u{..}` escapes, so a crafted list,
//! name or file can't put terminal escape sequences into an operator's terminal or a log line.

/// Whether `c` must not reach a terminal or log as it is: C0 and C1 controls, DEL, and the
/// bidirectional-text controls that make text display in another order than it is read.
fn is_unsafe(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// `text` with every unsafe character (see above) replaced by its `\u{..}` escape.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if is_unsafe(c) {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    out
}

/// Like [`escape`], but keeps line breaks: for multi-line messages built by this program.
pub fn escape_keeping_lines(text: &str) -> String {
    text.split('\n').map(escape).collect::<Vec<_>>().join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_are_escaped_and_text_is_kept() {
        assert_eq!(escape("eth0"), "eth0");
        assert_eq!(escape("1.2.3.4\u{1b}[2J"), "1.2.3.4\\u{1b}[2J");
        assert_eq!(
            escape("a\0b\r\n\u{7f}\u{9b}"),
            "a\\u{0}b\\u{d}\\u{a}\\u{7f}\\u{9b}"
        );
        assert_eq!(escape("x\u{202e}y"), "x\\u{202e}y");
        assert_eq!(escape("Zürich 名前"), "Zürich 名前");
        assert_eq!(escape_keeping_lines("a\u{1b}\nb"), "a\\u{1b}\nb");
    }
}
