//! The manifest grammar: a list of image refs as one ref a line, JSON Lines with a `ref`
//! field, or CSV with a `ref` column. The job API, `tagfleet run` and `tagfleet submit`
//! all read manifests through [`read`] (or [`parse`], its form for a text in memory), so
//! a manifest means the same everywhere.

use std::io::{BufRead, Read};

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// How a manifest is written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ManifestFormat {
    /// JSON Lines when the first line starts with `{`, CSV when it holds a comma,
    /// otherwise one ref per line.
    #[default]
    Auto,
    Lines,
    Jsonl,
    Csv,
}

/// A line of a manifest that could not be read. The reason never quotes the line: a
/// manifest holds refs, and errors travel to logs and API answers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct ManifestError {
    /// 1-based line number.
    pub line: usize,
    pub reason: String,
}

impl ManifestError {
    fn at(line: usize, reason: impl Into<String>) -> Self {
        Self {
            line,
            reason: reason.into(),
        }
    }
}

impl ManifestFormat {
    /// The format `text` is written in: itself, unless `Auto`.
    pub fn detect(self, text: &str) -> ManifestFormat {
        let first = text.lines().map(str::trim).find(|l| !l.is_empty());
        match (self, first) {
            (ManifestFormat::Auto, Some(l)) if l.starts_with('{') => ManifestFormat::Jsonl,
            (ManifestFormat::Auto, Some(l)) if l.contains(',') => ManifestFormat::Csv,
            (ManifestFormat::Auto, _) => ManifestFormat::Lines,
            (f, _) => f,
        }
    }
}

/// Longest line a manifest may hold, in bytes: a ref with room to spare. A longer one is
/// refused before it is buffered whole.
pub const MAX_LINE_BYTES: usize = 64 << 10;

/// Why a manifest could not be read to its end.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// A line that holds no ref.
    #[error(transparent)]
    Line(#[from] ManifestError),
    /// More refs than the reader takes: reading stopped at the first one too many.
    #[error("more than {0} refs")]
    TooManyRefs(usize),
    /// The source failed (a store, or a size limit wrapped around it).
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// The refs of a manifest, in order. Blank lines and, outside CSV, lines starting with
/// `#` are skipped; refs are trimmed. In a lines manifest a line may also be a JSON
/// object with a `ref`, as in JSON Lines.
pub fn parse(text: &str, format: ManifestFormat) -> Result<Vec<String>, ManifestError> {
    read(text.as_bytes(), format, usize::MAX).map_err(|e| match e {
        ReadError::Line(e) => e,
        // Neither happens with a text in memory and no ref limit.
        other => ManifestError::at(0, other.to_string()),
    })
}

/// The refs of the manifest `reader` yields, as [`parse`] reads them, read line by line:
/// at most `max_refs` are kept (one more is an error, and nothing after it is read) and no
/// line over [`MAX_LINE_BYTES`] is buffered. Memory follows the refs, not the input.
pub fn read<R: BufRead>(
    reader: R,
    format: ManifestFormat,
    max_refs: usize,
) -> Result<Vec<String>, ReadError> {
    let mut lines = LineReader::new(reader);
    // The first line with content decides the format; CSV reads the lines up to it again.
    let mut head = Vec::new();
    let (first_number, first) = loop {
        let Some((n, line)) = lines.next_line()? else {
            return Ok(Vec::new());
        };
        head.extend_from_slice(line.as_bytes());
        head.push(b'\n');
        if !line.trim().is_empty() {
            break (n, line.to_owned());
        }
    };
    let mut refs = Refs::new(max_refs);
    match format.detect(&first) {
        ManifestFormat::Csv => {
            read_csv(std::io::Cursor::new(head).chain(lines.reader), &mut refs)?;
        }
        format => {
            let json_only = format == ManifestFormat::Jsonl;
            refs.push_line(first_number, &first, json_only)?;
            while let Some((n, line)) = lines.next_line()? {
                refs.push_line(n, line, json_only)?;
            }
        }
    }
    Ok(refs.all)
}

/// Refs up to a limit.
struct Refs {
    all: Vec<String>,
    max: usize,
}

impl Refs {
    fn new(max: usize) -> Self {
        Self {
            all: Vec::new(),
            max,
        }
    }

    /// The ref of line `n` of a lines or JSON Lines manifest, if it holds one. No ref
    /// starts with `{`, so a lines manifest may hold JSON objects too.
    fn push_line(&mut self, n: usize, line: &str, json_only: bool) -> Result<(), ReadError> {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            return Ok(());
        }
        match json_only || line.starts_with('{') {
            true => self.push(json_ref(n, line)?),
            false => self.push(line.to_owned()),
        }
    }

    fn push(&mut self, r: String) -> Result<(), ReadError> {
        if self.all.len() >= self.max {
            return Err(ReadError::TooManyRefs(self.max));
        }
        self.all.push(r);
        Ok(())
    }
}

/// Lines of a reader, numbered from 1, each at most [`MAX_LINE_BYTES`] long.
struct LineReader<R> {
    reader: R,
    number: usize,
    buf: Vec<u8>,
}

impl<R: BufRead> LineReader<R> {
    fn new(reader: R) -> Self {
        Self {
            reader,
            number: 0,
            buf: Vec::new(),
        }
    }

    /// The next line without its end of line; `None` at the end.
    fn next_line(&mut self) -> Result<Option<(usize, &str)>, ReadError> {
        self.buf.clear();
        let read = (&mut self.reader)
            .take(MAX_LINE_BYTES as u64 + 1)
            .read_until(b'\n', &mut self.buf)?;
        if read == 0 {
            return Ok(None);
        }
        self.number += 1;
        if self.buf.last() == Some(&b'\n') {
            self.buf.pop();
        }
        if self.buf.len() > MAX_LINE_BYTES {
            let reason = format!("longer than {MAX_LINE_BYTES} bytes");
            return Err(ManifestError::at(self.number, reason).into());
        }
        let line = std::str::from_utf8(&self.buf)
            .map_err(|_| ManifestError::at(self.number, "not UTF-8 text"))?;
        Ok(Some((self.number, line.strip_suffix('\r').unwrap_or(line))))
    }
}

/// The `ref` of a JSON Lines line.
fn json_ref(n: usize, line: &str) -> Result<String, ManifestError> {
    let value: serde_json::Value =
        serde_json::from_str(line).map_err(|_| ManifestError::at(n, "not a JSON object"))?;
    value
        .get("ref")
        .and_then(|r| r.as_str())
        .map(|r| r.trim().to_owned())
        .ok_or_else(|| ManifestError::at(n, "no string field \"ref\""))
}

fn read_csv<R: Read>(text: R, refs: &mut Refs) -> Result<(), ReadError> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(true)
        .from_reader(text);
    let failed = |e: csv::Error, fallback: usize| -> ReadError {
        let line = e
            .position()
            .map_or(fallback, |p| usize::try_from(p.line()).unwrap_or(fallback));
        match e.into_kind() {
            csv::ErrorKind::Io(e) => ReadError::Io(e),
            _ => ManifestError::at(line, "not CSV text").into(),
        }
    };
    let headers = reader.headers().map_err(|e| failed(e, 1))?.clone();
    let column = headers
        .iter()
        .position(|h| h.trim() == "ref")
        .ok_or_else(|| ManifestError::at(1, "the header has no \"ref\" column"))?;
    for record in reader.records() {
        let record = record.map_err(|e| failed(e, 0))?;
        let line = record
            .position()
            .map_or(0, |p| usize::try_from(p.line()).unwrap_or(0));
        let r = record
            .get(column)
            .map(str::trim)
            .filter(|r| !r.is_empty())
            .ok_or_else(|| ManifestError::at(line, "no ref"))?;
        refs.push(r.to_owned())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifests_in_every_format_give_the_same_refs() {
        let want = vec!["s3://b/a.jpg".to_owned(), "s3://b/c d.png".to_owned()];
        let lines = "s3://b/a.jpg\n# a comment\n\ns3://b/c d.png\n";
        let jsonl = "{\"ref\":\"s3://b/a.jpg\"}\n\n{\"ref\":\"s3://b/c d.png\",\"sku\":7}\n";
        let csv = "sku,ref\n1,s3://b/a.jpg\n2,\"s3://b/c d.png\"\n";
        for text in [lines, jsonl, csv] {
            assert_eq!(parse(text, ManifestFormat::Auto).unwrap(), want, "{text}");
        }
    }

    #[test]
    fn bad_lines_are_named_without_their_content() {
        let e = parse(
            "{\"ref\":\"s3://b/a\"}\n{\"x\":\"s3://secret/b\"}\n",
            ManifestFormat::Auto,
        )
        .unwrap_err();
        assert_eq!(e.line, 2);
        assert!(!e.to_string().contains("secret"), "{e}");
        let e = parse("sku,path\n1,x\n", ManifestFormat::Csv).unwrap_err();
        assert!(e.reason.contains("\"ref\" column"), "{e}");
        let e = parse("sku,ref\n1,a.jpg\n2,\n", ManifestFormat::Csv).unwrap_err();
        assert_eq!((e.line, e.reason.as_str()), (3, "no ref"));
    }

    #[test]
    fn a_lines_manifest_may_mix_in_json_objects() {
        assert_eq!(
            parse("a.png\n{\"ref\": \"b.png\"}\n", ManifestFormat::Auto).unwrap(),
            ["a.png", "b.png"]
        );
        let e = parse("a.png\n{\"path\": 1}\n", ManifestFormat::Auto).unwrap_err();
        assert_eq!(e.line, 2);
    }

    #[test]
    fn an_explicit_format_is_not_second_guessed() {
        // A comma in a plain path is a path, when the manifest says it is lines.
        assert_eq!(
            parse("photos/a,b.jpg\n", ManifestFormat::Lines).unwrap(),
            ["photos/a,b.jpg"]
        );
    }

    /// An endless manifest: `line` over and over. Reading it to the end never ends.
    struct Endless(&'static [u8], usize);

    impl Read for Endless {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = buf.len().min(self.0.len() - self.1);
            buf[..n].copy_from_slice(&self.0[self.1..self.1 + n]);
            self.1 = (self.1 + n) % self.0.len();
            Ok(n)
        }
    }

    fn endless(line: &'static [u8]) -> std::io::BufReader<Endless> {
        std::io::BufReader::new(Endless(line, 0))
    }

    #[test]
    fn reading_stops_at_the_ref_limit_in_every_format() {
        for (format, line) in [
            (ManifestFormat::Auto, &b"s3://b/a.jpg\n"[..]),
            (ManifestFormat::Jsonl, b"{\"ref\":\"s3://b/a.jpg\"}\n"),
            (ManifestFormat::Csv, b"ref\ns3://b/a.jpg\n"),
        ] {
            let e = read(endless(line), format, 5).unwrap_err();
            assert!(matches!(e, ReadError::TooManyRefs(5)), "{format:?}: {e}");
        }
        let refs = read("a\nb\nc\n".as_bytes(), ManifestFormat::Auto, 3).unwrap();
        assert_eq!(refs, ["a", "b", "c"]);
    }

    #[test]
    fn an_endless_line_is_refused_without_being_buffered() {
        let e = read(endless(b"s3://b/aaaaaaaa"), ManifestFormat::Lines, 10).unwrap_err();
        match e {
            ReadError::Line(e) => assert_eq!((e.line, e.reason.contains("longer")), (1, true)),
            other => panic!("{other}"),
        }
        let e = read(&b"a\n\xff\xfe\n"[..], ManifestFormat::Auto, 10).unwrap_err();
        assert_eq!(e.to_string(), "line 2: not UTF-8 text");
    }

    #[test]
    fn read_and_parse_agree_and_lines_keep_their_numbers() {
        // CSV after blank lines: its line numbers count them.
        let text = "\n\nsku,ref\n1,s3://b/a.jpg\n2,\n";
        let e = read(text.as_bytes(), ManifestFormat::Auto, 10).unwrap_err();
        assert_eq!(e.to_string(), "line 5: no ref");
        let text = "\r\n  s3://b/a.jpg\r\n{\"ref\": \"s3://b/c.png\"}\r\n{\"x\":1}\n";
        assert_eq!(parse(text, ManifestFormat::Auto).unwrap_err().line, 4);
        let text = "\r\n  s3://b/a.jpg\r\n{\"ref\": \"s3://b/c.png\"}\r\n";
        assert_eq!(
            read(text.as_bytes(), ManifestFormat::Auto, 10).unwrap(),
            ["s3://b/a.jpg", "s3://b/c.png"]
        );
    }
}
