//! `floyd render [<dir>] [--environment <name>] [-o yaml|json]`: prints the
//! rendered release, `{"services": [{"name", "revision", "spec"}]}`.
//! With `--objects`: the Kubernetes objects the kube runtime applies for
//! it, built by the runtime's own builders (`runtime::kube::objects`).

use crate::manifest::{Error, Gate, Release, Revision, ServiceName, ServiceSpec, load_release};
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
    /// Print the Kubernetes objects the kube runtime applies (ReplicaSet,
    /// Services, state ConfigMap) instead of the release: YAML documents,
    /// or a JSON `List`.
    #[arg(long)]
    pub objects: bool,
    /// With --objects: the namespace the objects go to.
    #[arg(long, env = "FLOYD_NAMESPACE", default_value = "default")]
    pub namespace: String,
    /// With --objects: the install identity (`floyd run --instance`).
    #[arg(long, env = "FLOYD_INSTANCE", default_value = crate::runtime::kube::objects::DEFAULT_INSTANCE, value_parser = super::run::instance_name)]
    pub instance: String,
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

/// Query parameters whose values are credentials more often than not.
const SECRET_PARAMS: &[&str] = &[
    "token",
    "access_token",
    "auth",
    "key",
    "apikey",
    "api_key",
    "secret",
    "password",
    "passwd",
    "sig",
    "signature",
    "code",
];

/// A URL fit for printing: the values of secret-looking query parameters
/// (`?token=...`) and any password in the userinfo become `***`; the rest
/// (host, path, other parameters) stays so the output is still useful.
pub fn redact_url(url: &str) -> String {
    let url = crate::source::redact_url(url);
    let Some((base, rest)) = url.split_once('?') else {
        return url;
    };
    let (query, fragment) = match rest.split_once('#') {
        Some((q, f)) => (q, Some(f)),
        None => (rest, None),
    };
    let query: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((k, _)) if is_secret_param(k) => format!("{k}=***"),
            _ => pair.to_string(),
        })
        .collect();
    let mut out = format!("{base}?{}", query.join("&"));
    if let Some(f) = fragment {
        out.push('#');
        out.push_str(f);
    }
    out
}

fn is_secret_param(key: &str) -> bool {
    let k = key.to_ascii_lowercase().replace('-', "_");
    SECRET_PARAMS.contains(&k.as_str())
        || k.ends_with("_token")
        || k.ends_with("_key")
        || k.ends_with("_secret")
}

/// The spec with the URLs it carries redacted.
fn redacted(spec: &ServiceSpec) -> ServiceSpec {
    let mut spec = spec.clone();
    for g in &mut spec.gates {
        match g {
            Gate::Webhook { url, .. } => *url = redact_url(url),
            Gate::Prometheus {
                address: Some(a), ..
            } => *a = redact_url(a),
            _ => {}
        }
    }
    spec
}

/// The release as `floyd render` prints it. The specs are in manifest form
/// (they validate as `spec:` of a `kind: Service` document), with
/// secret-looking URL parts redacted.
pub fn to_text(release: &Release, output: Output) -> anyhow::Result<String> {
    let specs: Vec<ServiceSpec> = release.services.iter().map(|s| redacted(&s.spec)).collect();
    let r = Rendered {
        services: release
            .services
            .iter()
            .zip(&specs)
            .map(|(s, spec)| RenderedService {
                name: &s.name,
                revision: &s.revision,
                spec,
            })
            .collect(),
    };
    Ok(match output {
        Output::Json => serde_json::to_string_pretty(&r)? + "\n",
        Output::Yaml => serde_saphyr::to_string(&r)?,
    })
}

/// The objects of every service of `release`, as the kube runtime applies
/// them once each service's rollout has completed; `commit` is recorded on
/// the ReplicaSets as Floyd does.
pub fn objects_text(
    release: &Release,
    install: crate::runtime::kube::objects::Install<'_>,
    commit: Option<&str>,
    output: Output,
) -> anyhow::Result<String> {
    use crate::runtime::kube::objects::{RevisionMeta, settled_objects};
    let meta = RevisionMeta {
        created_at: crate::time::Time::now_wall(),
        commit: commit.map(str::to_string),
        gpu: None,
    };
    let mut objects = Vec::new();
    for s in &release.services {
        objects.extend(settled_objects(
            install,
            &s.name,
            &s.revision,
            &s.spec,
            &meta,
        )?);
    }
    Ok(match output {
        Output::Json => {
            let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": objects});
            serde_json::to_string_pretty(&list)? + "\n"
        }
        Output::Yaml => {
            let mut out = String::new();
            for o in &objects {
                out.push_str("---\n");
                if o["kind"] == "ConfigMap" {
                    out.push_str("# state.json is written by Floyd as rollouts progress\n");
                }
                out.push_str(&serde_saphyr::to_string(o)?);
            }
            out
        }
    })
}

/// The commit checked out at `dir`, if it is in a Git work tree.
fn head_commit(dir: &std::path::Path) -> Option<String> {
    let repo = git2::Repository::discover(dir).ok()?;
    let id = repo.head().ok()?.peel_to_commit().ok()?.id();
    Some(id.to_string())
}

pub fn run(args: Args) -> anyhow::Result<u8> {
    match load_release(&args.dir, args.environment.as_deref()) {
        Ok(release) if args.objects => {
            let install = crate::runtime::kube::objects::Install {
                namespace: &args.namespace,
                instance: &args.instance,
            };
            let commit = head_commit(&args.dir);
            let text = objects_text(&release, install, commit.as_deref(), args.output)
                .map_err(|e| super::CliError::usage(e.to_string()))?;
            print!("{text}");
            Ok(0)
        }
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

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn secret_looking_url_parts_are_redacted() {
        for (url, want) in [
            (
                "https://approve.example.com/hook?token=abc&team=web",
                "https://approve.example.com/hook?token=***&team=web",
            ),
            (
                "http://h/x?API-Key=1&x_secret=2&sig=3&page=4#frag",
                "http://h/x?API-Key=***&x_secret=***&sig=***&page=4#frag",
            ),
            ("https://user:pw@h/x", "https://***@h/x"),
            ("http://127.0.0.1:9090", "http://127.0.0.1:9090"),
            ("http://h/x?flag", "http://h/x?flag"),
        ] {
            assert_eq!(redact_url(url), want, "{url}");
        }
    }
}
