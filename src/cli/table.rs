//! Tables whose columns are as wide as their content; on a terminal, cut to its width (the
//! widest text column first, with an ellipsis). Piped output is never cut.

use std::io::IsTerminal;

/// Columns between two columns.
const GAP: &str = "  ";
/// The narrowest a shrunk column gets.
const SHRUNK_MIN: usize = 8;

pub struct Table {
    headers: Vec<&'static str>,
    /// Right-aligned (numbers).
    right: Vec<bool>,
    rows: Vec<Vec<String>>,
    /// The column cut first when the terminal is too narrow.
    shrink: usize,
}

impl Table {
    /// `columns`: header and whether it is right-aligned; `shrink`: the column to cut first.
    pub fn new(columns: &[(&'static str, bool)], shrink: usize) -> Table {
        Table {
            headers: columns.iter().map(|c| c.0).collect(),
            right: columns.iter().map(|c| c.1).collect(),
            rows: Vec::new(),
            shrink,
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// The lines to print: cut to the terminal when stdout is one.
    pub fn render(&self) -> Vec<String> {
        self.render_for(terminal_width())
    }

    /// The lines for a terminal `width` wide (None: no limit).
    pub fn render_for(&self, width: Option<usize>) -> Vec<String> {
        let n = self.headers.len();
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for r in &self.rows {
            for (i, c) in r.iter().enumerate().take(n) {
                widths[i] = widths[i].max(c.chars().count());
            }
        }
        if let Some(w) = width {
            let total: usize = widths.iter().sum::<usize>() + GAP.len() * (n - 1);
            if total > w {
                let over = total - w;
                let floor = SHRUNK_MIN.max(self.headers[self.shrink].len());
                widths[self.shrink] = widths[self.shrink].saturating_sub(over).max(floor);
            }
        }
        let mut lines = Vec::new();
        let header: Vec<String> = self.headers.iter().map(|h| h.to_string()).collect();
        for cells in std::iter::once(&header).chain(&self.rows) {
            let mut line = String::new();
            for (i, c) in cells.iter().enumerate().take(n) {
                if i > 0 {
                    line.push_str(GAP);
                }
                let c = cut(c, widths[i]);
                let pad = widths[i] - c.chars().count();
                if self.right[i] {
                    line.extend(std::iter::repeat_n(' ', pad));
                    line.push_str(&c);
                } else {
                    line.push_str(&c);
                    if i + 1 < n {
                        line.extend(std::iter::repeat_n(' ', pad));
                    }
                }
            }
            let line = line.trim_end().to_string();
            lines.push(match width {
                Some(w) => cut(&line, w),
                None => line,
            });
        }
        lines
    }
}

/// `text` in at most `width` characters, ending with an ellipsis when cut.
pub fn cut(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        return text.to_string();
    }
    let mut s: String = text.chars().take(width.saturating_sub(1)).collect();
    s.push('…');
    s
}

/// The width of the terminal stdout is, or None when stdout is not a terminal (a pipe, a file:
/// nothing is cut). `COLUMNS` wins over what the terminal says.
pub fn terminal_width() -> Option<usize> {
    if !std::io::stdout().is_terminal() {
        return None;
    }
    if let Some(c) = std::env::var("COLUMNS")
        .ok()
        .and_then(|c| c.trim().parse::<usize>().ok())
        .filter(|&c| c > 0)
    {
        return Some(c);
    }
    // What the terminal says, through `stty` (no `unsafe` ioctl outside engine/ and store/).
    std::process::Command::new("stty")
        .args(["-F", "/dev/tty", "size"])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| {
            let text = String::from_utf8_lossy(&o.stdout).into_owned();
            text.split_whitespace().nth(1)?.parse::<usize>().ok()
        })
        .filter(|&c| c > 0)
        .or(Some(80))
}
