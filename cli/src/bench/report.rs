//! Reports of `oxmalloc bench`: markdown table, JSON and SVG chart.
//!
//! Invariants: these functions only read the results; every (workload, allocator) pair
//! appears in every report, with `-` (markdown), `null` (JSON) or no bar (SVG) where no run
//! succeeded. Ratios are taken between medians; the baseline is glibc when it ran, else the
//! first allocator. SVG text is XML-escaped.

use super::{Results, METRICS};
use serde_json::{json, Value};
use std::fmt::Write;

const COLORS: &[&str] = &[
    "#4e79a7", "#e15759", "#59a14f", "#f28e2b", "#b07aa1", "#76b7b2", "#edc948", "#9c755f",
];

fn baseline(r: &Results) -> usize {
    r.allocators
        .iter()
        .position(|a| a.name == "glibc")
        .unwrap_or(0)
}

fn fmt_value(metric: &str, v: Option<f64>) -> String {
    match v {
        None => "-".into(),
        Some(v) if metric == "peak_rss_kib" => format!("{:.1} MiB", v / 1024.0),
        Some(v) if v >= 100.0 => format!("{v:.0} ms"),
        Some(v) => format!("{v:.1} ms"),
    }
}

fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

fn fmt_ratio(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.2}x"))
}

fn best(r: &Results, wi: usize, metric: &str) -> Option<f64> {
    r.cells[wi]
        .iter()
        .filter_map(|c| c.median(metric))
        .min_by(f64::total_cmp)
}

/// The markdown report: one table per metric, rows = workloads.
pub fn markdown(r: &Results) -> String {
    let mut s = String::new();
    let base = baseline(r);
    let base_name = &r.allocators[base].name;
    let _ = writeln!(
        s,
        "## oxmalloc bench: median of {} run(s){}, {} cpu(s)\n",
        r.runs,
        if r.quick { ", quick" } else { "" },
        r.ncpu
    );
    for (metric, title) in METRICS {
        let _ = writeln!(s, "### {title}\n");
        let mut header = vec!["workload".to_string()];
        header.extend(r.allocators.iter().map(|a| a.name.clone()));
        let others: Vec<usize> = (0..r.allocators.len()).filter(|&i| i != base).collect();
        header.extend(
            others
                .iter()
                .map(|&i| format!("{}/{base_name}", r.allocators[i].name)),
        );
        header.extend(r.allocators.iter().map(|a| format!("{}/best", a.name)));
        let _ = writeln!(s, "| {} |", header.join(" | "));
        let _ = writeln!(
            s,
            "|{}",
            std::iter::once("---|")
                .chain(std::iter::repeat("---:|").take(header.len() - 1))
                .collect::<String>()
        );
        for (wi, w) in r.workloads.iter().enumerate() {
            let med: Vec<Option<f64>> = r.cells[wi].iter().map(|c| c.median(metric)).collect();
            let b = best(r, wi, metric);
            let mut row = vec![w.name.clone()];
            row.extend(med.iter().map(|&m| fmt_value(metric, m)));
            row.extend(others.iter().map(|&i| fmt_ratio(ratio(med[i], med[base]))));
            row.extend(med.iter().map(|&m| fmt_ratio(ratio(m, b))));
            let _ = writeln!(s, "| {} |", row.join(" | "));
        }
        s.push('\n');
    }
    if !r.problems.is_empty() {
        let _ = writeln!(s, "### problems\n");
        for p in &r.problems {
            let _ = writeln!(s, "- {p}");
        }
        s.push('\n');
    }
    s
}

/// All raw runs and medians.
pub fn json(r: &Results) -> Value {
    let mut results = Vec::new();
    for (wi, w) in r.workloads.iter().enumerate() {
        for (ai, a) in r.allocators.iter().enumerate() {
            let cell = &r.cells[wi][ai];
            let runs: Vec<Value> = cell
                .runs
                .iter()
                .map(|run| {
                    let mut v = json!({
                        "wall_ms": run.wall_ms,
                        "cpu_ms": run.cpu_ms,
                        "peak_rss_kib": run.peak_rss_kib,
                        "checksum": run.checksum,
                        "error": run.error,
                    });
                    if !run.timeline.is_empty() {
                        v["timeline"] = json!(run
                            .timeline
                            .iter()
                            .map(|&(t, k)| json!([t, k]))
                            .collect::<Vec<_>>());
                        v["phases"] = json!(run
                            .phases
                            .iter()
                            .map(|(n, t)| json!({"phase": n, "t_ms": t}))
                            .collect::<Vec<_>>());
                    }
                    v
                })
                .collect();
            let mut median = serde_json::Map::new();
            for (metric, _) in METRICS {
                median.insert(metric.to_string(), json!(cell.median(metric)));
            }
            results.push(json!({
                "workload": w.name,
                "allocator": a.name,
                "median": median,
                "runs": runs,
            }));
        }
    }
    json!({
        "runs": r.runs,
        "quick": r.quick,
        "scale": r.scale,
        "ncpu": r.ncpu,
        "baseline": r.allocators[baseline(r)].name,
        "workloads": r.workloads.iter().map(|w| w.name.clone()).collect::<Vec<_>>(),
        "allocators": r.allocators.iter().map(|a| json!({
            "name": a.name,
            "library": a.lib.as_ref().map(|l| l.display().to_string()),
        })).collect::<Vec<_>>(),
        "results": results,
        "problems": r.problems,
    })
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Bar charts of the ratio to the baseline per metric, and the fragmentation RSS timeline.
pub fn svg(r: &Results) -> String {
    let base = baseline(r);
    let na = r.allocators.len();
    let nw = r.workloads.len();
    let bar = 9.0;
    let group = na as f64 * bar + 14.0;
    let left = 60.0;
    let plot_h = 180.0;
    let panel_h = plot_h + 130.0;
    let width = (left + nw as f64 * group + 20.0).max(640.0);
    let timeline_wi = r
        .workloads
        .iter()
        .position(|w| w.name == "fragmentation")
        .filter(|&wi| {
            r.cells[wi]
                .iter()
                .any(|c| c.runs.iter().any(|x| !x.timeline.is_empty()))
        });
    let legend_h = 30.0;
    let height = legend_h
        + METRICS.len() as f64 * panel_h
        + if timeline_wi.is_some() { panel_h } else { 0.0 };
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    for (ai, a) in r.allocators.iter().enumerate() {
        let x = left + ai as f64 * 110.0;
        let _ = writeln!(
            s,
            r#"<rect x="{x:.1}" y="10" width="10" height="10" fill="{}"/><text x="{:.1}" y="19">{}</text>"#,
            COLORS[ai % COLORS.len()],
            x + 14.0,
            esc(&a.name)
        );
    }
    for (mi, (metric, title)) in METRICS.iter().enumerate() {
        let top = legend_h + mi as f64 * panel_h + 25.0;
        let ratios: Vec<Vec<Option<f64>>> = (0..nw)
            .map(|wi| {
                let b = r.cells[wi][base].median(metric);
                r.cells[wi]
                    .iter()
                    .map(|c| ratio(c.median(metric), b))
                    .collect()
            })
            .collect();
        let max = ratios
            .iter()
            .flatten()
            .flatten()
            .fold(1.0f64, |m, &v| m.max(v))
            .min(10.0)
            * 1.1;
        let y = |v: f64| top + plot_h - (v.min(max) / max) * plot_h;
        let _ = writeln!(
            s,
            r#"<text x="{left}" y="{:.1}" font-size="13" font-weight="bold">{} relative to {} (lower is better)</text>"#,
            top - 8.0,
            esc(title),
            esc(&r.allocators[base].name)
        );
        let _ = writeln!(
            s,
            r#"<line x1="{left}" y1="{top:.1}" x2="{left}" y2="{:.1}" stroke="black"/><line x1="{left}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="black"/>"#,
            top + plot_h,
            top + plot_h,
            width - 10.0,
            top + plot_h
        );
        for tick in [0.5, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0] {
            if tick <= max {
                let _ = writeln!(
                    s,
                    r#"<line x1="{left}" y1="{0:.1}" x2="{1:.1}" y2="{0:.1}" stroke="{2}" stroke-dasharray="{3}"/><text x="{4:.1}" y="{5:.1}" text-anchor="end">{tick}x</text>"#,
                    y(tick),
                    width - 10.0,
                    if tick == 1.0 { "#333" } else { "#ddd" },
                    if tick == 1.0 { "4,3" } else { "2,2" },
                    left - 4.0,
                    y(tick) + 4.0
                );
            }
        }
        for (wi, w) in r.workloads.iter().enumerate() {
            let gx = left + 7.0 + wi as f64 * group;
            for (ai, v) in ratios[wi].iter().enumerate() {
                if let Some(v) = v {
                    let x = gx + ai as f64 * bar;
                    let _ = writeln!(
                        s,
                        r#"<rect x="{x:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{}"><title>{} {}: {v:.2}x</title></rect>"#,
                        y(*v),
                        bar - 1.0,
                        top + plot_h - y(*v),
                        COLORS[ai % COLORS.len()],
                        esc(&w.name),
                        esc(&r.allocators[ai].name)
                    );
                }
            }
            let lx = gx + na as f64 * bar / 2.0;
            let ly = top + plot_h + 12.0;
            let _ = writeln!(
                s,
                r#"<text x="{lx:.1}" y="{ly:.1}" text-anchor="end" transform="rotate(-40 {lx:.1} {ly:.1})">{}</text>"#,
                esc(&w.name)
            );
        }
    }
    if let Some(wi) = timeline_wi {
        let top = legend_h + METRICS.len() as f64 * panel_h + 25.0;
        let lines: Vec<(usize, &[(u64, u64)])> = r.cells[wi]
            .iter()
            .enumerate()
            .filter_map(|(ai, c)| {
                c.runs
                    .iter()
                    .find(|x| !x.timeline.is_empty())
                    .map(|x| (ai, x.timeline.as_slice()))
            })
            .collect();
        let tmax = lines
            .iter()
            .flat_map(|(_, l)| l.iter().map(|p| p.0))
            .max()
            .unwrap_or(1)
            .max(1) as f64;
        let rmax = lines
            .iter()
            .flat_map(|(_, l)| l.iter().map(|p| p.1))
            .max()
            .unwrap_or(1)
            .max(1) as f64
            * 1.1;
        let pw = width - left - 20.0;
        let _ = writeln!(
            s,
            r#"<text x="{left}" y="{:.1}" font-size="13" font-weight="bold">fragmentation: RSS over time (first run of each allocator; phases of the first run shown)</text>"#,
            top - 8.0
        );
        let _ = writeln!(
            s,
            r#"<line x1="{left}" y1="{top:.1}" x2="{left}" y2="{0:.1}" stroke="black"/><line x1="{left}" y1="{0:.1}" x2="{1:.1}" y2="{0:.1}" stroke="black"/>"#,
            top + plot_h,
            left + pw
        );
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{:.0} MiB</text><text x="{:.1}" y="{:.1}" text-anchor="end">{tmax:.0} ms</text>"#,
            left - 4.0,
            top + 4.0,
            rmax / 1024.0,
            left + pw,
            top + plot_h + 14.0
        );
        if let Some(run) = r.cells[wi]
            .iter()
            .flat_map(|c| c.runs.iter())
            .find(|x| !x.phases.is_empty())
        {
            for (name, t) in &run.phases {
                let x = left + *t as f64 / tmax * pw;
                let _ = writeln!(
                    s,
                    r##"<line x1="{x:.1}" y1="{top:.1}" x2="{x:.1}" y2="{:.1}" stroke="#bbb" stroke-dasharray="3,3"/><text x="{:.1}" y="{:.1}" fill="#666">{}</text>"##,
                    top + plot_h,
                    x + 2.0,
                    top + 10.0,
                    esc(name)
                );
            }
        }
        for (ai, l) in lines {
            let pts: Vec<String> = l
                .iter()
                .map(|&(t, k)| {
                    format!(
                        "{:.1},{:.1}",
                        left + t as f64 / tmax * pw,
                        top + plot_h - k as f64 / rmax * plot_h
                    )
                })
                .collect();
            let _ = writeln!(
                s,
                r#"<polyline fill="none" stroke="{}" stroke-width="1.5" points="{}"><title>{}</title></polyline>"#,
                COLORS[ai % COLORS.len()],
                pts.join(" "),
                esc(&r.allocators[ai].name)
            );
        }
    }
    s.push_str("</svg>\n");
    s
}
