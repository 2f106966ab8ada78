//! What is being blocked: denials over a period counted by rule into time slots, drawn as a
//! server-rendered SVG (no script), and the most denied principals and assets. Pure: the
//! caller reads the trail and feeds the denials in.

use std::collections::HashMap;
use std::fmt::Write as _;

/// Bars in the chart.
pub const SLOTS: usize = 24;
/// Rules drawn in their own colour; the rest are added up as "other rules".
const SHOWN_RULES: usize = 6;
const COLOURS: [&str; SHOWN_RULES + 1] = [
    "#b42318", "#dc6803", "#1849a9", "#7a2e0e", "#6941c6", "#067647", "#667085",
];
const TOP: usize = 10;

/// One denial as the trail recorded it.
pub struct Denial<'a> {
    pub at_unix: i64,
    pub rule: &'a str,
    pub principal: &'a str,
    pub asset: Option<&'a str>,
}

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

/// Distinct principals, assets or rules counted by name; beyond this many, further names are
/// counted together, so a flood of unique paths cannot make a page hold unbounded memory.
const MAX_DISTINCT: usize = 10_000;
const OTHERS: &str = "(all others)";

/// Counts denials in `[end - period, end)` into `SLOTS` equal slots, one at a time.
pub struct Tallier {
    start: i64,
    end: i64,
    slot_secs: i64,
    rules: HashMap<String, Vec<u32>>,
    principals: HashMap<String, u32>,
    assets: HashMap<String, u32>,
    total: u32,
}

fn count_into(map: &mut HashMap<String, u32>, name: &str) {
    if let Some(n) = map.get_mut(name) {
        *n += 1;
    } else if map.len() < MAX_DISTINCT {
        map.insert(name.to_owned(), 1);
    } else {
        *map.entry(OTHERS.to_owned()).or_default() += 1;
    }
}

impl Tallier {
    pub fn new(end: i64, period_secs: i64) -> Tallier {
        let slot_secs = (period_secs / SLOTS as i64).max(1);
        Tallier {
            start: end - slot_secs * SLOTS as i64,
            end,
            slot_secs,
            rules: HashMap::new(),
            principals: HashMap::new(),
            assets: HashMap::new(),
            total: 0,
        }
    }

    /// The start of the period, as seconds since the epoch.
    pub fn start(&self) -> i64 {
        self.start
    }

    pub fn add(&mut self, d: Denial<'_>) {
        if d.at_unix < self.start || d.at_unix >= self.end {
            return;
        }
        let slot = ((d.at_unix - self.start) / self.slot_secs) as usize;
        let rule = if self.rules.contains_key(d.rule) || self.rules.len() < MAX_DISTINCT {
            d.rule
        } else {
            OTHERS
        };
        self.rules
            .entry(rule.to_owned())
            .or_insert_with(|| vec![0; SLOTS])[slot] += 1;
        count_into(&mut self.principals, d.principal);
        if let Some(a) = d.asset.filter(|a| !a.is_empty()) {
            count_into(&mut self.assets, a);
        }
        self.total += 1;
    }

    pub fn finish(self) -> Tally {
        let mut by_rule: Vec<(String, Vec<u32>)> = self.rules.into_iter().collect();
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
            start: self.start,
            slot_secs: self.slot_secs,
            by_rule,
            principals: top(self.principals),
            assets: top(self.assets),
            total: self.total,
        }
    }
}

/// All at once (the tests' form of `Tallier`).
pub fn tally<'a>(
    denials: impl IntoIterator<Item = Denial<'a>>,
    end: i64,
    period_secs: i64,
) -> Tally {
    let mut t = Tallier::new(end, period_secs);
    for d in denials {
        t.add(d);
    }
    t.finish()
}

fn top(counts: HashMap<String, u32>) -> Vec<(String, u32)> {
    let mut v: Vec<(String, u32)> = counts.into_iter().collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    v.truncate(TOP);
    v
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

    fn d<'a>(at: i64, rule: &'a str, who: &'a str, asset: Option<&'a str>) -> Denial<'a> {
        Denial {
            at_unix: at,
            rule,
            principal: who,
            asset,
        }
    }

    #[test]
    fn denials_are_counted_by_slot_and_rule_and_the_period_bounds_them() {
        let end = 24 * 3600;
        let t = tally(
            [
                d(0, "downloads.blocked", "alice", Some("dbfs:/a")),
                d(3600 + 5, "downloads.blocked", "alice", Some("dbfs:/a")),
                d(
                    3600 + 6,
                    "buckets.raw_blocked",
                    "sp-etl",
                    Some("s3://raw/x"),
                ),
                d(end - 1, "downloads.blocked", "bob", None),
                d(end, "downloads.blocked", "late", None),
                d(-1, "downloads.blocked", "early", None),
            ],
            end,
            24 * 3600,
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
        assert_eq!(t.principals[0], ("alice".to_owned(), 2));
        assert_eq!(t.assets[0], ("dbfs:/a".to_owned(), 2));
        assert!(!t
            .principals
            .iter()
            .any(|(p, _)| p == "late" || p == "early"));
    }

    #[test]
    fn rules_beyond_the_shown_ones_are_folded_into_other() {
        let rules: Vec<String> = (0..9).map(|i| format!("rule.{i}")).collect();
        let denials: Vec<Denial> = rules
            .iter()
            .enumerate()
            .flat_map(|(i, r)| (0..=i).map(move |_| d(10, r, "p", None)))
            .collect();
        let t = tally(denials, 3600, 3600);
        assert_eq!(t.by_rule.len(), SHOWN_RULES + 1);
        assert_eq!(t.by_rule[0].0, "rule.8");
        let other = t.by_rule.last().unwrap();
        assert_eq!(other.0, "other rules");
        assert_eq!(other.1.iter().sum::<u32>(), 1 + 2 + 3);
    }

    #[test]
    fn a_flood_of_unique_names_is_counted_without_holding_them_all() {
        let names: Vec<String> = (0..MAX_DISTINCT + 50)
            .map(|i| format!("dbfs:/tmp/{i}"))
            .collect();
        let t = tally(
            names.iter().map(|n| d(10, "downloads.blocked", n, Some(n))),
            3600,
            3600,
        );
        assert_eq!(t.total as usize, MAX_DISTINCT + 50);
        assert_eq!(t.assets[0], (OTHERS.to_owned(), 50));
        assert_eq!(t.principals[0], (OTHERS.to_owned(), 50));
    }

    #[test]
    fn the_chart_escapes_every_text_and_titles_each_segment() {
        let t = tally([d(10, "<script>x</script>", "p", None)], 3600, 3600);
        let svg = svg(&t);
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
        assert!(!svg.contains("<script>"));
        assert!(svg.contains("&lt;script&gt;x&lt;/script&gt;: 1</title>"));
    }
}
