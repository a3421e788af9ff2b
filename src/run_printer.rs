//! What `tagfleet run` prints per image, as each result object is written: nothing of a
//! run is held until its end, so a run of a million images (embeddings included) needs
//! no more memory than a run of a hundred.
//!
//! JSON Lines go out as their task is written (in the order tasks finish); the table
//! keeps only the `--show` first images by name, the rest counted.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;

use tagfleet_contracts::Pseudonymiser;
use tagfleet_contracts::analyses::Color;
use tagfleet_contracts::schema::ResultLine;

use crate::inputs::Inputs;
use crate::run::Format;
use crate::terminal;

pub struct Printer<W: Write> {
    out: W,
    format: Format,
    /// The user's names of the images, by pseudonym: joined here, on the user's side.
    names: HashMap<String, String>,
    /// The table's rows, described: the `show` first names seen so far, in name order.
    table: BTreeMap<(String, u64), String>,
    show: usize,
    lines: u64,
}

impl<W: Write> Printer<W> {
    pub fn new(
        out: W,
        format: Format,
        show: usize,
        inputs: &Inputs,
        pseudonymiser: &Pseudonymiser,
    ) -> Self {
        let names = match format {
            Format::None => HashMap::new(),
            Format::Table | Format::Json => inputs
                .items
                .iter()
                .map(|i| (pseudonymiser.pseudonym(&i.reference), i.display.clone()))
                .collect(),
        };
        Self {
            out,
            format,
            names,
            table: BTreeMap::new(),
            show,
            lines: 0,
        }
    }

    /// One written task's lines: printed (JSON) or kept if among the first by name.
    pub fn task_written(&mut self, lines: Vec<ResultLine>) -> std::io::Result<()> {
        for line in lines {
            self.lines += 1;
            let name = self.names.get(&line.image).map_or("?", String::as_str);
            match self.format {
                Format::None => {}
                Format::Json => {
                    let mut value = serde_json::to_value(&line)?;
                    value["file"] = serde_json::Value::String(name.to_owned());
                    writeln!(self.out, "{}", terminal::json_line(&value))?;
                }
                Format::Table => {
                    let key = (name.to_owned(), self.lines);
                    let among_first = self.table.len() < self.show
                        || self
                            .table
                            .last_key_value()
                            .is_some_and(|(last, _)| key < *last);
                    if !among_first {
                        continue;
                    }
                    self.table.insert(key, describe(&line));
                    if self.table.len() > self.show {
                        self.table.pop_last();
                    }
                }
            }
        }
        Ok(())
    }

    /// Prints the table, once every task is in.
    pub fn finish(mut self) -> std::io::Result<()> {
        if self.format != Format::Table {
            return self.out.flush();
        }
        let rows: Vec<_> = self
            .table
            .iter()
            .map(|((name, _), row)| (terminal::escaped(name), row))
            .collect();
        let width = rows
            .iter()
            .map(|(n, _)| n.chars().count())
            .max()
            .unwrap_or(0);
        for (name, row) in rows {
            writeln!(self.out, "{name:width$}  {row}")?;
        }
        let hidden = self.lines.saturating_sub(self.table.len() as u64);
        if hidden > 0 {
            writeln!(
                self.out,
                "... and {hidden} more (see --show, or --format json)"
            )?;
        }
        self.out.flush()
    }
}

fn describe(line: &ResultLine) -> String {
    if let Some(e) = &line.error {
        return format!("error ({}): {}", e.kind, e.message);
    }
    let mut parts = Vec::new();
    if let Some(tags) = &line.tags {
        // Parent tags read as the model's tags' hierarchy: marked, after them.
        let tags: Vec<String> = tags
            .iter()
            .map(|t| {
                let mark = if t.parent { "^" } else { "" };
                format!("{mark}{} {:.2}", t.label, t.confidence)
            })
            .collect();
        parts.push(if tags.is_empty() {
            "no tag over the threshold".into()
        } else {
            tags.join(", ")
        });
    }
    if let Some(e) = &line.embedding {
        parts.push(format!("embedding[{}]", e.len()));
    }
    if let Some(categories) = &line.categories {
        let shown: Vec<String> = categories
            .iter()
            .map(|c| format!("{} {:.2}", c.name, c.confidence))
            .collect();
        parts.push(format!("[{}]", shown.join(", ")));
    }
    if let Some(colors) = &line.colors {
        let names = |list: &[Color]| {
            let names: Vec<&str> = list.iter().map(|c| c.name.as_str()).collect();
            names.join("/")
        };
        parts.push(format!(
            "colors {} (background {}, foreground {})",
            names(&colors.image),
            names(&colors.background),
            if colors.foreground.is_empty() {
                "-".into()
            } else {
                names(&colors.foreground)
            }
        ));
    }
    for crop in line.crops.iter().flatten() {
        parts.push(match (&crop.region, &crop.error) {
            (Some(r), _) => format!("{} {}x{}+{}+{}", crop.request, r.width, r.height, r.x, r.y),
            (None, error) => format!("{} none ({})", crop.request, error.as_deref().unwrap_or("")),
        });
    }
    parts.join("  ")
}

#[cfg(test)]
mod tests {
    use tagfleet_contracts::{ErrorKind, ImageError, TenantKey};

    use super::*;
    use crate::inputs::Input;

    /// Five images named e.d.c.b.a in the order they are written, each an error line
    /// (its message says which).
    fn run(format: Format, show: usize) -> (String, u64) {
        let pseudonymiser = Pseudonymiser::new(TenantKey::new(vec![7; 32]).unwrap());
        let names = ["e.jpg", "d.jpg", "c.jpg", "b.jpg", "a.jpg"];
        let inputs = Inputs {
            items: names
                .iter()
                .map(|n| Input {
                    reference: format!("file:///photos/{n}"),
                    display: (*n).to_owned(),
                })
                .collect(),
            ..Inputs::default()
        };
        let mut out = Vec::new();
        let mut printer = Printer::new(&mut out, format, show, &inputs, &pseudonymiser);
        for (i, input) in inputs.items.iter().enumerate() {
            let line = ResultLine::failed(
                pseudonymiser.pseudonym(&input.reference),
                "k".into(),
                "m@1".into(),
                ImageError::new(ErrorKind::Decode, format!("written {i}")),
            );
            printer.task_written(vec![line]).unwrap();
            if format == Format::Json {
                // Printed as it is written, not at the end.
                assert_eq!(printer.out.iter().filter(|b| **b == b'\n').count(), i + 1);
            }
        }
        let lines = printer.lines;
        printer.finish().unwrap();
        (String::from_utf8(out).unwrap(), lines)
    }

    #[test]
    fn the_table_keeps_the_first_names_only_and_counts_the_rest() {
        let (table, lines) = run(Format::Table, 2);
        assert_eq!(lines, 5);
        let rows: Vec<&str> = table.lines().collect();
        assert_eq!(rows.len(), 3, "{table}");
        assert!(
            rows[0].starts_with("a.jpg") && rows[0].contains("written 4"),
            "{table}"
        );
        assert!(
            rows[1].starts_with("b.jpg") && rows[1].contains("written 3"),
            "{table}"
        );
        assert_eq!(rows[2], "... and 3 more (see --show, or --format json)");
    }

    #[test]
    fn json_lines_go_out_as_tasks_are_written_with_their_file_names() {
        let (json, _) = run(Format::Json, 0);
        let files: Vec<String> = json
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["file"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect();
        assert_eq!(files, ["e.jpg", "d.jpg", "c.jpg", "b.jpg", "a.jpg"]);
    }

    #[test]
    fn none_prints_nothing() {
        assert_eq!(run(Format::None, 50).0, "");
    }
}
