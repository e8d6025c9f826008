//! The Markdown table, number formatting, percentiles and machine facts.

use std::time::Duration;

/// Rows of `| phase | figure | value | notes |`.
#[derive(Debug, Default)]
pub struct Table {
    rows: Vec<[String; 4]>,
}

impl Table {
    pub fn row(&mut self, phase: &str, figure: &str, value: impl Into<String>, notes: impl Into<String>) {
        self.rows.push([phase.to_owned(), figure.to_owned(), value.into(), notes.into()]);
    }

    pub fn render(&self) -> String {
        let mut out = String::from("| phase | figure | value | notes |\n|---|---|---:|---|\n");
        for [phase, figure, value, notes] in &self.rows {
            out.push_str(&format!("| {phase} | {figure} | {value} | {notes} |\n"));
        }
        out
    }
}

/// `12345.6` → `12,346`.
pub fn thousands(v: f64) -> String {
    let rounded = v.round();
    if !rounded.is_finite() {
        return "n/a".to_owned();
    }
    let digits = format!("{}", rounded.abs() as u64);
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    if rounded < 0.0 { format!("-{out}") } else { out }
}

pub fn per_second(count: u64, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64();
    if secs > 0.0 { count as f64 / secs } else { f64::NAN }
}

pub fn rate(count: u64, elapsed: Duration) -> String {
    format!("{} /s", thousands(per_second(count, elapsed)))
}

pub fn millis(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1000.0;
    if ms < 10.0 { format!("{ms:.2} ms") } else { format!("{ms:.1} ms") }
}

pub fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

pub fn kib(v: u64) -> String {
    format!("{:.1} MiB", v as f64 / 1024.0)
}

/// Prints the problems a bench found (or that there were none); `true` when there were none,
/// which makes the exit status.
pub fn problems(problems: &[String]) -> bool {
    if problems.is_empty() {
        println!("\nNo errors.");
        return true;
    }
    println!("\nProblems:");
    for p in problems {
        println!("- {p}");
    }
    false
}

/// Nearest-rank percentile of sorted samples.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// A `kB` field of `/proc/<pid>/status` (`self` for this process).
pub fn proc_status_kib(pid: &str, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The soft limit on open files of this process.
pub fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// Cores, CPU model, memory, kernel and the open-files limit.
pub fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cores = cpuinfo.lines().filter(|l| l.starts_with("processor")).count();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or("unknown CPU".to_owned(), |(_, m)| m.trim().to_owned());
    let mem = proc_meminfo_kib("MemTotal:").map_or("?".to_owned(), |k| format!("{:.1} GiB", k as f64 / 1048576.0));
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let files = open_files_limit().map_or("?".to_owned(), |n| n.to_string());
    format!("{cores} cores ({model}), {mem} RAM, Linux {}, open files limit {files} per process", kernel.trim())
}

fn proc_meminfo_kib(field: &str) -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_groups_digits() {
        assert_eq!(thousands(0.0), "0");
        assert_eq!(thousands(999.4), "999");
        assert_eq!(thousands(1000.0), "1,000");
        assert_eq!(thousands(1234567.0), "1,234,567");
    }

    #[test]
    fn nearest_rank_percentiles() {
        let samples: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&samples, 50.0), Duration::from_millis(50));
        assert_eq!(percentile(&samples, 99.0), Duration::from_millis(99));
        assert_eq!(percentile(&samples, 100.0), Duration::from_millis(100));
        assert_eq!(percentile(&[], 50.0), Duration::ZERO);
    }
}
