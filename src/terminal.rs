//! Text from the user's files on their terminal. A file name may hold anything but `/` and
//! NUL: a newline that forges a line of the table, an escape sequence that clears the
//! screen or recolours what follows, a bidirectional override that shows `gpj.exe` as
//! `exe.jpg`. Names are escaped before they are printed, visibly and without loss.

use std::borrow::Cow;
use std::fmt::Write as _;

/// Characters a terminal acts on or that reorder what is shown: every control character
/// (C0, DEL, C1), the line and paragraph separators, and the invisible formatting
/// characters (bidirectional marks, embeddings, overrides and isolates, zero-width ones).
fn is_unsafe(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061C}'
                | '\u{200B}'..='\u{200F}'
                | '\u{2028}'..='\u{202E}'
                | '\u{2060}'..='\u{2069}'
                | '\u{FEFF}'
                | '\u{FFF9}'..='\u{FFFB}'
        )
}

/// `name` as it may be printed on a terminal: `\n`, `\r` and `\t` as such, other unsafe
/// characters as `\u{1b}`, and `\` doubled so that the escaping cannot be forged. A name
/// with none of these comes back borrowed, as it is.
pub fn escaped(name: &str) -> Cow<'_, str> {
    if !name.chars().any(|c| c == '\\' || is_unsafe(c)) {
        return Cow::Borrowed(name);
    }
    let mut out = String::with_capacity(name.len() + 8);
    for c in name.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if is_unsafe(c) => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// `value` as one line of JSON in which no character a terminal acts on appears raw.
/// serde_json escapes C0 controls already; DEL, C1 and the formatting characters are
/// valid raw in JSON strings, so they are written as `\uXXXX` too (outside strings JSON
/// has none of them). The value read back is the same.
pub fn json_line(value: &serde_json::Value) -> String {
    let text = value.to_string();
    if !text.chars().any(is_unsafe) {
        return text;
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if is_unsafe(c) {
            for unit in c.encode_utf16(&mut [0; 2]) {
                let _ = write!(out, "\\u{unit:04x}");
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_names_are_untouched() {
        for name in ["coffee.png", "été/Ünïcode 写真.jpg", "Mom's \"best\".png"] {
            assert!(matches!(escaped(name), Cow::Borrowed(n) if n == name));
        }
    }

    #[test]
    fn controls_escapes_and_bidi_overrides_are_shown_escaped() {
        assert_eq!(
            escaped("evil\n\x1b[31mred\x07.png"),
            r"evil\n\u{1b}[31mred\u{7}.png"
        );
        assert_eq!(escaped("csi\u{9b}2J\u{7f}.png"), r"csi\u{9b}2J\u{7f}.png");
        assert_eq!(escaped("photo\u{202e}gpj.exe"), r"photo\u{202e}gpj.exe");
        assert_eq!(escaped("a\tb\r\u{2028}"), r"a\tb\r\u{2028}");
        // A backslash is doubled, so a name that looks escaped is told apart.
        assert_eq!(escaped(r"a\n.png"), r"a\\n.png");
        for name in ["x\u{1b}]0;title\u{7}", "\u{9b}31m", "\u{200f}x"] {
            assert!(!escaped(name).chars().any(is_unsafe), "{name:?}");
        }
    }

    #[test]
    fn json_lines_keep_the_value_and_show_no_raw_control() {
        let name = "evil\n\x1b[31m\u{9b}2J\u{7f}\u{202e}gpj.png";
        let value = serde_json::json!({"file": name, "tags": ["a"]});
        let line = json_line(&value);
        assert!(!line.chars().any(is_unsafe), "{line:?}");
        let back: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(back, value);
        let plain = serde_json::json!({"file": "coffee.png"});
        assert_eq!(json_line(&plain), plain.to_string());
    }
}
