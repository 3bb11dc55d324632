//! The command line, kubectl style: flags anywhere, `--flag value` or `--flag=value`, short
//! forms `-n NS`/`-nNS`, booleans as `--wait` or `--wait=false`. Parsed once into a typed
//! [`Invocation`]; an error names the flag or word at fault.

use std::path::PathBuf;
use std::time::Duration;

/// How a command prints its result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Output {
    /// The command's readable form: a table, or JSON for `config dump`.
    #[default]
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
pub const DEFAULT_WAIT_TIMEOUT: Duration = Duration::from_secs(60);

/// A waypoint named directly, or found by the service account it serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WaypointRef {
    Name(String),
    ServiceAccount(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Help(Topic),
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
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    pub global: Global,
    pub command: Command,
}

/// What `--help` is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topic {
    Main,
    Waypoint,
    WaypointApply,
    WaypointList,
    WaypointDelete,
    WaypointStatus,
    Status,
    Config,
    ConfigDump,
}

impl Topic {
    /// The command words, as typed after `kubectl ambit`.
    pub fn words(self) -> &'static str {
        match self {
            Topic::Main => "",
            Topic::Waypoint => "waypoint",
            Topic::WaypointApply => "waypoint apply",
            Topic::WaypointList => "waypoint list",
            Topic::WaypointDelete => "waypoint delete",
            Topic::WaypointStatus => "waypoint status",
            Topic::Status => "status",
            Topic::Config => "config",
            Topic::ConfigDump => "config dump",
        }
    }

    /// `kubectl ambit [words]`, for messages.
    pub fn command(self) -> String {
        match self.words() {
            "" => "kubectl ambit".into(),
            w => format!("kubectl ambit {w}"),
        }
    }

    /// Flags of this command beyond the global ones.
    fn flags(self) -> &'static [&'static str] {
        match self {
            Topic::WaypointApply => &[
                "service-account",
                "name",
                "wait",
                "timeout",
                "force-conflicts",
            ],
            Topic::WaypointList => &["all-namespaces"],
            Topic::WaypointDelete | Topic::WaypointStatus => &["service-account"],
            Topic::ConfigDump => &["node"],
            _ => &[],
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArgsError {
    #[error("unknown flag {0}")]
    UnknownFlag(String),
    #[error("flag {0} needs a value")]
    NoValue(String),
    #[error("flag --{flag}: {value:?} is not valid (expected {expected})")]
    Invalid {
        flag: &'static str,
        value: String,
        expected: &'static str,
    },
    #[error("flag --{flag} does not apply to `{}`", topic.command())]
    NotHere { flag: &'static str, topic: Topic },
    #[error("unknown command {word:?} for `{}`", topic.command())]
    UnknownCommand { word: String, topic: Topic },
    #[error("unexpected argument {word:?} for `{}`", topic.command())]
    Extra { word: String, topic: Topic },
    #[error("`{}` needs {what}", topic.command())]
    Missing { what: &'static str, topic: Topic },
}

impl ArgsError {
    /// The command whose `--help` tells the right usage.
    pub fn topic(&self) -> Topic {
        match self {
            ArgsError::NotHere { topic, .. }
            | ArgsError::UnknownCommand { topic, .. }
            | ArgsError::Extra { topic, .. }
            | ArgsError::Missing { topic, .. } => *topic,
            _ => Topic::Main,
        }
    }
}

#[derive(Clone, Copy)]
struct Spec {
    long: &'static str,
    short: Option<char>,
    takes_value: bool,
}

const fn value(long: &'static str, short: Option<char>) -> Spec {
    Spec {
        long,
        short,
        takes_value: true,
    }
}

const fn boolean(long: &'static str, short: Option<char>) -> Spec {
    Spec {
        long,
        short,
        takes_value: false,
    }
}

const GLOBAL_FLAGS: [&str; 6] = [
    "kubeconfig",
    "context",
    "namespace",
    "output",
    "ambit-namespace",
    "help",
];

const SPECS: [Spec; 13] = [
    value("kubeconfig", None),
    value("context", None),
    value("namespace", Some('n')),
    value("output", Some('o')),
    value("ambit-namespace", None),
    boolean("help", Some('h')),
    boolean("all-namespaces", Some('A')),
    value("service-account", None),
    value("name", None),
    boolean("wait", None),
    value("timeout", None),
    boolean("force-conflicts", None),
    value("node", None),
];

/// Flags as given (last one wins), and the other words in order.
struct Raw {
    flags: Vec<(&'static str, String)>,
    words: Vec<String>,
}

impl Raw {
    fn get(&self, flag: &str) -> Option<&str> {
        self.flags
            .iter()
            .rev()
            .find(|(f, _)| *f == flag)
            .map(|(_, v)| v.as_str())
    }

    fn bool(&self, flag: &'static str, default: bool) -> Result<bool, ArgsError> {
        match self.get(flag) {
            None => Ok(default),
            Some("true") => Ok(true),
            Some("false") => Ok(false),
            Some(v) => Err(ArgsError::Invalid {
                flag,
                value: v.into(),
                expected: "true or false",
            }),
        }
    }
}

fn split(args: impl IntoIterator<Item = String>) -> Result<Raw, ArgsError> {
    let mut raw = Raw {
        flags: Vec::new(),
        words: Vec::new(),
    };
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        if arg == "--" {
            raw.words.extend(args.by_ref());
            break;
        }
        let (spec, inline, shown) = if let Some(long) = arg.strip_prefix("--") {
            let (name, inline) = match long.split_once('=') {
                Some((n, v)) => (n, Some(v.to_owned())),
                None => (long, None),
            };
            let spec = SPECS.iter().find(|s| s.long == name);
            (spec, inline, format!("--{name}"))
        } else if let Some(short) = arg.strip_prefix('-').filter(|s| !s.is_empty()) {
            let mut chars = short.chars();
            let c = chars.next();
            let rest = chars.as_str().trim_start_matches('=');
            let spec = SPECS.iter().find(|s| s.short.is_some() && s.short == c);
            let inline = (!rest.is_empty()).then(|| rest.to_owned());
            (spec, inline, format!("-{}", c.unwrap_or('-')))
        } else {
            raw.words.push(arg);
            continue;
        };
        let Some(spec) = spec else {
            return Err(ArgsError::UnknownFlag(arg));
        };
        let value = if spec.takes_value {
            match inline {
                Some(v) => v,
                None => args.next().ok_or(ArgsError::NoValue(shown))?,
            }
        } else {
            inline.unwrap_or_else(|| "true".into())
        };
        raw.flags.push((spec.long, value));
    }
    Ok(raw)
}

/// Parses the arguments after `kubectl-ambit` (what kubectl passes a plugin).
pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Invocation, ArgsError> {
    let raw = split(args)?;
    let mut words = raw.words.iter().map(String::as_str);
    let topic = match (words.next(), words.next()) {
        (None, _) => Topic::Main,
        (Some("waypoint"), None) => Topic::Waypoint,
        (Some("waypoint"), Some("apply")) => Topic::WaypointApply,
        (Some("waypoint"), Some("list" | "ls")) => Topic::WaypointList,
        (Some("waypoint"), Some("delete" | "rm")) => Topic::WaypointDelete,
        (Some("waypoint"), Some("status")) => Topic::WaypointStatus,
        (Some("waypoint"), Some(w)) => {
            return Err(ArgsError::UnknownCommand {
                word: w.into(),
                topic: Topic::Waypoint,
            });
        }
        (Some("status"), w) => {
            if let Some(w) = w {
                return Err(ArgsError::Extra {
                    word: w.into(),
                    topic: Topic::Status,
                });
            }
            Topic::Status
        }
        (Some("config"), None) => Topic::Config,
        (Some("config"), Some("dump")) => Topic::ConfigDump,
        (Some("config"), Some(w)) => {
            return Err(ArgsError::UnknownCommand {
                word: w.into(),
                topic: Topic::Config,
            });
        }
        (Some("help"), _) => Topic::Main,
        (Some(w), _) => {
            return Err(ArgsError::UnknownCommand {
                word: w.into(),
                topic: Topic::Main,
            });
        }
    };
    // What is left are the command's own positional arguments.
    let positional: Vec<&str> = words.collect();
    let help = raw.bool("help", false)?;
    for (flag, _) in &raw.flags {
        if !GLOBAL_FLAGS.contains(flag) && !topic.flags().contains(flag) && !help {
            return Err(ArgsError::NotHere { flag, topic });
        }
    }
    let global = Global {
        kubeconfig: raw.get("kubeconfig").map(PathBuf::from),
        context: raw.get("context").map(str::to_owned),
        namespace: raw.get("namespace").map(str::to_owned),
        output: match raw.get("output") {
            None => Output::Default,
            Some("json") => Output::Json,
            Some("yaml") => Output::Yaml,
            Some(v) => {
                return Err(ArgsError::Invalid {
                    flag: "output",
                    value: v.into(),
                    expected: "json or yaml",
                });
            }
        },
        ambit_namespace: raw
            .get("ambit-namespace")
            .unwrap_or(DEFAULT_AMBIT_NAMESPACE)
            .to_owned(),
    };
    let groups = [Topic::Main, Topic::Waypoint, Topic::Config];
    if help || groups.contains(&topic) {
        return Ok(Invocation {
            global,
            command: Command::Help(topic),
        });
    }
    let no_more = |from: usize| match positional.get(from) {
        Some(w) => Err(ArgsError::Extra {
            word: (*w).into(),
            topic,
        }),
        None => Ok(()),
    };
    let waypoint_ref = || -> Result<WaypointRef, ArgsError> {
        match (positional.first(), raw.get("service-account")) {
            (Some(name), None) => {
                no_more(1)?;
                Ok(WaypointRef::Name((*name).into()))
            }
            (None, Some(sa)) => Ok(WaypointRef::ServiceAccount(sa.into())),
            (Some(_), Some(_)) => Err(ArgsError::Extra {
                word: positional.first().map_or("", |w| w).into(),
                topic,
            }),
            (None, None) => Err(ArgsError::Missing {
                what: "a waypoint NAME or --service-account SA",
                topic,
            }),
        }
    };
    let command = match topic {
        Topic::WaypointApply => {
            no_more(0)?;
            Command::WaypointApply {
                service_account: raw
                    .get("service-account")
                    .ok_or(ArgsError::Missing {
                        what: "--service-account SA",
                        topic,
                    })?
                    .into(),
                name: raw.get("name").map(str::to_owned),
                wait: raw.bool("wait", true)?,
                timeout: match raw.get("timeout") {
                    None => DEFAULT_WAIT_TIMEOUT,
                    Some(v) => parse_duration(v).ok_or_else(|| ArgsError::Invalid {
                        flag: "timeout",
                        value: v.into(),
                        expected: "a duration such as 90s, 2m or 1m30s",
                    })?,
                },
                force_conflicts: raw.bool("force-conflicts", false)?,
            }
        }
        Topic::WaypointList => {
            no_more(0)?;
            Command::WaypointList {
                all_namespaces: raw.bool("all-namespaces", false)?,
            }
        }
        Topic::WaypointDelete => Command::WaypointDelete(waypoint_ref()?),
        Topic::WaypointStatus => Command::WaypointStatus(waypoint_ref()?),
        Topic::Status => Command::Status,
        Topic::ConfigDump => {
            no_more(0)?;
            Command::ConfigDump {
                node: raw
                    .get("node")
                    .ok_or(ArgsError::Missing {
                        what: "--node NODE",
                        topic,
                    })?
                    .into(),
            }
        }
        Topic::Main | Topic::Waypoint | Topic::Config => Command::Help(topic),
    };
    Ok(Invocation { global, command })
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

const GLOBAL_HELP: &str = "\
Global flags:
  --kubeconfig PATH        kubeconfig file (default: $KUBECONFIG, else ~/.kube/config)
  --context NAME           kubeconfig context (default: the current context)
  -n, --namespace NS       namespace (default: the context's namespace, else default)
  -o, --output json|yaml   print objects instead of a table
  --ambit-namespace NS     where ambit runs (default: ambit-system)
  -h, --help               this help
";

/// The help text of a command.
pub fn usage(topic: Topic) -> String {
    let body = match topic {
        Topic::Main => {
            "\
kubectl ambit: manage the ambit service mesh.

Commands:
  waypoint apply    create or update the waypoint of a service account
  waypoint list     list waypoints
  waypoint delete   delete a waypoint
  waypoint status   a waypoint's conditions and its Deployment's readiness
  status            is every part of ambit healthy, which namespaces are enrolled
  config dump       a node tunnel's configuration (its admin /config_dump)

Run `kubectl ambit COMMAND --help` for a command's flags.
Enroll a namespace with `kubectl label namespace NS ambit.dev/dataplane-mode=ambient`.
"
        }
        Topic::Waypoint => {
            "\
kubectl ambit waypoint: L7 proxies, one per service account (Gateway API Gateways of class
ambit-waypoint).

Commands:
  apply -n NS --service-account SA [--name NAME]
  list [-n NS | -A]
  delete -n NS (NAME | --service-account SA)
  status -n NS (NAME | --service-account SA)
"
        }
        Topic::WaypointApply => {
            "\
kubectl ambit waypoint apply -n NS --service-account SA [--name NAME]

Writes (server-side apply, field manager kubectl-ambit) a Gateway of class ambit-waypoint with
one listener mesh 15008/HBONE and the annotation ambit.dev/for-service-account=SA. ambit's
controller then creates the waypoint's Deployment, Service and ServiceAccount (all named NAME)
and marks the Gateway Programmed.

Flags:
  --service-account SA     the service account whose traffic the waypoint handles (required)
  --name NAME              the Gateway's name (default: waypoint-SA)
  --wait[=false]           wait until the Gateway is Programmed (default: true)
  --timeout DURATION       how long to wait (default: 60s)
  --force-conflicts        take over fields another manager owns
"
        }
        Topic::WaypointList => {
            "\
kubectl ambit waypoint list [-n NS | -A]

Lists waypoint Gateways: namespace, name, service account, Programmed, address.

Flags:
  -A, --all-namespaces     every namespace
"
        }
        Topic::WaypointDelete => {
            "\
kubectl ambit waypoint delete -n NS (NAME | --service-account SA)

Deletes the waypoint Gateway; the controller's children (Deployment, Service, ServiceAccount)
go with it.

Flags:
  --service-account SA     delete the waypoint(s) serving SA
"
        }
        Topic::WaypointStatus => {
            "\
kubectl ambit waypoint status -n NS (NAME | --service-account SA)

Shows the Gateway's conditions and addresses and its waypoint Deployment's readiness.

Flags:
  --service-account SA     the waypoint serving SA
"
        }
        Topic::Status => {
            "\
kubectl ambit status

Checks every part of ambit: the controller Deployment ambit-controller, the node DaemonSet
ambit-node (and which nodes' pods are not ready), the CRDs, the GatewayClass ambit-waypoint;
lists the enrolled namespaces (label ambit.dev/dataplane-mode=ambient) with their pods and
opted-out pods (ambit.dev/dataplane-mode=none). Exits 1 when something is unhealthy.
"
        }
        Topic::Config => {
            "\
kubectl ambit config: what ambit's data plane is running with.

Commands:
  dump --node NODE
"
        }
        Topic::ConfigDump => {
            "\
kubectl ambit config dump --node NODE [-o json|yaml]

Fetches the node tunnel's /config_dump (admin port 15000) from the ambit-node pod on NODE,
through the apiserver's pod proxy. Prints JSON unless -o yaml.

Flags:
  --node NODE              the node whose tunnel to ask (required)
"
        }
    };
    format!("{body}\n{GLOBAL_HELP}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Result<Invocation, ArgsError> {
        parse(s.split_whitespace().map(str::to_owned))
    }

    #[test]
    fn waypoint_apply_with_kubectl_flag_forms() {
        let inv = p("waypoint apply -n shop --service-account=back --wait=false -oyaml").unwrap();
        assert_eq!(inv.global.namespace.as_deref(), Some("shop"));
        assert_eq!(inv.global.output, Output::Yaml);
        assert_eq!(inv.global.ambit_namespace, "ambit-system");
        assert_eq!(
            inv.command,
            Command::WaypointApply {
                service_account: "back".into(),
                name: None,
                wait: false,
                timeout: DEFAULT_WAIT_TIMEOUT,
                force_conflicts: false,
            }
        );
        // Flags before the command, `-nNS`, last one wins.
        let inv = p("-nfoo --context c --kubeconfig /k waypoint apply --service-account s --name w --timeout 2m -n bar").unwrap();
        assert_eq!(inv.global.namespace.as_deref(), Some("bar"));
        assert_eq!(inv.global.context.as_deref(), Some("c"));
        assert_eq!(inv.global.kubeconfig, Some(PathBuf::from("/k")));
        let Command::WaypointApply {
            name,
            timeout,
            wait,
            ..
        } = inv.command
        else {
            panic!("{:?}", inv.command)
        };
        assert_eq!(name.as_deref(), Some("w"));
        assert_eq!(timeout, Duration::from_secs(120));
        assert!(wait);
    }

    #[test]
    fn other_commands() {
        assert_eq!(
            p("waypoint list -A").unwrap().command,
            Command::WaypointList {
                all_namespaces: true
            }
        );
        assert_eq!(
            p("waypoint delete w1").unwrap().command,
            Command::WaypointDelete(WaypointRef::Name("w1".into()))
        );
        assert_eq!(
            p("waypoint status --service-account sa").unwrap().command,
            Command::WaypointStatus(WaypointRef::ServiceAccount("sa".into()))
        );
        let inv = p("status --ambit-namespace mesh -o json").unwrap();
        assert_eq!(inv.command, Command::Status);
        assert_eq!(inv.global.ambit_namespace, "mesh");
        assert_eq!(inv.global.output, Output::Json);
        assert_eq!(
            p("config dump --node n1").unwrap().command,
            Command::ConfigDump { node: "n1".into() }
        );
    }

    #[test]
    fn help_anywhere() {
        assert_eq!(p("").unwrap().command, Command::Help(Topic::Main));
        assert_eq!(p("--help").unwrap().command, Command::Help(Topic::Main));
        assert_eq!(
            p("waypoint").unwrap().command,
            Command::Help(Topic::Waypoint)
        );
        assert_eq!(
            p("waypoint apply -h").unwrap().command,
            Command::Help(Topic::WaypointApply)
        );
        // Help wins over missing or misplaced flags.
        assert_eq!(
            p("config dump --help --service-account x").unwrap().command,
            Command::Help(Topic::ConfigDump)
        );
        for t in [Topic::Main, Topic::WaypointApply, Topic::ConfigDump] {
            assert!(usage(t).contains("--kubeconfig"));
        }
    }

    #[test]
    fn errors_name_the_culprit() {
        let e = p("waypoint apply --service-acount x").unwrap_err();
        assert_eq!(e, ArgsError::UnknownFlag("--service-acount".into()));
        let e = p("waypoint apply").unwrap_err();
        assert!(e.to_string().contains("--service-account SA"), "{e}");
        assert_eq!(e.topic(), Topic::WaypointApply);
        let e = p("waypoint list --node n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "flag --node does not apply to `kubectl ambit waypoint list`"
        );
        let e = p("waypoint frobnicate").unwrap_err();
        assert!(e.to_string().contains("\"frobnicate\""), "{e}");
        let e = p("status -o xml").unwrap_err();
        assert!(e.to_string().contains("json or yaml"), "{e}");
        let e = p("waypoint apply --service-account s --timeout soon").unwrap_err();
        assert!(e.to_string().contains("--timeout"), "{e}");
        let e = p("waypoint apply --service-account s --wait=maybe").unwrap_err();
        assert!(e.to_string().contains("true or false"), "{e}");
        assert_eq!(p("-n").unwrap_err(), ArgsError::NoValue("-n".into()));
        assert!(matches!(
            p("waypoint delete a b").unwrap_err(),
            ArgsError::Extra { .. }
        ));
        assert!(matches!(
            p("waypoint delete").unwrap_err(),
            ArgsError::Missing { .. }
        ));
        assert!(matches!(
            p("status now").unwrap_err(),
            ArgsError::Extra { .. }
        ));
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
