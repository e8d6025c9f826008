//! Rollout safety, the pure part: how targets split into waves, when a wave passes, when a
//! rule halts, how many pushes its caps allow now. Table-tested without a database; the
//! scheduler (`schedule.rs`) and the operator's calls (`control.rs`) apply the answers.

use ota_wire::dto::FailureKind;
use ota_wire::rollout::{AdvancePolicy, HaltPolicy, HaltView, KindCount, RateCap, WaveOrder, WaveSpec};
use ota_wire::rules::RolloutPolicy;
use serde::{Deserialize, Serialize};

use crate::clock::from_ms;
use crate::error::{DomainError, Result};

/// At most this many waves after the canary.
pub const MAX_WAVES: usize = 20;
/// At most this many canary devices.
pub const MAX_CANARY: usize = 1000;

/// How many targets (after the canary) each wave holds, from cumulative shares: waves of
/// 10 %, 50 %, 100 % of 1,000 → [100, 400, 500]. The last wave takes whatever is left, so the
/// sizes always add up to `targets`. No waves: one wave of all.
pub fn wave_sizes(waves: &[WaveSpec], targets: u64) -> Vec<u64> {
    if waves.is_empty() {
        return vec![targets];
    }
    let mut out = Vec::with_capacity(waves.len());
    let mut taken = 0u64;
    for (i, w) in waves.iter().enumerate() {
        let cumulative = if i + 1 == waves.len() {
            targets
        } else {
            match (w.percent, w.count) {
                (Some(p), _) => (targets * u64::from(p)).div_ceil(100),
                (None, Some(c)) => c,
                (None, None) => targets,
            }
            .min(targets)
        };
        let size = cumulative.saturating_sub(taken);
        taken += size;
        out.push(size);
    }
    out
}

/// What the scheduler knows of the wave being pushed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WaveProgress {
    pub members: i64,
    pub succeeded: i64,
    pub failed: i64,
    /// When the wave started (Unix ms).
    pub started_at: i64,
}

/// Whether the next wave starts by itself now.
pub fn should_advance(p: &AdvancePolicy, w: &WaveProgress, now: i64) -> bool {
    let finished = w.succeeded + w.failed;
    let by_success = p.success_ratio.is_some_and(|ratio| {
        let needed = (ratio * w.members as f64).ceil() as i64;
        finished >= i64::from(p.min_finished).min(w.members) && w.succeeded >= needed
    });
    let by_soak = p.soak_s.is_some_and(|s| now - w.started_at >= i64::from(s) * 1000);
    by_success || by_soak
}

/// Failures of a rule, for its halt threshold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FailureCounts {
    pub succeeded: i64,
    /// Targets whose current attempt failed, by kind.
    pub failed_by_kind: Vec<(FailureKind, i64)>,
}

/// The halt a threshold calls for, if any: failures above the ratio or the count, once enough
/// targets finished.
pub fn halt_check(p: &HaltPolicy, c: &FailureCounts) -> Option<String> {
    let counted = |k: FailureKind| p.kinds.is_empty() || p.kinds.contains(&k);
    let failed: i64 = c.failed_by_kind.iter().filter(|(k, _)| counted(*k)).map(|(_, n)| n).sum();
    let all_failed: i64 = c.failed_by_kind.iter().map(|(_, n)| n).sum();
    let finished = c.succeeded + all_failed;
    if finished < i64::from(p.min_finished) {
        return None;
    }
    if let Some(max) = p.failure_count
        && failed > i64::try_from(max).unwrap_or(i64::MAX)
    {
        return Some(format!("failure_count {max}"));
    }
    match p.failure_ratio {
        Some(ratio) if finished > 0 && failed as f64 / finished as f64 > ratio => {
            Some(format!("failure_ratio {ratio}"))
        }
        _ => None,
    }
}

/// The last automatic halt, as stored on the rule (JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HaltRecord {
    pub at: i64,
    pub wave: u32,
    pub failed: i64,
    pub finished: i64,
    pub threshold: String,
    pub by_kind: Vec<(FailureKind, i64)>,
}

impl HaltRecord {
    pub fn new(at: i64, wave: u32, p: &HaltPolicy, c: &FailureCounts, threshold: String) -> HaltRecord {
        let counted = |k: FailureKind| p.kinds.is_empty() || p.kinds.contains(&k);
        let failed = c.failed_by_kind.iter().filter(|(k, _)| counted(*k)).map(|(_, n)| n).sum();
        let finished = c.succeeded + c.failed_by_kind.iter().map(|(_, n)| n).sum::<i64>();
        HaltRecord { at, wave, failed, finished, threshold, by_kind: c.failed_by_kind.clone() }
    }

    pub fn view(&self) -> HaltView {
        HaltView {
            at: from_ms(self.at),
            wave: self.wave,
            failed: self.failed,
            finished: self.finished,
            threshold: self.threshold.clone(),
            by_kind: self.by_kind.iter().map(|(kind, count)| KindCount { kind: *kind, count: *count }).collect(),
        }
    }
}

/// The rate the cap allows now, per minute: constant, or ramped up by `factor` each time
/// `every_succeeded` more targets succeeded.
pub fn rate_per_minute(r: &RateCap, succeeded: i64) -> u64 {
    let base = u64::from(r.per_minute);
    match &r.ramp {
        None => base,
        Some(ramp) => {
            let steps = (succeeded.max(0) as u64) / u64::from(ramp.every_succeeded.max(1));
            let ramped = base as f64 * ramp.factor.powi(i32::try_from(steps.min(1000)).unwrap_or(1000));
            (ramped.min(f64::from(ramp.max_per_minute)) as u64).max(base)
        }
    }
}

/// How many more pushes the caps allow now: `notified_last_minute` devices were notified in
/// the last 60 s and `in_flight` are on their way.
pub fn allowance(policy: &RolloutPolicy, succeeded: i64, notified_last_minute: i64, in_flight: i64) -> Option<u64> {
    let by_rate =
        policy.rate.as_ref().map(|r| rate_per_minute(r, succeeded).saturating_sub(notified_last_minute.max(0) as u64));
    let by_flight = policy.max_in_flight.map(|m| u64::from(m).saturating_sub(in_flight.max(0) as u64));
    match (by_rate, by_flight) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Who is in which wave: `members[0]` the canary, `members[k]` wave k (record ids, or device
/// ids for a preflight).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WavePlan {
    pub members: Vec<Vec<i64>>,
}

impl WavePlan {
    /// The wave pushed first: the canary when it has members.
    pub fn first_wave(&self) -> i64 {
        if self.members.first().is_some_and(|c| !c.is_empty()) { 0 } else { 1 }
    }
}

/// Splits targets `(id, device id, MAC, online)` into the canary and the waves: the canary's
/// named MACs (those that are targets), or `count` of the online targets at random; the rest
/// in a random order seeded by the rule's id (so a preflight shows the waves the start makes)
/// or in MAC order, cut by [`wave_sizes`].
pub fn plan_waves(policy: &RolloutPolicy, seed: i64, rows: &[(i64, i64, Option<String>, bool)]) -> Result<WavePlan> {
    use rand::SeedableRng;
    use rand::seq::SliceRandom;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed.unsigned_abs());
    let canary: std::collections::HashSet<i64> = match &policy.canary {
        None => Default::default(),
        Some(c) => match (&c.macs, c.count) {
            (Some(text), _) => {
                let named: std::collections::HashSet<String> = super::maclists::parse(text)?.macs.into_iter().collect();
                rows.iter().filter(|r| r.2.as_ref().is_some_and(|m| named.contains(m))).map(|r| r.0).collect()
            }
            (None, Some(n)) => {
                let mut online: Vec<i64> = rows.iter().filter(|r| r.3).map(|r| r.0).collect();
                online.shuffle(&mut rng);
                online.into_iter().take(n as usize).collect()
            }
            (None, None) => Default::default(),
        },
    };
    let mut rest: Vec<&(i64, i64, Option<String>, bool)> = rows.iter().filter(|r| !canary.contains(&r.0)).collect();
    match policy.wave_order {
        WaveOrder::Random => rest.shuffle(&mut rng),
        WaveOrder::Mac => rest.sort_by(|a, b| (&a.2, a.0).cmp(&(&b.2, b.0))),
    }
    let rest: Vec<i64> = rest.into_iter().map(|r| r.0).collect();
    let mut members = vec![{
        let mut c: Vec<i64> = canary.into_iter().collect();
        c.sort_unstable();
        c
    }];
    let mut at = 0usize;
    for size in wave_sizes(&policy.waves, rest.len() as u64) {
        let size = usize::try_from(size).unwrap_or(usize::MAX);
        members.push(rest[at..at + size].to_vec());
        at += size;
    }
    Ok(WavePlan { members })
}

fn invalid(field: &str, message: &str) -> DomainError {
    DomainError::invalid(&format!("policy.{field}"), message)
}

fn ratio_ok(r: f64) -> bool {
    r.is_finite() && (0.0..=1.0).contains(&r)
}

/// The bounds of the rollout-safety part of a policy (the schema states them).
pub fn check(p: &RolloutPolicy) -> Result<()> {
    if let Some(c) = &p.canary {
        match (&c.macs, c.count) {
            (Some(_), Some(_)) | (None, None) => return Err(invalid("canary", "give either `macs` or `count`")),
            (None, Some(n)) if n == 0 || n as usize > MAX_CANARY => {
                return Err(invalid("canary.count", "count must be 1–1000"));
            }
            (Some(text), None) => {
                let parsed = super::maclists::parse(text)?;
                if parsed.invalid_count > 0 || parsed.macs.is_empty() || parsed.macs.len() > MAX_CANARY {
                    return Err(invalid("canary.macs", "1–1000 MACs, every entry a MAC"));
                }
            }
            _ => {}
        }
    }
    if p.waves.len() > MAX_WAVES {
        return Err(invalid("waves", "at most 20 waves"));
    }
    let (mut last_percent, mut last_count) = (0u32, 0u64);
    for w in &p.waves {
        match (w.percent, w.count) {
            (Some(pc), None) if (1..=100).contains(&pc) && pc > last_percent => last_percent = pc,
            (None, Some(c)) if c >= 1 && c > last_count => last_count = c,
            (Some(_), Some(_)) | (None, None) => return Err(invalid("waves", "each wave gives `percent` or `count`")),
            _ => return Err(invalid("waves", "waves are cumulative: each larger than the one before (percent 1–100)")),
        }
    }
    if p.advance.success_ratio.is_some_and(|r| !ratio_ok(r)) {
        return Err(invalid("advance.success_ratio", "success_ratio must be 0–1"));
    }
    if p.advance.soak_s.is_some_and(|s| s > 30 * 86_400) {
        return Err(invalid("advance.soak_s", "soak_s must be at most 30 days"));
    }
    if let Some(h) = &p.halt {
        if h.failure_ratio.is_none() && h.failure_count.is_none() {
            return Err(invalid("halt", "give failure_ratio, failure_count or both"));
        }
        if h.failure_ratio.is_some_and(|r| !ratio_ok(r)) {
            return Err(invalid("halt.failure_ratio", "failure_ratio must be 0–1"));
        }
    }
    if let Some(r) = &p.rate {
        if !(1..=100_000).contains(&r.per_minute) {
            return Err(invalid("rate.per_minute", "per_minute must be 1–100000"));
        }
        if let Some(ramp) = &r.ramp {
            let ok = ramp.factor.is_finite()
                && ramp.factor > 1.0
                && ramp.factor <= 10.0
                && ramp.every_succeeded >= 1
                && (r.per_minute..=100_000).contains(&ramp.max_per_minute);
            if !ok {
                return Err(invalid(
                    "rate.ramp",
                    "factor must be above 1 and at most 10, every_succeeded at least 1, max_per_minute per_minute–100000",
                ));
            }
        }
    }
    if p.max_in_flight == Some(0) {
        return Err(invalid("max_in_flight", "max_in_flight must be at least 1"));
    }
    if p.jitter_s > 300 {
        return Err(invalid("jitter_s", "jitter_s must be at most 300"));
    }
    if let Some(z) = &p.time_zone
        && crate::window::parse_zone(z).is_none()
    {
        return Err(invalid("time_zone", "an IANA time zone name, e.g. Asia/Shanghai"));
    }
    Ok(())
}

/// What may change in a started rule's policy: not who is in which wave, nor its time zone.
pub fn check_started_change(old: &RolloutPolicy, new: &RolloutPolicy) -> std::result::Result<(), &'static str> {
    if old.canary != new.canary || old.waves != new.waves || old.time_zone != new.time_zone {
        return Err("once started, a rule's canary, waves and time_zone stay as they are");
    }
    Ok(())
}

/// A gateway's `push_rate` as a token bucket: tokens accrue at `rate` per second of the
/// clock, a scheduler round may push as many whole tokens as there are, and what it pushed is
/// taken off. A round that ran long (a slow claim, a busy database) leaves more for the next,
/// so the rate a rollout reaches is the configured one whenever devices are due, instead of a
/// fixed share per tick that a slow round loses; the bucket holds at most `burst` tokens, so a
/// quiet spell never turns into a burst larger than that.
#[derive(Debug, Clone, PartialEq)]
pub struct PushBudget {
    rate: f64,
    burst: f64,
    tokens: f64,
    at_ms: Option<i64>,
}

impl PushBudget {
    /// `rate` pushes a second; at most `burst` pushes in one round (at least 1).
    pub fn new(rate: u32, burst: u32) -> PushBudget {
        PushBudget { rate: f64::from(rate), burst: f64::from(burst.max(1)), tokens: 0.0, at_ms: None }
    }

    /// The budget for a round that starts at `now_ms` (the first round gets one burst).
    pub fn allow(&mut self, now_ms: i64) -> usize {
        self.tokens = match self.at_ms {
            None => self.burst,
            Some(at) => self.tokens + self.rate * (now_ms.saturating_sub(at).max(0) as f64) / 1000.0,
        }
        .min(self.burst);
        self.at_ms = Some(now_ms);
        if self.rate <= 0.0 { 0 } else { self.tokens.floor() as usize }
    }

    /// Takes off what a round pushed.
    pub fn spend(&mut self, pushed: usize) {
        self.tokens = (self.tokens - pushed as f64).max(0.0);
    }
}

#[cfg(test)]
mod tests {
    use ota_wire::rollout::{CanarySpec, Ramp};

    use super::*;

    fn pct(p: u32) -> WaveSpec {
        WaveSpec { percent: Some(p), count: None }
    }

    #[test]
    fn waves_split_cumulative_shares_and_the_last_takes_the_rest() {
        assert_eq!(wave_sizes(&[pct(10), pct(50), pct(100)], 1000), vec![100, 400, 500]);
        assert_eq!(wave_sizes(&[pct(10), pct(50)], 1000), vec![100, 900], "the last wave ends at 100 %");
        assert_eq!(wave_sizes(&[pct(10), pct(50), pct(100)], 7), vec![1, 3, 3]);
        let counts = [WaveSpec { percent: None, count: Some(5) }, WaveSpec { percent: None, count: Some(50) }];
        assert_eq!(wave_sizes(&counts, 20), vec![5, 15]);
        assert_eq!(wave_sizes(&[], 42), vec![42]);
        assert_eq!(wave_sizes(&[pct(10), pct(50), pct(100)], 0), vec![0, 0, 0]);
    }

    #[test]
    fn plans_put_named_or_random_online_canaries_first_and_split_the_rest() {
        let rows: Vec<(i64, i64, Option<String>, bool)> =
            (1..=20).map(|i| (i, 100 + i, Some(format!("5CCF7F0000{i:02}")), i % 2 == 0)).collect();
        let named = RolloutPolicy {
            canary: Some(CanarySpec { macs: Some("5CCF7F000003 5CCF7F000004 AABBCCDDEEFF".into()), count: None }),
            waves: vec![pct(50), pct(100)],
            ..RolloutPolicy::default()
        };
        let plan = plan_waves(&named, 7, &rows).unwrap();
        assert_eq!(plan.members[0], vec![3, 4], "the named MACs that are targets");
        assert_eq!((plan.members[1].len(), plan.members[2].len()), (9, 9));
        assert_eq!(plan.first_wave(), 0);
        assert_eq!(plan, plan_waves(&named, 7, &rows).unwrap(), "the same seed, the same waves");
        let all: std::collections::BTreeSet<i64> = plan.members.iter().flatten().copied().collect();
        assert_eq!(all.len(), 20, "every target in exactly one wave");
        let random =
            RolloutPolicy { canary: Some(CanarySpec { macs: None, count: Some(3) }), ..RolloutPolicy::default() };
        let plan = plan_waves(&random, 7, &rows).unwrap();
        assert_eq!(plan.members[0].len(), 3);
        assert!(plan.members[0].iter().all(|id| id % 2 == 0), "online ones");
        let plain = plan_waves(&RolloutPolicy::default(), 7, &rows).unwrap();
        assert_eq!((plain.first_wave(), plain.members[1].len()), (1, 20));
        // In MAC order (rows given in another order): the canary apart, then MAC ranges.
        let mut shuffled = rows.clone();
        shuffled.reverse();
        let by_mac = RolloutPolicy { wave_order: WaveOrder::Mac, ..named.clone() };
        let plan = plan_waves(&by_mac, 7, &shuffled).unwrap();
        assert_eq!(plan.members[0], vec![3, 4]);
        assert_eq!(plan.members[1], vec![1, 2, 5, 6, 7, 8, 9, 10, 11]);
        assert_eq!(plan.members[2], vec![12, 13, 14, 15, 16, 17, 18, 19, 20]);
    }

    #[test]
    fn a_wave_passes_on_its_success_ratio_after_enough_finished_or_after_its_soak() {
        let p = AdvancePolicy { success_ratio: Some(0.9), min_finished: 5, soak_s: None };
        let w = |succeeded, failed| WaveProgress { members: 10, succeeded, failed, started_at: 0 };
        assert!(!should_advance(&p, &w(8, 0), 0));
        assert!(should_advance(&p, &w(9, 0), 0));
        assert!(should_advance(&p, &w(9, 1), 0));
        // Below the minimum finished, however good.
        let small = AdvancePolicy { min_finished: 20, ..p };
        assert!(should_advance(&small, &w(10, 0), 0), "the minimum is capped by the wave's size");
        let strict = AdvancePolicy { success_ratio: Some(1.0), min_finished: 1, soak_s: None };
        assert!(!should_advance(&strict, &w(9, 1), 0));
        // Soak time alone.
        let soak = AdvancePolicy { success_ratio: None, min_finished: 1, soak_s: Some(60) };
        assert!(!should_advance(&soak, &w(0, 0), 59_999));
        assert!(should_advance(&soak, &w(0, 0), 60_000));
        // Neither: only by hand.
        let manual = AdvancePolicy { success_ratio: None, min_finished: 1, soak_s: None };
        assert!(!should_advance(&manual, &w(10, 0), i64::MAX));
    }

    #[test]
    fn a_rule_halts_only_above_its_threshold_after_enough_finished() {
        let p = HaltPolicy { failure_ratio: Some(0.05), failure_count: None, min_finished: 20, kinds: vec![] };
        let c = |ok, cut, timeout| FailureCounts {
            succeeded: ok,
            failed_by_kind: vec![(FailureKind::DownloadCut, cut), (FailureKind::Timeout, timeout)],
        };
        assert_eq!(halt_check(&p, &c(10, 5, 0)), None, "15 finished < 20");
        assert_eq!(halt_check(&p, &c(95, 5, 0)), None, "exactly 5 %: not above");
        assert_eq!(halt_check(&p, &c(94, 3, 3)).as_deref(), Some("failure_ratio 0.05"));
        let only_cut = HaltPolicy { kinds: vec![FailureKind::DownloadCut], ..p.clone() };
        assert_eq!(halt_check(&only_cut, &c(94, 3, 3)), None, "3 of 100 cut: 3 %");
        let count = HaltPolicy { failure_ratio: None, failure_count: Some(4), min_finished: 1, kinds: vec![] };
        assert_eq!(halt_check(&count, &c(0, 2, 2)), None);
        assert_eq!(halt_check(&count, &c(0, 2, 3)).as_deref(), Some("failure_count 4"));
        let r = HaltRecord::new(7, 1, &p, &c(94, 3, 3), "failure_ratio 0.05".into());
        assert_eq!((r.failed, r.finished), (6, 100));
        assert_eq!(r.view().by_kind.len(), 2);
    }

    #[test]
    fn rates_ramp_and_caps_combine() {
        let constant = RateCap { per_minute: 60, ramp: None };
        assert_eq!(rate_per_minute(&constant, 1_000), 60);
        let ramp =
            RateCap { per_minute: 10, ramp: Some(Ramp { factor: 2.0, every_succeeded: 50, max_per_minute: 100 }) };
        assert_eq!(rate_per_minute(&ramp, 49), 10);
        assert_eq!(rate_per_minute(&ramp, 50), 20);
        assert_eq!(rate_per_minute(&ramp, 150), 80);
        assert_eq!(rate_per_minute(&ramp, 10_000), 100, "up to its maximum");
        let p = RolloutPolicy { rate: Some(constant), max_in_flight: Some(200), ..RolloutPolicy::default() };
        assert_eq!(allowance(&p, 0, 50, 10), Some(10));
        assert_eq!(allowance(&p, 0, 0, 195), Some(5));
        assert_eq!(allowance(&p, 0, 70, 0), Some(0));
        assert_eq!(allowance(&RolloutPolicy::default(), 0, 70, 0), None, "no caps");
    }

    #[test]
    fn bad_policies_name_their_field() {
        let field = |p: RolloutPolicy| match check(&p) {
            Err(DomainError::Expected { details: Some(d), .. }) => d["field"].as_str().unwrap_or_default().to_owned(),
            other => panic!("{other:?}"),
        };
        let base = RolloutPolicy::default();
        assert!(check(&base).is_ok());
        let both = CanarySpec { macs: Some("5CCF7F000001".into()), count: Some(1) };
        assert_eq!(field(RolloutPolicy { canary: Some(both), ..base.clone() }), "policy.canary");
        let bad_mac = CanarySpec { macs: Some("nope".into()), count: None };
        assert_eq!(field(RolloutPolicy { canary: Some(bad_mac), ..base.clone() }), "policy.canary.macs");
        assert_eq!(field(RolloutPolicy { waves: vec![pct(50), pct(10)], ..base.clone() }), "policy.waves");
        assert_eq!(field(RolloutPolicy { waves: vec![pct(101)], ..base.clone() }), "policy.waves");
        let nan = AdvancePolicy { success_ratio: Some(f64::NAN), ..AdvancePolicy::default() };
        assert_eq!(field(RolloutPolicy { advance: nan, ..base.clone() }), "policy.advance.success_ratio");
        let empty_halt = HaltPolicy { failure_ratio: None, failure_count: None, min_finished: 1, kinds: vec![] };
        assert_eq!(field(RolloutPolicy { halt: Some(empty_halt), ..base.clone() }), "policy.halt");
        assert_eq!(field(RolloutPolicy { max_in_flight: Some(0), ..base.clone() }), "policy.max_in_flight");
        assert_eq!(field(RolloutPolicy { jitter_s: 301, ..base.clone() }), "policy.jitter_s");
        assert_eq!(field(RolloutPolicy { time_zone: Some("Mars/Olympus".into()), ..base.clone() }), "policy.time_zone");
        let slow_ramp =
            RateCap { per_minute: 10, ramp: Some(Ramp { factor: 1.0, every_succeeded: 1, max_per_minute: 20 }) };
        assert_eq!(field(RolloutPolicy { rate: Some(slow_ramp), ..base.clone() }), "policy.rate.ramp");
        let changed = RolloutPolicy { waves: vec![pct(10)], ..base.clone() };
        assert!(check_started_change(&base, &changed).is_err());
        let caps = RolloutPolicy { max_in_flight: Some(5), ..base.clone() };
        assert!(check_started_change(&base, &caps).is_ok());
    }

    #[test]
    fn the_push_budget_is_the_rate_over_the_clock_whatever_the_rounds_take() {
        // 500/s, rounds every 200 ms on a fake clock: 100 a round.
        let mut b = PushBudget::new(500, 1000);
        let mut now = 1_000_000;
        let first = b.allow(now);
        assert_eq!(first, 1000, "the first round gets one burst");
        b.spend(first);
        let mut pushed = 0;
        for _ in 0..50 {
            now += 200;
            let n = b.allow(now);
            assert_eq!(n, 100);
            b.spend(n);
            pushed += n;
        }
        assert_eq!(pushed, 500 * 10, "10 s at 500/s");
        // A round that ran 700 ms leaves 350 for the next, not a fixed 100.
        now += 700;
        assert_eq!(b.allow(now), 350);
        b.spend(350);
        // Nothing due for a minute: the bucket holds one burst, no more.
        now += 60_000;
        assert_eq!(b.allow(now), 1000);
        // What a round did not push stays for the next (within the burst).
        b.spend(400);
        now += 100;
        assert_eq!(b.allow(now), 650);
        // A clock that steps back adds nothing.
        b.spend(650);
        assert_eq!(b.allow(now - 5_000), 0);
        // Rate 0 pushes nothing.
        let mut zero = PushBudget::new(0, 10);
        assert_eq!(zero.allow(0), 0);
        assert_eq!(zero.allow(10_000), 0);
    }
}
