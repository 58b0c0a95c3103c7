//! Bad command-line input as one `error:` line that names the flag and its limit.

use std::fmt::Display;
use std::process::ExitCode;

use clap::error::ErrorKind;

/// `message` (which names a field in backticks, with its limit) followed by the flag that field
/// came from: the flag of the first backticked field found in `flags`, else every flag listed.
pub fn flag_error(message: impl Display, flags: &[(&str, &str)]) -> anyhow::Error {
    let message = message.to_string();
    let named = flags.iter().find(|(field, _)| message.contains(&format!("`{field}`")));
    match named {
        Some((_, flag)) => anyhow::anyhow!("{message} ({flag})"),
        None => {
            let all: Vec<&str> = flags.iter().map(|f| f.1).collect();
            anyhow::anyhow!("{message} ({})", all.join(" / "))
        }
    }
}

/// A command line clap refused, as one `error:` line on stderr and exit code 1 (help and version
/// print as clap prints them).
pub fn usage_error(e: clap::Error) -> ExitCode {
    if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand) {
        e.exit();
    }
    eprintln!("error: {} (see --help)", one_line(&e.render().to_string()));
    ExitCode::FAILURE
}

/// Clap's message without its usage and tips, on one line.
fn one_line(rendered: &str) -> String {
    let text = rendered.trim_start().strip_prefix("error: ").unwrap_or(rendered);
    let body = text.split("\n\n").next().unwrap_or(text);
    let lines: Vec<&str> = body.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with("Usage:")).collect();
    lines.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flag_of_the_named_field_follows_the_message() {
        let flags = [("max_tokens", "--max-tokens"), ("block_size", "--block-size")];
        let e = flag_error("`block_size` must be between 1 and 256, got 0", &flags);
        assert_eq!(e.to_string(), "`block_size` must be between 1 and 256, got 0 (--block-size)");
        assert_eq!(flag_error("odd", &flags).to_string(), "odd (--max-tokens / --block-size)");
    }

    #[test]
    fn clap_messages_become_one_line() {
        let rendered = "error: the following required arguments were not provided:\n  --prompt <PROMPT>\n\nUsage: duet generate --prompt <PROMPT>\n\nFor more information, try '--help'.\n";
        assert_eq!(one_line(rendered), "the following required arguments were not provided: --prompt <PROMPT>");
        let rendered = "error: invalid value 'x' for '--max-tokens <MAX_TOKENS>': invalid digit found in string\n\nFor more information, try '--help'.\n";
        assert_eq!(one_line(rendered), "invalid value 'x' for '--max-tokens <MAX_TOKENS>': invalid digit found in string");
    }
}
