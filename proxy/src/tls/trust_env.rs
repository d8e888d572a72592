//! `tenant-proxy ca env`: make the tools agents run trust the local CA.
//!
//! Misconfigured trust is the first thing users of an interception proxy hit, and the usual
//! mistake is pointing `SSL_CERT_FILE` at the CA alone: OpenSSL and Python then trust *only*
//! the CA and every non-intercepted host fails. So the variables that replace the roots get a
//! bundle of the system roots plus the CA, and only Node's, which adds to its roots, gets the CA.

use crate::shown::shown;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use base64::Engine as _;

use super::ca::parse_ca_cert_pem;

/// Where distributions keep their root bundle (Debian/Ubuntu/Alpine, RHEL/Fedora, macOS/BSD and
/// others, SUSE), in the order tried.
pub const SYSTEM_BUNDLES: [&str; 4] = [
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
    "/etc/ssl/ca-bundle.pem",
];

/// The syntax of the printed exports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Shell {
    /// POSIX shells: `export NAME='value'`.
    #[default]
    Sh,
    /// fish: `set -gx NAME 'value'`.
    Fish,
    /// PowerShell: `$env:NAME = 'value'`.
    Powershell,
}

/// The first system bundle that exists on this machine.
pub fn system_bundle() -> Option<PathBuf> {
    SYSTEM_BUNDLES
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
}

/// `bundle.pem` next to the CA.
pub fn default_bundle_path(ca: &Path) -> PathBuf {
    ca.parent()
        .unwrap_or_else(|| Path::new("."))
        .join("bundle.pem")
}

/// Writes the system roots plus the CA to `out` (replacing it: re-run after the system roots
/// change) and returns `out`. Without a system bundle the file holds the CA alone, which only
/// works if every HTTPS call goes through the proxy's interception.
pub fn write_bundle(ca: &Path, out: &Path) -> anyhow::Result<PathBuf> {
    write_bundle_from(ca, system_bundle().as_deref(), out)
}

fn write_bundle_from(ca: &Path, system: Option<&Path>, out: &Path) -> anyhow::Result<PathBuf> {
    let pem = std::fs::read(ca).with_context(|| format!("reading `{}`", ca.display()))?;
    let der = parse_ca_cert_pem(&pem).with_context(|| format!("`{}`", ca.display()))?;
    if same_file(ca, out) {
        anyhow::bail!(
            "the bundle would replace the CA file `{}`; choose another `--bundle-out`",
            ca.display()
        );
    }
    let mut text = match system {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("reading the system roots `{}`", path.display()))?,
        None => String::new(),
    };
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    // Re-encoded from DER, so whatever else the CA file holds never reaches the bundle.
    text.push_str("\n# tenant-proxy local CA\n-----BEGIN CERTIFICATE-----\n");
    let b64 = base64::engine::general_purpose::STANDARD.encode(der.as_ref());
    for line in b64.as_bytes().chunks(64) {
        text.push_str(&String::from_utf8_lossy(line));
        text.push('\n');
    }
    text.push_str("-----END CERTIFICATE-----\n");

    // Whole or not at all: a tool starting meanwhile never reads half a bundle.
    crate::whole_file::replace_readable_by_all(out, text.as_bytes())
        .with_context(|| format!("writing `{}`", out.display()))?;
    Ok(out.to_path_buf())
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// One group of the printed output: why, then the variables.
struct Group {
    comment: &'static [&'static str],
    vars: &'static [(&'static str, Value)],
}

#[derive(Clone, Copy)]
enum Value {
    Bundle,
    Ca,
    Literal(&'static str),
}

const GROUPS: &[Group] = &[
    Group {
        comment: &[
            "OpenSSL-based tools (Python ssl, httpx, aiohttp, Ruby, PHP), Go on Linux, uv, and",
            "Rust programs using the native roots. It REPLACES the default roots, hence the bundle.",
        ],
        vars: &[("SSL_CERT_FILE", Value::Bundle)],
    },
    Group {
        comment: &["Python requests ignores SSL_CERT_FILE (it ships its own certifi roots)."],
        vars: &[("REQUESTS_CA_BUNDLE", Value::Bundle)],
    },
    Group {
        comment: &["pip."],
        vars: &[("PIP_CERT", Value::Bundle)],
    },
    Group {
        comment: &["uv: use the platform roots (which honour SSL_CERT_FILE), not its bundled ones."],
        vars: &[("UV_NATIVE_TLS", Value::Literal("1"))],
    },
    Group {
        comment: &[
            "Node.js ADDS these to its built-in roots, so the CA alone; read once at startup.",
        ],
        vars: &[("NODE_EXTRA_CA_CERTS", Value::Ca)],
    },
    Group {
        comment: &["curl."],
        vars: &[("CURL_CA_BUNDLE", Value::Bundle)],
    },
    Group {
        comment: &["git over HTTPS."],
        vars: &[("GIT_SSL_CAINFO", Value::Bundle)],
    },
    Group {
        comment: &["AWS CLI and SDKs."],
        vars: &[("AWS_CA_BUNDLE", Value::Bundle)],
    },
];

/// Every variable `render` sets.
pub const VARIABLES: [&str; 8] = [
    "SSL_CERT_FILE",
    "REQUESTS_CA_BUNDLE",
    "PIP_CERT",
    "UV_NATIVE_TLS",
    "NODE_EXTRA_CA_CERTS",
    "CURL_CA_BUNDLE",
    "GIT_SSL_CAINFO",
    "AWS_CA_BUNDLE",
];

/// The exports, commented and grouped by tool, in `shell`'s syntax; meant to be evaluated
/// (`eval "$(tenant-proxy ca env --ca …)"`). Paths are printed as given: pass absolute ones.
pub fn render(ca: &Path, bundle: &Path, shell: Shell) -> String {
    let ca_s = ca.display().to_string();
    let bundle_s = bundle.display().to_string();
    let mut command = format!("tenant-proxy ca env --ca {}", sh_quote(&ca_s));
    if bundle != default_bundle_path(ca) {
        let _ = write!(command, " --bundle-out {}", sh_quote(&bundle_s));
    }
    let load = match shell {
        Shell::Sh => format!("eval \"$({command})\""),
        Shell::Fish => format!("{command} --shell fish | source"),
        Shell::Powershell => {
            format!("{command} --shell powershell | Out-String | Invoke-Expression")
        }
    };

    // SECURITY: a comment ends at a line break, and the rest of the line runs under `eval`: the
    // paths in comments are shown escaped (the quoted values below may hold any byte).
    let (ca_c, bundle_c, load_c) = (shown(&ca_s), shown(&bundle_s), shown(&load));
    let mut out = String::new();
    let _ = writeln!(out, "# tenant-proxy: trust the local interception CA.");
    let _ = writeln!(out, "#   CA:     {ca_c}");
    let _ = writeln!(
        out,
        "#   bundle: {bundle_c} (system roots + the CA; re-run after the system roots change)"
    );
    let _ = writeln!(out, "# Load with: {load_c}");
    for group in GROUPS {
        out.push('\n');
        for line in group.comment {
            let _ = writeln!(out, "# {line}");
        }
        for (name, value) in group.vars {
            let value = match value {
                Value::Bundle => bundle_s.as_str(),
                Value::Ca => ca_s.as_str(),
                Value::Literal(v) => v,
            };
            let _ = writeln!(out, "{}", export(shell, name, value));
        }
    }
    let ca_q = sh_quote(&ca_s);
    let _ = write!(
        out,
        "
# Not settable from the environment; run once where needed:
# Java (JDK 9+), into the JDK's cacerts:
#   keytool -importcert -alias tenant-proxy-ca -file {ca_q} -cacerts -storepass changeit -noprompt
# The system store, for everything else (browsers, Go on macOS, tools with no variable):
#   Debian/Ubuntu: sudo cp {ca_q} /usr/local/share/ca-certificates/tenant-proxy.crt && sudo update-ca-certificates
#   RHEL/Fedora:   sudo cp {ca_q} /etc/pki/ca-trust/source/anchors/tenant-proxy.crt && sudo update-ca-trust
"
    );
    out
}

fn export(shell: Shell, name: &str, value: &str) -> String {
    match shell {
        Shell::Sh => format!("export {name}={}", sh_quote(value)),
        Shell::Fish => format!(
            "set -gx {name} '{}'",
            value.replace('\\', "\\\\").replace('\'', "\\'")
        ),
        Shell::Powershell => format!("$env:{name} = '{}'", ps_quoted(value)),
    }
}

/// The inside of a PowerShell single-quoted string: each quote doubled, and PowerShell reads
/// the typographic ones (`‘ ’ ‚ ‛`) as quotes too (a path holding `’` ended the string, and the
/// rest ran under `Invoke-Expression`).
fn ps_quoted(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    for c in value.chars() {
        if matches!(c, '\'' | '\u{2018}' | '\u{2019}' | '\u{201A}' | '\u{201B}') {
            out.push(c);
        }
        out.push(c);
    }
    out
}

/// Single-quoted for POSIX shells, where nothing inside single quotes is special but the quote.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::tls::ca::{init, CaInitOptions};
    use std::os::unix::fs::PermissionsExt as _;

    fn count_certs(text: &str) -> usize {
        text.matches("-----BEGIN CERTIFICATE-----").count()
    }

    fn make_ca(dir: &Path) -> PathBuf {
        init(&CaInitOptions::new(dir)).unwrap().cert
    }

    #[test]
    fn bundle_is_system_roots_plus_the_ca() {
        let dir = tempfile::tempdir().unwrap();
        let ca = make_ca(&dir.path().join("ca"));
        let system = dir.path().join("roots.pem");
        let roots: String = (0..2)
            .map(|_| {
                rcgen::generate_simple_self_signed(vec!["root.example".into()])
                    .unwrap()
                    .cert
                    .pem()
            })
            .collect();
        std::fs::write(&system, roots.trim_end()).unwrap();
        let out = dir.path().join("bundle.pem");
        write_bundle_from(&ca, Some(&system), &out).unwrap();
        let text = std::fs::read_to_string(&out).unwrap();
        assert_eq!(count_certs(&text), 3);
        assert!(text.starts_with(roots.trim_end()));
        // The appended CA is the CA.
        let last = text.rsplit("# tenant-proxy local CA\n").next().unwrap();
        assert_eq!(
            parse_ca_cert_pem(last.as_bytes()).unwrap(),
            parse_ca_cert_pem(&std::fs::read(&ca).unwrap()).unwrap()
        );
        assert_eq!(
            std::fs::metadata(&out).unwrap().permissions().mode() & 0o777,
            0o644
        );
    }

    #[test]
    fn bundle_with_this_machines_roots() {
        let Some(system) = system_bundle() else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let ca = make_ca(dir.path());
        let out = write_bundle(&ca, &default_bundle_path(&ca)).unwrap();
        assert_eq!(out, dir.path().join("bundle.pem"));
        let roots = count_certs(&std::fs::read_to_string(system).unwrap());
        assert!(roots > 0);
        assert_eq!(
            count_certs(&std::fs::read_to_string(&out).unwrap()),
            roots + 1
        );
    }

    #[test]
    fn bundle_refuses_what_is_not_a_ca() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("bundle.pem");
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "hello").unwrap();
        let leaf = dir.path().join("leaf.pem");
        std::fs::write(
            &leaf,
            rcgen::generate_simple_self_signed(vec!["x.example".into()])
                .unwrap()
                .cert
                .pem(),
        )
        .unwrap();
        for (case, path, needle) in [
            ("missing", dir.path().join("nope.pem"), "reading"),
            ("not PEM", garbage, "no PEM certificate"),
            ("not a CA", leaf, "not a CA"),
        ] {
            let err = format!("{:#}", write_bundle_from(&path, None, &out).unwrap_err());
            assert!(err.contains(needle), "{case}: {err}");
        }
        assert!(!out.exists());
        let ca = make_ca(&dir.path().join("ca"));
        assert!(
            write_bundle_from(&ca, None, &ca).is_err(),
            "never replaces the CA"
        );
    }

    #[test]
    fn render_sets_every_variable() {
        let text = render(
            Path::new("/srv/ca/ca.pem"),
            Path::new("/srv/ca/bundle.pem"),
            Shell::Sh,
        );
        for var in VARIABLES {
            assert!(text.contains(&format!("export {var}=")), "{var}\n{text}");
        }
        assert!(text.contains("export SSL_CERT_FILE='/srv/ca/bundle.pem'"));
        assert!(text.contains("export NODE_EXTRA_CA_CERTS='/srv/ca/ca.pem'"));
        assert!(text.contains("export UV_NATIVE_TLS='1'"));
        assert!(text.contains(
            "keytool -importcert -alias tenant-proxy-ca -file '/srv/ca/ca.pem' -cacerts"
        ));
        assert!(text.contains("update-ca-certificates"));
        assert!(text.contains("eval \"$(tenant-proxy ca env --ca '/srv/ca/ca.pem')\""));
        // Everything that is not an export is a comment or blank.
        for line in text.lines() {
            assert!(
                line.is_empty() || line.starts_with('#') || line.starts_with("export "),
                "{line}"
            );
        }
    }

    #[test]
    fn render_fish_and_powershell() {
        let ca = Path::new("/srv/ca/ca.pem");
        let bundle = Path::new("/srv/other/b.pem");
        let fish = render(ca, bundle, Shell::Fish);
        assert!(fish.contains("set -gx SSL_CERT_FILE '/srv/other/b.pem'"));
        assert!(fish.contains("--bundle-out '/srv/other/b.pem' --shell fish | source"));
        let ps = render(ca, bundle, Shell::Powershell);
        assert!(ps.contains("$env:NODE_EXTRA_CA_CERTS = '/srv/ca/ca.pem'"));
        assert!(ps.contains("Invoke-Expression"));
        for (shell, text) in [("fish", &fish), ("powershell", &ps)] {
            for var in VARIABLES {
                assert!(text.contains(var), "{shell}: {var}");
            }
            assert!(!text.contains("export "), "{shell}");
        }
    }

    #[test]
    fn render_quotes_awkward_paths() {
        let ca = Path::new("/tmp/it's/ca.pem");
        let bundle = Path::new("/tmp/it's/bundle.pem");
        assert!(render(ca, bundle, Shell::Sh)
            .contains(r"export SSL_CERT_FILE='/tmp/it'\''s/bundle.pem'"));
        assert!(render(ca, bundle, Shell::Fish)
            .contains(r"set -gx SSL_CERT_FILE '/tmp/it\'s/bundle.pem'"));
        assert!(render(ca, bundle, Shell::Powershell)
            .contains("$env:SSL_CERT_FILE = '/tmp/it''s/bundle.pem'"));
    }

    /// A typographic quote ends a PowerShell string as `'` does: doubled as well.
    #[test]
    fn powershell_doubles_every_quote_it_reads() {
        let ca = Path::new("/tmp/x\u{2019}; Write-Output PWNED; \u{2019}/ca.pem");
        let script = render(ca, ca, Shell::Powershell);
        assert!(
            script.contains(
                "= '/tmp/x\u{2019}\u{2019}; Write-Output PWNED; \u{2019}\u{2019}/ca.pem'"
            ),
            "{script}"
        );
    }

    /// A line break in a path ends no comment: under `eval`, the rest of the line ran.
    #[test]
    fn a_line_break_in_a_path_runs_nothing() {
        let ca = Path::new("/tmp/evil\ntouch /tmp/PWNED;/ca.pem");
        let bundle = Path::new("/tmp/evil\ntouch /tmp/PWNED;/bundle.pem");
        for shell in [Shell::Sh, Shell::Fish, Shell::Powershell] {
            let script = render(ca, bundle, shell);
            // The header is comments to its end (a value's own line break stays inside its
            // quotes, below).
            let header: Vec<&str> = script.lines().take_while(|l| !l.is_empty()).collect();
            assert_eq!(header.len(), 4, "{shell:?}: {script}");
            assert!(
                header.iter().all(|l| l.starts_with('#')),
                "{shell:?}: {script}"
            );
            assert!(script.contains("evil\\u{000a}touch"), "{script}");
        }
    }
}
