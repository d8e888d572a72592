//! Watching the files and directories a configuration names, by path: every symlink on the way
//! is followed, and a watcher is made anew (see [`watch`]) whenever the paths may lead
//! elsewhere, so that a directory replaced by rename, a release link flipped and a file linked
//! into another directory are all followed by the edits made after them. Used by the tenant
//! configuration's reloads and the mTLS listeners' files.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use notify::{RecommendedWatcher, RecursiveMode, Watcher};

/// Symlinks followed at most resolving one path (Linux's own limit): a loop ends there.
const MAX_LINKS: usize = 40;

/// A new watcher of `paths` that sends on `tx` at every change that may change what they hold:
/// made anew before each reload, so that what is watched is where the paths lead then.
/// `previous` is dropped only once the new one watches (no change falls between the two), and
/// kept when no new one can be made. `otherwise` says, in the warnings, what still reloads.
pub fn watch(
    paths: &[PathBuf],
    tx: &mpsc::Sender<()>,
    previous: Option<RecommendedWatcher>,
    otherwise: &str,
) -> Option<RecommendedWatcher> {
    let targets: Vec<Target> = paths.iter().map(|p| Target::new(p)).collect();
    let watches = watches(&targets);
    let sender = tx.clone();
    let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(e) = event {
            if !e.kind.is_access() && concerns(&e.paths, &targets) {
                let _ = sender.send(());
            }
        }
    });
    let mut watcher = match watcher {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(error = %e, "file watching unavailable; {otherwise}");
            return previous;
        }
    };
    for (dir, mode) in &watches {
        if let Err(e) = watcher.watch(dir, *mode) {
            // Gone since it was looked at (a directory being swapped): its nearest ancestor
            // sees it come back.
            let watched = dir
                .parent()
                .map(existing_ancestor)
                .is_some_and(|a| watcher.watch(&a, RecursiveMode::NonRecursive).is_ok());
            if !watched {
                tracing::warn!(path = %dir.display(), error = %e, "cannot watch for changes; {otherwise}");
            }
        }
    }
    Some(watcher)
}

/// One path the snapshot is read from: the names whose change may change what it holds.
#[derive(Debug)]
struct Target {
    /// The path as the configuration names it (absolute), each symlink met resolving it (a
    /// Kubernetes ConfigMap's `file -> ..data/file` and `..data -> ..2024_…`, a release link
    /// `current -> rel-2`), and where it leads.
    names: Vec<PathBuf>,
    /// Where it leads, when that is a directory (the policies): watched with all beneath it.
    dir: Option<PathBuf>,
}

impl Target {
    fn new(path: &Path) -> Self {
        let path = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
        let mut names = vec![path.clone()];
        let resolved = resolve(&path, &mut names);
        let dir = resolved.is_dir().then(|| normal(&resolved));
        names.push(resolved);
        // Compared as bytes (see `concerns`): no `.`, doubled or trailing `/` to tell apart.
        let names = names.iter().map(|n| normal(n)).collect();
        Self { names, dir }
    }

    /// The directories that see a change of this path: the one holding each symlink on the
    /// way and the one holding where it leads (their nearest ancestor while they are missing),
    /// each for its own entries; and where it leads, when a directory, with all beneath it.
    /// Watching a file's directory recursively woke the watcher for every write under it: the
    /// audit trail and the process log often live beside the tenant file, and each of their
    /// writes cost the watcher thread a wake-up.
    fn watches(&self) -> Vec<(PathBuf, RecursiveMode)> {
        // The first name, as the configuration spells it, may go through symlinks: the
        // directories holding the others are the same ones, resolved.
        let mut out: Vec<(PathBuf, RecursiveMode)> = self
            .names
            .iter()
            .skip(1)
            .filter_map(|n| n.parent())
            .map(|p| (existing_ancestor(p), RecursiveMode::NonRecursive))
            .collect();
        out.extend(self.dir.clone().map(|d| (d, RecursiveMode::Recursive)));
        out
    }

    /// Whether a change at `changed` may change what this path holds: it is one of the names,
    /// or a directory above one (created, renamed, removed: what the name leads to changed),
    /// or within the directory the path leads to.
    ///
    /// Compared as bytes, not component by component: a process log or an audit trail written
    /// beside a watched file sends an event for every write, each one checked here on the
    /// watcher's thread while the proxy serves.
    fn concerns(&self, changed: &Path) -> bool {
        use std::os::unix::ffi::OsStrExt as _;
        let changed = changed.as_os_str().as_bytes();
        self.names
            .iter()
            .any(|n| within(n.as_os_str().as_bytes(), changed))
            || self
                .dir
                .as_ref()
                .is_some_and(|d| within(changed, d.as_os_str().as_bytes()))
    }
}

/// `path` as its components spell it: no `.`, doubled or trailing `/`.
fn normal(path: &Path) -> PathBuf {
    path.components().collect()
}

/// Whether `path` is `prefix` or beneath it (both normal).
fn within(path: &[u8], prefix: &[u8]) -> bool {
    path.starts_with(prefix)
        && (path.len() == prefix.len()
            || prefix.ends_with(b"/")
            || path.get(prefix.len()) == Some(&b'/'))
}

/// Where `path` (absolute) leads, following every symlink on the way as the kernel does and
/// adding each one met to `links`. From a missing component on, the rest is taken as named.
fn resolve(path: &Path, links: &mut Vec<PathBuf>) -> PathBuf {
    let mut resolved = PathBuf::from("/");
    // The components still to walk, the next one last; `..` stays a component of its own.
    let mut rest: Vec<OsString> = Vec::new();
    push_components(path, &mut rest, &mut resolved);
    let mut followed = 0;
    while let Some(name) = rest.pop() {
        if name == ".." {
            resolved.pop();
            continue;
        }
        let next = resolved.join(&name);
        match std::fs::read_link(&next) {
            Ok(target) if followed < MAX_LINKS => {
                followed += 1;
                links.push(next);
                push_components(&target, &mut rest, &mut resolved);
            }
            // Not a symlink, or missing (then so is all below it): as named.
            _ => resolved = next,
        }
    }
    resolved
}

/// Puts the components of `path` on `rest` to be walked next (first on top). An absolute
/// `path` starts again from the root.
fn push_components(path: &Path, rest: &mut Vec<OsString>, resolved: &mut PathBuf) {
    use std::path::Component;
    let mut names = Vec::new();
    for c in path.components() {
        match c {
            Component::RootDir | Component::Prefix(_) => {
                *resolved = PathBuf::from("/");
                names.clear();
            }
            Component::CurDir => {}
            Component::ParentDir => names.push(OsString::from("..")),
            Component::Normal(n) => names.push(n.to_os_string()),
        }
    }
    rest.extend(names.into_iter().rev());
}

/// `dir`, or while it does not exist its nearest ancestor that does: watched there, its
/// coming back is seen.
fn existing_ancestor(dir: &Path) -> PathBuf {
    dir.ancestors()
        .find(|a| a.is_dir())
        .unwrap_or(Path::new("/"))
        .to_path_buf()
}

/// Every directory to watch for `targets`, once: a directory wanted both ways is watched
/// recursively, and nothing beneath a directory watched recursively is watched again (its
/// watch would stop following the subdirectories created in it).
fn watches(targets: &[Target]) -> Vec<(PathBuf, RecursiveMode)> {
    let mut all: Vec<(PathBuf, RecursiveMode)> = targets.iter().flat_map(Target::watches).collect();
    // Recursive first, so that a directory wanted both ways is watched recursively once.
    all.sort_by(|a, b| {
        a.0.cmp(&b.0)
            .then((a.1 == RecursiveMode::NonRecursive).cmp(&(b.1 == RecursiveMode::NonRecursive)))
    });
    all.dedup_by(|later, first| later.0 == first.0);
    let recursive: Vec<PathBuf> = all
        .iter()
        .filter(|(_, m)| *m == RecursiveMode::Recursive)
        .map(|(d, _)| d.clone())
        .collect();
    all.retain(|(d, _)| !recursive.iter().any(|r| d != r && d.starts_with(r)));
    all
}

/// Whether a change to `changed` may change the snapshot. A file that merely shares a directory
/// with a watched file (an audit log, the process log, a pid file) does not: reloading for every
/// record written would recompile every policy several times a second under load.
fn concerns(changed: &[PathBuf], targets: &[Target]) -> bool {
    // An event naming no path (the watcher lost track) may be about anything.
    changed.is_empty()
        || changed.iter().any(|c| {
            // The watcher names `watched directory/entry`; anything else is made normal first.
            let c = if is_normal(c) {
                std::borrow::Cow::Borrowed(c.as_path())
            } else {
                std::borrow::Cow::Owned(normal(c))
            };
            targets.iter().any(|t| t.concerns(&c))
        })
}

/// Whether `path` is absolute with no `.`, doubled or trailing `/` (what `normal` makes).
fn is_normal(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt as _;
    let b = path.as_os_str().as_bytes();
    b.first() == Some(&b'/')
        && (b.len() == 1 || !b.ends_with(b"/"))
        && !b.windows(2).any(|w| w == b"//")
        && !b.windows(3).any(|w| w == b"/./")
        && !b.ends_with(b"/.")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;
    use std::time::Duration;

    fn is_watched(targets: &[Target], dir: &Path, mode: RecursiveMode) -> bool {
        watches(targets).contains(&(dir.to_path_buf(), mode))
    }

    /// Paths are compared as bytes once made normal: a trailing or doubled `/` or a `.` in the
    /// configured path, or in an event's, changes nothing; a sibling whose name only starts
    /// with the watched one's is not it.
    #[test]
    fn spellings_of_a_path_are_the_same_path_and_a_longer_name_is_another() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("policies/global")).unwrap();
        std::fs::write(root.join("tenants.toml"), "").unwrap();
        let spelled = format!("{}/./policies//", root.display());
        let targets = [
            Target::new(Path::new(&spelled)),
            Target::new(&root.join("tenants.toml")),
        ];
        for (path, want) in [
            (format!("{}/policies/global/a.cedar", root.display()), true),
            (
                format!("{}//policies/./global/a.cedar", root.display()),
                true,
            ),
            (format!("{}/policies", root.display()), true),
            (
                format!("{}/policies-old/global/a.cedar", root.display()),
                false,
            ),
            (format!("{}/tenants.toml.swp", root.display()), false),
            (format!("{}/tenants.toml", root.display()), true),
        ] {
            assert_eq!(concerns(&[PathBuf::from(&path)], &targets), want, "{path}");
        }
    }

    #[test]
    fn only_changes_to_what_the_snapshot_reads_trigger_a_reload() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::write(root.join("tenants.toml"), "").unwrap();
        std::fs::create_dir_all(root.join("policies/global")).unwrap();
        std::fs::create_dir_all(root.join("audit/acme")).unwrap();
        let targets = [
            Target::new(&root.join("tenants.toml")),
            Target::new(&root.join("policies")),
        ];
        for (path, want) in [
            ("tenants.toml", true),
            ("policies", true),
            ("policies/global/base.cedar", true),
            ("policies/tenants/acme/new.cedar", true),
            // Beside the tenant file, but not read by the snapshot.
            ("audit/acme/2026/12/03.jsonl", false),
            ("proxy.log", false),
            ("tenants.toml.swp", false),
            ("prices.toml.bak", false),
        ] {
            assert_eq!(concerns(&[root.join(path)], &targets), want, "{path}");
        }
        assert!(concerns(&[], &targets), "an event without a path");
        // The directory holding them, moved or removed itself.
        assert!(concerns(&[root.to_path_buf()], &targets));
    }

    #[test]
    fn a_files_directory_is_watched_for_its_own_entries_a_policy_directory_whole() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::write(root.join("tenants.toml"), "").unwrap();
        std::fs::create_dir_all(root.join("conf/policies")).unwrap();
        let targets = [
            Target::new(&root.join("tenants.toml")),
            Target::new(&root.join("conf/policies")),
        ];
        assert_eq!(
            watches(&targets),
            [
                (root.to_path_buf(), RecursiveMode::NonRecursive),
                // The directory holding the policy directory sees it replaced by rename.
                (root.join("conf"), RecursiveMode::NonRecursive),
                (root.join("conf/policies"), RecursiveMode::Recursive),
            ]
        );
        // Nothing beneath a directory watched whole is watched again.
        let inside = [
            Target::new(&root.join("conf/policies")),
            Target::new(&root.join("conf/policies/prices.toml")),
        ];
        assert!(!is_watched(
            &inside,
            &root.join("conf/policies"),
            RecursiveMode::NonRecursive
        ));
    }

    /// A Kubernetes ConfigMap: each file links into `..data`, itself a link to a directory of
    /// the current version, swapped at an update. The swap is seen; a log written beside the
    /// links is not (a reload for every line logged would reload forever).
    #[test]
    fn every_symlink_on_the_way_is_followed_and_nothing_beside_it() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("..2026_12_06_01")).unwrap();
        std::fs::write(root.join("..2026_12_06_01/tenants.toml"), "").unwrap();
        symlink("..2026_12_06_01", root.join("..data")).unwrap();
        symlink("..data/tenants.toml", root.join("tenants.toml")).unwrap();
        let targets = [Target::new(&root.join("tenants.toml"))];
        assert_eq!(
            targets[0].names.last(),
            Some(&root.join("..2026_12_06_01/tenants.toml"))
        );
        for (path, want) in [
            ("tenants.toml", true),
            ("..data", true),
            ("..2026_12_06_01", true),
            ("..2026_12_06_01/tenants.toml", true),
            ("..2026_12_06_01/prices.toml", false),
            ("..data_tmp", false),
            ("proxy.log", false),
        ] {
            assert_eq!(concerns(&[root.join(path)], &targets), want, "{path}");
        }
        assert_eq!(
            watches(&targets),
            [
                (root.to_path_buf(), RecursiveMode::NonRecursive),
                (root.join("..2026_12_06_01"), RecursiveMode::NonRecursive),
            ]
        );
    }

    /// A policy directory that is a release link (`current -> rel-1`): the directory holding
    /// the link sees it flipped, the release is watched whole; read again after the flip, the
    /// new release is.
    #[test]
    fn a_release_link_is_watched_where_it_is_and_where_it_leads() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for rel in ["rel-1", "rel-2"] {
            std::fs::create_dir_all(root.join("releases").join(rel).join("global")).unwrap();
        }
        symlink("rel-1", root.join("releases/current")).unwrap();
        let before = [Target::new(&root.join("releases/current"))];
        assert!(is_watched(
            &before,
            &root.join("releases"),
            RecursiveMode::NonRecursive
        ));
        assert!(is_watched(
            &before,
            &root.join("releases/rel-1"),
            RecursiveMode::Recursive
        ));
        assert!(concerns(&[root.join("releases/current")], &before));
        assert!(concerns(
            &[root.join("releases/rel-1/global/a.cedar")],
            &before
        ));
        assert!(!concerns(
            &[root.join("releases/rel-2/global/a.cedar")],
            &before
        ));

        symlink("rel-2", root.join("releases/current.tmp")).unwrap();
        std::fs::rename(
            root.join("releases/current.tmp"),
            root.join("releases/current"),
        )
        .unwrap();
        let after = [Target::new(&root.join("releases/current"))];
        assert!(is_watched(
            &after,
            &root.join("releases/rel-2"),
            RecursiveMode::Recursive
        ));
        assert!(concerns(
            &[root.join("releases/rel-2/global/a.cedar")],
            &after
        ));
    }

    /// A file linked into another directory (`keys/revoked.txt -> ../secrets/revoked.txt`):
    /// both directories are watched, for those two entries only.
    #[test]
    fn a_file_linked_into_another_directory_is_watched_there() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("keys")).unwrap();
        std::fs::create_dir_all(root.join("secrets")).unwrap();
        std::fs::write(root.join("secrets/revoked.txt"), "").unwrap();
        symlink("../secrets/revoked.txt", root.join("keys/revoked.txt")).unwrap();
        let targets = [Target::new(&root.join("keys/revoked.txt"))];
        for (path, want) in [
            ("keys/revoked.txt", true),
            ("secrets/revoked.txt", true),
            ("secrets", true),
            ("secrets/other.txt", false),
            ("keys/other.txt", false),
        ] {
            assert_eq!(concerns(&[root.join(path)], &targets), want, "{path}");
        }
        assert_eq!(
            watches(&targets),
            [
                (root.join("keys"), RecursiveMode::NonRecursive),
                (root.join("secrets"), RecursiveMode::NonRecursive),
            ]
        );
    }

    /// A path that does not exist (yet, or for a moment) is watched from its nearest ancestor
    /// that does, which sees it appear; a symlink loop ends.
    #[test]
    fn a_missing_path_is_watched_from_the_nearest_directory_that_exists() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let targets = [Target::new(&root.join("conf/policies"))];
        assert_eq!(
            watches(&targets),
            [(root.to_path_buf(), RecursiveMode::NonRecursive)]
        );
        assert!(concerns(&[root.join("conf")], &targets));
        assert!(!concerns(&[root.join("other")], &targets));

        symlink("b", root.join("a")).unwrap();
        symlink("a", root.join("b")).unwrap();
        let looped = Target::new(&root.join("a"));
        assert!(looped.names.len() > MAX_LINKS, "{looped:?}");
    }

    /// Against a real watcher: a change where a file's link leads is seen, a write beside the
    /// link is not, and a policy directory replaced by rename is seen again once watched anew.
    #[test]
    fn a_real_watcher_follows_links_and_watching_again_follows_a_replaced_directory() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("secrets")).unwrap();
        std::fs::create_dir_all(root.join("conf/policies/global")).unwrap();
        std::fs::write(root.join("secrets/revoked.txt"), "").unwrap();
        symlink("secrets/revoked.txt", root.join("revoked.txt")).unwrap();
        let paths = [root.join("revoked.txt"), root.join("conf/policies")];
        let (tx, rx) = mpsc::channel();
        let seen = |what: &str| {
            let got = rx.recv_timeout(Duration::from_secs(5)).is_ok();
            while rx.recv_timeout(Duration::from_millis(200)).is_ok() {}
            assert!(got, "{what}");
        };
        let watcher = watch(&paths, &tx, None, "SIGHUP still reloads");
        assert!(watcher.is_some());

        std::fs::write(root.join("proxy.log"), "a line\n").unwrap();
        assert!(
            rx.recv_timeout(Duration::from_millis(300)).is_err(),
            "a write beside the link"
        );
        std::fs::write(root.join("secrets/revoked.txt"), "jti\n").unwrap();
        seen("the file the link leads to");

        std::fs::create_dir_all(root.join("conf/policies.new/global")).unwrap();
        std::fs::rename(root.join("conf/policies"), root.join("conf/policies.old")).unwrap();
        std::fs::rename(root.join("conf/policies.new"), root.join("conf/policies")).unwrap();
        seen("the directory replaced");
        let _watcher = watch(&paths, &tx, watcher, "SIGHUP still reloads");
        std::fs::write(root.join("conf/policies/global/a.cedar"), "x").unwrap();
        seen("an edit in the new directory");
        std::fs::write(root.join("conf/policies.old/global/a.cedar"), "x").unwrap();
        assert!(
            rx.recv_timeout(Duration::from_millis(300)).is_err(),
            "an edit in the old one"
        );
    }
}
