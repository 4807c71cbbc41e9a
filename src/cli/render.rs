//! `floyd render [<dir>] [--environment <name>] [-o yaml|json]`: prints the
//! rendered release, `{"services": [{"name", "revision", "spec"}]}`.

use crate::manifest::{Error, Release, Revision, ServiceName, ServiceSpec, load_release};
use serde::Serialize;
use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Config repository directory.
    #[arg(default_value = ".", env = "FLOYD_CONFIG_DIR")]
    pub dir: PathBuf,
    /// Environment from floyd.yaml to render.
    #[arg(long, short = 'e', env = "FLOYD_ENVIRONMENT")]
    pub environment: Option<String>,
    /// Output format.
    #[arg(
        long,
        short = 'o',
        value_enum,
        default_value = "yaml",
        env = "FLOYD_OUTPUT"
    )]
    pub output: Output,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// YAML (`text` is accepted too, so one `FLOYD_OUTPUT` serves every command).
    #[value(alias = "text")]
    Yaml,
    /// JSON.
    Json,
}

/// The printed shape (the contract's): no source file paths, just what runs.
#[derive(Serialize)]
struct Rendered<'a> {
    services: Vec<RenderedService<'a>>,
}

#[derive(Serialize)]
struct RenderedService<'a> {
    name: &'a ServiceName,
    revision: &'a Revision,
    spec: &'a ServiceSpec,
}

/// The release as `floyd render` prints it.
pub fn to_text(release: &Release, output: Output) -> anyhow::Result<String> {
    let r = Rendered {
        services: release
            .services
            .iter()
            .map(|s| RenderedService {
                name: &s.name,
                revision: &s.revision,
                spec: &s.spec,
            })
            .collect(),
    };
    Ok(match output {
        Output::Json => serde_json::to_string_pretty(&r)? + "\n",
        Output::Yaml => serde_saphyr::to_string(&r)?,
    })
}

pub fn run(args: Args) -> anyhow::Result<u8> {
    match load_release(&args.dir, args.environment.as_deref()) {
        Ok(release) => {
            print!("{}", to_text(&release, args.output)?);
            Ok(0)
        }
        Err(Error::Invalid(diags)) => {
            for mut d in diags {
                d.file = super::validate::shown_path(&args.dir, &d.file);
                eprintln!("{d}");
            }
            Ok(2)
        }
        Err(e) => Err(super::CliError::usage(e.to_string())),
    }
}
