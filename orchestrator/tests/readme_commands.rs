//! The README's commands still exist: every `duet …` invocation the README and the topic files of
//! docs/ show — in their code blocks and in inline code — names subcommands the binary has and flags
//! those subcommands take, checked against `duet <subcommand> --help`. A renamed flag fails here,
//! not in a user's terminal. docs/history.md is left out: it records commands of older code.

use std::collections::HashMap;
use std::process::Command;

/// `duet <path> --help`, cached: its text, or `None` when the command does not exist.
struct Help(HashMap<Vec<String>, Option<String>>);

impl Help {
    fn of(&mut self, path: &[String]) -> Option<&str> {
        self.0
            .entry(path.to_vec())
            .or_insert_with(|| {
                let out = Command::new(env!("CARGO_BIN_EXE_duet")).args(path).arg("--help").output().expect("running duet");
                out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
            })
            .as_deref()
    }

    /// The subcommands a help text lists under `Commands:`.
    fn subcommands(text: &str) -> Vec<String> {
        text.lines()
            .skip_while(|l| !l.starts_with("Commands:"))
            .skip(1)
            .take_while(|l| l.starts_with("  "))
            .filter_map(|l| l.split_whitespace().next().map(str::to_string))
            .collect()
    }
}

/// Every `duet …` command line of the README: code blocks (with `\` continuations joined) and
/// inline code spans.
fn readme_commands(readme: &str) -> Vec<String> {
    let mut lines = Vec::new();
    let mut in_block = false;
    let mut pending = String::new();
    for line in readme.lines() {
        if line.trim_start().starts_with("```") {
            in_block = !in_block;
            continue;
        }
        if in_block {
            pending.push_str(line.trim_end().trim_end_matches('\\'));
            pending.push(' ');
            if !line.trim_end().ends_with('\\') {
                lines.push(std::mem::take(&mut pending));
            }
        } else {
            lines.extend(line.split('`').skip(1).step_by(2).map(str::to_string));
        }
    }
    let mut commands = Vec::new();
    for line in lines {
        // `duet` as a program: at the start, after a space or a path (`target/release/duet`).
        for (at, _) in line.match_indices("duet ") {
            let before = line[..at].chars().last();
            if before.is_none_or(|c| c == ' ' || c == '/' || c == '(' || c == '$') {
                let rest = &line[at + "duet ".len()..];
                let end = rest.find(['|', ';', '&', '>', ')']).unwrap_or(rest.len());
                commands.push(rest[..end].trim().to_string());
            }
        }
    }
    commands
}

/// What is wrong with the `duet` commands of `readme`, and how many commands were checked.
fn problems(readme: &str) -> (Vec<String>, usize) {
    let commands = readme_commands(readme);
    let mut help = Help(HashMap::new());
    let mut checked = 0;
    let mut problems = Vec::new();
    for command in &commands {
        let words: Vec<&str> = command.split_whitespace().collect();
        // Placeholders (`duet <cmd>`) and prose fragments are not commands.
        if words.first().is_none_or(|w| w.contains(['<', '…', '.']) || w.starts_with('"')) {
            continue;
        }
        checked += 1;
        let mut path: Vec<String> = Vec::new();
        for w in &words {
            let Some(text) = help.of(&path) else { break };
            if Help::subcommands(text).iter().any(|s| s == w) {
                path.push(w.to_string());
            } else {
                break;
            }
        }
        let Some(text) = help.of(&path).map(str::to_string) else {
            problems.push(format!("`duet {command}`: `duet {} --help` fails", path.join(" ")));
            continue;
        };
        if path.is_empty() && !words[0].starts_with('-') {
            problems.push(format!("`duet {command}`: `{}` is not a duet subcommand", words[0]));
            continue;
        }
        for flag in words.iter().filter(|w| w.starts_with("--")) {
            let flag = flag.split('=').next().unwrap_or(flag).trim_end_matches([',', '.', ':']);
            let listed = text.split(|c: char| c.is_whitespace() || c == ',' || c == '[').any(|t| t == flag || t.starts_with(&format!("{flag}=")) || t.starts_with(&format!("{flag} ")));
            if !listed && flag != "--help" {
                problems.push(format!("`duet {command}`: `duet {}` has no flag `{flag}`", path.join(" ")));
            }
        }
    }
    (problems, checked)
}

#[test]
fn every_duet_command_and_flag_the_readme_shows_exists() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).expect("README.md");
    let (problems, checked) = problems(&readme);
    eprintln!("checked {checked} duet commands of the README");
    assert!(checked >= 10, "checked only {checked} duet commands in the README: is the parser broken?");
    assert!(problems.is_empty(), "the README shows commands the binary does not have:\n{}", problems.join("\n"));
}

#[test]
fn every_duet_command_and_flag_the_docs_show_exists() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs");
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .expect("docs/")
        .map(|e| e.expect("docs/ entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "md") && p.file_name().is_some_and(|n| n != "history.md"))
        .collect();
    files.sort();
    let mut all = Vec::new();
    let mut checked = 0;
    for f in &files {
        let text = std::fs::read_to_string(f).expect("a docs file");
        let (problems, n) = problems(&text);
        checked += n;
        all.extend(problems.into_iter().map(|p| format!("{}: {p}", f.display())));
    }
    eprintln!("checked {checked} duet commands in {} docs files", files.len());
    assert!(checked >= 10, "checked only {checked} duet commands in docs/: is the parser broken?");
    assert!(all.is_empty(), "docs/ shows commands the binary does not have:\n{}", all.join("\n"));
}

#[test]
fn a_missing_subcommand_or_flag_is_reported() {
    let readme = "Run `duet models fetch` or\n```bash\ntarget/release/duet bench --suite x \\\n  --no-such-flag 3\nduet frobnicate --json\n```\n";
    let (problems, checked) = problems(readme);
    assert_eq!(checked, 3, "{problems:?}");
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(problems[0].contains("has no flag `--no-such-flag`"), "{problems:?}");
    assert!(problems[1].contains("`frobnicate` is not a duet subcommand"), "{problems:?}");
}
