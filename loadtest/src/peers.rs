//! Other proxies measured in the same run as tenant-proxy: `nginx` and `haproxy` as reverse
//! proxies (like the `route` row), `squid` as a forward proxy (like the `forward` row). Each is
//! given the same treatment as the proxy rows: one worker (process or thread), pinned to core 0,
//! pooled keep-alive connections to the mock, no access log (bare pingora logs nothing either),
//! the same request, warm-up and connections. A row whose server is not installed is skipped
//! with a note; `loadtest/install-peers.sh` installs all three with apt.

use std::path::{Path, PathBuf};

/// A server measured beside tenant-proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    /// nginx, reverse proxy to the mock.
    Nginx,
    /// HAProxy, reverse proxy to the mock.
    Haproxy,
    /// Squid, forward proxy (absolute-form requests).
    Squid,
}

impl Peer {
    /// Every peer, in the order measured.
    pub const ALL: [Peer; 3] = [Peer::Nginx, Peer::Haproxy, Peer::Squid];

    /// The row's name (also the binary's).
    pub fn row(self) -> &'static str {
        match self {
            Peer::Nginx => "nginx",
            Peer::Haproxy => "haproxy",
            Peer::Squid => "squid",
        }
    }

    /// Whether the row sends absolute-form requests (a forward proxy) rather than origin-form.
    pub fn forward(self) -> bool {
        self == Peer::Squid
    }

    /// The server's binary: on `PATH`, or in the `sbin` directories Debian installs servers to
    /// (not on every user's `PATH`).
    pub fn find(self) -> Option<PathBuf> {
        let name = self.row();
        let path = std::env::var_os("PATH").unwrap_or_default();
        std::env::split_paths(&path)
            .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from))
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    }

    /// Its configuration: listen on `127.0.0.1:port`, forward to the mock on `mock_port`, keep
    /// everything it writes in `dir`.
    pub fn config(self, port: u16, mock_port: u16, dir: &Path) -> String {
        let d = dir.display();
        match self {
            Peer::Nginx => format!(
                "# Written by tenant-proxy-loadtest: one process, no access log, pooled upstream.
daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    keepalive_requests 1000000;
    upstream mock {{
        server 127.0.0.1:{mock_port};
        keepalive 128;
        keepalive_requests 1000000;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://mock;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
        }}
    }}
}}
"
            ),
            Peer::Haproxy => format!(
                "# Written by tenant-proxy-loadtest: one thread, no log, pooled upstream.
global
    nbthread 1
    # Within the file-descriptor limit of a default shell (haproxy refuses to start otherwise).
    maxconn 4000
defaults
    mode http
    timeout connect 5s
    timeout client 30s
    timeout server 30s
    option http-keep-alive
    http-reuse always
frontend loadtest
    bind 127.0.0.1:{port}
    default_backend mock
backend mock
    server mock 127.0.0.1:{mock_port}
"
            ),
            Peer::Squid => format!(
                "# Written by tenant-proxy-loadtest: one process, no cache, no access log.
http_port 127.0.0.1:{port}
workers 1
http_access allow all
cache deny all
cache_mem 8 MB
access_log none
cache_log {d}/cache.log
pid_filename {d}/squid.pid
coredump_dir {d}
shutdown_lifetime 0 seconds
server_persistent_connections on
client_persistent_connections on
via off
forwarded_for transparent
max_filedescriptors 8192
"
            ),
        }
    }

    /// The command that runs it in the foreground with the configuration at `config`.
    pub fn args(self, config: &Path, dir: &Path) -> Vec<String> {
        let c = config.display().to_string();
        match self {
            Peer::Nginx => vec![
                "-p".into(),
                dir.display().to_string(),
                "-e".into(),
                dir.join("error.log").display().to_string(),
                "-c".into(),
                c,
            ],
            Peer::Haproxy => vec!["-db".into(), "-f".into(), c],
            Peer::Squid => vec!["-N".into(), "-f".into(), c],
        }
    }

    /// Writes the configuration into `dir` (open to the user Squid drops to) and returns the
    /// server's arguments.
    pub fn prepare(self, port: u16, mock_port: u16, dir: &Path) -> std::io::Result<Vec<String>> {
        std::fs::create_dir_all(dir)?;
        if self == Peer::Squid {
            // Squid started as root runs as its `cache_effective_user` and writes its log and
            // pid file as that user.
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777))?;
        }
        let config = dir.join(format!("{}.conf", self.row()));
        std::fs::write(&config, self.config(port, mock_port, dir))?;
        Ok(self.args(&config, dir))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn every_peer_listens_where_told_and_forwards_to_the_mock() {
        let dir = Path::new("/tmp/x");
        for peer in Peer::ALL {
            let text = peer.config(41000, 18000, dir);
            assert!(text.contains("127.0.0.1:41000"), "{peer:?}: {text}");
            // Squid forwards where the absolute-form request says; the others to the mock.
            assert_eq!(
                text.contains("127.0.0.1:18000"),
                !peer.forward(),
                "{peer:?}"
            );
            // One worker, like the proxy rows.
            assert!(
                text.contains("worker_processes 1")
                    || text.contains("nbthread 1")
                    || text.contains("workers 1"),
                "{peer:?}"
            );
            // No per-request log line.
            assert!(
                text.contains("access_log off")
                    || text.contains("access_log none")
                    || !text.contains("log "),
                "{peer:?}"
            );
        }
        assert!(Peer::Squid.config(1, 2, dir).contains("cache deny all"));
        assert!(Peer::Nginx.config(1, 2, dir).contains("keepalive 128"));
    }

    #[test]
    fn peers_run_in_the_foreground() {
        let (c, d) = (Path::new("/tmp/x/p.conf"), Path::new("/tmp/x"));
        assert!(Peer::Nginx.config(1, 2, d).contains("daemon off"));
        assert!(Peer::Haproxy.args(c, d).contains(&"-db".to_string()));
        assert!(Peer::Squid.args(c, d).contains(&"-N".to_string()));
    }
}
