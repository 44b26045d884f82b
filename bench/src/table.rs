//! Result tables: printed aligned on stdout, appended as markdown to the results file.

use std::io::Write;
use std::path::Path;

pub struct Table {
    title: String,
    header: Vec<String>,
    rows: Vec<Vec<String>>,
    notes: Vec<String>,
}

impl Table {
    pub fn new(title: impl Into<String>, header: &[&str]) -> Self {
        Self {
            title: title.into(),
            header: header.iter().map(|s| s.to_string()).collect(),
            rows: Vec::new(),
            notes: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        assert_eq!(cells.len(), self.header.len(), "row width != header width");
        self.rows.push(cells);
    }

    /// A line printed under the table (method, targets, caveats).
    pub fn note(&mut self, text: impl Into<String>) {
        self.notes.push(text.into());
    }

    fn widths(&self) -> Vec<usize> {
        (0..self.header.len())
            .map(|i| {
                self.rows
                    .iter()
                    .map(|r| r[i].chars().count())
                    .chain([self.header[i].chars().count()])
                    .max()
                    .unwrap_or(0)
            })
            .collect()
    }

    pub fn text(&self) -> String {
        let widths = self.widths();
        // First column (a label) left-aligned, numbers right-aligned.
        let line = |cells: &[String]| {
            cells
                .iter()
                .zip(&widths)
                .enumerate()
                .map(|(i, (c, w))| {
                    if i == 0 {
                        format!("{c:<w$}")
                    } else {
                        format!("{c:>w$}")
                    }
                })
                .collect::<Vec<_>>()
                .join("  ")
                .trim_end()
                .to_string()
        };
        let total = widths.iter().sum::<usize>() + 2 * widths.len().saturating_sub(1);
        let mut out = format!("\n{}\n{}\n", self.title, "=".repeat(self.title.len()));
        out += &line(&self.header);
        out += "\n";
        out += &"-".repeat(total);
        out += "\n";
        for r in &self.rows {
            out += &line(r);
            out += "\n";
        }
        for n in &self.notes {
            out += &format!("  {n}\n");
        }
        out
    }

    pub fn markdown(&self) -> String {
        let mut out = format!("### {}\n\n", self.title);
        out += &format!("| {} |\n", self.header.join(" | "));
        let align: Vec<&str> = (0..self.header.len())
            .map(|i| if i == 0 { "---" } else { "---:" })
            .collect();
        out += &format!("| {} |\n", align.join(" | "));
        for r in &self.rows {
            out += &format!("| {} |\n", r.join(" | "));
        }
        if !self.notes.is_empty() {
            out += "\n";
            for n in &self.notes {
                out += &format!("- {n}\n");
            }
        }
        out + "\n"
    }

    /// Prints the table and appends it to `results` when given.
    pub fn emit(&self, results: Option<&Path>) -> anyhow::Result<()> {
        print!("{}", self.text());
        std::io::stdout().flush()?;
        if let Some(path) = results {
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)?;
            f.write_all(self.markdown().as_bytes())?;
        }
        Ok(())
    }
}

/// Formats a number with `decimals` places.
pub fn f(x: f64, decimals: usize) -> String {
    format!("{x:.decimals$}")
}

/// Microseconds as milliseconds with one decimal.
pub fn ms(us: u64) -> String {
    f(us as f64 / 1000.0, 1)
}
