//! The manifest grammar: a list of image refs as one ref a line, JSON Lines with a `ref`
//! field, or CSV with a `ref` column. The job API, `tagfleet run` and `tagfleet submit`
//! all read manifests through [`parse`], so a manifest means the same everywhere.

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

/// The refs of a manifest, in order. Blank lines and, outside CSV, lines starting with
/// `#` are skipped; refs are trimmed. In a lines manifest a line may also be a JSON
/// object with a `ref`, as in JSON Lines.
pub fn parse(text: &str, format: ManifestFormat) -> Result<Vec<String>, ManifestError> {
    match format.detect(text) {
        // No ref starts with `{`, so a lines manifest may hold JSON objects too.
        ManifestFormat::Lines | ManifestFormat::Auto => content_lines(text)
            .map(|(n, line)| match line.starts_with('{') {
                true => json_ref(n, line),
                false => Ok(line.to_owned()),
            })
            .collect(),
        ManifestFormat::Jsonl => content_lines(text)
            .map(|(n, line)| json_ref(n, line))
            .collect(),
        ManifestFormat::Csv => parse_csv(text),
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

/// Non-blank, non-comment lines with their 1-based numbers, trimmed.
fn content_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines()
        .enumerate()
        .map(|(i, line)| (i + 1, line.trim()))
        .filter(|(_, line)| !line.is_empty() && !line.starts_with('#'))
}

fn parse_csv(text: &str) -> Result<Vec<String>, ManifestError> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(true)
        .from_reader(text.as_bytes());
    let line_of = |e: &csv::Error, fallback: usize| {
        e.position()
            .map_or(fallback, |p| usize::try_from(p.line()).unwrap_or(fallback))
    };
    let headers = reader
        .headers()
        .map_err(|e| ManifestError::at(line_of(&e, 1), "not CSV text"))?
        .clone();
    let column = headers
        .iter()
        .position(|h| h.trim() == "ref")
        .ok_or_else(|| ManifestError::at(1, "the header has no \"ref\" column"))?;
    let mut refs = Vec::new();
    for record in reader.records() {
        let record = record.map_err(|e| ManifestError::at(line_of(&e, 0), "not CSV text"))?;
        let line = record
            .position()
            .map_or(0, |p| usize::try_from(p.line()).unwrap_or(0));
        let r = record
            .get(column)
            .map(str::trim)
            .filter(|r| !r.is_empty())
            .ok_or_else(|| ManifestError::at(line, "no ref"))?;
        refs.push(r.to_owned());
    }
    Ok(refs)
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
}
