//! `mailticket doctor [--json]`: prints each checked step; exit 1 when any failed, 2 when
//! the config itself cannot be read.

use mailticket::doctor::{Report, Status, Step};

use super::{Args, Ctx, print_json};

#[derive(Debug, clap::Args)]
pub struct DoctorArgs {
    /// Print the steps as JSON: {"ok": bool, "steps": [{scope, step, status, detail, fix}]}
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: &Args, a: &DoctorArgs) -> anyhow::Result<u8> {
    let report = match Ctx::load(args) {
        Err(e) => {
            let mut r = Report::default();
            r.steps.push(Step {
                scope: "config".into(),
                step: "file".into(),
                status: Status::Fail,
                detail: mailticket::error::chain_text(e.as_ref()),
                fix: Some("fix the file as the message says (`mailticket init` writes a commented sample)".into()),
            });
            r
        }
        Ok(ctx) if !ctx.config_found => {
            let mut r = Report::default();
            r.steps.push(Step {
                scope: "config".into(),
                step: "file".into(),
                status: Status::Fail,
                detail: format!(
                    "no config file (looked for {})",
                    super::discover::searched()
                ),
                fix: Some("write one with `mailticket init`, or pass --config".into()),
            });
            r
        }
        Ok(ctx) => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(mailticket::doctor::check(
                &ctx.config,
                &ctx.config_path,
                &ctx.store,
            ))
        }
    };
    if a.json {
        print_json(&serde_json::json!({ "ok": !report.failed(), "steps": report.steps }))?;
    } else {
        for s in &report.steps {
            let mark = match s.status {
                Status::Ok => "ok  ",
                Status::Warn => "WARN",
                Status::Fail => "FAIL",
            };
            outln!("{mark} {:<20} {:<13} {}", s.scope, s.step, s.detail);
            if let Some(fix) = s.fix.as_deref().filter(|_| s.status != Status::Ok) {
                outln!("     {:<20} {:<13} fix: {fix}", "", "");
            }
        }
        let failed = report
            .steps
            .iter()
            .filter(|s| s.status == Status::Fail)
            .count();
        outln!(
            "{}",
            if failed == 0 {
                "all checks passed".to_owned()
            } else {
                format!("{failed} check(s) failed")
            }
        );
    }
    let config_broken = report
        .steps
        .iter()
        .any(|s| s.scope == "config" && s.status == Status::Fail);
    Ok(match (config_broken, report.failed()) {
        (true, _) => 2,
        (false, true) => 1,
        (false, false) => 0,
    })
}
