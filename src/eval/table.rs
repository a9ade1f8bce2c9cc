//! Markdown tables of an evaluation [`Report`], ready to paste into a model card.

use std::fmt::Write;

use super::{ClassResult, PairResult, Report};

fn f(x: f64) -> String {
    format!("{x:.3}")
}

/// The retrieval table: one row per query → target pair, in report order.
pub fn retrieval(rows: &[PairResult]) -> String {
    let mut s = String::from(
        "| query → target | R@1 | R@5 | R@10 | queries | gallery | chance@10 | emergent | IMU class R@1 |\n\
         |---|---:|---:|---:|---:|---:|---:|:---:|---:|\n",
    );
    for r in rows {
        let _ = writeln!(
            s,
            "| {} → {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.query,
            r.target,
            f(r.r_at_1),
            f(r.r_at_5),
            f(r.r_at_10),
            r.n,
            r.gallery,
            f(r.chance_at_10),
            if r.emergent { "yes" } else { "" },
            r.class_r_at.map_or("–".to_owned(), |c| f(c[0])),
        );
    }
    s
}

/// The zero-shot classification table: one row per modality.
pub fn classification(rows: &[ClassResult], classes: usize) -> String {
    let mut s = format!(
        "| modality | accuracy | N | chance (1/{classes}) | majority class |\n\
         |---|---:|---:|---:|---:|\n"
    );
    for r in rows {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} |",
            r.modality,
            f(r.accuracy),
            r.n,
            f(r.chance),
            f(r.majority)
        );
    }
    s
}

/// Both tables with headings and a line on what was evaluated.
pub fn markdown(report: &Report) -> String {
    let mut s = format!(
        "Model `{}` ({}-d) on `{}`, split `{}`: {} items.\n\n",
        report.model,
        report.dim,
        report.data,
        report.split.as_str(),
        report.items
    );
    s.push_str("### Cross-modal retrieval (recall@k of the query's own item)\n\n");
    s.push_str(&retrieval(&report.retrieval));
    s.push('\n');
    if report.classes.is_empty() {
        s.push_str("Zero-shot classification: not run (the model has no text tower).\n");
    } else {
        let _ = writeln!(
            s,
            "### Zero-shot classification over {} subgroups\n\nPrompts: {}.\n",
            report.classes.len(),
            report
                .prompts
                .iter()
                .map(|p| format!("\"{p}\""))
                .collect::<Vec<_>>()
                .join(", ")
        );
        s.push_str(&classification(
            &report.classification,
            report.classes.len(),
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::embed::Modality;

    #[test]
    fn tables_have_one_row_per_result() {
        let rows = [
            PairResult {
                query: Modality::Image,
                target: Modality::Text,
                emergent: false,
                n: 4,
                gallery: 4,
                r_at_1: 0.5,
                r_at_5: 1.0,
                r_at_10: 1.0,
                chance_at_10: 1.0,
                class_r_at: None,
            },
            PairResult {
                query: Modality::Imu,
                target: Modality::Audio,
                emergent: true,
                n: 3,
                gallery: 9,
                r_at_1: 1.0 / 3.0,
                r_at_5: 1.0,
                r_at_10: 1.0,
                chance_at_10: 1.0,
                class_r_at: Some([2.0 / 3.0, 1.0, 1.0]),
            },
        ];
        let t = retrieval(&rows);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 4);
        assert_eq!(
            lines[0],
            "| query → target | R@1 | R@5 | R@10 | queries | gallery | chance@10 | emergent | \
             IMU class R@1 |"
        );
        assert_eq!(
            lines[2],
            "| image → text | 0.500 | 1.000 | 1.000 | 4 | 4 | 1.000 |  | – |"
        );
        assert_eq!(
            lines[3],
            "| imu → audio | 0.333 | 1.000 | 1.000 | 3 | 9 | 1.000 | yes | 0.667 |"
        );
        let c = classification(
            &[ClassResult {
                modality: Modality::Depth,
                n: 8,
                accuracy: 0.25,
                classes_present: 3,
                chance: 0.2,
                majority: 0.5,
            }],
            5,
        );
        assert_eq!(
            c.lines().collect::<Vec<_>>(),
            [
                "| modality | accuracy | N | chance (1/5) | majority class |",
                "|---|---:|---:|---:|---:|",
                "| depth | 0.250 | 8 | 0.200 | 0.500 |",
            ]
        );
    }
}
