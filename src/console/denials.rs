//! What is being blocked: denials over a period counted by rule into time slots, drawn as a
//! server-rendered SVG (no script), and the most denied principals and assets. Pure: the
//! trail index counts, this draws.

use std::collections::HashMap;
use std::fmt::Write as _;

use crate::audit::index::DenialCounts;

/// Bars in the chart.
pub const SLOTS: usize = 24;
/// Rules drawn in their own colour; the rest are added up as "other rules".
const SHOWN_RULES: usize = 6;
const COLOURS: [&str; SHOWN_RULES + 1] = [
    "#b42318", "#dc6803", "#1849a9", "#7a2e0e", "#6941c6", "#067647", "#667085",
];
/// Principals and assets listed as the most denied.
pub const TOP: usize = 10;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tally {
    pub start: i64,
    pub slot_secs: i64,
    /// Per rule (most frequent first, the tail folded into "other rules"), a count per slot.
    pub by_rule: Vec<(String, Vec<u32>)>,
    pub principals: Vec<(String, u32)>,
    pub assets: Vec<(String, u32)>,
    pub total: u32,
}

/// The chart's period: `SLOTS` equal slots ending at `end` and covering at least
/// `period_secs`; returns its start and the slot length, in seconds.
pub fn period(end: i64, period_secs: i64) -> (i64, i64) {
    let slot_secs = (period_secs / SLOTS as i64).max(1);
    (end - slot_secs * SLOTS as i64, slot_secs)
}

impl Tally {
    /// The chart's data from the counts the trail index made for the period starting at
    /// `start`.
    pub fn of(counts: DenialCounts, start: i64, slot_secs: i64) -> Tally {
        let mut rules: HashMap<String, Vec<u32>> = HashMap::new();
        for (slot, rule, n) in counts.by_slot_and_rule {
            if slot < SLOTS {
                rules.entry(rule).or_insert_with(|| vec![0; SLOTS])[slot] += n;
            }
        }
        let mut by_rule: Vec<(String, Vec<u32>)> = rules.into_iter().collect();
        by_rule.sort_by(|a, b| {
            let sum = |c: &Vec<u32>| c.iter().sum::<u32>();
            sum(&b.1).cmp(&sum(&a.1)).then(a.0.cmp(&b.0))
        });
        if by_rule.len() > SHOWN_RULES {
            let rest = by_rule.split_off(SHOWN_RULES);
            let mut other = vec![0; SLOTS];
            for (_, counts) in rest {
                for (o, c) in other.iter_mut().zip(counts) {
                    *o += c;
                }
            }
            by_rule.push(("other rules".to_owned(), other));
        }
        Tally {
            start,
            slot_secs,
            by_rule,
            principals: counts.principals,
            assets: counts.assets,
            total: counts.total,
        }
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// Stacked bars, one per slot, one colour per rule, each segment titled with its count;
/// the legend names the rules. Every text is escaped.
pub fn svg(t: &Tally) -> String {
    const W: u32 = 960;
    const H: u32 = 220;
    const LEFT: u32 = 40;
    const BOTTOM: u32 = 24;
    let plot_h = H - BOTTOM - 8;
    let per_slot: Vec<u32> = (0..SLOTS)
        .map(|i| t.by_rule.iter().map(|(_, c)| c[i]).sum())
        .collect();
    let max = per_slot.iter().copied().max().unwrap_or(0).max(1);
    let bar_w = (W - LEFT) / SLOTS as u32;
    let legend_h = 20 * t.by_rule.len().div_ceil(3) as u32;
    let mut out = String::new();
    let _ = write!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {}" role="img" aria-label="Denials over time by rule" id="denials-chart">"#,
        H + legend_h + 8
    );
    let _ = write!(
        out,
        r##"<line x1="{LEFT}" y1="{y}" x2="{W}" y2="{y}" stroke="#d9dee7"/><text x="{x}" y="{ty}" font-size="11" text-anchor="end" fill="#5b6475">{max}</text><text x="{x}" y="{y}" font-size="11" text-anchor="end" fill="#5b6475">0</text>"##,
        y = H - BOTTOM,
        x = LEFT - 6,
        ty = 8 + 11,
    );
    for slot in 0..SLOTS {
        let x = LEFT + slot as u32 * bar_w;
        let mut y = H - BOTTOM;
        for (i, (rule, counts)) in t.by_rule.iter().enumerate() {
            let n = counts[slot];
            if n == 0 {
                continue;
            }
            let h = (n as u64 * plot_h as u64 / max as u64).max(1) as u32;
            y -= h;
            let _ = write!(
                out,
                r#"<rect x="{}" y="{y}" width="{}" height="{h}" fill="{}"><title>{}: {n}</title></rect>"#,
                x + 2,
                bar_w.saturating_sub(4),
                COLOURS[i.min(SHOWN_RULES)],
                escape(rule)
            );
        }
        if slot % 6 == 0 {
            let at = t.start + slot as i64 * t.slot_secs;
            let label = super::human::utc_of(at);
            let _ = write!(
                out,
                r##"<text x="{x}" y="{}" font-size="11" fill="#5b6475">{}</text>"##,
                H - 8,
                escape(label.get(5..16).unwrap_or(&label))
            );
        }
    }
    for (i, (rule, counts)) in t.by_rule.iter().enumerate() {
        let (col, row) = (i % 3, i / 3);
        let (x, y) = (LEFT + col as u32 * 300, H + 8 + row as u32 * 20);
        let _ = write!(
            out,
            r##"<rect x="{x}" y="{y}" width="12" height="12" fill="{}"/><text x="{}" y="{}" font-size="12" fill="#1d2330">{} ({})</text>"##,
            COLOURS[i.min(SHOWN_RULES)],
            x + 18,
            y + 11,
            escape(rule),
            counts.iter().sum::<u32>()
        );
    }
    out.push_str("</svg>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counts as the index makes them, from (seconds since the epoch, rule) pairs.
    fn counts(start: i64, slot_secs: i64, denials: &[(i64, &str)]) -> DenialCounts {
        let mut by: HashMap<(usize, String), u32> = HashMap::new();
        for (at, rule) in denials {
            *by.entry((((at - start) / slot_secs) as usize, rule.to_string()))
                .or_default() += 1;
        }
        DenialCounts {
            by_slot_and_rule: by.into_iter().map(|((s, r), n)| (s, r, n)).collect(),
            principals: vec![("alice".into(), 2)],
            assets: vec![("dbfs:/a".into(), 2)],
            total: denials.len() as u32,
        }
    }

    #[test]
    fn the_period_is_whole_slots_ending_now() {
        assert_eq!(period(24 * 3600, 24 * 3600), (0, 3600));
        assert_eq!(period(1000, 30), (1000 - 24, 1), "never a slot of 0 s");
    }

    #[test]
    fn denials_are_drawn_by_slot_and_rule() {
        let (start, slot) = period(24 * 3600, 24 * 3600);
        let t = Tally::of(
            counts(
                start,
                slot,
                &[
                    (0, "downloads.blocked"),
                    (3600 + 5, "downloads.blocked"),
                    (3600 + 6, "buckets.raw_blocked"),
                    (24 * 3600 - 1, "downloads.blocked"),
                ],
            ),
            start,
            slot,
        );
        assert_eq!(t.total, 4);
        assert_eq!(t.slot_secs, 3600);
        assert_eq!(t.by_rule[0].0, "downloads.blocked");
        assert_eq!(t.by_rule[0].1[0], 1);
        assert_eq!(t.by_rule[0].1[1], 1);
        assert_eq!(t.by_rule[0].1[23], 1);
        assert_eq!(
            t.by_rule[1],
            ("buckets.raw_blocked".to_owned(), {
                let mut v = vec![0; SLOTS];
                v[1] = 1;
                v
            })
        );
    }

    #[test]
    fn rules_beyond_the_shown_ones_are_folded_into_other() {
        let rules: Vec<String> = (0..9).map(|i| format!("rule.{i}")).collect();
        let denials: Vec<(i64, &str)> = rules
            .iter()
            .enumerate()
            .flat_map(|(i, r)| (0..=i).map(move |_| (10, r.as_str())))
            .collect();
        let t = Tally::of(counts(0, 150, &denials), 0, 150);
        assert_eq!(t.by_rule.len(), SHOWN_RULES + 1);
        assert_eq!(t.by_rule[0].0, "rule.8");
        let other = t.by_rule.last().unwrap();
        assert_eq!(other.0, "other rules");
        assert_eq!(other.1.iter().sum::<u32>(), 1 + 2 + 3);
    }

    #[test]
    fn the_chart_escapes_every_text_and_titles_each_segment() {
        let t = Tally::of(counts(0, 150, &[(10, "<script>x</script>")]), 0, 150);
        let svg = svg(&t);
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
        assert!(!svg.contains("<script>"));
        assert!(svg.contains("&lt;script&gt;x&lt;/script&gt;: 1</title>"));
    }
}
