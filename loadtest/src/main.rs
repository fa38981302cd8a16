//! `vmqtt-loadtest`: see `vmqtt-loadtest --help` and docs/BENCHMARKS.md.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;

use vmqtt_loadtest::app::{output, run_parent, run_standalone, run_worker};
use vmqtt_loadtest::cli::{Cli, Command, Common};
use vmqtt_loadtest::plan::{conn_config, pubsub_config, RunConfig};
use vmqtt_loadtest::report::{merge, Report};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("vmqtt-loadtest: {e:#}");
            ExitCode::FAILURE
        }
    }
}

type Make<'a> = Box<dyn Fn((usize, usize), usize) -> Result<RunConfig, String> + 'a>;

fn scenario(
    make: &dyn Fn((usize, usize), usize) -> Result<RunConfig, String>,
    common: &Common,
    config: serde_json::Value,
) -> anyhow::Result<ExitCode> {
    if let Some(w) = &common.worker {
        run_worker(make, common, w)?;
        return Ok(ExitCode::SUCCESS);
    }
    let report = if common.processes > 1 {
        if common.share.is_some() {
            anyhow::bail!("--processes and --share do not go together");
        }
        run_parent(make, common, config)?
    } else {
        run_standalone(make, common, config)?
    };
    output(&report, common.json.as_deref(), common.plot.as_deref())?;
    Ok(exit_code(&report))
}

/// 2 when the run was cut short or a QoS 1/2 message was lost, 3 when
/// connections failed, else success.
fn exit_code(r: &Report) -> ExitCode {
    let lost = r.loss.is_some_and(|l| l.lost > 0);
    if r.aborted || lost {
        ExitCode::from(2)
    } else if r.counts.connect_failures > 0 {
        ExitCode::from(3)
    } else {
        ExitCode::SUCCESS
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Conn(a) => {
            let config = serde_json::to_value(&a)?;
            let make: Make<'_> = Box::new(|share, cores| conn_config(&a, share, cores));
            scenario(&make, &a.common, config)
        }
        Command::Pubsub(a) => {
            let config = serde_json::to_value(&a)?;
            let make: Make<'_> = Box::new(|share, cores| pubsub_config(&a, share, cores));
            scenario(&make, &a.common, config)
        }
        Command::Merge(m) => {
            let mut reports = Vec::new();
            for f in &m.files {
                let text = std::fs::read_to_string(f)
                    .with_context(|| format!("reading {}", f.display()))?;
                let r: Report = serde_json::from_str(&text)
                    .with_context(|| format!("parsing {}", f.display()))?;
                reports.push(r);
            }
            let merged = merge(reports).map_err(anyhow::Error::msg)?;
            output(&merged, m.json.as_deref(), m.plot.as_deref())?;
            Ok(exit_code(&merged))
        }
        Command::Plot(p) => {
            let text = std::fs::read_to_string(&p.file)
                .with_context(|| format!("reading {}", p.file.display()))?;
            let r: Report = serde_json::from_str(&text)
                .with_context(|| format!("parsing {}", p.file.display()))?;
            std::fs::write(&p.out, vmqtt_loadtest::plot::svg(&r))
                .with_context(|| format!("writing {}", p.out.display()))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
