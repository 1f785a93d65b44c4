//! The interactive SQL shell: line editing, history, multi-line statements ending in `;`,
//! and backslash commands (`\d`, `\d TABLE`, `\q`, `\?`).

use anyhow::Result;
use datafusion::prelude::SessionContext;
use rustyline::DefaultEditor;
use rustyline::error::ReadlineError;

use crate::output::{OutputFormat, print_dataframe};

const HELP: &str = "\
Statements end with ';' and may span lines.
  \\d            list tables and views with their columns
  \\d NAME       describe one table
  \\q            quit (or Ctrl-D)
  \\?            this help";

fn history_path() -> Option<std::path::PathBuf> {
    std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".filterdb_history"))
}

/// Describe the tables (`\d`) or one table (`\d NAME`).
pub async fn describe(ctx: &SessionContext, table: Option<&str>) -> Result<()> {
    let sql = match table {
        Some(t) => format!(
            "SELECT column_name, data_type, is_nullable FROM information_schema.columns \
             WHERE table_schema = 'public' AND table_name = '{}' ORDER BY ordinal_position",
            t.replace('\'', "''")
        ),
        None => "SELECT c.table_name, t.table_type, \
                 string_agg(c.column_name, ', ' ORDER BY c.ordinal_position) AS columns \
                 FROM information_schema.columns c JOIN information_schema.tables t \
                 ON c.table_catalog = t.table_catalog AND c.table_schema = t.table_schema \
                 AND c.table_name = t.table_name \
                 WHERE c.table_schema = 'public' GROUP BY c.table_name, t.table_type ORDER BY c.table_name"
            .to_string(),
    };
    print_dataframe(ctx.sql(&sql).await?, OutputFormat::Table).await?;
    Ok(())
}

/// Run the shell until `\q` or end of input.
pub async fn run(ctx: &SessionContext, format: OutputFormat) -> Result<()> {
    let mut rl = DefaultEditor::new()?;
    let history = history_path();
    if let Some(h) = &history {
        let _ = rl.load_history(h);
    }
    eprintln!("filterdb SQL shell: statements end with ';', \\? for help, \\q to quit.");
    let mut buffer = String::new();
    loop {
        let prompt = if buffer.is_empty() {
            "filterdb> "
        } else {
            "      -> "
        };
        match rl.readline(prompt) {
            Ok(line) => {
                let trimmed = line.trim();
                if buffer.is_empty() && trimmed.starts_with('\\') {
                    let _ = rl.add_history_entry(trimmed);
                    let mut parts = trimmed.split_whitespace();
                    match parts.next() {
                        Some("\\q") => break,
                        Some("\\?") | Some("\\h") => eprintln!("{HELP}"),
                        Some("\\d") => {
                            if let Err(e) = describe(ctx, parts.next()).await {
                                eprintln!("error: {e:#}");
                            }
                        }
                        Some(other) => eprintln!("unknown command {other}; \\? for help"),
                        None => {}
                    }
                    continue;
                }
                if trimmed.is_empty() && buffer.is_empty() {
                    continue;
                }
                buffer.push_str(&line);
                buffer.push('\n');
                if trimmed.ends_with(';') {
                    let stmt = std::mem::take(&mut buffer);
                    let _ = rl.add_history_entry(stmt.trim());
                    let started = std::time::Instant::now();
                    match ctx.sql(&stmt).await {
                        Ok(df) => match print_dataframe(df, format).await {
                            Ok(_) => eprintln!("({:.3} s)", started.elapsed().as_secs_f64()),
                            Err(e) => eprintln!("error: {e:#}"),
                        },
                        Err(e) => eprintln!("error: {e}"),
                    }
                }
            }
            Err(ReadlineError::Interrupted) => {
                buffer.clear();
            }
            Err(ReadlineError::Eof) => break,
            Err(e) => return Err(e.into()),
        }
    }
    if let Some(h) = &history {
        let _ = rl.save_history(h);
    }
    Ok(())
}
