//! PNG plots drawn with plotters.

use anyhow::anyhow;
use ballast_node::simulate::SimReport;
use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};
use std::path::Path;
use std::sync::OnceLock;

/// Fonts looked for, in order; plotters draws text only with a registered TTF font
/// (`scripts/test` installs `fonts-dejavu-core` when it is missing).
const FONT_PATHS: [&str; 3] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
];

/// Registers a system font as "sans-serif" once; false when none is installed.
fn font_available() -> bool {
    static FOUND: OnceLock<bool> = OnceLock::new();
    *FOUND.get_or_init(|| {
        FONT_PATHS.iter().any(|p| match std::fs::read(p) {
            // register_font wants 'static bytes; the font lives as long as the process.
            Ok(bytes) => register_font(
                "sans-serif",
                FontStyle::Normal,
                Box::leak(bytes.into_boxed_slice()),
            )
            .is_ok(),
            Err(_) => false,
        })
    })
}

/// Draws max/mean per round for ballast, and the baseline's end state as a flat line.
pub fn max_over_mean(path: &Path, r: &SimReport) -> anyhow::Result<()> {
    let text = font_available();
    if !text {
        eprintln!("warning: no DejaVuSans.ttf found; the plot has no labels (apt-get install fonts-dejavu-core)");
    }
    let root = BitMapBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    let rounds = r.rounds.last().map_or(1, |s| s.round.max(1));
    let y_max = r
        .rounds
        .iter()
        .map(|s| s.max_over_mean)
        .fold(1.2f64, f64::max)
        * 1.05;
    let mut b = ChartBuilder::on(&root);
    b.margin(15);
    if text {
        b.caption(
            format!(
                "{} hosts, {} VMs, {} (seed {})",
                r.hosts, r.vms, r.scenario, r.seed
            ),
            ("sans-serif", 22),
        )
        .x_label_area_size(40)
        .y_label_area_size(55);
    }
    let mut chart = b
        .build_cartesian_2d(0u32..rounds, (0.9f64..y_max).log_scale())
        .map_err(|e| anyhow!("{e}"))?;
    if text {
        chart
            .configure_mesh()
            .x_desc("round")
            .y_desc("max / mean load")
            .draw()
            .map_err(|e| anyhow!("{e}"))?;
    }
    let ours = chart
        .draw_series(LineSeries::new(
            r.rounds.iter().map(|s| (s.round, s.max_over_mean)),
            BLUE.stroke_width(2),
        ))
        .map_err(|e| anyhow!("{e}"))?;
    if text {
        ours.label("ballast (decentralized rounds)")
            .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], BLUE.stroke_width(2)));
    }
    if let Some(base) = &r.baseline {
        let flat = [
            (0, base.final_max_over_mean),
            (rounds, base.final_max_over_mean),
        ];
        let s = chart
            .draw_series(LineSeries::new(flat, RED.stroke_width(2)))
            .map_err(|e| anyhow!("{e}"))?;
        if text {
            s.label(format!(
                "central-greedy end state ({} moves)",
                base.migrations
            ))
            .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], RED.stroke_width(2)));
        }
    }
    for goal in [1.05, 1.10] {
        chart
            .draw_series(LineSeries::new(
                [(0, goal), (rounds, goal)],
                BLACK.mix(0.25),
            ))
            .map_err(|e| anyhow!("{e}"))?;
    }
    if text {
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| anyhow!("{e}"))?;
    }
    root.present().map_err(|e| anyhow!("{e}"))?;
    Ok(())
}
