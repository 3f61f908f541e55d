//! Schedules and retention, as pure functions of the policy, the copies and the time: when the
//! next scheduled copy is due, and which copies a policy no longer keeps.
//!
//! Owns the meaning of [`Policy`]: schedule names and intervals, UTC-aligned slots, the
//! hourly/daily/weekly/monthly/yearly buckets (the first copy of a period represents it, as in
//! snapper), the minimum count and age. Never touches a copy or reads a clock: the service
//! passes `now` and deletes what this module names.

use shadowcopy::protocol::{civil_date, parse_duration, Keep, Policy};
use uuid::Uuid;

const HOUR: u64 = 3600;
const DAY: u64 = 24 * HOUR;
/// 1970-01-01 was a Thursday; weeks start on Monday (ISO 8601), four days later.
const MONDAY_OFFSET: u64 = 4 * DAY;

/// A schedule: copies are due at `offset + k * every` (Unix seconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    /// Seconds between copies.
    pub every: u64,
    /// Where the slots start (weekly slots begin on Mondays, 00:00 UTC).
    pub offset: u64,
}

impl Schedule {
    /// `hourly`, `daily`, `weekly`, or `<n>s|m|h|d` (at least 1 s).
    pub fn parse(s: &str) -> Result<Schedule, String> {
        let every = match s {
            "hourly" => HOUR,
            "daily" => DAY,
            "weekly" => return Ok(Schedule { every: 7 * DAY, offset: MONDAY_OFFSET }),
            other => parse_duration(other).map_err(|e| format!("invalid schedule `{s}`: {e}; use hourly, daily, weekly or e.g. 15m"))?,
        };
        Ok(Schedule { every, offset: 0 })
    }

    /// The start of the slot `now` falls in.
    pub fn slot(&self, now: u64) -> u64 {
        if now < self.offset {
            return 0;
        }
        (now - self.offset) / self.every * self.every + self.offset
    }

    /// Whether a copy is due at `now`, given the newest scheduled copy's time: the current slot
    /// has none yet. A daemon that was down over several slots takes one copy, not one per slot.
    pub fn due(&self, newest: Option<u64>, now: u64) -> bool {
        newest.is_none_or(|t| t < self.slot(now))
    }

    /// When the next copy is due after `now`, given the newest scheduled copy's time.
    pub fn next(&self, newest: Option<u64>, now: u64) -> u64 {
        if self.due(newest, now) {
            now
        } else {
            self.slot(now) + self.every
        }
    }
}

/// Checks a policy before it is stored: a schedule that parses, and a retention that keeps
/// something (one that keeps nothing would delete each scheduled copy as it is taken).
pub fn validate(policy: &Policy) -> Result<(), String> {
    if let Some(s) = &policy.schedule {
        Schedule::parse(s)?;
    }
    let k = policy.keep;
    if k.hourly + k.daily + k.weekly + k.monthly + k.yearly + k.min_count == 0 && k.min_age_secs == 0 {
        return Err("this policy keeps nothing: every copy it owns would be deleted as soon as it is taken; \
                    give at least one of --keep-hourly/-daily/-weekly/-monthly/-yearly, --min-count or --min-age"
            .into());
    }
    Ok(())
}

/// A copy as retention sees it.
#[derive(Debug, Clone, Copy)]
pub struct Candidate {
    /// The copy.
    pub id: Uuid,
    /// When it was taken, Unix seconds.
    pub created: u64,
    /// The policy owns it (may delete it).
    pub owned: bool,
    /// It is exposed outside the mount (never deleted by retention).
    pub exposed: bool,
}

/// What retention decides for a volume's copies.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Decision {
    /// Owned copies to delete, oldest first.
    pub delete: Vec<Uuid>,
    /// Owned copies kept.
    pub kept: usize,
    /// Owned copies not kept but exposed, so not deleted.
    pub kept_exposed: usize,
}

/// The period (hour, day, week, month, year number) a time falls in.
type PeriodOf = fn(u64) -> i64;

/// Which owned copies `keep` no longer keeps at `now`. Copies not owned are neither kept nor
/// deleted: they are not the policy's.
pub fn decide(keep: &Keep, copies: &[Candidate], now: u64) -> Decision {
    let mut owned: Vec<&Candidate> = copies.iter().filter(|c| c.owned).collect();
    owned.sort_by_key(|c| (c.created, c.id));
    let mut kept = vec![false; owned.len()];
    // The newest `min_count`.
    for k in kept.iter_mut().rev().take(keep.min_count as usize) {
        *k = true;
    }
    // Younger than `min_age`.
    for (k, c) in kept.iter_mut().zip(&owned) {
        if now.saturating_sub(c.created) < keep.min_age_secs {
            *k = true;
        }
    }
    // The first copy of each of the newest N periods of each class.
    let classes: [(u32, PeriodOf); 5] = [
        (keep.hourly, |t| (t / HOUR) as i64),
        (keep.daily, |t| (t / DAY) as i64),
        (keep.weekly, |t| (t.saturating_sub(MONDAY_OFFSET) / (7 * DAY)) as i64),
        (keep.monthly, |t| {
            let (y, m, _) = civil_date(t);
            y * 12 + i64::from(m)
        }),
        (keep.yearly, |t| civil_date(t).0),
    ];
    for (limit, period) in classes {
        if limit == 0 {
            continue;
        }
        let mut firsts: Vec<usize> = Vec::new();
        let mut last_period = None;
        for (i, c) in owned.iter().enumerate() {
            let p = period(c.created);
            if last_period != Some(p) {
                firsts.push(i);
                last_period = Some(p);
            }
        }
        for &i in firsts.iter().rev().take(limit as usize) {
            kept[i] = true;
        }
    }
    let mut d = Decision::default();
    for (c, k) in owned.iter().zip(kept) {
        if k {
            d.kept += 1;
        } else if c.exposed {
            d.kept_exposed += 1;
        } else {
            d.delete.push(c.id);
        }
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-12-02 00:00:00 UTC, a Wednesday.
    const T0: u64 = 1_796_169_600;

    fn copy(n: u128, created: u64) -> Candidate {
        Candidate { id: Uuid::from_u128(n), created, owned: true, exposed: false }
    }

    #[test]
    fn schedules_parse_and_align_to_utc() {
        assert_eq!(civil_date(T0), (2026, 12, 2));
        let hourly = Schedule::parse("hourly").unwrap();
        assert_eq!(hourly.slot(T0 + 3599), T0);
        assert!(hourly.due(None, T0 + 5));
        assert!(!hourly.due(Some(T0 + 1), T0 + 3599));
        assert!(hourly.due(Some(T0 + 1), T0 + 3600));
        assert_eq!(hourly.next(Some(T0 + 1), T0 + 10), T0 + 3600);
        // Down for a day: one copy when it comes back, then the next full hour.
        assert!(hourly.due(Some(T0), T0 + DAY + 17));
        assert_eq!(hourly.next(Some(T0 + DAY + 17), T0 + DAY + 20), T0 + DAY + 3600);
        let weekly = Schedule::parse("weekly").unwrap();
        // Monday 2026-11-30 00:00 UTC.
        assert_eq!(weekly.slot(T0), T0 - 2 * DAY);
        assert_eq!(Schedule::parse("15m").unwrap().every, 900);
        assert_eq!(Schedule::parse("2d").unwrap().every, 2 * DAY);
        for bad in ["", "0m", "5", "m", "3x", "-1h", "99999999999999999999d", "fortnightly"] {
            assert!(Schedule::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_policy_that_keeps_nothing_is_refused() {
        assert!(validate(&Policy { schedule: Some("hourly".into()), keep: Keep::default() }).is_err());
        assert!(validate(&Policy { schedule: Some("hourly".into()), keep: Keep { min_count: 1, ..Keep::default() } }).is_ok());
        assert!(validate(&Policy { schedule: Some("often".into()), keep: Keep { hourly: 1, ..Keep::default() } }).is_err());
    }

    #[test]
    fn hourly_and_daily_keep_the_first_copy_of_each_period() {
        // Copies every 30 minutes for three days.
        let copies: Vec<Candidate> = (0..144).map(|i| copy(i, T0 + i as u64 * 1800)).collect();
        let now = T0 + 144 * 1800;
        let keep = Keep { hourly: 5, daily: 2, ..Keep::default() };
        let d = decide(&keep, &copies, now);
        let kept: Vec<u64> = copies.iter().filter(|c| !d.delete.contains(&c.id)).map(|c| c.created).collect();
        // The on-the-hour copies of the last five hours, and the midnight copies of the last two
        // days (days 2 and 3; day 1's first copy goes).
        let hours: Vec<u64> = (67..72).map(|h| T0 + h * HOUR).collect();
        let mut expected: Vec<u64> = vec![T0 + DAY, T0 + 2 * DAY];
        expected.extend(hours);
        expected.sort();
        assert_eq!(kept, expected);
        assert_eq!(d.kept, 7);
        assert_eq!(d.delete.len(), 144 - 7);
    }

    #[test]
    fn weekly_monthly_and_yearly_buckets() {
        // One copy a day for 400 days from 2026-12-02.
        let copies: Vec<Candidate> = (0..400).map(|i| copy(i, T0 + i as u64 * DAY + 600)).collect();
        let now = T0 + 400 * DAY;
        let kept_days = |keep: Keep| -> Vec<u64> {
            let d = decide(&keep, &copies, now);
            copies.iter().filter(|c| !d.delete.contains(&c.id)).map(|c| (c.created - T0) / DAY).collect()
        };
        // Weekly: Mondays (day 5 = 2026-12-07 is a Monday).
        let weeks = kept_days(Keep { weekly: 3, ..Keep::default() });
        assert_eq!(weeks, [383, 390, 397]);
        assert!(weeks.iter().all(|d| (d + 2) % 7 == 0), "{weeks:?} are Mondays");
        // Monthly: the first of the last two months (2027-12-01 is day 364, 2028-01-01 day 395).
        assert_eq!(kept_days(Keep { monthly: 2, ..Keep::default() }), [364, 395]);
        // Yearly: the first copy of 2026 (day 0), of 2027 (day 30) and of 2028 (day 395).
        assert_eq!(kept_days(Keep { yearly: 5, ..Keep::default() }), [0, 30, 395]);
    }

    #[test]
    fn min_count_min_age_ownership_and_exposure() {
        let mut copies: Vec<Candidate> = (0..10).map(|i| copy(i, T0 + i as u64 * HOUR)).collect();
        copies[0].owned = false;
        copies[1].exposed = true;
        let now = T0 + 10 * HOUR;
        let d = decide(&Keep { min_count: 2, min_age_secs: 3 * HOUR + 1, ..Keep::default() }, &copies, now);
        // Kept: the last three by age (7, 8, 9; min_count's two are among them); 1 exposed;
        // 0 is not the policy's.
        assert_eq!(d.delete, (2..7).map(Uuid::from_u128).collect::<Vec<_>>());
        assert_eq!((d.kept, d.kept_exposed), (3, 1));
        assert!(!d.delete.contains(&Uuid::from_u128(0)));
    }
}
