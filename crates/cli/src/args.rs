//! The command line, kubectl style, declared with clap: global flags anywhere
//! (`kubectl ambit -n shop waypoint list`), a command's own flags after the command,
//! `--flag value` or `--flag=value`, short forms `-n NS`/`-nNS`, booleans as `--wait` or
//! `--wait=false`, the last of a repeated flag wins. Parsed once into a typed [`Request`]; a
//! usage error is worded as kubectl words them ([`usage_error`]).

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::{ArgAction, Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use clap_complete::Shell;
use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

/// How a command prints its result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum Output {
    /// The command's readable form: a table, or JSON for `config dump`.
    #[default]
    #[value(skip)]
    Default,
    Json,
    Yaml,
}

/// Flags every command takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Global {
    pub kubeconfig: Option<PathBuf>,
    pub context: Option<String>,
    /// `-n`; `None`: the kubeconfig context's namespace, else `default`.
    pub namespace: Option<String>,
    pub output: Output,
    /// Where ambit runs.
    pub ambit_namespace: String,
}

pub const DEFAULT_AMBIT_NAMESPACE: &str = "ambit-system";

/// A waypoint named directly, or found by the service account it serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WaypointRef {
    Name(String),
    ServiceAccount(String),
}

/// A command against the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    WaypointApply {
        service_account: String,
        name: Option<String>,
        wait: bool,
        timeout: Duration,
        force_conflicts: bool,
    },
    WaypointList {
        all_namespaces: bool,
    },
    WaypointDelete(WaypointRef),
    WaypointStatus(WaypointRef),
    Status,
    ConfigDump {
        node: String,
    },
    Check(CheckOptions),
    Threats {
        all_namespaces: bool,
    },
}

/// `kubectl ambit check`: before installing (`pre`) or of an installed mesh.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckOptions {
    pub pre: bool,
    /// `[ok]`/`[warn]`/`[fail]` instead of symbols, even on a terminal.
    pub no_color: bool,
    /// How long each check may take.
    pub timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    pub global: Global,
    pub command: Command,
}

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Run(Invocation),
    /// Print the completion script of a shell; needs no cluster.
    Completion(Shell),
}

/// `kubectl ambit`: its flags and commands, as clap declares them. [`Cli::command`] is what
/// completion scripts and candidates are made from; [`command`] what parses and prints help.
#[derive(Debug, Parser)]
#[command(
    name = "kubectl-ambit",
    version,
    about = "kubectl ambit: manage the ambit service mesh.",
    after_help = "Run `kubectl ambit COMMAND --help` for a command's flags.\n\
                  Enroll a namespace with `kubectl label namespace NS ambit.dev/dataplane-mode=ambient`.",
    args_override_self = true,
    subcommand_required = true,
    arg_required_else_help = true
)]
pub struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: TopCommand,
}

#[derive(Debug, Args)]
#[command(next_help_heading = "Global flags")]
struct GlobalArgs {
    /// kubeconfig file (default: $KUBECONFIG, else ~/.kube/config)
    #[arg(long, global = true, value_name = "PATH", value_hint = clap::ValueHint::FilePath)]
    kubeconfig: Option<PathBuf>,
    /// kubeconfig context (default: the current context)
    #[arg(long, global = true, value_name = "NAME")]
    context: Option<String>,
    /// namespace (default: the context's namespace, else default)
    #[arg(short, long, global = true, value_name = "NS")]
    namespace: Option<String>,
    /// print objects instead of a table
    #[arg(short, long, global = true, value_name = "FORMAT")]
    output: Option<Output>,
    /// where ambit runs
    #[arg(long, global = true, value_name = "NS", default_value = DEFAULT_AMBIT_NAMESPACE)]
    ambit_namespace: String,
}

#[derive(Debug, Subcommand)]
enum TopCommand {
    /// L7 proxies, one per service account (Gateway API Gateways of class ambit-waypoint)
    #[command(subcommand, subcommand_required = true, arg_required_else_help = true)]
    Waypoint(WaypointCommand),
    /// Is every part of ambit healthy, which namespaces are enrolled
    ///
    /// Checks every part of ambit: the controller Deployment ambit-controller, the node DaemonSet
    /// ambit-node (and which nodes' pods are not ready), the CRDs, the GatewayClass
    /// ambit-waypoint; lists the enrolled namespaces (label ambit.dev/dataplane-mode=ambient) with
    /// their pods and opted-out pods (ambit.dev/dataplane-mode=none). Exits 1 when something is
    /// unhealthy.
    Status,
    /// Pre-flight (--pre) or health checks, one line each: pass, warn or fail
    ///
    /// With --pre, before installing: the Kubernetes version against the chart's kubeVersion,
    /// other meshes (Istio, Linkerd, Cilium's mesh), ambit's or Gateway API's CRDs already
    /// present, NetworkPolicies that would block port 15008 in enrolled namespaces, your rights
    /// to create what the chart creates, the nodes' OS and kernel. Without: the controller and
    /// its Lease, the node DaemonSet, CRDs, GatewayClass, the mesh root's validity, every
    /// tunnel's config stream, certificates and rejected config, waypoints Programmed,
    /// AuthorizationPolicies Enforced. Exits 1 when a check fails (warnings pass).
    #[command(
        override_usage = "kubectl ambit check [--pre] [--timeout DURATION] [--no-color] [-o json|yaml]"
    )]
    Check(CheckArgs),
    /// What ambit's data plane is running with
    #[command(subcommand, subcommand_required = true, arg_required_else_help = true)]
    Config(ConfigCommand),
    /// SP 800-233 threats TR-1..TR-10 scored per namespace, with what lowers them
    ///
    /// For each namespace: the data plane model in use (none, l4, waypoint,
    /// waypoint+ext_authz), and for each threat its impact, likelihood and score (impact x
    /// likelihood, 1..9), the mitigations found and what to change to lower it. Reads the
    /// namespace's pods, Services, waypoints, policies and routes, and the install's settings
    /// (leaf lifetime, tunnel mode, ext_authz providers). docs/risk-profiles.md has the method.
    #[command(override_usage = "kubectl ambit threats [-n NS | -A] [-o json|yaml]")]
    Threats {
        /// every namespace
        #[arg(
            short = 'A',
            long,
            value_name = "BOOL",
            default_value_t = false,
            num_args = 0..=1,
            require_equals = true,
            default_missing_value = "true",
            action = ArgAction::Set
        )]
        all_namespaces: bool,
    },
    /// Print a shell completion script for kubectl-ambit (docs/cli.md says how to install it)
    Completion {
        #[arg(value_enum)]
        shell: Shell,
    },
}

#[derive(Debug, Args)]
struct CheckArgs {
    /// pre-install checks (the cluster, before `helm install`)
    #[arg(long)]
    pre: bool,
    /// plain [ok] [warn] [fail] markers (the default when stdout is not a terminal)
    #[arg(long)]
    no_color: bool,
    /// how long each check may take
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = duration)]
    timeout: Duration,
}

#[derive(Debug, Subcommand)]
enum WaypointCommand {
    /// Create or update the waypoint of a service account
    ///
    /// Writes (server-side apply, field manager kubectl-ambit) a Gateway of class ambit-waypoint
    /// with one listener mesh 15008/HBONE and the annotation ambit.dev/for-service-account=SA.
    /// ambit's controller then creates the waypoint's Deployment, Service and ServiceAccount (all
    /// named NAME) and marks the Gateway Programmed.
    #[command(
        override_usage = "kubectl ambit waypoint apply -n NS --service-account SA [--name NAME] [--wait[=false]] [--timeout DURATION]"
    )]
    Apply(ApplyArgs),
    /// List waypoints: namespace, name, service account, Programmed, address
    #[command(
        visible_alias = "ls",
        override_usage = "kubectl ambit waypoint list [-n NS | -A]"
    )]
    List {
        /// every namespace
        #[arg(
            short = 'A',
            long,
            value_name = "BOOL",
            default_value_t = false,
            num_args = 0..=1,
            require_equals = true,
            default_missing_value = "true",
            action = ArgAction::Set
        )]
        all_namespaces: bool,
    },
    /// Delete a waypoint
    ///
    /// Deletes the waypoint Gateway; the controller's children (Deployment, Service,
    /// ServiceAccount) go with it.
    #[command(
        visible_alias = "rm",
        override_usage = "kubectl ambit waypoint delete -n NS (NAME | --service-account SA)"
    )]
    Delete(WaypointRefArgs),
    /// A waypoint's conditions and its Deployment's readiness
    #[command(override_usage = "kubectl ambit waypoint status -n NS (NAME | --service-account SA)")]
    Status(WaypointRefArgs),
}

#[derive(Debug, Args)]
struct ApplyArgs {
    /// the service account whose traffic the waypoint handles
    #[arg(long, value_name = "SA")]
    service_account: String,
    /// the Gateway's name (default: waypoint-SA)
    #[arg(long, value_name = "NAME")]
    name: Option<String>,
    /// wait until the Gateway is Programmed
    #[arg(
        long,
        value_name = "BOOL",
        default_value_t = true,
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        action = ArgAction::Set
    )]
    wait: bool,
    /// how long to wait (90s, 2m, 1m30s)
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = duration)]
    timeout: Duration,
    /// take over fields another field manager owns
    #[arg(
        long,
        value_name = "BOOL",
        default_value_t = false,
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        action = ArgAction::Set
    )]
    force_conflicts: bool,
}

/// Exactly one of a name and `--service-account`.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
struct WaypointRefArgs {
    /// the waypoint's name
    #[arg(value_name = "NAME")]
    name: Option<String>,
    /// the waypoint serving this service account
    #[arg(long, value_name = "SA")]
    service_account: Option<String>,
}

impl WaypointRefArgs {
    fn into_ref(self) -> WaypointRef {
        match (self.service_account, self.name) {
            (Some(sa), _) => WaypointRef::ServiceAccount(sa),
            // The group makes the name present when the service account is not.
            (None, name) => WaypointRef::Name(name.unwrap_or_default()),
        }
    }
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// A node tunnel's configuration (its admin /config_dump)
    ///
    /// Fetches the /config_dump of the node tunnel on NODE (the ambit-node pod there). Prints
    /// JSON unless -o yaml.
    #[command(override_usage = "kubectl ambit config dump --node NODE [-o json|yaml]")]
    Dump {
        /// the node whose tunnel to ask
        #[arg(long, value_name = "NODE")]
        node: String,
    },
}

impl From<Cli> for Request {
    fn from(cli: Cli) -> Self {
        let g = cli.global;
        let global = Global {
            kubeconfig: g.kubeconfig,
            context: g.context,
            namespace: g.namespace,
            output: g.output.unwrap_or_default(),
            ambit_namespace: g.ambit_namespace,
        };
        let command = match cli.command {
            TopCommand::Completion { shell } => return Request::Completion(shell),
            TopCommand::Waypoint(WaypointCommand::Apply(a)) => Command::WaypointApply {
                service_account: a.service_account,
                name: a.name,
                wait: a.wait,
                timeout: a.timeout,
                force_conflicts: a.force_conflicts,
            },
            TopCommand::Waypoint(WaypointCommand::List { all_namespaces }) => {
                Command::WaypointList { all_namespaces }
            }
            TopCommand::Waypoint(WaypointCommand::Delete(r)) => {
                Command::WaypointDelete(r.into_ref())
            }
            TopCommand::Waypoint(WaypointCommand::Status(r)) => {
                Command::WaypointStatus(r.into_ref())
            }
            TopCommand::Status => Command::Status,
            TopCommand::Config(ConfigCommand::Dump { node }) => Command::ConfigDump { node },
            TopCommand::Threats { all_namespaces } => Command::Threats { all_namespaces },
            TopCommand::Check(c) => Command::Check(CheckOptions {
                pre: c.pre,
                no_color: c.no_color,
                timeout: c.timeout,
            }),
        };
        Request::Run(Invocation { global, command })
    }
}

/// The command as kubectl users call it: usage lines say `kubectl ambit ...`. (Not in the
/// declaration: completion scripts want the program's own name, `kubectl-ambit`.)
pub fn command() -> clap::Command {
    Cli::command().bin_name("kubectl ambit")
}

/// Parses a whole command line, program name first. The error is clap's: help and version
/// requests come back as errors too ([`is_help`]).
pub fn parse<I, T>(args: I) -> Result<Request, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let matches = command().try_get_matches_from(args)?;
    Cli::from_arg_matches(&matches).map(Request::from)
}

/// Help or version asked for, or a command group given without its command (`kubectl ambit
/// waypoint`): print [`clap::Error::render`] on stdout and exit 0, as kubectl does.
pub fn is_help(e: &clap::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    )
}

/// A usage error as kubectl words it: what is wrong, naming the flag or word at fault, then
/// which `--help` to read. `args` is the command line the error came from.
pub fn usage_error(args: &[OsString], e: &clap::Error) -> String {
    let command = command_words(args);
    let context = |kind| e.get(kind).map(plain).unwrap_or_default();
    let flag = flag_name(&context(ContextKind::InvalidArg));
    let suggestion = match e
        .get(ContextKind::SuggestedArg)
        .or(e.get(ContextKind::SuggestedSubcommand))
    {
        Some(s) => format!(" (did you mean {}?)", plain(s)),
        None => String::new(),
    };
    let (message, help) = match e.kind() {
        ErrorKind::UnknownArgument if !flag.starts_with('-') => (
            format!("unexpected argument {flag:?} for `{command}`"),
            command.clone(),
        ),
        ErrorKind::UnknownArgument if defined_elsewhere(&flag) => (
            format!("flag {flag} does not apply to `{command}`"),
            command.clone(),
        ),
        // Not a flag of any command: perhaps a global one mistyped.
        ErrorKind::UnknownArgument => (
            format!("unknown flag {flag}{suggestion}"),
            "kubectl ambit".to_owned(),
        ),
        ErrorKind::InvalidSubcommand => (
            format!(
                "unknown command {:?} for `{command}`{suggestion}",
                context(ContextKind::InvalidSubcommand)
            ),
            command.clone(),
        ),
        ErrorKind::InvalidValue | ErrorKind::ValueValidation => {
            let expected = match e.get(ContextKind::ValidValue) {
                Some(ContextValue::Strings(valid)) => one_of(valid),
                _ => std::error::Error::source(e)
                    .map(ToString::to_string)
                    .unwrap_or_default(),
            };
            (
                format!(
                    "flag {flag}: {:?} is not valid (expected {expected})",
                    context(ContextKind::InvalidValue)
                ),
                command.clone(),
            )
        }
        ErrorKind::MissingRequiredArgument => (
            format!("`{command}` needs {}", context(ContextKind::InvalidArg)),
            command.clone(),
        ),
        ErrorKind::ArgumentConflict => (
            format!(
                "{} and {} do not go together in `{command}`",
                context(ContextKind::InvalidArg),
                context(ContextKind::PriorArg)
            ),
            command.clone(),
        ),
        // Rarer shapes (a value where none is taken, ...): clap's own first line.
        _ => (
            e.render()
                .to_string()
                .lines()
                .next()
                .unwrap_or_default()
                .trim_start_matches("error: ")
                .to_owned(),
            command.clone(),
        ),
    };
    format!("{message}\nSee '{help} --help' for usage.")
}

/// Context as a user types it: `--service-account SA`, not `--service-account <SA>`.
fn plain(value: &ContextValue) -> String {
    let text = match value {
        ContextValue::Strings(items) => items.join(", "),
        other => other.to_string(),
    };
    text.replace(['<', '>'], "")
}

/// `--wait[=BOOL]`, `--output FORMAT` or `--node=x` to the flag alone.
fn flag_name(arg: &str) -> String {
    arg.split([' ', '[', '='])
        .next()
        .unwrap_or_default()
        .to_owned()
}

fn one_of(values: &[String]) -> String {
    match values {
        [] => String::new(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} or {last}", init.join(", ")),
    }
}

/// `kubectl ambit waypoint list`: the commands a (possibly wrong) command line names, as far
/// as clap can tell.
fn command_words(args: &[OsString]) -> String {
    let mut words = vec!["kubectl ambit".to_owned()];
    if let Ok(matches) = command().ignore_errors(true).try_get_matches_from(args) {
        let mut at = &matches;
        while let Some((name, sub)) = at.subcommand() {
            words.push(name.to_owned());
            at = sub;
        }
    }
    words.join(" ")
}

/// Whether some command takes this flag (`--node` is `config dump`'s, not `waypoint list`'s).
fn defined_elsewhere(flag: &str) -> bool {
    fn walk(cmd: &clap::Command, flag: &str) -> bool {
        cmd.get_arguments().any(|a| {
            a.get_long()
                .is_some_and(|l| flag.strip_prefix("--") == Some(l))
                || a.get_short()
                    .is_some_and(|s| flag.strip_prefix('-') == Some(s.encode_utf8(&mut [0; 4])))
        }) || cmd.get_subcommands().any(|c| walk(c, flag))
    }
    walk(&Cli::command(), flag)
}

fn duration(s: &str) -> Result<Duration, String> {
    parse_duration(s).ok_or_else(|| "a duration such as 90s, 2m or 1m30s".to_owned())
}

/// A Go-style duration (`90s`, `2m`, `1h30m`, `500ms`), or a bare number of seconds.
pub fn parse_duration(s: &str) -> Option<Duration> {
    if let Ok(secs) = s.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit())?;
        let n: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = match &rest[..unit_len] {
            "ms" => Duration::from_millis(1),
            "s" => Duration::from_secs(1),
            "m" => Duration::from_secs(60),
            "h" => Duration::from_secs(3600),
            _ => return None,
        };
        total = total.checked_add(unit.checked_mul(u32::try_from(n).ok()?)?)?;
        rest = &rest[unit_len..];
    }
    Some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(s: &str) -> Vec<OsString> {
        std::iter::once("kubectl-ambit")
            .chain(s.split_whitespace())
            .map(OsString::from)
            .collect()
    }

    fn p(s: &str) -> Invocation {
        match parse(argv(s)) {
            Ok(Request::Run(i)) => i,
            other => panic!("{s}: {other:?}"),
        }
    }

    /// The usage error of a bad command line, as the user reads it.
    fn err(s: &str) -> String {
        let args = argv(s);
        let e = parse(args.clone()).expect_err(s);
        assert!(!is_help(&e), "{s}: {e}");
        usage_error(&args, &e)
    }

    #[test]
    fn the_declaration_is_consistent() {
        command().debug_assert();
    }

    #[test]
    fn waypoint_apply_with_kubectl_flag_forms() {
        let inv = p("waypoint apply -n shop --service-account=back --wait=false -oyaml");
        assert_eq!(inv.global.namespace.as_deref(), Some("shop"));
        assert_eq!(inv.global.output, Output::Yaml);
        assert_eq!(inv.global.ambit_namespace, "ambit-system");
        assert_eq!(
            inv.command,
            Command::WaypointApply {
                service_account: "back".into(),
                name: None,
                wait: false,
                timeout: Duration::from_secs(60),
                force_conflicts: false,
            }
        );
        // Global flags before the command, `-nNS`, last one wins (own flags too).
        let inv = p(
            "-nfoo --context c --kubeconfig /k waypoint apply --service-account s \
                     --name v --name w --timeout 2m -n bar --force-conflicts",
        );
        assert_eq!(inv.global.namespace.as_deref(), Some("bar"));
        assert_eq!(inv.global.context.as_deref(), Some("c"));
        assert_eq!(inv.global.kubeconfig, Some(PathBuf::from("/k")));
        assert_eq!(
            inv.command,
            Command::WaypointApply {
                service_account: "s".into(),
                name: Some("w".into()),
                wait: true,
                timeout: Duration::from_secs(120),
                force_conflicts: true,
            }
        );
    }

    #[test]
    fn other_commands() {
        assert_eq!(
            p("waypoint list -A").command,
            Command::WaypointList {
                all_namespaces: true
            }
        );
        assert_eq!(
            p("waypoint ls --all-namespaces=false").command,
            Command::WaypointList {
                all_namespaces: false
            }
        );
        assert_eq!(
            p("waypoint rm w1").command,
            Command::WaypointDelete(WaypointRef::Name("w1".into()))
        );
        assert_eq!(
            p("waypoint status --service-account sa").command,
            Command::WaypointStatus(WaypointRef::ServiceAccount("sa".into()))
        );
        let inv = p("status --ambit-namespace mesh -o json");
        assert_eq!(inv.command, Command::Status);
        assert_eq!(inv.global.ambit_namespace, "mesh");
        assert_eq!(inv.global.output, Output::Json);
        assert_eq!(inv.global.namespace, None);
        assert_eq!(
            p("config dump --node n1").command,
            Command::ConfigDump { node: "n1".into() }
        );
        assert_eq!(
            p("threats -A -o yaml").command,
            Command::Threats {
                all_namespaces: true
            }
        );
        assert_eq!(
            p("-n shop threats").command,
            Command::Threats {
                all_namespaces: false
            }
        );
        assert_eq!(
            p("check --pre --timeout 3s").command,
            Command::Check(CheckOptions {
                pre: true,
                no_color: false,
                timeout: Duration::from_secs(3),
            })
        );
        assert_eq!(
            p("check --no-color").command,
            Command::Check(CheckOptions {
                pre: false,
                no_color: true,
                timeout: Duration::from_secs(10),
            })
        );
        assert_eq!(
            parse(argv("completion bash")).unwrap(),
            Request::Completion(Shell::Bash)
        );
    }

    #[test]
    fn help_anywhere() {
        for line in [
            "",
            "--help",
            "help",
            "waypoint",
            "waypoint apply -h",
            "config",
            "help waypoint list",
            // Help before a missing or misplaced flag wins.
            "config dump --help --service-account x",
            "--version",
        ] {
            let e = parse(argv(line)).expect_err(line);
            assert!(is_help(&e), "{line:?}: {:?} {e}", e.kind());
        }
        let help = parse(argv("waypoint apply --help"))
            .unwrap_err()
            .render()
            .to_string();
        for has in [
            "--service-account SA",
            "Global flags",
            "--kubeconfig",
            "[default: 60s]",
        ] {
            assert!(help.contains(has), "{has}: {help}");
        }
    }

    #[test]
    fn errors_name_the_culprit() {
        let e = err("waypoint apply --service-acount x");
        assert!(
            e.starts_with("unknown flag --service-acount (did you mean --service-account?)"),
            "{e}"
        );
        assert!(e.ends_with("See 'kubectl ambit --help' for usage."), "{e}");
        assert_eq!(
            err("waypoint apply"),
            "`kubectl ambit waypoint apply` needs --service-account SA\n\
             See 'kubectl ambit waypoint apply --help' for usage."
        );
        let e = err("waypoint list --node n");
        assert!(
            e.starts_with("flag --node does not apply to `kubectl ambit waypoint list`"),
            "{e}"
        );
        let e = err("waypoint frobnicate");
        assert!(
            e.starts_with("unknown command \"frobnicate\" for `kubectl ambit waypoint`"),
            "{e}"
        );
        let e = err("status -o xml");
        assert!(
            e.starts_with("flag --output: \"xml\" is not valid (expected json or yaml)"),
            "{e}"
        );
        let e = err("waypoint apply --service-account s --timeout soon");
        assert!(
            e.starts_with("flag --timeout: \"soon\" is not valid (expected a duration such as 90s"),
            "{e}"
        );
        let e = err("waypoint apply --service-account s --wait=maybe");
        assert!(
            e.contains("--wait: \"maybe\" is not valid (expected true or false)"),
            "{e}"
        );
        let e = err("-n");
        assert!(e.contains("--namespace"), "{e}");
        let e = err("waypoint delete a b");
        assert!(
            e.starts_with("unexpected argument \"b\" for `kubectl ambit waypoint delete`"),
            "{e}"
        );
        let e = err("waypoint delete");
        assert!(e.contains("needs NAME|--service-account SA"), "{e}");
        let e = err("waypoint delete a --service-account b");
        assert!(e.contains("do not go together"), "{e}");
        let e = err("status now");
        assert!(
            e.starts_with("unexpected argument \"now\" for `kubectl ambit status`"),
            "{e}"
        );
        let e = err("completion tcsh");
        assert!(
            e.contains("expected bash, elvish, fish, powershell or zsh"),
            "{e}"
        );
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("1h"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_duration("0s"), Some(Duration::ZERO));
        for bad in ["", "s", "5x", "1.5s", "-1s"] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
    }
}
