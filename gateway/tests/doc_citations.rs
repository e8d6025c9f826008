//! The repository is self-contained: code and docs cite only documents inside it.
//!
//! Device-protocol facts are cited by a heading of `proto-docs/device-protocol.md`, as
//! `device-protocol.md#<anchor>` in code or as a Markdown link in docs. This test scans every
//! `.rs`, `.md` and `.toml` file of the workspace (not `target/`, not `.git/`) and fails on
//! - a section sign followed by a number, unless it follows the name of a public standard
//!   (`RFC 9112 §2.2`, `MQTT 3.1.1 §4.7.1`), or the word "section" followed by a number (also in
//!   test names): numbered sections of an outside document, which a reader cannot follow;
//! - the name of the outside document the device protocol was first written from, or the phrase
//!   that pointed at it;
//! - a bare gap number (a capital G and one or two digits);
//! - a link or citation `<file>.md#<anchor>` (or `](#<anchor>)` inside a Markdown file) whose
//!   file is not in the repository or whose anchor is not a heading of that file, with anchors
//!   computed as GitHub computes them.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

const SECTION_SIGN: char = '\u{a7}';

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the gateway crate sits in the workspace").to_path_buf()
}

/// Every `.rs`, `.md` and `.toml` file under `dir`, skipping build output and VCS data.
fn scanned_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    entries.sort();
    for path in entries {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if path.is_dir() {
            if name != "target" && name != ".git" {
                scanned_files(&path, out);
            }
        } else if matches!(path.extension().and_then(|e| e.to_str()), Some("rs" | "md" | "toml")) {
            out.push(path);
        }
    }
}

fn is_word_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// True when the text right before a section sign names a public standard: `RFC <number>`
/// or MQTT `3.1.1`.
fn names_public_standard(before: &str) -> bool {
    let mut words = before.split_whitespace().rev().map(|w| w.trim_start_matches(|c: char| !c.is_alphanumeric()));
    match (words.next(), words.next()) {
        (Some("3.1.1"), _) => true,
        (Some(number), Some("RFC")) => number.chars().all(|c| c.is_ascii_digit()),
        _ => false,
    }
}

/// What is wrong with one line, as messages; empty when nothing is.
fn forbidden_citations(line: &str) -> Vec<String> {
    let mut found = Vec::new();
    for (i, c) in line.char_indices() {
        if c != SECTION_SIGN {
            continue;
        }
        let after = line[i + c.len_utf8()..].trim_start();
        if after.starts_with(|c: char| c.is_ascii_digit()) && !names_public_standard(&line[..i]) {
            found.push(format!("a numbered section ({c}{})", after.split_whitespace().next().unwrap_or_default()));
        }
    }
    let lower = line.to_lowercase();
    for (i, _) in lower.match_indices("section") {
        let rest = &lower[i + "section".len()..];
        let numbered = rest.strip_prefix([' ', '_']).is_some_and(|r| r.starts_with(|c: char| c.is_ascii_digit()));
        let word_start = lower[..i].chars().next_back().is_none_or(|c| !c.is_alphanumeric());
        if numbered && word_start {
            found.push(format!("a numbered section ({})", &lower[i..i + "section".len() + 2]));
        }
    }
    for phrase in [concat!("protocol", " reference"), concat!("gagent", "-protocol")] {
        if lower.contains(phrase) {
            found.push(format!("the outside document (`{phrase}`)"));
        }
    }
    let chars: Vec<char> = line.chars().collect();
    for (i, &c) in chars.iter().enumerate() {
        if c != 'G' || (i > 0 && is_word_char(chars[i - 1])) {
            continue;
        }
        let digits = chars[i + 1..].iter().take_while(|c| c.is_ascii_digit()).count();
        let end = i + 1 + digits;
        if (1..=2).contains(&digits) && chars.get(end).is_none_or(|&c| !is_word_char(c)) {
            found.push(format!("a gap number ({})", chars[i..end].iter().collect::<String>()));
        }
    }
    found
}

/// GitHub's anchor for a heading text: inline code marks and punctuation dropped (but `-` and
/// `_` kept), letters lowercased, each space a `-`.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            '-' | '_' => Some(c),
            c if c.is_alphanumeric() => Some(c),
            _ => None,
        })
        .collect()
}

/// The text of a Markdown heading line (`#` to `######`, then a space), without the marks.
fn heading_text(line: &str) -> Option<&str> {
    let hashes = line.chars().take_while(|&c| c == '#').count();
    if !(1..=6).contains(&hashes) {
        return None;
    }
    let rest = line[hashes..].strip_prefix(' ')?;
    Some(rest.trim_end().trim_end_matches('#').trim_end())
}

/// The anchors of a Markdown document in order, outside fenced blocks, with GitHub's `-1`,
/// `-2` … suffixes for repeated headings.
fn anchors(markdown: &str) -> Vec<String> {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut out = Vec::new();
    let mut fence: Option<&str> = None;
    for line in markdown.lines() {
        let trimmed = line.trim_start();
        if let Some(open) = fence {
            if trimmed.starts_with(open) {
                fence = None;
            }
            continue;
        }
        if trimmed.starts_with("```") {
            fence = Some("```");
            continue;
        }
        if trimmed.starts_with("~~~") {
            fence = Some("~~~");
            continue;
        }
        if let Some(text) = heading_text(line) {
            let base = slug(text);
            let n = seen.entry(base.clone()).or_insert(0);
            out.push(if *n == 0 { base } else { format!("{base}-{n}") });
            *n += 1;
        }
    }
    out
}

fn is_anchor_char(c: char) -> bool {
    c.is_alphanumeric() || c == '-' || c == '_'
}

fn is_path_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/')
}

/// Every cited `(document, anchor)` of a text: `<path>.md#<anchor>`, and `](#<anchor>)` as a
/// citation of `own` (the text's own file) when it is Markdown. An empty anchor (a placeholder
/// such as `#<anchor>`) is not a citation.
fn cited_anchors(text: &str, own: Option<&str>) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let marker = concat!(".md", "#");
    let mut from = 0;
    while let Some(pos) = text[from..].find(marker).map(|p| p + from) {
        let start =
            text[..pos].char_indices().rev().find(|&(_, c)| !is_path_char(c)).map_or(0, |(i, c)| i + c.len_utf8());
        let anchor: String = text[pos + marker.len()..].chars().take_while(|&c| is_anchor_char(c)).collect();
        let document = &text[start..pos + 3];
        let named = Path::new(document).file_stem().is_some_and(|s| s != ".md");
        if !anchor.is_empty() && named {
            out.push((document.to_string(), anchor));
        }
        from = pos + marker.len();
    }
    if let Some(own) = own {
        let marker = "](#";
        let mut from = 0;
        while let Some(pos) = text[from..].find(marker).map(|p| p + from) {
            let anchor: String = text[pos + marker.len()..].chars().take_while(|&c| is_anchor_char(c)).collect();
            if !anchor.is_empty() {
                out.push((own.to_string(), anchor));
            }
            from = pos + marker.len();
        }
    }
    out
}

/// The repository file a cited document name stands for: relative to the citing file, else
/// under `proto-docs/`, else from the root.
fn resolve(root: &Path, citing: &Path, document: &str) -> Option<PathBuf> {
    let name = Path::new(document).file_name()?;
    [citing.parent().map(|d| d.join(document)), Some(root.join("proto-docs").join(name)), Some(root.join(document))]
        .into_iter()
        .flatten()
        .find(|p| p.is_file())
}

#[test]
fn code_and_docs_cite_only_headings_that_exist() {
    let root = workspace_root();
    let mut files = Vec::new();
    scanned_files(&root, &mut files);
    assert!(files.iter().any(|f| f.ends_with("proto-docs/device-protocol.md")), "the device protocol is missing");

    let mut anchor_cache: BTreeMap<PathBuf, BTreeSet<String>> = BTreeMap::new();
    let mut problems = Vec::new();
    let mut citations = 0;
    for file in &files {
        let text = fs::read_to_string(file).unwrap();
        let shown = file.strip_prefix(&root).unwrap().display().to_string();
        let own = (file.extension().and_then(|e| e.to_str()) == Some("md")).then(|| shown.clone());
        for (n, line) in text.lines().enumerate() {
            for problem in forbidden_citations(line) {
                problems.push(format!("{shown}:{}: {problem}: {}", n + 1, line.trim()));
            }
            for (document, anchor) in cited_anchors(line, own.as_deref()) {
                citations += 1;
                let target = if own.as_deref() == Some(document.as_str()) {
                    Some(file.clone())
                } else {
                    resolve(&root, file, &document)
                };
                let Some(target) = target else {
                    problems.push(format!("{shown}:{}: cites `{document}`, which is not in the repository", n + 1));
                    continue;
                };
                let known = anchor_cache
                    .entry(target.clone())
                    .or_insert_with(|| anchors(&fs::read_to_string(&target).unwrap()).into_iter().collect());
                if !known.contains(&anchor) {
                    problems.push(format!("{shown}:{}: `{document}` has no heading with anchor `{anchor}`", n + 1));
                }
            }
        }
    }
    assert!(problems.is_empty(), "{} citation problem(s):\n{}", problems.len(), problems.join("\n"));
    assert!(citations > 100, "only {citations} citations found: is the scan looking at the right files?");
}

#[test]
fn every_heading_of_the_device_protocol_is_a_distinct_target() {
    let doc = fs::read_to_string(workspace_root().join("proto-docs/device-protocol.md")).unwrap();
    let all = anchors(&doc);
    let distinct: BTreeSet<_> = all.iter().collect();
    assert_eq!(all.len(), distinct.len(), "two headings share an anchor: {all:?}");
    assert!(all.iter().all(|a| !a.is_empty()), "a heading without an anchor: {all:?}");
}

#[test]
fn the_scanner_sees_what_it_must_refuse() {
    let sign = SECTION_SIGN;
    assert_eq!(forbidden_citations(&format!("see {sign}1.7 and {sign} 8")).len(), 2);
    assert!(forbidden_citations(&format!("RFC 9112 {sign}6.3 and MQTT 3.1.1 {sign}4.7.1")).is_empty());
    assert_eq!(forbidden_citations(&format!("the {} says", concat!("Protocol", " Reference"))).len(), 1);
    assert_eq!(forbidden_citations(&format!("in {}.md", concat!("gagent", "-protocol"))).len(), 1);
    assert_eq!(forbidden_citations(&format!("gap G{} and (G{})", 7, 16)).len(), 2);
    assert_eq!(forbidden_citations(&format!("fn golden_of_section_{}_4() and Section {}.5.2", 2, 3)).len(), 2);
    for fine in ["G123", "PG13", "G_1", "GA 04020006", "G", "a 4G modem", "flags `C2`", "sections of", "subsection 2"] {
        assert!(forbidden_citations(fine).is_empty(), "{fine}");
    }
}

#[test]
fn anchors_are_computed_as_github_does() {
    let doc = "# Device gateway: what GAgent devices see\n\
               ## 4.7 V4.1 check: `POST /dev/ota/v4.1/update_and_check/<did>`\n\
               ```sh\n# not a heading\n```\n\
               ### Open question: framing of `ser2cli_res`\n\
               ## Notes\n## Notes\n#NoSpace\n";
    assert_eq!(
        anchors(doc),
        [
            "device-gateway-what-gagent-devices-see",
            "47-v41-check-post-devotav41update_and_checkdid",
            "open-question-framing-of-ser2cli_res",
            "notes",
            "notes-1",
        ]
    );
}

#[test]
fn citations_are_found_and_a_missing_anchor_is_caught() {
    let hash = '#';
    let line = format!(
        "see [MQTT login](../proto-docs/device-protocol.md{hash}mqtt-login) and —device-protocol.md{hash}no-such-heading, \
         [here](#local), not device-protocol.md{hash}<anchor>"
    );
    let found = cited_anchors(&line, Some("README.md"));
    assert_eq!(
        found,
        [
            ("../proto-docs/device-protocol.md".to_string(), "mqtt-login".to_string()),
            ("device-protocol.md".to_string(), "no-such-heading".to_string()),
            ("README.md".to_string(), "local".to_string()),
        ]
    );
    let doc = fs::read_to_string(workspace_root().join("proto-docs/device-protocol.md")).unwrap();
    let known: BTreeSet<String> = anchors(&doc).into_iter().collect();
    assert!(known.contains("mqtt-login"));
    assert!(!known.contains("no-such-heading"));
}
